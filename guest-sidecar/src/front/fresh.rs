//! Fresh handshakes: a client that offers `teegate-fresh-<hex nonce>` first in its ALPN
//! list (see `ratls::fresh`) gets a short-lived RA-TLS certificate whose claims buffer holds
//! that nonce, quoted for this connection. Each one costs a quote, so they are bounded: a
//! token bucket per client IP, a global bucket, and a cap on quotes in flight. Over any
//! bound the handshake is refused (the connection is closed without a certificate): a
//! client that asked for freshness never receives the stale certificate instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratls::cert::{issue, CertAuthority, CertProfile, Identity};
use ratls::provider::Measurer;
use rustls::sign::CertifiedKey;
use tokio::sync::Semaphore;

/// Issues a certificate quoting over the nonce (the sidecar's measurer and app CA).
pub type IssueFresh = dyn Fn(&[u8]) -> Result<Arc<CertifiedKey>, String> + Send + Sync;

/// Bounds on fresh handshakes.
#[derive(Debug, Clone)]
pub struct FreshLimits {
    /// Fresh handshakes one client IP may make at once before it has to wait.
    pub per_source_burst: u32,
    /// One more fresh handshake per source after each interval.
    pub per_source_interval: Duration,
    /// The same bucket for all sources together.
    pub global_burst: u32,
    pub global_interval: Duration,
    /// Quotes being made at the same time.
    pub max_in_flight: usize,
    /// Sources remembered; when full of sources still waiting, new ones are refused.
    pub max_sources: usize,
    /// Validity of a fresh certificate (it serves one connection).
    pub validity: Duration,
}

impl Default for FreshLimits {
    fn default() -> Self {
        Self {
            per_source_burst: 5,
            per_source_interval: Duration::from_secs(2),
            global_burst: 50,
            global_interval: Duration::from_millis(50),
            max_in_flight: 4,
            max_sources: 10_000,
            validity: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, burst: u32, interval: Duration, now: Instant) {
        let gained = now.duration_since(self.at).as_secs_f64() / interval.as_secs_f64().max(1e-9);
        self.tokens = (self.tokens + gained).min(f64::from(burst));
        self.at = now;
    }
}

/// Why a fresh handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreshRefusal {
    #[error("this source's fresh-handshake rate is exhausted")]
    SourceRate,
    #[error("the front's fresh-handshake rate is exhausted")]
    GlobalRate,
    #[error("too many quotes in flight")]
    InFlight,
    #[error("too many sources to track")]
    Sources,
    #[error("quote failed")]
    Issue,
}

struct Buckets {
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

/// The fresh-certificate issuer with its bounds.
pub struct Fresh {
    issue: Arc<IssueFresh>,
    limits: FreshLimits,
    buckets: Mutex<Buckets>,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fresh")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Fresh {
    pub fn new(issue: Arc<IssueFresh>, limits: FreshLimits) -> Self {
        let now = Instant::now();
        Self {
            issue,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            buckets: Mutex::new(Buckets {
                global: Bucket::full(limits.global_burst, now),
                sources: HashMap::new(),
            }),
            limits,
        }
    }

    /// Fresh certificates like the instance certificate (same names, same issuer: the app
    /// CA when there is one) but short-lived, server-only, and quoting over the nonce.
    pub fn for_instance(
        measurer: Arc<Measurer>,
        identity: Identity,
        names: Vec<String>,
        app_ca: Option<Arc<CertAuthority>>,
        limits: FreshLimits,
    ) -> Self {
        let validity = limits.validity;
        let issue_fresh = move |nonce: &[u8]| {
            let mut profile = CertProfile::server_and_client(names.clone(), validity);
            profile.client_auth = false;
            profile.nonce = Some(nonce.to_vec());
            let cert = issue(&measurer, &identity, &profile, app_ca.as_deref())
                .map_err(|e| e.to_string())?;
            super::certified_key(cert.rustls_chain(), cert.rustls_key()).map_err(|e| e.to_string())
        };
        Self::new(Arc::new(issue_fresh), limits)
    }

    pub fn limits(&self) -> &FreshLimits {
        &self.limits
    }

    /// Takes one token from `source`'s bucket and the global one, or neither.
    fn take(&self, source: IpAddr) -> Result<(), FreshRefusal> {
        let l = &self.limits;
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !b.sources.contains_key(&source) && b.sources.len() >= l.max_sources {
            // Forget sources whose buckets have refilled: they are as good as new.
            b.sources.retain(|_, s| {
                s.refill(l.per_source_burst, l.per_source_interval, now);
                s.tokens < f64::from(l.per_source_burst)
            });
            if b.sources.len() >= l.max_sources {
                return Err(FreshRefusal::Sources);
            }
        }
        b.global.refill(l.global_burst, l.global_interval, now);
        let mine = b
            .sources
            .entry(source)
            .or_insert_with(|| Bucket::full(l.per_source_burst, now));
        mine.refill(l.per_source_burst, l.per_source_interval, now);
        if mine.tokens < 1.0 {
            return Err(FreshRefusal::SourceRate);
        }
        mine.tokens -= 1.0;
        if b.global.tokens < 1.0 {
            if let Some(m) = b.sources.get_mut(&source) {
                m.tokens += 1.0;
            }
            return Err(FreshRefusal::GlobalRate);
        }
        b.global.tokens -= 1.0;
        Ok(())
    }

    /// A certificate quoting over `nonce` for a handshake from `source`, within the bounds.
    pub async fn certificate(
        &self,
        source: IpAddr,
        nonce: Vec<u8>,
    ) -> Result<Arc<CertifiedKey>, FreshRefusal> {
        self.take(source)?;
        let permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| FreshRefusal::InFlight)?;
        let issue = self.issue.clone();
        // Quoting blocks (configfs-tsm, signing): keep it off the async workers.
        let made = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            issue(&nonce)
        })
        .await;
        match made {
            Ok(Ok(key)) => Ok(key),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "front: fresh certificate not issued");
                Err(FreshRefusal::Issue)
            }
            Err(e) => {
                tracing::warn!(error = %e, "front: fresh certificate task failed");
                Err(FreshRefusal::Issue)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> Arc<IssueFresh> {
        Arc::new(|_: &[u8]| Err("unused".to_string()))
    }

    #[test]
    fn buckets_bound_each_source_and_all_together() {
        let limits = FreshLimits {
            per_source_burst: 2,
            per_source_interval: Duration::from_secs(3600),
            global_burst: 3,
            global_interval: Duration::from_secs(3600),
            max_sources: 2,
            ..FreshLimits::default()
        };
        let f = Fresh::new(never(), limits);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(f.take(a), Ok(()));
        assert_eq!(f.take(a), Ok(()));
        assert_eq!(f.take(a), Err(FreshRefusal::SourceRate));
        assert_eq!(f.take(b), Ok(()));
        assert_eq!(f.take(b), Err(FreshRefusal::GlobalRate));
        // b's refused token was given back, and a third source does not fit.
        assert_eq!(f.take(c), Err(FreshRefusal::Sources));
    }
}
