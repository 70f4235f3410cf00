//! The CCC "Interoperable RA-TLS" evidence encoding. The certificate extension
//! `2.23.133.5.4.9` carries CBOR `60000([quote, claims-buffer])`, and
//! `report_data[0..32] = SHA-256(claims-buffer)`, rest zero. The claims buffer is one CBOR
//! map (CDDL):
//!
//! ```text
//! claims-buffer = {
//!   "pubkey-hash": bstr .cbor [hash-alg-id, hash(SPKI DER)],  ; CCC: the key binding
//!   ? "nonce": bstr .size (0..64),                           ; CCC: a verifier's nonce
//!   ? "teegate-claims": {                                    ; teegate's app claims
//!       "app-id": tstr, "compose-hash": tstr, "instance-id": tstr,  ; lowercase hex
//!       "event-log": [* { "name": tstr, "payload": tstr }],          ; EventLog's serde form
//!       "simulated": bool,
//!   },
//!   * tstr => any,                                           ; other implementations' keys
//! }
//! ```
//!
//! Putting the app claims inside the claims buffer means the quote's report data binds
//! them directly and no private OID is needed (Go's crypto/x509 refuses OID arcs over 63
//! bits, which the earlier `2.25.<uuid>` extension had). A key appearing twice is refused:
//! two parsers must never read different claims from one buffer. Sizes are checked before
//! decoding: the extension value against [`MAX_EVIDENCE_LEN`], the claims buffer against
//! [`MAX_CLAIMS_LEN`], and both decode from bounded slices (ciborium grows buffers as bytes
//! arrive, so a length field cannot make it allocate beyond them).

