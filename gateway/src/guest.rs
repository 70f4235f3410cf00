//! A client for teegate's own guest API: the sidecar's HTTP on a Unix socket, which an
//! attested gateway (a teegate app in a CVM) uses for its quotes and its sealing keys.
//!
//! ```text
//!  GuestApi::connect(socket) ─ GET /info ─▶ GuestInfo (app id, compose hash, MRTD, RTMRs)
//!     .quote(ReportData)     ─ POST /quote ─▶ GuestQuote (raw quote + RTMR3 event log)
//!     .derive_key(path, purpose) ─ POST /key ─▶ DerivedKey (32 bytes, zeroized on drop)
//!     .attestation()         ─ GET /attestation ─▶ the instance certificate, quote, event log
//!     .tls_key(names, secs)  ─ POST /tls-key ─▶ GuestTlsKey (RA-TLS chain from the app CA)
//! ```
//!
//! One short connection per call (calls are rare: start-up, re-quoting, key derivation), a
//! deadline over the whole call, answers bounded at [`MAX_ANSWER`] bytes, and every error
//! names the call and the socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use ratls::eventlog::EventLog;
use ratls::{AppId, ComposeHash, InstanceId, Measurement, Quote, ReportData};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

/// Largest answer read from the guest API. A quote is a few KiB and the event log of a
/// normal boot a few more; the bound only stops a broken peer from filling memory.
pub const MAX_ANSWER: usize = 2 * 1024 * 1024;
/// Default deadline for one call (connect, request and whole answer).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);

/// A failed guest-API call: which call, on which socket, and why.
#[derive(Debug, thiserror::Error)]
#[error("guest API {call} on {socket}: {kind}")]
pub struct GuestError {
    pub call: &'static str,
    pub socket: PathBuf,
    pub kind: GuestErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestErrorKind {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no complete answer within {0:?}")]
    Deadline(Duration),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("answer over {MAX_ANSWER} bytes")]
    TooLarge,
    #[error("unexpected answer: {0}")]
    Decode(String),
}

impl GuestErrorKind {
    /// Whether the socket could not be reached at all (as opposed to a bad answer).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            GuestErrorKind::Connect(_) | GuestErrorKind::Deadline(_)
        )
    }
}

/// What `GET /info` says about the CVM the gateway runs in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GuestInfo {
    pub app_id: AppId,
    pub instance_id: InstanceId,
    pub compose_hash: ComposeHash,
    pub mrtd: Measurement,
    pub rtmr0: Measurement,
    pub rtmr1: Measurement,
    pub rtmr2: Measurement,
    pub rtmr3: Measurement,
    /// The sidecar's quotes come from the simulated provider (prove nothing about hardware).
    pub simulated: bool,
}

/// A quote from `POST /quote` with the RTMR3 event log as of that quote.
#[derive(Debug, Clone)]
pub struct GuestQuote {
    /// The raw TDX quote; its report data is the one asked for (checked on receipt).
    pub quote: Vec<u8>,
    /// Checked to be well formed; whether it replays to the quote's RTMR3 is the verifier's job.
    pub event_log: EventLog,
}

impl GuestQuote {
    pub fn parsed(&self) -> Result<Quote, ratls::quote::QuoteError> {
        Quote::parse(&self.quote)
    }
}

/// `GET /attestation`: the sidecar's current RA-TLS certificate with a quote and event log.
#[derive(Debug, Clone)]
pub struct GuestAttestation {
    pub certificate_pem: String,
    pub quote: Vec<u8>,
    pub event_log: EventLog,
}

/// `POST /tls-key`: a fresh RA-TLS certificate for the app, signed by its app CA (from the
/// KMS), with its private key.
pub struct GuestTlsKey {
    /// Leaf first, then the app CA (DER).
    pub chain: Vec<Vec<u8>>,
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for GuestTlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestTlsKey")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// A 32-byte key from `POST /key`, derived by the KMS's rules for this app (so every
/// replica of the same app derives the same one). Zeroized on drop; never printed.
pub struct DerivedKey(Zeroizing<[u8; 32]>);

impl DerivedKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn into_zeroizing(self) -> Zeroizing<[u8; 32]> {
        self.0
    }
}

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKey(..)")
    }
}

