//! A minimal DER writer: just enough to encode Intel's SGX PCK certificate extension
//! (OID 1.2.840.113741.1.13.1). rcgen only takes a custom extension's content as
//! opaque DER bytes, so the nested SEQUENCE { OID, value } structure is built here.

use super::SimError;

const TAG_BOOLEAN: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_ENUMERATED: u8 = 0x0a;
const TAG_SEQUENCE: u8 = 0x30;

/// Tag-length-value with a definite (short or long form) length.
pub(super) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

pub(super) fn sequence(items: &[Vec<u8>]) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &items.concat())
}

pub(super) fn octet_string(bytes: &[u8]) -> Vec<u8> {
    tlv(TAG_OCTET_STRING, bytes)
}

pub(super) fn boolean(value: bool) -> Vec<u8> {
    // DER requires TRUE to be encoded as 0xFF.
    tlv(TAG_BOOLEAN, &[if value { 0xff } else { 0x00 }])
}

pub(super) fn enumerated(value: u8) -> Vec<u8> {
    tlv(TAG_ENUMERATED, &minimal_unsigned(u64::from(value)))
}

/// Non-negative INTEGER in minimal two's-complement form.
pub(super) fn unsigned_integer(value: u64) -> Vec<u8> {
    tlv(TAG_INTEGER, &minimal_unsigned(value))
}

fn minimal_unsigned(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(bytes.len() - 1);
    let mut out = Vec::with_capacity(9);
    // A set top bit would make the value negative, so prefix a zero byte.
    if bytes[skip] & 0x80 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&bytes[skip..]);
    out
}

/// OBJECT IDENTIFIER from its arcs (first two arcs packed into one byte, the rest base-128).
pub(super) fn oid(arcs: &[u64]) -> Result<Vec<u8>, SimError> {
    let [first, second, rest @ ..] = arcs else {
        return Err(SimError::Der("OID needs at least two arcs"));
    };
    if *first > 2 || (*first < 2 && *second >= 40) {
        return Err(SimError::Der("invalid leading OID arcs"));
    }
    let mut content = Vec::new();
    let head = first
        .checked_mul(40)
        .and_then(|v| v.checked_add(*second))
        .ok_or(SimError::Der("OID arc overflow"))?;
    for arc in core::iter::once(head).chain(rest.iter().copied()) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut v = arc >> 7;
        while v > 0 {
            groups.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        content.extend(groups.iter().rev());
    }
    Ok(tlv(TAG_OID, &content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_values() {
        // 1.2.840.113741.1.13.1 as it appears in real Intel PCK certificates.
        assert_eq!(
            hex::encode(oid(&[1, 2, 840, 113741, 1, 13, 1]).unwrap()),
            "06092a864886f84d010d01"
        );
        assert_eq!(unsigned_integer(0), [0x02, 0x01, 0x00]);
        assert_eq!(unsigned_integer(0x80), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(tlv(0x04, &[0u8; 200])[..3], [0x04, 0x81, 200]);
        assert!(oid(&[1]).is_err());
    }
}
