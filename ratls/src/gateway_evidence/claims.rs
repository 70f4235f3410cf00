//! The gateway's claims: the keys it holds and when it quoted them, under the
//! claims-buffer key [`GATEWAY_KEY`]. Encoded and decoded by hand from CBOR values, so
//! every field is checked and nothing unknown inside our map is silently accepted.

use ciborium::value::{Integer, Value};
use serde::{Deserialize, Serialize};

use crate::cert::claims::MAX_CLAIMS_LEN;
use crate::cert::evidence::{self, EvidenceError, NONCE_KEY};
use crate::types::SpkiHash;

/// The claims-buffer key holding the gateway's claims (beside CCC's optional `nonce`).
pub const GATEWAY_KEY: &str = "teegate-gateway";
/// Most keys one evidence binds. With names at their limit the buffer stays under
/// [`MAX_CLAIMS_LEN`]; a gateway holding more must not publish a buffer verifiers refuse.
pub const MAX_BOUND_KEYS: usize = 256;
/// Longest key name (a DNS name is at most 253; an ACME account URL a little longer).
pub const MAX_KEY_NAME_LEN: usize = 512;

const KEYS: &str = "keys";
const ISSUED_AT: &str = "issued-at";
const ROLE: &str = "role";
const NAME: &str = "name";
const SPKI: &str = "spki-sha256";

/// What a bound key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyRole {
    /// The key of a certificate the gateway serves to TLS clients.
    Certificate,
    /// The key of the ACME account that orders its certificates (which CAA pins).
    AcmeAccount,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Certificate => "certificate",
            KeyRole::AcmeAccount => "acme-account",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "certificate" => Some(KeyRole::Certificate),
            "acme-account" => Some(KeyRole::AcmeAccount),
            _ => None,
        }
    }
}

/// One key the gateway's quote binds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BoundKey {
    pub role: KeyRole,
    /// The certificate's name (`*.<base>`, a custom domain) or the ACME account URL.
    pub name: String,
    pub spki_sha256: SpkiHash,
}

/// Everything the gateway's claims buffer says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayClaims {
    pub keys: Vec<BoundKey>,
    /// Unix seconds when the gateway made the quote.
    pub issued_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_hex")]
    pub nonce: Option<Vec<u8>>,
}

mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| hex::decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

fn err(msg: impl Into<String>) -> EvidenceError {
    EvidenceError(msg.into())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_KEY_NAME_LEN && name.chars().all(|c| !c.is_control())
}

impl GatewayClaims {
    /// The key bound for this SubjectPublicKeyInfo hash, if any.
    pub fn find(&self, spki: &SpkiHash) -> Option<&BoundKey> {
        self.keys.iter().find(|k| k.spki_sha256 == *spki)
    }

