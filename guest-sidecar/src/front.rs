//! The RA-TLS front: the CVM's only TLS listener. It presents the instance's RA-TLS
//! certificate and relays each connection to the container port named in the SNI
//! (`<app-id|instance-id>-<port>[s|g].<domain>`, port 80 when absent). A name for another
//! app, or a port the compose does not expose, gets no certificate: the handshake fails.
//! A client that offers `teegate-fresh-<hex nonce>` first in its ALPN list gets a fresh,
//! short-lived certificate quoting over its nonce instead (`fresh.rs`, bounded per source).

mod fresh;

pub use fresh::{Fresh, FreshLimits, FreshRefusal, IssueFresh};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ratls::{AppId, InstanceId};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// The certificate the front serves; swapped in place when it rotates.
#[derive(Debug)]
pub struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertSlot {
    pub fn new(initial: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(initial),
        }
    }

    pub fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New handshakes present `next`; open connections keep theirs.
    pub fn replace(&self, next: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

/// Pairs a certificate chain with its key for serving.
pub fn certified_key(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Which app this front serves and where each exposed container port listens.
#[derive(Debug, Clone)]
pub struct Routes {
    pub app_id: AppId,
    pub instance_id: InstanceId,
    /// Container port → address the container is reachable at from the sidecar.
    pub ports: HashMap<u16, SocketAddr>,
}

impl Routes {
    /// The container address for a server name, if it names this app and an exposed port.
    pub fn target(&self, sni: &str) -> Option<SocketAddr> {
        let label = sni.split('.').next()?;
        let t = gateway::names::parse_label(label).ok()?;
        if t.id != self.app_id.0 && t.id != self.instance_id.0 {
            return None;
        }
        self.ports.get(&t.port).copied()
    }
}

#[derive(Debug)]
pub struct FrontResolver {
    pub routes: Arc<RwLock<Routes>>,
    pub cert: Arc<CertSlot>,
}

impl ResolvesServerCert for FrontResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?;
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        match routes.target(sni) {
            Some(_) => Some(self.cert.get()),
            None => {
                tracing::info!(
                    sni,
                    "front: refusing a name for another app or an unexposed port"
                );
                None
            }
        }
    }
}

/// Limits for the front.
#[derive(Debug, Clone)]
pub struct FrontLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// A relayed connection is cut after this long, idle or not.
    pub max_connection_time: Duration,
    /// Bounds on fresh (nonce-quoting) handshakes.
    pub fresh: FreshLimits,
}

impl Default for FrontLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            max_connection_time: Duration::from_secs(3600),
            fresh: FreshLimits::default(),
        }
    }
}

