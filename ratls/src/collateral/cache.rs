//! An on-disk and in-memory cache in front of another collateral source (usually a PCCS),
//! so collateral is fetched once per platform per TCB-info period, and survives restarts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{Collateral, CollateralError, CollateralSource};
use crate::quote::Quote;

/// Caches collateral keyed by FMSPC and PCK CA until it stops being current.
pub struct CachedSource {
    dir: PathBuf,
    inner: Arc<dyn CollateralSource>,
    memory: Mutex<HashMap<String, Collateral>>,
}

impl CachedSource {
    pub fn new(dir: PathBuf, inner: Arc<dyn CollateralSource>) -> Result<Self, CollateralError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| CollateralError::Io(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            dir,
            inner,
            memory: Mutex::new(HashMap::new()),
        })
    }

    fn key(quote: &Quote) -> Result<String, CollateralError> {
        let fmspc = quote
            .fmspc()
            .map_err(|e| CollateralError::Malformed(e.to_string()))?;
        let ca = quote
            .pck_ca()
            .map_err(|e| CollateralError::Malformed(e.to_string()))?;
        Ok(format!("{}-{ca}", hex::encode_upper(fmspc)))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn read_disk(&self, key: &str) -> Option<Collateral> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        match Collateral::from_json(&bytes) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(key, error = %e, "ignoring unreadable cached collateral");
                None
            }
        }
    }

    fn store(&self, key: &str, c: &Collateral) -> Result<(), CollateralError> {
        let path = self.path(key);
        let tmp = self.dir.join(format!(".{key}.json.tmp"));
        let io = |e: std::io::Error| CollateralError::Io(format!("{}: {e}", path.display()));
        std::fs::write(&tmp, c.to_json()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, Collateral>> {
        // A panic while holding the lock leaves only a cache map behind; keep using it.
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CollateralSource for CachedSource {
    fn collateral_for(&self, quote: &Quote, now: u64) -> Result<Collateral, CollateralError> {
        let key = Self::key(quote)?;
        if let Some(c) = self.memory().get(&key).filter(|c| c.is_current(now)) {
            return Ok(c.clone());
        }
        if let Some(c) = self.read_disk(&key).filter(|c| c.is_current(now)) {
            self.memory().insert(key, c.clone());
            return Ok(c);
        }
        let fresh = self.inner.collateral_for(quote, now)?;
        if let Err(e) = self.store(&key, &fresh) {
            tracing::warn!(error = %e, "could not write collateral cache");
        }
        self.memory().insert(key, fresh.clone());
        Ok(fresh)
    }

    fn describe(&self) -> String {
        format!(
            "cache {} over {}",
            self.dir.display(),
            self.inner.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::vector;
    use super::super::FileSource;
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(FileSource, AtomicUsize);

    impl CollateralSource for Counting {
        fn collateral_for(&self, q: &Quote, now: u64) -> Result<Collateral, CollateralError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.collateral_for(q, now)
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    #[test]
    fn fetches_once_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = Collateral::from_json(&vector("dcap-qvl_tdx_quote_collateral.json")).unwrap();
        let inner = Arc::new(Counting(
            FileSource::from_collateral(c.clone()),
            AtomicUsize::new(0),
        ));
        let q = Quote::parse(&vector("dcap-qvl_tdx_quote")).unwrap();
        let now = 1_750_377_600;
        let cache = CachedSource::new(dir.path().to_path_buf(), inner.clone()).unwrap();
        assert_eq!(cache.collateral_for(&q, now).unwrap(), c);
        assert_eq!(cache.collateral_for(&q, now).unwrap(), c);
        assert_eq!(inner.1.load(Ordering::SeqCst), 1);

        let reopened = CachedSource::new(dir.path().to_path_buf(), inner.clone()).unwrap();
        assert_eq!(reopened.collateral_for(&q, now).unwrap(), c);
        assert_eq!(inner.1.load(Ordering::SeqCst), 1, "disk cache answered");

        // Past nextUpdate the cache goes back to the source.
        let later = 1_755_648_000;
        let _ = reopened.collateral_for(&q, later);
        assert_eq!(inner.1.load(Ordering::SeqCst), 2);
    }
}
