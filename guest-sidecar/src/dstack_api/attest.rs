//! dstack's `Info`, `GetQuote`, `Attest` and `EmitEvent`, answered from the sidecar's
//! measurer (so every quote comes with the event log that replays to its RTMR3).

use http::StatusCode;
use ratls::eventlog::{names, EventLog};
use ratls::{Quote, ReportData};
use serde::Deserialize;
use serde_json::json;

use super::{err, platform, scale, unhex, ApiError, DstackState};
use crate::guest_api::{reply, Reply};

#[derive(Deserialize)]
pub(super) struct ReportDataReq {
    #[serde(default)]
    report_data: String,
}

#[derive(Deserialize)]
pub(super) struct EmitReq {
    event: String,
    #[serde(default)]
    payload: String,
}

/// dstack pads report data with zeros at the end to 64 bytes.
pub(super) fn report_data(hex_text: &str) -> Result<ReportData, ApiError> {
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

pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    err(StatusCode::INTERNAL_SERVER_ERROR, e)
}

fn log_text(log: &EventLog) -> Result<String, ApiError> {
    serde_json::to_string(log).map_err(internal)
}

impl DstackState {
    /// `Info` as dstack's guest agent answers it. `tcb_info` and `vm_config` are left empty
    /// when `hide_tcb_info` (the public endpoint of an app with `public_tcbinfo: false`).
    pub(crate) fn info_value(&self, hide_tcb_info: bool) -> Result<serde_json::Value, ApiError> {
        let g = &self.guest;
        let (q, log) = g.current_measurements().map_err(internal)?;
        let r = q.rtmrs();
        let id = &g.identity;
        let p = &self.platform;
        let mr_aggregated = hex::encode(platform::mr_aggregated(&q));
        let (tcb_info, vm_config) = if hide_tcb_info {
            (String::new(), String::new())
        } else {
            let tcb = json!({
                "mrtd": q.mrtd(),
                "rtmr0": r[0], "rtmr1": r[1], "rtmr2": r[2], "rtmr3": r[3],
                "mr_aggregated": mr_aggregated,
                "os_image_hash": hex::encode(p.os_image_hash),
                "compose_hash": id.compose_hash,
                "device_id": hex::encode(p.device_id),
                "event_log": log,
                "app_compose": self.app_compose,
            });
            (
                serde_json::to_string_pretty(&tcb).map_err(internal)?,
                p.vm_config.clone(),
            )
        };
        let cert = g
            .instance_cert_pem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(json!({
            "app_id": id.app_id,
            "instance_id": id.instance_id,
            "app_cert": cert,
            "tcb_info": tcb_info,
            "app_name": self.app_name,
            "device_id": hex::encode(p.device_id),
            "mr_aggregated": mr_aggregated,
            "os_image_hash": hex::encode(p.os_image_hash),
            "key_provider_info": self.key_provider_info,
            "compose_hash": id.compose_hash,
            "vm_config": vm_config,
            "cloud_vendor": p.cloud_vendor,
            "cloud_product": p.cloud_product,
        }))
    }

    pub(super) fn info(&self) -> Result<Reply, ApiError> {
        Ok(reply(StatusCode::OK, self.info_value(false)?))
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
                "vm_config": self.platform.vm_config,
            }),
        ))
    }

    /// dstack's versioned attestation (SCALE, see [`scale`]) over the report data.
    pub(super) fn attest(&self, r: ReportDataReq) -> Result<Reply, ApiError> {
        let rd = report_data(&r.report_data)?;
        let (quote, log) = self.guest.measurer.quote(&rd).map_err(internal)?;
        // The measurer quotes and snapshots the log together, so the log replays to the
        // quote's RTMR3; checked here too, since an attestation that does not replay would
        // be refused by every verifier.
        let q = Quote::parse(&quote).map_err(internal)?;
        if log.replay() != q.rtmr3() {
            return Err(internal("event log does not replay to the quoted RTMR3"));
        }
        let bytes = scale::encode(&quote, &log, &rd, &self.platform.vm_config);
        Ok(reply(
            StatusCode::OK,
            json!({ "attestation": hex::encode(bytes) }),
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
