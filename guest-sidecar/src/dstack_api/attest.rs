//! dstack's `Info`, `GetQuote`, `Attest`, `GetTlsKey` and `EmitEvent`, answered from the
//! sidecar's measurer (so every quote comes with the event log that replays to its RTMR3)
//! and its app CA.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use ratls::cert::{issue, pem_encode, CertProfile};
use ratls::eventlog::{names, EventLog};
use ratls::ReportData;
use serde::Deserialize;
use serde_json::json;

use super::{err, no_kms, unhex, ApiError, DstackState};
use crate::guest_api::{reply, Reply};

/// Longest certificate `GetTlsKey` issues, as teegate's own `/tls-key`.
const MAX_VALIDITY: u64 = 90 * 86_400;
const DEFAULT_VALIDITY: u64 = 86_400;
const MAX_NAMES: usize = 16;
const MAX_NAME_LEN: usize = 253;

#[derive(Deserialize)]
pub(super) struct ReportDataReq {
    #[serde(default)]
    report_data: String,
}

#[derive(Deserialize)]
pub(super) struct TlsKeyReq {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    alt_names: Vec<String>,
    // `usage_ra_tls` and `with_app_info` are accepted and need no field: teegate's
    // certificates always carry the quote and the app claims (the app CA signs nothing else).
    #[serde(default = "yes")]
    usage_server_auth: bool,
    #[serde(default)]
    usage_client_auth: bool,
    not_before: Option<u64>,
    not_after: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
pub(super) struct EmitReq {
    event: String,
    #[serde(default)]
    payload: String,
}

/// dstack pads report data with zeros at the end to 64 bytes.
fn report_data(hex_text: &str) -> Result<ReportData, ApiError> {
    let bytes = unhex("report_data", hex_text)?;
    if bytes.len() > 64 {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("report_data is {} bytes; at most 64", bytes.len()),
        ));
    }
    let mut rd = [0u8; 64];
    rd[..bytes.len()].copy_from_slice(&bytes);
    Ok(ReportData(rd))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    err(StatusCode::INTERNAL_SERVER_ERROR, e)
}

fn log_text(log: &EventLog) -> Result<String, ApiError> {
    serde_json::to_string(log).map_err(internal)
}

impl DstackState {
    pub(super) fn info(&self) -> Result<Reply, ApiError> {
        let g = &self.guest;
        let (q, log) = g.current_measurements().map_err(internal)?;
        let r = q.rtmrs();
        let id = &g.identity;
        // dstack OS fields teegate has no counterpart for (os image hash, device id,
        // aggregated MR) are empty strings, as dstack leaves them when unknown.
        let tcb_info = json!({
            "mrtd": q.mrtd(),
            "rtmr0": r[0], "rtmr1": r[1], "rtmr2": r[2], "rtmr3": r[3],
            "mr_aggregated": "",
            "os_image_hash": "",
            "compose_hash": id.compose_hash,
            "device_id": "",
            "event_log": log,
            "app_compose": self.app_compose,
        });
        let cert = g
            .instance_cert_pem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(reply(
            StatusCode::OK,
            json!({
                "app_id": id.app_id,
                "instance_id": id.instance_id,
                "app_cert": cert,
                "tcb_info": tcb_info.to_string(),
                "app_name": self.app_name,
                "device_id": "",
                "mr_aggregated": "",
                "os_image_hash": "",
                "key_provider_info": self.key_provider_info,
                "compose_hash": id.compose_hash,
                "vm_config": "",
            }),
        ))
    }

    pub(super) fn get_quote(&self, r: ReportDataReq) -> Result<Reply, ApiError> {
        let rd = report_data(&r.report_data)?;
        let (quote, log) = self.guest.measurer.quote(&rd).map_err(internal)?;
        Ok(reply(
            StatusCode::OK,
            json!({
                "quote": hex::encode(quote),
                "event_log": log_text(&log)?,
                "report_data": rd.to_hex(),
                "vm_config": "",
            }),
        ))
    }

    pub(super) fn attest(&self, r: ReportDataReq) -> Result<Reply, ApiError> {
        let rd = report_data(&r.report_data)?;
        let (quote, log) = self.guest.measurer.quote(&rd).map_err(internal)?;
        let attestation = json!({
            "format": "teegate-attestation-v1",
            "quote": hex::encode(quote),
            "event_log": log,
            "report_data": rd.to_hex(),
        });
        Ok(reply(
            StatusCode::OK,
            json!({ "attestation": hex::encode(attestation.to_string()) }),
        ))
    }

    pub(super) fn get_tls_key(&self, r: TlsKeyReq) -> Result<Reply, ApiError> {
        let mut names: Vec<String> = Vec::new();
        for n in std::iter::once(&r.subject).chain(&r.alt_names) {
            if !n.is_empty() && !names.contains(n) {
                names.push(n.clone());
            }
        }
        if names.is_empty() {
            // A certificate needs a name; the app id is this app's own.
            names.push(self.guest.identity.app_id.to_hex());
        }
        let ok_name = |n: &String| {
            n.len() <= MAX_NAME_LEN
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.*".contains(&b))
        };
        if names.len() > MAX_NAMES || !names.iter().all(ok_name) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!("subject and alt_names: at most {MAX_NAMES} DNS names"),
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(internal)?
            .as_secs();
        // Certificates start now (rcgen backdates a little for clock skew): a not_before
        // in the future cannot be honoured, so it is refused rather than ignored.
        if r.not_before.is_some_and(|nb| nb > now + 60) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "not_before in the future is not supported: certificates are valid from issuance",
            ));
        }
        let validity = match r.not_after {
            None => DEFAULT_VALIDITY,
            Some(na) if na > now && na - now <= MAX_VALIDITY => na - now,
            Some(_) => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    format!("not_after must be in the future, at most {MAX_VALIDITY} s from now"),
                ))
            }
        };
        // No extended key usage at all would make the certificate good for any purpose:
        // more than was asked, so one usage is required.
        if !r.usage_server_auth && !r.usage_client_auth {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "usage_server_auth or usage_client_auth must be true",
            ));
        }
        let ca = self.guest.app_ca.as_ref().ok_or_else(no_kms)?;
        let profile = CertProfile {
            names,
            validity: Duration::from_secs(validity),
            server_auth: r.usage_server_auth,
            client_auth: r.usage_client_auth,
            nonce: None,
        };
        let cert = issue(
            &self.guest.measurer,
            &self.guest.identity,
            &profile,
            Some(ca),
        )
        .map_err(internal)?;
        let chain: Vec<String> = cert
            .rustls_chain()
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect();
        Ok(reply(
            StatusCode::OK,
            json!({
                "key": pem_encode("PRIVATE KEY", &cert.key_pkcs8_der()),
                "certificate_chain": chain,
            }),
        ))
    }

    pub(super) fn emit_event(&self, r: EmitReq) -> Result<Reply, ApiError> {
        let payload = unhex("payload", &r.payload)?;
        // Boot events are the sidecar's alone (see `names::RESERVED`).
        if names::is_reserved(&r.event) {
            return Err(err(
                StatusCode::FORBIDDEN,
                format!("event name {:?} is reserved for the boot flow", r.event),
            ));
        }
        self.guest
            .measurer
            .emit(&r.event, payload)
            .map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
        Ok(reply(StatusCode::OK, json!({})))
    }
}
