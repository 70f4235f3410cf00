//! dstack's `GetKey`, `Sign` and `Verify`.
//!
//! `GetKey` keys are derived inside the CVM from the app's k256 root key (released by the
//! KMS): `HKDF-SHA256(ikm = app k256 root, salt = "teegate-dstack-getkey", info =
//! "<algorithm>:<path>")`, so an app gets the same key for the same path on every instance
//! and every KMS replica. As in dstack, the key depends on the path (and, here, the
//! algorithm, so one secret never serves two algorithms), not on the purpose; the purpose
//! is bound by the signature chain:
//!
//! - `signature_chain[0]`: the app k256 root key's signature over `"<purpose>:<hex of the
//!   derived public key>"` (compressed SEC1 for secp256k1, 32 bytes for ed25519);
//! - `signature_chain[1]`: the KMS k256 root's signature over the app root public key
//!   (`kms::dstack_keys::kms_issued_message`), released with the app's keys.
//!
//! Both are dstack's recoverable secp256k1 signatures over Keccak-256 (65 bytes), so a
//! verifier recovers the keys and ends at the KMS k256 root that `/v1/info` publishes.
//! `Sign` signs with the key of path `vms`, purpose `signing`, as dstack does.

use ed25519_dalek::{Signer as _, Verifier as _};
use hkdf::Hkdf;
use http::StatusCode;
use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{err, no_kms, unhex, ApiError, DstackState};
use crate::guest_api::{reply, Reply};

const MAX_PATH: usize = 512;
const MAX_PURPOSE: usize = 256;
const SALT: &[u8] = b"teegate-dstack-getkey";

/// The app's secp256k1 root key and the KMS root's signature over its public key.
pub struct AppK256 {
    key: k256::ecdsa::SigningKey,
    kms_signature: [u8; 65],
}

impl AppK256 {
    /// From the KMS's answer; refuses a key or signature of the wrong shape.
    pub fn from_released(key: &[u8], kms_signature_hex: &str) -> Result<Self, String> {
        let key = k256::ecdsa::SigningKey::from_slice(key)
            .map_err(|_| "app k256 key is not a secp256k1 private key".to_string())?;
        let kms_signature = hex::decode(kms_signature_hex)
            .ok()
            .and_then(|s| <[u8; 65]>::try_from(s).ok())
            .ok_or("app k256 signature is not 65 bytes of hex")?;
        Ok(Self { key, kms_signature })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Secp256k1,
    Secp256k1Prehashed,
    Ed25519,
}

fn algorithm(name: &str, prehashed_ok: bool) -> Result<Algorithm, ApiError> {
    match name {
        "" | "secp256k1" | "k256" => Ok(Algorithm::Secp256k1),
        "secp256k1_prehashed" if prehashed_ok => Ok(Algorithm::Secp256k1Prehashed),
        "ed25519" => Ok(Algorithm::Ed25519),
        other => Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "unsupported algorithm {:?} (secp256k1, k256, ed25519{})",
                other.chars().take(32).collect::<String>(),
                if prehashed_ok {
                    ", secp256k1_prehashed"
                } else {
                    ""
                }
            ),
        )),
    }
}

/// A derived key: its secret bytes and its public key as dstack encodes it.
enum Derived {
    K256(k256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl Derived {
    fn secret(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(match self {
            Derived::K256(k) => k.to_bytes().to_vec(),
            Derived::Ed25519(k) => k.to_bytes().to_vec(),
        })
    }

    fn public(&self) -> Vec<u8> {
        match self {
            Derived::K256(k) => kms::dstack_keys::public_sec1(k.verifying_key()),
            Derived::Ed25519(k) => k.verifying_key().to_bytes().to_vec(),
        }
    }
}

impl AppK256 {
    fn derive(&self, alg: Algorithm, path: &str) -> Derived {
        let root: Zeroizing<[u8; 32]> = Zeroizing::new(self.key.to_bytes().into());
        let hk = Hkdf::<Sha256>::new(Some(SALT), root.as_ref());
        let mut okm = Zeroizing::new([0u8; 32]);
        let name = if alg == Algorithm::Ed25519 {
            "ed25519"
        } else {
            "secp256k1"
        };
        let mut counter = 0u32;
        loop {
            let info = if counter == 0 {
                format!("{name}:{path}")
            } else {
                format!("{name}#{counter}:{path}")
            };
            // 32 bytes is far below HKDF-SHA256's output limit.
            let _ = hk.expand(info.as_bytes(), okm.as_mut());
            match alg {
                Algorithm::Ed25519 => {
                    return Derived::Ed25519(ed25519_dalek::SigningKey::from_bytes(&okm))
                }
                _ => {
                    if let Ok(k) = k256::ecdsa::SigningKey::from_slice(okm.as_ref()) {
                        return Derived::K256(k);
                    }
                }
            }
            counter += 1;
        }
    }

    fn chain(&self, purpose: &str, derived: &Derived) -> Result<[String; 2], ApiError> {
        let sig = kms::dstack_keys::app_signature_for_key(&self.key, purpose, &derived.public())
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        Ok([hex::encode(sig), hex::encode(self.kms_signature)])
    }
}

#[derive(Deserialize)]
pub(super) struct GetKeyReq {
    #[serde(default)]
    path: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    algorithm: String,
}

#[derive(Deserialize)]
pub(super) struct SignReq {
    #[serde(default)]
    algorithm: String,
    data: String,
}

#[derive(Deserialize)]
pub(super) struct VerifyReq {
    #[serde(default)]
    algorithm: String,
    data: String,
    signature: String,
    public_key: String,
}

impl DstackState {
    pub(super) fn get_key(&self, r: GetKeyReq) -> Result<Reply, ApiError> {
        if r.path.len() > MAX_PATH || r.purpose.len() > MAX_PURPOSE {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!("path is at most {MAX_PATH} bytes and purpose {MAX_PURPOSE}"),
            ));
        }
        let alg = algorithm(&r.algorithm, false)?;
        let k256 = self.k256.as_ref().ok_or_else(no_kms)?;
        let derived = k256.derive(alg, &r.path);
        let chain = k256.chain(&r.purpose, &derived)?;
        Ok(reply(
            StatusCode::OK,
            json!({ "key": hex::encode(derived.secret()), "signature_chain": chain }),
        ))
    }