#[derive(Deserialize)]
struct QuoteAnswer {
    quote: String,
    event_log: EventLog,
}

#[derive(Deserialize)]
struct AttestationAnswer {
    certificate: String,
    quote: String,
    event_log: EventLog,
}

#[derive(Deserialize)]
struct TlsKeyAnswer {
    certificate_chain: String,
    key: String,
}

#[derive(Deserialize)]
struct KeyAnswer {
    key: String,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// A client for one guest-API socket.
#[derive(Debug, Clone)]
pub struct GuestApi {
    socket: PathBuf,
    deadline: Duration,
}

impl GuestApi {
    /// A client for `socket` that has answered `GET /info` (so it is reachable and speaks
    /// the guest API); the answer comes back with it.
    pub async fn connect(socket: impl Into<PathBuf>) -> Result<(Self, GuestInfo), GuestError> {
        let api = Self::new(socket);
        let info = api.info().await?;
        Ok((api, info))
    }

    /// A client for `socket` without contacting it yet.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// The deadline for each later call.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /info`: identity and current measurements.
    pub async fn info(&self) -> Result<GuestInfo, GuestError> {
        const CALL: &str = "GET /info";
        let body = self.call(CALL, "GET", "/info", None).await?;
        self.decode(CALL, &body)
    }

    /// `POST /quote`: a fresh quote over `report_data`, with the event log as of it.
    pub async fn quote(&self, report_data: &ReportData) -> Result<GuestQuote, GuestError> {
        const CALL: &str = "POST /quote";
        let req = serde_json::json!({ "report_data": report_data.to_hex() }).to_string();
        let body = self.call(CALL, "POST", "/quote", Some(req)).await?;
        let answer: QuoteAnswer = self.decode(CALL, &body)?;
        let quote = self.hex(CALL, "quote", &answer.quote)?;
        answer
            .event_log
            .validate()
            .map_err(|e| self.fail(CALL, GuestErrorKind::Decode(format!("event_log: {e}"))))?;
        let parsed = Quote::parse(&quote)
            .map_err(|e| self.fail(CALL, GuestErrorKind::Decode(format!("quote: {e}"))))?;
        // A quote over other report data binds nothing the caller chose: refuse it here, so
        // no caller can forget to compare.
        if parsed.report_data() != *report_data {
            return Err(self.fail(
                CALL,
                GuestErrorKind::Decode(format!(
                    "the quote's report data {} is not the one asked for",
                    parsed.report_data()
                )),
            ));
        }
        Ok(GuestQuote {
            quote,
            event_log: answer.event_log,
        })
    }

    /// `POST /key`: the app's 32-byte key for `path` and `purpose` (KMS-derived).
    pub async fn derive_key(&self, path: &str, purpose: &str) -> Result<DerivedKey, GuestError> {
        const CALL: &str = "POST /key";
        let req = serde_json::json!({ "path": path, "purpose": purpose }).to_string();
        let body = Zeroizing::new(self.call(CALL, "POST", "/key", Some(req)).await?);
        let mut answer: KeyAnswer = self.decode(CALL, &body)?;
        let mut key = Zeroizing::new([0u8; 32]);
        let decoded = hex::decode_to_slice(answer.key.as_bytes(), key.as_mut_slice());
        answer.key.zeroize();
        decoded.map_err(|_| {
            self.fail(
                CALL,
                GuestErrorKind::Decode("key is not 32 bytes of hex".into()),
            )
        })?;
        Ok(DerivedKey(key))
    }

    /// `GET /attestation`: the sidecar's RA-TLS certificate, a quote and the event log.
    pub async fn attestation(&self) -> Result<GuestAttestation, GuestError> {
        const CALL: &str = "GET /attestation";
        let body = self.call(CALL, "GET", "/attestation", None).await?;
        let answer: AttestationAnswer = self.decode(CALL, &body)?;
        answer
            .event_log
            .validate()
            .map_err(|e| self.fail(CALL, GuestErrorKind::Decode(format!("event_log: {e}"))))?;
        Ok(GuestAttestation {
            certificate_pem: answer.certificate,
            quote: self.hex(CALL, "quote", &answer.quote)?,
            event_log: answer.event_log,
        })
    }

