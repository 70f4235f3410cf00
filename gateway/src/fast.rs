//! The fast path, phase by phase: route the host name → pick a healthy instance → connect
//! and verify (or reuse a verified connection from this thread's pool) → forward the
//! request and relay the response → log. No task, channel or timer per request: an HTTP/1
//! request runs inside its connection's task, bounded by the connection's single deadline
//! (set by `http1`); an HTTP/2 stream runs beside its siblings inside its connection's task
//! (`http2`), bounded by its own deadline. Both kinds of client meet the upstream the same
//! way; only the client's side differs ([`crate::downstream`]).
//!
//! It serves plain requests to app names ([`head::parse_request`] and
//! [`h2head::request`] say which); for anything else it declines before touching the
//! connection or stream, and pingora's proxy ([`crate::proxy::GatewayProxy`]) serves the
//! request as before: trust pages, refusals, custom domains, `g` names, upgrades, chunked
//! uploads, HTTP/2 request bodies, HTTP/1.0.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use pingora_core::protocols::http::v2::server::HttpSession as H2Session;
use pingora_core::protocols::Stream;
use ratls::InstanceId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::downstream::{BadBody, ClientGone, Downstream, Pieces, Relay};
use crate::h2head;
use crate::head::{self, ClientProto, Framing, Parsed, ParsedResponse, Request};
use crate::metrics::Metrics;
use crate::names::{self, HostMemo, Mode};
use crate::proxy::{now_ms, ProxySettings};
use crate::registry::{PickError, Registry, Resolved};
use crate::spare;
use crate::upstream::{Upstreams, Verified};

/// Largest upstream response head accepted.
const RESPONSE_HEAD_MAX: usize = 64 * 1024;
/// Bytes read at a time while relaying a body.
const READ_CHUNK: usize = 16 * 1024;

pub struct FastPath {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub settings: ProxySettings,
    pub upstreams: Upstreams,
}

/// What became of a request head handed to [`FastPath::serve`].
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; the connection may carry another request.
    KeepAlive,
    /// Answered (or abandoned); close the connection.
    Close,
    /// Not for the fast path: nothing was read or written, serve it the general way.
    General,
}

/// Why forwarding stopped.
enum Fail {
    /// The upstream failed; `started` once any byte of the response went to the client.
    Upstream { started: bool, error: String },
    /// The client went away or sent less than it announced.
    Client,
}

/// What one request did, for the log phase.
struct Exchange {
    app: ratls::AppId,
    instance: Option<InstanceId>,
    status: u16,
    /// The client connection must close after this exchange.
    close: bool,
    error: Option<String>,
}

/// Response progress, readable after the request's future is dropped at the deadline.
#[derive(Default)]
pub struct Progress {
    /// Some of the response reached the client.
    started: AtomicBool,
    /// The app the request was routed to, once it was.
    app: OnceLock<ratls::AppId>,
}

impl Progress {
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    fn start(&self) {
        self.started.store(true, Ordering::Relaxed);
    }
}

/// A request the fast path routed: the app name it resolved, and where.
struct Route {
    target: names::Target,
    resolved: Resolved,
    app: ratls::AppId,
}

impl FastPath {
    /// Serves the HTTP/1 request whose head starts `buf` (which may hold body bytes after it).
    pub async fn serve(
        &self,
        client: &mut Stream,
        buf: &mut BytesMut,
        client_ip: Option<IpAddr>,
        hosts: &HostMemo,
        progress: &Progress,
    ) -> Outcome {
        let started = Instant::now();
        // Phase 1: route. Only a registered app name within its limits is ours.
        let Parsed::Fast(req) = head::parse_request(buf) else {
            return Outcome::General;
        };
        let Some(route) = self.route(&req, hosts) else {
            return Outcome::General;
        };
        // From here on the request is ours to answer.
        buf.advance(req.head_len);
        let buffered_body = buf
            .len()
            .min(usize::try_from(req.body_len).unwrap_or(usize::MAX));
        // Bytes past the body would be a pipelined request: not served, the connection closes.
        let pipelined = buf.len() > buffered_body;
        let mut down = Downstream::H1 {
            stream: client,
            buf,
            buffered_body,
            pipelined,
        };
        let ex = self
            .exchange(&mut down, &req, &route, client_ip, progress)
            .await;
        // Phase 5: log.
        self.log(ClientProto::Http1, &req, client_ip, &ex, started);
        if ex.close || req.close {
            Outcome::Close
        } else {
            Outcome::KeepAlive
        }
    }

