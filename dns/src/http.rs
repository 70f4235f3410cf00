//! The record API server (HTTP/1.1 on hyper): bearer-token check, routing, JSON bodies, and
//! bounds (connections, header and request time, body size). See [`crate::api`] for routes.

use std::net::SocketAddr;
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

/// Serves the API until `shutdown`, then closes open connections after a second.
pub(crate) async fn serve(
    listener: TcpListener,
    zone: ZoneHandle,
    token: Option<String>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let api = Arc::new(Api { zone, token });
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
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, std::convert::Infallible>(api.handle(req, peer).await) }
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
    token: Option<String>,
}

type Answer = Response<Full<Bytes>>;

impl Api {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Answer {
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

    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
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
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
