//! Deterministic per-app keys: `HKDF-SHA256(ikm = root secret, salt = app id bytes,
//! info = purpose)`. The same root secret and app id give the same keys on every KMS
//! replica, so an app keeps its data when it moves between machines.
//!
//! | purpose      | output                                                                   |
//! |--------------|--------------------------------------------------------------------------|
//! | `app-ca`     | P-256 private scalar (see [`app_ca_key`] for the rare retry)              |
//! | `disk`       | 32 bytes                                                                 |
//! | `env`        | X25519 private key (32 bytes, clamped by X25519 itself)                  |
//! | `app/<path>` | 32 bytes; `<path>` is 1-128 characters of `A-Z a-z 0-9 . _ - /`           |
//! | `app-k256`   | the app's secp256k1 root key for dstack's `GetKey` ([`crate::dstack_keys`]) |
//!
//! One KMS-wide key: the secp256k1 root (`HKDF-SHA256(ikm = root secret, salt =
//! "teegate-kms", info = "k256-root")`), whose public key `/v1/info` publishes.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

pub const PURPOSE_APP_CA: &str = "app-ca";
pub const PURPOSE_DISK: &str = "disk";
pub const PURPOSE_ENV: &str = "env";
pub const MAX_PATH_LEN: usize = 128;

/// The KMS root secret: 32 random bytes made once, shared only with onboarded replicas.
#[derive(Clone)]
pub struct RootSecret(Zeroizing<[u8; 32]>);

impl fmt::Debug for RootSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootSecret([redacted])")
    }
}

impl RootSecret {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn generate() -> Self {
        use rand_core::RngCore;
        let mut b = Zeroizing::new([0u8; 32]);
        rand_core::OsRng.fill_bytes(b.as_mut());
        Self(b)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// `HKDF-SHA256(ikm = root secret, salt = app id, info = purpose)` into `out`.
    pub fn hkdf(&self, app_id: &[u8; 20], purpose: &[u8], out: &mut [u8]) {
        // Outputs here are at most 32 bytes, far below HKDF's 255 * 32 limit.
        let _ = Hkdf::<Sha256>::new(Some(app_id), self.0.as_ref()).expand(purpose, out);
    }

    /// As [`RootSecret::hkdf`] with a salt that is not an app id (KMS-wide keys).
    pub fn hkdf_salted(&self, salt: &[u8], info: &[u8], out: &mut [u8]) {
        let _ = Hkdf::<Sha256>::new(Some(salt), self.0.as_ref()).expand(info, out);
    }