    /// Serves one HTTP/2 stream's request, the same phases as [`FastPath::serve`]; `false`
    /// when it is not for the fast path (nothing was sent: pingora's proxy serves it).
    pub async fn serve_h2(
        &self,
        stream: &mut H2Session,
        client_ip: Option<IpAddr>,
        hosts: &HostMemo,
        progress: &Progress,
    ) -> bool {
        let started = Instant::now();
        if !stream.is_body_empty() {
            return false;
        }
        let Parsed::Fast(req) = h2head::request(stream.req_header()) else {
            return false;
        };
        let Some(route) = self.route(&req, hosts) else {
            return false;
        };
        let ex = self
            .exchange(
                &mut Downstream::h2(stream),
                &req,
                &route,
                client_ip,
                progress,
            )
            .await;
        self.log(ClientProto::Http2, &req, client_ip, &ex, started);
        true
    }

    /// Phase 1: whether the request goes to a registered app within its limits.
    fn route(&self, req: &Request, hosts: &HostMemo) -> Option<Route> {
        if req.header_bytes > self.settings.max_header_bytes {
            return None;
        }
        let target = hosts
            .parse(req.host_bytes(), &self.settings.base_domain)
            .ok()?;
        if target.mode != Mode::Terminate {
            return None;
        }
        let (resolved, in_flight) = self.registry.resolve_with_load(&target.id)?;
        let app = resolved.app();
        if in_flight >= self.settings.max_in_flight_per_app {
            return None;
        }
        Some(Route {
            target,
            resolved,
            app,
        })
    }

    /// Phases 2–4: pick, connect and verify, forward; again on another instance (or on a
    /// fresh connection) while nothing was answered and the request may be replayed.
    async fn exchange(
        &self,
        down: &mut Downstream<'_>,
        req: &Request,
        route: &Route,
        client_ip: Option<IpAddr>,
        progress: &Progress,
    ) -> Exchange {
        let (target, app) = (route.target, route.app);
        let _ = progress.app.set(app);
        let replayable = req.method.idempotent() && req.body_len == 0;
        let mut tried = [InstanceId([0; 20]); 6];
        let mut n_tried = 0;
        let mut retry_same = None;
        loop {
            // Phase 2: pick an instance (or retry the one whose pooled connection was stale).
            let inst = match retry_same.take() {
                Some(inst) => inst,
                None => match self.registry.pick(
                    route.resolved,
                    target.port,
                    &tried[..n_tried],
                    self.settings.balance,
                    now_ms(),
                ) {
                    Ok(inst) => {
                        if n_tried < tried.len() {
                            tried[n_tried] = inst.record.instance_id;
                            n_tried += 1;
                        }
                        inst
                    }
                    Err(e) => {
                        // After a failed attempt, the failure is the answer: no other
                        // instance is left to try.
                        let status = match e {
                            _ if n_tried > 0 => 502,
                            PickError::Unknown => 404,
                            PickError::AllDown => 503,
                        };
                        return answer_error(down, app, None, status, progress).await;
                    }
                },
            };
            let _in_flight = inst.begin();
            let id = inst.record.instance_id;
            // Phase 3: connect and verify, unless this thread holds a verified idle one.
            let (conn, reused) = match self.upstreams.pooled(&inst, target.port) {
                Some(conn) => (conn, true),
                // Boxed: the TLS connect's future is the largest of the exchange's states,
                // and every request's future (an HTTP/2 stream's is allocated and copied
                // whole) would carry its size for the few that connect.
                None => match Box::pin(self.upstreams.connect(&inst, target.port)).await {
                    Ok(conn) => (conn, false),
                    Err(e) => {
                        self.mark_down(&id);
                        self.metrics
                            .upstream_failures
                            .with_label_values(&[e.reason()])
                            .inc();
                        let refused = matches!(e, crate::upstream::ConnectError::Refused { .. });
                        if refused {
                            tracing::warn!(instance = %id, error = %e, "upstream presented a certificate the gateway did not verify; refusing");
                        } else {
                            tracing::warn!(instance = %id, error = %e, "upstream connect failed; instance marked down");
                        }
                        // Nothing was sent: another instance may be tried (unless the
                        // front's identity was the problem).
                        if !refused && n_tried <= self.settings.retries {
                            continue;
                        }
                        return answer_error(down, app, Some(id), 502, progress).await;
                    }
                },
            };
            // Phase 4: forward.
            match self.forward(conn, req, down, client_ip, progress).await {
                Ok((status, close)) => {
                    return Exchange {
                        app,
                        instance: Some(id),
                        status,
                        close,
                        error: None,
                    }
                }
                Err(Fail::Upstream {
                    started: false,
                    error,
                }) if replayable => {
                    if reused {
                        // A pooled connection the front had closed says nothing about it.
                        retry_same = Some(inst);
                        continue;
                    }
                    self.mark_down(&id);
                    tracing::warn!(instance = %id, error, "upstream failed before answering on a new connection; instance marked down");
                    if n_tried <= self.settings.retries {
                        continue;
                    }
                    return answer_error(down, app, Some(id), 502, progress).await;
                }
                Err(Fail::Upstream { started, error }) => {
                    if !reused {
                        self.mark_down(&id);
                    }
                    tracing::warn!(instance = %id, error, reused, started, "upstream failed during the exchange");
                    if started {
                        return Exchange {
                            app,
                            instance: Some(id),
                            status: 0,
                            close: true,
                            error: Some(error),
                        };
                    }
                    let mut ex = answer_error(down, app, Some(id), 502, progress).await;
                    ex.error = Some(error);
                    return ex;
                }
                Err(Fail::Client) => {
                    return Exchange {
                        app,
                        instance: Some(id),
                        status: 0,
                        close: true,
                        error: Some("client went away".into()),
                    }
                }
            }
        }
    }