    pub(super) fn sign(&self, r: SignReq) -> Result<Reply, ApiError> {
        let alg = algorithm(&r.algorithm, true)?;
        let data = unhex("data", &r.data)?;
        let k256 = self.k256.as_ref().ok_or_else(no_kms)?;
        let key_alg = if alg == Algorithm::Ed25519 {
            alg
        } else {
            Algorithm::Secp256k1
        };
        let derived = k256.derive(key_alg, "vms");
        let [c0, c1] = k256.chain("signing", &derived)?;
        let signature = match (&derived, alg) {
            (Derived::Ed25519(k), _) => k.sign(&data).to_bytes().to_vec(),
            (Derived::K256(k), Algorithm::Secp256k1Prehashed) => {
                if data.len() != 32 {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "pre-hashed signing needs a 32-byte digest, not {} bytes",
                            data.len()
                        ),
                    ));
                }
                let s: k256::ecdsa::Signature = k
                    .sign_prehash(&data)
                    .map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
                s.to_bytes().to_vec()
            }
            (Derived::K256(k), _) => {
                let s: k256::ecdsa::Signature = k256::ecdsa::signature::Signer::sign(k, &data);
                s.to_bytes().to_vec()
            }
        };
        let sig_hex = hex::encode(&signature);
        Ok(reply(
            StatusCode::OK,
            json!({
                "signature": sig_hex,
                "signature_chain": [sig_hex, c0, c1],
                "public_key": hex::encode(derived.public()),
            }),
        ))
    }
}

/// `Verify` needs no key of the app: it checks any signature against the given key.
pub(super) fn verify(r: VerifyReq) -> Result<Reply, ApiError> {
    let alg = algorithm(&r.algorithm, true)?;
    let data = unhex("data", &r.data)?;
    let sig = unhex("signature", &r.signature)?;
    let public = unhex("public_key", &r.public_key)?;
    let bad_key = || {
        err(
            StatusCode::BAD_REQUEST,
            "public_key is not a key of that algorithm",
        )
    };
    let bad_sig = || {
        err(
            StatusCode::BAD_REQUEST,
            "signature is not one of that algorithm",
        )
    };
    let valid = match alg {
        Algorithm::Ed25519 => {
            let pk: [u8; 32] = public.as_slice().try_into().map_err(|_| bad_key())?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).map_err(|_| bad_key())?;
            let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| bad_sig())?;
            vk.verify(&data, &sig).is_ok()
        }
        Algorithm::Secp256k1 | Algorithm::Secp256k1Prehashed => {
            let vk = k256::ecdsa::VerifyingKey::from_sec1_bytes(&public).map_err(|_| bad_key())?;
            let sig = k256::ecdsa::Signature::from_slice(&sig).map_err(|_| bad_sig())?;
            if alg == Algorithm::Secp256k1Prehashed {
                vk.verify_prehash(&data, &sig).is_ok()
            } else {
                k256::ecdsa::signature::Verifier::verify(&vk, &data, &sig).is_ok()
            }
        }
    };
    Ok(reply(StatusCode::OK, json!({ "valid": valid })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppK256 {
        AppK256 {
            key: k256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap(),
            kms_signature: [0; 65],
        }
    }

    #[test]
    fn keys_follow_path_and_algorithm_not_purpose() {
        let a = app();
        let k = |alg, p: &str| a.derive(alg, p).secret().to_vec();
        assert_eq!(k(Algorithm::Secp256k1, "x"), k(Algorithm::Secp256k1, "x"));
        assert_ne!(k(Algorithm::Secp256k1, "x"), k(Algorithm::Secp256k1, "y"));
        assert_ne!(k(Algorithm::Secp256k1, "x"), k(Algorithm::Ed25519, "x"));
        let d = a.derive(Algorithm::Secp256k1, "x");
        assert_ne!(a.chain("p1", &d).unwrap()[0], a.chain("p2", &d).unwrap()[0]);
    }

    #[test]
    fn chain_zero_recovers_to_the_app_root() {
        let a = app();
        let d = a.derive(Algorithm::Ed25519, "wallet");
        let [c0, _] = a.chain("signing", &d).unwrap();
        let msg = format!("signing:{}", hex::encode(d.public()));
        let signer = kms::dstack_keys::recover(msg.as_bytes(), &hex::decode(c0).unwrap()).unwrap();
        assert_eq!(&signer, a.key.verifying_key());
    }
}
