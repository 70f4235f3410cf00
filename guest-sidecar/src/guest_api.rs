//! The guest API: HTTP on a Unix socket (mode 0660) that the app's containers mount.
//!
//! | method | path | body in | answer |
//! |---|---|---|---|
//! | GET | /info | – | app id, instance id, compose hash, MRTD, RTMR0-3, simulated |
//! | POST | /quote | `{"report_data": "<128 hex>"}` | `{"quote": hex, "event_log": [...]}` |
//! | POST | /key | `{"path": "...", "purpose": "..."}` | `{"key": hex}` (32 bytes, derived) |
//! | POST | /tls-key | `{"names": [...], "validity_secs": n}` | RA-TLS certificate + key (PEM), app-CA signed |
//! | POST | /emit-event | `{"name": "...", "payload": hex}` | `{"rtmr3": hex}` |
//! | GET | /attestation | – | the instance certificate (PEM), its quote and the event log |
//!
//! Bodies are bounded; bad JSON, oversize bodies and unknown paths get 4xx with a message.
//! Without a KMS (`key_provider = "none"`) the instance holds no secret of the app, so
//! `/key` and `/tls-key` answer 503 [`NO_KEY_PROVIDER`]: anything they could return would be
//! computable from public data (the compose hash) or would not chain to an app CA.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ratls::cert::{issue, CertAuthority, CertProfile, Identity};
use ratls::provider::Measurer;
use ratls::{Quote, ReportData};
use serde::Deserialize;
use serde_json::json;
use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};

pub const MAX_BODY: usize = 64 * 1024;
const MAX_NAMES: usize = 16;
const MAX_CONNECTIONS: usize = 256;

/// The 503 message of `/key` and `/tls-key` when no KMS released keys to this instance.
pub const NO_KEY_PROVIDER: &str = "no key provider is configured (key_provider = \"none\"): this instance holds no app secret, so no key derived from one is served";

/// Where `/key` derives keys from: the app's key material released by the KMS.
pub trait KeySource: Send + Sync {
    fn derive(&self, path: &str, purpose: &str) -> [u8; 32];
}

