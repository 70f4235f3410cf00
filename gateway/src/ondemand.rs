//! On-demand certificates for custom domains. When a TLS connection names a domain outside
//! the base domain that has no certificate yet, the gateway checks — in this order, each
//! refusal ending there with no ACME order — the operator's allow rules and the
//! `_teegate-app` TXT record (custom.rs), that the record names a registered app, and the
//! optional `ask` URL (answers 200 to allow, as Caddy's does); then a global rate limit.
//! Only then does it order a certificate by HTTP-01 (answered on port 80). A name that
//! failed is refused quickly until its back-off passes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Mutex;

use crate::acme::{Acme, Http01Tokens};
use crate::certs::CertResolver;
use crate::custom::{CustomDomains, CustomError};
use crate::metrics::Metrics;
use crate::registry::Registry;

/// How long a failed name is refused before it may be tried again.
const FAILURE_BACKOFF: Duration = Duration::from_secs(600);
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OnDemandError {
    #[error(transparent)]
    Custom(#[from] CustomError),
    #[error("{0} names an app that is not registered")]
    UnknownApp(String),
    #[error("the ask URL refused {0}")]
    AskRefused(String),
    #[error("{0} failed recently; retry later")]
    RecentlyFailed(String),
    #[error("on-demand certificate rate limit reached")]
    RateLimited,
    #[error("issuing a certificate for {name}: {message}")]
    Issue { name: String, message: String },
}

pub struct OnDemand {
    pub acme: Arc<Acme>,
    pub custom: Arc<CustomDomains>,
    pub resolver: Arc<CertResolver>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub tokens: Arc<Http01Tokens>,
    pub ask_url: Option<String>,
    pub max_per_hour: usize,
    failures: DashMap<String, Instant>,
    recent: Mutex<VecDeque<Instant>>,
    one_at_a_time: Mutex<()>,
}

impl OnDemand {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        acme: Arc<Acme>,
        custom: Arc<CustomDomains>,
        resolver: Arc<CertResolver>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        tokens: Arc<Http01Tokens>,
        ask_url: Option<String>,
        max_per_hour: usize,
    ) -> Self {
        Self {
            acme,
            custom,
            resolver,
            registry,
            metrics,
            tokens,
            ask_url,
            max_per_hour,
            failures: DashMap::new(),
            recent: Mutex::new(VecDeque::new()),
            one_at_a_time: Mutex::new(()),
        }
    }

    fn count(&self, result: &str) {
        self.metrics.on_demand.with_label_values(&[result]).inc();
    }

    async fn ask(&self, name: &str) -> Result<(), OnDemandError> {
        let Some(url) = self.ask_url.clone() else {
            return Ok(());
        };
        let full = format!(
            "{url}{}domain={name}",
            if url.contains('?') { '&' } else { '?' }
        );
        let allowed = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(ASK_TIMEOUT))
                .max_redirects(0)
                .http_status_as_error(false)
                .build()
                .into();
            agent
                .get(&full)
                .call()
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if allowed {
            Ok(())
        } else {
            Err(OnDemandError::AskRefused(name.to_string()))
        }
    }

    async fn take_rate_slot(&self) -> Result<(), OnDemandError> {
        let mut recent = self.recent.lock().await;
        let hour_ago = Instant::now().checked_sub(Duration::from_secs(3600));
        while recent
            .front()
            .is_some_and(|t| hour_ago.is_some_and(|h| *t < h))
        {
            recent.pop_front();
        }
        if recent.len() >= self.max_per_hour {
            return Err(OnDemandError::RateLimited);
        }
        recent.push_back(Instant::now());
        Ok(())
    }

    /// Makes sure `name` (normalised) has a certificate, obtaining one if it qualifies.
    pub async fn ensure(&self, name: &str) -> Result<(), OnDemandError> {
        if self.resolver.lookup(name).is_some() {
            return Ok(());
        }
        if self
            .failures
            .get(name)
            .is_some_and(|until| *until > Instant::now())
        {
            self.count("recently-failed");
            return Err(OnDemandError::RecentlyFailed(name.to_string()));
        }
        let result = self.qualify_and_issue(name).await;
        match &result {
            Ok(()) => self.count("issued"),
            Err(e) => {
                self.count(match e {
                    OnDemandError::Custom(_) => "no-valid-record",
                    OnDemandError::UnknownApp(_) => "unknown-app",
                    OnDemandError::AskRefused(_) => "ask-refused",
                    OnDemandError::RateLimited => "rate-limited",
                    _ => "failed",
                });
                tracing::info!(name, error = %e, "no on-demand certificate");
                if self.failures.len() < 100_000 {
                    self.failures
                        .insert(name.to_string(), Instant::now() + FAILURE_BACKOFF);
                }
            }
        }
        result
    }

    async fn qualify_and_issue(&self, name: &str) -> Result<(), OnDemandError> {
        let target = self.custom.lookup(name).await?;
        if self.registry.resolve(&target.id).is_none() {
            return Err(OnDemandError::UnknownApp(name.to_string()));
        }
        self.ask(name).await?;
        let _one = self.one_at_a_time.lock().await;
        if self.resolver.lookup(name).is_some() {
            return Ok(());
        }
        self.take_rate_slot().await?;
        self.acme
            .issue_http01(name, &self.tokens)
            .await
            .map(|_| ())
            .map_err(|e| OnDemandError::Issue {
                name: name.to_string(),
                message: e.to_string(),
            })
    }
}
