//! Registering simulated instances, and raw HTTP requests (admin, loopback, guest API).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use ratls::cert::RaTlsCert;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{dev_roots, identity, provider, ratls_cert, start_front, Front, Gateway, BASE};

/// Splits a raw HTTP/1.1 response into (status, body).
fn split_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Sends one request with `Connection: close` and reads the whole answer (bounded).
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    head: &str,
    body: &[u8],
) -> (u16, String) {
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    split_response(&out)
}

/// Registers over mutual TLS with any client chain; returns (status, body).
pub async fn register_with(
    gw_reg_port: u16,
    dev_ca_pem: &str,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    body: &serde_json::Value,
) -> (u16, String) {
    let at = SocketAddr::from(([127, 0, 0, 1], gw_reg_port));
    register_with_at(at, dev_ca_pem, chain, key, body).await
}

/// As [`register_with`], at the registration listener `gw_reg`.
pub async fn register_with_at(
    gw_reg: SocketAddr,
    dev_ca_pem: &str,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    body: &serde_json::Value,
) -> (u16, String) {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(dev_roots(dev_ca_pem))
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(gw_reg).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(format!("gateway.{BASE}")).unwrap();
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return (0, format!("handshake: {e}")),
    };
    let json = serde_json::to_vec(body).unwrap();
    let head = format!(
        "POST /v1/register HTTP/1.1\r\nHost: gateway.{BASE}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        json.len()
    );
    exchange(&mut tls, &head, &json).await
}

/// Registers an RA-TLS certificate over mutual RA-TLS; returns (status, body).
pub async fn register(
    gw_reg_port: u16,
    dev_ca_pem: &str,
    client_cert: &RaTlsCert,
    body: &serde_json::Value,
) -> (u16, String) {
    register_with(
        gw_reg_port,
        dev_ca_pem,
        client_cert.rustls_chain(),
        client_cert.rustls_key(),
        body,
    )
    .await
}

pub fn register_body(front: SocketAddr, ports: &[u16]) -> serde_json::Value {
    serde_json::json!({ "front_addr": front.to_string(), "ports": ports })
}

/// The name of `id`'s app under the test base domain, with `suffix` after the app id
/// (`-8080`, `-8080s`, …).
pub fn app_host(id: &ratls::cert::Identity, suffix: &str) -> String {
    format!("{}{suffix}.{BASE}", id.app_id)
}

/// A simulated instance of `compose` (number `n`) with its RA-TLS front, registered for
/// `ports`; panics when the gateway refuses it.
pub async fn registered_instance(
    gw: &Gateway,
    compose: &[u8],
    n: u8,
    ports: &[u16],
) -> (ratls::cert::Identity, Front) {
    let id = identity(compose, n);
    let cert = ratls_cert(&id);
    let front = start_front(&cert, &id.instance_id.to_hex()).await;
    let (status, body) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &register_body(front.addr, ports),
    )
    .await;
    assert_eq!(status, 200, "registration failed: {body}");
    (id, front)
}

/// Plain HTTP on loopback (admin listener); returns (status, body).
pub async fn http_get(port: u16, path: &str, token: Option<&str>, method: &str) -> (u16, String) {
    http_get_at(
        SocketAddr::from(([127, 0, 0, 1], port)),
        path,
        token,
        method,
    )
    .await
}

/// As [`http_get`], at `addr`.
pub async fn http_get_at(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    method: &str,
) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    exchange(&mut tcp, &head, b"").await
}

/// `POST` to the admin API with the test token; returns (status, body).
pub async fn http_post_admin(port: u16, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer test-admin-token-0123456789\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    exchange(&mut tcp, &head, b"").await
}

/// One HTTP/1.1 request to a guest API on its Unix socket; returns (status, body).
pub async fn guest(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "teegate")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}
