//! The gateway under test: ports, config file, process, and clients trusting its dev CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{free_port, provider, spawn_teegate, wait_for_port, Proc, BASE};

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
