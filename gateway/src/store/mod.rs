//! Durable state behind the gateway: instance registrations (with lease expiry) and
//! certificates. The embedded backend is a file in the data directory; the etcd backend
//! shares them between gateway replicas (leases, watches, locks) behind the same trait.

mod embedded;
pub mod etcd;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdStore, ReplicaRecord};

use std::net::SocketAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// A registered instance as stored: everything routing needs, from verified claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub app_id: ratls::AppId,
    pub instance_id: ratls::InstanceId,
    pub compose_hash: ratls::ComposeHash,
    pub front_addr: SocketAddr,
    pub ports: Vec<u16>,
    /// Fingerprints of verified certificates this instance may present upstream.
    pub fingerprints: Vec<ratls::Fingerprint>,
    /// The verified certificates themselves (DER, hex), so a restart can re-verify them.
    pub certs: Vec<String>,
    pub tcb_status: String,
    pub simulated: bool,
    pub mrtd: ratls::Measurement,
    /// Unix seconds when the registration lapses.
    pub lease_expires: u64,
    /// The issuers the instance presented above its certificate (hex DER, app CA first).
    #[serde(default)]
    pub chain: Vec<String>,
    /// The KMS root CA the instance named (hex DER); trusted only where pinned.
    #[serde(default)]
    pub kms_root_ca: Option<String>,
    /// `app-compose.json`, kept only when it hashes to `compose_hash`.
    #[serde(default)]
    pub app_compose: Option<String>,
}

/// A certificate and key the gateway serves (PEM), by name (`*.<base>` or a custom domain).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub name: String,
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub not_after: u64,
}

impl std::fmt::Debug for CertRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRecord")
            .field("name", &self.name)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A change other parts of the gateway (or other replicas) should see.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    InstancePut(Box<InstanceRecord>),
    InstanceDeleted(ratls::InstanceId),
    CertPut(String),
    /// Events may have been missed (a replicated store reconnected): re-read everything.
    Resync,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O at {path}: {message}")]
    Io { path: String, message: String },
    #[error("store data at {path} is corrupt: {message}")]
    Corrupt { path: String, message: String },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store's settings cannot be used as given (TLS files, endpoints).
    #[error("store configuration: {0}")]
    Config(String),
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn put_instance(&self, record: &InstanceRecord) -> Result<(), StoreError>;
    async fn delete_instance(&self, id: &ratls::InstanceId) -> Result<(), StoreError>;
    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError>;
    async fn put_cert(&self, record: &CertRecord) -> Result<(), StoreError>;
    async fn certs(&self) -> Result<Vec<CertRecord>, StoreError>;
    /// Small named values (the ACME account credentials, for one).
    async fn get_value(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn put_value(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Changes as they happen (from this process, or from other replicas).
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;
    /// Takes the named lock, waiting at most `wait`; it is released when the guard drops
    /// or, should its holder die, when `ttl` runs out. `None`: someone else holds it.
    async fn lock(
        &self,
        name: &str,
        ttl: std::time::Duration,
        wait: std::time::Duration,
    ) -> Result<Option<LockGuard>, StoreError>;
}

/// A held store lock; dropping it releases the lock.
pub struct LockGuard {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl LockGuard {
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(f) = self.release.take() {
            f();
        }
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}
