//! Shared helpers for the end-to-end tests: start real processes on loopback ports, make
//! simulated CVM instances (RA-TLS front + registration), and clients that trust the
//! gateway's development CA. Every wait is bounded.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ratls::cert::{issue, CertProfile, Identity, RaTlsCert};
use ratls::eventlog::names;
use ratls::provider::{Measurer, QuoteProvider, SimulatedProvider};
use ratls::{ComposeHash, InstanceId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BASE: &str = "apps.teegate.test";

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A port that was free a moment ago on 127.0.0.1 (TCP and UDP). Taken below the kernel's
/// ephemeral range (32768+ on Linux), so an outgoing connection cannot grab it before the
/// test's server binds it, and never handed out twice by one test process; asking the
/// kernel for port 0 gave both kinds of collision under parallel tests.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Each test binary starts somewhere else, so binaries run one after another do not
    // walk the ports the previous one left in TIME_WAIT.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// A child process that is killed (SIGKILL) when dropped, unless stopped first.
pub struct Proc {
    pub child: Option<Child>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGTERM, then wait (bounded); returns the exit status.
    pub fn stop(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `teegate <args>` and waits (bounded) until stderr shows `ready_line`.
pub fn spawn_teegate(args: &[&str], ready_line: &str, timeout: Duration) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_teegate"))
        .args(args)
        .env("TEEGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn teegate");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = lines.clone();
    let ready = ready_line.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(&ready) {
                let _ = tx.send(());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let proc = Proc {
        child: Some(child),
        stderr: lines,
    };
    if rx.recv_timeout(timeout).is_err() {
        panic!(
            "teegate {args:?} did not become ready in {timeout:?}; stderr:\n{}",
            proc.log()
        );
    }
    proc
}

// ---------------------------------------------------------------- gateway

pub struct GatewayPorts {
    pub https: u16,
    pub http: u16,
    pub registration: u16,
    pub admin: u16,
}

impl GatewayPorts {
    pub fn new() -> Self {
        Self {
            https: free_port(),
            http: free_port(),
            registration: free_port(),
            admin: free_port(),
        }
    }
}

pub struct Gateway {
    pub proc: Proc,
    pub ports: GatewayPorts,
    pub dir: PathBuf,
}

impl Gateway {
    pub fn dev_ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("dev-ca.pem")).expect("dev CA")
    }

    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.https))
    }
}

pub fn gateway_config(dir: &Path, ports: &GatewayPorts, extra: &str) -> PathBuf {
    let text = format!(
        r#"base_domain = "{BASE}"
listen_https = "127.0.0.1:{https}"
listen_http = "127.0.0.1:{http}"
listen_registration = "127.0.0.1:{reg}"
listen_admin = "127.0.0.1:{admin}"
data_dir = "{dir}"
grace_period_secs = 1
workers = 2
admin_token = "test-admin-token-0123456789"
{extra}
"#,
        https = ports.https,
        http = ports.http,
        reg = ports.registration,
        admin = ports.admin,
        dir = dir.display(),
    );
    let text = if text.contains("[tls]") {
        text
    } else {
        format!("{text}\n[tls]\nmode = \"self_signed\"\n")
    };
    let text = if text.contains("[registration]") {
        text
    } else {
        format!("{text}\n[registration]\nallow_loopback = true\nlease_secs = 30\n")
    };
    let text = if text.contains("[verifier]") {
        text
    } else {
        format!("{text}\n[verifier]\nallow_simulated = true\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\ncompose_hashes = \"any\"\napp_ids = \"any\"\n")
    };
    std::fs::create_dir_all(dir).expect("gateway dir");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

pub fn start_gateway_in(dir: &Path, ports: GatewayPorts, extra: &str) -> Gateway {
    let cfg = gateway_config(dir, &ports, extra);
    let proc = spawn_teegate(
        &["gateway", "--config", cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    wait_for_port(ports.https, Duration::from_secs(10));
    Gateway {
        proc,
        ports,
        dir: dir.to_path_buf(),
    }
}

pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("port {port} did not open within {within:?}");
}

/// An HTTPS client trusting the gateway's dev CA, resolving app names to the gateway.
/// GETs `url` asking for JSON (the pages' twins answer it), expecting a JSON body.
pub async fn get_json(c: &reqwest::Client, url: &str) -> serde_json::Value {
    c.get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub fn client(gw: &Gateway, hosts: &[String], h2: bool) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem::parse_many(gw.dev_ca_pem()).unwrap() {
        roots
            .add(rustls::pki_types::CertificateDer::from(c.into_contents()))
            .unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .no_proxy();
    if h2 {
        b = b.http2_prior_knowledge();
    }
    for h in hosts {
        b = b.resolve(h, gw.https_addr());
    }
    b.build().unwrap()
}

// ---------------------------------------------------------------- simulated instances

pub fn identity(compose: &[u8], instance: u8) -> Identity {
    let compose_hash = ComposeHash::of(compose);
    Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: InstanceId([instance; 20]),
    }
}

pub fn booted(provider: Arc<dyn QuoteProvider>, id: &Identity) -> Measurer {
    let m = Measurer::new(provider);
    m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())
        .unwrap();
    m.emit(names::APP_ID, id.app_id.0.to_vec()).unwrap();
    m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())
        .unwrap();
    m.emit(names::KEY_PROVIDER, b"kms".to_vec()).unwrap();
    m
}

