//! `KmsConfig`: attested key release (listener, state, release policy).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::allowlist::Allowlist;
use crate::error::ConfigError;
use crate::load::Component;
use crate::quote_provider::QuoteProviderConfig;
use crate::types::{AppId, ComposeHash, HttpUrl, Measurement};
use crate::validate::{check, in_range, key, non_empty_path, Validate};
use crate::verifier::{TcbStatusName, VerifierConfig};

/// The KMS's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// Mutual RA-TLS listener (default `0.0.0.0:8000`).
    #[serde(
        default = "default_listen",
        deserialize_with = "crate::types::socket_addr"
    )]
    pub listen: SocketAddr,
    /// State directory: root secret, root CA (required).
    pub data_dir: PathBuf,
    /// Where the KMS's own quotes come from (default `tdx`).
    #[serde(default)]
    pub quote_provider: QuoteProviderConfig,
    /// Who gets keys.
    #[serde(default)]
    pub policy: KmsPolicyConfig,
    /// Optional extra approval by an HTTP hook.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Audit log (JSON lines); `<data_dir>/audit.jsonl` when absent, see
    /// [`KmsConfig::audit_log_path`].
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// URL of a running KMS to receive the root secret from (a new replica).
    #[serde(default)]
    pub onboard_from: Option<HttpUrl>,
    /// How sidecars' (and replicas') quotes are verified: TCB statuses,
    /// collateral, simulated quotes.
    #[serde(default)]
    pub verifier: VerifierConfig,
    /// `[limits]`: bounds on the listener.
    #[serde(default)]
    pub limits: KmsLimits,
}

/// `[limits]`: what one client may hold of the listener. The KMS answers anyone who can
/// reach it, so idle or slow connections must not be able to starve attested callers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmsLimits {
    /// Concurrent connections, handshaking or open (1 to 1000000, default 1024); one
    /// beyond is closed at once.
    pub max_connections: u32,
    /// Seconds a connection has to complete its TLS handshake (1 to 300, default 10).
    pub handshake_timeout_secs: u64,
}

impl Default for KmsLimits {
    fn default() -> Self {
        KmsLimits {
            max_connections: 1024,
            handshake_timeout_secs: 10,
        }
    }
}

impl Validate for KmsLimits {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        in_range(at, "max_connections", self.max_connections, 1..=1_000_000)?;
        in_range(
            at,
            "handshake_timeout_secs",
            self.handshake_timeout_secs,
            1..=300,
        )
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8000))
}

impl KmsConfig {
    /// The audit log file: `audit_log`, or `<data_dir>/audit.jsonl`.
    pub fn audit_log_path(&self) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit.jsonl"))
    }
}

impl Component for KmsConfig {
    const NAME: &'static str = "kms";
}

impl Validate for KmsConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        non_empty_path(at, "data_dir", &self.data_dir)?;
        self.quote_provider.validate(&key(at, "quote_provider"))?;
        if let Some(webhook) = &self.webhook {
            webhook.validate(&key(at, "webhook"))?;
        }
        if let Some(path) = &self.audit_log {
            non_empty_path(at, "audit_log", path)?;
        }
        if let Some(url) = &self.onboard_from {
            check(at, "onboard_from", url.require_https())?;
        }
        if !self.verifier.kms_roots.is_empty() {
            // The KMS is the authority kms_roots point to; it decides named app ids by
            // its [policy.apps] tables, so a root here would mean nothing.
            return Err(ConfigError::invalid(
                key(&key(at, "verifier"), "kms_roots"),
                "does not apply to the KMS: it authorises app ids by its [policy.apps] tables",
            ));
        }
        self.limits.validate(&key(at, "limits"))?;
        self.verifier.validate(&key(at, "verifier"))
    }
}

/// OS measurement allowlists (each `"any"` or a list; empty denies).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeasurementPolicy {
    /// Allowed MRTD values.
    pub mrtd: Allowlist<Measurement>,
    /// Allowed RTMR0 values.
    pub rtmr0: Allowlist<Measurement>,
    /// Allowed RTMR1 values.
    pub rtmr1: Allowlist<Measurement>,
    /// Allowed RTMR2 values.
    pub rtmr2: Allowlist<Measurement>,
}

/// `[policy]`: who gets keys. Everything defaults to deny.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmsPolicyConfig {
    /// OS images allowed to run apps.
    pub os: MeasurementPolicy,
    /// Measurements a KMS replica must have to receive the root secret.
    pub kms_measurements: MeasurementPolicy,
    /// Per app id (`[policy.apps.<app-id>]`).
    pub apps: AppPolicies,
}

/// `[policy.apps.<app-id>]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppPolicy {
    /// Compose hashes allowed for this app (default: none).
    pub compose_hashes: Allowlist<ComposeHash>,
    /// Release keys to simulated CVMs (default false).
    pub allow_simulated: bool,
    /// Worst TCB status accepted (default `UpToDate`).
    pub min_tcb_status: TcbStatusName,
}

/// App policies keyed by app id. Keys are normalised (`0x` dropped,
/// lowercase); two keys naming the same app are an error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppPolicies(pub BTreeMap<AppId, AppPolicy>);

impl AppPolicies {
    /// The policy for `app`, if any.
    pub fn get(&self, app: &AppId) -> Option<&AppPolicy> {
        self.0.get(app)
    }

    /// Every app and its policy.
    pub fn iter(&self) -> impl Iterator<Item = (&AppId, &AppPolicy)> {
        self.0.iter()
    }

    /// Number of apps.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no app has a policy.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for AppPolicies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AppsVisitor;

        impl<'de> Visitor<'de> for AppsVisitor {
            type Value = AppPolicies;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of app id to app policy")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AppPolicies, A::Error> {
                let mut apps = BTreeMap::new();
                while let Some(raw) = map.next_key::<String>()? {
                    let id = AppId::parse(&raw).map_err(de::Error::custom)?;
                    let policy = map.next_value::<AppPolicy>()?;
                    if apps.insert(id, policy).is_some() {
                        return Err(de::Error::custom(format!(
                            "app id {raw:?} is listed twice (as {id} after normalising)"
                        )));
                    }
                }
                Ok(AppPolicies(apps))
            }
        }

        deserializer.deserialize_map(AppsVisitor)
    }
}

fn default_webhook_timeout_ms() -> u64 {
    2000
}

/// `[webhook]`: asked to approve each key release.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://`, or `http://` to a loopback host.
    pub url: HttpUrl,
    /// Time to wait for an answer (1 to 60000, default 2000); no answer
    /// denies.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
}

impl Validate for WebhookConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check(at, "url", self.url.require_https_or_loopback())?;
        in_range(at, "timeout_ms", self.timeout_ms, 1..=60_000)
    }
}