/// Builds the front's TLS config (h2 and http/1.1 offered; bytes are relayed either way).
pub fn tls_config(resolver: Arc<FrontResolver>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves the front until `shutdown` turns true, without fresh handshakes (a client that
/// asks for one is refused).
pub async fn serve(
    listener: TcpListener,
    resolver: Arc<FrontResolver>,
    limits: FrontLimits,
    shutdown: watch::Receiver<bool>,
) -> Result<(), rustls::Error> {
    serve_with_fresh(listener, resolver, None, limits, shutdown).await
}

/// The TLS config of one fresh handshake: the fresh certificate (still only for names of
/// this app and exposed ports), and the client's `teegate-fresh-` id acceptable as a last
/// resort so a client that offered nothing else still completes (it then speaks HTTP/1.1).
fn fresh_config(
    routes: &Arc<RwLock<Routes>>,
    key: Arc<CertifiedKey>,
    fresh_id: &[u8],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let resolver = Arc::new(FrontResolver {
        routes: routes.clone(),
        cert: Arc::new(CertSlot::new(key)),
    });
    let mut cfg = tls_config(resolver)?;
    cfg.alpn_protocols.push(fresh_id.to_vec());
    Ok(Arc::new(cfg))
}

/// Reads the ClientHello and picks the config: the instance certificate, or a fresh one
/// when the client asks (within the bounds). `None` refuses the handshake.
async fn pick_config(
    hello: &ClientHello<'_>,
    peer: SocketAddr,
    normal: &Arc<rustls::ServerConfig>,
    routes: &Arc<RwLock<Routes>>,
    fresh: Option<&Fresh>,
) -> Option<Arc<rustls::ServerConfig>> {
    let offered: Vec<Vec<u8>> = hello
        .alpn()
        .map(|ids| ids.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let nonce = match ratls::fresh::nonce_from_alpn(offered.iter().map(Vec::as_slice)) {
        Ok(None) => return Some(normal.clone()),
        Ok(Some(n)) => n,
        Err(e) => {
            tracing::info!(%peer, error = %e, "front: refusing a malformed fresh request");
            return None;
        }
    };
    let sni = hello.server_name().unwrap_or_default().to_string();
    // A name for another app costs no quote.
    routes
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .target(&sni)?;
    let Some(fresh) = fresh else {
        tracing::info!(%peer, "front: fresh handshakes are off; refusing");
        return None;
    };
    match fresh.certificate(peer.ip(), nonce).await {
        Ok(key) => fresh_config(routes, key, &offered[0])
            .map_err(|e| tracing::warn!(error = %e, "front: fresh TLS config"))
            .ok(),
        Err(e) => {
            tracing::warn!(%peer, reason = %e, "front: fresh handshake refused");
            None
        }
    }
}

/// [`serve`], answering fresh handshakes through `fresh`.
pub async fn serve_with_fresh(
    listener: TcpListener,
    resolver: Arc<FrontResolver>,
    fresh: Option<Arc<Fresh>>,
    limits: FrontLimits,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), rustls::Error> {
    let normal = Arc::new(tls_config(resolver.clone())?);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return Ok(()),
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "front: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "front: connection limit reached");
            continue;
        };
        let normal = normal.clone();
        let fresh = fresh.clone();
        let routes = resolver.routes.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = async {
                let acceptor =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                let start = acceptor.await.ok()?;
                let config = pick_config(
                    &start.client_hello(),
                    peer,
                    &normal,
                    &routes,
                    fresh.as_deref(),
                )
                .await?;
                start.into_stream(config).await.ok()
            };
            let Ok(Some(mut tls)) = tokio::time::timeout(limits.handshake_timeout, handshake).await
            else {
                return;
            };
            let sni = tls
                .get_ref()
                .1
                .server_name()
                .unwrap_or_default()
                .to_string();
            let target = routes
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .target(&sni);
            let Some(target) = target else { return };
            let mut upstream = match TcpStream::connect(target).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%target, error = %e, "front: container port unreachable");
                    return;
                }
            };
            let relay = tokio::io::copy_bidirectional(&mut tls, &mut upstream);
            let _ = tokio::time::timeout(limits.max_connection_time, relay).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_this_app_and_exposed_ports() {
        let app = AppId([0xab; 20]);
        let inst = InstanceId([0xcd; 20]);
        let routes = Routes {
            app_id: app,
            instance_id: inst,
            ports: HashMap::from([
                (80, "127.0.0.1:1000".parse().unwrap()),
                (8080, "127.0.0.1:1001".parse().unwrap()),
            ]),
        };
        let a = app.to_hex();
        assert_eq!(
            routes.target(&format!("{a}.x.test")),
            Some("127.0.0.1:1000".parse().unwrap())
        );
        assert_eq!(
            routes.target(&format!("{a}-8080s.x.test")),
            Some("127.0.0.1:1001".parse().unwrap())
        );
        assert_eq!(
            routes.target(&format!("{}-8080g.x.test", inst.to_hex())),
            Some("127.0.0.1:1001".parse().unwrap())
        );
        assert_eq!(
            routes.target(&format!("{a}-9090.x.test")),
            None,
            "unexposed port"
        );
        assert_eq!(
            routes.target(&format!("{}.x.test", "12".repeat(20))),
            None,
            "another app"
        );
        assert_eq!(routes.target("localhost"), None);
    }
}