pub fn ratls_cert(id: &Identity) -> RaTlsCert {
    let m = booted(Arc::new(SimulatedProvider::new()), id);
    issue(
        &m,
        id,
        &CertProfile::server_and_client(vec![format!("*.{BASE}")], Duration::from_secs(3600)),
        None,
    )
    .unwrap()
}

/// A stand-in CVM front: real TLS with an RA-TLS certificate, HTTP/1.1 and HTTP/2, that
/// answers `instance=<id> port=<port from SNI> path=<path> xff=<X-Forwarded-For>`.
pub struct Front {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    kill: tokio::sync::watch::Sender<bool>,
}

impl Front {
    /// Stops listening and cuts every open connection, as a dying CVM would.
    pub fn kill(&self) {
        let _ = self.kill.send(true);
        self.task.abort();
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn start_front(cert: &RaTlsCert, instance: &str) -> Front {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.rustls_chain(), cert.rustls_key())
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let instance = instance.to_string();
    let (kill, killed) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let instance = instance.clone();
            let mut killed = killed.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = killed.changed() => {}
                    _ = serve_one(acceptor, tcp, instance) => {}
                }
            });
        }
    });
    Front { addr, task, kill }
}

async fn serve_one(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream, instance: String) {
    {
        {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
            let port = sni
                .split('.')
                .next()
                .and_then(|l| l.rsplit_once('-'))
                .map(|(_, p)| p.to_string())
                .unwrap_or_else(|| "80".into());
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let xff = req
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    // Every header an app might take for the client's identity, as the
                    // app receives it (names with `_` included), so tests see spoofs.
                    let mut fwd: Vec<String> = req
                        .headers()
                        .iter()
                        .filter(|(k, _)| {
                            let k = k.as_str().replace('_', "-");
                            k.contains("forwarded")
                                || k.contains("real-ip")
                                || k.contains("client-ip")
                        })
                        .map(|(k, v)| format!("{}:{}", k, v.to_str().unwrap_or("?")))
                        .collect();
                    fwd.sort();
                    let body = format!(
                        "instance={} port={} path={} xff={} proto={} version={:?} fwd=[{}]",
                        instance,
                        port,
                        req.uri().path(),
                        xff,
                        proto,
                        req.version(),
                        fwd.join(",")
                    );
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        }
    }
}

/// Roots holding the gateway's development CA.
pub fn dev_roots(dev_ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem::parse_many(dev_ca_pem).unwrap() {
        roots
            .add(rustls::pki_types::CertificateDer::from(c.into_contents()))
            .unwrap();
    }
    roots
}

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

