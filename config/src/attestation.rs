//! `[attestation]` of the gateway: the gateway runs as a teegate app in a CVM and uses its
//! sidecar's guest API for its own quotes and for the key that seals its private keys in
//! the store. Absent: the gateway is not attested, and says so on every surface.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::validate::{key, non_empty_path, Validate};

/// The default KMS derivation path of the store-sealing key.
pub const DEFAULT_SEAL_KEY_PATH: &str = "gateway/store";

/// `[attestation]`: the guest API of the CVM the gateway runs in.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    /// The sidecar's guest API Unix socket (required in the table), e.g.
    /// `/var/run/teegate/teegate.sock` mounted into the gateway's container.
    pub guest_api: PathBuf,
    /// Derivation path of the key that seals private keys in the store (default
    /// `gateway/store`); every replica of the same gateway app derives the same key.
    #[serde(default = "default_key_path")]
    pub key_path: String,
}

fn default_key_path() -> String {
    DEFAULT_SEAL_KEY_PATH.to_string()
}

impl Validate for AttestationConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        non_empty_path(at, "guest_api", &self.guest_api)?;
        // The guest API's own rule for key paths, so a bad one fails at load, not at start.
        let ok = !self.key_path.is_empty()
            && self.key_path.len() <= 256
            && self
                .key_path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !ok {
            return Err(ConfigError::invalid(
                key(at, "key_path"),
                "must be 1 to 256 characters of A-Z, a-z, 0-9, '-', '_', '.' or '/'",
            ));
        }
        Ok(())
    }
}
