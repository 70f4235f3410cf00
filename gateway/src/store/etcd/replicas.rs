//! The replica list under `P/replicas/`: each replica keeps its own record alive on a
//! lease, and the DNS follows the list as it changes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use tokio::sync::watch;

use super::{Change, EtcdStore, ReplicaRecord, StoreError, MAX_RETRY};

impl EtcdStore {
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
}
