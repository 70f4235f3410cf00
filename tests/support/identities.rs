//! Simulated CVM identities: RA-TLS certificates, the stand-in front, RA-TLS client config.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ratls::cert::{issue, CertProfile, Identity, RaTlsCert};
use ratls::eventlog::names;
use ratls::provider::{Measurer, QuoteProvider, SimulatedProvider};
use ratls::{ComposeHash, InstanceId};
use tokio::net::TcpStream;

use super::{provider, BASE};

pub fn identity(compose: &[u8], instance: u8) -> Identity {
    let compose_hash = ComposeHash::of(compose);
    Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: InstanceId([instance; 20]),
    }
}

pub fn booted(provider: Arc<dyn QuoteProvider>, id: &Identity) -> Measurer {
    let m = Measurer::new(provider);
    m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())
        .unwrap();
    m.emit(names::APP_ID, id.app_id.0.to_vec()).unwrap();
    m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())
        .unwrap();
    m.emit(names::KEY_PROVIDER, b"kms".to_vec()).unwrap();
    m
}

pub fn ratls_cert(id: &Identity) -> RaTlsCert {
    issued(Arc::new(SimulatedProvider::new()), id, None)
}

/// A certificate for every app name under [`BASE`], quoted by `provider` for `id`, self-signed
/// or signed by `ca`.
fn issued(
    provider: Arc<dyn QuoteProvider>,
    id: &Identity,
    ca: Option<&ratls::cert::CertAuthority>,
) -> RaTlsCert {
    let m = booted(provider, id);
    issue(
        &m,
        id,
        &CertProfile::server_and_client(vec![format!("*.{BASE}")], Duration::from_secs(3600)),
        ca,
    )
    .unwrap()
}

/// A stand-in CVM front: real TLS with an RA-TLS certificate, HTTP/1.1 and HTTP/2, that
/// answers `instance=<id> port=<port from SNI> path=<path> xff=<X-Forwarded-For>`.
pub struct Front {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    kill: tokio::sync::watch::Sender<bool>,
}

impl Front {
    /// Stops listening and cuts every open connection, as a dying CVM would.
    pub fn kill(&self) {
        let _ = self.kill.send(true);
        self.task.abort();
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn start_front(cert: &RaTlsCert, instance: &str) -> Front {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.rustls_chain(), cert.rustls_key())
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let instance = instance.to_string();
    let (kill, killed) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let instance = instance.clone();
            let mut killed = killed.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = killed.changed() => {}
                    _ = serve_one(acceptor, tcp, instance) => {}
                }
            });
        }
    });
    Front { addr, task, kill }
}

async fn serve_one(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream, instance: String) {
    {
        {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
            let port = sni
                .split('.')
                .next()
                .and_then(|l| l.rsplit_once('-'))
                .map(|(_, p)| p.to_string())
                .unwrap_or_else(|| "80".into());
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let xff = req
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    // Every header an app might take for the client's identity, as the
                    // app receives it (names with `_` included), so tests see spoofs.
                    let mut fwd: Vec<String> = req
                        .headers()
                        .iter()
                        .filter(|(k, _)| {
                            let k = k.as_str().replace('_', "-");
                            k.contains("forwarded")
                                || k.contains("real-ip")
                                || k.contains("client-ip")
                        })
                        .map(|(k, v)| format!("{}:{}", k, v.to_str().unwrap_or("?")))
                        .collect();
                    fwd.sort();
                    let body = format!(
                        "instance={} port={} path={} xff={} proto={} version={:?} fwd=[{}]",
                        instance,
                        port,
                        req.uri().path(),
                        xff,
                        proto,
                        req.version(),
                        fwd.join(",")
                    );
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        }
    }
}

/// A TLS client config that accepts only a verifying (simulated) RA-TLS server.
pub fn ratls_client_config(
    expect_app: Option<ratls::AppId>,
) -> (rustls::ClientConfig, ratls::tls::RaTlsCheck) {
    let mut policy = ratls::Policy::any_measurements();
    policy.allow_simulated = true;
    let verifier = Arc::new(ratls::CachingVerifier::new(
        ratls::AttestationVerifier::new(Arc::new(ratls::collateral::SourceChain::new()), policy),
        8,
    ));
    let mut check =
        ratls::tls::RaTlsCheck::new(verifier, ratls::tls::ChainTrust::SelfSigned, provider());
    if let Some(app) = expect_app {
        check = check.expect_app(app);
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ratls::tls::RaTlsServerVerifier(check.clone())))
        .with_no_client_auth();
    (cfg, check)
}

/// A simulated TD whose quotes have one byte of the TD report flipped after signing.
struct Tampering(SimulatedProvider);

impl QuoteProvider for Tampering {
    fn kind(&self) -> ratls::provider::ProviderKind {
        ratls::provider::ProviderKind::Simulated
    }
    fn quote(&self, rd: &ratls::ReportData) -> Result<Vec<u8>, ratls::provider::ProviderError> {
        let mut q = self.0.quote(rd)?;
        q[48 + 200] ^= 1;
        Ok(q)
    }
    fn extend_rtmr3(&self, d: &ratls::Measurement) -> Result<(), ratls::provider::ProviderError> {
        self.0.extend_rtmr3(d)
    }
}

pub fn tampered_ratls_cert(id: &Identity) -> RaTlsCert {
    issued(Arc::new(Tampering(SimulatedProvider::new())), id, None)
}

/// An identity that names `app` although its compose hash is `compose`'s.
pub fn named_identity(app: ratls::AppId, compose: &[u8], instance: u8) -> Identity {
    Identity {
        app_id: app,
        compose_hash: ComposeHash::of(compose),
        instance_id: InstanceId([instance; 20]),
    }
}

/// An RA-TLS certificate for `id` signed by `ca` (an app CA), presented with it.
pub fn ratls_cert_by(id: &Identity, ca: &ratls::cert::CertAuthority) -> RaTlsCert {
    issued(Arc::new(SimulatedProvider::new()), id, Some(ca))
}
