//! Seed-derived P-256 keys. Every key and identifier is HKDF-SHA256(seed, label), so one
//! 32-byte seed reproduces the whole PKI bit for bit; signatures use RFC 6979
//! deterministic ECDSA so certificates, CRLs and collateral are reproducible too
//! (rcgen's own ring-backed keys sign with random nonces).

use hkdf::Hkdf;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::Sha256;

use super::SimError;

/// Domain separation for this PKI generation scheme; bump if the derivation changes.
const HKDF_SALT: &[u8] = b"teegate/sim-dcap-pki/v1";

/// `N` pseudo-random bytes bound to `seed` and `label`.
pub(super) fn derive_bytes<const N: usize>(
    seed: &[u8; 32],
    label: &str,
) -> Result<[u8; N], SimError> {
    let mut out = [0u8; N];
    Hkdf::<Sha256>::new(Some(HKDF_SALT), seed)
        .expand(label.as_bytes(), &mut out)
        .map_err(|_| SimError::KeyDerivation(label.to_owned()))?;
    Ok(out)
}

/// A P-256 key usable both for raw `r || s` signatures (quote, collateral JSON) and,
/// through rcgen's [`rcgen::SigningKey`], for X.509 certificates and CRLs.
pub(super) struct SimKey {
    signing: SigningKey,
    /// SEC1 uncompressed point (0x04 || X || Y), what rcgen puts in the SPKI.
    public_sec1: Vec<u8>,
}

impl SimKey {
    pub(super) fn derive(seed: &[u8; 32], label: &str) -> Result<Self, SimError> {
        // A 32-byte string is a valid scalar unless it is 0 or >= n (probability ~2^-32);
        // retry with a counter rather than fail, so every seed works.
        for counter in 0u8..16 {
            let bytes: [u8; 32] = derive_bytes(seed, &format!("{label}#{counter}"))?;
            if let Ok(signing) = SigningKey::from_bytes(&bytes.into()) {
                let public_sec1 = signing
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec();
                return Ok(Self {
                    signing,
                    public_sec1,
                });
            }
        }
        Err(SimError::KeyDerivation(label.to_owned()))
    }

    fn sign_deterministic(&self, msg: &[u8]) -> Signature {
        // RFC 6979 nonce; with a valid key this only fails with negligible probability,
        // in which case p256 itself panics (there is no sensible recovery).
        self.signing.sign(msg)
    }

    /// Raw `r || s` ECDSA-P256-SHA256 signature, the format DCAP quotes and collateral use.
    pub(super) fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.sign_deterministic(msg).to_bytes().into()
    }

    /// Public key as raw `X || Y`, the format of the quote's attestation key field.
    pub(super) fn public_raw(&self) -> Result<[u8; 64], SimError> {
        self.public_sec1
            .get(1..)
            .and_then(|xy| xy.try_into().ok())
            .ok_or(SimError::Der("unexpected SEC1 public key length"))
    }
}

impl rcgen::PublicKeyData for SimKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_sec1
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for SimKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // X.509 wants the DER `Ecdsa-Sig-Value`, not raw r || s.
        Ok(self.sign_deterministic(msg).to_der().as_bytes().to_vec())
    }
}
