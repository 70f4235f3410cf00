//! The etcd backend (etcd v3 API), for gateway replicas that share state.
//!
//! Key layout under the configured prefix `P`; values are JSON of the same serde types the
//! embedded store writes, so fields added later with `#[serde(default)]` pass through:
//!
//! ```text
//! P/instances/<app>/<instance>   InstanceRecord, under an etcd lease ending with the registration
//! P/instance-owners/<instance>   the app id holding that instance id (same lease), so an
//!                                instance id has one holder across apps; written in the
//!                                same transaction as the record
//! P/certs/<name>                 CertRecord (chain PEM, key sealed by SealedStore)
//! P/values/<key>                 small named values, sealed (the ACME account)
//! P/locks/<name>                 held under the holder's lease, kept alive while held
//! P/replicas/<replica id>        ReplicaRecord, under the replica's lease, kept alive while it runs
//! ```
//!
//! One watch on `P/` turns every change (from any replica) into a [`StoreEvent`]. After a
//! break it lists again and emits [`StoreEvent::Resync`], so subscribers rebuild their view
//! from the store instead of trusting events they may have missed. While etcd is away the
//! store's callers fail fast with [`StoreError::Unavailable`] naming etcd; what a replica
//! already routes stays in its memory.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use config::{EtcdConfig, EtcdTlsConfig};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::{CertRecord, InstanceKey, InstanceRecord, LockGuard, Store, StoreError, StoreEvent};
use crate::metrics::Metrics;

/// Rounds of read-judge-write a registration gets before it is told to retry.
const MAX_CLAIM_ATTEMPTS: usize = 3;

/// How long one etcd call may take before the caller hears "unavailable". Registration
/// answers wait on this, so it is short.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest pause between reconnection attempts of a watch or a lease.
const MAX_RETRY: Duration = Duration::from_secs(1);
/// A lock's lease: a dead holder's lock frees within this, however long its `ttl`.
const LOCK_LEASE_SECS: i64 = 10;

/// One gateway replica as listed for DNS: the addresses clients should use for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub id: String,
    #[serde(default)]
    pub addrs: Vec<IpAddr>,
    #[serde(default)]
    pub https_port: u16,
}

/// The etcd-backed [`Store`]. Cheap to clone; clones share one client.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    prefix: String,
    endpoints: String,
    events: broadcast::Sender<StoreEvent>,
    /// The runtime the client's connection tasks run on (see `connect`).
    rt: tokio::runtime::Handle,
    metrics: Option<Arc<Metrics>>,
    up: AtomicBool,
    /// Wakes waiting watches when a call succeeds after an outage, so they resynchronise
    /// at once rather than at their next retry.
    back: tokio::sync::Notify,
}

/// A change below a watched prefix, keys relative to it.
enum Change {
    /// The whole current content (after a (re)connect).
    Reset(Vec<(String, Vec<u8>)>),
    Put(String, Vec<u8>),
    Delete(String),
}

