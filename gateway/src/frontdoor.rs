//! Port 443: every connection starts here (`https_listener` spawns one task per connection
//! running [`FrontDoor::serve`]). The ClientHello is peeked (bounded in time and
//! size) to read its SNI; `…s.` names are relayed byte for byte to the instance's RA-TLS
//! front, so the client sees and can pin that certificate; everything else gets a TLS
//! handshake here and goes to the HTTP proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, Peek, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::client_tls;
use crate::fast::FastPath;
use crate::metrics::Metrics;
use crate::names::{self, Mode};
use crate::per_ip::PerIp;
use crate::proxy::{now_ms, GatewayProxy};
use crate::registry::{Balance, Registry};
use crate::{http1, http2};

/// TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
const HANDSHAKE: u8 = 0x16;
/// Longest a handshake waits for an on-demand certificate.
const ON_DEMAND_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, PartialEq, Eq)]
pub enum HelloError {
    NotTls,
    TooLarge,
    Timeout,
    Io(String),
    Malformed(String),
}

impl HelloError {
    pub fn label(&self) -> &'static str {
        match self {
            HelloError::NotTls => "not-tls",
            HelloError::TooLarge => "client-hello-too-large",
            HelloError::Timeout => "client-hello-timeout",
            HelloError::Io(_) => "client-hello-io",
            HelloError::Malformed(_) => "client-hello-malformed",
        }
    }
}

/// Given the bytes peeked so far, how many bytes are needed before the ClientHello can be
/// parsed again: records are taken whole.
fn bytes_needed(buf: &[u8]) -> Result<usize, HelloError> {
    let mut pos = 0;
    while pos + RECORD_HEADER <= buf.len() {
        if buf[pos] != HANDSHAKE {
            return Err(HelloError::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([buf[pos + 3], buf[pos + 4]]));
        pos += RECORD_HEADER + len;
    }
    Ok(if pos <= buf.len() {
        pos.max(buf.len())
    } else {
        pos
    })
}

/// The server name of a complete ClientHello in `buf`, `Ok(None)` if more records are needed.
pub fn parse_sni(buf: &[u8]) -> Result<Option<Option<String>>, HelloError> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = buf;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(HelloError::Malformed(e.to_string())),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Ok(Some(
            accepted.client_hello().server_name().map(str::to_string),
        )),
        Ok(None) => Ok(None),
        Err((e, _)) => Err(HelloError::Malformed(e.to_string())),
    }
}

/// Peeks the ClientHello without consuming it; returns its SNI (if any). `stream` is the
/// accepted TCP stream (any stream that peeks, for the fuzzer).
pub async fn peek_sni<S: Peek + Send + ?Sized>(
    stream: &mut S,
    timeout: Duration,
    max: usize,
) -> Result<Option<String>, HelloError> {
    let deadline = Instant::now() + timeout;
    let mut want = RECORD_HEADER;
    // Each round peeks at least one more record, and the size bound stops the loop.
    loop {
        if want > max {
            return Err(HelloError::TooLarge);
        }
        let mut buf = vec![0u8; want];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.try_peek(&mut buf)).await {
            Err(_) => return Err(HelloError::Timeout),
            Ok(Err(e)) => return Err(HelloError::Io(e.to_string())),
            Ok(Ok(false)) => return Ok(None),
            Ok(Ok(true)) => {}
        }
        let needed = bytes_needed(&buf)?;
        if needed > buf.len() {
            want = needed;
            continue;
        }
        match parse_sni(&buf)? {
            Some(sni) => return Ok(sni),
            None => want = buf.len() + RECORD_HEADER,
        }
    }
}

/// HTTP/2 from clients: pingora's bounded defaults (64 KiB decoded header list, which also
/// ends a CONTINUATION flood) with our stream bound, and the h2 crate's rapid-reset and
/// error-reset budgets (CVE-2023-44487) made explicit so an upgrade cannot loosen them.
pub fn h2_options(
    limits: &config::LimitsConfig,
) -> pingora_core::protocols::http::v2::server::H2Options {
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(limits.max_h2_streams)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(1024))
        .max_send_buffer_size(256 * 1024);
    h2
}

pub struct FrontDoor {
    pub proxy: Arc<HttpProxy<GatewayProxy>>,
    /// Plain HTTP/1 requests to app names.
    pub fast: Arc<FastPath>,
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub base_domain: String,
    pub balance: Balance,
    pub hello_timeout: Duration,
    pub hello_max: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub connections: Arc<Semaphore>,
    /// Open connections per client address.
    pub per_ip: Arc<PerIp>,
    /// From a request head's first byte to its end (HTTP/1).
    pub header_timeout: Duration,
    /// Most passthrough connections (and proxied requests) open to one app at once.
    pub max_per_app: u32,
    /// On-demand certificates for custom domains, when enabled.
    pub on_demand: Option<Arc<crate::ondemand::OnDemand>>,
}

struct Gauge<'a>(&'a Metrics);

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.active_connections.dec();
    }
}

