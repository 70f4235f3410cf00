//! The gateway's pingora background services: the hyper listeners (registration, admin,
//! the HTTP redirect), the ACME renewal loop, the evidence re-quoting loop and the lease
//! reaper. Each stops when pingora's shutdown watch fires.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::acme::Acme;
use crate::evidence::Publisher;
use crate::http_util;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;

pub(crate) type Handler = Arc<
    dyn Fn(
            http::Request<hyper::body::Incoming>,
            http_util::Peer,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = http::Response<http_util::Body>> + Send>,
        > + Send
        + Sync,
>;

/// A hyper listener run as a pingora background service.
pub(crate) struct HttpListener {
    pub(crate) name: &'static str,
    pub(crate) listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) handler: Handler,
}

#[async_trait]
impl BackgroundService for HttpListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(service = self.name, error = %e, "listener failed");
                return;
            }
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let handler = self.handler.clone();
        let serve = http_util::serve(listener, self.tls.clone(), rx, move |req, peer| {
            handler(req, peer)
        });
        tokio::pin!(serve);
        tokio::select! {
            _ = &mut serve => {}
            _ = shutdown.changed() => {
                let _ = tx.send(true);
            }
        }
    }
}

/// Runs the ACME renewal loop as a pingora background service.
pub(crate) struct AcmeService(pub(crate) Arc<Acme>);

/// Re-quotes the gateway's evidence when its keys change (see `evidence.rs`).
pub(crate) struct EvidenceService(pub(crate) Arc<Publisher>);

#[async_trait]
impl BackgroundService for EvidenceService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.clone().run(shutdown).await;
    }
}

/// Drops registrations whose lease ran out, every second.
pub(crate) struct LeaseReaper {
    pub(crate) registry: Arc<Registry>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for LeaseReaper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            for key in self.registry.expire(ratls::verifier::unix_now()) {
                tracing::info!(instance = %key, "registration lease expired");
                if let Err(e) = self.store.delete_instance(&key).await {
                    tracing::warn!(error = %e, "could not delete expired registration");
                }
            }
            self.metrics
                .registered_instances
                .set(self.registry.instance_count() as i64);
        }
    }
}