use ciborium::value::{Integer, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

pub use super::claims::{CLAIMS_KEY, MAX_CLAIMS_LEN};
use crate::quote::MAX_QUOTE_LEN;
use crate::types::ReportData;

/// CBOR tag of TDX evidence in the CMW, per the CCC interoperable RA-TLS documents.
pub const EVIDENCE_CBOR_TAG: u64 = 60000;
/// Upper bound on the evidence extension we decode: a quote and a claims buffer at their
/// limits, plus CBOR framing.
pub const MAX_EVIDENCE_LEN: usize = MAX_QUOTE_LEN + MAX_CLAIMS_LEN + 64;
/// CCC's `nonce` claim, at most this long.
pub const MAX_NONCE_LEN: usize = 64;
/// The CCC key names.
pub const PUBKEY_HASH_KEY: &str = "pubkey-hash";
pub const NONCE_KEY: &str = "nonce";

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

/// Decodes CBOR from a slice no longer than `limit`, refusing longer input undecoded.
fn from_cbor_bounded(bytes: &[u8], limit: usize, what: &str) -> Result<Value, EvidenceError> {
    if bytes.len() > limit {
        return Err(err(format!(
            "{what} is {} bytes, over the {limit}-byte limit",
            bytes.len()
        )));
    }
    ciborium::from_reader(bytes).map_err(|e| err(format!("{what}: invalid CBOR: {e}")))
}

fn from_cbor(bytes: &[u8]) -> Result<Value, EvidenceError> {
    from_cbor_bounded(bytes, MAX_EVIDENCE_LEN, "evidence")
}

/// The claims buffer binding a public key (SPKI DER), with an optional client nonce and
/// teegate's app claims (the value under [`CLAIMS_KEY`]).
pub fn claims_buffer(spki_der: &[u8], nonce: Option<&[u8]>, app: Option<Value>) -> Vec<u8> {
    let alg = HashAlg::Sha256;
    let hash_entry = to_cbor(&Value::Array(vec![
        Value::Integer(Integer::from(alg as u8)),
        Value::Bytes(alg.digest(spki_der)),
    ]));
    let mut map = vec![(
        Value::Text(PUBKEY_HASH_KEY.into()),
        Value::Bytes(hash_entry),
    )];
    if let Some(n) = nonce {
        map.push((Value::Text(NONCE_KEY.into()), Value::Bytes(n.to_vec())));
    }
    if let Some(app) = app {
        map.push((Value::Text(CLAIMS_KEY.into()), app));
    }
    to_cbor(&Value::Map(map))
}

/// A key of a claims-buffer map as people read it: the text, or CBOR's debug form.
pub fn key_name(k: &Value) -> String {
    match k {
        Value::Text(t) => t.chars().take(80).collect(),
        Value::Integer(i) => i128::from(*i).to_string(),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

/// The entries of a claims buffer: a CBOR map whose keys each appear once.
pub fn claims_entries(bytes: &[u8]) -> Result<Vec<(Value, Value)>, EvidenceError> {
    let Value::Map(entries) = from_cbor_bounded(bytes, MAX_CLAIMS_LEN, "claims-buffer")? else {
        return Err(err("claims-buffer is not a CBOR map"));
    };
    for (i, (k, _)) in entries.iter().enumerate() {
        if entries[..i].iter().any(|(seen, _)| seen == k) {
            return Err(err(format!(
                "claims-buffer key {:?} appears twice",
                key_name(k)
            )));
        }
    }
    Ok(entries)
}

/// The value under a text key of decoded claims-buffer entries.
pub fn entry<'a>(entries: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// Keys that neither CCC nor teegate define (other implementations' claims), for display.
pub fn other_keys(entries: &[(Value, Value)]) -> Vec<String> {
    entries
        .iter()
        .filter(|(k, _)| !matches!(k.as_text(), Some(PUBKEY_HASH_KEY | NONCE_KEY | CLAIMS_KEY)))
        .map(|(k, _)| key_name(k))
        .collect()
}

/// The CCC `nonce` of decoded claims-buffer entries, if any.
pub fn nonce_of(entries: &[(Value, Value)]) -> Result<Option<Vec<u8>>, EvidenceError> {
    match entry(entries, NONCE_KEY) {
        None => Ok(None),
        Some(Value::Bytes(b)) if b.len() <= MAX_NONCE_LEN => Ok(Some(b.clone())),
        Some(_) => Err(err("nonce must be a byte string of at most 64 bytes")),
    }
}

/// What a claims buffer says about the key binding and freshness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsBuffer {
    pub hash_alg: HashAlg,
    pub pubkey_hash: Vec<u8>,
    pub nonce: Option<Vec<u8>>,
}

impl ClaimsBuffer {
    pub fn parse(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let entries = claims_entries(bytes)?;
        let nonce = nonce_of(&entries)?;
        let pubkey = match entry(&entries, PUBKEY_HASH_KEY) {
            Some(Value::Bytes(b)) => b,
            Some(_) => return Err(err("pubkey-hash is not a byte string")),
            None => return Err(err("claims-buffer has no pubkey-hash")),
        };
        let Value::Array(hash_entry) = from_cbor(pubkey)? else {
            return Err(err("pubkey-hash is not a CBOR [alg, hash] array"));
        };
        let [Value::Integer(alg), Value::Bytes(hash)] = hash_entry.as_slice() else {
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
        let cb = claims_buffer(spki, Some(b"nonce"), None);
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
        let cb = claims_buffer(b"spki", None, None);
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

    #[test]
    fn duplicate_keys_and_oversized_buffers_are_refused_before_decoding() {
        let pk = Value::Text(PUBKEY_HASH_KEY.into());
        let twice = to_cbor(&Value::Map(vec![
            (pk.clone(), Value::Bytes(vec![1])),
            (pk, Value::Bytes(vec![2])),
        ]));
        assert!(claims_entries(&twice).unwrap_err().0.contains("twice"));
        let big = vec![0u8; MAX_CLAIMS_LEN + 1];
        assert!(claims_entries(&big).unwrap_err().0.contains("limit"));
        assert!(decode(&vec![0u8; MAX_EVIDENCE_LEN + 1])
            .unwrap_err()
            .0
            .contains("limit"));
    }

    #[test]
    fn length_fields_beyond_the_input_do_not_allocate() {
        // A map header claiming 2^32 entries, and a byte string claiming 2^62 bytes: the
        // decoder must fail at the end of the (short) input, not reserve that memory.
        let huge_map = [0xbau8, 0xff, 0xff, 0xff, 0xff, 0x61, b'a'];
        assert!(claims_entries(&huge_map).is_err());
        let huge_bstr = [0xa1u8, 0x61, b'a', 0x5b, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2];
        assert!(claims_entries(&huge_bstr).is_err());
    }

    #[test]
    fn other_implementations_keys_are_listed() {
        let mut map = vec![(Value::Text("rats-tls-extra".into()), Value::Bool(true))];
        map.push((Value::Integer(Integer::from(7u8)), Value::Null));
        map.push((Value::Text(NONCE_KEY.into()), Value::Bytes(vec![1])));
        let entries = claims_entries(&to_cbor(&Value::Map(map))).unwrap();
        assert_eq!(other_keys(&entries), ["rats-tls-extra", "7"]);
    }
}