    fn bytes32(&self, app_id: &[u8; 20], purpose: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        self.hkdf(app_id, purpose, out.as_mut());
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    #[error("key path {0:?} must be 1-128 characters of A-Z a-z 0-9 . _ - / (no empty, '.' or '..' segments)")]
    BadPath(String),
}

/// The app CA private key. HKDF output that is not a valid P-256 scalar (zero or ≥ the
/// group order: probability about 2^-32) is re-derived with info `app-ca#1`, `app-ca#2`, …
pub fn app_ca_key(root: &RootSecret, app_id: &[u8; 20]) -> p256::SecretKey {
    let mut counter: u32 = 0;
    loop {
        let info = if counter == 0 {
            PURPOSE_APP_CA.to_string()
        } else {
            format!("{PURPOSE_APP_CA}#{counter}")
        };
        let bytes = root.bytes32(app_id, info.as_bytes());
        if let Ok(key) = p256::SecretKey::from_slice(bytes.as_ref()) {
            return key;
        }
        counter += 1;
    }
}

/// The app's disk encryption key.
pub fn disk_key(root: &RootSecret, app_id: &[u8; 20]) -> Zeroizing<[u8; 32]> {
    root.bytes32(app_id, PURPOSE_DISK.as_bytes())
}

/// The app's environment-decryption key (X25519).
pub fn env_secret(root: &RootSecret, app_id: &[u8; 20]) -> x25519_dalek::StaticSecret {
    x25519_dalek::StaticSecret::from(*root.bytes32(app_id, PURPOSE_ENV.as_bytes()))
}

/// The app's env public key, which users encrypt their secrets to.
pub fn env_public(root: &RootSecret, app_id: &[u8; 20]) -> [u8; 32] {
    *x25519_dalek::PublicKey::from(&env_secret(root, app_id)).as_bytes()
}

/// Checks an app-chosen key path.
pub fn check_path(path: &str) -> Result<(), DeriveError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
    let ok = !path.is_empty()
        && path.len() <= MAX_PATH_LEN
        && path.chars().all(ok_char)
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if ok {
        Ok(())
    } else {
        Err(DeriveError::BadPath(
            path.chars().take(MAX_PATH_LEN + 8).collect(),
        ))
    }
}

/// A 32-byte key for purpose `app/<path>`.
pub fn app_path_key(
    root: &RootSecret,
    app_id: &[u8; 20],
    path: &str,
) -> Result<Zeroizing<[u8; 32]>, DeriveError> {
    check_path(path)?;
    Ok(root.bytes32(app_id, format!("app/{path}").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> RootSecret {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        RootSecret::from_bytes(b)
    }

    const APP: [u8; 20] = [0xab; 20];

    /// Root secret 00 01 … 1f, app id ab×20. The expected values were computed
    /// independently (Python hmac/hashlib HKDF and the `cryptography` X25519).
    #[test]
    fn known_answers_pin_the_derivation() {
        let r = root();
        assert_eq!(hex::encode(*disk_key(&r, &APP)), KAT_DISK);
        assert_eq!(hex::encode(env_secret(&r, &APP).to_bytes()), KAT_ENV_SECRET);
        assert_eq!(hex::encode(env_public(&r, &APP)), KAT_ENV_PUBLIC);
        assert_eq!(hex::encode(app_ca_key(&r, &APP).to_bytes()), KAT_APP_CA);
        assert_eq!(
            hex::encode(*app_path_key(&r, &APP, "db/main").unwrap()),
            KAT_APP_PATH
        );
    }

    const KAT_DISK: &str = "6b9ae3db94fb3f13ed31b4e8c4f7f622b12865c9b43cbee091463b45ee430331";
    const KAT_ENV_SECRET: &str = "fea6963024b27a3866e02c866ebfbcdbe2c60b56a70a95789cf0cc40fa9ebdb8";
    const KAT_ENV_PUBLIC: &str = "6199cb67a0d32437980f9c5423a0632aa0b09ffa796f897e2d3d03636c1dce5a";
    const KAT_APP_CA: &str = "4ac1b7d4192858820c2d973a4fa3dabdc145a40c28429220c6acc89a3e53669d";
    const KAT_APP_PATH: &str = "76399a3dffc23668ba9fe4c31272f1061429ca655b24669404ab4e46b11979f1";

    #[test]
    fn different_apps_and_purposes_give_different_keys() {
        let r = root();
        assert_ne!(*disk_key(&r, &APP), *disk_key(&r, &[0xac; 20]));
        assert_ne!(
            *disk_key(&r, &APP),
            *app_path_key(&r, &APP, "disk").unwrap()
        );
        assert_ne!(
            *app_path_key(&r, &APP, "a").unwrap(),
            *app_path_key(&r, &APP, "b").unwrap()
        );
        let other = RootSecret::from_bytes([9; 32]);
        assert_ne!(*disk_key(&r, &APP), *disk_key(&other, &APP));
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../x",
            "a/./b",
            "sp ace",
            &"x".repeat(129),
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "db/main", "v1.2_x-y/z"] {
            check_path(good).unwrap();
        }
    }

    #[test]
    fn debug_redacts_root_secret() {
        assert_eq!(format!("{:?}", root()), "RootSecret([redacted])");
    }
}
