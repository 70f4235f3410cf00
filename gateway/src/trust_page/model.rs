//! What the pages show, as data: the JSON twin serialises these, the HTML renders them.
//! Built from the routing table and the refused log, with every certificate re-checked by
//! `ratls` (`AttestationVerifier::inspect`, `chain::explain`): the code that admitted the
//! instance, run again now.

use serde::Serialize;

use ratls::chain::ChainLink;
use ratls::gateway_evidence::{BoundKey, KeyRole};
use ratls::inspect::{Check, QuoteFacts, ReplayRow};
use ratls::{Fingerprint, Inspection, Measurement, ReportData, SpkiHash, TcbStatus};

use crate::evidence::Published;

/// The gateway that terminated the browser's TLS: the first link of every chain, since
/// browsers cannot check RA-TLS. Attested: the certificate served here, the evidence
/// that binds its key, and the gateway's own verification of that evidence step by step.
/// Unattested: it says so on every surface.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayView {
    pub attested: bool,
    pub note: String,
    /// Where the evidence is published (JSON), on the base domain.
    pub evidence_path: &'static str,
    /// The certificate served for the base domain, and whether the evidence binds its key.
    pub served: Option<ServedCert>,
    pub verdict: &'static str,
    pub error: Option<String>,
    /// Why the last re-quote failed (the evidence shown is older).
    pub requote_error: Option<String>,
    pub app_id: Option<String>,
    pub compose_hash: Option<String>,
    pub instance_id: Option<String>,
    pub issued_at: Option<u64>,
    pub simulated: bool,
    /// Every key the quote binds.
    pub keys: Vec<BoundKey>,
    pub checks: Vec<Check>,
    pub quote: Option<QuoteFacts>,
    pub tcb_status: Option<TcbStatus>,
    pub event_log: EventLogView,
}

/// A certificate the gateway serves, as a browser sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ServedCert {
    pub name: String,
    /// SHA-256 of the certificate (what browsers show as its fingerprint).
    pub fingerprint: Fingerprint,
    pub spki_sha256: SpkiHash,
    /// The evidence binds this key.
    pub bound: bool,
}

/// The words every surface uses for an unattested gateway.
pub const NOT_ATTESTED: &str = ratls::gateway_evidence::NOT_ATTESTED;

impl GatewayView {
    pub fn unattested() -> Self {
        Self {
            attested: false,
            note: NOT_ATTESTED.into(),
            evidence_path: ratls::gateway_evidence::WELL_KNOWN_PATH,
            served: None,
            verdict: "not attested",
            error: None,
            requote_error: None,
            app_id: None,
            compose_hash: None,
            instance_id: None,
            issued_at: None,
            simulated: false,
            keys: Vec::new(),
            checks: Vec::new(),
            quote: None,
            tcb_status: None,
            event_log: EventLogView {
                rows: Vec::new(),
                replayed_rtmr3: None,
                quoted_rtmr3: None,
                matches: false,
            },
        }
    }

    /// The view of published evidence; `served` is the certificate for the base domain.
    pub fn of(published: &Published, served: Option<(String, Vec<u8>)>) -> Self {
        let doc = &published.document;
        let (Some(ev), Some(ins)) = (&doc.evidence, &published.inspection) else {
            return Self::unattested();
        };
        let keys = doc
            .claims
            .as_ref()
            .map(|c| c.keys.clone())
            .unwrap_or_default();
        let served = served.and_then(|(name, der)| {
            let spki = SpkiHash::of_certificate(&der)?;
            Some(ServedCert {
                bound: keys
                    .iter()
                    .any(|k| k.spki_sha256 == spki && k.role == KeyRole::Certificate),
                name,
                fingerprint: Fingerprint::of(&der),
                spki_sha256: spki,
            })
        });
        let (verdict, error) = match ins.verdict() {
            Ok(_) if served.as_ref().is_none_or(|s| s.bound) => ("verified", None),
            Ok(_) => (
                "failed",
                Some(
                    "the certificate served for the base domain is not one the evidence binds"
                        .into(),
                ),
            ),
            Err(e) => (
                "failed",
                Some(ratls::GatewayError::from(e.clone()).to_string()),
            ),
        };
        let quoted_rtmr3 = ins.quote.as_ref().map(|q| q.rtmrs[3]);
        Self {
            attested: true,
            note: "this gateway runs as an attested app: its quote binds every key it holds, so only its measured code can read the traffic".into(),
            evidence_path: ratls::gateway_evidence::WELL_KNOWN_PATH,
            served,
            verdict,
            error,
            requote_error: published.last_error.clone(),
            app_id: Some(ev.app_id.to_hex()),
            compose_hash: Some(ev.compose_hash.to_hex()),
            instance_id: Some(ev.instance_id.to_hex()),
            issued_at: doc.claims.as_ref().map(|c| c.issued_at),
            simulated: ins.simulated.unwrap_or(ev.simulated),
            keys,
            checks: ins.checks.clone(),
            quote: ins.quote.clone(),
            tcb_status: ins.tcb_status,
            event_log: EventLogView {
                rows: ins.replay.clone(),
                replayed_rtmr3: ins.replayed_rtmr3,
                quoted_rtmr3,
                matches: quoted_rtmr3.is_some() && quoted_rtmr3 == ins.replayed_rtmr3,
            },
        }
    }
}

