//! A new replica receiving the root of trust from a running KMS. Both sides attest: the
//! source checks the replica's quote against `policy.kms_measurements` and its own compose
//! hash; the replica checks the source the same way ([`FirstContactVerifier`] with a
//! policy built from the same lists), then checks that the root it receives is the root
//! that signed the source's certificate.

use std::sync::Arc;
use std::time::Duration;

use p256::pkcs8::DecodePrivateKey;
use ratls::{CachingVerifier, Fingerprint};

use crate::api::{onboard_aad, OnboardSecrets};
use crate::client::{ClientError, FirstContactVerifier, KmsClient};
use crate::envelope::open_p256;
use crate::identity::KmsIdentity;
use crate::root::{RootError, RootOfTrust};

#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    #[error("own RA-TLS certificate: {0}")]
    Issue(#[from] ratls::cert::IssueError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot open the sealed root: {0}")]
    Open(String),
    #[error(transparent)]
    Root(#[from] RootError),
    #[error("the root CA received differs from the root that signed the source KMS's certificate")]
    RootMismatch,
}

/// Fetches the root of trust from the KMS at `url`. `source_check` must verify the
/// source's attestation under the KMS-measurements policy.
pub async fn fetch_root(
    url: &str,
    me: &KmsIdentity,
    source_check: Arc<CachingVerifier>,
) -> Result<RootOfTrust, OnboardError> {
    let cert = me.self_signed_cert()?;
    let first_contact = Arc::new(FirstContactVerifier::new(source_check));
    let client = KmsClient::new(
        url,
        first_contact.clone(),
        Some((cert.rustls_chain(), cert.rustls_key())),
        Duration::from_secs(30),
    )?;
    let resp = client.onboard().await?;
    let key = p256::SecretKey::from_pkcs8_der(&cert.key_pkcs8_der())
        .map_err(|e| OnboardError::Open(e.to_string()))?;
    let plain = open_p256(
        &key,
        &onboard_aad(&Fingerprint::of(&cert.cert_der).0),
        &resp.sealed,
    )
    .map_err(|e| OnboardError::Open(e.to_string()))?;
    let secrets: OnboardSecrets =
        serde_json::from_slice(&plain).map_err(|e| OnboardError::Open(e.to_string()))?;
    let root = RootOfTrust::from_onboard(&secrets)?;
    if first_contact.seen_root().as_deref() != Some(root.ca_cert_der()) {
        return Err(OnboardError::RootMismatch);
    }
    Ok(root)
}
