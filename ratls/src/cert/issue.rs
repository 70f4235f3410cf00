//! Issuing RA-TLS certificates: a fresh P-256 key and a quote whose report data binds the
//! claims buffer holding that key's hash and the app claims (see `evidence.rs`), signed by
//! the app CA or self-signed.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::claims::{AppClaims, MAX_CLAIMS_LEN};
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

/// Choices for one certificate beyond its [`CertProfile`], for certificates an app asks for
/// (dstack's `GetTlsKey` and `DeriveKey`).
#[derive(Default, Clone, Copy)]
pub struct IssueOptions<'a> {
    /// Valid from exactly this time (and for the profile's validity from then) instead of
    /// from a little before now. The caller bounds it.
    pub not_before: Option<SystemTime>,
    /// This P-256 key (PKCS#8 DER) instead of a fresh one, for keys derived from a secret.
    /// The caller keeps (and zeroizes) the bytes.
    pub key_pkcs8: Option<&'a [u8]>,
}

/// Issues an RA-TLS certificate for `identity`, quoting through `measurer`.
pub fn issue(
    measurer: &Measurer,
    identity: &Identity,
    profile: &CertProfile,
    issuer: Option<&CertAuthority>,
) -> Result<RaTlsCert, IssueError> {
    issue_with(
        measurer,
        identity,
        profile,
        issuer,
        &IssueOptions::default(),
    )
}