    /// The claims buffer (CBOR) whose SHA-256 the quote's report data carries. Refuses
    /// claims a verifier would refuse, so a gateway never publishes dead evidence.
    pub fn to_claims_buffer(&self) -> Result<Vec<u8>, EvidenceError> {
        if self.keys.len() > MAX_BOUND_KEYS {
            return Err(err(format!(
                "{} keys, over the {MAX_BOUND_KEYS}-key limit",
                self.keys.len()
            )));
        }
        if let Some(k) = self.keys.iter().find(|k| !valid_name(&k.name)) {
            return Err(err(format!(
                "key name {:?} must be 1-{MAX_KEY_NAME_LEN} characters without control characters",
                k.name.chars().take(80).collect::<String>()
            )));
        }
        if self
            .nonce
            .as_ref()
            .is_some_and(|n| n.len() > evidence::MAX_NONCE_LEN)
        {
            return Err(err("nonce is over 64 bytes"));
        }
        let keys = self
            .keys
            .iter()
            .map(|k| {
                Value::Map(vec![
                    (
                        Value::Text(ROLE.into()),
                        Value::Text(k.role.as_str().into()),
                    ),
                    (Value::Text(NAME.into()), Value::Text(k.name.clone())),
                    (
                        Value::Text(SPKI.into()),
                        Value::Bytes(k.spki_sha256.0.to_vec()),
                    ),
                ])
            })
            .collect();
        let gateway = Value::Map(vec![
            (Value::Text(KEYS.into()), Value::Array(keys)),
            (
                Value::Text(ISSUED_AT.into()),
                Value::Integer(Integer::from(self.issued_at)),
            ),
        ]);
        let mut map = vec![(Value::Text(GATEWAY_KEY.into()), gateway)];
        if let Some(n) = &self.nonce {
            map.push((Value::Text(NONCE_KEY.into()), Value::Bytes(n.clone())));
        }
        let mut out = Vec::new();
        ciborium::into_writer(&Value::Map(map), &mut out).map_err(|e| err(format!("CBOR: {e}")))?;
        if out.len() > MAX_CLAIMS_LEN {
            return Err(err(format!(
                "claims buffer is {} bytes, over the {MAX_CLAIMS_LEN}-byte limit",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Decodes a claims buffer (bounded before decoding, keys unique).
    pub fn from_claims_buffer(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let entries = evidence::claims_entries(bytes)?;
        let nonce = evidence::nonce_of(&entries)?;
        let Some(Value::Map(fields)) = evidence::entry(&entries, GATEWAY_KEY) else {
            return Err(err(format!(
                "the claims buffer has no {GATEWAY_KEY:?} map (is this a gateway's evidence?)"
            )));
        };
        let mut keys = None;
        let mut issued_at = None;
        for (i, (k, v)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(seen, _)| seen == k) {
                return Err(err(format!(
                    "{GATEWAY_KEY} key {:?} appears twice",
                    evidence::key_name(k)
                )));
            }
            match (k.as_text(), v) {
                (Some(KEYS), Value::Array(items)) => {
                    if items.len() > MAX_BOUND_KEYS {
                        return Err(err(format!(
                            "{} keys, over the {MAX_BOUND_KEYS}-key limit",
                            items.len()
                        )));
                    }
                    keys = Some(items.iter().map(bound_key).collect::<Result<Vec<_>, _>>()?);
                }
                (Some(ISSUED_AT), Value::Integer(n)) => {
                    issued_at = Some(
                        u64::try_from(i128::from(*n))
                            .map_err(|_| err("issued-at is not a unix time"))?,
                    );
                }
                (Some(KEYS | ISSUED_AT), _) => {
                    return Err(err(format!(
                        "{GATEWAY_KEY} {} has the wrong type",
                        evidence::key_name(k)
                    )))
                }
                _ => {
                    return Err(err(format!(
                        "{GATEWAY_KEY} has an unknown key {:?}",
                        evidence::key_name(k)
                    )))
                }
            }
        }
        Ok(Self {
            keys: keys.ok_or_else(|| err(format!("{GATEWAY_KEY} has no keys")))?,
            issued_at: issued_at.ok_or_else(|| err(format!("{GATEWAY_KEY} has no issued-at")))?,
            nonce,
        })
    }
}

fn bound_key(v: &Value) -> Result<BoundKey, EvidenceError> {
    let Value::Map(fields) = v else {
        return Err(err("a bound key is not a map"));
    };
    if fields.len() != 3 {
        return Err(err("a bound key has exactly role, name and spki-sha256"));
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.as_text() == Some(name))
            .map(|(_, v)| v)
            .ok_or_else(|| err(format!("a bound key has no {name}")))
    };
    let role = match field(ROLE)? {
        Value::Text(t) => KeyRole::parse(t).ok_or_else(|| {
            err(format!(
                "unknown key role {:?}",
                t.chars().take(40).collect::<String>()
            ))
        })?,
        _ => return Err(err("role is not text")),
    };
    let name = match field(NAME)? {
        Value::Text(t) if valid_name(t) => t.clone(),
        _ => {
            return Err(err(format!(
                "name must be text of 1-{MAX_KEY_NAME_LEN} characters without control characters"
            )))
        }
    };
    let spki_sha256 = match field(SPKI)? {
        Value::Bytes(b) => SpkiHash::from_slice(b)
            .ok_or_else(|| err(format!("spki-sha256 is {} bytes, not 32", b.len())))?,
        _ => return Err(err("spki-sha256 is not a byte string")),
    };
    Ok(BoundKey {
        role,
        name,
        spki_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> GatewayClaims {
        GatewayClaims {
            keys: vec![
                BoundKey {
                    role: KeyRole::Certificate,
                    name: "*.apps.test".into(),
                    spki_sha256: SpkiHash([1; 32]),
                },
                BoundKey {
                    role: KeyRole::AcmeAccount,
                    name: "https://acme.test/acct/1".into(),
                    spki_sha256: SpkiHash([2; 32]),
                },
            ],
            issued_at: 1_800_000_000,
            nonce: Some(vec![7; 8]),
        }
    }

    fn buffer(gateway: Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(
            &Value::Map(vec![(Value::Text(GATEWAY_KEY.into()), gateway)]),
            &mut out,
        )
        .unwrap();
        out
    }

    #[test]
    fn claims_roundtrip_through_the_claims_buffer() {
        let c = claims();
        let cb = c.to_claims_buffer().unwrap();
        assert_eq!(GatewayClaims::from_claims_buffer(&cb).unwrap(), c);
        assert_eq!(
            c.find(&SpkiHash([2; 32])).unwrap().role,
            KeyRole::AcmeAccount
        );
        assert!(c.find(&SpkiHash([3; 32])).is_none());
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["keys"][1]["role"], "acme-account");
        assert_eq!(json["keys"][0]["spki_sha256"], "01".repeat(32));
    }

    #[test]
    fn refuses_malformed_gateway_claims() {
        let good_key = || {
            Value::Map(vec![
                (Value::Text(ROLE.into()), Value::Text("certificate".into())),
                (Value::Text(NAME.into()), Value::Text("a.test".into())),
                (Value::Text(SPKI.into()), Value::Bytes(vec![0; 32])),
            ])
        };
        let with = |keys: Vec<Value>, extra: Option<(Value, Value)>| {
            let mut m = vec![
                (Value::Text(KEYS.into()), Value::Array(keys)),
                (Value::Text(ISSUED_AT.into()), Value::Integer(1u8.into())),
            ];
            m.extend(extra);
            buffer(Value::Map(m))
        };
        GatewayClaims::from_claims_buffer(&with(vec![good_key()], None)).unwrap();
        let short_spki = Value::Map(vec![
            (Value::Text(ROLE.into()), Value::Text("certificate".into())),
            (Value::Text(NAME.into()), Value::Text("a.test".into())),
            (Value::Text(SPKI.into()), Value::Bytes(vec![0; 31])),
        ]);
        let bad_role = Value::Map(vec![
            (Value::Text(ROLE.into()), Value::Text("root".into())),
            (Value::Text(NAME.into()), Value::Text("a.test".into())),
            (Value::Text(SPKI.into()), Value::Bytes(vec![0; 32])),
        ]);
        let control_name = Value::Map(vec![
            (Value::Text(ROLE.into()), Value::Text("certificate".into())),
            (Value::Text(NAME.into()), Value::Text("a\nb".into())),
            (Value::Text(SPKI.into()), Value::Bytes(vec![0; 32])),
        ]);
        for (buf, why) in [
            (with(vec![short_spki], None), "not 32"),
            (with(vec![bad_role], None), "unknown key role"),
            (with(vec![control_name], None), "control"),
            (
                with(
                    vec![good_key()],
                    Some((Value::Text("extra".into()), Value::Null)),
                ),
                "unknown key",
            ),
            (
                with(vec![good_key(); MAX_BOUND_KEYS + 1], None),
                "key limit",
            ),
            (buffer(Value::Map(vec![])), "has no keys"),
            (b"\xa0".to_vec(), "no \"teegate-gateway\""),
        ] {
            let e = GatewayClaims::from_claims_buffer(&buf).unwrap_err();
            assert!(e.0.contains(why), "{why}: {e}");
        }
        let big = vec![0u8; MAX_CLAIMS_LEN + 1];
        assert!(GatewayClaims::from_claims_buffer(&big)
            .unwrap_err()
            .0
            .contains("limit"));
    }

    #[test]
    fn a_gateway_never_encodes_claims_a_verifier_refuses() {
        let mut c = claims();
        c.keys = vec![c.keys[0].clone(); MAX_BOUND_KEYS + 1];
        assert!(c.to_claims_buffer().unwrap_err().0.contains("limit"));
        let mut c = claims();
        c.keys[0].name = "x".repeat(MAX_KEY_NAME_LEN + 1);
        assert!(c.to_claims_buffer().is_err());
        // At the limits, the buffer still fits.
        let mut c = claims();
        c.keys = (0..MAX_BOUND_KEYS)
            .map(|i| BoundKey {
                role: KeyRole::Certificate,
                name: format!("{i}{}", "n".repeat(MAX_KEY_NAME_LEN - 4)),
                spki_sha256: SpkiHash([9; 32]),
            })
            .collect();
        let cb = c.to_claims_buffer().unwrap();
        assert_eq!(
            GatewayClaims::from_claims_buffer(&cb).unwrap().keys.len(),
            MAX_BOUND_KEYS
        );
    }
}
