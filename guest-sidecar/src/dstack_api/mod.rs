//! dstack's guest API, so apps written with dstack's SDKs run unchanged: HTTP on a Unix
//! socket (`dstack_socket_path`, by default `/var/run/dstack.sock`, where those SDKs look),
//! JSON bodies, `POST /<Method>` as dstack's guest agent serves them. Bytes are hex.
//!
//! | method | body in | answer |
//! |---|---|---|
//! | `Info` (also GET) | – | app id, instance id, app name, compose hash, `tcb_info` (JSON text: MRTD, RTMR0-3, event log, app-compose), `mr_aggregated`, `os_image_hash`, `device_id`, `vm_config` (see [`platform`]) |
//! | `GetQuote` | `report_data` (≤ 64 bytes, zero-padded) | `quote`, `event_log` (JSON text of dstack entries), `report_data`, `vm_config` |
//! | `Attest` | `report_data` | `attestation`: dstack's `VersionedAttestation` in SCALE (quote, event log, report data, vm_config; see [`scale`]) |
//! | `GetKey` | `path`, `purpose`, `algorithm` (`secp256k1` default, `k256`, `ed25519`) | `key`, `signature_chain` (see [`keys`]) |
//! | `GetTlsKey` | `subject`, `alt_names`, usages, `not_before`, `not_after`, `with_app_info` | PEM `key` and `certificate_chain` (RA-TLS leaf, app CA); validity bounded (see [`tls`]) |
//! | `Sign` / `Verify` | `algorithm`, `data` (+ `signature`, `public_key`) | `signature`, `signature_chain`, `public_key` / `valid` |
//! | `EmitEvent` | `event`, `payload` | `{}`; boot event names are refused (403) |
//! | `Version` (also GET) | – | `version`, `rev` |
//!
//! It shares everything with teegate's own guest API ([`crate::guest_api`]): the measurer
//! (so quotes and the event log agree), the app CA, the connection and body bounds, and the
//! rule that without a KMS (`key_provider = "none"`) no key is served (503). Errors are an
//! HTTP status with `{"error": "..."}`. Unknown fields in bodies are ignored, as dstack's
//! RPC layer ignores them, so newer SDKs that send more still work.

mod attest;
pub mod keys;
pub mod platform;
pub mod scale;
mod tls;

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::guest_api::{bad, read_body, reply, serve_unix, GuestState, Reply, NO_KEY_PROVIDER};
pub use keys::AppK256;
pub use platform::Platform;

/// What only dstack's API needs beside the shared [`GuestState`].
pub struct DstackState {
    pub guest: Arc<GuestState>,
    /// `name` of the app-compose.json.
    pub app_name: String,
    /// The app-compose.json text, as `Info`'s `tcb_info.app_compose`.
    pub app_compose: String,
    /// The `key-provider` event payload (dstack's `{"name", "id"}` JSON).
    pub key_provider_info: String,
    /// The app's k256 root key from the KMS; `None` without a KMS.
    pub k256: Option<AppK256>,
    /// What `Info` says about the CVM (computed once, from its quote).
    pub platform: Platform,
}

impl DstackState {
    /// The state for `guest`; reads the platform values from a quote of this CVM.
    pub fn new(
        guest: Arc<GuestState>,
        app_name: String,
        app_compose: String,
        key_provider_info: String,
        k256: Option<AppK256>,
    ) -> Result<Self, String> {
        let (quote, _) = guest.current_measurements()?;
        Ok(Self {
            platform: Platform::of(&quote),
            guest,
            app_name,
            app_compose,
            key_provider_info,
            k256,
        })
    }
}

/// Every method the SDK may call, for 405 versus 404.
const METHODS: &[&str] = &[
    "Info",
    "GetQuote",
    "Attest",
    "GetKey",
    "GetTlsKey",
    "Sign",
    "Verify",
    "EmitEvent",
    "Version",
];

/// A refusal: its HTTP status and message (answered as `{"error": message}`).
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

pub(crate) fn err(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
    ApiError {
        status,
        message: message.to_string(),
    }
}

impl ApiError {
    fn into_reply(self) -> Reply {
        bad(self.status, self.message)
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // The SDK sends `{}` for argument-less calls; curl users often send nothing.
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
}

/// Hex as dstack's SDKs send it (an optional `0x` prefix is tolerated).
fn unhex(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    let t = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(t).map_err(|_| err(StatusCode::BAD_REQUEST, format!("{field} must be hex")))
}

fn no_kms() -> ApiError {
    err(StatusCode::SERVICE_UNAVAILABLE, NO_KEY_PROVIDER)
}

impl DstackState {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let (parts, body) = req.into_parts();
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        self.answer(&parts.method, parts.uri.path(), &body)
    }

    /// The answer to one request once its (bounded) body is read. Also the fuzzer's entry
    /// point to the request path; not API.
    #[doc(hidden)]
    pub fn answer(&self, http_method: &Method, path: &str, body: &[u8]) -> Reply {
        let method = path.trim_start_matches('/');
        let answer = match (http_method, method) {
            (&Method::POST | &Method::GET, "Info") => self.info(),
            (&Method::POST | &Method::GET, "Version") => Ok(reply(
                StatusCode::OK,
                serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "rev": concat!("teegate-", env!("CARGO_PKG_VERSION")),
                }),
            )),
            (&Method::POST, "GetQuote") => parse(body).and_then(|r| self.get_quote(r)),
            (&Method::POST, "Attest") => parse(body).and_then(|r| self.attest(r)),
            (&Method::POST, "GetKey") => parse(body).and_then(|r| self.get_key(r)),
            (&Method::POST, "GetTlsKey") => parse(body).and_then(|r| self.get_tls_key(r)),
            (&Method::POST, "Sign") => parse(body).and_then(|r| self.sign(r)),
            (&Method::POST, "Verify") => parse(body).and_then(keys::verify),
            (&Method::POST, "EmitEvent") => parse(body).and_then(|r| self.emit_event(r)),
            (_, m) if METHODS.contains(&m) => Err(err(StatusCode::METHOD_NOT_ALLOWED, "use POST")),
            (_, m) => Err(err(
                StatusCode::NOT_FOUND,
                format!(
                    "no such method {:?}",
                    m.chars().take(64).collect::<String>()
                ),
            )),
        };
        answer.unwrap_or_else(ApiError::into_reply)
    }
}

/// Serves dstack's API until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    state: Arc<DstackState>,
    shutdown: watch::Receiver<bool>,
) {
    serve_unix(listener, move |req| state.clone().handle(req), shutdown).await
}
