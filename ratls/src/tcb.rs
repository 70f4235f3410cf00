//! TCB status as reported by Intel's collateral, and the policy of which statuses pass.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The TCB status of a verified quote (platform and QE converged, as dcap-qvl reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TcbStatus {
    UpToDate,
    SWHardeningNeeded,
    ConfigurationNeeded,
    ConfigurationAndSWHardeningNeeded,
    OutOfDate,
    OutOfDateConfigurationNeeded,
    TDRelaunchAdvised,
    TDRelaunchAdvisedConfigurationNeeded,
    Revoked,
}

impl TcbStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::TDRelaunchAdvised => "TDRelaunchAdvised",
            TcbStatus::TDRelaunchAdvisedConfigurationNeeded => {
                "TDRelaunchAdvisedConfigurationNeeded"
            }
            TcbStatus::Revoked => "Revoked",
        }
    }

    /// Statuses an operator may choose to accept. Out-of-date and revoked platforms can
    /// never be configured to pass.
    pub fn is_acceptable_by_policy(self) -> bool {
        matches!(
            self,
            TcbStatus::UpToDate
                | TcbStatus::SWHardeningNeeded
                | TcbStatus::ConfigurationNeeded
                | TcbStatus::ConfigurationAndSWHardeningNeeded
        )
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown TCB status name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TCB status {0:?}")]
pub struct UnknownTcbStatus(pub String);

impl FromStr for TcbStatus {
    type Err = UnknownTcbStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "UpToDate" => TcbStatus::UpToDate,
            "SWHardeningNeeded" => TcbStatus::SWHardeningNeeded,
            "ConfigurationNeeded" => TcbStatus::ConfigurationNeeded,
            "ConfigurationAndSWHardeningNeeded" => TcbStatus::ConfigurationAndSWHardeningNeeded,
            "OutOfDate" => TcbStatus::OutOfDate,
            "OutOfDateConfigurationNeeded" => TcbStatus::OutOfDateConfigurationNeeded,
            "TDRelaunchAdvised" => TcbStatus::TDRelaunchAdvised,
            "TDRelaunchAdvisedConfigurationNeeded" => {
                TcbStatus::TDRelaunchAdvisedConfigurationNeeded
            }
            "Revoked" => TcbStatus::Revoked,
            other => return Err(UnknownTcbStatus(other.to_string())),
        })
    }
}

impl From<dcap_qvl::TcbStatus> for TcbStatus {
    fn from(s: dcap_qvl::TcbStatus) -> Self {
        use dcap_qvl::TcbStatus as D;
        match s {
            D::UpToDate => TcbStatus::UpToDate,
            D::SWHardeningNeeded => TcbStatus::SWHardeningNeeded,
            D::ConfigurationNeeded => TcbStatus::ConfigurationNeeded,
            D::ConfigurationAndSWHardeningNeeded => TcbStatus::ConfigurationAndSWHardeningNeeded,
            D::OutOfDate => TcbStatus::OutOfDate,
            D::OutOfDateConfigurationNeeded => TcbStatus::OutOfDateConfigurationNeeded,
            D::TDRelaunchAdvised => TcbStatus::TDRelaunchAdvised,
            D::TDRelaunchAdvisedConfigurationNeeded => {
                TcbStatus::TDRelaunchAdvisedConfigurationNeeded
            }
            D::Revoked => TcbStatus::Revoked,
        }
    }
}

/// Which TCB statuses pass. Default: `UpToDate` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbPolicy {
    allowed: BTreeSet<TcbStatus>,
}

/// A status that no policy may accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TCB status {0} cannot be allowed by policy")]
pub struct UnacceptableStatus(pub TcbStatus);

impl TcbPolicy {
    /// A policy accepting exactly these statuses. Only `UpToDate`, `SWHardeningNeeded`,
    /// `ConfigurationNeeded` and `ConfigurationAndSWHardeningNeeded` may be listed.
    pub fn allowing(
        statuses: impl IntoIterator<Item = TcbStatus>,
    ) -> Result<Self, UnacceptableStatus> {
        let mut allowed = BTreeSet::new();
        for s in statuses {
            if !s.is_acceptable_by_policy() {
                return Err(UnacceptableStatus(s));
            }
            allowed.insert(s);
        }
        Ok(Self { allowed })
    }

    pub fn allows(&self, status: TcbStatus) -> bool {
        self.allowed.contains(&status)
    }

    pub fn describe(&self) -> String {
        self.allowed
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Default for TcbPolicy {
    fn default() -> Self {
        Self {
            allowed: BTreeSet::from([TcbStatus::UpToDate]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_allows_only_up_to_date() {
        let p = TcbPolicy::default();
        assert!(p.allows(TcbStatus::UpToDate));
        assert!(!p.allows(TcbStatus::SWHardeningNeeded));
        assert!(!p.allows(TcbStatus::OutOfDate));
    }

    #[test]
    fn refuses_to_allow_out_of_date_or_revoked() {
        assert!(TcbPolicy::allowing([TcbStatus::OutOfDate]).is_err());
        assert!(TcbPolicy::allowing([TcbStatus::Revoked]).is_err());
        let p = TcbPolicy::allowing([TcbStatus::UpToDate, TcbStatus::SWHardeningNeeded]).unwrap();
        assert!(p.allows(TcbStatus::SWHardeningNeeded));
    }

    #[test]
    fn names_roundtrip() {
        for s in [
            TcbStatus::UpToDate,
            TcbStatus::TDRelaunchAdvised,
            TcbStatus::Revoked,
        ] {
            assert_eq!(s.as_str().parse::<TcbStatus>().unwrap(), s);
        }
        assert!("Fine".parse::<TcbStatus>().is_err());
    }
}
