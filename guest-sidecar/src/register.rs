//! Registration with the gateways: `POST /v1/register` over mutual RA-TLS (the client
//! certificate is the instance's RA-TLS certificate), renewed on a heartbeat, with
//! jittered exponential back-off after failures. Wire types are `gateway::api`'s.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway::api::{ErrorBody, RegisterRequest, RegisterResponse};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::watch;

/// The largest answer read from a gateway.
const MAX_RESPONSE: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("gateway {gateway}: {message}")]
    Transport { gateway: String, message: String },
    #[error("gateway {gateway} refused the registration ({status}): {reason}")]
    Refused {
        gateway: String,
        status: u16,
        reason: String,
    },
}

/// One gateway's registration endpoint.
#[derive(Debug, Clone)]
pub struct GatewayTarget {
    /// `host:port` to connect to.
    pub addr: String,
    /// The name the gateway's certificate must carry.
    pub server_name: String,
}

impl GatewayTarget {
    /// From an `https://host:port` URL.
    pub fn from_url(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("https://")?;
        let hostport = rest.split('/').next()?;
        let host = match hostport.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => hostport,
        };
        let addr = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:443")
        };
        Some(Self {
            addr,
            server_name: host.trim_matches(|c| c == '[' || c == ']').to_string(),
        })
    }
}

/// What the sidecar presents and asks for.
#[derive(Clone)]
pub struct Registration {
    pub client_chain: Vec<CertificateDer<'static>>,
    pub client_key: Arc<PrivateKeyDer<'static>>,
    pub request: RegisterRequest,
}

/// Registers with gateways, trusting `roots` for their certificates.
pub struct Registrar {
    roots: Arc<rustls::RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Registrar {
    pub fn new(roots: rustls::RootCertStore) -> Self {
        Self {
            roots: Arc::new(roots),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    /// One registration attempt.
    pub async fn register(
        &self,
        gw: &GatewayTarget,
        reg: &Registration,
    ) -> Result<RegisterResponse, RegisterError> {
        tokio::time::timeout(TIMEOUT, self.register_inner(gw, reg))
            .await
            .unwrap_or_else(|_| {
                Err(RegisterError::Transport {
                    gateway: gw.addr.clone(),
                    message: "timed out".into(),
                })
            })
    }

    async fn register_inner(
        &self,
        gw: &GatewayTarget,
        reg: &Registration,
    ) -> Result<RegisterResponse, RegisterError> {
        let t = |m: String| RegisterError::Transport {
            gateway: gw.addr.clone(),
            message: m,
        };
        let cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| t(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(reg.client_chain.clone(), reg.client_key.clone_key())
            .map_err(|e| t(format!("client certificate: {e}")))?;
        let name = ServerName::try_from(gw.server_name.clone()).map_err(|e| t(e.to_string()))?;
        let tcp = tokio::net::TcpStream::connect(&gw.addr)
            .await
            .map_err(|e| t(format!("connect: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| t(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| t(format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let body = serde_json::to_vec(&reg.request).map_err(|e| t(e.to_string()))?;
        let req = http::Request::post("/v1/register")
            .header(http::header::HOST, &gw.server_name)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| t(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| t(format!("HTTP: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| t(format!("reading response: {e}")))?
            .to_bytes();
        if status != 200 {
            let reason = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(RegisterError::Refused {
                gateway: gw.addr.clone(),
                status,
                reason,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| t(format!("bad response: {e}")))
    }

    /// Keeps one gateway registration alive until shutdown: renews at `heartbeat`, and
    /// after a failure retries with jittered exponential back-off (1 s doubling to the
    /// heartbeat). `current` supplies the registration to send each time (it changes
    /// when the certificate rotates).
    pub async fn keep_registered(
        self: Arc<Self>,
        gw: GatewayTarget,
        current: watch::Receiver<Registration>,
        heartbeat: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let reg = current.borrow().clone();
            let wait = match self.register(&gw, &reg).await {
                Ok(resp) => {
                    tracing::info!(gateway = %gw.addr, lease = resp.lease_secs, "registered");
                    backoff = Duration::from_secs(1);
                    heartbeat.min(Duration::from_secs(resp.lease_secs.max(2) / 2))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registration failed; retrying");
                    let w = jitter(backoff);
                    backoff = (backoff * 2).min(heartbeat.max(Duration::from_secs(1)));
                    w
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// `d` scaled by a random factor in [0.5, 1.5), so many sidecars do not retry in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls() {
        let g = GatewayTarget::from_url("https://gw.example.com:8443/").unwrap();
        assert_eq!(
            (g.addr.as_str(), g.server_name.as_str()),
            ("gw.example.com:8443", "gw.example.com")
        );
        let g = GatewayTarget::from_url("https://gw.example.com").unwrap();
        assert_eq!(g.addr, "gw.example.com:443");
        assert!(GatewayTarget::from_url("http://gw.example.com").is_none());
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(
                j >= Duration::from_secs(1) && j < Duration::from_secs(3),
                "{j:?}"
            );
        }
    }
}
