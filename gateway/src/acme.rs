//! Automatic HTTPS for the base domain: the wildcard `*.<base>` + `<base>` certificate from
//! an RFC 8555 CA (instant-acme) by DNS-01, with the TXT records published through
//! teegate's DNS record API. The account key lives in the state store, so restarts and
//! replicas reuse one account; certificates land in the store and are swapped into the
//! TLS resolver without a restart. Renewal starts after `renew_at_fraction` of the
//! lifetime; failures back off exponentially with jitter while the old certificate serves.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dns::api::{challenge_record_name, AcmeDnsClient};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::{watch, Mutex, Notify};
use zeroize::Zeroizing;

use crate::certs::{x509_not_after, x509_not_before, CertResolver};
use crate::metrics::Metrics;
use crate::store::{CertRecord, Store};

/// The store key of the ACME account credentials for a directory. The account is stored
/// per ACME directory: moving from a staging CA to production (or to another CA) must
/// create an account there, not present one the new CA never issued.
pub fn account_key(directory_url: &str) -> String {
    format!("acme/account/{directory_url}")
}
const MIN_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How often the renewal loop looks at the certificate when nothing is due.
const CHECK_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME account: {0}")]
    Account(String),
    #[error("ACME order for {names}: {message}")]
    Order { names: String, message: String },
    #[error("DNS-01 record {record}: {message}")]
    Dns { record: String, message: String },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("certificate: {0}")]
    Cert(#[from] crate::certs::CertError),
}

/// The ACME account a gateway uses: its URI (what the CAA records pin, `accounturi`) and the
/// SubjectPublicKeyInfo of its key (what the gateway's evidence binds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAccountId {
    pub uri: String,
    pub spki_der: Vec<u8>,
}

/// The account URI and key SPKI of stored ACME credentials (instant-acme's JSON).
pub fn acme_account_spki(credentials_json: &str) -> Result<AcmeAccountId, AcmeError> {
    let bad = |m: String| AcmeError::Account(format!("stored credentials: {m}"));
    let creds: AccountCredentials =
        serde_json::from_str(credentials_json).map_err(|e| bad(e.to_string()))?;
    // instant-acme keeps the URI private; it is the credentials' `id` field.
    let uri = serde_json::from_str::<serde_json::Value>(credentials_json)
        .ok()
        .and_then(|v| v.get("id")?.as_str().map(str::to_string))
        .ok_or_else(|| bad("no account id".into()))?;
    let key = rcgen::KeyPair::try_from(creds.private_key().secret_pkcs8_der())
        .map_err(|e| bad(e.to_string()))?;
    Ok(AcmeAccountId {
        uri,
        spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
    })
}

#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub base_domain: String,
    pub directory_url: String,
    pub ca_bundle: Option<PathBuf>,
    pub contact: Vec<String>,
    pub renew_at_fraction: f64,
}

pub struct Acme {
    settings: AcmeSettings,
    store: Arc<dyn Store>,
    dns: Arc<dyn AcmeDnsClient>,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
    /// One issuance at a time in this process (replicas will use the store's lock).
    issuing: Mutex<()>,
    force: Notify,
}

/// How an order's challenges are answered.
#[derive(Clone, Copy)]
enum Solver<'a> {
    Dns01,
    Http01(&'a Http01Tokens),
}

/// HTTP-01 tokens being answered on port 80: token → key authorisation. Bounded.
#[derive(Default)]
pub struct Http01Tokens {
    map: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Http01Tokens {
    const MAX: usize = 1024;

    fn put(&self, token: &str, key_auth: &str) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() < Self::MAX {
            m.insert(token.to_string(), key_auth.to_string());
        }
    }

    fn remove(&self, token: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// The key authorisation for `/.well-known/acme-challenge/<token>`.
    pub fn get(&self, token: &str) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }
}

/// Whether a certificate valid from `not_before` to `not_after` should be renewed at `now`.
pub fn renewal_due(not_before: u64, not_after: u64, now: u64, fraction: f64) -> bool {
    if not_after <= not_before {
        return true;
    }
    let lifetime = (not_after - not_before) as f64;
    now as f64 >= not_before as f64 + lifetime * fraction
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>())
}

