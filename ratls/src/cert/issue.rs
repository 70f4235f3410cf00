//! Issuing RA-TLS certificates: a fresh P-256 key, a quote whose report data binds that
//! key (see `evidence.rs`), and the app claims, signed by the app CA or self-signed.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::claims::AppClaims;
use super::{evidence, oid};
use crate::provider::{Measurer, ProviderError, ProviderKind};
use crate::types::{AppId, ComposeHash, InstanceId};

/// Certificates are valid from a little before issue, to tolerate peers' clock skew.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("quote: {0}")]
    Provider(#[from] ProviderError),
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// The identity an instance attests to (recorded in its RTMR3 event log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub app_id: AppId,
    pub compose_hash: ComposeHash,
    pub instance_id: InstanceId,
}

/// What kind of certificate to issue.
#[derive(Debug, Clone)]
pub struct CertProfile {
    /// DNS names (subject alternative names); the first also becomes the CN.
    pub names: Vec<String>,
    pub validity: Duration,
    pub server_auth: bool,
    pub client_auth: bool,
    /// A verifier-chosen nonce to bind into the claims buffer, for freshness.
    pub nonce: Option<Vec<u8>>,
}

impl CertProfile {
    /// A certificate usable as both TLS server and client (RA-TLS both ways).
    pub fn server_and_client(names: Vec<String>, validity: Duration) -> Self {
        Self {
            names,
            validity,
            server_auth: true,
            client_auth: true,
            nonce: None,
        }
    }
}

/// A CA that signs RA-TLS certificates (the app CA from the KMS, or a test CA).
pub struct CertAuthority {
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// Loads a CA from its certificate (DER) and PKCS#8 private key (DER).
    pub fn from_der(cert_der: Vec<u8>, key_pkcs8: &[u8]) -> Result<Self, IssueError> {
        let key = KeyPair::try_from(key_pkcs8)?;
        Ok(Self {
            cert_der: CertificateDer::from(cert_der),
            key,
        })
    }

    /// A new self-signed P-256 CA; `path_len` limits how many CAs may sit below it.
    pub fn generate(common_name: &str, path_len: Option<u8>) -> Result<Self, IssueError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::from_secs(10 * 365 * 86400);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            key,
        })
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn key_pkcs8_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }
}

/// An issued RA-TLS certificate with its private key and issuer chain.
pub struct RaTlsCert {
    pub cert_der: Vec<u8>,
    /// Issuer certificates, nearest first (empty when self-signed).
    pub chain: Vec<Vec<u8>>,
    key: KeyPair,
}

impl fmt::Debug for RaTlsCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaTlsCert")
            .field(
                "fingerprint",
                &crate::types::Fingerprint::of(&self.cert_der),
            )
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl RaTlsCert {
    /// The certificate chain and key in rustls' types.
    pub fn rustls_chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.cert_der.clone())
            .chain(self.chain.iter().cloned())
            .map(CertificateDer::from)
            .collect()
    }

    pub fn rustls_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    pub fn key_pkcs8_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Signs with `key` after swapping the placeholder claims OID for the real one in the
/// to-be-signed bytes (see `oid.rs` for why).
struct OidPatchingSigner<'a> {
    key: &'a KeyPair,
    from: &'a [u8],
    to: &'a [u8],
}

impl PublicKeyData for OidPatchingSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key.algorithm()
    }
}

impl SigningKey for OidPatchingSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let patched = replace_once(msg, self.from, self.to).ok_or(rcgen::Error::RemoteKeyError)?;
        self.key.sign(&patched)
    }
}

/// `haystack` with the single occurrence of `from` replaced by `to` (same length).
fn replace_once(haystack: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    if from.len() != to.len() || from.is_empty() {
        return None;
    }
    let mut hits = haystack
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from);
    let (at, _) = hits.next()?;
    if hits.next().is_some() {
        return None;
    }
    let mut out = haystack.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    Some(out)
}

/// Issues an RA-TLS certificate for `identity`, quoting through `measurer`.
pub fn issue(
    measurer: &Measurer,
    identity: &Identity,
    profile: &CertProfile,
    issuer: Option<&CertAuthority>,
) -> Result<RaTlsCert, IssueError> {
    if profile.names.is_empty() {
        return Err(IssueError::Invalid(
            "at least one DNS name is needed".into(),
        ));
    }
    if profile.validity.is_zero() {
        return Err(IssueError::Invalid("validity must be positive".into()));
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let claims_buffer =
        evidence::claims_buffer(&key.subject_public_key_info(), profile.nonce.as_deref());
    let (quote, event_log) = measurer.quote(&evidence::report_data_for(&claims_buffer))?;
    let claims = AppClaims {
        app_id: identity.app_id,
        compose_hash: identity.compose_hash,
        instance_id: identity.instance_id,
        event_log,
        simulated: measurer.kind() == ProviderKind::Simulated,
    };

    let mut params = CertificateParams::new(profile.names.clone())?;
    params.distinguished_name = dn(&profile.names[0]);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + profile.validity;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if profile.server_auth {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if profile.client_auth {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.custom_extensions = vec![
        CustomExtension::from_oid_content(
            oid::EVIDENCE_OID,
            evidence::encode(&quote, &claims_buffer),
        ),
        CustomExtension::from_oid_content(oid::PLACEHOLDER_ARCS, claims.to_cbor()),
    ];

    let from = oid::oid_tlv(&oid::placeholder_oid_content());
    let to = oid::oid_tlv(&oid::claims_oid_content());
    let (cert, chain) = match issuer {
        Some(ca) => {
            let signer = OidPatchingSigner {
                key: &ca.key,
                from: &from,
                to: &to,
            };
            let issuer = Issuer::from_ca_cert_der(&ca.cert_der, signer)?;
            (params.signed_by(&key, &issuer)?, vec![ca.cert_der.to_vec()])
        }
        None => {
            let signer = OidPatchingSigner {
                key: &key,
                from: &from,
                to: &to,
            };
            (params.self_signed(&signer)?, Vec::new())
        }
    };
    let cert_der = replace_once(cert.der(), &from, &to)
        .ok_or(IssueError::Rcgen(rcgen::Error::RemoteKeyError))?;
    Ok(RaTlsCert {
        cert_der,
        chain,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_once_requires_a_single_equal_length_hit() {
        assert_eq!(replace_once(b"abcabd", b"bd", b"xy").unwrap(), b"abcaxy");
        assert!(replace_once(b"abab", b"ab", b"xy").is_none());
        assert!(replace_once(b"abc", b"zz", b"xy").is_none());
        assert!(replace_once(b"abc", b"ab", b"x").is_none());
    }

    #[test]
    fn pem_wraps_der() {
        let text = pem_encode("CERTIFICATE", b"x");
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        assert!(text.contains("eA=="));
    }
}
