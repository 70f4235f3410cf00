//! The HTTP proxy, phase by phase (pingora's `ProxyHttp`): route the host name → pick a
//! healthy instance → connect over TLS to its RA-TLS front → check the certificate it
//! presented is one the gateway verified at registration → forward → log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use ratls::{Fingerprint, InstanceId};

use crate::custom::CustomDomains;
use crate::metrics::Metrics;
use crate::names::{self, Mode, NameError, Target};
use crate::pages;
use crate::registry::{Balance, InFlight, Instance, PickError, Registry, Resolved};
use crate::trust_page::TrustPages;

/// Settings the proxy reads on every request.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub base_domain: String,
    pub balance: Balance,
    pub down_backoff: Duration,
    /// Further instances to try after a failed connect (idempotent requests only).
    pub retries: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub access_log: bool,
    /// Largest total size of request headers (names + values) accepted.
    pub max_header_bytes: usize,
    /// Most requests in flight to one app at once.
    pub max_in_flight_per_app: u32,
}

pub struct GatewayProxy {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub settings: ProxySettings,
    /// Present when custom domains are enabled.
    pub custom: Option<Arc<CustomDomains>>,
    /// The chain-of-trust pages at the base domain, unless `web.enabled = false`.
    pub pages: Option<Arc<TrustPages>>,
}

#[derive(Default)]
pub struct Ctx {
    target: Option<Target>,
    resolved: Option<Resolved>,
    tried: Vec<InstanceId>,
    current: Option<Arc<Instance>>,
    in_flight: Option<InFlight>,
    started: Option<Instant>,
    refusal: Option<&'static str>,
    /// The upstream presented a certificate that was not verified: never retried.
    upstream_refused: bool,
}

/// Request headers the gateway sets, or that apps trust for the client's identity
/// (lowercase, `-`-separated).
const FORWARDING_HEADERS: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
];

