//! Keeping a replica in step with the shared store, as pingora background services:
//!
//! ```text
//!  etcd ──watch──▶ EtcdStore::run_watch (StoreWatch) ──StoreEvent──▶ StoreSync ──▶ Registry (verified records only)
//!                                                                              └─▶ CertResolver
//!  ReplicaHeartbeat ──lease──▶ etcd P/replicas/<id> ──watch──▶ `teegate dns` (*.<base> A/AAAA)
//! ```
//!
//! A record that arrives from the store is routed only after its certificates verify here,
//! as at restart: the store is shared, so this replica does not take another's word.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use ratls::CachingVerifier;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::certs::CertResolver;
use crate::metrics::Metrics;
use crate::registration::is_refused_addr;
use crate::registry::Registry;
use crate::store::{EtcdStore, InstanceKey, InstanceRecord, ReplicaRecord, Store, StoreEvent};

/// Whether every certificate of a stored record verifies now (with the issuers the
/// instance presented, so a named app id is authorised as at registration) and attests the
/// record's own app and instance.
pub fn verifies(record: &InstanceRecord, verifier: &CachingVerifier) -> bool {
    let issuers: Vec<Vec<u8>> = record
        .chain
        .iter()
        .filter_map(|h| hex::decode(h).ok())
        .collect();
    let issuers: Vec<&[u8]> = issuers.iter().map(Vec::as_slice).collect();
    !record.certs.is_empty()
        && record.certs.iter().all(|h| {
            hex::decode(h)
                .ok()
                .and_then(|der| verifier.verify_chain(&der, &issuers).ok())
                .is_some_and(|v| {
                    *v.instance_id() == record.instance_id && *v.app_id() == record.app_id
                })
        })
}

/// Applies store events (this replica's and the others') to the routing table and the
/// served certificates.
pub struct StoreSync {
    pub store: Arc<dyn Store>,
    pub verifier: Arc<CachingVerifier>,
    pub registry: Arc<Registry>,
    pub resolver: Arc<CertResolver>,
    pub metrics: Arc<Metrics>,
    /// As `registration.allow_loopback`: the same address rule as for a registration here.
    pub allow_loopback: bool,
    events: std::sync::Mutex<Option<broadcast::Receiver<StoreEvent>>>,
}

impl StoreSync {
    /// Subscribes at once, so events emitted before the service starts are not lost.
    pub fn new(
        store: Arc<dyn Store>,
        verifier: Arc<CachingVerifier>,
        registry: Arc<Registry>,
        resolver: Arc<CertResolver>,
        metrics: Arc<Metrics>,
        allow_loopback: bool,
    ) -> Self {
        let events = std::sync::Mutex::new(Some(store.subscribe()));
        Self {
            store,
            verifier,
            registry,
            resolver,
            metrics,
            allow_loopback,
            events,
        }
    }

    fn apply_instance(&self, record: InstanceRecord) {
        if record.lease_expires <= ratls::verifier::unix_now() {
            return;
        }
        let known = self.registry.instance(&record.instance_id);
        // This replica's own registrations arrive here too, already in the table.
        if known.as_ref().is_some_and(|i| i.record == record) {
            return;
        }
        let refused = !self.allow_loopback && is_refused_addr(record.front_addr.ip());
        if !refused && verifies(&record, &self.verifier) {
            let (app, instance) = (record.app_id, record.instance_id);
            match self.registry.upsert(record, ratls::verifier::unix_now()) {
                Ok(()) if known.is_none() => {
                    tracing::info!(%app, %instance, "registration from the store")
                }
                Ok(()) => {}
                // The store refuses such writes; one that got there anyway (written to
                // etcd by hand, or a race lost) does not move the instance.
                Err(e) => {
                    tracing::warn!(%app, %instance, error = %e, "stored registration conflicts with the routed instance; not routed")
                }
            }
            return;
        }
        tracing::warn!(
            instance = %record.instance_id, front = %record.front_addr,
            "stored registration does not verify here or points at a refused address; not routed"
        );
        // The store no longer holds the version this replica verified: stop routing it too.
        self.registry.remove(&record.key());
    }

    async fn apply_cert(&self, name: &str) {
        match self.store.certs().await {
            Ok(all) => {
                for record in all.iter().filter(|c| c.name == name) {
                    self.install(record);
                }
            }
            Err(e) => {
                tracing::warn!(name, error = %e, "could not read a certificate another replica stored")
            }
        }
    }

    fn install(&self, record: &crate::store::CertRecord) {
        match self.resolver.install(record) {
            Ok(()) => self
                .metrics
                .cert_not_after
                .with_label_values(&[&record.name])
                .set(record.not_after as i64),
            Err(e) => {
                tracing::warn!(name = %record.name, error = %e, "stored certificate not installed")
            }
        }
    }

    /// Makes the routing table and certificates match the store as it is now.
    async fn reconcile(&self) {
        let records = match self.store.instances().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "resynchronisation postponed");
                return;
            }
        };
        let keep: HashSet<_> = records.iter().map(|r| r.key()).collect();
        let now_ms = ratls::verifier::unix_now().saturating_mul(1000);
        let stale: Vec<InstanceKey> = self
            .registry
            .apps(now_ms)
            .into_iter()
            .flat_map(|a| a.instances)
            .filter_map(|i| {
                Some(InstanceKey {
                    app: i.app_id.parse().ok()?,
                    instance: i.instance_id.parse().ok()?,
                })
            })
            .filter(|k| !keep.contains(k))
            .collect();
        for key in &stale {
            tracing::info!(instance = %key, "registration gone from the store; removed");
            self.registry.remove(key);
        }
        let count = records.len();
        for r in records {
            self.apply_instance(r);
        }
        if let Ok(certs) = self.store.certs().await {
            for c in &certs {
                self.install(c);
            }
        }
        tracing::info!(
            instances = count,
            removed = stale.len(),
            "resynchronised with the store"
        );
    }

    async fn apply(&self, event: StoreEvent) {
        match event {
            StoreEvent::InstancePut(r) => self.apply_instance(*r),
            StoreEvent::InstanceDeleted(id) => {
                if self.registry.remove(&id).is_some() {
                    tracing::info!(instance = %id, "registration removed from the store");
                }
            }
            StoreEvent::CertPut(name) => self.apply_cert(&name).await,
            StoreEvent::Resync => self.reconcile().await,
        }
        self.metrics
            .registered_instances
            .set(self.registry.instance_count() as i64);
    }
}

#[async_trait]
impl BackgroundService for StoreSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut events) = self.events.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = shutdown.changed() => return,
            };
            match event {
                Ok(e) => self.apply(e).await,
                // Fell behind: the missed events are unknown, so read the whole state.
                Err(RecvError::Lagged(_)) => self.reconcile().await,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// Runs the etcd watch that feeds [`StoreSync`].
pub struct StoreWatch(pub EtcdStore);

#[async_trait]
impl BackgroundService for StoreWatch {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run_watch(shutdown).await;
    }
}

/// Keeps this replica in the replica list while it runs.
pub struct ReplicaHeartbeat {
    pub store: EtcdStore,
    pub record: ReplicaRecord,
    pub ttl: Duration,
}

#[async_trait]
impl BackgroundService for ReplicaHeartbeat {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.store
            .keep_replica(&self.record, self.ttl, shutdown)
            .await;
    }
}

/// A fresh random replica id (hex), unique for each run of a gateway.
pub fn new_replica_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}
