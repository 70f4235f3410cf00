//! The KMS's HTTPS client (feature `client`): sidecars fetching app keys, replicas
//! onboarding, `teegate env encrypt` fetching an env key. TLS always verifies the KMS:
//! either to a pinned root CA plus its attestation ([`pinned_root`]), or, on first contact
//! by a replica, to the root the KMS presents plus its attestation under a measurement
//! policy ([`FirstContactVerifier`]). There is no unverified mode.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratls::tls::{ChainTrust, RaTlsCheck, RaTlsServerVerifier};
use ratls::CachingVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    env_key_path, AppKeysRequest, AppKeysResponse, EnvKeyResponse, ErrorBody, InfoResponse,
    OnboardResponse, PATH_APP_KEYS, PATH_INFO, PATH_ONBOARD,
};

/// rustls' ring provider, chosen explicitly (several providers may be compiled in).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("KMS URL {0:?} must be https://host[:port]")]
    Url(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("request to the KMS failed: {0}")]
    Http(String),
    /// The KMS answered with an error; `reason` is its explanation.
    #[error("KMS refused ({status} {error}): {reason}")]
    Refused {
        status: u16,
        error: String,
        reason: String,
    },
    #[error("KMS answer is not valid JSON: {0}")]
    Body(String),
}

/// A verifier for a KMS whose root CA the caller pinned (DER); the KMS's attestation is
/// also checked, with `attestation`'s policy.
pub fn pinned_root(
    root_der: &[u8],
    attestation: Arc<CachingVerifier>,
) -> Result<Arc<dyn ServerCertVerifier>, ClientError> {
    let trust =
        ChainTrust::roots(&[root_der.to_vec()]).map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(Arc::new(RaTlsServerVerifier(RaTlsCheck::new(
        attestation,
        trust,
        crypto_provider(),
    ))))
}

/// For a replica's first contact: accepts the chain the KMS presents if it ends at a
/// self-signed root, the leaf verifies under that root, and the leaf's attestation passes
/// `attestation`'s policy (the KMS measurements). Remembers the root so the replica can
/// check that the root it receives is the one that vouched for the server.
pub struct FirstContactVerifier {
    attestation: Arc<CachingVerifier>,
    provider: Arc<CryptoProvider>,
    seen_root: Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for FirstContactVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstContactVerifier")
            .finish_non_exhaustive()
    }
}

impl FirstContactVerifier {
    pub fn new(attestation: Arc<CachingVerifier>) -> Self {
        Self {
            attestation,
            provider: crypto_provider(),
            seen_root: Mutex::new(None),
        }
    }

    /// The root CA (DER) of the last server that passed.
    pub fn seen_root(&self) -> Option<Vec<u8>> {
        self.seen_root
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn inner(&self, root: &CertificateDer<'_>) -> Result<RaTlsServerVerifier, rustls::Error> {
        let trust = ChainTrust::roots(&[root.to_vec()])?;
        Ok(RaTlsServerVerifier(RaTlsCheck::new(
            self.attestation.clone(),
            trust,
            self.provider.clone(),
        )))
    }
}

impl ServerCertVerifier for FirstContactVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let root = intermediates
            .last()
            .ok_or_else(|| rustls::Error::General("KMS presented no root CA certificate".into()))?;
        let ok = self.inner(root)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp,
            now,
        )?;
        *self.seen_root.lock().unwrap_or_else(|p| p.into_inner()) = Some(root.to_vec());
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate chain and key (an RA-TLS certificate, for the attested calls).
pub type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// An HTTPS client for one KMS. Connections are kept alive and reused.
#[derive(Debug, Clone)]
pub struct KmsClient {
    base: String,
    http: reqwest::Client,
}

impl KmsClient {
    pub fn new(
        base_url: &str,
        server: Arc<dyn ServerCertVerifier>,
        identity: Option<ClientIdentity>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_string();
        if !base.starts_with("https://") || base.len() <= "https://".len() {
            return Err(ClientError::Url(base_url.chars().take(200).collect()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(server);
        let tls = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Tls(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(Self { base, http })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Http(error_chain(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Http(error_chain(&e)))?;
        if !status.is_success() {
            let (error, reason) = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(b) => (b.error, b.reason),
                Err(_) => (
                    "error".into(),
                    String::from_utf8_lossy(&body).chars().take(500).collect(),
                ),
            };
            return Err(ClientError::Refused {
                status: status.as_u16(),
                error,
                reason,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Body(e.to_string()))
    }

    fn post<B: Serialize>(&self, path: &str, body: &B) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base)).json(body)
    }

    /// `POST /v1/app-keys` (needs an RA-TLS client identity).
    pub async fn app_keys(&self, req: &AppKeysRequest) -> Result<AppKeysResponse, ClientError> {
        self.call(self.post(PATH_APP_KEYS, req)).await
    }

    /// `GET /v1/apps/<app-id>/env-key`; check the answer with
    /// [`crate::envelope::verify_env_key`].
    pub async fn env_key(&self, app_id: &[u8; 20]) -> Result<EnvKeyResponse, ClientError> {
        let url = format!("{}{}", self.base, env_key_path(&hex::encode(app_id)));
        self.call(self.http.get(url)).await
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<InfoResponse, ClientError> {
        self.call(self.http.get(format!("{}{PATH_INFO}", self.base)))
            .await
    }

    /// `POST /v1/onboard` (needs the replica's RA-TLS client identity).
    pub async fn onboard(&self) -> Result<OnboardResponse, ClientError> {
        self.call(self.post(PATH_ONBOARD, &serde_json::json!({})))
            .await
    }
}

/// An error and its sources, on one line (TLS alerts hide in the sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}
