//! Verification walked link by link, for people: the same steps as
//! [`AttestationVerifier::verify`](crate::AttestationVerifier::verify), which is built on
//! this, but every step's outcome is kept together with the values that explain it. Steps
//! whose inputs could not be trusted are reported as not checked rather than skipped
//! silently. The attestation page renders an [`Inspection`].

use serde::Serialize;

use crate::cert::claims::AppClaims;
use crate::error::{Reason, Step, VerifyError};
use crate::quote::Quote;
use crate::tcb::TcbStatus;
use crate::types::{AppId, ComposeHash, Fingerprint, InstanceId, Measurement, ReportData};
use crate::verifier::VerifiedAttestation;

/// How one link of the chain of trust came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    Verified {
        detail: String,
    },
    Failed {
        reason: String,
    },
    /// Could not be judged because an earlier link failed; `why` says which.
    NotChecked {
        why: String,
    },
}

impl Outcome {
    pub fn is_verified(&self) -> bool {
        matches!(self, Outcome::Verified { .. })
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Verified { .. } => "verified",
            Outcome::Failed { .. } => "failed",
            Outcome::NotChecked { .. } => "not checked",
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Outcome::Verified { detail } => detail,
            Outcome::Failed { reason } => reason,
            Outcome::NotChecked { why } => why,
        }
    }
}

/// One verification step and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub step: Step,
    pub title: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The certificate as decoded (nothing here is trusted by itself).
#[derive(Debug, Clone, Serialize)]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    pub self_issued: bool,
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
}

/// What the app claims in its certificate (trusted only once the event log replays).
#[derive(Debug, Clone, Serialize)]
pub struct ClaimFacts {
    pub app_id: AppId,
    pub compose_hash: ComposeHash,
    pub instance_id: InstanceId,
    pub simulated: bool,
}

impl From<&AppClaims> for ClaimFacts {
    fn from(c: &AppClaims) -> Self {
        Self {
            app_id: c.app_id,
            compose_hash: c.compose_hash,
            instance_id: c.instance_id,
            simulated: c.simulated,
        }
    }
}

/// The TD quote's fields.
#[derive(Debug, Clone, Serialize)]
pub struct QuoteFacts {
    /// e.g. "TDX quote v4, TD report 1.0"
    pub kind: String,
    pub mrtd: Measurement,
    pub rtmrs: [Measurement; 4],
    pub report_data: ReportData,
    pub debug: bool,
}

impl From<&Quote> for QuoteFacts {
    fn from(q: &Quote) -> Self {
        Self {
            kind: format!(
                "TDX quote v{}, TD report {}",
                q.version(),
                q.td_report_version()
            ),
            mrtd: q.mrtd(),
            rtmrs: q.rtmrs(),
            report_data: q.report_data(),
            debug: q.is_debug(),
        }
    }
}

/// One event of the RTMR3 log and the register's value after it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayRow {
    pub name: String,
    /// The payload as text when it is printable UTF-8.
    pub payload_text: Option<String>,
    pub payload_hex: String,
    pub digest: Measurement,
    pub rtmr3_after: Measurement,
}

/// Every step of one verification: of a certificate (the default verdict type), or of
/// other evidence judged by the same steps (the gateway's, [`crate::gateway_evidence`]).
#[derive(Debug, Clone, Serialize)]
pub struct Inspection<V = VerifiedAttestation> {
    pub fingerprint: Option<Fingerprint>,
    pub certificate: Option<CertFacts>,
    pub claims: Option<ClaimFacts>,
    pub quote: Option<QuoteFacts>,
    pub simulated: Option<bool>,
    pub tcb_status: Option<TcbStatus>,
    pub advisory_ids: Vec<String>,
    /// The report data the certificate's key and claims call for.
    pub expected_report_data: Option<ReportData>,
    pub replay: Vec<ReplayRow>,
    pub replayed_rtmr3: Option<Measurement>,
    pub checks: Vec<Check>,
    #[serde(skip)]
    pub(crate) verdict: Result<V, VerifyError>,
}

