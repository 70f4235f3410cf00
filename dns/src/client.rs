//! [`HttpAcmeDnsClient`]: the record API over HTTP/1.1 (one connection per call: calls are
//! rare, a few per certificate order).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::api::{
    AcmeChallengeBody, AcmeDnsClient, ApiError, CaaAccountBody, ClientError, GatewayAddrsBody,
    ZoneView, ACME_CHALLENGE_PREFIX, CAA_ACCOUNT_PATH, GATEWAY_ADDRS_PATH, ZONE_PATH,
};

/// Largest answer body read.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// A client of a `teegate dns` record API at `http://host:port`.
///
/// The API speaks plain HTTP: run it on loopback or a private network. It takes no call
/// without its token, and checks that `Host` (here the endpoint's `host:port`) names it.
#[derive(Clone)]
pub struct HttpAcmeDnsClient {
    authority: String,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpAcmeDnsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAcmeDnsClient")
            .field("authority", &self.authority)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl HttpAcmeDnsClient {
    /// A client of the API at `endpoint` (`http://host:port`, optionally with a trailing
    /// `/`), sending `token` as a bearer token when given. Calls time out after 10 s.
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Self, ClientError> {
        let fail = |reason: &str| ClientError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = endpoint
            .strip_prefix("http://")
            .ok_or_else(|| fail("must start with http://"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(fail("must be http://host:port with no path"));
        }
        let port = authority.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(fail("must name the port"));
        }
        Ok(HttpAcmeDnsClient {
            authority: authority.to_owned(),
            token,
            timeout: Duration::from_secs(10),
        })
    }

    /// Changes the per-call time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET /v1/zone`.
    pub async fn zone(&self) -> Result<ZoneView, ClientError> {
        let body = self.call(Method::GET, ZONE_PATH, None).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `PUT /v1/gateway-addrs`.
    pub async fn set_gateway_addrs(&self, addrs: Vec<std::net::IpAddr>) -> Result<(), ClientError> {
        let body = json(&GatewayAddrsBody { addrs })?;
        self.call(Method::PUT, GATEWAY_ADDRS_PATH, Some(body))
            .await
            .map(drop)
    }

    /// `DELETE /v1/caa-account`: no CAA records until an account is set again.
    pub async fn clear_caa_account(&self) -> Result<(), ClientError> {
        self.call(Method::DELETE, CAA_ACCOUNT_PATH, None)
            .await
            .map(drop)
    }

    /// One request on a fresh connection; the body of a 2xx answer, or the error it names.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let secs = self.timeout.as_secs();
        tokio::time::timeout(self.timeout, self.call_inner(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout {
                endpoint: self.authority.clone(),
                secs,
            })?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport {
            endpoint: self.authority.clone(),
            reason: e.to_string(),
        };
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| transport(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport(&e))?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "DNS API connection ended");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| transport(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| transport(&e))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| transport(&*e))?
            .to_bytes();
        conn.abort();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(if status == StatusCode::UNAUTHORIZED {
            ClientError::Unauthorized { message }
        } else {
            ClientError::Status {
                status: status.as_u16(),
                message,
            }
        })
    }
}

fn json(value: &impl Serialize) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Record names travel in the path: only the characters of a DNS name may appear.
fn challenge_path(record_name: &str) -> Result<String, ClientError> {
    if record_name.is_empty()
        || !record_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ClientError::Rejected(format!(
            "{record_name:?} is not a DNS record name"
        )));
    }
    Ok(format!("{ACME_CHALLENGE_PREFIX}{record_name}"))
}

#[async_trait::async_trait]
impl AcmeDnsClient for HttpAcmeDnsClient {
    async fn set_txt(&self, record_name: &str, values: Vec<String>) -> Result<(), ClientError> {
        let path = challenge_path(record_name)?;
        let body = json(&AcmeChallengeBody { values })?;
        self.call(Method::PUT, &path, Some(body)).await.map(drop)
    }

    async fn clear_txt(&self, record_name: &str) -> Result<(), ClientError> {
        let path = challenge_path(record_name)?;
        self.call(Method::DELETE, &path, None).await.map(drop)
    }

    async fn set_caa_account(&self, account_uri: &str) -> Result<(), ClientError> {
        let body = json(&CaaAccountBody {
            account_uri: account_uri.to_owned(),
        })?;
        self.call(Method::PUT, CAA_ACCOUNT_PATH, Some(body))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_must_be_http_host_port() {
        assert!(HttpAcmeDnsClient::new("http://127.0.0.1:8053", None).is_ok());
        assert!(HttpAcmeDnsClient::new("http://localhost:8053/", None).is_ok());
        for bad in [
            "https://127.0.0.1:8053",
            "http://127.0.0.1",
            "http://127.0.0.1:8053/v1",
            "http://",
        ] {
            assert!(HttpAcmeDnsClient::new(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let c = HttpAcmeDnsClient::new("http://127.0.0.1:1", Some("s3cret-token".into())).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn record_names_with_path_characters_are_refused() {
        assert!(challenge_path("_acme-challenge.a.example").is_ok());
        assert!(challenge_path("../v1/zone").is_err());
        assert!(challenge_path("a b").is_err());
    }
}
