//! One worker's HTTPS service with a listening socket of its own (thread per core).
//!
//! pingora keeps one table of listening sockets keyed by address (for handing them to a
//! new process in a graceful upgrade), so every service listening on the same address gets
//! the first one's socket. Started without that table, each worker's service binds its own
//! socket with SO_REUSEPORT, and the kernel spreads new connections over them. The cost:
//! these sockets are not handed over in a graceful upgrade, which the gateway does not use
//! (it restarts; replicas keep the name served meanwhile).

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::listening::Service;
use pingora_core::services::Service as ServiceTrait;

pub struct OwnSocket<A>(pub Service<A>);

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServiceTrait for OwnSocket<A> {
    async fn start_service(
        &mut self,
        _shared: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        self.0.start_service(None, shutdown, listeners_per_fd).await
    }

    fn name(&self) -> &str {
        self.0.name()
    }

    fn threads(&self) -> Option<usize> {
        self.0.threads()
    }
}