impl Acme {
    pub fn new(
        settings: AcmeSettings,
        store: Arc<dyn Store>,
        dns: Arc<dyn AcmeDnsClient>,
        resolver: Arc<CertResolver>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            settings,
            store,
            dns,
            resolver,
            metrics,
            issuing: Mutex::new(()),
            force: Notify::new(),
        }
    }

    pub fn wildcard_name(&self) -> String {
        format!("*.{}", self.settings.base_domain)
    }

    /// The account in use (none created yet: `None`), for the gateway's evidence and CAA.
    pub async fn account_id(&self) -> Result<Option<AcmeAccountId>, AcmeError> {
        match self
            .store
            .get_value(&account_key(&self.settings.directory_url))
            .await?
        {
            Some(json) => acme_account_spki(&Zeroizing::new(json)).map(Some),
            None => Ok(None),
        }
    }

    /// Asks the renewal loop to issue now, whatever the current certificate's age.
    pub fn force_renewal(&self) {
        self.force.notify_one();
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        match &self.settings.ca_bundle {
            Some(path) => Account::builder_with_root(path),
            None => Account::builder(),
        }
        .map_err(|e| AcmeError::Account(e.to_string()))
    }

    /// The stored account, or a new one (saved before use, so a crash cannot orphan it).
    async fn account(&self) -> Result<Account, AcmeError> {
        if let Some(json) = self
            .store
            .get_value(&account_key(&self.settings.directory_url))
            .await?
        {
            let json = Zeroizing::new(json);
            let creds: AccountCredentials = serde_json::from_str(&json)
                .map_err(|e| AcmeError::Account(format!("stored credentials: {e}")))?;
            return self
                .builder()?
                .from_credentials(creds)
                .await
                .map_err(|e| AcmeError::Account(e.to_string()));
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let (account, creds) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory_url.clone(),
                None,
            )
            .await
            .map_err(|e| AcmeError::Account(e.to_string()))?;
        let json = Zeroizing::new(
            serde_json::to_string(&creds).map_err(|e| AcmeError::Account(e.to_string()))?,
        );
        self.store
            .put_value(&account_key(&self.settings.directory_url), &json)
            .await?;
        tracing::info!(account = account.id(), "ACME account created");
        Ok(account)
    }

    /// Orders, validates (DNS-01) and stores a new wildcard certificate, then serves it.
    pub async fn issue(&self) -> Result<CertRecord, AcmeError> {
        let base = self.settings.base_domain.clone();
        let names = vec![format!("*.{base}"), base];
        self.order(&self.wildcard_name(), &names, Solver::Dns01)
            .await
    }

    /// A certificate for one custom domain by HTTP-01 (answered on the gateway's port 80).
    pub async fn issue_http01(
        &self,
        name: &str,
        tokens: &Http01Tokens,
    ) -> Result<CertRecord, AcmeError> {
        self.order(name, &[name.to_string()], Solver::Http01(tokens))
            .await
    }

    async fn order(
        &self,
        store_name: &str,
        names: &[String],
        solver: Solver<'_>,
    ) -> Result<CertRecord, AcmeError> {
        let _one = self.issuing.lock().await;
        let stored = |all: Vec<CertRecord>| all.into_iter().find(|c| c.name == store_name);
        let before = stored(self.store.certs().await?);
        // Across replicas (a shared store), one order at a time; the lease frees the lock
        // if this process dies mid-order.
        let _lock = self
            .store
            .lock(
                "acme-order",
                Duration::from_secs(300),
                Duration::from_secs(120),
            )
            .await?
            .ok_or_else(|| AcmeError::Order {
                names: names.join(", "),
                message: "another replica holds the ACME lock".into(),
            })?;
        // Replicas that wanted the same certificate waited for the lock while its holder
        // issued it: take that one instead of ordering again.
        if let Some(fresh) = stored(self.store.certs().await?).filter(|c| {
            before
                .as_ref()
                .is_none_or(|b| b.cert_chain_pem != c.cert_chain_pem)
        }) {
            tracing::info!(
                name = store_name,
                "issued by another replica meanwhile; not ordering again"
            );
            self.resolver.install(&fresh)?;
            return Ok(fresh);
        }
        let order_err = |m: String| AcmeError::Order {
            names: names.join(", "),
            message: m,
        };
        let account = self.account().await?;
        if let Err(e) = self.dns.set_caa_account(account.id()).await {
            tracing::warn!(error = %e, "could not pin the ACME account in CAA");
        }
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| order_err(e.to_string()))?;
        let kind = match solver {
            Solver::Dns01 => ChallengeType::Dns01,
            Solver::Http01(_) => ChallengeType::Http01,
        };
        // DNS-01: both names validate at `_acme-challenge.<base>`; collect every value and
        // publish once. HTTP-01: token → key authorisation, served on port 80.
        let mut txt: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let mut http_tokens = Vec::new();
        {
            let mut authorizations = order.authorizations();
            while let Some(result) = authorizations.next().await {
                let mut authz = result.map_err(|e| order_err(e.to_string()))?;
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => return Err(order_err(format!("authorization is {other:?}"))),
                }
                let challenge = authz
                    .challenge(kind.clone())
                    .ok_or_else(|| order_err(format!("the CA offers no {kind:?} challenge")))?;
                match solver {
                    Solver::Dns01 => {
                        let record = challenge_record_name(&challenge.identifier().to_string());
                        txt.entry(record)
                            .or_default()
                            .push(challenge.key_authorization().dns_value());
                    }
                    Solver::Http01(tokens) => {
                        let token = challenge.token.clone();
                        tokens.put(&token, challenge.key_authorization().as_str());
                        http_tokens.push(token);
                    }
                }
            }
        }
        let mut published = Ok(());
        for (record, vals) in &txt {
            if let Err(e) = self.dns.set_txt(record, vals.clone()).await {
                published = Err(AcmeError::Dns {
                    record: record.clone(),
                    message: e.to_string(),
                });
                break;
            }
        }
        let result = match published {
            Ok(()) => self.finish_order(&mut order, names, kind).await,
            Err(e) => Err(e),
        };
        for record in txt.keys() {
            if let Err(e) = self.dns.clear_txt(record).await {
                tracing::warn!(record, error = %e, "could not clear the DNS-01 record");
            }
        }
        if let Solver::Http01(tokens) = solver {
            for t in &http_tokens {
                tokens.remove(t);
            }
        }
        let (cert_chain_pem, key_pem) = result?;
        let first =
            pem::parse(&cert_chain_pem).map_err(|e| order_err(format!("certificate PEM: {e}")))?;
        let record = CertRecord {
            name: store_name.to_string(),
            not_after: x509_not_after(first.contents()).unwrap_or(0),
            cert_chain_pem,
            key_pem,
        };
        self.resolver.install(&record)?;
        self.store.put_cert(&record).await?;
        self.metrics
            .cert_not_after
            .with_label_values(&[&record.name])
            .set(record.not_after as i64);
        tracing::info!(
            name = record.name,
            not_after = record.not_after,
            "certificate issued"
        );
        Ok(record)
    }

    async fn finish_order(
        &self,
        order: &mut instant_acme::Order,
        names: &[String],
        kind: ChallengeType,
    ) -> Result<(String, Zeroizing<String>), AcmeError> {
        let order_err = |m: String| AcmeError::Order {
            names: names.join(", "),
            message: m,
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(result) = authorizations.next().await {
                let mut authz = result.map_err(|e| order_err(e.to_string()))?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let mut challenge = authz
                    .challenge(kind.clone())
                    .ok_or_else(|| order_err(format!("no {kind:?} challenge")))?;
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| order_err(e.to_string()))?;
            }
        }
        let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| order_err(e.to_string()))?;
        if status != OrderStatus::Ready {
            return Err(order_err(format!(
                "order is {status:?}, not ready (validation failed?)"
            )));
        }
        // The certificate key, made here in the gateway, lives in wiped memory from now on.
        let key_pem = Zeroizing::new(
            order
                .finalize()
                .await
                .map_err(|e| order_err(e.to_string()))?,
        );
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| order_err(e.to_string()))?;
        Ok((chain, key_pem))
    }

    /// The stored wildcard certificate, if any.
    async fn current(&self) -> Option<CertRecord> {
        let name = self.wildcard_name();
        self.store
            .certs()
            .await
            .ok()?
            .into_iter()
            .find(|c| c.name == name)
    }

    fn due(&self, rec: &CertRecord, now: u64) -> bool {
        let not_before = pem::parse(&rec.cert_chain_pem)
            .ok()
            .and_then(|p| x509_not_before(p.contents()))
            .unwrap_or(0);
        renewal_due(
            not_before,
            rec.not_after,
            now,
            self.settings.renew_at_fraction,
        )
    }

    /// Issues when due (or forced) until shutdown; keeps serving the old certificate on failure.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = MIN_BACKOFF;
        let mut forced = false;
        loop {
            let now = ratls::verifier::unix_now();
            let due = forced || self.current().await.is_none_or(|c| self.due(&c, now));
            let wait = if due {
                match self.issue().await {
                    Ok(_) => {
                        self.metrics.acme_attempts.with_label_values(&["ok"]).inc();
                        backoff = MIN_BACKOFF;
                        forced = false;
                        CHECK_EVERY
                    }
                    Err(e) => {
                        self.metrics
                            .acme_attempts
                            .with_label_values(&["failed"])
                            .inc();
                        tracing::error!(error = %e, retry_in = ?backoff, "certificate issuance failed; serving the existing certificate");
                        let w = jittered(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        w
                    }
                }
            } else {
                CHECK_EVERY
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.force.notified() => forced = true,
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_starts_after_the_fraction() {
        assert!(!renewal_due(0, 90, 59, 0.666));
        assert!(renewal_due(0, 90, 60, 0.666));
        assert!(
            renewal_due(100, 100, 0, 0.666),
            "a certificate with no lifetime is due"
        );
    }

    #[test]
    fn accounts_are_kept_per_directory() {
        let staging = account_key("https://acme-staging-v02.api.letsencrypt.org/directory");
        let production = account_key(LETS_ENCRYPT_PRODUCTION);
        assert_ne!(staging, production);
        assert!(production.starts_with("acme/account/"));
    }

    const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
}
