//! How a component verifies a peer's RA-TLS attestation: simulated quotes,
//! acceptable TCB statuses, where collateral comes from, and measurement
//! allowlists (deny by default).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::allowlist::Allowlist;
use crate::error::ConfigError;
use crate::types::{AppId, ComposeHash, FromStrVisitor, HttpUrl, Measurement};
use crate::validate::{check, key, non_empty_path, Validate};

/// A TCB status a verifier may accept. Statuses that are never acceptable
/// (`OutOfDate`, `OutOfDateConfigurationNeeded`, `Revoked`, …) cannot be
/// configured.
///
/// Ordered from best to worst: `UpToDate < SWHardeningNeeded <
/// ConfigurationNeeded < ConfigurationAndSWHardeningNeeded` under `Ord`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcbStatusName {
    /// The platform is fully patched.
    #[default]
    UpToDate,
    /// Patched, but software mitigations are needed.
    SWHardeningNeeded,
    /// Patched, but the platform configuration needs changes.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
}

impl TcbStatusName {
    /// Every configurable status, best first.
    pub const ALL: [TcbStatusName; 4] = [
        TcbStatusName::UpToDate,
        TcbStatusName::SWHardeningNeeded,
        TcbStatusName::ConfigurationNeeded,
        TcbStatusName::ConfigurationAndSWHardeningNeeded,
    ];

    /// The name as Intel's collateral spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TcbStatusName::UpToDate => "UpToDate",
            TcbStatusName::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatusName::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatusName::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
        }
    }

    /// Whether `status` is at least as good as `self` (for a minimum status).
    pub fn admits(self, status: TcbStatusName) -> bool {
        status <= self
    }
}

impl fmt::Display for TcbStatusName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TcbStatusName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TcbStatusName::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not an acceptable TCB status; allowed: {}",
                    TcbStatusName::ALL.map(TcbStatusName::as_str).join(", ")
                )
            })
    }
}

impl<'de> Deserialize<'de> for TcbStatusName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::<TcbStatusName>::new("TCB status"))
    }
}

/// Where quote collateral (TCB info, QE identity, CRLs) comes from. Sources
/// are tried in order: files, the cache, the PCCS.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollateralConfig {
    /// A PCCS (`https://`, or `http://` to a loopback host).
    pub pccs_url: Option<HttpUrl>,
    /// Directory where fetched collateral is cached.
    pub cache_dir: Option<PathBuf>,
    /// Collateral files to load.
    pub files: Vec<PathBuf>,
}

impl Validate for CollateralConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if let Some(url) = &self.pccs_url {
            check(at, "pccs_url", url.require_https_or_loopback())?;
        }
        if let Some(dir) = &self.cache_dir {
            non_empty_path(at, "cache_dir", dir)?;
        }
        for (i, file) in self.files.iter().enumerate() {
            non_empty_path(at, &format!("files[{i}]"), file)?;
        }
        Ok(())
    }
}

/// Most KMS roots a verifier pins.
pub const MAX_KMS_ROOTS: usize = 16;

fn default_tcb_statuses() -> Vec<TcbStatusName> {
    vec![TcbStatusName::UpToDate]
}

/// How to verify a peer's RA-TLS certificate. Every allowlist defaults to
/// an empty list, which denies everything.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    /// Accept quotes signed by the mock (simulated) Intel PKI.
    pub allow_simulated: bool,
    /// TCB statuses to accept.
    pub tcb_statuses: Vec<TcbStatusName>,
    /// Where collateral comes from.
    pub collateral: CollateralConfig,
    /// Allowed MRTD values.
    pub mrtd: Allowlist<Measurement>,
    /// Allowed RTMR0 values.
    pub rtmr0: Allowlist<Measurement>,
    /// Allowed RTMR1 values.
    pub rtmr1: Allowlist<Measurement>,
    /// Allowed RTMR2 values.
    pub rtmr2: Allowlist<Measurement>,
    /// Allowed compose hashes.
    pub compose_hashes: Allowlist<ComposeHash>,
    /// Allowed app ids.
    pub app_ids: Allowlist<AppId>,
    /// KMS root CA certificates (PEM files) trusted to authorise named app ids: an
    /// instance may use an app id that is not its compose hash's own only when its
    /// certificate chains to that app's CA signed by one of these roots.
    pub kms_roots: Vec<PathBuf>,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            allow_simulated: false,
            tcb_statuses: default_tcb_statuses(),
            collateral: CollateralConfig::default(),
            mrtd: Allowlist::default(),
            rtmr0: Allowlist::default(),
            rtmr1: Allowlist::default(),
            rtmr2: Allowlist::default(),
            compose_hashes: Allowlist::default(),
            app_ids: Allowlist::default(),
            kms_roots: Vec::new(),
        }
    }
}

impl VerifierConfig {
    /// Whether a quote with this TCB status is accepted.
    pub fn accepts_tcb_status(&self, status: TcbStatusName) -> bool {
        self.tcb_statuses.contains(&status)
    }
}

impl Validate for VerifierConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.tcb_statuses.is_empty() {
            return Err(ConfigError::invalid(
                key(at, "tcb_statuses"),
                "must list at least one status (for example [\"UpToDate\"])",
            ));
        }
        for (i, file) in self.kms_roots.iter().enumerate() {
            non_empty_path(at, &format!("kms_roots[{i}]"), file)?;
        }
        if self.kms_roots.len() > MAX_KMS_ROOTS {
            return Err(ConfigError::invalid(
                key(at, "kms_roots"),
                format!("at most {MAX_KMS_ROOTS} KMS roots"),
            ));
        }
        self.collateral.validate(&key(at, "collateral"))
    }
}
