//! The record API server (HTTP/1.1 on hyper): `Host` check, bearer-token check, routing,
//! JSON bodies, and bounds (connections, header and request time, body size). See
//! [`crate::api`] for routes.
//!
//! The token is required on every call, also on loopback, and the `Host` header must name
//! this API (`localhost`, an address literal of the listener, or `api.allowed_hosts`): a
//! browser on the operator's machine can reach loopback, and a page whose name the attacker
//! rebinds to 127.0.0.1 sends `Host: <attacker's name>`, which is refused before anything
//! else is looked at.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{
    AcmeChallengeBody, ApiError, CaaAccountBody, GatewayAddrsBody, ACME_CHALLENGE_PREFIX,
    CAA_ACCOUNT_PATH, GATEWAY_ADDRS_PATH, ZONE_PATH,
};
use crate::zone::ZoneHandle;
use crate::Limits;

/// Largest request body read.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Who may call: the bearer token, and the names a `Host` header may give.
pub(crate) struct Access {
    token: String,
    /// Lowercase, without a trailing dot: `localhost`, the listen address (when it is not
    /// the unspecified address) and `api.allowed_hosts`.
    hosts: Vec<String>,
}

impl Access {
    pub(crate) fn new(token: String, listen: SocketAddr, allowed: &[config::DnsName]) -> Self {
        let mut hosts = vec!["localhost".to_owned()];
        if !listen.ip().is_unspecified() {
            hosts.push(listen.ip().to_string());
        }
        hosts.extend(allowed.iter().map(|n| n.as_str().to_ascii_lowercase()));
        Access { token, hosts }
    }

    /// Whether `host` (a `Host` header or URI authority, with or without a port) names this
    /// API. An address literal of the socket the request came in on is accepted too (for a
    /// listener on `0.0.0.0`): a rebinding page can only send a name, never such a literal.
    fn host_allowed(&self, host: &str, local: IpAddr) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            return ip == local || self.hosts.iter().any(|h| h.parse::<IpAddr>() == Ok(ip));
        }
        self.hosts.contains(&name)
    }
}

