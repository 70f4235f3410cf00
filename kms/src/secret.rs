//! Key material in transit: bytes and text that print as `[redacted]`, serialise as hex
//! (or as the text itself), and are wiped from memory when dropped.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes; JSON as lowercase hex.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as a 32-byte array, if they are exactly 32 bytes long.
    pub fn to_array32(&self) -> Option<[u8; 32]> {
        <[u8; 32]>::try_from(self.0.as_slice()).ok()
    }
}

impl From<[u8; 32]> for SecretBytes {
    fn from(b: [u8; 32]) -> Self {
        Self(b.to_vec())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[redacted {} bytes]", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = hex::encode(&self.0);
        let out = s.serialize_str(&text);
        text.zeroize();
        out
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom);
        text.zeroize();
        bytes.map(Self)
    }
}

/// Secret text (a PEM private key); JSON as the string itself.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(text: String) -> Self {
        Self(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_and_json_is_hex() {
        let s = SecretBytes::new(vec![0xab, 0xcd]);
        assert_eq!(format!("{s:?}"), "[redacted 2 bytes]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"abcd\"");
        let back: SecretBytes = serde_json::from_str("\"abcd\"").unwrap();
        assert_eq!(back, s);
        let t = SecretString::new("-----BEGIN PRIVATE KEY-----".into());
        assert_eq!(format!("{t:?}"), "[redacted]");
    }
}