/// A TLS client config that accepts only a verifying (simulated) RA-TLS server.
pub fn ratls_client_config(
    expect_app: Option<ratls::AppId>,
) -> (rustls::ClientConfig, ratls::tls::RaTlsCheck) {
    let mut policy = ratls::Policy::any_measurements();
    policy.allow_simulated = true;
    let verifier = Arc::new(ratls::CachingVerifier::new(
        ratls::AttestationVerifier::new(Arc::new(ratls::collateral::SourceChain::new()), policy),
        8,
    ));
    let mut check =
        ratls::tls::RaTlsCheck::new(verifier, ratls::tls::ChainTrust::SelfSigned, provider());
    if let Some(app) = expect_app {
        check = check.expect_app(app);
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ratls::tls::RaTlsServerVerifier(check.clone())))
        .with_no_client_auth();
    (cfg, check)
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

/// A simulated TD whose quotes have one byte of the TD report flipped after signing.
struct Tampering(SimulatedProvider);

impl QuoteProvider for Tampering {
    fn kind(&self) -> ratls::provider::ProviderKind {
        ratls::provider::ProviderKind::Simulated
    }
    fn quote(&self, rd: &ratls::ReportData) -> Result<Vec<u8>, ratls::provider::ProviderError> {
        let mut q = self.0.quote(rd)?;
        q[48 + 200] ^= 1;
        Ok(q)
    }
    fn extend_rtmr3(&self, d: &ratls::Measurement) -> Result<(), ratls::provider::ProviderError> {
        self.0.extend_rtmr3(d)
    }
}

pub fn tampered_ratls_cert(id: &Identity) -> RaTlsCert {
    let m = booted(Arc::new(Tampering(SimulatedProvider::new())), id);
    issue(
        &m,
        id,
        &CertProfile::server_and_client(vec![format!("*.{BASE}")], Duration::from_secs(3600)),
        None,
    )
    .unwrap()
}

// ---------------------------------------------------------------- ACME test CA (Pebble)

pub struct Pebble {
    pub proc: Proc,
    pub directory: String,
    pub mgmt_port: u16,
    /// The CA that signed Pebble's own HTTPS certificate (for the ACME client).
    pub https_ca: PathBuf,
}

