//! The gateway's own evidence, published at `https://<base>/.well-known/teegate/gateway`
//! ([`ratls::gateway_evidence`] defines the format): a quote from the guest API of the
//! CVM the gateway runs in, whose report data binds a claims buffer listing SHA-256 of the
//! SubjectPublicKeyInfo of every certificate the gateway serves and of its ACME account
//! key. Each replica quotes its own.
//!
//! ```text
//!  CertResolver (install) ─watch─┐
//!  HeldKeys::set_acme_account ───┴─▶ Publisher::run ─(≥ MIN_REQUOTE apart, coalesced)─▶ quote()
//!        guest API POST /quote (report data = SHA-256(claims buffer)) ─▶ Published (Arc swap)
//!  TrustPages ─▶ Publisher::current() ─▶ JSON document, the pages' gateway section
//! ```
//!
//! Re-quoting runs in the background: handshakes and pages always use the last published
//! evidence and never wait for a quote. A failed re-quote keeps the last good evidence
//! (it still binds every key that was not changed) and is logged and shown on the page.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ratls::gateway_evidence::{
    BoundKey, GatewayClaims, GatewayDocument, GatewayEvidence, KeyRole, MAX_BOUND_KEYS,
};
use ratls::{AttestationVerifier, Inspection, VerifiedGateway};

use crate::certs::CertResolver;
use crate::guest::{GuestApi, GuestInfo};

/// Quotes are at least this far apart: changes that arrive meanwhile are coalesced into
/// the next one, so a burst of installs (a restart, a batch of custom domains) costs one.
pub const MIN_REQUOTE: Duration = Duration::from_secs(2);
/// Evidence is re-quoted this often even when no key changed, so its issue time and the
/// collateral it verifies with stay recent.
pub const REFRESH: Duration = Duration::from_secs(3600);
/// After a failed quote, the next try.
const RETRY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("attestation.guest_api: quoting the gateway's evidence: {0}")]
    Quote(String),
    #[error("the gateway's evidence: {0}")]
    Claims(String),
    #[error("attestation.guest_api: the gateway's own evidence does not verify with its [verifier]: {0}")]
    Verify(String),
}

/// The keys the gateway holds, as its evidence lists them: the served certificates (from
/// the resolver) and the ACME account key (set when the account is loaded or created).
pub struct HeldKeys {
    certs: Arc<CertResolver>,
    acme: tokio::sync::watch::Sender<Option<BoundKey>>,
}

impl HeldKeys {
    pub fn new(certs: Arc<CertResolver>) -> Self {
        Self {
            certs,
            acme: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The ACME account `url` and the SHA-256 of its public key's SubjectPublicKeyInfo.
    pub fn set_acme_account(&self, url: &str, spki: ratls::SpkiHash) {
        let key = BoundKey {
            role: KeyRole::AcmeAccount,
            name: url.to_string(),
            spki_sha256: spki,
        };
        self.acme.send_if_modified(|k| {
            let changed = k.as_ref() != Some(&key);
            *k = Some(key);
            changed
        });
    }

    /// Every key, certificates first (by name), then the ACME account.
    pub fn snapshot(&self) -> Vec<BoundKey> {
        let mut keys: Vec<BoundKey> = self
            .certs
            .served_keys()
            .into_iter()
            .map(|(name, spki)| BoundKey {
                role: KeyRole::Certificate,
                name,
                spki_sha256: spki,
            })
            .collect();
        keys.extend(self.acme.borrow().clone());
        keys
    }
}

/// The evidence now served, with the gateway's own verification of it for the pages.
pub struct Published {
    pub document: GatewayDocument,
    /// `document` as served (pretty JSON).
    pub json: Vec<u8>,
    /// Every step of the gateway's verifier on this evidence (attested gateways only).
    pub inspection: Option<Inspection<VerifiedGateway>>,
    /// Why the last re-quote failed, while the evidence above is older.
    pub last_error: Option<String>,
}

impl Published {
    fn new(
        document: GatewayDocument,
        inspection: Option<Inspection<VerifiedGateway>>,
        last_error: Option<String>,
    ) -> Self {
        let json = serde_json::to_vec_pretty(&document).unwrap_or_default();
        Self {
            document,
            json,
            inspection,
            last_error,
        }
    }
}

/// Where the quotes come from: the guest API of the gateway's CVM, and what it said of it.
struct Source {
    api: GuestApi,
    info: GuestInfo,
    verifier: AttestationVerifier,
}

/// Makes and keeps the gateway's current evidence.
pub struct Publisher {
    source: Option<Source>,
    keys: Arc<HeldKeys>,
    current: RwLock<Arc<Published>>,
}

impl Publisher {
    /// A gateway without `[attestation]`: the document says it is not attested.
    pub fn unattested(keys: Arc<HeldKeys>) -> Self {
        Self {
            source: None,
            keys,
            current: RwLock::new(Arc::new(Published::new(
                GatewayDocument::unattested(),
                None,
                None,
            ))),
        }
    }

    /// An attested gateway: quotes its first evidence now, and refuses (no fallback) when
    /// that fails or does not verify with the gateway's own `verifier`.
    pub async fn attested(
        api: GuestApi,
        info: GuestInfo,
        keys: Arc<HeldKeys>,
        verifier: AttestationVerifier,
    ) -> Result<Self, EvidenceError> {
        let publisher = Self {
            source: Some(Source {
                api,
                info,
                verifier,
            }),
            keys,
            current: RwLock::new(Arc::new(Published::new(
                GatewayDocument::unattested(),
                None,
                None,
            ))),
        };
        publisher.requote().await?;
        Ok(publisher)
    }

    pub fn is_attested(&self) -> bool {
        self.source.is_some()
    }

    /// The evidence served now.
    pub fn current(&self) -> Arc<Published> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, p: Published) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
    }

