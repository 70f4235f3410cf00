//! [`DnsServer`]: binds the UDP and TCP listeners and the record API from a
//! [`config::DnsConfig`], and runs them until a shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::error::DnsError;
use crate::handler::ZoneRequestHandler;
use crate::zone::ZoneHandle;

/// Resource bounds of the listeners.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open DNS TCP connections at most; more are closed at accept (default 256).
    pub tcp_max_connections: usize,
    /// A TCP connection idle this long, or slower than this to send one message, is closed
    /// (default 10 s).
    pub tcp_idle_timeout: Duration,
    /// Queries answered on one TCP connection before it is closed (default 10000).
    pub tcp_max_queries_per_connection: usize,
    /// Open API connections at most (default 32).
    pub api_max_connections: usize,
    /// Longest life of one API connection (default 30 s).
    pub api_connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tcp_max_connections: 256,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_max_queries_per_connection: 10_000,
            api_max_connections: 32,
            api_connection_timeout: Duration::from_secs(30),
        }
    }
}

/// Where a bound server listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening {
    /// DNS over UDP.
    pub udp: SocketAddr,
    /// DNS over TCP.
    pub tcp: SocketAddr,
    /// The record API, unless bound without it.
    pub api: Option<SocketAddr>,
}

/// A bound, not yet running, DNS server.
pub struct DnsServer {
    zone: ZoneHandle,
    udp: UdpSocket,
    tcp: TcpListener,
    api: Option<(TcpListener, crate::http::Access)>,
    limits: Limits,
}

impl DnsServer {
    /// Binds UDP, TCP and the record API from `cfg`. When UDP and TCP share an IP and both
    /// ask for port 0, they get the same port (so `dig -p PORT` and `dig +tcp -p PORT` agree).
    pub async fn bind(cfg: &config::DnsConfig) -> Result<DnsServer, DnsError> {
        let api_addr = cfg.api.listen;
        // The config refuses to load without a token; this guards configs built in code.
        let Some(token) = cfg.api.token.as_ref().map(|t| t.expose().to_owned()) else {
            return Err(DnsError::ApiWithoutToken(api_addr));
        };
        let mut server = Self::bind_without_api(cfg).await?;
        let api = TcpListener::bind(api_addr)
            .await
            .map_err(|source| DnsError::Bind {
                what: "API",
                addr: api_addr,
                source,
            })?;
        let access = crate::http::Access::new(token, api_addr, &cfg.api.allowed_hosts);
        server.api = Some((api, access));
        Ok(server)
    }

    /// Binds UDP and TCP only: for a gateway that runs the DNS in-process and changes the
    /// records through [`DnsServer::zone`].
    pub async fn bind_without_api(cfg: &config::DnsConfig) -> Result<DnsServer, DnsError> {
        let zone = ZoneHandle::from_config(cfg)?;
        let (udp, tcp) = bind_dns(cfg.listen_udp, cfg.listen_tcp).await?;
        Ok(DnsServer {
            zone,
            udp,
            tcp,
            api: None,
            limits: Limits::default(),
        })
    }

    /// Replaces the default [`Limits`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The zone the server answers from; changes through it are served at once.
    pub fn zone(&self) -> ZoneHandle {
        self.zone.clone()
    }

    /// The bound addresses.
    pub fn listening(&self) -> Listening {
        let addr = |r: std::io::Result<SocketAddr>| r.unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        Listening {
            udp: addr(self.udp.local_addr()),
            tcp: addr(self.tcp.local_addr()),
            api: self.api.as_ref().map(|(l, _)| addr(l.local_addr())),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight work finish
    /// for about a second, and returns. Fails if a listener stops on its own.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), DnsError> {
        let handler = ZoneRequestHandler::new(self.zone.clone());
        let stop = CancellationToken::new();
        let mut udp = Server::new(handler.clone());
        udp.register_socket(self.udp);
        let tcp = tokio::spawn(crate::tcp::serve(
            self.tcp,
            Arc::new(handler),
            self.limits,
            stop.clone(),
        ));
        let api = self.api.map(|(listener, access)| {
            tokio::spawn(crate::http::serve(
                listener,
                self.zone.clone(),
                access,
                self.limits,
                stop.clone(),
            ))
        });
        let result = tokio::select! {
            _ = shutdown => Ok(()),
            r = udp.block_until_done() => Err(DnsError::Serve(match r {
                Ok(()) => "UDP listener ended".to_owned(),
                Err(e) => e.to_string(),
            })),
        };
        tracing::info!("DNS server stopping");
        stop.cancel();
        if let Err(error) =
            tokio::time::timeout(Duration::from_secs(2), udp.shutdown_gracefully()).await
        {
            tracing::warn!(%error, "DNS UDP listener did not stop in time");
        }
        let _ = tcp.await;
        if let Some(api) = api {
            let _ = api.await;
        }
        result
    }
}

async fn bind_dns(
    udp_addr: SocketAddr,
    tcp_addr: SocketAddr,
) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_tcp = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                what: "TCP",
                addr,
                source,
            })
    };
    let bind_udp = |addr| async move {
        UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                what: "UDP",
                addr,
                source,
            })
    };
    let same_ephemeral =
        udp_addr.port() == 0 && tcp_addr.port() == 0 && udp_addr.ip() == tcp_addr.ip();
    if !same_ephemeral {
        return Ok((bind_udp(udp_addr).await?, bind_tcp(tcp_addr).await?));
    }
    // Take a TCP port, then the same UDP port; retry if another process holds it.
    let mut last = None;
    for _ in 0..20 {
        let tcp = bind_tcp(tcp_addr).await?;
        let port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        match bind_udp(SocketAddr::new(udp_addr.ip(), port)).await {
            Ok(udp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(DnsError::Serve("no free port".to_owned())))
}
