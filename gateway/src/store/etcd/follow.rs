//! Following the store's keys: one watch per prefix that lists afresh after every break,
//! and the process-wide watch that turns every replica's changes into [`StoreEvent`]s.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::watch;

use super::{Change, EtcdStore, InstanceKey, InstanceRecord, StoreEvent, MAX_RETRY};

impl EtcdStore {
    /// Follows everything below `P/<sub>`: a `Reset` with the current content, then each
    /// change in order; after a break, again from a fresh `Reset`. Returns at shutdown.
    pub(super) async fn follow(
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
}
