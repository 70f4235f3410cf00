//! Upstream connections of the HTTP/1 fast path: TLS to an instance's RA-TLS front, and a
//! per-thread pool of idle ones.
//!
//! A [`Verified`] connection exists only when the certificate its front presented is one the
//! gateway verified for that very instance at registration: the TLS verifier refuses any
//! certificate no registered instance owns (and checks the handshake signature with its key),
//! and [`Upstreams::connect`], the only constructor, then checks the owner is the instance
//! picked (which also covers a resumed session, where no certificate is sent again). Code
//! that forwards requests can only be handed a `Verified` connection.
//!
//! The pool has no task per idle connection and no timer: a connection taken from it is
//! checked on the spot (idle for less than the idle timeout, and its socket neither closed
//! nor holding unexpected bytes), and each (instance, port) keeps at most
//! `limits.upstream_idle_per_instance` on each thread (the oldest go first).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ratls::{Fingerprint, InstanceId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::registry::{Instance, Registry};
use crate::single_send::SingleSend;

/// Why no verified connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}: {message}")]
    Connect {
        addr: std::net::SocketAddr,
        message: String,
    },
    #[error("connect to {0}: timed out")]
    Timeout(std::net::SocketAddr),
    #[error("TLS handshake with {addr}: {message}")]
    Handshake {
        addr: std::net::SocketAddr,
        message: String,
    },
    /// The front presented a certificate the gateway did not verify for this instance.
    #[error("upstream certificate refused: {reason}")]
    Refused { reason: &'static str },
}

impl ConnectError {
    /// The `teegate_upstream_failures_total` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Refused { reason } => reason,
            _ => "connect",
        }
    }
}

/// A TLS connection to the front of the instance it names, whose certificate was checked.
pub struct Verified {
    /// Boxed: a request's futures move the connection from the pool to the forwarding
    /// phase and back, and rustls' client state is over a kilobyte.
    pub tls: Box<TlsStream<SingleSend<TcpStream>>>,
    pub instance: InstanceId,
    port: u16,
}

impl Verified {
    /// Whether the connection is idle and open: nothing to read, not closed. Polled once
    /// with a no-op waker, so it never waits.
    fn is_quiet(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.tls).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }
}

/// Accepts a certificate only if a registered instance owns it, and checks the handshake
/// signature with its key. Which instance owns it is checked after the handshake.
struct RegisteredCert {
    registry: Arc<Registry>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for RegisteredCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegisteredCert")
    }
}

impl ServerCertVerifier for RegisteredCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.registry.owner_of(&Fingerprint::of(end_entity)) {
            Some(_) => Ok(ServerCertVerified::assertion()),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Idle {
    conn: Verified,
    since: Instant,
}

type PoolMap = HashMap<(InstanceId, u16), VecDeque<Idle>, foldhash::fast::RandomState>;

thread_local! {
    static POOL: RefCell<PoolMap> = RefCell::new(PoolMap::default());
}

/// Makes and pools verified upstream connections.
pub struct Upstreams {
    registry: Arc<Registry>,
    config: Arc<ClientConfig>,
    base_domain: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections kept per (instance, port) on each thread.
    idle_per_key: usize,
}

impl Upstreams {
    pub fn new(
        registry: Arc<Registry>,
        provider: Arc<CryptoProvider>,
        base_domain: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        idle_per_key: usize,
    ) -> Result<Self, rustls::Error> {
        let verifier = Arc::new(RegisteredCert {
            registry: registry.clone(),
            provider: provider.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            registry,
            config: Arc::new(config),
            base_domain,
            connect_timeout,
            idle_timeout,
            idle_per_key,
        })
    }

    /// An idle pooled connection to `inst` on `port` that is still usable, if any.
    pub fn pooled(&self, inst: &Instance, port: u16) -> Option<Verified> {
        let key = (inst.record.instance_id, port);
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let list = pool.get_mut(&key)?;
            // The most recently used first: the likeliest to be still open.
            while let Some(mut idle) = list.pop_back() {
                if idle.since.elapsed() < self.idle_timeout && idle.conn.is_quiet() {
                    return Some(idle.conn);
                }
            }
            None
        })
    }

    /// Returns a connection whose last response was read whole, for another request.
    pub fn release(&self, conn: Verified) {
        let key = (conn.instance, conn.port);
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let list = pool.entry(key).or_default();
            if list.len() >= self.idle_per_key {
                // The oldest goes: it is the likeliest to have been closed by the front.
                list.pop_front();
            }
            list.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        });
    }

    /// A new connection to `inst`'s front for `port`, with its certificate checked.
    pub async fn connect(&self, inst: &Instance, port: u16) -> Result<Verified, ConnectError> {
        let addr = inst.record.front_addr;
        let sni = crate::names::upstream_sni(&inst.record.app_id.to_hex(), port, &self.base_domain);
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let dial = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| ConnectError::Connect {
                    addr,
                    message: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(sni).map_err(|e| ConnectError::Handshake {
                addr,
                message: e.to_string(),
            })?;
            connector.connect(name, SingleSend(tcp)).await.map_err(|e| {
                match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::InvalidCertificate(_)) => ConnectError::Refused {
                        reason: "unverified-certificate",
                    },
                    _ => ConnectError::Handshake {
                        addr,
                        message: e.to_string(),
                    },
                }
            })
        };
        let tls = tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| ConnectError::Timeout(addr))??;
        // The verifier accepted a certificate some instance owns (or the session resumed
        // one such): it must be this instance's.
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Fingerprint::of(c));
        let owner = presented.and_then(|fp| self.registry.owner_of(&fp));
        match (presented, owner) {
            (Some(_), Some(owner)) if owner == inst.record.instance_id => Ok(Verified {
                tls: Box::new(tls),
                instance: owner,
                port,
            }),
            (None, _) => Err(ConnectError::Refused {
                reason: "no-certificate",
            }),
            (Some(_), None) => Err(ConnectError::Refused {
                reason: "unverified-certificate",
            }),
            (Some(_), Some(_)) => Err(ConnectError::Refused {
                reason: "other-instance-certificate",
            }),
        }
    }
}
