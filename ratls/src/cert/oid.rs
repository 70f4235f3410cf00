//! Object identifiers teegate certificates use, and the one trick needed to emit the
//! teegate claims OID: `2.25.<uuid>` has a 128-bit arc, which rcgen (u64 arcs) cannot
//! write. Certificates are built with a same-length placeholder OID and the placeholder's
//! DER is swapped for the real one in the to-be-signed bytes before signing and in the
//! final certificate (see `issue.rs`). Equal lengths keep every DER length field valid.

/// TCG DICE conceptual-message-wrapper extension (CCC interoperable RA-TLS evidence).
pub const EVIDENCE_OID: &[u64] = &[2, 23, 133, 5, 4, 9];
/// TCG DICE endorsements (the quote's collateral).
pub const ENDORSEMENTS_OID: &[u64] = &[2, 23, 133, 5, 4, 2];

/// The UUID under `2.25` that names teegate's app-claims extension.
pub const CLAIMS_UUID: u128 = 0x4304a583_dcc8_4862_a3bc_f0156a665d73;
/// Dotted form, for people and for x509-parser comparisons.
pub const CLAIMS_OID_STR: &str = "2.25.89082401949826223843902466965778095475";

/// DER content octets of an OID (no tag/length) from arcs that may exceed u64.
pub fn oid_content(arcs: &[u128]) -> Vec<u8> {
    let mut out = Vec::new();
    let (first, rest) = match arcs {
        [a, b, rest @ ..] => (a * 40 + b, rest),
        _ => return out,
    };
    for arc in std::iter::once(first).chain(rest.iter().copied()) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut v = arc >> 7;
        while v > 0 {
            groups.push(((v & 0x7f) as u8) | 0x80);
            v >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    out
}

/// The real claims OID, DER content octets.
pub fn claims_oid_content() -> Vec<u8> {
    oid_content(&[2, 25, CLAIMS_UUID])
}

/// Placeholder arcs whose DER has the same length as the real claims OID (20 octets).
pub const PLACEHOLDER_ARCS: &[u64] = &[2, 25, 0xFEED_FACE_CAFE_BEEF, 0x7EA7_0000_0000_0001];

pub fn placeholder_oid_content() -> Vec<u8> {
    let arcs: Vec<u128> = PLACEHOLDER_ARCS.iter().map(|&a| u128::from(a)).collect();
    oid_content(&arcs)
}

/// Full OID TLV (tag 6, short length) for an OID's content octets.
pub fn oid_tlv(content: &[u8]) -> Vec<u8> {
    let mut v = vec![0x06, content.len() as u8];
    v.extend_from_slice(content);
    v
}

/// Dotted form of DER OID content octets, arcs up to 128 bits (x509-parser stops at 64).
pub fn dotted(content: &[u8]) -> Option<String> {
    let mut arcs: Vec<u128> = Vec::new();
    let mut acc: u128 = 0;
    for (i, b) in content.iter().enumerate() {
        acc = acc.checked_mul(128)?.checked_add(u128::from(b & 0x7f))?;
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = acc.min(80) / 40;
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        } else if i + 1 == content.len() {
            return None;
        }
    }
    let parts: Vec<String> = arcs.iter().map(|a| a.to_string()).collect();
    (!parts.is_empty()).then(|| parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_and_real_oid_have_equal_der_length() {
        assert_eq!(claims_oid_content().len(), placeholder_oid_content().len());
        assert_ne!(claims_oid_content(), placeholder_oid_content());
    }

    #[test]
    fn real_oid_parses_back_to_its_dotted_form() {
        assert_eq!(dotted(&claims_oid_content()).unwrap(), CLAIMS_OID_STR);
        assert_eq!(
            dotted(&[0x67, 0x81, 0x05, 0x05, 0x04, 0x09]).unwrap(),
            "2.23.133.5.4.9"
        );
        assert!(dotted(&[0x69, 0x81]).is_none());
        assert_eq!(
            CLAIMS_UUID.to_string(),
            CLAIMS_OID_STR.trim_start_matches("2.25.")
        );
    }

    #[test]
    fn small_oid_encodes_like_der() {
        // 2.23.133.5.4.9 -> 67 81 05 05 04 09
        let arcs: Vec<u128> = EVIDENCE_OID.iter().map(|&a| a.into()).collect();
        assert_eq!(oid_content(&arcs), vec![0x67, 0x81, 0x05, 0x05, 0x04, 0x09]);
    }
}
