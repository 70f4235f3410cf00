//! The HTTP/1 fast path, phase by phase: route the host name → pick a healthy instance →
//! connect and verify (or reuse a verified connection from this thread's pool) → forward
//! the request and relay the response → log. No task, channel or timer per request: it
//! runs inside the connection's own task, and the connection's single deadline (set by
//! `http1`) bounds the whole exchange.
//!
//! It serves plain requests to app names ([`head::parse_request`] says which); for anything
//! else it answers [`Outcome::General`] before touching the connection, and pingora's proxy
//! ([`crate::proxy::GatewayProxy`]) serves the request as before: trust pages, refusals,
//! custom domains, `g` names, upgrades, chunked uploads, HTTP/1.0.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use pingora_core::protocols::Stream;
use ratls::InstanceId;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::chunked::Chunked;
use crate::head::{self, Framing, Parsed, ParsedResponse, Request};
use crate::metrics::Metrics;
use crate::names::{self, Mode};
use crate::pages;
use crate::proxy::{now_ms, ProxySettings};
use crate::registry::{PickError, Registry, Resolved};
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
}

impl Progress {
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    fn start(&self) {
        self.started.store(true, Ordering::Relaxed);
    }
}

impl FastPath {
    /// Serves the request whose head starts `buf` (which may hold body bytes after it).
    pub async fn serve(
        &self,
        client: &mut Stream,
        buf: &mut BytesMut,
        client_ip: Option<IpAddr>,
        progress: &Progress,
    ) -> Outcome {
        let started = Instant::now();
        // Phase 1: route. Only a registered app name within its limits is ours.
        let Parsed::Fast(req) = head::parse_request(buf) else {
            return Outcome::General;
        };
        if req.header_bytes > self.settings.max_header_bytes {
            return Outcome::General;
        }
        let Ok(target) = names::parse(&req.host, &self.settings.base_domain) else {
            return Outcome::General;
        };
        if target.mode != Mode::Terminate {
            return Outcome::General;
        }
        let Some(resolved) = self.registry.resolve(&target.id) else {
            return Outcome::General;
        };
        let app = match resolved {
            Resolved::App(a) | Resolved::Instance(a, _) => a,
        };
        if self.registry.app_in_flight(&app) >= self.settings.max_in_flight_per_app {
            return Outcome::General;
        }
        // From here on the request is ours to answer.
        buf.advance(req.head_len);
        let buffered_body = buf
            .len()
            .min(usize::try_from(req.body_len).unwrap_or(usize::MAX));
        // Bytes past the body would be a pipelined request: not served, the connection closes.
        let pipelined = buf.len() > buffered_body;
        let replayable = req.method.idempotent() && req.body_len == 0;
        let mut tried = [InstanceId([0; 20]); 6];
        let mut n_tried = 0;
        let mut retry_same = None;
        let ex = loop {
            // Phase 2: pick an instance (or retry the one whose pooled connection was stale).
            let inst = match retry_same.take() {
                Some(inst) => inst,
                None => match self.registry.pick(
                    resolved,
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
                        break self.answer_error(client, app, None, status, progress).await;
                    }
                },
            };
            let _in_flight = inst.begin();
            let id = inst.record.instance_id;
            // Phase 3: connect and verify, unless this thread holds a verified idle one.
            let (conn, reused) = match self.upstreams.pooled(&inst, target.port) {
                Some(conn) => (conn, true),
                None => match self.upstreams.connect(&inst, target.port).await {
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
                        break self
                            .answer_error(client, app, Some(id), 502, progress)
                            .await;
                    }
                },
            };
            // Phase 4: forward.
            let sent = self
                .forward(
                    conn,
                    &req,
                    buf,
                    buffered_body,
                    pipelined,
                    client,
                    client_ip,
                    progress,
                )
                .await;
            match sent {
                Ok((status, close)) => {
                    break Exchange {
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
                    tracing::debug!(instance = %id, error, "upstream failed before answering");
                    if n_tried <= self.settings.retries {
                        continue;
                    }
                    break self
                        .answer_error(client, app, Some(id), 502, progress)
                        .await;
                }
                Err(Fail::Upstream { started, error }) => {
                    if !reused {
                        self.mark_down(&id);
                    }
                    if started {
                        break Exchange {
                            app,
                            instance: Some(id),
                            status: 0,
                            close: true,
                            error: Some(error),
                        };
                    }
                    let mut ex = self
                        .answer_error(client, app, Some(id), 502, progress)
                        .await;
                    ex.error = Some(error);
                    break ex;
                }
                Err(Fail::Client) => {
                    break Exchange {
                        app,
                        instance: Some(id),
                        status: 0,
                        close: true,
                        error: Some("client went away".into()),
                    }
                }
            }
        };
        // Phase 5: log.
        self.log(&req, client_ip, &ex, started);
        if ex.close || req.close {
            Outcome::Close
        } else {
            Outcome::KeepAlive
        }
    }

    fn mark_down(&self, id: &InstanceId) {
        self.registry
            .mark_down(id, now_ms() + self.settings.down_backoff.as_millis() as u64);
    }

    /// Sends the request and relays the response; returns its status and whether the
    /// client connection must close after it.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        mut up: Verified,
        req: &Request,
        buf: &mut BytesMut,
        buffered_body: usize,
        pipelined: bool,
        client: &mut Stream,
        client_ip: Option<IpAddr>,
        progress: &Progress,
    ) -> Result<(u16, bool), Fail> {
        let up_err = |e: std::io::Error| Fail::Upstream {
            started: false,
            error: e.to_string(),
        };
        // The head, our forwarding headers and the body bytes already read go out in one
        // TLS record where they fit.
        let mut out = Vec::with_capacity(req.upstream.len() + 80 + buffered_body);
        out.extend_from_slice(&req.upstream);
        if let Some(ip) = client_ip {
            out.extend_from_slice(b"x-forwarded-for: ");
            out.extend_from_slice(ip.to_canonical().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-proto: https\r\n\r\n");
        out.extend_from_slice(&buf[..buffered_body]);
        up.tls.write_all(&out).await.map_err(up_err)?;
        let mut body_left = req.body_len - buffered_body as u64;
        if body_left > 0 {
            let mut chunk = BytesMut::with_capacity(READ_CHUNK);
            while body_left > 0 {
                chunk.clear();
                let want = READ_CHUNK.min(usize::try_from(body_left).unwrap_or(READ_CHUNK));
                let n = (&mut *client)
                    .take(want as u64)
                    .read_buf(&mut chunk)
                    .await
                    .map_err(|_| Fail::Client)?;
                if n == 0 {
                    return Err(Fail::Client);
                }
                up.tls.write_all(&chunk).await.map_err(up_err)?;
                body_left -= n as u64;
            }
        }
        up.tls.flush().await.map_err(up_err)?;
        buf.clear();

        // The response head (interim 1xx responses are read past and not relayed).
        let mut rbuf = BytesMut::with_capacity(8 * 1024);
        let resp = loop {
            match head::parse_response(&rbuf, req.method) {
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
        rbuf.advance(resp.head_len);
        let close = req.close || pipelined || resp.framing == Framing::Close;
        let mut out = resp.client;
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");

        // The body, relayed as it arrives; the head goes with its first bytes.
        let mut relay = Relay {
            framing: resp.framing,
            chunked: Chunked::default(),
            left: match resp.framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            tainted: false,
        };
        let first = relay.take(&rbuf)?;
        out.extend_from_slice(&rbuf[..first]);
        let extra = rbuf.len() > first;
        progress.start();
        client.write_all(&out).await.map_err(|_| Fail::Client)?;
        drop(out);
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
            let take = relay.take(&rbuf)?;
            client
                .write_all(&rbuf[..take])
                .await
                .map_err(|_| Fail::Client)?;
            if take < rbuf.len() {
                // Bytes past the end of the response: the upstream cannot be trusted again.
                relay.tainted = true;
            }
        }
        client.flush().await.map_err(|_| Fail::Client)?;
        if !resp.upstream_close && resp.framing != Framing::Close && !extra && !relay.tainted {
            self.upstreams.release(up);
        }
        Ok((resp.status, close))
    }

    /// Answers with one of the gateway's own error pages (nothing was sent yet).
    async fn answer_error(
        &self,
        client: &mut Stream,
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
        let body = pages::page(status, title, detail);
        let head = format!(
            "HTTP/1.1 {status} {title}\r\ncontent-type: text/html; charset=utf-8\r\n\
             content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
            body.len()
        );
        progress.start();
        let _ = write_twice(client, head.as_bytes(), body.as_bytes()).await;
        Exchange {
            app,
            instance,
            status,
            close: true,
            error: None,
        }
    }

    fn log(&self, req: &Request, client_ip: Option<IpAddr>, ex: &Exchange, started: Instant) {
        let app = ex.app.to_hex();
        let status = ex.status;
        self.metrics
            .requests
            .with_label_values(&[app.as_str(), status_label(status)])
            .inc();
        let elapsed = started.elapsed();
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        if self.settings.access_log {
            tracing::info!(
                target: "teegate::access",
                client = %client_ip.map(|a| a.to_string()).unwrap_or_default(),
                method = %req.method_name,
                path = %req.path.split('?').next().unwrap_or(""),
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

/// The status as a metric label without formatting the common ones.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        0 => "0",
        // Statuses are three digits, so at most 900 distinct labels are ever leaked.
        _ => Box::leak(status.to_string().into_boxed_str()),
    }
}

async fn write_twice<S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    a: &[u8],
    b: &[u8],
) -> std::io::Result<()> {
    s.write_all(a).await?;
    s.write_all(b).await?;
    s.flush().await
}

/// Where a response body ends, as its bytes pass.
struct Relay {
    framing: Framing,
    chunked: Chunked,
    left: u64,
    tainted: bool,
}

impl Relay {
    fn finished(&self) -> bool {
        match self.framing {
            Framing::None => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunked.done(),
            Framing::Close => false,
        }
    }

    /// How many bytes of `buf` belong to the body.
    fn take(&mut self, buf: &[u8]) -> Result<usize, Fail> {
        Ok(match self.framing {
            Framing::None => 0,
            Framing::Length(_) => {
                let n = buf
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                n
            }
            Framing::Chunked => self.chunked.feed(buf).map_err(|_| Fail::Upstream {
                started: true,
                error: "malformed chunked body".into(),
            })?,
            Framing::Close => buf.len(),
        })
    }
}
