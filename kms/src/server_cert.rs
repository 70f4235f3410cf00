//! The KMS's own server certificate, kept fresh: an RA-TLS certificate signed by the root
//! CA, re-issued (new key, new quote) after two thirds of its validity, so a KMS that runs
//! for months never serves an expired certificate. Handshakes pick up the new one at once;
//! connections already open keep the old one until they close.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::api::InfoResponse;
use crate::identity::KmsIdentity;
use crate::root::RootOfTrust;
use crate::server::KmsState;

/// Serves whichever certificate is current.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
    pem: RwLock<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerCertError {
    #[error("issuing the KMS server certificate: {0}")]
    Issue(#[from] ratls::cert::IssueError),
    #[error("the KMS server certificate's key: {0}")]
    Key(#[from] rustls::Error),
}

fn certified(cert: &ratls::cert::RaTlsCert) -> Result<Arc<CertifiedKey>, ServerCertError> {
    let provider = crate::client::crypto_provider();
    let key = provider.key_provider.load_private_key(cert.rustls_key())?;
    Ok(Arc::new(CertifiedKey::new(cert.rustls_chain(), key)))
}

impl ServerCert {
    /// Issues the first certificate.
    pub fn issue(me: &KmsIdentity, root: &RootOfTrust) -> Result<Self, ServerCertError> {
        let cert = me.server_cert(root)?;
        Ok(Self {
            current: RwLock::new(certified(&cert)?),
            pem: RwLock::new(cert.cert_pem()),
        })
    }

    /// Issues a new certificate and serves it from the next handshake on.
    pub fn renew(&self, me: &KmsIdentity, root: &RootOfTrust) -> Result<(), ServerCertError> {
        let cert = me.server_cert(root)?;
        let key = certified(&cert)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        *self.pem.write().unwrap_or_else(|p| p.into_inner()) = cert.cert_pem();
        Ok(())
    }

    /// The current certificate (PEM), as `GET /v1/info` reports it.
    pub fn cert_pem(&self) -> String {
        self.pem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SHA-256 of the current leaf certificate.
    pub fn fingerprint(&self) -> ratls::Fingerprint {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current
            .cert
            .first()
            .map(|c| ratls::Fingerprint::of(c))
            .unwrap_or(ratls::Fingerprint([0; 32]))
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// When to renew a certificate valid for `validity`.
pub fn renew_after(validity: Duration) -> Duration {
    validity * 2 / 3
}

/// Renews `cert` every `every` until `stop` fires, keeping `GET /v1/info` in step; a
/// failure is logged and retried a minute later (the current certificate keeps serving).
pub async fn keep_fresh(
    cert: Arc<ServerCert>,
    me: Arc<KmsIdentity>,
    state: Arc<KmsState>,
    mut info: InfoResponse,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut wait = every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        match cert.renew(&me, &state.root) {
            Ok(()) => {
                tracing::info!(fingerprint = %cert.fingerprint(), "KMS server certificate renewed");
                info.kms_cert_pem = cert.cert_pem();
                state.set_info(&info);
                wait = every;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the KMS server certificate; retrying in a minute");
                wait = Duration::from_secs(60).min(every);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_serves_a_new_verifiable_certificate() {
        let me = KmsIdentity::boot(Arc::new(ratls::provider::SimulatedProvider::new())).unwrap();
        let root = RootOfTrust::generate().unwrap();
        let cert = ServerCert::issue(&me, &root).unwrap();
        let (fp1, pem1) = (cert.fingerprint(), cert.cert_pem());
        cert.renew(&me, &root).unwrap();
        assert_ne!(cert.fingerprint(), fp1);
        assert_ne!(cert.cert_pem(), pem1);
        // The new one is still an RA-TLS certificate chained to the same root.
        let current = cert.current.read().unwrap().clone();
        assert_eq!(current.cert.len(), 2);
        assert_eq!(current.cert[1].as_ref(), root.ca_cert_der());
        let mut policy = ratls::Policy::any_measurements();
        policy.allow_simulated = true;
        let verifier = ratls::AttestationVerifier::new(
            Arc::new(ratls::collateral::SourceChain::new()),
            policy,
        );
        verifier.verify(current.cert[0].as_ref()).unwrap();
        assert_eq!(
            renew_after(Duration::from_secs(30)),
            Duration::from_secs(20)
        );
    }
}
