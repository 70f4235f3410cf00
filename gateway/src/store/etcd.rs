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
//!
//! Parts: this file connects, calls etcd within deadlines and implements [`Store`];
//! [`follow`] watches prefixes and turns changes into events; [`replicas`] keeps this
//! replica listed and follows the list for the DNS.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use config::{EtcdConfig, EtcdTlsConfig};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{CertRecord, InstanceKey, InstanceRecord, LockGuard, Store, StoreError, StoreEvent};
use crate::metrics::Metrics;

mod follow;
mod replicas;

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
mod tests;
