//! The sealing layer in front of either store backend: certificate keys and named values
//! are sealed ([`crate::seal`]) on the way in and opened on the way out, so neither
//! `state.json` nor etcd ever holds a private key in plaintext.
//!
//! A record this gateway cannot open (sealed under another gateway app's key, or altered)
//! is never overwritten and never served: it is left out of what the layer returns, logged
//! once, counted in `teegate_sealed_records_unreadable`, and listed by the admin API
//! (`GET /v1/sealing`). A write over such a record is refused with [`StoreError::Sealed`].
//! Plaintext records left by an earlier version are re-sealed when first read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::broadcast;
use zeroize::Zeroizing;

use super::{CertRecord, InstanceKey, InstanceRecord, LockGuard, Store, StoreError, StoreEvent};
use crate::seal::{self, Kind, OpenError, SealKey};

/// One stored record this gateway cannot open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// `cert/<name>` or `value/<key>`.
    pub record: String,
    /// Key id that sealed it, when it says.
    pub sealed_by: Option<String>,
    pub reason: String,
}

/// What the sealing layer has seen: its key and the records it could not open.
#[derive(Debug, Default)]
pub struct SealReport {
    unreadable: Mutex<BTreeMap<String, Unreadable>>,
    gauge: Option<prometheus::IntGauge>,
}

impl SealReport {
    pub fn new(gauge: Option<prometheus::IntGauge>) -> Self {
        Self {
            unreadable: Mutex::new(BTreeMap::new()),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Unreadable>> {
        self.unreadable.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, record: String, sealed: &str, e: &OpenError) {
        let entry = Unreadable {
            record: record.clone(),
            sealed_by: seal::sealed_by(sealed).map(|k| k.to_string()),
            reason: e.to_string(),
        };
        let mut map = self.lock();
        if map.get(&record) != Some(&entry) {
            tracing::error!(record = %record, reason = %entry.reason, "stored record cannot be opened by this gateway: left untouched and not served");
        }
        map.insert(record, entry);
        self.update_gauge(&map);
    }

    fn clear(&self, record: &str) {
        let mut map = self.lock();
        if map.remove(record).is_some() {
            self.update_gauge(&map);
        }
    }

    fn update_gauge(&self, map: &BTreeMap<String, Unreadable>) {
        if let Some(g) = &self.gauge {
            g.set(map.len() as i64);
        }
    }

    /// The records that did not open, by record name.
    pub fn unreadable(&self) -> Vec<Unreadable> {
        self.lock().values().cloned().collect()
    }
}

/// A [`Store`] whose private keys are sealed under `key`.
pub struct SealedStore {
    inner: Arc<dyn Store>,
    key: Arc<SealKey>,
    report: Arc<SealReport>,
}

fn cert_record(name: &str) -> String {
    format!("cert/{name}")
}

fn value_record(key: &str) -> String {
    format!("value/{key}")
}

impl SealedStore {
    pub fn new(inner: Arc<dyn Store>, key: Arc<SealKey>, report: Arc<SealReport>) -> Self {
        Self { inner, key, report }
    }

    pub fn key(&self) -> &SealKey {
        &self.key
    }

    pub fn report(&self) -> &Arc<SealReport> {
        &self.report
    }

    fn sealed_cert(&self, record: &CertRecord) -> CertRecord {
        CertRecord {
            name: record.name.clone(),
            cert_chain_pem: record.cert_chain_pem.clone(),
            key_pem: Zeroizing::new(self.key.seal(
                Kind::CertKey,
                &record.name,
                record.key_pem.as_bytes(),
            )),
            not_after: record.not_after,
        }
    }

    /// Opens one stored certificate record: `Ok(Some)` opened, `Ok(None)` unreadable
    /// (reported), plaintext ones re-sealed in the store first.
    async fn open_cert(&self, stored: CertRecord) -> Result<Option<CertRecord>, StoreError> {
        let record = cert_record(&stored.name);
        if !seal::is_sealed(&stored.key_pem) {
            tracing::warn!(record = %record, "plaintext private key found in the store (written by an earlier version): sealing it now");
            self.inner.put_cert(&self.sealed_cert(&stored)).await?;
            self.report.clear(&record);
            return Ok(Some(stored));
        }
        match self
            .key
            .open_text(Kind::CertKey, &stored.name, &stored.key_pem)
        {
            Ok(key_pem) => {
                self.report.clear(&record);
                Ok(Some(CertRecord { key_pem, ..stored }))
            }
            Err(e) => {
                self.report.set(record, &stored.key_pem, &e);
                Ok(None)
            }
        }
    }

    /// Refuses to overwrite a record this gateway cannot open.
    fn refuse_if_unreadable(
        &self,
        record: String,
        stored: &str,
        kind: Kind,
        name: &str,
    ) -> Result<(), StoreError> {
        if !seal::is_sealed(stored) {
            return Ok(());
        }
        match self.key.open(kind, name, stored) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.report.set(record.clone(), stored, &e);
                Err(StoreError::Sealed {
                    record,
                    message: format!("{e}; not overwritten"),
                })
            }
        }
    }
}

