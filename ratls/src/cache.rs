//! A bounded cache of verified certificates keyed by SHA-256 fingerprint, so a
//! certificate's quote is verified once, not on every connection. Entries expire when the
//! certificate or its collateral does.

use std::sync::Arc;

use dashmap::DashMap;

use crate::error::VerifyError;
use crate::types::Fingerprint;
use crate::verifier::{AttestationVerifier, VerifiedAttestation};

pub const DEFAULT_CACHE_ENTRIES: usize = 4096;

/// Verified attestations by certificate fingerprint.
pub struct VerifiedCache {
    entries: DashMap<Fingerprint, Arc<VerifiedAttestation>>,
    max_entries: usize,
}

impl VerifiedCache {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: DashMap::new(),
            max_entries: max_entries.max(1),
        }
    }

    /// A still-valid entry for this fingerprint, if any.
    pub fn get(&self, fp: &Fingerprint, now: u64) -> Option<Arc<VerifiedAttestation>> {
        let hit = self.entries.get(fp).map(|e| e.value().clone())?;
        if hit.valid_until() > now {
            return Some(hit);
        }
        self.entries.remove(fp);
        None
    }

    pub fn insert(&self, v: Arc<VerifiedAttestation>, now: u64) {
        if self.entries.len() >= self.max_entries {
            self.entries.retain(|_, e| e.valid_until() > now);
        }
        if self.entries.len() >= self.max_entries {
            // Still full of live entries: drop the ones closest to expiry.
            let mut by_expiry: Vec<(u64, Fingerprint)> = self
                .entries
                .iter()
                .map(|e| (e.valid_until(), *e.key()))
                .collect();
            by_expiry.sort_unstable();
            for (_, fp) in by_expiry.iter().take(self.max_entries / 4 + 1) {
                self.entries.remove(fp);
            }
        }
        self.entries.insert(*v.fingerprint(), v);
    }

    pub fn remove(&self, fp: &Fingerprint) {
        self.entries.remove(fp);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An [`AttestationVerifier`] with a [`VerifiedCache`] in front.
pub struct CachingVerifier {
    verifier: AttestationVerifier,
    cache: VerifiedCache,
}

impl CachingVerifier {
    pub fn new(verifier: AttestationVerifier, max_entries: usize) -> Self {
        Self {
            verifier,
            cache: VerifiedCache::new(max_entries),
        }
    }

    pub fn verifier(&self) -> &AttestationVerifier {
        &self.verifier
    }

    pub fn cache(&self) -> &VerifiedCache {
        &self.cache
    }

    /// The cached verdict for a fingerprint, without re-verifying.
    pub fn lookup(&self, fp: &Fingerprint) -> Option<Arc<VerifiedAttestation>> {
        self.cache.get(fp, self.verifier.now())
    }

    /// Verifies a DER certificate presented alone, answering from the cache when it can.
    pub fn verify(&self, der: &[u8]) -> Result<Arc<VerifiedAttestation>, VerifyError> {
        self.verify_chain(der, &[])
    }

    /// Verifies a certificate presented with its issuers (app CA first). A hit needs no
    /// issuers: what authorised the app id (the app CA's signature on this very
    /// certificate) is part of the cached certificate's bytes.
    pub fn verify_chain(
        &self,
        der: &[u8],
        issuers: &[&[u8]],
    ) -> Result<Arc<VerifiedAttestation>, VerifyError> {
        let now = self.verifier.now();
        let fp = Fingerprint::of(der);
        if let Some(hit) = self.cache.get(&fp, now) {
            return Ok(hit);
        }
        let verified = Arc::new(
            self.verifier
                .inspect_chain_at(der, issuers, now)
                .into_verdict()?,
        );
        self.cache.insert(verified.clone(), now);
        Ok(verified)
    }
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_ENTRIES)
    }
}