impl FrontDoor {
    async fn passthrough(&self, mut client: L4Stream, target: names::Target) {
        let m = &self.metrics.passthrough;
        let Some((resolved, in_flight)) = self.registry.resolve_with_load(&target.id) else {
            m.with_label_values(&["unknown-app"]).inc();
            return;
        };
        if in_flight >= self.max_per_app {
            m.with_label_values(&["app-connection-limit"]).inc();
            return;
        }
        let inst = match self
            .registry
            .pick(resolved, target.port, &[], self.balance, now_ms())
        {
            Ok(i) => i,
            Err(_) => {
                m.with_label_values(&["no-healthy-instance"]).inc();
                return;
            }
        };
        let _guard = inst.begin();
        let upstream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(inst.record.front_addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                self.registry
                    .mark_down(&inst.record.instance_id, now_ms() + 10_000);
                m.with_label_values(&["connect-failed"]).inc();
                return;
            }
        };
        m.with_label_values(&["relayed"]).inc();
        let mut upstream = upstream;
        let relay = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        // The relay ends when either side closes; an idle bound stops abandoned pairs.
        let _ = tokio::time::timeout(self.idle_timeout * 10, relay).await;
    }

    /// A connection's life: its bounds, the ClientHello's name, then a relay (passthrough)
    /// or a TLS handshake and HTTP/1 or HTTP/2 until either side ends it. This future is
    /// the connection's task (see `https_listener`), so what it keeps across its long
    /// waits is what an idle connection costs: the one-off phases are boxed and freed.
    pub async fn serve(self: &Arc<Self>, mut stream: L4Stream, shutdown: &ShutdownWatch) {
        let peer_ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _ip_slot = match peer_ip {
            Some(ip) => match self.per_ip.try_acquire(ip) {
                Some(slot) => Some(slot),
                None => {
                    self.metrics
                        .tls_handshakes
                        .with_label_values(&["ip-connection-limit"])
                        .inc();
                    tracing::debug!(%ip, "connection limit for this address reached; dropping");
                    return;
                }
            },
            None => None,
        };
        let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
            self.metrics
                .tls_handshakes
                .with_label_values(&["connection-limit"])
                .inc();
            return;
        };
        self.metrics.active_connections.inc();
        let _gauge = Gauge(&self.metrics);
        let sni = match peek_sni(&mut stream, self.hello_timeout, self.hello_max).await {
            Ok(s) => s,
            Err(e) => {
                self.metrics
                    .tls_handshakes
                    .with_label_values(&[e.label()])
                    .inc();
                tracing::debug!(error = ?e, "dropping connection before TLS");
                return;
            }
        };
        if let Some(target) = sni
            .as_deref()
            .and_then(|s| names::parse(s, &self.base_domain).ok())
        {
            if target.mode == Mode::Passthrough {
                Box::pin(self.passthrough(stream, target)).await;
                return;
            }
        }
        if let (Some(od), Some(name)) = (&self.on_demand, sni.as_deref()) {
            if matches!(
                names::parse(name, &self.base_domain),
                Err(names::NameError::NotOurDomain)
            ) {
                if let Ok(name) = names::normalize_host(name) {
                    // Bounded: a slow CA must not hold connections open forever.
                    let _ = tokio::time::timeout(ON_DEMAND_WAIT, Box::pin(od.ensure(&name))).await;
                }
            }
        }
        // Boxed, like the other large futures below, so the connection's own state stays
        // small while it idles.
        let handshake = Box::pin(client_tls::accept(&self.acceptor, stream));
        let tls = match tokio::time::timeout(self.hello_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.metrics
                    .tls_handshakes
                    .with_label_values(&["handshake-failed"])
                    .inc();
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.metrics
                    .tls_handshakes
                    .with_label_values(&["handshake-timeout"])
                    .inc();
                return;
            }
        };
        self.metrics.tls_handshakes.with_label_values(&["ok"]).inc();
        let tls: Stream = Box::new(tls);
        if tls.selected_alpn_proto() == Some(ALPN::H2) {
            // HTTP/2 bounds its streams and frames itself (the proxy's H2Options).
            let conn =
                http2::Conn {
                    proxy: &self.proxy,
                    fast: &self.fast,
                    options: self.proxy.h2_options.clone().unwrap_or_else(
                        pingora_core::protocols::http::v2::server::default_h2_options,
                    ),
                    idle: self.idle_timeout,
                    request_timeout: self.request_timeout,
                    client_ip: peer_ip,
                    hosts: Default::default(),
                };
            Box::pin(http2::serve(conn, tls, shutdown)).await;
        } else {
            let conn = http1::Conn {
                proxy: &self.proxy,
                fast: &self.fast,
                idle: self.idle_timeout,
                header_timeout: self.header_timeout,
                request_timeout: self.request_timeout,
                metrics: &self.metrics,
                client_ip: peer_ip,
            };
            http1::serve(conn, tls, shutdown).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_hello(sni: &str) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_from_a_real_client_hello() {
        let hello = client_hello("abc.apps.test");
        assert_eq!(bytes_needed(&hello).unwrap(), hello.len());
        assert_eq!(
            parse_sni(&hello).unwrap(),
            Some(Some("abc.apps.test".into()))
        );
    }

    #[test]
    fn partial_records_ask_for_more_and_non_tls_is_refused() {
        let hello = client_hello("abc.apps.test");
        assert_eq!(bytes_needed(&hello[..5]).unwrap(), hello.len());
        assert_eq!(bytes_needed(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert!(parse_sni(&[0x16, 3, 1, 0, 4, 1, 0, 0, 0]).is_err());
    }
}
