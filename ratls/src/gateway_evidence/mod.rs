//! The gateway's own evidence: what a TLS-terminating gateway publishes at
//! `/.well-known/teegate/gateway` so that a client can check that the certificate it
//! received belongs to attested code. Browsers cannot check RA-TLS, so the terminator
//! proves itself this way instead of through its certificates.
//!
//! The evidence is a TDX quote whose `report_data[0..32] = SHA-256(claims-buffer)` (the
//! CCC convention RA-TLS certificates use, rest zero), the claims buffer itself, the RTMR3
//! event log (dstack entries, [`crate::eventlog`]) and the identity the log records. The
//! claims buffer is one CBOR map (CDDL):
//!
//! ```text
//! claims-buffer = {
//!   "teegate-gateway": {
//!     "keys": [* {                                   ; every key the gateway holds
//!       "role": "certificate" / "acme-account",
//!       "name": tstr,                                ; certificate name / ACME account URL
//!       "spki-sha256": bstr .size 32,                ; SHA-256 of its SubjectPublicKeyInfo DER
//!     }],
//!     "issued-at": uint,                             ; unix seconds, when the gateway quoted
//!   },
//!   ? "nonce": bstr .size (0..64),                   ; CCC: a verifier's nonce
//!   * tstr => any,                                   ; other keys are listed, not refused
//! }
//! ```
//!
//! The app id, compose hash and instance id travel beside the quote, not in the buffer:
//! they are believed only once the event log replays to the quoted RTMR3 and records them,
//! exactly as for an RA-TLS certificate's claims. Verification ([`verify`]) runs the same
//! steps as a certificate's ([`crate::AttestationVerifier`]) and names its failures with
//! three steps of its own ([`GatewayStep`]).
//!
//! Every size is checked before decoding: the JSON document against
//! [`MAX_DOCUMENT_LEN`], the quote against [`crate::quote::MAX_QUOTE_LEN`], the claims
//! buffer against [`crate::cert::claims::MAX_CLAIMS_LEN`], the key list against
//! [`MAX_BOUND_KEYS`].

mod claims;
#[cfg(test)]
mod tests;
pub mod verify;

pub use claims::{BoundKey, GatewayClaims, KeyRole, GATEWAY_KEY, MAX_BOUND_KEYS, MAX_KEY_NAME_LEN};
pub use verify::VerifiedGateway;

use serde::{Deserialize, Serialize};

use crate::cert::claims::{AppClaims, MAX_CLAIMS_LEN};
use crate::error::VerifyError;
use crate::eventlog::EventLog;
use crate::quote::MAX_QUOTE_LEN;
use crate::types::{AppId, ComposeHash, InstanceId, SpkiHash};

/// Where a gateway publishes its evidence, on its base domain.
pub const WELL_KNOWN_PATH: &str = "/.well-known/teegate/gateway";
/// Largest evidence document read: a quote and a claims buffer at their limits as hex,
/// and a full event log, with room to spare.
pub const MAX_DOCUMENT_LEN: usize = 2 * (MAX_QUOTE_LEN + MAX_CLAIMS_LEN) + 1024 * 1024;
/// The words every surface uses for an unattested gateway.
pub const NOT_ATTESTED: &str = "this gateway is not attested: its operator can read the traffic";

/// The gateway evidence as published (JSON; bytes as lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayEvidence {
    #[serde(with = "crate::hexser")]
    pub quote: Vec<u8>,
    #[serde(with = "crate::hexser")]
    pub claims_buffer: Vec<u8>,
    pub event_log: EventLog,
    pub app_id: AppId,
    pub compose_hash: ComposeHash,
    pub instance_id: InstanceId,
    pub simulated: bool,
}

impl GatewayEvidence {
    /// The identity claims, to be checked against the replayed event log.
    pub(crate) fn app_claims(&self) -> AppClaims {
        AppClaims {
            app_id: self.app_id,
            compose_hash: self.compose_hash,
            instance_id: self.instance_id,
            event_log: self.event_log.clone(),
            simulated: self.simulated,
        }
    }

    /// Checks the sizes a verifier bounds, so a document that decoded is also small.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self.quote.len() > MAX_QUOTE_LEN {
            return Err(format!(
                "the quote is {} bytes, over the {MAX_QUOTE_LEN}-byte limit",
                self.quote.len()
            ));
        }
        if self.claims_buffer.len() > MAX_CLAIMS_LEN {
            return Err(format!(
                "the claims buffer is {} bytes, over the {MAX_CLAIMS_LEN}-byte limit",
                self.claims_buffer.len()
            ));
        }
        self.event_log
            .validate()
            .map_err(|e| format!("event log: {e}"))
    }
}

