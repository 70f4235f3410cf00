//! Small value types that cross the crate boundary: measurements, report data, app and
//! instance identities, and certificate fingerprints. Each parses from hex and prints as
//! lowercase hex, so logs, config and JSON all show the same text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Why a hex string could not become one of the fixed-size types here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} hex characters for {what}, got {found:?}")]
pub struct HexError {
    pub what: &'static str,
    pub expected: usize,
    pub found: String,
}

fn parse_hex<const N: usize>(what: &'static str, text: &str) -> Result<[u8; N], HexError> {
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let err = || HexError {
        what,
        expected: N * 2,
        found: text.chars().take(2 * N + 8).collect(),
    };
    if body.len() != N * 2 {
        return Err(err());
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(body, &mut out).map_err(|_| err())?;
    Ok(out)
}

macro_rules! hex_type {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                let mut buf = [0u8; $len * 2];
                self.hex_into(&mut buf).to_owned()
            }

            /// The lower-case hex form written into `buf`, without allocating (a request's
            /// metric label, `Display`).
            pub fn hex_into<'a>(&self, buf: &'a mut [u8; $len * 2]) -> &'a str {
                // The buffer is exactly twice the bytes and hex digits are ASCII, so
                // neither step can fail.
                let _ = hex::encode_to_slice(self.0, &mut buf[..]);
                std::str::from_utf8(&buf[..]).unwrap_or_default()
            }

            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(bytes).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.hex_into(&mut [0u8; $len * 2]))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = HexError;
            fn from_str(s: &str) -> Result<Self, HexError> {
                parse_hex::<$len>($what, s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_type!(
    /// A 48-byte TDX measurement register value (MRTD or an RTMR), SHA-384 sized.
    Measurement, 48, "a measurement"
);
hex_type!(
    /// The 64 bytes a TD puts into its quote; RA-TLS binds a key through them.
    ReportData, 64, "report data"
);
hex_type!(
    /// An app's identity: by default the first 20 bytes of its compose hash.
    AppId, 20, "an app id"
);
hex_type!(
    /// SHA-256 of an app's `app-compose.json` bytes.
    ComposeHash, 32, "a compose hash"
);
hex_type!(
    /// One CVM instance of an app; chosen at boot, recorded in RTMR3.
    InstanceId, 20, "an instance id"
);
hex_type!(
    /// SHA-256 of a certificate's DER encoding.
    Fingerprint, 32, "a certificate fingerprint"
);

hex_type!(
    /// SHA-256 of a public key's SubjectPublicKeyInfo DER: what the gateway's evidence
    /// binds for each key it holds.
    SpkiHash, 32, "an SPKI SHA-256"
);

impl Measurement {
    pub const ZERO: Measurement = Measurement([0; 48]);
}

impl ReportData {
    pub const ZERO: ReportData = ReportData([0; 64]);
}

impl ComposeHash {
    /// The compose hash of an `app-compose.json` file's exact bytes.
    pub fn of(compose_bytes: &[u8]) -> Self {
        Self(Sha256::digest(compose_bytes).into())
    }

    /// The default app id: the first 20 bytes of the compose hash.
    pub fn default_app_id(&self) -> AppId {
        let mut id = [0u8; 20];
        id.copy_from_slice(&self.0[..20]);
        AppId(id)
    }
}

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl SpkiHash {
    /// The hash of a SubjectPublicKeyInfo (DER).
    pub fn of(spki_der: &[u8]) -> Self {
        Self(Sha256::digest(spki_der).into())
    }

    /// The hash of a certificate's public key; `None` when the DER is not a certificate.
    pub fn of_certificate(cert_der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::FromDer;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
        Some(Self::of(cert.public_key().raw))
    }
}

impl Default for Measurement {
    fn default() -> Self {
        Self::ZERO
    }
}

impl Default for ReportData {
    fn default() -> Self {
        Self::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_id_accepts_prefix_and_upper_case() {
        let id: AppId = "0xABCDEF0123456789abcdef0123456789ABCDEF01"
            .parse()
            .unwrap();
        assert_eq!(id.to_hex(), "abcdef0123456789abcdef0123456789abcdef01");
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        assert!("abcd".parse::<AppId>().is_err());
        let err = "zz".repeat(20).parse::<AppId>().unwrap_err();
        assert_eq!(err.expected, 40);
        assert!(err.to_string().contains("app id"));
    }

    #[test]
    fn default_app_id_is_compose_hash_prefix() {
        let hash = ComposeHash::of(b"{}");
        assert_eq!(hash.default_app_id().0, hash.0[..20]);
    }

    #[test]
    fn serde_roundtrip_is_hex() {
        let m = Measurement([7; 48]);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, format!("\"{}\"", "07".repeat(48)));
        assert_eq!(serde_json::from_str::<Measurement>(&json).unwrap(), m);
    }
}
