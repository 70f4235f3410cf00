//! What the pages show, as data: the JSON twin serialises these, the HTML renders them.
//! Built from the routing table and the refused log, with every certificate re-checked by
//! `ratls` (`AttestationVerifier::inspect`, `chain::explain`): the code that admitted the
//! instance, run again now.

use serde::Serialize;

use ratls::chain::ChainLink;
use ratls::inspect::{Check, QuoteFacts, ReplayRow};
use ratls::{Inspection, Measurement, ReportData, TcbStatus};

/// What the gateway that made this page says about itself. Browsers cannot check RA-TLS,
/// so the terminator's own attestation is the first link; until the gateway runs as an
/// attested app it says so on every surface.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayView {
    pub attested: bool,
    pub note: &'static str,
}

/// The words every surface uses for an unattested gateway.
pub const NOT_ATTESTED: &str = "this gateway is not attested: its operator can read the traffic";

impl GatewayView {
    pub fn unattested() -> Self {
        Self {
            attested: false,
            note: NOT_ATTESTED,
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
    pub fn new(ins: &Inspection, chain: Vec<ChainLink>, compose_file: Option<String>) -> Self {
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