/// Quotes `claims` through a measurer in this TD (the in-process path; a gateway beside a
/// sidecar asks the guest API's `/quote` for the same thing). The claims buffer is what
/// the quote's report data binds.
pub fn quote_in_process(
    measurer: &crate::provider::Measurer,
    identity: &crate::cert::Identity,
    claims: &GatewayClaims,
) -> Result<GatewayEvidence, String> {
    let claims_buffer = claims.to_claims_buffer().map_err(|e| e.0)?;
    let rd = crate::cert::evidence::report_data_for(&claims_buffer);
    let (quote, event_log) = measurer.quote(&rd).map_err(|e| e.to_string())?;
    Ok(GatewayEvidence {
        quote,
        claims_buffer,
        event_log,
        app_id: identity.app_id,
        compose_hash: identity.compose_hash,
        instance_id: identity.instance_id,
        simulated: measurer.kind() == crate::provider::ProviderKind::Simulated,
    })
}

/// What `GET /.well-known/teegate/gateway` answers: the evidence of an attested gateway,
/// or `attested: false` and why it cannot be trusted with the traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayDocument {
    pub attested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<GatewayEvidence>,
    /// The claims buffer decoded, for people reading the JSON. Verifiers ignore it and
    /// decode `evidence.claims_buffer` themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<GatewayClaims>,
}

impl GatewayDocument {
    pub fn unattested() -> Self {
        Self {
            attested: false,
            note: Some(NOT_ATTESTED.into()),
            evidence: None,
            claims: None,
        }
    }

    pub fn attested(evidence: GatewayEvidence, claims: GatewayClaims) -> Self {
        Self {
            attested: true,
            note: None,
            evidence: Some(evidence),
            claims: Some(claims),
        }
    }

    /// Reads a document from untrusted bytes, refusing oversize input before decoding.
    pub fn from_json(bytes: &[u8]) -> Result<Self, GatewayError> {
        let bad =
            |m: String| GatewayError::new(GatewayStep::GatewayQuote, GatewayReason::Evidence(m));
        if bytes.len() > MAX_DOCUMENT_LEN {
            return Err(bad(format!(
                "the evidence document is {} bytes, over the {MAX_DOCUMENT_LEN}-byte limit",
                bytes.len()
            )));
        }
        let doc: Self = serde_json::from_slice(bytes).map_err(|e| bad(format!("JSON: {e}")))?;
        if let Some(ev) = &doc.evidence {
            ev.check_bounds().map_err(bad)?;
        }
        Ok(doc)
    }

    /// The evidence, or the refusal an unattested gateway earns.
    pub fn into_evidence(self) -> Result<GatewayEvidence, GatewayError> {
        match (self.attested, self.evidence) {
            (true, Some(ev)) => Ok(ev),
            (true, None) => Err(GatewayError::new(
                GatewayStep::GatewayQuote,
                GatewayReason::Evidence("attested is true but there is no evidence".into()),
            )),
            (false, _) => Err(GatewayError::new(
                GatewayStep::GatewayQuote,
                GatewayReason::NotAttested {
                    note: self.note.unwrap_or_else(|| NOT_ATTESTED.into()),
                },
            )),
        }
    }
}

/// The steps of checking a terminating gateway, after the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayStep {
    /// The evidence is missing or malformed, or its quote, claims or event log do not
    /// verify (the RA-TLS step that failed is named inside).
    GatewayQuote,
    /// The certificate the client received is not one whose key the evidence binds.
    GatewayKeyBinding,
    /// The gateway's compose hash, app id or measurements are not the pinned ones.
    GatewayPin,
}

impl GatewayStep {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayStep::GatewayQuote => "gateway-quote",
            GatewayStep::GatewayKeyBinding => "gateway-key-binding",
            GatewayStep::GatewayPin => "gateway-pin",
        }
    }

    /// Where a failure of the shared RA-TLS steps belongs: a pin (`policy`) is
    /// `gateway-pin`, anything else means the evidence does not hold (`gateway-quote`).
    pub fn of(step: crate::Step) -> Self {
        match step {
            crate::Step::Policy => GatewayStep::GatewayPin,
            _ => GatewayStep::GatewayQuote,
        }
    }
}

impl std::fmt::Display for GatewayStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a gateway check failed, with the values that explain it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayReason {
    #[error("{note}")]
    NotAttested { note: String },
    #[error("evidence: {0}")]
    Evidence(String),
    #[error("{0}")]
    Verify(VerifyError),
    #[error("the certificate received (key SHA-256 {received}) is not one the gateway's quote binds; it binds {}", bound_list(.bound))]
    NotBound {
        received: SpkiHash,
        bound: Vec<String>,
    },
}

fn bound_list(bound: &[String]) -> String {
    if bound.is_empty() {
        return "no key".into();
    }
    let shown: Vec<&str> = bound.iter().take(8).map(String::as_str).collect();
    let more = bound.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// A failed gateway check: the step and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gateway verification failed at {step}: {reason}")]
pub struct GatewayError {
    pub step: GatewayStep,
    pub reason: GatewayReason,
}

impl GatewayError {
    pub fn new(step: GatewayStep, reason: GatewayReason) -> Self {
        Self { step, reason }
    }
}

impl From<VerifyError> for GatewayError {
    fn from(e: VerifyError) -> Self {
        Self::new(GatewayStep::of(e.step), GatewayReason::Verify(e))
    }
}