/// [`issue`] with [`IssueOptions`].
pub fn issue_with(
    measurer: &Measurer,
    identity: &Identity,
    profile: &CertProfile,
    issuer: Option<&CertAuthority>,
    options: &IssueOptions<'_>,
) -> Result<RaTlsCert, IssueError> {
    if profile.names.is_empty() {
        return Err(IssueError::Invalid(
            "at least one DNS name is needed".into(),
        ));
    }
    if profile.validity.is_zero() {
        return Err(IssueError::Invalid("validity must be positive".into()));
    }
    if profile
        .nonce
        .as_ref()
        .is_some_and(|n| n.len() > evidence::MAX_NONCE_LEN)
    {
        return Err(IssueError::Invalid(format!(
            "nonce is over {} bytes",
            evidence::MAX_NONCE_LEN
        )));
    }
    let key = match options.key_pkcs8 {
        Some(der) => {
            let key = KeyPair::try_from(der)?;
            if !key.is_compatible(&PKCS_ECDSA_P256_SHA256) {
                return Err(IssueError::Invalid(
                    "the given key is not a P-256 key".into(),
                ));
            }
            key
        }
        None => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
    };
    let spki = key.subject_public_key_info();
    let simulated = measurer.kind() == ProviderKind::Simulated;
    let mut too_large = None;
    // The claims carry the event log as of the quote, so the buffer is built under the
    // measurer's lock: no event can be extended between reading the log and quoting.
    let (quote, claims_buffer) = measurer.quote_binding(|log| {
        let claims = AppClaims {
            app_id: identity.app_id,
            compose_hash: identity.compose_hash,
            instance_id: identity.instance_id,
            event_log: log.clone(),
            simulated,
        };
        let cb = evidence::claims_buffer(&spki, profile.nonce.as_deref(), Some(claims.to_value()));
        if cb.len() > MAX_CLAIMS_LEN {
            too_large = Some(cb.len());
        }
        Ok((evidence::report_data_for(&cb), cb))
    })?;
    if let Some(len) = too_large {
        // Verifiers refuse such a buffer undecoded; issuing it would make a dead certificate.
        return Err(IssueError::Invalid(format!(
            "claims buffer is {len} bytes, over the {MAX_CLAIMS_LEN}-byte limit"
        )));
    }

    let mut params = CertificateParams::new(profile.names.clone())?;
    params.distinguished_name = dn(&profile.names[0]);
    let (not_before, not_after) = match options.not_before {
        Some(t) => {
            let from = OffsetDateTime::from(t);
            (from, from + profile.validity)
        }
        None => {
            let now = OffsetDateTime::now_utc();
            (now - BACKDATE, now + profile.validity)
        }
    };
    params.not_before = not_before;
    params.not_after = not_after;
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
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        oid::EVIDENCE_OID,
        evidence::encode(&quote, &claims_buffer),
    )];

    let (cert, chain) = match issuer {
        Some(ca) => {
            let issuer = Issuer::from_ca_cert_der(&ca.cert_der, &ca.key)?;
            (params.signed_by(&key, &issuer)?, vec![ca.cert_der.to_vec()])
        }
        None => (params.self_signed(&key)?, Vec::new()),
    };
    Ok(RaTlsCert {
        cert_der: cert.der().to_vec(),
        chain,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::eventlog::names;
    use crate::provider::SimulatedProvider;
    use crate::{AppId, Reason, Step};
    use ciborium::value::Value;

    fn booted() -> (Measurer, Identity) {
        let compose_hash = ComposeHash::of(b"bound");
        let id = Identity {
            app_id: compose_hash.default_app_id(),
            compose_hash,
            instance_id: InstanceId([4; 20]),
        };
        let m = Measurer::new(std::sync::Arc::new(SimulatedProvider::new()));
        m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())
            .unwrap();
        m.emit(names::APP_ID, id.app_id.0.to_vec()).unwrap();
        m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())
            .unwrap();
        (m, id)
    }

    fn verifier() -> crate::AttestationVerifier {
        let mut policy = crate::Policy::any_measurements();
        policy.allow_simulated = true;
        crate::AttestationVerifier::new(
            std::sync::Arc::new(crate::collateral::SourceChain::new()),
            policy,
        )
    }

    #[test]
    fn issue_with_takes_a_start_time_and_a_given_key() {
        let (m, id) = booted();
        let profile =
            CertProfile::server_and_client(vec!["x.test".into()], Duration::from_secs(60));
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let der = key.serialize_der();
        let options = IssueOptions {
            not_before: Some(start),
            key_pkcs8: Some(&der),
        };
        let cert = issue_with(&m, &id, &profile, None, &options).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&cert.cert_der).unwrap();
        assert_eq!(x.validity().not_before.timestamp(), 2_000_000_000);
        assert_eq!(x.validity().not_after.timestamp(), 2_000_000_060);
        assert_eq!(cert.key_pkcs8_der(), der, "the given key");
        // Still a valid RA-TLS binding of that key (verified at the certificate's start).
        let parsed = super::super::parse_ratls_cert(&cert.cert_der).unwrap();
        assert_eq!(parsed.claims.app_id, id.app_id);
        // A key of another curve is refused.
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let der384 = p384.serialize_der();
        let options = IssueOptions {
            not_before: None,
            key_pkcs8: Some(&der384),
        };
        let e = issue_with(&m, &id, &profile, None, &options).unwrap_err();
        assert!(e.to_string().contains("not a P-256 key"), "{e}");
    }

    #[test]
    fn the_quote_binds_the_app_claims_in_the_claims_buffer() {
        let (m, id) = booted();
        let profile =
            CertProfile::server_and_client(vec!["x.test".into()], Duration::from_secs(60));
        let cert = issue(&m, &id, &profile, None).unwrap();
        let parsed = super::super::parse_ratls_cert(&cert.cert_der).unwrap();
        assert_eq!(parsed.claims.app_id, id.app_id);
        verifier().verify(&cert.cert_der).unwrap();

        // Same key, same quote, but the app id inside the claims buffer rewritten: the
        // report data no longer matches, so it fails at key-binding (before any replay).
        let entries = evidence::claims_entries(&parsed.claims_buffer).unwrap();
        let forged: Vec<(Value, Value)> = entries
            .into_iter()
            .map(|(k, v)| {
                if k.as_text() == Some(super::super::claims::CLAIMS_KEY) {
                    let mut c = AppClaims::from_value(&v).unwrap();
                    c.app_id = AppId([0xee; 20]);
                    (k, c.to_value())
                } else {
                    (k, v)
                }
            })
            .collect();
        let mut forged_cb = Vec::new();
        ciborium::into_writer(&Value::Map(forged), &mut forged_cb).unwrap();
        let key = KeyPair::try_from(cert.key_pkcs8_der().as_slice()).unwrap();
        let mut params = CertificateParams::new(vec!["x.test".to_string()]).unwrap();
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            oid::EVIDENCE_OID,
            evidence::encode(&parsed.quote, &forged_cb),
        )];
        let forged = params.self_signed(&key).unwrap();
        let e = verifier().verify(forged.der()).unwrap_err();
        assert_eq!(e.step, Step::KeyBinding, "{e}");
        assert!(matches!(e.reason, Reason::ReportDataMismatch { .. }), "{e}");
    }

    #[test]
    fn pem_wraps_der() {
        let text = pem_encode("CERTIFICATE", b"x");
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        assert!(text.contains("eA=="));
    }
}
