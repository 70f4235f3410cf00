//! Public-key boxes, built only from well-kept RustCrypto / dalek crates.
//!
//! ## Encrypted environment (`teegate-env-v1`)
//! Users encrypt a `.env` file to an app before deploying it; only an instance the KMS
//! released the app's `env` key to can decrypt it. The file is one JSON object:
//!
//! ```json
//! { "format": "teegate-env-v1", "app_id": "<40 hex>",
//!   "ephemeral_public": "<64 hex>", "nonce": "<24 hex>", "ciphertext": "<hex>" }
//! ```
//!
//! - `e` is a fresh X25519 key; `ephemeral_public = X25519(e, base point)`.
//! - `shared = X25519(e, env_public)`; an all-zero (non-contributory) result is refused.
//! - `key = HKDF-SHA256(ikm = shared, salt = ephemeral_public ‖ env_public,
//!   info = "teegate-env-v1 chacha20poly1305")`, 32 bytes.
//! - `ciphertext = ChaCha20-Poly1305(key, nonce, plaintext, aad = "teegate-env-v1:" ‖ app id
//!   bytes)`, with a random 12-byte nonce; the tag is the last 16 bytes.
//!
//! The plaintext is the `.env` file's bytes, unchanged. Binding the app id as AAD means a
//! file made for one app is refused by another even if both had the same key.
//!
//! ## Replica onboarding box (`teegate-p256-v1`)
//! The same construction on P-256 (ECDH with the recipient's RA-TLS certificate key; the
//! shared secret is the x coordinate; `info = "teegate-p256-v1 chacha20poly1305"`; public
//! keys as uncompressed SEC1 points), with caller-chosen AAD.
//!
//! ## Env public key signature
//! `GET /v1/apps/<id>/env-key` is signed by the root CA key: ECDSA P-256 / SHA-256 over
//! [`env_key_message`]. [`verify_env_key`] checks it against a root certificate the user
//! pinned.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use p256::ecdsa::signature::Verifier;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::api::EnvKeyResponse;

pub const ENV_FORMAT: &str = "teegate-env-v1";
pub const P256_FORMAT: &str = "teegate-p256-v1";
const ENV_INFO: &[u8] = b"teegate-env-v1 chacha20poly1305";
const P256_INFO: &[u8] = b"teegate-p256-v1 chacha20poly1305";
const ENV_KEY_DOMAIN: &[u8] = b"teegate-env-key-v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("not a {expected} envelope (format {found:?})")]
    Format {
        expected: &'static str,
        found: String,
    },
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("envelope is for app {found}, not app {expected}")]
    WrongApp { expected: String, found: String },
    #[error("key agreement gave an all-zero secret (invalid public key)")]
    NonContributory,
    #[error("decryption failed: wrong key, wrong app, or the envelope was altered")]
    Decrypt,
    #[error("bad public key: {0}")]
    PublicKey(String),
    #[error("env key signature does not verify against the pinned KMS root: {0}")]
    Signature(String),
    #[error("root certificate: {0}")]
    RootCert(String),
}

/// An encrypted environment file (see the module docs for the format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvEnvelope {
    pub format: String,
    pub app_id: String,
    pub ephemeral_public: String,
    pub nonce: String,
    pub ciphertext: String,
}

/// A P-256 box (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct P256Box {
    pub format: String,
    pub ephemeral_public: String,
    pub nonce: String,
    pub ciphertext: String,
}

fn aead_key(shared: &[u8], eph: &[u8], recipient: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut salt = Vec::with_capacity(eph.len() + recipient.len());
    salt.extend_from_slice(eph);
    salt.extend_from_slice(recipient);
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = Hkdf::<Sha256>::new(Some(&salt), shared).expand(info, key.as_mut());
    key
}

fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> ([u8; 12], Vec<u8>) {
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    // Encryption only fails for inputs over ~256 GiB.
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    (nonce, ct)
}

fn open(
    key: &[u8; 32],
    nonce_hex: &str,
    ct_hex: &str,
    aad: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let nonce: [u8; 12] = hex_array(nonce_hex, "nonce")?;
    let ct =
        hex::decode(ct_hex).map_err(|e| EnvelopeError::Malformed(format!("ciphertext: {e}")))?;
    ChaCha20Poly1305::new(&Key::from(*key))
        .decrypt(&Nonce::from(nonce), Payload { msg: &ct, aad })
        .map_err(|_| EnvelopeError::Decrypt)
}