/// `GET /`: every app and instance, and recent refusals.
#[derive(Debug, Clone, Serialize)]
pub struct IndexView {
    pub base_domain: String,
    pub gateway: GatewayView,
    /// True when any instance shown runs on SIMULATED TDX.
    pub simulated: bool,
    pub apps: Vec<AppSummary>,
    pub refused: Vec<RefusedSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppSummary {
    pub app_id: String,
    pub url: String,
    pub instances: Vec<InstanceSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceSummary {
    pub instance_id: String,
    pub compose_hash: String,
    pub tcb_status: String,
    pub simulated: bool,
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusedSummary {
    pub claimed_app_id: String,
    pub claimed_instance_id: String,
    pub error: String,
    pub attempts: u64,
    pub last_unix: u64,
}

/// `GET /apps/<app-id>`: each instance's chain of trust, link by link.
#[derive(Debug, Clone, Serialize)]
pub struct AppView {
    pub base_domain: String,
    pub gateway: GatewayView,
    pub app_id: String,
    pub url: String,
    pub simulated: bool,
    pub instances: Vec<InstanceView>,
    /// Registrations refused for certificates that claim this app.
    pub refused: Vec<InstanceView>,
}

/// One instance (or refused certificate) and every link of its chain of trust.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub instance_id: String,
    /// "verified" when every link verified, else "failed".
    pub verdict: &'static str,
    /// The verifier's own error, when it failed.
    pub error: Option<String>,
    pub simulated: bool,
    pub registered: Option<Registered>,
    pub refused: Option<RefusedInfo>,
    /// KMS root CA → app CA → instance certificate.
    pub chain: Vec<ChainLink>,
    /// The certificates themselves (DER as hex, instance certificate first, then its
    /// issuers), so a client can verify the instance itself (`teegate verify`).
    pub certificates: Vec<String>,
    /// The RA-TLS verification steps, in order.
    pub checks: Vec<Check>,
    pub quote: Option<QuoteFacts>,
    pub tcb_status: Option<TcbStatus>,
    pub advisory_ids: Vec<String>,
    pub report_data: ReportDataView,
    pub event_log: EventLogView,
    pub compose: ComposeView,
}

#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub lease_expires_unix: u64,
    pub healthy: bool,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusedInfo {
    pub attempts: u64,
    pub first_unix: u64,
    pub last_unix: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportDataView {
    pub quoted: Option<ReportData>,
    /// The hash (`ratls::cert::evidence::REPORT_DATA_HASH`) of the certificate's claims
    /// buffer, which holds its key's hash.
    pub expected: Option<ReportData>,
    pub binds_certificate_key: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventLogView {
    pub rows: Vec<ReplayRow>,
    pub replayed_rtmr3: Option<Measurement>,
    pub quoted_rtmr3: Option<Measurement>,
    pub matches: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComposeView {
    pub compose_hash: Option<String>,
    /// Each service's image as RTMR3 records it (`<service>@sha256:<id>`, with
    /// ` (unpinned)` when nothing pinned it), from the replayed log's `image` events.
    pub images: Vec<String>,
    /// How the app's volumes are stored, from the `storage` event.
    pub storage: Option<String>,
    /// `app-compose.json` as registered; only kept when it hashes to the compose hash.
    pub file: Option<String>,
}

impl InstanceView {
    /// Builds the view of one certificate from its inspection and explained chain.
    pub fn new(
        ins: &Inspection,
        chain: Vec<ChainLink>,
        certificates: Vec<String>,
        compose_file: Option<String>,
    ) -> Self {
        let chain_ok = chain
            .iter()
            .all(|l| !matches!(l.outcome, ratls::Outcome::Failed { .. }));
        let (verdict, error) = match ins.verdict() {
            Ok(_) if chain_ok => ("verified", None),
            Ok(_) => (
                "failed",
                chain
                    .iter()
                    .find(|l| !l.outcome.is_verified())
                    .map(|l| format!("{}: {}", l.role, l.outcome.text())),
            ),
            Err(e) => ("failed", Some(e.to_string())),
        };
        let quoted_rtmr3 = ins.quote.as_ref().map(|q| q.rtmrs[3]);
        let quoted_rd = ins.quote.as_ref().map(|q| q.report_data);
        let claims = ins.claims.as_ref();
        InstanceView {
            instance_id: claims.map(|c| c.instance_id.to_hex()).unwrap_or_default(),
            verdict,
            error,
            simulated: ins
                .simulated
                .or(claims.map(|c| c.simulated))
                .unwrap_or(false),
            registered: None,
            refused: None,
            chain,
            certificates,
            checks: ins.checks.clone(),
            quote: ins.quote.clone(),
            tcb_status: ins.tcb_status,
            advisory_ids: ins.advisory_ids.clone(),
            report_data: ReportDataView {
                quoted: quoted_rd,
                expected: ins.expected_report_data,
                binds_certificate_key: quoted_rd.is_some() && quoted_rd == ins.expected_report_data,
            },
            event_log: EventLogView {
                rows: ins.replay.clone(),
                replayed_rtmr3: ins.replayed_rtmr3,
                quoted_rtmr3,
                matches: quoted_rtmr3.is_some() && quoted_rtmr3 == ins.replayed_rtmr3,
            },
            compose: ComposeView {
                compose_hash: claims.map(|c| c.compose_hash.to_hex()),
                images: ins
                    .replay
                    .iter()
                    .filter(|r| r.name == ratls::eventlog::names::IMAGE)
                    .map(|r| {
                        r.payload_text
                            .clone()
                            .unwrap_or_else(|| r.payload_hex.clone())
                    })
                    .collect(),
                storage: ins
                    .replay
                    .iter()
                    .find(|r| r.name == ratls::eventlog::names::STORAGE)
                    .map(|r| {
                        r.payload_text
                            .clone()
                            .unwrap_or_else(|| r.payload_hex.clone())
                    }),
                file: compose_file,
            },
        }
    }
}