/// Whether `name` is one of [`FORWARDING_HEADERS`] once `_` is folded to `-` and case
/// ignored, as CGI/WSGI servers do (`X_Forwarded_For` and `X-Forwarded-For` both become
/// `HTTP_X_FORWARDED_FOR`, and the app sees whichever came first).
pub(crate) fn is_forwarding_header(name: &str) -> bool {
    let fold = |b: u8| {
        if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    FORWARDING_HEADERS
        .iter()
        .any(|h| h.len() == name.len() && h.bytes().zip(name.bytes()).all(|(h, n)| h == fold(n)))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn request_host(session: &Session) -> Option<String> {
    let req = session.req_header();
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri.authority().map(|a| a.as_str().to_string()))
}

async fn respond(session: &mut Session, status: u16, title: &str, detail: &str) -> Result<()> {
    let body = Bytes::from(pages::page(status, title, detail));
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

impl GatewayProxy {
    fn refuse(ctx: &mut Ctx, reason: &'static str) {
        ctx.refusal = Some(reason);
    }

    fn app_label(ctx: &Ctx) -> String {
        match ctx.resolved {
            Some(r) => r.app().to_hex(),
            None => "-".into(),
        }
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Some(Instant::now()),
            ..Ctx::default()
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // Bound how long a client may idle between requests and dawdle within one.
        session.set_keepalive(Some(self.settings.idle_timeout.as_secs()));
        session.set_read_timeout(Some(self.settings.request_timeout));
        session.set_write_timeout(Some(self.settings.request_timeout));
        session.set_total_drain_timeout(Some(self.settings.request_timeout));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let header_bytes: usize = session
            .req_header()
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + session.req_header().uri.to_string().len();
        if header_bytes > self.settings.max_header_bytes {
            Self::refuse(ctx, "headers-too-large");
            respond(
                session,
                431,
                "Request Header Fields Too Large",
                "The request headers exceed this gateway's limit.",
            )
            .await?;
            return Ok(true);
        }
        let Some(host) = request_host(session) else {
            Self::refuse(ctx, "no-host");
            respond(session, 400, "Bad Request", "The request names no host.").await?;
            return Ok(true);
        };
        let target = match names::parse(&host, &self.settings.base_domain) {
            Ok(t) => t,
            Err(NameError::BaseDomain) => {
                let Some(pages) = &self.pages else {
                    Self::refuse(ctx, "base-domain");
                    respond(
                        session,
                        404,
                        "Not Found",
                        "Nothing is served at the base domain.",
                    )
                    .await?;
                    return Ok(true);
                };
                let req = session.req_header();
                let accept = req
                    .headers
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let head = req.method == http::Method::HEAD;
                let page = pages.handle(&req.method, path, accept);
                let body = Bytes::from(page.body);
                let mut resp = ResponseHeader::build(page.status, Some(5))?;
                resp.insert_header(http::header::CONTENT_TYPE, page.content_type)?;
                resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
                resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
                resp.insert_header(
                    "content-security-policy",
                    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
                )?;
                session.write_response_header(Box::new(resp), head).await?;
                if !head {
                    session.write_response_body(Some(body), true).await?;
                }
                return Ok(true);
            }
            Err(NameError::NotOurDomain) => {
                let found = match (&self.custom, names::normalize_host(&host)) {
                    (Some(custom), Ok(name)) => custom.lookup(&name).await,
                    (None, _) => Err(crate::custom::CustomError::Disabled),
                    (Some(_), Err(e)) => Err(crate::custom::CustomError::NotAllowed(e.to_string())),
                };
                match found {
                    Ok(t) => t,
                    Err(e) => {
                        Self::refuse(ctx, "unknown-host");
                        tracing::debug!(host, error = %e, "no route for host");
                        respond(
                            session,
                            404,
                            "Not Found",
                            "This gateway serves no site by that name.",
                        )
                        .await?;
                        return Ok(true);
                    }
                }
            }
            Err(e) => {
                Self::refuse(ctx, "bad-name");
                respond(session, 400, "Bad Request", &e.to_string()).await?;
                return Ok(true);
            }
        };
        if target.mode == Mode::Passthrough {
            // Passthrough is decided before TLS; reaching HTTP means the client reused a
            // connection made for another name.
            Self::refuse(ctx, "misdirected");
            respond(
                session,
                421,
                "Misdirected Request",
                "Open a new connection for passthrough names.",
            )
            .await?;
            return Ok(true);
        }
        let Some((resolved, in_flight)) = self.registry.resolve_with_load(&target.id) else {
            Self::refuse(ctx, "unknown-app");
            let detail = format!(
                "App {} is not registered with this gateway.",
                target.id_hex()
            );
            respond(session, 404, "App Not Registered", &detail).await?;
            return Ok(true);
        };
        if in_flight >= self.settings.max_in_flight_per_app {
            Self::refuse(ctx, "app-connection-limit");
            respond(
                session,
                503,
                "Service Unavailable",
                "This app has too many requests in progress; try again shortly.",
            )
            .await?;
            return Ok(true);
        }
        ctx.target = Some(target);
        ctx.resolved = Some(resolved);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(target), Some(resolved)) = (ctx.target, ctx.resolved) else {
            return Error::e_explain(ErrorType::InternalError, "no route decided");
        };
        let inst = match self.registry.pick(
            resolved,
            target.port,
            &ctx.tried,
            self.settings.balance,
            now_ms(),
        ) {
            Ok(i) => i,
            Err(PickError::Unknown) => {
                return Error::e_explain(ErrorType::HTTPStatus(404), "app not registered")
            }
            Err(PickError::AllDown) => {
                return Error::e_explain(
                    ErrorType::HTTPStatus(503),
                    "no healthy instance serves this app and port",
                )
            }
        };
        ctx.tried.push(inst.record.instance_id);
        ctx.in_flight = Some(inst.begin());
        let app_hex = inst.record.app_id.to_hex();
        let sni = names::upstream_sni(&app_hex, target.port, &self.settings.base_domain);
        let mut peer = HttpPeer::new(inst.record.front_addr, true, sni);
        // The RA-TLS certificate is checked by fingerprint against the set verified at
        // registration (connected_to_upstream); the handshake still proves the front holds
        // that certificate's key.
        peer.options.verify_cert = false;
        peer.options.verify_hostname = false;
        peer.options.connection_timeout = Some(self.settings.connect_timeout);
        peer.options.total_connection_timeout = Some(self.settings.connect_timeout * 2);
        peer.options.idle_timeout = Some(self.settings.idle_timeout);
        peer.options.read_timeout = Some(self.settings.request_timeout);
        peer.options.write_timeout = Some(self.settings.request_timeout);
        peer.options.alpn = if target.mode == Mode::Grpc {
            ALPN::H2
        } else {
            ALPN::H1
        };
        ctx.current = Some(inst);
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let expected = ctx.current.as_ref().map(|i| i.record.instance_id);
        let presented = digest
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| Fingerprint::from_slice(&s.cert_digest));
        let owner = presented.and_then(|fp| self.registry.owner_of(&fp));
        if owner.is_some() && owner == expected {
            return Ok(());
        }
        if let Some(inst) = &ctx.current {
            self.registry.mark_down(
                &inst.record.instance_id,
                now_ms() + self.settings.down_backoff.as_millis() as u64,
            );
        }
        ctx.upstream_refused = true;
        let reason = match (presented, owner) {
            (None, _) => "no-certificate",
            (Some(_), None) => "unverified-certificate",
            (Some(_), Some(_)) => "other-instance-certificate",
        };
        self.metrics
            .upstream_failures
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(
            reason,
            instance = ?expected.map(|i| i.to_hex()),
            presented = ?presented.map(|f| f.to_hex()),
            "upstream presented a certificate the gateway did not verify; refusing"
        );
        Error::e_explain(
            ErrorType::HandshakeError,
            format!("upstream certificate refused: {reason}"),
        )
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(inst) = &ctx.current {
            let until = now_ms() + self.settings.down_backoff.as_millis() as u64;
            self.registry.mark_down(&inst.record.instance_id, until);
            tracing::warn!(instance = %inst.record.instance_id, error = %e, "upstream connect failed; instance marked down");
        }
        self.metrics
            .upstream_failures
            .with_label_values(&["connect"])
            .inc();
        ctx.in_flight = None;
        if ctx.tried.len() <= self.settings.retries {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        let idempotent = matches!(
            session.req_header().method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::PUT
                | http::Method::DELETE
        );
        let replayable = idempotent && !session.as_ref().retry_buffer_truncated();
        // Only the upstream's own failures (connect, TLS, read, write, timeout) say anything
        // about the instance. A client that sends a bad body, goes away, or sends a request
        // pingora will not forward must not mark an instance down or make us try another:
        // anyone could steer an app's traffic away from the instances they choose.
        let upstream_fault = *e.esource() == ErrorSource::Upstream;
        // A pooled connection that died says little about the instance; a fresh one that
        // fails mid-request does.
        if upstream_fault && !client_reused {
            if let Some(inst) = &ctx.current {
                self.registry.mark_down(
                    &inst.record.instance_id,
                    now_ms() + self.settings.down_backoff.as_millis() as u64,
                );
            }
        }
        ctx.in_flight = None;
        e.set_retry(
            upstream_fault
                && replayable
                && !ctx.upstream_refused
                && ctx.tried.len() <= self.settings.retries,
        );
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        // Never trust forwarding headers from the client: drop them, in every spelling an
        // app's server may fold onto the same name, then set our own.
        let spoofed: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|name| is_forwarding_header(name.as_str()))
            .cloned()
            .collect();
        for name in &spoofed {
            req.remove_header(name);
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
        {
            req.insert_header("x-forwarded-for", ip)?;
        }
        req.insert_header("x-forwarded-proto", "https")?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            _ if ctx.upstream_refused => 502,
            ErrorType::HTTPStatus(c) => *c,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                // The client's own fault (a malformed body, a request pingora will not
                // forward): say so while an answer can still be sent.
                ErrorSource::Downstream if session.response_written().is_none() => 400,
                ErrorSource::Downstream => 0,
                _ => 500,
            },
        };
        if code == 400 {
            Self::refuse(ctx, "client-error");
        }
        if code > 0 {
            let (title, detail) = match code {
                404 => (
                    "App Not Registered",
                    "This app is not registered with this gateway.".to_string(),
                ),
                400 => (
                    "Bad Request",
                    "The request could not be read or forwarded as sent.".to_string(),
                ),
                503 => (
                    "Service Unavailable",
                    "No healthy instance of this app is available right now.".to_string(),
                ),
                502 => (
                    "Bad Gateway",
                    "The app's instance could not be reached or did not prove its identity."
                        .to_string(),
                ),
                _ => (
                    "Error",
                    "The gateway could not complete this request.".to_string(),
                ),
            };
            if let Err(err) = respond(session, code, title, &detail).await {
                tracing::debug!(error = %err, "could not send error page");
            }
        }
        ctx.in_flight = None;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.in_flight = None;
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let app = Self::app_label(ctx);
        self.metrics
            .requests
            .with_label_values(&[&app, &status.to_string()])
            .inc();
        let elapsed = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        if self.settings.access_log {
            let req = session.req_header();
            tracing::info!(
                target: "teegate::access",
                client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
                method = %req.method,
                path = %req.uri.path(),
                app = %app,
                instance = %ctx.current.as_ref().map(|i| i.record.instance_id.to_hex()).unwrap_or_default(),
                status,
                refusal = ctx.refusal.unwrap_or(""),
                error = %e.map(|e| e.to_string()).unwrap_or_default(),
                micros = elapsed.as_micros() as u64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_forwarding_header;

    #[test]
    fn forwarding_headers_match_in_every_folded_spelling() {
        for name in [
            "x-forwarded-for",
            "X-Forwarded-For",
            "X_Forwarded_For",
            "x_forwarded_proto",
            "X-Forwarded_For",
            "x-forwarded-host",
            "X_FORWARDED_PORT",
            "Forwarded",
            "x_real_ip",
            "X-Real-Ip",
        ] {
            assert!(is_forwarding_header(name), "{name} must be dropped");
        }
    }

    #[test]
    fn other_headers_pass() {
        for name in [
            "x-forwarded",
            "x-forwarded-for-real",
            "xforwardedfor",
            "forwarded-for",
            "x-request-id",
            "host",
            "x_real",
        ] {
            assert!(!is_forwarding_header(name), "{name} must pass");
        }
    }
}