impl Pebble {
    /// The root that signs the certificates Pebble issues (it changes at every start).
    pub async fn issuing_root_pem(&self) -> String {
        let ca = std::fs::read_to_string(&self.https_ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in pem::parse_many(ca).unwrap() {
            roots
                .add(rustls::pki_types::CertificateDer::from(c.into_contents()))
                .unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let c = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .build()
            .unwrap();
        c.get(format!("https://localhost:{}/roots/0", self.mgmt_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Starts Pebble (Debian package `pebble`) resolving challenges through `dns`.
pub fn start_pebble(dir: &Path, dns: SocketAddr, http01_port: Option<u16>) -> Pebble {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pebble test HTTPS CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let pdir = dir.join("pebble");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("cert.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(pdir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    let https_ca = pdir.join("ca.pem");
    std::fs::write(&https_ca, ca_cert.pem()).unwrap();
    let (port, mgmt_port) = (free_port(), free_port());
    let cfg = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
        "certificate": pdir.join("cert.pem"),
        "privateKey": pdir.join("key.pem"),
        "httpPort": http01_port.unwrap_or_else(free_port),
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false
    }});
    std::fs::write(pdir.join("pebble.json"), cfg.to_string()).unwrap();
    let mut child = Command::new("pebble")
        .args([
            "-config",
            pdir.join("pebble.json").to_str().unwrap(),
            "-dnsserver",
            &dns.to_string(),
        ])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("pebble is installed (scripts/test installs it)");
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    wait_for_port(port, Duration::from_secs(15));
    Pebble {
        proc: Proc {
            child: Some(child),
            stderr: lines,
        },
        directory: format!("https://127.0.0.1:{port}/dir"),
        mgmt_port,
        https_ca,
    }
}

/// The record-API token the tests give `teegate dns` and the gateway.
pub const DNS_API_TOKEN: &str = "dns-api-token-for-e2e-tests-0123456789";

/// [`DNS_API_TOKEN`] in a 0600 file under `dir`, as `teegate dev` writes it; the path, for
/// both `api.token_file` and `tls.acme.dns_api_token_file`.
pub fn dns_api_token_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("dns-api-token");
    std::fs::write(&path, format!("{DNS_API_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A tiny DNS responder with fixed answers (for names outside teegate's zone); every
/// question is recorded.
pub async fn start_test_dns(
    answers: Vec<(&'static str, hickory_proto::rr::RData)>,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use hickory_proto::op::{Message, OpCode, ResponseCode};
    use hickory_proto::rr::{Name, Record};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::response(q.metadata.id, OpCode::Query);
            resp.metadata.authoritative = true;
            let mut known_name = false;
            for query in &q.queries {
                let name = query.name().to_ascii().to_ascii_lowercase();
                log.lock()
                    .unwrap()
                    .push(format!("{name} {:?}", query.query_type()));
                for (n, rdata) in &answers {
                    if *n == name {
                        known_name = true;
                        if rdata.record_type() == query.query_type() {
                            resp.add_answer(Record::from_rdata(
                                Name::from_ascii(n).unwrap(),
                                60,
                                rdata.clone(),
                            ));
                        }
                    }
                }
                resp.add_query(query.clone());
            }
            if !known_name {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    (addr, seen)
}
pub mod chromium;
pub mod cvm;
pub mod etcd;
pub mod hostile;
pub mod lab;
pub mod lab_client;
pub mod lab_hosts;
pub mod lab_image;

/// Certificates for `names` (custom domains), issued by the development CA in the gateway
/// data dir `dir` and put in its embedded store, so a gateway started there serves them.
pub async fn store_dev_certs(dir: &Path, names: &[&str]) {
    use gateway::store::Store;
    let ca = dev_ca_in(dir);
    let store = sealed_store_in(dir);
    for name in names {
        store
            .put_cert(&ca.issue(name, vec![name.to_string()]).unwrap())
            .await
            .unwrap();
    }
}

// ---------------------------------------------------------------- KMS-issued app CAs

/// A KMS's root of trust, made by the KMS's own code, for certifying app CAs in tests that
/// need a named app id authorised (or not) without running a KMS process.
pub struct TestKms {
    pub root: kms::root::RootOfTrust,
}

impl TestKms {
    pub fn new() -> Self {
        Self {
            root: kms::root::RootOfTrust::generate().expect("KMS root"),
        }
    }

    /// Writes the root CA (PEM) to `path`, as a gateway's `verifier.kms_roots` reads it.
    pub fn write_root(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.root.ca_cert_pem()).expect("write KMS root");
        path.to_path_buf()
    }

    /// App `app`'s CA as the KMS releases it: derived key, certificate signed by the root.
    pub fn app_ca(&self, app: &ratls::AppId) -> ratls::cert::CertAuthority {
        use p256::pkcs8::EncodePrivateKey;
        let key = kms::derive::app_ca_key(self.root.secret(), &app.0);
        let cert = kms::appca::issue_app_ca(
            &app.0,
            &key.public_key(),
            self.root.ca_cert_der(),
            self.root.ca_key(),
        )
        .expect("app CA");
        let pkcs8 = key.to_pkcs8_der().expect("pkcs8");
        ratls::cert::CertAuthority::from_der(cert, pkcs8.as_bytes()).expect("app CA authority")
    }
}

/// An identity that names `app` although its compose hash is `compose`'s.
pub fn named_identity(app: ratls::AppId, compose: &[u8], instance: u8) -> Identity {
    Identity {
        app_id: app,
        compose_hash: ComposeHash::of(compose),
        instance_id: InstanceId([instance; 20]),
    }
}

/// An RA-TLS certificate for `id` signed by `ca` (an app CA), presented with it.
pub fn ratls_cert_by(id: &Identity, ca: &ratls::cert::CertAuthority) -> RaTlsCert {
    let m = booted(Arc::new(SimulatedProvider::new()), id);
    issue(
        &m,
        id,
        &CertProfile::server_and_client(vec![format!("*.{BASE}")], Duration::from_secs(3600)),
        Some(ca),
    )
    .unwrap()
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

// ---------------------------------------------------------------- sealed store

/// The sealing key an unattested gateway with `data_dir = dir` uses (its default
/// `seal_key_file`, made when missing).
pub fn seal_key_in(dir: &Path) -> Arc<gateway::seal::SealKey> {
    Arc::new(gateway::seal::SealKey::load_or_create_file(&dir.join("seal.key")).expect("seal key"))
}

/// The development CA of an unattested gateway in `dir`, as the gateway itself opens it.
pub fn dev_ca_in(dir: &Path) -> gateway::certs::DevCa {
    gateway::certs::DevCa::load_or_create(dir, &seal_key_in(dir)).expect("dev CA")
}

/// The embedded store of an unattested gateway in `dir`, behind its sealing layer, for
/// putting records in before the gateway starts.
pub fn sealed_store_in(dir: &Path) -> gateway::store::SealedStore {
    let backend = gateway::store::EmbeddedStore::open(dir).expect("embedded store");
    gateway::store::SealedStore::new(
        Arc::new(backend),
        seal_key_in(dir),
        Arc::new(gateway::store::SealReport::new(None)),
    )
}

/// Every encoding of a private key a careless store could hold: the PEM text and its
/// base64 body, the DER raw, in hex, and in standard and URL-safe base64.
pub fn key_encodings(key_pem: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine;
    let der = pem::parse(key_pem).expect("key PEM").into_contents();
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    vec![
        ("PEM".into(), key_pem.trim().as_bytes().to_vec()),
        ("PEM body".into(), body.into_bytes()),
        ("DER".into(), der.clone()),
        ("hex DER".into(), hex::encode(&der).into_bytes()),
        (
            "base64 DER".into(),
            base64::engine::general_purpose::STANDARD
                .encode(&der)
                .into_bytes(),
        ),
        (
            "base64url DER".into(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(&der)
                .into_bytes(),
        ),
    ]
}

/// Fails naming `what` and the encoding when `haystack` holds any encoding of the key.
pub fn assert_no_key_in(haystack: &[u8], key_pem: &str, what: &str) {
    for (encoding, needle) in key_encodings(key_pem) {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "{what} holds the private key ({encoding})"
        );
    }
    assert!(
        !haystack.windows(11).any(|w| w == b"PRIVATE KEY"),
        "{what} holds a PEM private key"
    );
}

/// All files under `dir` (recursively), concatenated, for searching.
pub fn all_file_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.extend_from_slice(&bytes);
            }
        }
    }
    out
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
pub fn cert_spki(cert_der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).expect("certificate");
    cert.public_key().raw.to_vec()
}

/// The SubjectPublicKeyInfo (DER) of a PEM private key.
pub fn key_spki(key_pem: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::from_pem(key_pem).expect("key PEM");
    rcgen::PublicKeyData::subject_public_key_info(&key)
}

/// Runs a command that must fail within `within`; its standard error. A process still
/// running then is killed and the test fails.
pub fn expect_exit_failure(cmd: &mut Command, within: Duration) -> String {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("TEEGATE_LOG", "info")
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(!status.success(), "{cmd:?} succeeded; stderr:\n{err}");
    err
}

/// The ACME account key (PEM) in instant-acme's credentials JSON (`key_pkcs8`, base64url).
pub fn acme_account_key_pem(credentials_json: &str) -> String {
    use base64::Engine;
    let creds: serde_json::Value = serde_json::from_str(credentials_json).expect("credentials");
    let der = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(creds["key_pkcs8"].as_str().expect("key_pkcs8"))
        .expect("base64url");
    pem::encode(&pem::Pem::new("PRIVATE KEY", der))
}
