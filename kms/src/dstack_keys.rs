//! dstack's secp256k1 key chain, so the `signature_chain` of dstack's `GetKey` verifies:
//!
//! ```text
//!  KMS k256 root ──signs──▶ app k256 root public key    (GetKey signature_chain[1])
//!  app k256 root ──signs──▶ derived key's public key     (GetKey signature_chain[0])
//! ```
//!
//! Signatures are dstack's: secp256k1 ECDSA over a Keccak-256 digest, 65 bytes `r ‖ s ‖ v`
//! (v the recovery id, so a verifier recovers the signer's key). The KMS signs
//! `"dstack-kms-issued" ‖ ":" ‖ app id (20 bytes) ‖ compressed SEC1 app public key`
//! (dstack's `kms/src/crypto.rs`); the sidecar signs `"<purpose>:<hex of the derived
//! public key>"` (dstack's guest agent). Keys are derived from the root secret like every
//! other teegate key, so every KMS replica derives the same chain.

use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use sha3::{Digest, Keccak256};
use zeroize::Zeroizing;

use crate::derive::RootSecret;

pub const PURPOSE_K256_ROOT: &str = "k256-root";
pub const PURPOSE_APP_K256: &str = "app-k256";
/// The salt of KMS-wide (not per-app) keys.
pub const KMS_SALT: &[u8] = b"teegate-kms";
/// What the KMS's signature over an app's k256 public key starts with (dstack's prefix).
pub const KMS_ISSUED_PREFIX: &[u8] = b"dstack-kms-issued";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum K256Error {
    #[error("not a secp256k1 private key")]
    BadKey,
    #[error("secp256k1 signing failed: {0}")]
    Sign(String),
    #[error("signature must be 65 bytes r ‖ s ‖ v")]
    BadSignature,
}

/// HKDF output until it is a valid scalar (a miss has probability about 2^-128).
fn scalar_from(mut next: impl FnMut(u32) -> Zeroizing<[u8; 32]>) -> SigningKey {
    let mut counter = 0;
    loop {
        if let Ok(k) = SigningKey::from_slice(next(counter).as_ref()) {
            return k;
        }
        counter += 1;
    }
}

fn info(purpose: &str, counter: u32) -> String {
    if counter == 0 {
        purpose.to_string()
    } else {
        format!("{purpose}#{counter}")
    }
}

/// The KMS's secp256k1 root key.
pub fn kms_k256_root(root: &RootSecret) -> SigningKey {
    scalar_from(|c| {
        let mut out = Zeroizing::new([0u8; 32]);
        root.hkdf_salted(
            KMS_SALT,
            info(PURPOSE_K256_ROOT, c).as_bytes(),
            out.as_mut(),
        );
        out
    })
}

/// The app's secp256k1 root key (dstack's `k256_key` of the app keys).
pub fn app_k256_key(root: &RootSecret, app_id: &[u8; 20]) -> SigningKey {
    scalar_from(|c| {
        let mut out = Zeroizing::new([0u8; 32]);
        root.hkdf(app_id, info(PURPOSE_APP_K256, c).as_bytes(), out.as_mut());
        out
    })
}

/// Compressed SEC1 encoding (33 bytes), as dstack's `to_sec1_bytes()`.
pub fn public_sec1(key: &VerifyingKey) -> Vec<u8> {
    key.to_encoded_point(true).as_bytes().to_vec()
}

/// The compressed public key of a released app k256 key (32 secret bytes).
pub fn app_k256_public(secret: &[u8]) -> Result<Vec<u8>, K256Error> {
    let key = SigningKey::from_slice(secret).map_err(|_| K256Error::BadKey)?;
    Ok(public_sec1(key.verifying_key()))
}

/// dstack's signature: Keccak-256 of `message`, recoverable ECDSA, `r ‖ s ‖ v`.
pub fn sign_recoverable(key: &SigningKey, message: &[u8]) -> Result<[u8; 65], K256Error> {
    let (sig, recid) = key
        .sign_digest_recoverable(Keccak256::new_with_prefix(message))
        .map_err(|e| K256Error::Sign(e.to_string()))?;
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&sig.to_bytes());
    out[64] = recid.to_byte();
    Ok(out)
}

