//! Who gets keys. Deny by default: an app with no `[policy.apps.<id>]` table, an empty
//! allowlist, or any failure to ask the webhook is a denial, and every denial carries a
//! reason that is logged, audited and returned to the caller.
//!
//! Order of checks for a release (after `ratls` verified the quote, the key binding and
//! the event-log replay): OS measurements (MRTD, RTMR0-2) → app has a policy → simulated
//! quotes allowed for the app → TCB status at least the app's minimum → compose hash
//! allowlisted → webhook (if configured).

use std::collections::BTreeMap;
use std::time::Duration;

use config::{Allowlist as CfgList, AppPolicy, KmsConfig, MeasurementPolicy, TcbStatusName};
use ratls::{Allowlist, AppId, ComposeHash, Measurement, VerifiedAttestation};
use serde::Deserialize;

use crate::api::{AppPolicySummary, BootInfo, ListSummary, MeasurementSummary, PolicySummary};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// A measurement allowlist in ratls' types.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    pub mrtd: Allowlist<Measurement>,
    pub rtmr0: Allowlist<Measurement>,
    pub rtmr1: Allowlist<Measurement>,
    pub rtmr2: Allowlist<Measurement>,
}

fn list<C, R: Ord>(cfg: &CfgList<C>, f: impl Fn(&C) -> R) -> Allowlist<R> {
    match cfg {
        CfgList::Any => Allowlist::Any,
        CfgList::Only(items) => Allowlist::only(items.iter().map(f)),
    }
}

fn summary<T: Ord + std::fmt::Display>(l: &Allowlist<T>) -> ListSummary {
    match l {
        Allowlist::Any => ListSummary::Word("any".into()),
        Allowlist::Only(s) if s.is_empty() => ListSummary::Word("none (deny)".into()),
        Allowlist::Only(s) => ListSummary::Values(s.iter().map(|v| v.to_string()).collect()),
    }
}

impl Measurements {
    pub fn from_config(cfg: &MeasurementPolicy) -> Self {
        let m = |x: &config::Measurement| Measurement(*x.as_bytes());
        Self {
            mrtd: list(&cfg.mrtd, m),
            rtmr0: list(&cfg.rtmr0, m),
            rtmr1: list(&cfg.rtmr1, m),
            rtmr2: list(&cfg.rtmr2, m),
        }
    }

    /// Checks MRTD and RTMR0-2; `what` names the list in the reason.
    pub fn check(
        &self,
        what: &str,
        mrtd: &Measurement,
        rtmrs: &[Measurement; 4],
    ) -> Result<(), Denied> {
        let pairs = [
            ("MRTD", &self.mrtd, mrtd),
            ("RTMR0", &self.rtmr0, &rtmrs[0]),
            ("RTMR1", &self.rtmr1, &rtmrs[1]),
            ("RTMR2", &self.rtmr2, &rtmrs[2]),
        ];
        for (name, allow, value) in pairs {
            if !allow.allows(value) {
                return Err(Denied(format!(
                    "{name} {value} is not in the {what} allowlist"
                )));
            }
        }
        Ok(())
    }

    pub fn summary(&self) -> MeasurementSummary {
        MeasurementSummary {
            mrtd: summary(&self.mrtd),
            rtmr0: summary(&self.rtmr0),
            rtmr1: summary(&self.rtmr1),
            rtmr2: summary(&self.rtmr2),
        }
    }
}

/// One app's rule.
#[derive(Debug, Clone)]
pub struct AppRule {
    pub compose_hashes: Allowlist<ComposeHash>,
    pub allow_simulated: bool,
    pub min_tcb_status: TcbStatusName,
}

impl AppRule {
    fn from_config(p: &AppPolicy) -> Self {
        Self {
            compose_hashes: list(&p.compose_hashes, |h| ComposeHash(*h.as_bytes())),
            allow_simulated: p.allow_simulated,
            min_tcb_status: p.min_tcb_status,
        }
    }
}

/// The optional approval webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: String,
    timeout: Duration,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct WebhookAnswer {
    allow: bool,
    #[serde(default)]
    reason: String,
}

impl Webhook {
    pub fn new(url: String, timeout: Duration) -> Result<Self, Denied> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(crate::client::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Denied(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| Denied(format!("webhook client: {e}")))?;
        Ok(Self { url, timeout, http })
    }