fn hex_array<const N: usize>(text: &str, what: &str) -> Result<[u8; N], EnvelopeError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| {
        EnvelopeError::Malformed(format!("{what} must be {} hex characters", 2 * N))
    })?;
    Ok(out)
}

fn env_aad(app_id: &[u8; 20]) -> Vec<u8> {
    let mut aad = b"teegate-env-v1:".to_vec();
    aad.extend_from_slice(app_id);
    aad
}

/// Encrypts `plaintext` (a `.env` file) to an app's env public key.
pub fn seal_env(
    app_id: &[u8; 20],
    env_public: &[u8; 32],
    plaintext: &[u8],
) -> Result<EnvEnvelope, EnvelopeError> {
    let eph = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    let eph_pub = x25519_dalek::PublicKey::from(&eph);
    let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(*env_public));
    if !shared.was_contributory() {
        return Err(EnvelopeError::NonContributory);
    }
    let key = aead_key(shared.as_bytes(), eph_pub.as_bytes(), env_public, ENV_INFO);
    let (nonce, ct) = seal(&key, &env_aad(app_id), plaintext);
    Ok(EnvEnvelope {
        format: ENV_FORMAT.into(),
        app_id: hex::encode(app_id),
        ephemeral_public: hex::encode(eph_pub.as_bytes()),
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(ct),
    })
}

/// Decrypts an env envelope with the app's env private key (from `POST /v1/app-keys`),
/// checking it was made for `app_id`.
pub fn open_env(
    app_id: &[u8; 20],
    env_secret: &[u8; 32],
    env: &EnvEnvelope,
) -> Result<Vec<u8>, EnvelopeError> {
    if env.format != ENV_FORMAT {
        return Err(EnvelopeError::Format {
            expected: ENV_FORMAT,
            found: env.format.chars().take(40).collect(),
        });
    }
    let expected = hex::encode(app_id);
    if !env.app_id.eq_ignore_ascii_case(&expected) {
        return Err(EnvelopeError::WrongApp {
            expected,
            found: env.app_id.chars().take(42).collect(),
        });
    }
    let eph_pub: [u8; 32] = hex_array(&env.ephemeral_public, "ephemeral_public")?;
    let secret = x25519_dalek::StaticSecret::from(*env_secret);
    let own_pub = x25519_dalek::PublicKey::from(&secret);
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(eph_pub));
    if !shared.was_contributory() {
        return Err(EnvelopeError::NonContributory);
    }
    let key = aead_key(shared.as_bytes(), &eph_pub, own_pub.as_bytes(), ENV_INFO);
    open(&key, &env.nonce, &env.ciphertext, &env_aad(app_id))
}

/// Parses an env envelope file.
pub fn parse_env(bytes: &[u8]) -> Result<EnvEnvelope, EnvelopeError> {
    serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
}

/// Seals `plaintext` to a P-256 public key (for replica onboarding).
pub fn seal_p256(recipient: &p256::PublicKey, aad: &[u8], plaintext: &[u8]) -> P256Box {
    let eph = p256::ecdh::EphemeralSecret::random(&mut OsRng);
    let eph_pub = eph.public_key().to_encoded_point(false);
    let recipient_point = recipient.to_encoded_point(false);
    let shared = eph.diffie_hellman(recipient);
    let key = aead_key(
        &shared.raw_secret_bytes()[..],
        eph_pub.as_bytes(),
        recipient_point.as_bytes(),
        P256_INFO,
    );
    let (nonce, ct) = seal(&key, aad, plaintext);
    P256Box {
        format: P256_FORMAT.into(),
        ephemeral_public: hex::encode(eph_pub.as_bytes()),
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(ct),
    }
}

/// Opens a P-256 box with the recipient's private key.
pub fn open_p256(
    secret: &p256::SecretKey,
    aad: &[u8],
    sealed: &P256Box,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if sealed.format != P256_FORMAT {
        return Err(EnvelopeError::Format {
            expected: P256_FORMAT,
            found: sealed.format.chars().take(40).collect(),
        });
    }
    let eph_bytes = hex::decode(&sealed.ephemeral_public)
        .map_err(|e| EnvelopeError::Malformed(format!("ephemeral_public: {e}")))?;
    let eph = p256::PublicKey::from_sec1_bytes(&eph_bytes)
        .map_err(|e| EnvelopeError::PublicKey(e.to_string()))?;
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), eph.as_affine());
    let own_point = secret.public_key().to_encoded_point(false);
    let key = aead_key(
        &shared.raw_secret_bytes()[..],
        &eph_bytes,
        own_point.as_bytes(),
        P256_INFO,
    );
    open(&key, &sealed.nonce, &sealed.ciphertext, aad).map(Zeroizing::new)
}

