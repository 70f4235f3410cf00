//! rustls verifiers that admit a peer only if its RA-TLS certificate verifies: the usual
//! chain and signature checks (to configured roots such as the KMS root CA, or the
//! certificate's own key when self-signed RA-TLS is accepted), then the attestation.
//! There is no "skip verification" mode.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::cache::CachingVerifier;
use crate::types::{AppId, Fingerprint};
use crate::verifier::VerifiedAttestation;

/// How the certificate chain itself is trusted, before the attestation is checked.
#[derive(Clone)]
pub enum ChainTrust {
    /// The certificate's own chain: a self-signed RA-TLS certificate checks its own
    /// signature, a CA-signed one checks against the top certificate it presents. The
    /// quote's key binding is what makes the key trustworthy; pin a root with `Roots`.
    SelfSigned,
    /// Certificates must chain to one of these roots (e.g. the KMS root CA).
    Roots(Arc<Vec<TrustAnchor<'static>>>),
}

impl ChainTrust {
    /// Roots from DER certificates.
    pub fn roots(ders: &[Vec<u8>]) -> Result<Self, rustls::Error> {
        let mut anchors = Vec::with_capacity(ders.len());
        for der in ders {
            let cert = CertificateDer::from(der.as_slice());
            let anchor = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| rustls::Error::General(format!("bad root certificate: {e}")))?;
            anchors.push(anchor.to_owned());
        }
        Ok(ChainTrust::Roots(Arc::new(anchors)))
    }
}

/// The checks shared by the server- and client-side verifiers.
#[derive(Clone)]
pub struct RaTlsCheck {
    verifier: Arc<CachingVerifier>,
    trust: ChainTrust,
    provider: Arc<CryptoProvider>,
    expected_app: Option<AppId>,
    expected_nonce: Option<Vec<u8>>,
}

impl fmt::Debug for RaTlsCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaTlsCheck")
            .field("expected_app", &self.expected_app)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("peer is app {found}, expected app {expected}")]
struct WrongApp {
    expected: AppId,
    found: AppId,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn chain_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    rustls::Error::InvalidCertificate(match e {
        W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other_err => CertificateError::Other(OtherError(Arc::new(other_err))),
    })
}

impl RaTlsCheck {
    pub fn new(
        verifier: Arc<CachingVerifier>,
        trust: ChainTrust,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            verifier,
            trust,
            provider,
            expected_app: None,
            expected_nonce: None,
        }
    }

    /// Also require the peer's claims buffer to carry this nonce (step `freshness`). Checked
    /// on every handshake, after the (cached) attestation, so a cached verdict of a replayed
    /// certificate cannot stand in for a fresh one.
    pub fn expect_nonce(mut self, nonce: Vec<u8>) -> Self {
        self.expected_nonce = Some(nonce);
        self
    }

    /// Also require the peer to be this app.
    pub fn expect_app(mut self, app: AppId) -> Self {
        self.expected_app = Some(app);
        self
    }

    pub fn verifier(&self) -> &Arc<CachingVerifier> {
        &self.verifier
    }

    fn check_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(chain_error)?;
        let self_anchor;
        let anchors: &[TrustAnchor<'_>] = match &self.trust {
            ChainTrust::Roots(roots) => roots,
            ChainTrust::SelfSigned => {
                // The chain's own top: the leaf when self-signed, else the last issuer it
                // presents (an app CA). Internal consistency only; trust comes from the
                // quote's key binding.
                let top = intermediates.last().unwrap_or(end_entity);
                self_anchor = [webpki::anchor_from_trusted_cert(top).map_err(chain_error)?];
                &self_anchor
            }
        };
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(chain_error)?;
        Ok(())
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<Arc<VerifiedAttestation>, rustls::Error> {
        self.check_chain(end_entity, intermediates, now, usage)?;
        let issuers: Vec<&[u8]> = intermediates.iter().map(|c| c.as_ref()).collect();
        let verified = self
            .verifier
            .verify_chain(end_entity, &issuers)
            .map_err(|e| {
                tracing::warn!(error = %e, "RA-TLS peer rejected");
                other(e)
            })?;
        if let Some(expected) = self.expected_app {
            if *verified.app_id() != expected {
                return Err(other(WrongApp {
                    expected,
                    found: *verified.app_id(),
                }));
            }
        }
        if let Some(nonce) = &self.expected_nonce {
            let fresh = crate::cert::parse_ccc_cert(end_entity)
                .and_then(|c| crate::fresh::check_freshness(&c.claims_buffer, nonce));
            if let Err(e) = fresh {
                tracing::warn!(error = %e, "RA-TLS peer rejected");
                return Err(other(e));
            }
        }
        Ok(verified)
    }

    /// Full attestation of a peer whose handshake passed [`DeferredClientVerifier`]; the
    /// error names the failed step so a server can answer with it.
    pub fn verify_peer(
        &self,
        peer_chain: &[CertificateDer<'_>],
    ) -> Result<Arc<VerifiedAttestation>, crate::error::VerifyError> {
        let leaf = peer_chain.first().ok_or_else(|| {
            crate::error::VerifyError::parse(crate::error::Reason::Certificate(
                "no client certificate".into(),
            ))
        })?;
        let issuers: Vec<&[u8]> = peer_chain[1..].iter().map(|c| c.as_ref()).collect();
        let verified = self.verifier.verify_chain(leaf, &issuers)?;
        if let Some(expected) = self.expected_app {
            if *verified.app_id() != expected {
                return Err(crate::error::VerifyError::new(
                    crate::error::Step::Policy,
                    crate::error::Reason::NotAllowed {
                        what: "app id",
                        value: verified.app_id().to_hex(),
                    },
                ));
            }
        }
        Ok(verified)
    }

    /// The verified attestation of a peer whose handshake completed.
    pub fn attestation_of(
        &self,
        peer_chain: &[CertificateDer<'_>],
    ) -> Option<Arc<VerifiedAttestation>> {
        let leaf = peer_chain.first()?;
        self.verifier.lookup(&Fingerprint::of(leaf))
    }

    fn tls12(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn tls13(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// For TLS clients (the gateway's upstream side, `teegate verify`, sidecar → KMS).
#[derive(Debug, Clone)]
pub struct RaTlsServerVerifier(pub RaTlsCheck);

impl ServerCertVerifier for RaTlsServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is not what makes an RA-TLS peer trustworthy: its attested app id is,
        // and callers pin that with `expect_app`.
        self.0.check(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// For TLS servers that require an attested client (registration API, KMS).
#[derive(Debug, Clone)]
pub struct RaTlsClientVerifier(pub RaTlsCheck);

impl ClientCertVerifier for RaTlsClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.check(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// For TLS servers that answer attestation failures in the application protocol (with a
/// message naming the failed step) rather than with a bare TLS alert: the handshake checks
/// a client certificate's chain and key possession; the server must then call
/// [`RaTlsCheck::verify_peer`] before acting, and only a `VerifiedAttestation` it returns
/// can authorise anything.
#[derive(Debug, Clone)]
pub struct DeferredClientVerifier {
    check: RaTlsCheck,
    mandatory: bool,
}

impl DeferredClientVerifier {
    /// Every client must present a certificate.
    pub fn required(check: RaTlsCheck) -> Self {
        Self {
            check,
            mandatory: true,
        }
    }

    /// Clients may connect without a certificate; each handler decides whether it needs one.
    pub fn optional(check: RaTlsCheck) -> Self {
        Self {
            check,
            mandatory: false,
        }
    }
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check.check_chain(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check.tls12(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.check.schemes()
    }
}