/// The host part of a `Host` value, lowercase and without port or trailing dot; `None` if
/// it is not of the shape `name[:port]`, `v4[:port]` or `[v6][:port]`.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':')?.parse::<u16>().is_ok()) {
            return None;
        }
        v6
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return None,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// Serves the API until `shutdown`, then closes open connections after a second.
pub(crate) async fn serve(
    listener: TcpListener,
    zone: ZoneHandle,
    access: Access,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let api = Arc::new(Api { zone, access });
    let slots = Arc::new(Semaphore::new(limits.api_max_connections));
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "DNS API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "DNS API connection limit reached; closing");
            continue;
        };
        let api = api.clone();
        let lifetime = limits.api_connection_timeout;
        let local = match stream.local_addr() {
            Ok(a) => a.ip(),
            Err(_) => continue,
        };
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, std::convert::Infallible>(api.handle(req, peer, local).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(lifetime, conn).await {
                Ok(Err(error)) => tracing::debug!(%peer, %error, "DNS API connection error"),
                Err(_) => tracing::debug!(%peer, "DNS API connection closed at its time limit"),
                Ok(Ok(())) => {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    conns.abort_all();
}

struct Api {
    zone: ZoneHandle,
    access: Access,
}

type Answer = Response<Full<Bytes>>;

impl Api {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr, local: IpAddr) -> Answer {
        if let Err(host) = self.host_checked(&req, local) {
            tracing::warn!(%peer, host = %host.escape_debug(), path = req.uri().path(), "DNS API: Host is not this API (DNS rebinding?)");
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                &format!("Host {host:?} is not this API: send Host: localhost or the listen address, or add the name to api.allowed_hosts"),
            );
        }
        if !self.authorised(&req) {
            tracing::warn!(%peer, path = req.uri().path(), "DNS API: missing or wrong token");
            let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let resp = self.route(&method, &path, req).await;
        tracing::debug!(%peer, %method, path, status = resp.status().as_u16(), "DNS API");
        resp
    }

    /// `Err(the host given)` unless the `Host` header (and an absolute-form URI's
    /// authority, which takes precedence over it) names this API.
    fn host_checked(&self, req: &Request<Incoming>, local: IpAddr) -> Result<(), String> {
        let header = req.headers().get(header::HOST).map(|v| v.to_str());
        let header = match header {
            Some(Ok(h)) => h,
            Some(Err(_)) => return Err("<not text>".to_owned()),
            None => return Err(String::new()),
        };
        let uri_host = req.uri().authority().map(|a| a.as_str());
        for host in std::iter::once(header).chain(uri_host) {
            if !self.access.host_allowed(host, local) {
                return Err(host.to_owned());
            }
        }
        Ok(())
    }

    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let expected = &self.access.token;
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        constant_time_eq(given, expected.as_bytes())
    }

    async fn route(&self, method: &Method, path: &str, req: Request<Incoming>) -> Answer {
        let zone = &self.zone;
        if let Some(name) = path.strip_prefix(ACME_CHALLENGE_PREFIX) {
            return match *method {
                Method::PUT => match body::<AcmeChallengeBody>(req).await {
                    Ok(b) => done(zone.set_acme_txt(name, b.values)),
                    Err(resp) => resp,
                },
                Method::DELETE => done(zone.clear_acme_txt(name).map(drop)),
                _ => not_allowed("PUT, DELETE"),
            };
        }
        match path {
            ZONE_PATH => match *method {
                Method::GET => json(StatusCode::OK, &zone.view()),
                _ => not_allowed("GET"),
            },
            GATEWAY_ADDRS_PATH => match *method {
                Method::PUT => match body::<GatewayAddrsBody>(req).await {
                    Ok(b) => done(zone.set_gateway_addrs(b.addrs)),
                    Err(resp) => resp,
                },
                _ => not_allowed("PUT"),
            },
            CAA_ACCOUNT_PATH => match *method {
                Method::PUT => match body::<CaaAccountBody>(req).await {
                    Ok(b) => done(zone.set_caa_account(&b.account_uri)),
                    Err(resp) => resp,
                },
                Method::DELETE => {
                    zone.clear_caa_account();
                    no_content()
                }
                _ => not_allowed("PUT, DELETE"),
            },
            _ => error(StatusCode::NOT_FOUND, "no such path"),
        }
    }
}

/// Reads and decodes a JSON body, or the error answer to send instead.
async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Answer> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body larger than {MAX_BODY_BYTES} bytes"),
            ))
        }
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                &format!("reading body: {e}"),
            ))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

fn done(result: Result<(), crate::ZoneError>) -> Answer {
    match result {
        Ok(()) => no_content(),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn no_content() -> Answer {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

fn not_allowed(allow: &'static str) -> Answer {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    resp
}

fn error(status: StatusCode, message: &str) -> Answer {
    json(
        status,
        &ApiError {
            error: message.to_owned(),
        },
    )
}

fn json(status: StatusCode, value: &impl Serialize) -> Answer {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::{constant_time_eq, host_name, Access};

    #[test]
    fn host_names_this_api_or_not() {
        let name = config::DnsName::parse("dns-api.internal").unwrap();
        let a = Access::new("t".into(), "127.0.0.1:8053".parse().unwrap(), &[name]);
        let lo = "127.0.0.1".parse().unwrap();
        for ok in [
            "localhost",
            "LOCALHOST:8053",
            "localhost.",
            "127.0.0.1:8053",
            "127.0.0.1",
            "dns-api.internal:80",
        ] {
            assert!(a.host_allowed(ok, lo), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8053",
            "localhost.attacker.example",
            "127.0.0.2",
            "",
            "localhost:x",
            "[::1]:8053",
            "127.0.0.1:8053@attacker.example",
        ] {
            assert!(!a.host_allowed(bad, lo), "{bad}");
        }
        // Listening on 0.0.0.0: the address the connection came in on is accepted.
        let any = Access::new("t".into(), "0.0.0.0:8053".parse().unwrap(), &[]);
        assert!(any.host_allowed("10.0.0.5:8053", "10.0.0.5".parse().unwrap()));
        assert!(!any.host_allowed("0.0.0.0", "10.0.0.5".parse().unwrap()));
        assert!(any.host_allowed("[::1]", "::1".parse().unwrap()));
        assert_eq!(host_name("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(host_name("[::1]x"), None);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