/// The order and titles of the steps, as shown.
pub(crate) const STEPS: [(Step, &str); 7] = [
    (
        Step::Parse,
        "Certificate and evidence decode, and the certificate is valid now",
    ),
    (
        Step::QuoteSignature,
        "Quote signed by the TDX attestation key, chained to Intel's root",
    ),
    (
        Step::TcbStatus,
        "Platform TCB status accepted, not a debug TD",
    ),
    (
        Step::KeyBinding,
        "Quote report data binds this certificate's key and claims",
    ),
    (
        Step::EventLogReplay,
        "RTMR3 event log replays to the quoted RTMR3 and matches the claims",
    ),
    (
        Step::AppAuthorisation,
        "App id authorised for this compose hash (content-addressed, or by a pinned KMS)",
    ),
    (
        Step::Policy,
        "Measurements, app id and compose hash allowed by policy",
    ),
];

impl<V> Inspection<V> {
    pub(crate) fn new() -> Self {
        Self {
            fingerprint: None,
            certificate: None,
            claims: None,
            quote: None,
            simulated: None,
            tcb_status: None,
            advisory_ids: Vec::new(),
            expected_report_data: None,
            replay: Vec::new(),
            replayed_rtmr3: None,
            checks: STEPS
                .iter()
                .map(|&(step, title)| Check {
                    step,
                    title,
                    outcome: Outcome::NotChecked {
                        why: "not reached".into(),
                    },
                })
                .collect(),
            // Replaced by the verifier before it hands the inspection out.
            verdict: Err(VerifyError::new(
                Step::Parse,
                Reason::Certificate("not inspected".into()),
            )),
        }
    }

    pub(crate) fn set(&mut self, step: Step, outcome: Outcome) {
        if let Some(c) = self.checks.iter_mut().find(|c| c.step == step) {
            // A later finding can only make a step worse, never clear a failure.
            if !matches!(c.outcome, Outcome::Failed { .. }) {
                c.outcome = outcome;
            }
        }
    }

    /// Renames a step for evidence that is not a certificate (the gateway's).
    pub(crate) fn retitle(&mut self, step: Step, title: &'static str) {
        if let Some(c) = self.checks.iter_mut().find(|c| c.step == step) {
            c.title = title;
        }
    }

    /// Lists the `freshness` step (after `key-binding`) for a verifier that expects a nonce.
    pub(crate) fn add_freshness(&mut self) {
        if self.check(Step::Freshness).is_some() {
            return;
        }
        let at = self
            .checks
            .iter()
            .position(|c| c.step == Step::KeyBinding)
            .map_or(self.checks.len(), |i| i + 1);
        self.checks.insert(
            at,
            Check {
                step: Step::Freshness,
                title: "Claims buffer carries the nonce this client sent (a fresh quote)",
                outcome: Outcome::NotChecked {
                    why: "not reached".into(),
                },
            },
        );
    }

    pub(crate) fn not_checked_from(&mut self, steps: &[Step], why: &str) {
        for &s in steps {
            self.set(s, Outcome::NotChecked { why: why.into() });
        }
    }

    /// The outcome of one step.
    pub fn check(&self, step: Step) -> Option<&Check> {
        self.checks.iter().find(|c| c.step == step)
    }

    /// True when every step verified.
    pub fn passed(&self) -> bool {
        self.verdict.is_ok()
    }

    /// The verdict `verify` gives for the same certificate at the same time.
    pub fn verdict(&self) -> Result<&V, &VerifyError> {
        self.verdict.as_ref()
    }

    pub fn into_verdict(self) -> Result<V, VerifyError> {
        self.verdict
    }

    pub(crate) fn replay_from(&mut self, claims: &AppClaims) {
        self.replay = claims
            .event_log
            .replay_steps()
            .into_iter()
            .map(|s| ReplayRow {
                name: s.event.name.clone(),
                payload_text: std::str::from_utf8(&s.event.payload)
                    .ok()
                    .filter(|t| !t.is_empty() && t.chars().all(|c| !c.is_control()))
                    .map(str::to_string),
                payload_hex: hex::encode(&s.event.payload),
                digest: s.digest,
                rtmr3_after: s.rtmr3,
            })
            .collect();
        self.replayed_rtmr3 = Some(claims.event_log.replay());
    }
}