    fn mark_down(&self, id: &InstanceId) {
        self.registry
            .mark_down(id, now_ms() + self.settings.down_backoff.as_millis() as u64);
    }

    /// Sends the request and relays the response; returns its status and whether the
    /// client connection must close after it.
    async fn forward(
        &self,
        mut up: Verified,
        req: &Request,
        down: &mut Downstream<'_>,
        client_ip: Option<IpAddr>,
        progress: &Progress,
    ) -> Result<(u16, bool), Fail> {
        let up_err = |e: std::io::Error| Fail::Upstream {
            started: false,
            error: e.to_string(),
        };
        // The head, our forwarding headers and the body bytes already read go out in one
        // TLS record where they fit.
        let buffered = down.buffered_body();
        let mut out = Vec::with_capacity(req.upstream.len() + 80 + buffered.len());
        out.extend_from_slice(&req.upstream);
        if let Some(ip) = client_ip {
            head::push_forwarded_for(&mut out, ip);
        }
        out.extend_from_slice(b"x-forwarded-proto: https\r\n\r\n");
        out.extend_from_slice(buffered);
        let mut body_left = req.body_len - buffered.len() as u64;
        up.tls.write_all(&out).await.map_err(up_err)?;
        drop(out);
        if body_left > 0 {
            let mut chunk = BytesMut::with_capacity(READ_CHUNK);
            while body_left > 0 {
                chunk.clear();
                let want = READ_CHUNK.min(usize::try_from(body_left).unwrap_or(READ_CHUNK));
                down.read_body(&mut chunk, want)
                    .await
                    .map_err(|ClientGone| Fail::Client)?;
                up.tls.write_all(&chunk).await.map_err(up_err)?;
                body_left -= chunk.len() as u64;
            }
        }
        up.tls.flush().await.map_err(up_err)?;
        down.consumed();

        // The response head (interim 1xx responses are read past and not relayed).
        let mut rbuf = spare::take();
        let resp = loop {
            // Nothing to parse before the first read.
            let parsed = if rbuf.is_empty() {
                ParsedResponse::Partial
            } else {
                head::parse_response(&rbuf, req.method, down.proto())
            };
            match parsed {
                ParsedResponse::Complete(r) => break r,
                ParsedResponse::Interim(n) => {
                    rbuf.advance(n);
                    continue;
                }
                ParsedResponse::Invalid(e) => {
                    return Err(Fail::Upstream {
                        started: false,
                        error: format!("invalid response head: {e}"),
                    })
                }
                ParsedResponse::Partial if rbuf.len() >= RESPONSE_HEAD_MAX => {
                    return Err(Fail::Upstream {
                        started: false,
                        error: "response head too large".into(),
                    })
                }
                ParsedResponse::Partial => {}
            }
            rbuf.reserve(4096);
            match up.tls.read_buf(&mut rbuf).await {
                Ok(0) => {
                    return Err(Fail::Upstream {
                        started: false,
                        error: "upstream closed before answering".into(),
                    })
                }
                Ok(_) => {}
                Err(e) => return Err(up_err(e)),
            }
        };
        let h2_head = if down.is_h2() {
            // The HTTP/2 head keeps slices of the upstream's bytes.
            let raw = rbuf.split_to(resp.head_len).freeze();
            let head = h2head::response(&raw, &resp).map_err(|e| Fail::Upstream {
                started: false,
                error: format!("response head not valid for HTTP/2: {e}"),
            })?;
            Some(head)
        } else {
            rbuf.advance(resp.head_len);
            None
        };
        let close = req.close || down.must_close() || resp.framing == Framing::Close;

        // The body, relayed as it arrives; the head goes with its first bytes.
        let mut relay = Relay::new(resp.framing, down.is_h2());
        let mut pieces = Pieces::new();
        relay.take(&rbuf, &mut pieces).map_err(bad_body)?;
        progress.start();
        down.start(
            resp.client,
            h2_head,
            close,
            &mut rbuf,
            &pieces,
            relay.finished(),
        )
        .await
        .map_err(|ClientGone| Fail::Client)?;
        while !relay.finished() {
            rbuf.clear();
            rbuf.reserve(READ_CHUNK);
            let n = up
                .tls
                .read_buf(&mut rbuf)
                .await
                .map_err(|e| Fail::Upstream {
                    started: true,
                    error: e.to_string(),
                })?;
            if n == 0 {
                if relay.framing == Framing::Close {
                    break;
                }
                return Err(Fail::Upstream {
                    started: true,
                    error: "upstream closed mid-body".into(),
                });
            }
            relay.take(&rbuf, &mut pieces).map_err(bad_body)?;
            down.body(&mut rbuf, &pieces, relay.finished())
                .await
                .map_err(|ClientGone| Fail::Client)?;
        }
        down.finish().await.map_err(|ClientGone| Fail::Client)?;
        spare::give(rbuf);
        if !resp.upstream_close && resp.framing != Framing::Close && !relay.tainted {
            self.upstreams.release(up);
        }
        Ok((resp.status, close))
    }

