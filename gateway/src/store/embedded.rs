//! The embedded store: one JSON file in the data directory, rewritten atomically
//! (write to a temporary file, fsync, rename) on every change, so a crash leaves either
//! the old or the new state, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Mutex};

use super::{CertRecord, InstanceKey, InstanceRecord, LockGuard, Store, StoreError, StoreEvent};

const FILE_NAME: &str = "state.json";

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// By `<app id>/<instance id>` (files written before instances were scoped by app
    /// used the instance id alone; they are re-keyed on open).
    instances: BTreeMap<String, InstanceRecord>,
    certs: BTreeMap<String, CertRecord>,
    #[serde(default)]
    values: BTreeMap<String, String>,
}

pub struct EmbeddedStore {
    path: PathBuf,
    state: Mutex<State>,
    events: broadcast::Sender<StoreEvent>,
    /// Named locks held in this process, with their expiry (one process, one gateway).
    locks: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| StoreError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(FILE_NAME);
        let mut state: State = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(e)),
        };
        state.instances = std::mem::take(&mut state.instances)
            .into_values()
            .map(|r| (r.key().to_string(), r))
            .collect();
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            path,
            state: Mutex::new(state),
            events,
            locks: Default::default(),
        })
    }

    fn persist(&self, state: &State) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError::Io {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Corrupt {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        // The file holds private keys of served certificates: owner-only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }

    fn emit(&self, e: StoreEvent) {
        // Nobody listening is fine.
        let _ = self.events.send(e);
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn put_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        let now = ratls::verifier::unix_now();
        // Every record of this instance id, whichever app it is filed under.
        let holders: Vec<String> = state
            .instances
            .iter()
            .filter(|(_, r)| r.instance_id == record.instance_id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &holders {
            if let Some(holder) = state.instances.get(k) {
                record.may_replace(holder, now)?;
            }
        }
        let mut lapsed = Vec::new();
        for k in holders {
            if let Some(old) = state.instances.remove(&k) {
                if old.app_id != record.app_id {
                    lapsed.push(old.key());
                }
            }
        }
        state
            .instances
            .insert(record.key().to_string(), record.clone());
        self.persist(&state)?;
        for key in lapsed {
            self.emit(StoreEvent::InstanceDeleted(key));
        }
        self.emit(StoreEvent::InstancePut(Box::new(record.clone())));
        Ok(())
    }

    async fn delete_instance(&self, key: &InstanceKey) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if state.instances.remove(&key.to_string()).is_some() {
            self.persist(&state)?;
            self.emit(StoreEvent::InstanceDeleted(*key));
        }
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        Ok(self
            .state
            .lock()
            .await
            .instances
            .values()
            .cloned()
            .collect())
    }

    async fn put_cert(&self, record: &CertRecord) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        state.certs.insert(record.name.clone(), record.clone());
        self.persist(&state)?;
        self.emit(StoreEvent::CertPut(record.name.clone()));
        Ok(())
    }

    async fn certs(&self) -> Result<Vec<CertRecord>, StoreError> {
        Ok(self.state.lock().await.certs.values().cloned().collect())
    }

    async fn get_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.state.lock().await.values.get(key).cloned())
    }

    async fn put_value(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        state.values.insert(key.to_string(), value.to_string());
        self.persist(&state)
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    async fn lock(
        &self,
        name: &str,
        ttl: std::time::Duration,
        wait: std::time::Duration,
    ) -> Result<Option<LockGuard>, StoreError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            {
                let mut held = self.locks.lock().unwrap_or_else(|p| p.into_inner());
                let now = std::time::Instant::now();
                if held.get(name).is_none_or(|expires| *expires <= now) {
                    held.insert(name.to_string(), now + ttl);
                    let locks = self.locks.clone();
                    let key = name.to_string();
                    return Ok(Some(LockGuard::new(move || {
                        locks.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                    })));
                }
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Conflict;

    fn record(n: u8) -> InstanceRecord {
        InstanceRecord {
            app_id: ratls::AppId([n; 20]),
            instance_id: ratls::InstanceId([n; 20]),
            compose_hash: ratls::ComposeHash([n; 32]),
            front_addr: "10.0.0.1:8443".parse().unwrap(),
            ports: vec![80],
            fingerprints: vec![ratls::Fingerprint([n; 32])],
            certs: vec![],
            tcb_status: "UpToDate".into(),
            simulated: true,
            mrtd: ratls::Measurement([n; 48]),
            lease_expires: 1,
            chain: vec![],
            kms_root_ca: None,
            app_compose: None,
        }
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut events = store.subscribe();
        store.put_instance(&record(1)).await.unwrap();
        store.put_instance(&record(2)).await.unwrap();
        store.delete_instance(&record(2).key()).await.unwrap();
        store
            .put_cert(&CertRecord {
                name: "*.x.test".into(),
                cert_chain_pem: "c".into(),
                key_pem: zeroize::Zeroizing::new("k".into()),
                not_after: 9,
            })
            .await
            .unwrap();
        assert!(matches!(
            events.recv().await.unwrap(),
            StoreEvent::InstancePut(_)
        ));
        drop(store);
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(reopened.instances().await.unwrap(), vec![record(1)]);
        assert_eq!(reopened.certs().await.unwrap()[0].name, "*.x.test");
    }

    #[tokio::test]
    async fn an_instance_id_is_never_taken_from_its_live_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let now = ratls::verifier::unix_now();
        let mut victim = record(1);
        victim.lease_expires = now + 60;
        store.put_instance(&victim).await.unwrap();
        // Another app names the victim's instance id.
        let mut other_app = record(2);
        other_app.instance_id = victim.instance_id;
        other_app.lease_expires = now + 60;
        let e = store.put_instance(&other_app).await.unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(Conflict::OtherApp { .. })),
            "{e}"
        );
        // The same app with a certificate of another lineage.
        let mut other_key = victim.clone();
        other_key.fingerprints = vec![ratls::Fingerprint([9; 32])];
        let e = store.put_instance(&other_key).await.unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(Conflict::OtherLineage { .. })),
            "{e}"
        );
        assert_eq!(store.instances().await.unwrap(), vec![victim.clone()]);
        // A renewal with the same certificate, and a rotation that keeps the current one.
        let mut rotated = victim.clone();
        rotated.fingerprints = vec![ratls::Fingerprint([1; 32]), ratls::Fingerprint([7; 32])];
        store.put_instance(&rotated).await.unwrap();
        // Once the holder's lease lapses, the id is free again.
        let mut lapsed = rotated.clone();
        lapsed.lease_expires = now - 1;
        store.put_instance(&lapsed).await.unwrap();
        store.put_instance(&other_app).await.unwrap();
        assert_eq!(store.instances().await.unwrap(), vec![other_app.clone()]);
        drop(store);
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(reopened.instances().await.unwrap(), vec![other_app]);
    }

    #[tokio::test]
    async fn locks_exclude_until_released_or_expired() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let held = store
            .lock("acme", Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
        assert!(held.is_some());
        assert!(store
            .lock("acme", Duration::from_secs(60), Duration::from_millis(50))
            .await
            .unwrap()
            .is_none());
        assert!(store
            .lock("other", Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap()
            .is_some());
        drop(held);
        let short = store
            .lock("acme", Duration::from_millis(30), Duration::ZERO)
            .await
            .unwrap();
        assert!(short.is_some());
        std::mem::forget(short); // a holder that dies without releasing
        assert!(
            store
                .lock("acme", Duration::from_secs(1), Duration::from_millis(500))
                .await
                .unwrap()
                .is_some(),
            "expired lock is taken over"
        );
    }

    #[tokio::test]
    async fn corrupt_state_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let err = EmbeddedStore::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