/// Everything the guest API answers from.
pub struct GuestState {
    pub identity: Identity,
    pub measurer: Arc<Measurer>,
    /// The app's keys from the KMS; `None` with `key_provider = "none"`.
    pub keys: Option<Arc<dyn KeySource>>,
    /// The app CA from the KMS, for `/tls-key`.
    pub app_ca: Option<Arc<CertAuthority>>,
    /// The instance's current RA-TLS certificate (PEM), for `/attestation`.
    pub instance_cert_pem: Arc<std::sync::RwLock<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteReq {
    report_data: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyReq {
    path: String,
    purpose: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsKeyReq {
    names: Vec<String>,
    #[serde(default = "default_validity")]
    validity_secs: u64,
}

fn default_validity() -> u64 {
    86_400
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventReq {
    name: String,
    #[serde(default)]
    payload: String,
}

pub(crate) fn reply(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap_or_default()
}

pub(crate) fn bad(status: StatusCode, msg: impl std::fmt::Display) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": msg.to_string() }))
}

fn valid_label_text(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

impl GuestState {
    pub(crate) fn current_measurements(
        &self,
    ) -> Result<(Quote, ratls::eventlog::EventLog), String> {
        let (bytes, log) = self
            .measurer
            .quote(&ReportData::ZERO)
            .map_err(|e| e.to_string())?;
        let q = Quote::parse(&bytes).map_err(|e| e.to_string())?;
        Ok((q, log))
    }

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
    pub fn answer(&self, method: &Method, path: &str, body: &[u8]) -> Reply {
        macro_rules! parse {
            ($t:ty) => {
                match serde_json::from_slice::<$t>(body) {
                    Ok(v) => v,
                    Err(e) => return bad(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
                }
            };
        }
        match (method.clone(), path) {
            (Method::GET, "/info") => match self.current_measurements() {
                Ok((q, _)) => {
                    let r = q.rtmrs();
                    reply(
                        StatusCode::OK,
                        json!({
                            "app_id": self.identity.app_id,
                            "instance_id": self.identity.instance_id,
                            "compose_hash": self.identity.compose_hash,
                            "mrtd": q.mrtd(),
                            "rtmr0": r[0], "rtmr1": r[1], "rtmr2": r[2], "rtmr3": r[3],
                            "simulated": self.measurer.kind() == ratls::provider::ProviderKind::Simulated,
                        }),
                    )
                }
                Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e),
            },
            (Method::POST, "/quote") => {
                let r = parse!(QuoteReq);
                let Ok(rd) = r.report_data.parse::<ReportData>() else {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        "report_data must be 64 bytes as 128 hex characters",
                    );
                };
                match self.measurer.quote(&rd) {
                    Ok((quote, log)) => reply(
                        StatusCode::OK,
                        json!({ "quote": hex::encode(quote), "event_log": log }),
                    ),
                    Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            }
            (Method::POST, "/key") => {
                let r = parse!(KeyReq);
                if !valid_label_text(&r.path, 256) || !valid_label_text(&r.purpose, 64) {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        "path and purpose must be 1-256/1-64 characters of [A-Za-z0-9-_./]",
                    );
                }
                let Some(keys) = &self.keys else {
                    return bad(StatusCode::SERVICE_UNAVAILABLE, NO_KEY_PROVIDER);
                };
                reply(
                    StatusCode::OK,
                    json!({ "key": hex::encode(keys.derive(&r.path, &r.purpose)) }),
                )
            }
            (Method::POST, "/tls-key") => {
                let r = parse!(TlsKeyReq);
                if r.names.is_empty()
                    || r.names.len() > MAX_NAMES
                    || !r.names.iter().all(|n| valid_label_text(n, 253))
                {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        format!("names: 1 to {MAX_NAMES} DNS names"),
                    );
                }
                if r.validity_secs == 0 || r.validity_secs > 90 * 86_400 {
                    return bad(StatusCode::BAD_REQUEST, "validity_secs must be 1..=7776000");
                }
                let Some(ca) = &self.app_ca else {
                    return bad(StatusCode::SERVICE_UNAVAILABLE, NO_KEY_PROVIDER);
                };
                let profile =
                    CertProfile::server_and_client(r.names, Duration::from_secs(r.validity_secs));
                match issue(&self.measurer, &self.identity, &profile, Some(ca)) {
                    Ok(cert) => reply(
                        StatusCode::OK,
                        json!({
                            "certificate_chain": cert.rustls_chain().iter().map(|c| ratls::cert::pem_encode("CERTIFICATE", c)).collect::<String>(),
                            "key": ratls::cert::pem_encode("PRIVATE KEY", &cert.key_pkcs8_der()),
                        }),
                    ),
                    Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            }
            (Method::POST, "/emit-event") => {
                let r = parse!(EventReq);
                let Ok(payload) = hex::decode(&r.payload) else {
                    return bad(StatusCode::BAD_REQUEST, "payload must be hex");
                };
                // Boot events are the sidecar's alone; an app may not forge them.
                if ratls::eventlog::names::is_reserved(&r.name) {
                    return bad(
                        StatusCode::FORBIDDEN,
                        format!("event name {:?} is reserved for the boot flow", r.name),
                    );
                }
                if let Err(e) = self.measurer.emit(&r.name, payload) {
                    return bad(StatusCode::BAD_REQUEST, e);
                }
                match self.current_measurements() {
                    Ok((q, _)) => reply(StatusCode::OK, json!({ "rtmr3": q.rtmr3() })),
                    Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            }
            (Method::GET, "/attestation") => match self.current_measurements() {
                Ok((q, log)) => reply(
                    StatusCode::OK,
                    json!({
                        "certificate": *self.instance_cert_pem.read().unwrap_or_else(|p| p.into_inner()),
                        "quote": hex::encode(q.as_bytes()),
                        "event_log": log,
                    }),
                ),
                Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e),
            },
            (_, "/info" | "/quote" | "/key" | "/tls-key" | "/emit-event" | "/attestation") => {
                bad(StatusCode::METHOD_NOT_ALLOWED, "wrong method")
            }
            (_, path) => bad(StatusCode::NOT_FOUND, format!("no such endpoint {path}")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuestApiError {
    #[error("guest API socket {path}: {message}")]
    Socket { path: String, message: String },
}

/// Binds the socket (replacing a stale one), sets mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, GuestApiError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |m: String| GuestApiError::Socket {
        path: path.display().to_string(),
        message: m,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| err(format!("removing stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    state: Arc<GuestState>,
    shutdown: watch::Receiver<bool>,
) {
    serve_unix(listener, move |req| state.clone().handle(req), shutdown).await
}

/// An answer of the sidecar's Unix-socket APIs.
pub(crate) type Reply = Response<Full<Bytes>>;

/// The connection loop both guest APIs (teegate's and dstack's) share: at most
/// [`MAX_CONNECTIONS`] at once (more are closed at accept), HTTP/1.1, until `shutdown`.
pub(crate) async fn serve_unix<H, F>(
    listener: UnixListener,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Reply> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, std::convert::Infallible>(fut.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Reads a body of at most [`MAX_BODY`] bytes, or answers 413.
pub(crate) async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(bad(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_BODY} bytes"),
        )),
    }
}
