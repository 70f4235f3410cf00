//! Verifying a gateway's evidence with the steps every RA-TLS certificate goes through
//! (quote signature, TCB status, key binding of the claims buffer, event-log replay, app
//! authorisation, policy), then the key binding of the certificate a client received.
//! [`VerifiedGateway`] is made only here.

use serde::Serialize;

use super::{BoundKey, GatewayClaims, GatewayError, GatewayEvidence, GatewayReason, GatewayStep};
use crate::authorise::Authorised;
use crate::error::{Reason, Step, VerifyError};
use crate::eventlog::EventLog;
use crate::inspect::{Inspection, Outcome};
use crate::tcb::TcbStatus;
use crate::types::{AppId, ComposeHash, InstanceId, Measurement, SpkiHash};
use crate::verifier::{check_report_data, AttestationVerifier, Evidence, Run};

/// What a verified gateway evidence attests. Only [`AttestationVerifier`] constructs it.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedGateway {
    app_id: AppId,
    compose_hash: ComposeHash,
    instance_id: InstanceId,
    mrtd: Measurement,
    rtmrs: [Measurement; 4],
    tcb_status: TcbStatus,
    advisory_ids: Vec<String>,
    simulated: bool,
    event_log: EventLog,
    authorised: Authorised,
    claims: GatewayClaims,
    /// Unix seconds after which this verdict must be re-checked (collateral expiry).
    valid_until: u64,
}

impl VerifiedGateway {
    pub fn app_id(&self) -> &AppId {
        &self.app_id
    }
    pub fn compose_hash(&self) -> &ComposeHash {
        &self.compose_hash
    }
    pub fn instance_id(&self) -> &InstanceId {
        &self.instance_id
    }
    pub fn mrtd(&self) -> &Measurement {
        &self.mrtd
    }
    pub fn rtmrs(&self) -> &[Measurement; 4] {
        &self.rtmrs
    }
    pub fn tcb_status(&self) -> TcbStatus {
        self.tcb_status
    }
    pub fn advisory_ids(&self) -> &[String] {
        &self.advisory_ids
    }
    pub fn is_simulated(&self) -> bool {
        self.simulated
    }
    pub fn event_log(&self) -> &EventLog {
        &self.event_log
    }
    pub fn authorised(&self) -> &Authorised {
        &self.authorised
    }
    /// The keys the quote binds, when it was made and over which nonce.
    pub fn claims(&self) -> &GatewayClaims {
        &self.claims
    }
    pub fn valid_until(&self) -> u64 {
        self.valid_until
    }

    /// Step `gateway-key-binding`: the certificate a client received (DER) has a key this
    /// evidence binds as a served certificate.
    pub fn binding_of_certificate(&self, cert_der: &[u8]) -> Result<&BoundKey, GatewayError> {
        let spki = SpkiHash::of_certificate(cert_der).ok_or_else(|| {
            GatewayError::new(
                GatewayStep::GatewayKeyBinding,
                GatewayReason::Evidence("the received certificate does not decode".into()),
            )
        })?;
        self.binding_of(&spki)
    }

    /// Step `gateway-key-binding` for a SubjectPublicKeyInfo hash.
    pub fn binding_of(&self, spki: &SpkiHash) -> Result<&BoundKey, GatewayError> {
        self.claims
            .keys
            .iter()
            .find(|k| k.spki_sha256 == *spki && k.role == super::KeyRole::Certificate)
            .ok_or_else(|| {
                GatewayError::new(
                    GatewayStep::GatewayKeyBinding,
                    GatewayReason::NotBound {
                        received: *spki,
                        bound: self
                            .claims
                            .keys
                            .iter()
                            .filter(|k| k.role == super::KeyRole::Certificate)
                            .map(|k| format!("{} ({})", k.name, k.spki_sha256))
                            .collect(),
                    },
                )
            })
    }
}