/// The bytes the root CA signs to vouch for an app's env public key.
pub fn env_key_message(app_id: &[u8; 20], env_public: &[u8; 32]) -> Vec<u8> {
    let mut m = ENV_KEY_DOMAIN.to_vec();
    m.extend_from_slice(app_id);
    m.extend_from_slice(env_public);
    m
}

/// The P-256 public key of a certificate (DER), e.g. the pinned KMS root or a peer's
/// RA-TLS certificate.
pub fn cert_public_key(cert_der: &[u8]) -> Result<p256::PublicKey, EnvelopeError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| EnvelopeError::RootCert(e.to_string()))?;
    p256::PublicKey::from_sec1_bytes(&cert.tbs_certificate.subject_pki.subject_public_key.data)
        .map_err(|e| EnvelopeError::PublicKey(format!("not a P-256 key: {e}")))
}

/// Checks an env-key answer against a pinned root CA certificate (DER) and the app id the
/// user asked for; returns the env public key to encrypt to.
pub fn verify_env_key(
    resp: &EnvKeyResponse,
    app_id: &[u8; 20],
    pinned_root_der: &[u8],
) -> Result<[u8; 32], EnvelopeError> {
    let expected = hex::encode(app_id);
    if !resp.app_id.eq_ignore_ascii_case(&expected) {
        return Err(EnvelopeError::WrongApp {
            expected,
            found: resp.app_id.chars().take(42).collect(),
        });
    }
    let env_public: [u8; 32] = hex_array(&resp.env_public_key, "env_public_key")?;
    let sig_der =
        hex::decode(&resp.signature).map_err(|e| EnvelopeError::Signature(e.to_string()))?;
    let sig = p256::ecdsa::Signature::from_der(&sig_der)
        .map_err(|e| EnvelopeError::Signature(e.to_string()))?;
    let root = p256::ecdsa::VerifyingKey::from(cert_public_key(pinned_root_der)?);
    root.verify(&env_key_message(app_id, &env_public), &sig)
        .map_err(|e| EnvelopeError::Signature(e.to_string()))?;
    Ok(env_public)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> ([u8; 32], [u8; 32]) {
        let s = x25519_dalek::StaticSecret::random_from_rng(OsRng);
        (s.to_bytes(), *x25519_dalek::PublicKey::from(&s).as_bytes())
    }

    #[test]
    fn env_roundtrip_and_wrong_key_or_app_fails() {
        let app = [7u8; 20];
        let (sk, pk) = keypair();
        let env = seal_env(&app, &pk, b"A=1\nB=two\n").unwrap();
        assert_eq!(open_env(&app, &sk, &env).unwrap(), b"A=1\nB=two\n");
        let (other, _) = keypair();
        assert_eq!(open_env(&app, &other, &env), Err(EnvelopeError::Decrypt));
        assert!(matches!(
            open_env(&[8; 20], &sk, &env),
            Err(EnvelopeError::WrongApp { .. })
        ));
        let mut relabelled = env.clone();
        relabelled.app_id = hex::encode([8u8; 20]);
        assert_eq!(
            open_env(&[8; 20], &sk, &relabelled),
            Err(EnvelopeError::Decrypt)
        );
        let mut flipped = env.clone();
        flipped.ciphertext.replace_range(
            0..2,
            if &env.ciphertext[0..2] == "00" {
                "01"
            } else {
                "00"
            },
        );
        assert_eq!(open_env(&app, &sk, &flipped), Err(EnvelopeError::Decrypt));
        let json = serde_json::to_vec(&env).unwrap();
        assert_eq!(parse_env(&json).unwrap(), env);
    }

    #[test]
    fn env_refuses_low_order_public_key() {
        assert_eq!(
            seal_env(&[0; 20], &[0; 32], b"x"),
            Err(EnvelopeError::NonContributory)
        );
    }

    #[test]
    fn p256_box_roundtrip_binds_aad() {
        let sk = p256::SecretKey::random(&mut OsRng);
        let b = seal_p256(&sk.public_key(), b"ctx", b"secret");
        assert_eq!(open_p256(&sk, b"ctx", &b).unwrap().as_slice(), b"secret");
        assert_eq!(open_p256(&sk, b"other", &b), Err(EnvelopeError::Decrypt));
        let other = p256::SecretKey::random(&mut OsRng);
        assert_eq!(open_p256(&other, b"ctx", &b), Err(EnvelopeError::Decrypt));
    }
}
