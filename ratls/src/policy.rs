//! What an attested peer must be to be trusted: TCB statuses, whether simulated quotes
//! count, and allowlists of measurements, compose hashes and app ids. Deny by default:
//! an empty allowlist admits nothing; `Allowlist::Any` must be chosen explicitly.

use std::collections::BTreeSet;

use crate::error::{Reason, Step, VerifyError};
use crate::tcb::TcbPolicy;
use crate::types::{AppId, ComposeHash, Measurement};

/// Either any value, or only the listed ones (possibly none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowlist<T: Ord> {
    Any,
    Only(BTreeSet<T>),
}

impl<T: Ord> Default for Allowlist<T> {
    fn default() -> Self {
        Allowlist::Only(BTreeSet::new())
    }
}

impl<T: Ord> Allowlist<T> {
    pub fn only(items: impl IntoIterator<Item = T>) -> Self {
        Allowlist::Only(items.into_iter().collect())
    }

    pub fn allows(&self, v: &T) -> bool {
        match self {
            Allowlist::Any => true,
            Allowlist::Only(set) => set.contains(v),
        }
    }

    pub fn describe(&self) -> String
    where
        T: std::fmt::Display,
    {
        match self {
            Allowlist::Any => "any".into(),
            Allowlist::Only(set) if set.is_empty() => "none (deny)".into(),
            Allowlist::Only(set) => format!("{} value(s)", set.len()),
        }
    }
}

/// The verification policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub tcb: TcbPolicy,
    pub allow_simulated: bool,
    pub mrtd: Allowlist<Measurement>,
    pub rtmr0: Allowlist<Measurement>,
    pub rtmr1: Allowlist<Measurement>,
    pub rtmr2: Allowlist<Measurement>,
    pub compose_hashes: Allowlist<ComposeHash>,
    pub app_ids: Allowlist<AppId>,
    /// Service → the image content id (`sha256:<64 hex>`) its RTMR3 `image` event must
    /// record. Empty: images are not pinned.
    pub images: std::collections::BTreeMap<String, String>,
}

/// The values a policy judges.
pub struct Subject<'a> {
    pub mrtd: &'a Measurement,
    pub rtmrs: &'a [Measurement; 4],
    pub compose_hash: &'a ComposeHash,
    pub app_id: &'a AppId,
    /// The replayed (so trusted) RTMR3 event log.
    pub event_log: &'a crate::eventlog::EventLog,
}

impl Policy {
    /// Accepts any measurements, app and compose hash (TCB and simulation rules still
    /// apply). For development and for tools that only report what they see.
    pub fn any_measurements() -> Self {
        Self {
            mrtd: Allowlist::Any,
            rtmr0: Allowlist::Any,
            rtmr1: Allowlist::Any,
            rtmr2: Allowlist::Any,
            compose_hashes: Allowlist::Any,
            app_ids: Allowlist::Any,
            ..Self::default()
        }
    }

    pub fn check(&self, s: &Subject<'_>) -> Result<(), VerifyError> {
        fn check<T: Ord + std::fmt::Display>(
            list: &Allowlist<T>,
            what: &'static str,
            v: &T,
        ) -> Result<(), VerifyError> {
            if list.allows(v) {
                Ok(())
            } else {
                Err(VerifyError::new(
                    Step::Policy,
                    Reason::NotAllowed {
                        what,
                        value: v.to_string(),
                    },
                ))
            }
        }
        check(&self.mrtd, "MRTD", s.mrtd)?;
        check(&self.rtmr0, "RTMR0", &s.rtmrs[0])?;
        check(&self.rtmr1, "RTMR1", &s.rtmrs[1])?;
        check(&self.rtmr2, "RTMR2", &s.rtmrs[2])?;
        check(&self.app_ids, "app id", s.app_id)?;
        check(&self.compose_hashes, "compose hash", s.compose_hash)?;
        for (service, id) in &self.images {
            let want = format!("{service}@{id}");
            let prefix = format!("{service}@");
            let logged: Vec<String> = s
                .event_log
                .payloads(crate::eventlog::names::IMAGE)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            if !logged.contains(&want) {
                let found = logged
                    .iter()
                    .find(|l| l.starts_with(&prefix))
                    .cloned()
                    .unwrap_or_else(|| format!("no image event for service {service}"));
                return Err(VerifyError::new(
                    Step::Policy,
                    Reason::NotAllowed {
                        what: "image",
                        value: format!("{found} (pinned {want})"),
                    },
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject<'a>(
        m: &'a Measurement,
        r: &'a [Measurement; 4],
        c: &'a ComposeHash,
        a: &'a AppId,
    ) -> Subject<'a> {
        static EMPTY: std::sync::OnceLock<crate::eventlog::EventLog> = std::sync::OnceLock::new();
        Subject {
            mrtd: m,
            rtmrs: r,
            compose_hash: c,
            app_id: a,
            event_log: EMPTY.get_or_init(Default::default),
        }
    }

    #[test]
    fn default_policy_denies_everything() {
        let (m, r, c, a) = (
            Measurement::ZERO,
            [Measurement::ZERO; 4],
            ComposeHash([0; 32]),
            AppId([0; 20]),
        );
        let err = Policy::default()
            .check(&subject(&m, &r, &c, &a))
            .unwrap_err();
        assert_eq!(err.step, Step::Policy);
        assert!(err.to_string().contains("MRTD"));
    }

    #[test]
    fn names_the_value_not_allowed() {
        let (m, r, c, a) = (
            Measurement::ZERO,
            [Measurement::ZERO; 4],
            ComposeHash([1; 32]),
            AppId([0; 20]),
        );
        let mut p = Policy::any_measurements();
        p.compose_hashes = Allowlist::only([ComposeHash([2; 32])]);
        let err = p.check(&subject(&m, &r, &c, &a)).unwrap_err();
        assert!(err.to_string().contains(&"01".repeat(32)), "{err}");
        p.compose_hashes = Allowlist::only([ComposeHash([1; 32])]);
        p.check(&subject(&m, &r, &c, &a)).unwrap();
    }
}