/// The titles of the steps when the evidence is the gateway's rather than a certificate.
const GATEWAY_TITLES: [(Step, &str); 4] = [
    (
        Step::Parse,
        "Gateway evidence decodes (quote, claims buffer, event log)",
    ),
    (
        Step::KeyBinding,
        "Quote report data binds the claims buffer listing the gateway's keys",
    ),
    (
        Step::AppAuthorisation,
        "Gateway app id is its compose hash's own (content-addressed)",
    ),
    (
        Step::Policy,
        "Gateway measurements, app id and compose hash allowed by the pins",
    ),
];

impl AttestationVerifier {
    /// Verifies a gateway's evidence now.
    pub fn verify_gateway(&self, ev: &GatewayEvidence) -> Result<VerifiedGateway, GatewayError> {
        self.inspect_gateway_at(ev, self.now())
            .into_verdict()
            .map_err(GatewayError::from)
    }

    /// Every step of verifying a gateway's evidence now, for display.
    pub fn inspect_gateway(&self, ev: &GatewayEvidence) -> Inspection<VerifiedGateway> {
        self.inspect_gateway_at(ev, self.now())
    }

    /// [`Self::inspect_gateway`] as if the time were `now`. The verdict's error carries the
    /// RA-TLS step; [`GatewayError::from`] maps it onto the gateway steps.
    pub fn inspect_gateway_at(
        &self,
        ev: &GatewayEvidence,
        now: u64,
    ) -> Inspection<VerifiedGateway> {
        let mut ins = Inspection::new();
        for (step, title) in GATEWAY_TITLES {
            ins.retitle(step, title);
        }
        let mut run = Run::new(ins);
        let claims = ev.app_claims();
        if let Err(e) = ev.check_bounds() {
            run.fail(VerifyError::parse(Reason::Evidence(e)));
            return run.stop("the evidence is over its limits");
        }
        let Some(quote) = run.evidence(&ev.quote, &ev.claims_buffer, &claims) else {
            return run.stop("the quote did not decode");
        };
        let gateway_claims = match GatewayClaims::from_claims_buffer(&ev.claims_buffer) {
            Ok(c) => c,
            Err(e) => {
                run.fail(VerifyError::parse(Reason::Evidence(e.0)));
                return run.stop("the claims buffer did not decode");
            }
        };
        run.ins.set(
            Step::Parse,
            Outcome::Verified {
                detail: format!(
                    "{} bound key(s), quoted at {} (unix seconds)",
                    gateway_claims.keys.len(),
                    gateway_claims.issued_at
                ),
            },
        );
        let judged = self.judge(
            &mut run,
            &Evidence {
                quote: &quote,
                claims_buffer: &ev.claims_buffer,
                claims: &claims,
            },
            |quote| {
                check_report_data(&ev.claims_buffer, quote).map(|()| {
                    format!(
                        "report data = {} of the claims buffer, which lists the {} key(s) the gateway holds",
                        crate::cert::evidence::REPORT_DATA_HASH.name(),
                        gateway_claims.keys.len()
                    )
                })
            },
            || gateway_authorisation(&ev.app_id, &ev.compose_hash),
            now,
        );
        run.finish(judged, |verified, authorised| VerifiedGateway {
            app_id: ev.app_id,
            compose_hash: ev.compose_hash,
            instance_id: ev.instance_id,
            mrtd: verified.quote.mrtd(),
            rtmrs: verified.quote.rtmrs(),
            tcb_status: verified.tcb_status,
            advisory_ids: verified.advisory_ids,
            simulated: verified.simulated,
            event_log: ev.event_log.clone(),
            authorised,
            claims: gateway_claims,
            valid_until: verified.collateral_expires,
        })
    }
}

/// The evidence carries no app CA chain, so a named gateway app id has nobody to vouch
/// for it: only the content-addressed id is believed.
fn gateway_authorisation(app: &AppId, compose: &ComposeHash) -> Result<Authorised, VerifyError> {
    if compose.default_app_id() == *app {
        return Ok(Authorised::ContentAddressed);
    }
    Err(VerifyError::new(
        Step::AppAuthorisation,
        Reason::AppNotAuthorised {
            app: app.to_hex(),
            compose: compose.to_hex(),
            why: "gateway evidence carries no app CA chain, so only a content-addressed gateway app id (the compose hash's first 20 bytes) is believed".into(),
        },
    ))
}