/// The signer of a [`sign_recoverable`] signature.
pub fn recover(message: &[u8], signature: &[u8]) -> Result<VerifyingKey, K256Error> {
    if signature.len() != 65 {
        return Err(K256Error::BadSignature);
    }
    let sig = Signature::from_slice(&signature[..64]).map_err(|_| K256Error::BadSignature)?;
    let recid = RecoveryId::from_byte(signature[64]).ok_or(K256Error::BadSignature)?;
    VerifyingKey::recover_from_digest(Keccak256::new_with_prefix(message), &sig, recid)
        .map_err(|_| K256Error::BadSignature)
}

/// What the KMS signs for an app's k256 root public key.
pub fn kms_issued_message(app_id: &[u8; 20], app_public_sec1: &[u8]) -> Vec<u8> {
    [KMS_ISSUED_PREFIX, b":", app_id, app_public_sec1].concat()
}

/// The KMS root's signature over the app's k256 root public key (`signature_chain[1]`).
pub fn kms_signature_for_app(
    kms_root: &SigningKey,
    app_id: &[u8; 20],
    app_key: &SigningKey,
) -> Result<[u8; 65], K256Error> {
    let message = kms_issued_message(app_id, &public_sec1(app_key.verifying_key()));
    sign_recoverable(kms_root, &message)
}

/// The app root's signature over a derived public key (`signature_chain[0]`).
pub fn app_signature_for_key(
    app_key: &SigningKey,
    purpose: &str,
    derived_public: &[u8],
) -> Result<[u8; 65], K256Error> {
    let message = format!("{purpose}:{}", hex::encode(derived_public));
    sign_recoverable(app_key, message.as_bytes())
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

    /// Root secret 00 01 … 1f, app id ab×20; computed apart from this code (Python hmac
    /// HKDF, `cryptography`'s SECP256K1 for the public key).
    #[test]
    fn known_answers_pin_the_k256_derivation() {
        let r = root();
        assert_eq!(hex::encode(kms_k256_root(&r).to_bytes()), KAT_KMS_ROOT);
        assert_eq!(
            hex::encode(public_sec1(kms_k256_root(&r).verifying_key())),
            KAT_KMS_ROOT_PUB
        );
        assert_eq!(hex::encode(app_k256_key(&r, &APP).to_bytes()), KAT_APP_K256);
    }

    const KAT_KMS_ROOT: &str = "43d8dc9731937a5e4f81fc49d92fe8aa57d2f5a9bece51217b3266eeeb2ad149";
    const KAT_KMS_ROOT_PUB: &str =
        "0237a0bf18afc68883b65e8fd13e0308febfb80ea057dce509aa6538286494f8cf";
    const KAT_APP_K256: &str = "9b1f367bc7fcf50b8d35a7fada8b3e62dff306ae2d29878cc02301b8efef04cd";

    #[test]
    fn the_chain_recovers_to_the_kms_root() {
        let r = root();
        let kms = kms_k256_root(&r);
        let app = app_k256_key(&r, &APP);
        let sig = kms_signature_for_app(&kms, &APP, &app).unwrap();
        let msg = kms_issued_message(&APP, &public_sec1(app.verifying_key()));
        assert_eq!(&recover(&msg, &sig).unwrap(), kms.verifying_key());
        let derived = [7u8; 33];
        let sig0 = app_signature_for_key(&app, "signing", &derived).unwrap();
        let msg0 = format!("signing:{}", hex::encode(derived));
        assert_eq!(
            &recover(msg0.as_bytes(), &sig0).unwrap(),
            app.verifying_key()
        );
        // Another app's key is not what the KMS signed for this one.
        let other = app_k256_key(&r, &[0xac; 20]);
        assert_ne!(&recover(&msg, &sig).unwrap(), other.verifying_key());
        assert_ne!(app.to_bytes(), other.to_bytes());
        assert!(recover(&msg, &sig[..64]).is_err());
    }
}
