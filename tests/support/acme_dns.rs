//! ACME and DNS: the Pebble test CA, the DNS API token, a fixed-answer DNS responder.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{free_port, provider, wait_for_port, Proc};

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

/// The ACME account key (PEM) in instant-acme's credentials JSON (`key_pkcs8`, base64url).
pub fn acme_account_key_pem(credentials_json: &str) -> String {
    use base64::Engine;
    let creds: serde_json::Value = serde_json::from_str(credentials_json).expect("credentials");
    let der = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(creds["key_pkcs8"].as_str().expect("key_pkcs8"))
        .expect("base64url");
    pem::encode(&pem::Pem::new("PRIVATE KEY", der))
}