    /// Asks the webhook; anything but `{"allow": true}` within the timeout denies.
    pub async fn ask(&self, boot: &BootInfo) -> Result<(), Denied> {
        let call = async {
            let resp = self
                .http
                .post(&self.url)
                .json(boot)
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        format!(
                            "webhook did not answer within {} ms",
                            self.timeout.as_millis()
                        )
                    } else {
                        format!("webhook unreachable: {e}")
                    }
                })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("webhook answered HTTP {}", status.as_u16()));
            }
            let body = resp.bytes().await.map_err(|e| {
                if e.is_timeout() {
                    format!(
                        "webhook did not answer within {} ms",
                        self.timeout.as_millis()
                    )
                } else {
                    format!("webhook answer unreadable: {e}")
                }
            })?;
            serde_json::from_slice::<WebhookAnswer>(&body).map_err(|e| {
                format!("webhook answer is not {{\"allow\": bool, \"reason\": str}}: {e}")
            })
        };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(format!(
                "webhook did not answer within {} ms",
                self.timeout.as_millis()
            )),
            Ok(r) => r,
        }
        .map_err(Denied)?;
        if answer.allow {
            Ok(())
        } else {
            let reason: String = answer.reason.chars().take(500).collect();
            Err(Denied(format!("webhook denied the release: {reason}")))
        }
    }
}

/// The release policy.
#[derive(Debug, Clone)]
pub struct ReleasePolicy {
    pub os: Measurements,
    pub kms_measurements: Measurements,
    pub apps: BTreeMap<AppId, AppRule>,
    pub webhook: Option<Webhook>,
    pub verifier_allows_simulated: bool,
}

/// Boot info as JSON-ready text.
pub fn boot_info(v: &VerifiedAttestation) -> BootInfo {
    let r = v.rtmrs();
    BootInfo {
        app_id: v.app_id().to_hex(),
        compose_hash: v.compose_hash().to_hex(),
        instance_id: v.instance_id().to_hex(),
        mrtd: v.mrtd().to_hex(),
        rtmr0: r[0].to_hex(),
        rtmr1: r[1].to_hex(),
        rtmr2: r[2].to_hex(),
        rtmr3: r[3].to_hex(),
        tcb_status: v.tcb_status().to_string(),
        advisory_ids: v.advisory_ids().to_vec(),
        simulated: v.is_simulated(),
        cert_fingerprint: v.fingerprint().to_hex(),
    }
}

impl ReleasePolicy {
    pub fn from_config(cfg: &KmsConfig) -> Result<Self, Denied> {
        let webhook = match &cfg.webhook {
            Some(w) => Some(Webhook::new(
                w.url.as_str().to_string(),
                Duration::from_millis(w.timeout_ms),
            )?),
            None => None,
        };
        Ok(Self {
            os: Measurements::from_config(&cfg.policy.os),
            kms_measurements: Measurements::from_config(&cfg.policy.kms_measurements),
            apps: cfg
                .policy
                .apps
                .iter()
                .map(|(id, p)| (AppId(*id.as_bytes()), AppRule::from_config(p)))
                .collect(),
            webhook,
            verifier_allows_simulated: cfg.verifier.allow_simulated,
        })
    }

    /// The rules that need no network.
    pub fn check_static(&self, v: &VerifiedAttestation) -> Result<(), Denied> {
        self.os.check("OS (policy.os)", v.mrtd(), v.rtmrs())?;
        let app = v.app_id();
        let rule = self.apps.get(app).ok_or_else(|| {
            Denied(format!(
                "app {app} has no policy (deny by default: add [policy.apps.{app}])"
            ))
        })?;
        if v.is_simulated() && !rule.allow_simulated {
            return Err(Denied(format!(
                "app {app} does not accept SIMULATED quotes (allow_simulated = false)"
            )));
        }
        let status = v.tcb_status();
        let acceptable = status
            .as_str()
            .parse::<TcbStatusName>()
            .map(|s| rule.min_tcb_status.admits(s))
            .unwrap_or(false);
        if !acceptable {
            return Err(Denied(format!(
                "TCB status {status} is worse than app {app}'s minimum {}",
                rule.min_tcb_status
            )));
        }
        if !rule.compose_hashes.allows(v.compose_hash()) {
            return Err(Denied(format!(
                "compose hash {} is not allowed for app {app}",
                v.compose_hash()
            )));
        }
        Ok(())
    }

    /// All rules, the webhook last.
    pub async fn decide(&self, v: &VerifiedAttestation, boot: &BootInfo) -> Result<(), Denied> {
        self.check_static(v)?;
        if let Some(hook) = &self.webhook {
            hook.ask(boot).await?;
        }
        Ok(())
    }

    pub fn summary(&self) -> PolicySummary {
        PolicySummary {
            os: self.os.summary(),
            kms_measurements: self.kms_measurements.summary(),
            apps: self
                .apps
                .iter()
                .map(|(id, r)| AppPolicySummary {
                    app_id: id.to_hex(),
                    compose_hashes: summary(&r.compose_hashes),
                    allow_simulated: r.allow_simulated,
                    min_tcb_status: r.min_tcb_status.to_string(),
                })
                .collect(),
            webhook: self.webhook.as_ref().map(|w| w.url.clone()),
            verifier_allows_simulated: self.verifier_allows_simulated,
        }
    }
}
