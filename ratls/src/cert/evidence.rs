//! The CCC "Interoperable RA-TLS" evidence encoding. The key binding is:
//! `claims-buffer = CBOR {"pubkey-hash": bstr(CBOR [hash-alg-id, hash(SPKI DER)])}` and
//! `report_data[0..32] = SHA-256(claims-buffer)`, rest zero. The certificate extension
//! `2.23.133.5.4.9` carries CBOR `60000([quote, claims-buffer])`.

use ciborium::value::{Integer, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::types::ReportData;

/// CBOR tag of TDX evidence in the CMW, per the CCC interoperable RA-TLS documents.
pub const EVIDENCE_CBOR_TAG: u64 = 60000;
/// Upper bound on the evidence we decode (a quote is ~5 KB).
pub const MAX_EVIDENCE_LEN: usize = 128 * 1024;
const MAX_NONCE_LEN: usize = 64;

/// Hash algorithms from the IANA Named Information registry used in `hash-entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha256 = 1,
    Sha384 = 7,
    Sha512 = 8,
}

impl HashAlg {
    fn from_id(id: i128) -> Option<Self> {
        match id {
            1 => Some(Self::Sha256),
            7 => Some(Self::Sha384),
            8 => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The algorithm's name as people write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SHA-256",
            Self::Sha384 => "SHA-384",
            Self::Sha512 => "SHA-512",
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => Sha384::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvidenceError(pub String);

fn err(msg: impl Into<String>) -> EvidenceError {
    EvidenceError(msg.into())
}

fn to_cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail.
    let _ = ciborium::into_writer(value, &mut out);
    out
}

fn from_cbor(bytes: &[u8]) -> Result<Value, EvidenceError> {
    if bytes.len() > MAX_EVIDENCE_LEN {
        return Err(err(format!(
            "{} bytes of CBOR is over the limit",
            bytes.len()
        )));
    }
    ciborium::from_reader(bytes).map_err(|e| err(format!("invalid CBOR: {e}")))
}

/// The claims buffer binding a public key (SPKI DER), with an optional client nonce.
pub fn claims_buffer(spki_der: &[u8], nonce: Option<&[u8]>) -> Vec<u8> {
    let alg = HashAlg::Sha256;
    let hash_entry = to_cbor(&Value::Array(vec![
        Value::Integer(Integer::from(alg as u8)),
        Value::Bytes(alg.digest(spki_der)),
    ]));
    let mut map = vec![(Value::Text("pubkey-hash".into()), Value::Bytes(hash_entry))];
    if let Some(n) = nonce {
        map.push((Value::Text("nonce".into()), Value::Bytes(n.to_vec())));
    }
    to_cbor(&Value::Map(map))
}

/// What a claims buffer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsBuffer {
    pub hash_alg: HashAlg,
    pub pubkey_hash: Vec<u8>,
    pub nonce: Option<Vec<u8>>,
}

impl ClaimsBuffer {
    pub fn parse(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let Value::Map(entries) = from_cbor(bytes)? else {
            return Err(err("claims-buffer is not a CBOR map"));
        };
        let mut pubkey = None;
        let mut nonce = None;
        for (k, v) in entries {
            match (k.as_text(), v) {
                (Some("pubkey-hash"), Value::Bytes(b)) => pubkey = Some(b),
                (Some("nonce"), Value::Bytes(b)) if b.len() <= MAX_NONCE_LEN => nonce = Some(b),
                (Some("nonce"), _) => return Err(err("nonce must be at most 64 bytes")),
                _ => {}
            }
        }
        let pubkey = pubkey.ok_or_else(|| err("claims-buffer has no pubkey-hash"))?;
        let Value::Array(entry) = from_cbor(&pubkey)? else {
            return Err(err("pubkey-hash is not a CBOR [alg, hash] array"));
        };
        let [Value::Integer(alg), Value::Bytes(hash)] = entry.as_slice() else {
            return Err(err("pubkey-hash is not a CBOR [alg, hash] array"));
        };
        let hash_alg = HashAlg::from_id(i128::from(*alg))
            .ok_or_else(|| err(format!("unsupported hash algorithm {}", i128::from(*alg))))?;
        Ok(Self {
            hash_alg,
            pubkey_hash: hash.clone(),
            nonce,
        })
    }
}

/// The hash of the claims buffer that the quote's report data carries (as CCC defines it).
pub const REPORT_DATA_HASH: HashAlg = HashAlg::Sha256;

/// `report_data` for a claims buffer: [`REPORT_DATA_HASH`] of it first, zeros after.
pub fn report_data_for(claims_buffer: &[u8]) -> ReportData {
    let digest = REPORT_DATA_HASH.digest(claims_buffer);
    let mut rd = [0u8; 64];
    rd[..digest.len()].copy_from_slice(&digest);
    ReportData(rd)
}

/// How the key binding reads, derived from [`report_data_for`]'s algorithm so the page
/// cannot state another.
pub fn key_binding_text() -> String {
    format!(
        "report data = {} of the claims buffer, which holds the certificate key's hash",
        REPORT_DATA_HASH.name()
    )
}

/// Encodes `60000([quote, claims-buffer])`.
pub fn encode(quote: &[u8], claims_buffer: &[u8]) -> Vec<u8> {
    to_cbor(&Value::Tag(
        EVIDENCE_CBOR_TAG,
        Box::new(Value::Array(vec![
            Value::Bytes(quote.to_vec()),
            Value::Bytes(claims_buffer.to_vec()),
        ])),
    ))
}

/// Decodes the evidence extension into `(quote, claims-buffer)`.
pub fn decode(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), EvidenceError> {
    let Value::Tag(tag, inner) = from_cbor(bytes)? else {
        return Err(err("evidence is not CBOR-tagged"));
    };
    if tag != EVIDENCE_CBOR_TAG {
        return Err(err(format!(
            "evidence tag {tag} is not TDX ({EVIDENCE_CBOR_TAG})"
        )));
    }
    let Value::Array(items) = *inner else {
        return Err(err("evidence is not a [quote, claims-buffer] array"));
    };
    match <[Value; 2]>::try_from(items) {
        Ok([Value::Bytes(quote), Value::Bytes(claims)]) => Ok((quote, claims)),
        _ => Err(err("evidence is not a [quote, claims-buffer] array")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_buffer_roundtrip_and_binding() {
        let spki = b"not really an spki";
        let cb = claims_buffer(spki, Some(b"nonce"));
        let parsed = ClaimsBuffer::parse(&cb).unwrap();
        assert_eq!(parsed.hash_alg, HashAlg::Sha256);
        assert_eq!(parsed.pubkey_hash, Sha256::digest(spki).to_vec());
        assert_eq!(parsed.nonce.as_deref(), Some(&b"nonce"[..]));
        let rd = report_data_for(&cb);
        assert_eq!(rd.0[..32], Sha256::digest(&cb)[..]);
        assert_eq!(rd.0[32..], [0u8; 32]);
    }

    #[test]
    fn the_key_binding_text_names_the_hash_report_data_uses() {
        // SHA-256 as CCC defines it; the page once said SHA-512.
        let cb = claims_buffer(b"spki", None);
        let rd = report_data_for(&cb);
        let digest = REPORT_DATA_HASH.digest(&cb);
        assert_eq!(rd.0[..digest.len()], digest[..]);
        assert_eq!(REPORT_DATA_HASH, HashAlg::Sha256);
        assert!(
            key_binding_text().contains("SHA-256"),
            "{}",
            key_binding_text()
        );
        assert!(!key_binding_text().contains("SHA-512"));
    }

    #[test]
    fn evidence_roundtrip() {
        let ev = encode(b"quote", b"claims");
        assert_eq!(
            decode(&ev).unwrap(),
            (b"quote".to_vec(), b"claims".to_vec())
        );
    }

    #[test]
    fn rejects_wrong_tag_shape_and_garbage() {
        let wrong_tag = to_cbor(&Value::Tag(1, Box::new(Value::Array(vec![]))));
        assert!(decode(&wrong_tag).unwrap_err().0.contains("tag"));
        let wrong_shape = to_cbor(&Value::Tag(
            EVIDENCE_CBOR_TAG,
            Box::new(Value::Array(vec![Value::Bytes(vec![1])])),
        ));
        assert!(decode(&wrong_shape).is_err());
        assert!(decode(&[0xff, 0x00, 0x13]).is_err());
        assert!(ClaimsBuffer::parse(b"\xa0").is_err());
    }
}