#[async_trait]
impl Store for SealedStore {
    async fn put_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        self.inner.put_instance(record).await
    }

    async fn delete_instance(&self, key: &InstanceKey) -> Result<(), StoreError> {
        self.inner.delete_instance(key).await
    }

    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.inner.instances().await
    }

    async fn put_cert(&self, record: &CertRecord) -> Result<(), StoreError> {
        if let Some(existing) = self
            .inner
            .certs()
            .await?
            .into_iter()
            .find(|c| c.name == record.name)
        {
            self.refuse_if_unreadable(
                cert_record(&record.name),
                &existing.key_pem,
                Kind::CertKey,
                &record.name,
            )?;
        }
        self.inner.put_cert(&self.sealed_cert(record)).await
    }

    async fn certs(&self) -> Result<Vec<CertRecord>, StoreError> {
        let mut out = Vec::new();
        for stored in self.inner.certs().await? {
            if let Some(opened) = self.open_cert(stored).await? {
                out.push(opened);
            }
        }
        Ok(out)
    }

    async fn get_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        let Some(stored) = self.inner.get_value(key).await? else {
            return Ok(None);
        };
        let stored = Zeroizing::new(stored);
        let record = value_record(key);
        if !seal::is_sealed(&stored) {
            tracing::warn!(record = %record, "plaintext secret value found in the store (written by an earlier version): sealing it now");
            self.inner
                .put_value(key, &self.key.seal(Kind::Value, key, stored.as_bytes()))
                .await?;
            self.report.clear(&record);
            return Ok(Some(stored.to_string()));
        }
        match self.key.open_text(Kind::Value, key, &stored) {
            Ok(v) => {
                self.report.clear(&record);
                Ok(Some(v.to_string()))
            }
            Err(e) => {
                self.report.set(record.clone(), &stored, &e);
                Err(StoreError::Sealed {
                    record,
                    message: e.to_string(),
                })
            }
        }
    }

    async fn put_value(&self, key: &str, value: &str) -> Result<(), StoreError> {
        if let Some(existing) = self.inner.get_value(key).await? {
            let existing = Zeroizing::new(existing);
            self.refuse_if_unreadable(value_record(key), &existing, Kind::Value, key)?;
        }
        self.inner
            .put_value(key, &self.key.seal(Kind::Value, key, value.as_bytes()))
            .await
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.subscribe()
    }

    async fn lock(
        &self,
        name: &str,
        ttl: std::time::Duration,
        wait: std::time::Duration,
    ) -> Result<Option<LockGuard>, StoreError> {
        self.inner.lock(name, ttl, wait).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::KeySource;
    use crate::store::EmbeddedStore;

    fn key(b: u8) -> Arc<SealKey> {
        Arc::new(SealKey::new(
            Zeroizing::new([b; 32]),
            KeySource::UnattestedKeyFile {
                path: "/dev/null".into(),
            },
        ))
    }

    fn record(name: &str, key_pem: &str) -> CertRecord {
        CertRecord {
            name: name.into(),
            cert_chain_pem: "chain".into(),
            key_pem: Zeroizing::new(key_pem.into()),
            not_after: 1,
        }
    }

    fn sealed(backend: &Arc<dyn Store>, b: u8) -> SealedStore {
        SealedStore::new(backend.clone(), key(b), Arc::new(SealReport::new(None)))
    }

    #[tokio::test]
    async fn the_backend_holds_only_sealed_keys_and_old_plaintext_is_resealed() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        // As an earlier version left it.
        backend
            .put_cert(&record("old.test", "-----BEGIN PRIVATE KEY-----old"))
            .await
            .unwrap();
        backend.put_value("acme", "{\"old\":1}").await.unwrap();
        let store = sealed(&backend, 1);
        store
            .put_cert(&record("new.test", "-----BEGIN PRIVATE KEY-----new"))
            .await
            .unwrap();
        let opened = store.certs().await.unwrap();
        assert_eq!(opened.len(), 2);
        assert!(opened.iter().all(|c| c.key_pem.starts_with("-----BEGIN")));
        assert_eq!(
            store.get_value("acme").await.unwrap().unwrap(),
            "{\"old\":1}"
        );
        for c in backend.certs().await.unwrap() {
            assert!(seal::is_sealed(&c.key_pem), "{} left in plaintext", c.name);
        }
        let raw = backend.get_value("acme").await.unwrap().unwrap();
        assert!(seal::is_sealed(&raw), "{raw}");
        let file = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(
            !file.contains("PRIVATE KEY") && !file.contains("old\\\":1"),
            "{file}"
        );
    }

    #[tokio::test]
    async fn another_keys_records_are_reported_skipped_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let a = sealed(&backend, 1);
        a.put_cert(&record("*.apps.test", "-----BEGIN PRIVATE KEY-----a"))
            .await
            .unwrap();
        a.put_value("acme", "{\"a\":1}").await.unwrap();
        let before = backend.certs().await.unwrap();

        let b = sealed(&backend, 2);
        assert!(
            b.certs().await.unwrap().is_empty(),
            "B serves nothing it cannot open"
        );
        let unreadable = b.report().unreadable();
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].record, "cert/*.apps.test");
        assert_eq!(unreadable[0].sealed_by, Some(a.key().id().to_string()));
        let e = b
            .put_cert(&record("*.apps.test", "-----BEGIN PRIVATE KEY-----b"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not overwritten"), "{e}");
        assert!(matches!(
            b.get_value("acme").await,
            Err(StoreError::Sealed { .. })
        ));
        assert!(b.put_value("acme", "{\"b\":1}").await.is_err());
        assert_eq!(
            backend.certs().await.unwrap(),
            before,
            "A's record is untouched"
        );
        assert_eq!(a.get_value("acme").await.unwrap().unwrap(), "{\"a\":1}");
        assert_eq!(b.report().unreadable().len(), 2);
    }
}