    /// `POST /tls-key`: a fresh RA-TLS certificate for `names`, valid `validity_secs`,
    /// signed by the app CA the KMS released to this CVM.
    pub async fn tls_key(
        &self,
        names: &[String],
        validity_secs: u64,
    ) -> Result<GuestTlsKey, GuestError> {
        const CALL: &str = "POST /tls-key";
        let req = serde_json::json!({ "names": names, "validity_secs": validity_secs }).to_string();
        let body = Zeroizing::new(self.call(CALL, "POST", "/tls-key", Some(req)).await?);
        let answer: TlsKeyAnswer = self.decode(CALL, &body)?;
        let key_pem = Zeroizing::new(answer.key);
        let chain: Vec<Vec<u8>> = pem::parse_many(&answer.certificate_chain)
            .map_err(|e| {
                self.fail(
                    CALL,
                    GuestErrorKind::Decode(format!("certificate_chain: {e}")),
                )
            })?
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(pem::Pem::into_contents)
            .collect();
        if chain.is_empty() {
            return Err(self.fail(
                CALL,
                GuestErrorKind::Decode("certificate_chain holds no certificate".into()),
            ));
        }
        Ok(GuestTlsKey { chain, key_pem })
    }

    fn fail(&self, call: &'static str, kind: GuestErrorKind) -> GuestError {
        GuestError {
            call,
            socket: self.socket.clone(),
            kind,
        }
    }

    fn decode<T: DeserializeOwned>(
        &self,
        call: &'static str,
        body: &[u8],
    ) -> Result<T, GuestError> {
        serde_json::from_slice(body)
            .map_err(|e| self.fail(call, GuestErrorKind::Decode(e.to_string())))
    }

    fn hex(&self, call: &'static str, field: &str, text: &str) -> Result<Vec<u8>, GuestError> {
        hex::decode(text)
            .map_err(|e| self.fail(call, GuestErrorKind::Decode(format!("{field}: {e}"))))
    }

    /// One request on a new connection, under the deadline; the 2xx body, or an error.
    async fn call(
        &self,
        call: &'static str,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, GuestError> {
        match tokio::time::timeout(self.deadline, self.exchange(method, path, body)).await {
            Ok(r) => r.map_err(|kind| self.fail(call, kind)),
            Err(_) => Err(self.fail(call, GuestErrorKind::Deadline(self.deadline))),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, GuestErrorKind> {
        let http = |e: &dyn std::fmt::Display| GuestErrorKind::Http(e.to_string());
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(GuestErrorKind::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        // The connection task ends with the call (the sender is dropped) or the deadline.
        let driver = tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost");
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| http(&e))?;
        let result = async {
            let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        GuestErrorKind::TooLarge
                    } else {
                        GuestErrorKind::Http(e.to_string())
                    }
                })?
                .to_bytes();
            if !status.is_success() {
                let message = serde_json::from_slice::<ErrorAnswer>(&bytes)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| {
                        String::from_utf8_lossy(&bytes).chars().take(300).collect()
                    });
                return Err(GuestErrorKind::Status {
                    status: status.as_u16(),
                    message,
                });
            }
            Ok(bytes.to_vec())
        }
        .await;
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_names_the_call_and_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nothing.sock");
        let err = GuestApi::connect(&sock).await.unwrap_err();
        assert!(err.kind.is_unreachable(), "{err}");
        let text = err.to_string();
        assert!(text.contains("GET /info"), "{text}");
        assert!(text.contains("nothing.sock"), "{text}");
    }

    #[tokio::test]
    async fn a_silent_peer_hits_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("silent.sock");
        // Accepts and never answers.
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let api = GuestApi::new(&sock).with_deadline(Duration::from_millis(200));
        let err = api.quote(&ReportData::ZERO).await.unwrap_err();
        assert!(matches!(err.kind, GuestErrorKind::Deadline(_)), "{err}");
        assert!(err.to_string().contains("POST /quote"), "{err}");
    }

    #[test]
    fn derived_keys_do_not_print() {
        let k = DerivedKey(Zeroizing::new([7; 32]));
        assert_eq!(format!("{k:?}"), "DerivedKey(..)");
    }
}
