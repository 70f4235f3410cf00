//! The HTTPS port: its listening sockets and the accept loop that gives each connection to
//! the front door.
//!
//! Each worker (a one-thread runtime, thread per core) runs one [`HttpsListener`] as a
//! pingora service, with a socket of its own bound with SO_REUSEPORT so the kernel spreads
//! new connections over the workers; with `listener_per_worker = false` one service on all
//! the worker threads shares one socket. The loop is ours rather than pingora's listening
//! service because of what a connection holds while it idles: pingora spawns every
//! connection as a task sized for its own TLS handshake future (8.8 KB per connection, for
//! its whole life, though the front door does its own handshake), where here the task is
//! the front door's state alone. pingora still runs the workers, their runtimes and the
//! graceful shutdown. These sockets are not handed to a new process in a graceful upgrade,
//! which the gateway does not use (it restarts; replicas keep the name served meanwhile).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;

use crate::frontdoor::FrontDoor;
use crate::server::GatewayError;

/// Pending connections the kernel queues per socket (capped by `net.core.somaxconn`), as
/// pingora's listeners ask.
const BACKLOG: i32 = 65_535;
/// Pause after an accept error that says a resource is exhausted (out of file
/// descriptors, buffers): accepting again at once would spin.
const EXHAUSTED_PAUSE: Duration = Duration::from_millis(500);

/// Binds the HTTPS port: `count` sockets sharing it with SO_REUSEPORT when `per_worker`,
/// else one. With port 0 the first socket's port is used for the others.
pub(crate) fn bind(
    addr: SocketAddr,
    count: usize,
    per_worker: bool,
) -> Result<Vec<std::net::TcpListener>, GatewayError> {
    let mut sockets: Vec<std::net::TcpListener> = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count.max(1) {
        let socket = bind_one(at, per_worker).map_err(|e| GatewayError::Listen {
            addr: at,
            what: "https",
            message: e.to_string(),
        })?;
        if let Ok(bound) = socket.local_addr() {
            at = bound;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// One accept loop on one listening socket, run by pingora as a service.
pub(crate) struct HttpsListener {
    pub name: String,
    /// Taken when the service starts (pingora starts it once).
    pub socket: Option<std::net::TcpListener>,
    pub front: Arc<FrontDoor>,
    /// Worker threads this service runs on (1 with a socket per worker).
    pub threads: usize,
}

#[async_trait]
impl Service for HttpsListener {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let Some(socket) = self.socket.take() else {
            tracing::error!(service = %self.name, "HTTPS service started twice; ignoring");
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(service = %self.name, error = %e, "HTTPS listener failed");
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
                a = listener.accept() => a,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let front = self.front.clone();
                    let shutdown = shutdown.clone();
                    // On a one-thread worker this is the worker itself; with a shared
                    // socket, pingora's pick among the service's threads.
                    pingora_runtime::current_handle().spawn(async move {
                        let l4 = stream(tcp, peer);
                        front.serve(l4, &shutdown).await;
                    });
                }
                Err(e) => {
                    if exhausted(&e) {
                        tracing::error!(service = %self.name, error = %e, "accept failed; pausing");
                        tokio::time::sleep(EXHAUSTED_PAUSE).await;
                    } else {
                        tracing::debug!(service = %self.name, error = %e, "accept failed");
                    }
                }
            }
        }
        tracing::info!(service = %self.name, "HTTPS listener closed");
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }
}

/// The accepted socket as pingora's stream: no L4 buffers (TLS reads whole records itself
/// and writes them whole, and an idle connection should hold no read buffer), Nagle off,
/// the peer address known without another system call.
fn stream(tcp: tokio::net::TcpStream, peer: SocketAddr) -> L4Stream {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(peer)));
    let mut l4 = L4Stream::from(tcp);
    l4.set_socket_digest(digest);
    l4
}

fn exhausted(e: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_per_worker_shares_one_port_and_a_taken_port_is_named() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let sockets = bind(any, 3, true).expect("three sockets with SO_REUSEPORT");
        let ports: Vec<u16> = sockets
            .iter()
            .map(|s| s.local_addr().expect("bound").port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");

        // Without SO_REUSEPORT the port is not shared: binding it again fails, naming it.
        let at = sockets[0].local_addr().expect("bound");
        match bind(at, 1, false) {
            Err(GatewayError::Listen { addr, what, .. }) => {
                assert_eq!((addr, what), (at, "https"));
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a port held by another socket was bound again"),
        }
        let shared = bind(any, 1, false).expect("one shared socket");
        assert_eq!(shared.len(), 1);
    }
}
