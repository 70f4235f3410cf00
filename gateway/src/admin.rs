//! The admin listener: Prometheus `/metrics`, and an admin API (`GET /v1/apps`,
//! `GET /v1/apps/<id>`, `DELETE /v1/instances/<id>`, `GET /v1/replicas`,
//! `GET /v1/sealing`, `POST /v1/acme/renew`) that requires the configured bearer token; with no token
//! configured the admin API is off. Also the port-80 redirect.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::http_util::{error, json, text, Body, Peer};
use crate::metrics::Metrics;
use crate::proxy::now_ms;
use crate::registry::Registry;
use crate::store::{EtcdStore, SealedStore, Store};

pub struct Admin {
    pub acme: Option<Arc<crate::acme::Acme>>,
    pub token: Option<String>,
    pub registry: Arc<Registry>,
    pub store: Arc<dyn Store>,
    /// The etcd store when replicas share one; `None` with the embedded store.
    pub etcd: Option<EtcdStore>,
    pub metrics: Arc<Metrics>,
    /// The sealing layer: its key id and source, and the records it could not open.
    pub sealing: Arc<SealedStore>,
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> Result<(), Box<Response<Body>>> {
        let Some(token) = &self.token else {
            return Err(Box::new(error(
                StatusCode::NOT_FOUND,
                "admin API is off: no admin_token is configured",
            )));
        };
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if same(g.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Box::new(error(StatusCode::FORBIDDEN, "wrong admin token"))),
            None => Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "admin API needs Authorization: Bearer <token>",
            ))),
        }
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, _peer: Peer) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path == "/metrics" && req.method() == Method::GET {
            self.metrics
                .registered_instances
                .set(self.registry.instance_count() as i64);
            return text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            );
        }
        if !path.starts_with("/v1/") {
            return error(StatusCode::NOT_FOUND, format!("no such endpoint {path}"));
        }
        if let Err(resp) = self.authorized(&req) {
            return *resp;
        }
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
        match (req.method().clone(), parts.as_slice()) {
            (Method::POST, ["acme", "renew"]) => match &self.acme {
                Some(acme) => {
                    acme.force_renewal();
                    json(
                        StatusCode::ACCEPTED,
                        &serde_json::json!({ "renewal": "started" }),
                    )
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    "ACME is not in use (tls.mode is not \"acme\")",
                ),
            },
            (Method::GET, ["apps"]) => json(StatusCode::OK, &self.registry.apps(now_ms())),
            (Method::GET, ["sealing"]) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "key_id": self.sealing.key().id().to_string(),
                    "key_source": self.sealing.key().source(),
                    "unreadable": self.sealing.report().unreadable(),
                }),
            ),
            (Method::GET, ["replicas"]) => match &self.etcd {
                Some(etcd) => match etcd.replicas().await {
                    Ok(list) => json(
                        StatusCode::OK,
                        &serde_json::json!({ "store": "etcd", "replicas": list }),
                    ),
                    Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                },
                None => json(
                    StatusCode::OK,
                    &serde_json::json!({ "store": "embedded", "replicas": [] }),
                ),
            },
            (Method::GET, ["apps", id]) => match id.parse::<ratls::AppId>() {
                Ok(app) => match self.registry.app(&app, now_ms()) {
                    Some(info) => json(StatusCode::OK, &info),
                    None => error(
                        StatusCode::NOT_FOUND,
                        format!("app {app} is not registered"),
                    ),
                },
                Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
            },
            (Method::DELETE, ["instances", id]) => match id.parse::<ratls::InstanceId>() {
                Ok(inst) => {
                    let Some(key) = self
                        .registry
                        .instance(&inst)
                        .map(|i| i.record.key())
                        .filter(|k| self.registry.remove(k).is_some())
                    else {
                        return error(
                            StatusCode::NOT_FOUND,
                            format!("instance {inst} is not registered"),
                        );
                    };
                    if let Err(e) = self.store.delete_instance(&key).await {
                        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                    }
                    tracing::info!(instance = %inst, "instance removed by admin");
                    json(
                        StatusCode::OK,
                        &serde_json::json!({ "deleted": inst.to_hex() }),
                    )
                }
                Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
            },
            _ => error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint {} {path}", req.method()),
            ),
        }
    }
}

/// Port 80: send every request to the same host and path over HTTPS.
pub async fn redirect(
    req: Request<Incoming>,
    _peer: Peer,
    https_port: u16,
    tokens: Arc<crate::acme::Http01Tokens>,
) -> Response<Body> {
    // HTTP-01 challenges for on-demand custom-domain certificates are answered here.
    if let Some(token) = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")
    {
        return match tokens.get(token) {
            Some(key_auth) => text(StatusCode::OK, "application/octet-stream", key_auth),
            None => error(StatusCode::NOT_FOUND, "no such challenge"),
        };
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_string());
    let Some(host) = host.filter(|h| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    }) else {
        return error(StatusCode::BAD_REQUEST, "a valid Host header is needed");
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    Response::builder()
        .status(StatusCode::MOVED_PERMANENTLY)
        .header(
            http::header::LOCATION,
            format!("https://{host}{port}{path}"),
        )
        .body(Body::default())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
