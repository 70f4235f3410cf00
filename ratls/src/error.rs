//! Verification errors as data: each names the step that failed and carries what was
//! expected and what was found, so a log line or the attestation page can say exactly why.

use std::fmt;

use serde::Serialize;

use crate::tcb::TcbStatus;
use crate::types::Measurement;

/// The steps of RA-TLS verification, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Certificate, extension, evidence or quote bytes could not be decoded.
    Parse,
    /// The quote's signature chain, collateral or trust anchor did not check out.
    QuoteSignature,
    /// The TCB status (or a debug TD) is not accepted by policy.
    TcbStatus,
    /// The quote's report data does not bind the certificate's public key.
    KeyBinding,
    /// The claims buffer lacks the nonce this client sent (checked only when one was sent).
    Freshness,
    /// The event log does not replay to RTMR3, or the claims disagree with it.
    EventLogReplay,
    /// The app id is not authorised for the compose hash: neither content-addressed nor
    /// vouched for by a pinned KMS root (through the app's CA).
    AppAuthorisation,
    /// A measurement, app id or compose hash is not in the allowlist.
    Policy,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Parse => "parse",
            Step::QuoteSignature => "quote-signature",
            Step::TcbStatus => "tcb-status",
            Step::KeyBinding => "key-binding",
            Step::Freshness => "freshness",
            Step::EventLogReplay => "event-log-replay",
            Step::AppAuthorisation => "app-authorisation",
            Step::Policy => "policy",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why verification failed, with the values that explain it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("certificate has no {0} extension")]
    MissingExtension(&'static str),
    #[error("evidence: {0}")]
    Evidence(String),
    #[error("certificate has no teegate app claims: its CCC claims buffer has no \"teegate-claims\" key (a CCC RA-TLS certificate from another implementation)")]
    NoAppClaims,
    #[error("quote: {0}")]
    Quote(String),
    #[error(
        "quote is SIMULATED (signed by teegate's simulated TDX PKI) and allow_simulated is false"
    )]
    SimulatedNotAllowed,
    #[error("claims say simulated = {claimed} but the quote is {actual}")]
    SimulatedFlagMismatch { claimed: bool, actual: &'static str },
    #[error("no collateral: {0}")]
    Collateral(String),
    #[error("DCAP verification failed: {0}")]
    Dcap(String),
    #[error("TCB status {status} is not allowed (allowed: {allowed}); advisories: [{advisories}]")]
    TcbNotAllowed {
        status: TcbStatus,
        allowed: String,
        advisories: String,
    },
    #[error("the TD runs in DEBUG mode (td_attributes.debug = 1); debug TDs are never trusted")]
    DebugTd,
    #[error(
        "report_data does not bind this certificate's key: expected {expected}, quote has {found}"
    )]
    ReportDataMismatch { expected: String, found: String },
    #[error(
        "claims-buffer pubkey-hash {found} does not match the certificate key's hash {expected}"
    )]
    PubkeyHashMismatch { expected: String, found: String },
    #[error(
        "the certificate carries no nonce, but this client asked for a fresh quote over {expected}"
    )]
    NoNonce { expected: String },
    #[error("the certificate's nonce {found} is not the {expected} this client sent: a replayed certificate")]
    NonceMismatch { expected: String, found: String },
    #[error("event log replays to RTMR3 {replayed} but the quote has {quoted}")]
    Rtmr3Mismatch {
        replayed: Measurement,
        quoted: Measurement,
    },
    #[error("event log: {0}")]
    EventLog(String),
    #[error("claim {claim} is {claimed} but the event log records {logged}")]
    ClaimMismatch {
        claim: &'static str,
        claimed: String,
        logged: String,
    },
    #[error("app id {app} is not authorised for compose hash {compose}: {why}")]
    AppNotAuthorised {
        app: String,
        compose: String,
        why: String,
    },
    #[error("{what} {value} is not in the allowlist")]
    NotAllowed { what: &'static str, value: String },
}

/// A failed RA-TLS or quote verification: the step and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RA-TLS verification failed at {step}: {reason}")]
pub struct VerifyError {
    pub step: Step,
    pub reason: Reason,
}

impl VerifyError {
    pub fn new(step: Step, reason: Reason) -> Self {
        Self { step, reason }
    }

    pub(crate) fn parse(reason: Reason) -> Self {
        Self::new(Step::Parse, reason)
    }
}