impl EtcdStore {
    /// Connects to the cluster. TLS is used for `https://` endpoints (with `tls.ca_file`, or
    /// the system roots); a `[tls]` block with a plain `http://` endpoint is refused rather
    /// than silently ignored. Without credentials the connection is lazy: an unreachable
    /// cluster shows up at the first call.
    pub async fn connect(
        cfg: &EtcdConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, StoreError> {
        let endpoints: Vec<String> = cfg
            .endpoints
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .collect();
        let desc = endpoints.join(",");
        let config_err = |message: String| StoreError::Config(format!("etcd ({desc}): {message}"));
        let unavailable =
            |message: String| StoreError::Unavailable(format!("etcd ({desc}): {message}"));
        let any_https = cfg.endpoints.iter().any(|e| e.is_https());
        if cfg.tls.is_some() && cfg.endpoints.iter().any(|e| !e.is_https()) {
            return Err(config_err(
                "store.etcd.tls is set but an endpoint is not https://; refusing to connect without TLS".into(),
            ));
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // Detects a silent peer (a hung or partitioned member) within seconds, so a
            // watch breaks and reconnects instead of waiting forever.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from its quorum answers "no leader" instead of stale data.
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            opts = opts
                .with_user(user.clone(), password.expose().to_string())
                .with_auto_token_refresh(true);
        }
        if any_https {
            opts = opts.with_tls(tls_options(cfg.tls.as_ref()).map_err(config_err)?);
        }
        let handle =
            client_runtime().map_err(|e| config_err(format!("starting its runtime: {e}")))?;
        // With credentials, connecting authenticates: bounded, as every other call.
        let connecting = handle.spawn(async move {
            tokio::time::timeout(OP_TIMEOUT, Client::connect(endpoints, Some(opts))).await
        });
        let client = connecting
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|_| unavailable(format!("no answer within {OP_TIMEOUT:?}")))?
            .map_err(|e| match e {
                etcd_client::Error::InvalidArgs(_)
                | etcd_client::Error::InvalidUri(_)
                | etcd_client::Error::EndpointError(_) => config_err(e.to_string()),
                other => unavailable(other.to_string()),
            })?;
        let (events, _) = broadcast::channel(4096);
        if let Some(m) = &metrics {
            m.store_up.set(1);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                prefix: cfg.prefix.trim_end_matches('/').to_string(),
                endpoints: desc,
                events,
                rt: handle,
                metrics,
                up: AtomicBool::new(true),
                back: tokio::sync::Notify::new(),
            }),
        })
    }

    fn key(&self, sub: &str) -> String {
        format!("{}/{sub}", self.inner.prefix)
    }

    fn client(&self) -> Client {
        self.inner.client.clone()
    }

    fn mark_up(&self) {
        if !self.inner.up.swap(true, Ordering::SeqCst) {
            tracing::info!(etcd = %self.inner.endpoints, "etcd reachable again");
            self.inner.back.notify_waiters();
        }
        if let Some(m) = &self.inner.metrics {
            m.store_up.set(1);
        }
    }

    fn fail(&self, op: &'static str, message: String) -> StoreError {
        if self.inner.up.swap(false, Ordering::SeqCst) {
            tracing::error!(
                etcd = %self.inner.endpoints, op, error = %message,
                "etcd unreachable: serving from the last known state; registrations fail until it returns"
            );
        }
        if let Some(m) = &self.inner.metrics {
            m.store_up.set(0);
            m.store_errors.with_label_values(&[op]).inc();
        }
        StoreError::Unavailable(format!("etcd ({}) {op}: {message}", self.inner.endpoints))
    }

    /// One etcd call, bounded by `OP_TIMEOUT`, its failure counted and named.
    async fn call<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        self.call_within(OP_TIMEOUT, op, f).await
    }

    /// As [`Self::call`], bounded by `limit` when that is shorter than `OP_TIMEOUT`.
    async fn call_within<T>(
        &self,
        limit: Duration,
        op: &'static str,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        let limit = limit.min(OP_TIMEOUT);
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => {
                self.mark_up();
                Ok(v)
            }
            Ok(Err(e)) => Err(self.fail(op, e.to_string())),
            Err(_) => Err(self.fail(op, format!("no answer within {limit:?}"))),
        }
    }

    /// Revokes a lease without making the caller wait (its keys go with it).
    fn revoke_later(&self, lease: i64) {
        let mut c = self.client();
        self.inner.rt.spawn(async move {
            let _ = tokio::time::timeout(OP_TIMEOUT, c.lease_revoke(lease)).await;
        });
    }

    async fn grant(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        let mut c = self.client();
        Ok(self
            .call("grant lease", c.lease_grant(ttl_secs.max(1), None))
            .await?
            .id())
    }

    async fn list(
        &self,
        sub: &str,
        op: &'static str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = self.key(sub);
        let mut c = self.client();
        let resp = self
            .call(
                op,
                c.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let rel = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                (rel, kv.value().to_vec())
            })
            .collect())
    }

    /// Follows everything below `P/<sub>`: a `Reset` with the current content, then each
    /// change in order; after a break, again from a fresh `Reset`. Returns at shutdown.
    async fn follow(
        &self,
        sub: &str,
        shutdown: &mut watch::Receiver<bool>,
        mut on: impl FnMut(Change) + Send,
    ) {
        let mut retry = Duration::from_millis(100);
        loop {
            let mut synced = false;
            let outcome = tokio::select! {
                r = self.follow_once(sub, &mut on, &mut synced) => r,
                _ = shutdown.changed() => return,
            };
            if synced {
                retry = Duration::from_millis(100);
            }
            if let Err(e) = outcome {
                tracing::warn!(etcd = %self.inner.endpoints, prefix = %self.key(sub), error = %e, retry_in = ?retry, "etcd watch interrupted");
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = self.inner.back.notified() => {}
                _ = shutdown.changed() => return,
            }
            retry = (retry * 2).min(MAX_RETRY);
        }
    }

    async fn follow_once(
        &self,
        sub: &str,
        on: &mut (impl FnMut(Change) + Send),
        synced: &mut bool,
    ) -> Result<(), String> {
        let prefix = self.key(sub);
        let mut c = self.client();
        let resp = self
            .call(
                "list",
                c.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await
            .map_err(|e| e.to_string())?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let rel = |key: &[u8]| {
            let key = String::from_utf8_lossy(key);
            key.strip_prefix(&prefix).unwrap_or(&key).to_string()
        };
        // Watching from the listed revision + 1 misses nothing between list and watch.
        let mut stream = self
            .call(
                "watch",
                c.watch(
                    prefix.clone(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1),
                    ),
                ),
            )
            .await
            .map_err(|e| e.to_string())?;
        on(Change::Reset(
            resp.kvs()
                .iter()
                .map(|kv| (rel(kv.key()), kv.value().to_vec()))
                .collect(),
        ));
        *synced = true;
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Err("the watch stream ended".into()),
                Err(e) => {
                    self.fail("watch", e.to_string());
                    return Err(e.to_string());
                }
            };
            if msg.canceled() {
                return Err(format!(
                    "etcd cancelled the watch: {} (compacted at {})",
                    msg.cancel_reason(),
                    msg.compact_revision()
                ));
            }
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put => on(Change::Put(rel(kv.key()), kv.value().to_vec())),
                    EventType::Delete => on(Change::Delete(rel(kv.key()))),
                }
            }
        }
    }

    /// Turns changes from every replica into [`StoreEvent`]s until shutdown. Run it once per
    /// process; subscribers that join later still see a [`StoreEvent::Resync`] after each
    /// reconnect.
    pub async fn run_watch(&self, mut shutdown: watch::Receiver<bool>) {
        let events = self.inner.events.clone();
        let emit = move |e: StoreEvent| {
            // Nobody listening is fine.
            let _ = events.send(e);
        };
        self.follow("", &mut shutdown, |change| match change {
            Change::Reset(_) => emit(StoreEvent::Resync),
            Change::Put(key, value) => {
                if let Some(id) = key.strip_prefix("instances/") {
                    match serde_json::from_slice::<InstanceRecord>(&value) {
                        // A record filed under a key that is not its own is not believed.
                        Ok(r) if r.key().to_string() == id => {
                            emit(StoreEvent::InstancePut(Box::new(r)))
                        }
                        Ok(_) => tracing::warn!(instance = id, "instance record filed under another key in etcd; ignored"),
                        Err(e) => tracing::warn!(instance = id, error = %e, "unreadable instance record in etcd; ignored"),
                    }
                } else if let Some(name) = key.strip_prefix("certs/") {
                    emit(StoreEvent::CertPut(name.to_string()));
                }
            }
            Change::Delete(key) => {
                if let Some(id) = key.strip_prefix("instances/") {
                    if let Ok(key) = id.parse::<InstanceKey>() {
                        emit(StoreEvent::InstanceDeleted(key));
                    }
                }
            }
        })
        .await;
    }

    /// Keeps this replica listed under `P/replicas/<id>` with a lease of `ttl`, renewed
    /// while the process lives and re-created after an etcd outage. At shutdown the lease
    /// is revoked, so the DNS drops this replica at once rather than after `ttl`.
    pub async fn keep_replica(
        &self,
        record: &ReplicaRecord,
        ttl: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let lease = std::sync::Mutex::new(None::<i64>);
        let mut retry = Duration::from_millis(200);
        loop {
            let holding = Instant::now();
            let outcome = tokio::select! {
                r = self.hold_replica(record, ttl, &lease) => r,
                _ = shutdown.changed() => break,
            };
            // A failure after a good while of holding is a new one: retry soon.
            if holding.elapsed() >= ttl {
                retry = Duration::from_millis(200);
            }
            if let Err(e) = outcome {
                tracing::warn!(replica = %record.id, error = %e, retry_in = ?retry, "replica lease renewal interrupted; renewing again");
            }
            // etcd answering again (any call) ends the wait: DNS offers this replica again
            // as soon as it can.
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = self.inner.back.notified() => {}
                _ = shutdown.changed() => break,
            }
            retry = (retry * 2).min(MAX_RETRY);
        }
        let held = *lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = held {
            let mut c = self.client();
            let _ = tokio::time::timeout(Duration::from_secs(1), c.lease_revoke(id)).await;
        }
    }

    /// Lists this replica under a lease and renews it until that fails. A lease from before
    /// that is still alive is kept: the stream that renewed it may have died with one etcd
    /// member while the lease itself lives on in the cluster, and moving the record to a
    /// new lease would gain nothing.
    async fn hold_replica(
        &self,
        record: &ReplicaRecord,
        ttl: Duration,
        slot: &std::sync::Mutex<Option<i64>>,
    ) -> Result<(), StoreError> {
        let ttl_secs = ttl.as_secs().max(2) as i64;
        let ttl = Duration::from_secs(ttl_secs as u64);
        let held = *slot.lock().unwrap_or_else(|p| p.into_inner());
        let lease = match held {
            Some(lease) if self.lease_ttl(lease, ttl).await? > 0 => lease,
            _ => self.grant(ttl_secs).await?,
        };
        let value = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
            path: self.key("replicas/"),
            message: e.to_string(),
        })?;
        // Written again on a kept lease too: the same value, so watchers see no change,
        // and the record is there whatever happened to it.
        let mut c = self.client();
        self.call_within(
            ttl / 3,
            "put replica",
            c.put(
                self.key(&format!("replicas/{}", record.id)),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        if held != Some(lease) {
            slot.lock()
                .unwrap_or_else(|p| p.into_inner())
                .replace(lease);
            // Only now that the record is on the new lease may the old one go: revoked
            // first, it would take the record with it, and DNS would drop a live replica.
            if let Some(old) = held {
                self.revoke_later(old);
            }
            tracing::info!(replica = %record.id, addrs = ?record.addrs, ttl_secs, "replica listed in etcd");
        }
        self.keep_alive(lease, ttl, None).await
    }

    /// The seconds `lease` has left (0 or less: expired or unknown), asked within a third of
    /// `ttl` so that a renewal stuck on a dead member leaves time for the next.
    async fn lease_ttl(&self, lease: i64, ttl: Duration) -> Result<i64, StoreError> {
        let mut c = self.client();
        Ok(self
            .call_within(ttl / 3, "read lease", c.lease_time_to_live(lease, None))
            .await?
            .ttl())
    }

    /// Renews `lease` every third of `ttl` until it fails (or `until` passes). Each renewal
    /// must be answered within that third: a stream stuck on a member that went silent is
    /// given up while the lease still has two thirds to live, so the next attempt (through
    /// another member) can save it.
    async fn keep_alive(
        &self,
        lease: i64,
        ttl: Duration,
        until: Option<Instant>,
    ) -> Result<(), StoreError> {
        let every = (ttl / 3).max(Duration::from_millis(300));
        let mut c = self.client();
        let (mut keeper, mut stream) = self
            .call_within(every, "keep lease alive", c.lease_keep_alive(lease))
            .await?;
        loop {
            if until.is_some_and(|u| Instant::now() >= u) {
                return Ok(());
            }
            self.call_within(every, "keep lease alive", keeper.keep_alive())
                .await?;
            match self
                .call_within(every, "keep lease alive", stream.message())
                .await?
            {
                Some(r) if r.ttl() > 0 => {}
                Some(_) => return Err(self.fail("keep lease alive", "the lease expired".into())),
                None => {
                    return Err(self.fail("keep lease alive", "the keep-alive stream ended".into()))
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The live replicas now (each one's key lives only as long as its lease).
    pub async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        Ok(self
            .list("replicas/", "list replicas")
            .await?
            .into_iter()
            .filter_map(|(k, v)| self.decode(&format!("replicas/{k}"), &v))
            .collect())
    }

    /// Calls `on_change` with the live replicas each time the list changes, until
    /// shutdown. While etcd is away the last list stands (leases cannot be observed).
    pub async fn watch_replicas(
        &self,
        mut shutdown: watch::Receiver<bool>,
        mut on_change: impl FnMut(Vec<ReplicaRecord>) + Send,
    ) {
        let mut live: BTreeMap<String, ReplicaRecord> = BTreeMap::new();
        self.follow("replicas/", &mut shutdown, |change| {
            match change {
                Change::Reset(all) => {
                    live = all
                        .into_iter()
                        .filter_map(|(k, v)| Some((k, serde_json::from_slice(&v).ok()?)))
                        .collect();
                }
                Change::Put(k, v) => match serde_json::from_slice(&v) {
                    Ok(r) => {
                        live.insert(k, r);
                    }
                    Err(e) => tracing::warn!(replica = %k, error = %e, "unreadable replica record; ignored"),
                },
                Change::Delete(k) => {
                    live.remove(&k);
                }
            }
            on_change(live.values().cloned().collect());
        })
        .await;
    }

    /// One read-judge-write round of [`Store::put_instance`]; `Ok(false)`: lost a race.
    async fn try_claim(
        &self,
        record: &InstanceRecord,
        key: &str,
        owner_key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let mut c = self.client();
        let owner = self
            .call("read instance owner", c.get(owner_key, None))
            .await?;
        let owner = owner.kvs().first().map(|kv| {
            (
                String::from_utf8_lossy(kv.value()).to_string(),
                kv.mod_revision(),
            )
        });
        let mut when = vec![match &owner {
            Some((_, rev)) => Compare::mod_revision(owner_key, CompareOp::Equal, *rev),
            None => Compare::version(owner_key, CompareOp::Equal, 0),
        }];
        let mut ops = Vec::new();
        let mut old_leases = Vec::new();
        // The holder's record: under the owning app's key, or this app's own.
        let holder_app = owner
            .as_ref()
            .map(|(app, _)| app.clone())
            .unwrap_or_else(|| record.app_id.to_hex());
        let holder_key = self.key(&format!(
            "instances/{holder_app}/{}",
            record.instance_id.to_hex()
        ));
        let holder = self
            .call("read instance", c.get(holder_key.clone(), None))
            .await?;
        match holder.kvs().first() {
            Some(kv) => {
                let held: InstanceRecord =
                    serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
                        path: holder_key.clone(),
                        message: e.to_string(),
                    })?;
                // A record filed under a key not its own is no holder (nobody routes it).
                if held.key().to_string() == format!("{holder_app}/{}", record.instance_id) {
                    record.may_replace(&held, ratls::verifier::unix_now())?;
                }
                when.push(Compare::mod_revision(
                    holder_key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                ));
                if holder_key != key {
                    ops.push(TxnOp::delete(holder_key, None));
                }
                if kv.lease() != 0 && kv.lease() != lease {
                    old_leases.push(kv.lease());
                }
            }
            None => when.push(Compare::version(holder_key, CompareOp::Equal, 0)),
        }
        ops.push(TxnOp::put(
            owner_key,
            record.app_id.to_hex(),
            Some(PutOptions::new().with_lease(lease)),
        ));
        ops.push(TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        ));
        let resp = self
            .call("put instance", c.txn(Txn::new().when(when).and_then(ops)))
            .await?;
        if !resp.succeeded() {
            return Ok(false);
        }
        // The renewed registration moved to a new lease; the old one holds nothing now.
        for l in old_leases {
            self.revoke_later(l);
        }
        Ok(true)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Option<T> {
        match serde_json::from_slice(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(key = %self.key(key), error = %e, "unreadable record in etcd; skipped");
                None
            }
        }
    }
}

/// The runtime etcd clients run their connections on. tonic spawns a channel's
/// connection tasks on the runtime current at connect time; the gateway sets up on a
/// short-lived runtime and serves on pingora's, so clients get one of their own that
/// lives as long as the process (shared, so reconnecting never adds threads).
fn client_runtime() -> Result<tokio::runtime::Handle, std::io::Error> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt.handle().clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("teegate-etcd")
        .enable_all()
        .build()?;
    if let Err(lost) = RUNTIME.set(rt) {
        // Another thread set it first. Dropping a runtime inside an async context panics,
        // and this one has no tasks: let it go.
        std::mem::forget(lost);
    }
    RUNTIME
        .get()
        .map(|rt| rt.handle().clone())
        .ok_or_else(|| std::io::Error::other("the etcd client runtime is not set"))
}