    /// Phase 5 for a request the deadline cut short (its future dropped, `progress` what it
    /// left): counted as a 504 when nothing of the answer had gone out (the caller sends
    /// the 504 page), as status 0 otherwise (the answer was cut), and logged.
    pub fn timed_out(&self, protocol: ClientProto, client_ip: Option<IpAddr>, progress: &Progress) {
        let status = if progress.started() { 0 } else { 504 };
        let mut app_hex = [0u8; 40];
        let app = match progress.app.get() {
            Some(app) => {
                self.metrics.count_request(app, status);
                app.hex_into(&mut app_hex)
            }
            None => {
                let label = crate::metrics::status_label(status);
                self.metrics.requests.with_label_values(&["-", label]).inc();
                "-"
            }
        };
        self.metrics.count_fast_path(protocol);
        if self.settings.access_log {
            tracing::info!(
                target: "teegate::access",
                client = %client_ip.map(|a| a.to_string()).unwrap_or_default(),
                app = %app,
                status,
                refusal = "",
                error = "request timeout",
            );
        }
    }

    /// Phase 5: the request's metrics (by the client's protocol) and access log.
    fn log(
        &self,
        protocol: ClientProto,
        req: &Request,
        client_ip: Option<IpAddr>,
        ex: &Exchange,
        started: Instant,
    ) {
        self.metrics.count_request(&ex.app, ex.status);
        self.metrics.count_fast_path(protocol);
        let elapsed = started.elapsed();
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        if self.settings.access_log {
            let mut app_hex = [0u8; 40];
            let app = ex.app.hex_into(&mut app_hex);
            let status = ex.status;
            tracing::info!(
                target: "teegate::access",
                client = %client_ip.map(|a| a.to_string()).unwrap_or_default(),
                method = %req.method_name(),
                path = %req.path().split('?').next().unwrap_or(""),
                app = %app,
                instance = %ex.instance.map(|i| i.to_hex()).unwrap_or_default(),
                status,
                refusal = "",
                error = %ex.error.as_deref().unwrap_or(""),
                micros = elapsed.as_micros() as u64,
            );
        }
    }
}

/// Answers with one of the gateway's own error pages (nothing was sent yet).
async fn answer_error(
    down: &mut Downstream<'_>,
    app: ratls::AppId,
    instance: Option<InstanceId>,
    status: u16,
    progress: &Progress,
) -> Exchange {
    let (title, detail) = match status {
        404 => (
            "App Not Registered",
            "This app is not registered with this gateway.",
        ),
        503 => (
            "Service Unavailable",
            "No healthy instance of this app is available right now.",
        ),
        _ => (
            "Bad Gateway",
            "The app's instance could not be reached or did not prove its identity.",
        ),
    };
    progress.start();
    // Boxed, as the upstream connect in `exchange`: a rare path's future would otherwise
    // size every request's.
    Box::pin(down.error_page(status, title, detail)).await;
    Exchange {
        app,
        instance,
        status,
        close: true,
        error: None,
    }
}

fn bad_body(_: BadBody) -> Fail {
    Fail::Upstream {
        started: true,
        error: "malformed chunked body".into(),
    }
}
