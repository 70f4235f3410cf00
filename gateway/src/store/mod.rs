//! Durable state behind the gateway: instance registrations (with lease expiry) and
//! certificates. The embedded backend is a file in the data directory; the etcd backend
//! shares them between gateway replicas (leases, watches, locks) behind the same trait.

mod embedded;
pub mod etcd;
pub mod sealed;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdStore, ReplicaRecord};
pub use sealed::{SealReport, SealedStore, Unreadable};

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

impl InstanceRecord {
    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            app: self.app_id,
            instance: self.instance_id,
        }
    }

    /// Whether `self` (a new registration) may replace `holder`, the live record of the
    /// same instance id: the same app, and the same certificate key lineage (they share a
    /// fingerprint, as a renewal or a rotation announced with the current certificate
    /// does). A lapsed holder can always be replaced.
    pub fn may_replace(&self, holder: &InstanceRecord, now: u64) -> Result<(), Conflict> {
        if holder.lease_expires <= now {
            return Ok(());
        }
        if holder.app_id != self.app_id {
            return Err(Conflict::OtherApp {
                instance: self.instance_id,
                holder: holder.app_id,
                until: holder.lease_expires,
            });
        }
        if !self
            .fingerprints
            .iter()
            .any(|f| holder.fingerprints.contains(f))
        {
            return Err(Conflict::OtherLineage {
                instance: self.instance_id,
                app: self.app_id,
                until: holder.lease_expires,
            });
        }
        Ok(())
    }
}

/// An instance's identity in the routing table and the store: instance ids are scoped by
/// app, so no registration of one app can name another app's instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub app: ratls::AppId,
    pub instance: ratls::InstanceId,
}

impl std::fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app, self.instance)
    }
}

impl std::str::FromStr for InstanceKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (app, instance) = s.split_once('/').ok_or("expected <app id>/<instance id>")?;
        Ok(Self {
            app: app.parse().map_err(|_| format!("bad app id {app:?}"))?,
            instance: instance
                .parse()
                .map_err(|_| format!("bad instance id {instance:?}"))?,
        })
    }
}

/// Why a registration may not take an instance id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("instance id {instance} is held by another app ({holder}) until its lease ends (unix {until})")]
    OtherApp {
        instance: ratls::InstanceId,
        holder: ratls::AppId,
        until: u64,
    },
    #[error("instance id {instance} of app {app} is held by a certificate of another key lineage until its lease ends (unix {until}); a restarted instance can take it then")]
    OtherLineage {
        instance: ratls::InstanceId,
        app: ratls::AppId,
        until: u64,
    },
}

/// A certificate and key the gateway serves (PEM), by name (`*.<base>` or a custom domain).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub name: String,
    pub cert_chain_pem: String,
    /// The private key: PEM in memory (wiped on drop); in a backend, the sealed envelope
    /// [`SealedStore`] wrote (a backend is only ever used behind it).
    pub key_pem: zeroize::Zeroizing<String>,
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
    InstanceDeleted(InstanceKey),
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
    /// The registration may not take this instance id (see [`InstanceRecord::may_replace`]).
    #[error("{0}")]
    Conflict(#[from] Conflict),
    /// A sealed record this gateway cannot open (see [`SealedStore`]).
    #[error("store record {record}: {message}")]
    Sealed { record: String, message: String },
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Records a registration. Refused with [`StoreError::Conflict`], changing nothing, when
    /// a live record of the same instance id may not be replaced by it
    /// ([`InstanceRecord::may_replace`]); the check and the write are one atomic step.
    async fn put_instance(&self, record: &InstanceRecord) -> Result<(), StoreError>;
    async fn delete_instance(&self, key: &InstanceKey) -> Result<(), StoreError>;
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