fn tls_options(tls: Option<&EtcdTlsConfig>) -> Result<TlsOptions, String> {
    let read =
        |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let mut opts = TlsOptions::new();
    opts = match tls.and_then(|t| t.ca_file.as_deref()) {
        Some(ca) => opts.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => opts.with_native_roots(),
    };
    if let Some((cert, key)) =
        tls.and_then(|t| Some((t.cert_file.as_deref()?, t.key_file.as_deref()?)))
    {
        opts = opts.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(opts)
}

fn encode<T: Serialize>(key: &str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt {
        path: key.to_string(),
        message: e.to_string(),
    })
}

#[async_trait]
impl Store for EtcdStore {
    async fn put_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        let key = self.key(&format!("instances/{}", record.key()));
        let owner_key = self.key(&format!("instance-owners/{}", record.instance_id.to_hex()));
        let value = encode(&key, record)?;
        // The keys live exactly as long as the registration, on every replica, even if
        // no replica is left to delete them.
        let ttl = record
            .lease_expires
            .saturating_sub(ratls::verifier::unix_now())
            .max(1);
        let lease = self.grant(i64::try_from(ttl).unwrap_or(i64::MAX)).await?;
        // Read the holder, judge, then write only if nobody changed either key meanwhile;
        // a lost race is read and judged again.
        for _ in 0..MAX_CLAIM_ATTEMPTS {
            let result = self
                .try_claim(record, &key, &owner_key, value.clone(), lease)
                .await;
            match result {
                Ok(true) => return Ok(()),
                Ok(false) => continue,
                Err(e) => {
                    self.revoke_later(lease);
                    return Err(e);
                }
            }
        }
        self.revoke_later(lease);
        Err(StoreError::Unavailable(format!(
            "instance {} changed under {MAX_CLAIM_ATTEMPTS} attempts to register it; retry",
            record.instance_id
        )))
    }

    async fn delete_instance(&self, key: &InstanceKey) -> Result<(), StoreError> {
        let mut c = self.client();
        let owner_key = self.key(&format!("instance-owners/{}", key.instance.to_hex()));
        // The owner key goes too, but only while it still names this app.
        let txn = Txn::new()
            .when(vec![Compare::value(
                owner_key.clone(),
                CompareOp::Equal,
                key.app.to_hex(),
            )])
            .and_then(vec![TxnOp::delete(owner_key, None)]);
        self.call("delete instance owner", c.txn(txn)).await?;
        let resp = self
            .call(
                "delete instance",
                c.delete(
                    self.key(&format!("instances/{key}")),
                    Some(DeleteOptions::new().with_prev_key()),
                ),
            )
            .await?;
        for kv in resp.prev_kvs() {
            if kv.lease() != 0 {
                self.revoke_later(kv.lease());
            }
        }
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        Ok(self
            .list("instances/", "list instances")
            .await?
            .into_iter()
            .filter_map(|(k, v)| {
                self.decode::<InstanceRecord>(&format!("instances/{k}"), &v)
                    .filter(|r| r.key().to_string() == k)
            })
            .collect())
    }

    async fn put_cert(&self, record: &CertRecord) -> Result<(), StoreError> {
        let key = self.key(&format!("certs/{}", record.name));
        let value = encode(&key, record)?;
        let mut c = self.client();
        self.call("put certificate", c.put(key, value, None))
            .await
            .map(drop)
    }

    async fn certs(&self) -> Result<Vec<CertRecord>, StoreError> {
        Ok(self
            .list("certs/", "list certificates")
            .await?
            .into_iter()
            .filter_map(|(k, v)| self.decode(&format!("certs/{k}"), &v))
            .collect())
    }

    async fn get_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.client();
        let resp = self
            .call("get value", c.get(self.key(&format!("values/{key}")), None))
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    async fn put_value(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut c = self.client();
        self.call(
            "put value",
            c.put(self.key(&format!("values/{key}")), value, None),
        )
        .await
        .map(drop)
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    /// The key `P/locks/<name>` is created only if absent, under a lease of this process;
    /// the lease is kept alive while the guard lives (at most `ttl`), so a holder that dies
    /// frees the lock within `LOCK_LEASE_SECS` rather than after `ttl`.
    async fn lock(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<LockGuard>, StoreError> {
        let key = self.key(&format!("locks/{name}"));
        let lease_secs = LOCK_LEASE_SECS.min(ttl.as_secs().max(2) as i64);
        let lease = self.grant(lease_secs).await?;
        let deadline = Instant::now() + wait;
        let mut c = self.client();
        let mut waiting = false;
        loop {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    format!("{lease:x}"),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            match self.call("take lock", c.txn(txn)).await {
                Ok(r) if r.succeeded() => break,
                Ok(_) if !waiting && !wait.is_zero() => {
                    waiting = true;
                    tracing::info!(
                        lock = name,
                        ?wait,
                        "store lock held elsewhere; waiting for it"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    self.revoke_later(lease);
                    return Err(e);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                self.revoke_later(lease);
                return Ok(None);
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(200))).await;
        }
        let store = self.clone();
        let until = Instant::now() + ttl;
        let lock_name = name.to_string();
        let keeper = self.inner.rt.spawn(async move {
            if let Err(e) = store
                .keep_alive(lease, Duration::from_secs(lease_secs as u64), Some(until))
                .await
            {
                tracing::warn!(lock = %lock_name, error = %e, "a held store lock may have lapsed");
            }
        });
        let abort = keeper.abort_handle();
        let store = self.clone();
        Ok(Some(LockGuard::new(move || {
            abort.abort();
            store.revoke_later(lease);
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// A one-member etcd (Debian `etcd-server`) on loopback, killed on drop.
    struct Etcd {
        child: Child,
        endpoint: String,
        /// Its whole command line, to restart it on the same data and ports.
        args: Vec<String>,
        _dir: tempfile::TempDir,
    }

    impl Etcd {
        /// Kills it (as a crash would) and starts it again on its data.
        fn restart(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.child = spawn_member(&self.args);
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    fn start_etcd() -> Etcd {
        start_etcd_with("http", &[])
    }

    fn start_etcd_with(scheme: &str, args: &[String]) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let client = format!("{scheme}://127.0.0.1:{}", port());
        let peer = format!("http://127.0.0.1:{}", port());
        let mut all: Vec<String> = vec![
            "--data-dir".into(),
            dir.path().join("data").to_str().unwrap().into(),
        ];
        all.extend_from_slice(args);
        for (flag, value) in [
            ("--listen-client-urls", client.as_str()),
            ("--advertise-client-urls", &client),
            ("--listen-peer-urls", &peer),
            ("--initial-advertise-peer-urls", &peer),
            ("--initial-cluster", &format!("default={peer}")),
            ("--heartbeat-interval", "50"),
            ("--election-timeout", "500"),
        ] {
            all.push(flag.into());
            all.push(value.into());
        }
        Etcd {
            child: spawn_member(&all),
            endpoint: client,
            args: all,
            _dir: dir,
        }
    }

    /// Runs `etcd <args>` and waits (bounded) until it serves clients.
    fn spawn_member(args: &[String]) -> Child {
        let mut child = Command::new("etcd")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcd is installed (scripts/test installs etcd-server)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready to serve client requests") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("etcd ready within 20 s");
        child
    }

    async fn store(etcd: &Etcd) -> EtcdStore {
        let cfg = EtcdConfig {
            endpoints: vec![config::HttpUrl::parse(&etcd.endpoint).unwrap()],
            prefix: "/unit".into(),
            tls: None,
            username: None,
            password: None,
        };
        EtcdStore::connect(&cfg, None).await.unwrap()
    }

    /// Built from JSON so fields added to `InstanceRecord` with defaults need no change here.
    fn record(n: u8, lease_secs: u64) -> InstanceRecord {
        serde_json::from_value(serde_json::json!({
            "app_id": hex::encode([n; 20]),
            "instance_id": hex::encode([n; 20]),
            "compose_hash": hex::encode([n; 32]),
            "front_addr": "10.0.0.1:8443",
            "ports": [80],
            "fingerprints": [hex::encode([n; 32])],
            "certs": [],
            "tcb_status": "UpToDate",
            "simulated": true,
            "mrtd": hex::encode([n; 48]),
            "lease_expires": ratls::verifier::unix_now() + lease_secs,
        }))
        .unwrap()
    }

    async fn next_event(
        rx: &mut broadcast::Receiver<StoreEvent>,
        want: impl Fn(&StoreEvent) -> bool,
        within: Duration,
    ) -> StoreEvent {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Ok(e)) if want(&e) => return e,
                Ok(Ok(_)) => {}
                other => panic!("no expected store event within {within:?}: {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_id_is_never_taken_from_its_live_holder_at_any_replica() {
        use crate::store::Conflict;
        let etcd = start_etcd();
        let (one, two) = (store(&etcd).await, store(&etcd).await);
        let victim = record(1, 60);
        one.put_instance(&victim).await.unwrap();
        let mut other_app = record(2, 60);
        other_app.instance_id = victim.instance_id;
        let e = two.put_instance(&other_app).await.unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(Conflict::OtherApp { .. })),
            "{e}"
        );
        let mut other_key = victim.clone();
        other_key.fingerprints = vec![ratls::Fingerprint([9; 32])];
        let e = two.put_instance(&other_key).await.unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(Conflict::OtherLineage { .. })),
            "{e}"
        );
        assert_eq!(two.instances().await.unwrap(), vec![victim.clone()]);
        // A record written straight into etcd under the victim's key but for another app
        // is not believed.
        let mut c = one.client();
        c.put(
            one.key(&format!("instances/{}", victim.key())),
            serde_json::to_vec(&other_app).unwrap(),
            None,
        )
        .await
        .unwrap();
        assert!(two.instances().await.unwrap().is_empty());
        // Renewal by the holder restores it, and deleting frees the id for another app.
        one.put_instance(&victim).await.unwrap();
        one.delete_instance(&victim.key()).await.unwrap();
        two.put_instance(&other_app).await.unwrap();
        assert_eq!(one.instances().await.unwrap(), vec![other_app]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_at_one_replica_reach_the_others_and_leases_end_registrations() {
        let etcd = start_etcd();
        let (one, two) = (store(&etcd).await, store(&etcd).await);
        let mut events = two.subscribe();
        let (stop, stopped) = watch::channel(false);
        let watcher = tokio::spawn({
            let two = two.clone();
            async move { two.run_watch(stopped).await }
        });
        next_event(
            &mut events,
            |e| matches!(e, StoreEvent::Resync),
            Duration::from_secs(5),
        )
        .await;

        one.put_instance(&record(1, 2)).await.unwrap();
        let put = next_event(
            &mut events,
            |e| matches!(e, StoreEvent::InstancePut(_)),
            Duration::from_secs(2),
        )
        .await;
        assert!(
            matches!(put, StoreEvent::InstancePut(r) if r.instance_id == ratls::InstanceId([1; 20]))
        );
        assert_eq!(two.instances().await.unwrap().len(), 1);
        // A renewal moves the key to a fresh lease; the first lease must not take it away.
        one.put_instance(&record(3, 60)).await.unwrap();
        one.put_instance(&record(3, 60)).await.unwrap();

        // Nobody deletes instance 1: its etcd lease does, at every replica.
        let gone = next_event(
            &mut events,
            |e| matches!(e, StoreEvent::InstanceDeleted(_)),
            Duration::from_secs(6),
        )
        .await;
        assert!(
            matches!(gone, StoreEvent::InstanceDeleted(k) if k.instance == ratls::InstanceId([1; 20]))
        );
        let left: Vec<_> = one
            .instances()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.instance_id)
            .collect();
        assert_eq!(left, vec![ratls::InstanceId([3; 20])]);

        one.put_cert(&CertRecord {
            name: "*.x.test".into(),
            cert_chain_pem: "c".into(),
            key_pem: zeroize::Zeroizing::new("k".into()),
            not_after: 9,
        })
        .await
        .unwrap();
        next_event(
            &mut events,
            |e| matches!(e, StoreEvent::CertPut(n) if n == "*.x.test"),
            Duration::from_secs(2),
        )
        .await;
        one.put_value("acme-account", "{}").await.unwrap();
        assert_eq!(
            two.get_value("acme-account").await.unwrap().as_deref(),
            Some("{}")
        );
        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the watch stops at shutdown")
            .unwrap();
    }

    /// The lease `P/replicas/<id>` is held under, if the key exists.
    async fn replica_lease(store: &EtcdStore, id: &str) -> Option<i64> {
        let mut c = store.client();
        let resp = c
            .get(store.key(&format!("replicas/{id}")), None)
            .await
            .ok()?;
        resp.kvs().first().map(|kv| kv.lease())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_stays_listed_on_its_lease_when_the_connection_renewing_it_breaks() {
        let mut etcd = start_etcd();
        let (one, two) = (store(&etcd).await, store(&etcd).await);
        let record = ReplicaRecord {
            id: "r1".into(),
            addrs: vec!["192.0.2.1".parse().unwrap()],
            https_port: 443,
        };
        let (stop, stopped) = watch::channel(false);
        let keeper = tokio::spawn({
            let (one, record, stopped) = (one.clone(), record.clone(), stopped.clone());
            async move {
                one.keep_replica(&record, Duration::from_secs(2), stopped)
                    .await
            }
        });
        // What `teegate dns` sees: every list of live replicas, in order.
        let lists = Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
        let watcher = tokio::spawn({
            let (two, lists) = (two.clone(), lists.clone());
            async move {
                two.watch_replicas(stopped, move |l| {
                    lists
                        .lock()
                        .unwrap()
                        .push(l.into_iter().map(|r| r.id).collect())
                })
                .await
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let lease = loop {
            let listed = lists.lock().unwrap().last().cloned().unwrap_or_default();
            if let (true, Some(lease)) = (listed == ["r1"], replica_lease(&two, "r1").await) {
                break lease;
            }
            assert!(Instant::now() < deadline, "the replica is not listed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let listed_before = lists.lock().unwrap().len();

        // Every connection to etcd breaks; the lease lives on in etcd's data.
        etcd.restart();
        // Longer than the lease: had it not been renewed, it would have run out.
        let watch_until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < watch_until {
            if let Some(now) = replica_lease(&two, "r1").await {
                assert_eq!(now, lease, "the record moved to another lease");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut c = two.client();
        let left = c.lease_time_to_live(lease, None).await.unwrap().ttl();
        assert!(left > 0, "the lease was not renewed after the restart");
        assert_eq!(replica_lease(&two, "r1").await, Some(lease));
        let lists = lists.lock().unwrap().clone();
        assert!(
            lists.len() > listed_before,
            "the watcher saw etcd come back"
        );
        assert!(
            lists[listed_before - 1..].iter().all(|l| l == &["r1"]),
            "a watcher saw the replica leave: {lists:?}"
        );

        // At shutdown the lease is revoked: the replica leaves at once.
        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), keeper)
            .await
            .expect("the heartbeat stops")
            .unwrap();
        assert_eq!(replica_lease(&two, "r1").await, None);
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the watch stops")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_excludes_other_replicas_until_released_or_its_holder_stops_renewing() {
        let etcd = start_etcd();
        let (one, two) = (store(&etcd).await, store(&etcd).await);
        let held = one
            .lock("acme-order", Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
        assert!(held.is_some());
        assert!(two
            .lock(
                "acme-order",
                Duration::from_secs(60),
                Duration::from_millis(300)
            )
            .await
            .unwrap()
            .is_none());
        assert!(two
            .lock("other", Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap()
            .is_some());
        drop(held);
        let taken = two
            .lock("acme-order", Duration::from_secs(1), Duration::from_secs(2))
            .await
            .unwrap();
        assert!(taken.is_some(), "released on drop");
        // A holder that stops renewing (as a dead one does) never releases: its lease does.
        std::mem::forget(taken);
        let start = Instant::now();
        assert!(one
            .lock(
                "acme-order",
                Duration::from_secs(60),
                Duration::from_secs(8)
            )
            .await
            .unwrap()
            .is_some());
        assert!(
            start.elapsed() >= Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_cluster_is_a_clear_error_naming_etcd() {
        let dead = format!("http://127.0.0.1:{}", port());
        let cfg = EtcdConfig {
            endpoints: vec![config::HttpUrl::parse(&dead).unwrap()],
            prefix: "/unit".into(),
            tls: None,
            username: None,
            password: None,
        };
        let store = EtcdStore::connect(&cfg, None).await.unwrap();
        let start = Instant::now();
        let e = store.put_instance(&record(1, 30)).await.unwrap_err();
        assert!(start.elapsed() < OP_TIMEOUT + Duration::from_secs(1));
        let text = e.to_string();
        assert!(
            text.contains("store unavailable") && text.contains("etcd") && text.contains(&dead),
            "{text}"
        );
    }

    /// Writes a CA and certificates it signs (PEM files in `dir`); returns the CA's path.
    fn pki(
        dir: &std::path::Path,
        tag: &str,
    ) -> (std::path::PathBuf, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{tag} CA"));
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{tag}-ca.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        (path, rcgen::Issuer::new(params, key))
    }

    fn leaf(
        dir: &std::path::Path,
        name: &str,
        sans: &[&str],
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_with_client_certificates_and_password_auth_and_no_way_around_them() {
        let pki_dir = tempfile::tempdir().unwrap();
        let d = pki_dir.path();
        let (ca, issuer) = pki(d, "etcd");
        let (other_ca, _) = pki(d, "other");
        let (server_cert, server_key) = leaf(d, "server", &["127.0.0.1", "localhost"], &issuer);
        let (client_cert, client_key) = leaf(d, "client", &[], &issuer);
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let etcd = start_etcd_with(
            "https",
            &[
                "--cert-file".into(),
                path(&server_cert),
                "--key-file".into(),
                path(&server_key),
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                path(&ca),
            ],
        );
        for args in [
            &["user", "add", "root:etcd-root-pw"][..],
            &["auth", "enable"][..],
        ] {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &etcd.endpoint, "--cacert", &path(&ca)])
                .args(["--cert", &path(&client_cert), "--key", &path(&client_key)])
                .args(args)
                .output()
                .expect("etcdctl is installed (scripts/test installs etcd-client)");
            assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
        }
        let cfg = |ca: &std::path::Path, client: bool, password: &str| EtcdConfig {
            endpoints: vec![config::HttpUrl::parse(&etcd.endpoint).unwrap()],
            prefix: "/unit".into(),
            tls: Some(EtcdTlsConfig {
                ca_file: Some(ca.to_path_buf()),
                cert_file: client.then(|| client_cert.clone()),
                key_file: client.then(|| client_key.clone()),
            }),
            username: Some("root".into()),
            password: Some(config::Secret::new(password)),
        };
        let good = EtcdStore::connect(&cfg(&ca, true, "etcd-root-pw"), None)
            .await
            .unwrap();
        good.put_value("k", "v").await.unwrap();
        assert_eq!(good.get_value("k").await.unwrap().as_deref(), Some("v"));

        // Each missing or wrong piece is an error, never a weaker connection.
        for (what, bad) in [
            ("an unknown server CA", cfg(&other_ca, true, "etcd-root-pw")),
            ("no client certificate", cfg(&ca, false, "etcd-root-pw")),
            ("a wrong password", cfg(&ca, true, "wrong")),
        ] {
            let result = match EtcdStore::connect(&bad, None).await {
                Err(e) => Err(e),
                Ok(store) => store.get_value("k").await.map(drop),
            };
            let e = result.expect_err(what);
            assert!(e.to_string().contains("etcd"), "{what}: {e}");
        }
        let mut plain = cfg(&ca, true, "etcd-root-pw");
        plain.endpoints =
            vec![config::HttpUrl::parse(&etcd.endpoint.replace("https", "http")).unwrap()];
        let e = EtcdStore::connect(&plain, None)
            .await
            .err()
            .expect("TLS config with http://");
        assert!(matches!(e, StoreError::Config(_)), "{e}");
    }
}