    fn published_keys(&self) -> Vec<BoundKey> {
        self.current()
            .document
            .claims
            .as_ref()
            .map(|c| c.keys.clone())
            .unwrap_or_default()
    }

    /// Quotes the keys held now and publishes the evidence when it verifies.
    pub async fn requote(&self) -> Result<(), EvidenceError> {
        let Some(src) = &self.source else {
            return Ok(());
        };
        let mut keys = self.keys.snapshot();
        if keys.len() > MAX_BOUND_KEYS {
            tracing::error!(
                held = keys.len(),
                bound = MAX_BOUND_KEYS,
                "the gateway holds more keys than one evidence binds: clients of the others fail at gateway-key-binding"
            );
            keys.truncate(MAX_BOUND_KEYS);
        }
        let claims = GatewayClaims {
            keys,
            issued_at: ratls::verifier::unix_now(),
            nonce: None,
        };
        let claims_buffer = claims
            .to_claims_buffer()
            .map_err(|e| EvidenceError::Claims(e.0))?;
        let rd = ratls::cert::evidence::report_data_for(&claims_buffer);
        let quote = src
            .api
            .quote(&rd)
            .await
            .map_err(|e| EvidenceError::Quote(e.to_string()))?;
        let evidence = GatewayEvidence {
            quote: quote.quote,
            claims_buffer,
            event_log: quote.event_log,
            app_id: src.info.app_id,
            compose_hash: src.info.compose_hash,
            instance_id: src.info.instance_id,
            simulated: src.info.simulated,
        };
        let inspection = src.verifier.inspect_gateway(&evidence);
        if let Err(e) = inspection.verdict() {
            return Err(EvidenceError::Verify(
                ratls::GatewayError::from(e.clone()).to_string(),
            ));
        }
        tracing::info!(
            keys = claims.keys.len(),
            issued_at = claims.issued_at,
            "gateway evidence quoted"
        );
        self.set(Published::new(
            GatewayDocument::attested(evidence, claims),
            Some(inspection),
            None,
        ));
        Ok(())
    }

    fn record_failure(&self, e: &EvidenceError) {
        let cur = self.current();
        self.set(Published::new(
            cur.document.clone(),
            cur.inspection.clone(),
            Some(e.to_string()),
        ));
    }

    /// Re-quotes when a key is added or rotated (at most once per [`MIN_REQUOTE`], changes
    /// coalesced), every [`REFRESH`], and after a failure every [`RETRY`]; until
    /// `shutdown` changes.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if self.source.is_none() {
            return;
        }
        let mut certs = self.keys.certs.subscribe();
        let mut acme = self.keys.acme.subscribe();
        let mut last = Instant::now();
        let mut due = last + REFRESH;
        // A key added between the first quote and the subscriptions above sent its change
        // to nobody: compare once now, so it is not left out until the next refresh.
        let mut stale = self.keys.snapshot() != self.published_keys();
        loop {
            if !std::mem::take(&mut stale) {
                tokio::select! {
                    r = certs.changed() => if r.is_err() { return },
                    r = acme.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = shutdown.changed() => return,
                }
            }
            let wait = MIN_REQUOTE.saturating_sub(last.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            certs.borrow_and_update();
            acme.borrow_and_update();
            let refresh_due = Instant::now() >= due;
            let failing = self.current().last_error.is_some();
            if !refresh_due && !failing && self.keys.snapshot() == self.published_keys() {
                continue;
            }
            last = Instant::now();
            match self.requote().await {
                Ok(()) => due = Instant::now() + REFRESH,
                Err(e) => {
                    tracing::warn!(error = %e, "re-quoting the gateway's evidence failed; the previous evidence stays published");
                    self.record_failure(&e);
                    due = Instant::now() + RETRY;
                }
            }
        }
    }
}
