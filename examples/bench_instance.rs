//! Helper for `benches/load.sh`: makes the certificates a side-by-side load run needs and
//! registers a simulated instance (whose RA-TLS front is an nginx) with a gateway.
//!
//! ```text
//! bench_instance certs DIR BASE     # DIR/wildcard.{pem,key}, DIR/ca.pem, DIR/ratls.{pem,key}, DIR/app_id
//! bench_instance register DIR REG_PORT FRONT_ADDR
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ratls::cert::{issue, CertProfile, Identity};
use ratls::eventlog::names;
use ratls::provider::{Measurer, SimulatedProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn certs(dir: &Path, base: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let sealing = gateway::seal::SealKey::load_or_create_file(&dir.join("seal.key"))?;
    let ca = gateway::certs::DevCa::load_or_create(dir, &sealing)?;
    let wildcard = ca.issue_wildcard(base)?;
    std::fs::write(dir.join("wildcard.pem"), &wildcard.cert_chain_pem)?;
    // The benchmark's nginx and gateway read this plaintext key: a throwaway bench key.
    std::fs::write(dir.join("wildcard.key"), wildcard.key_pem.as_bytes())?;
    std::fs::copy(&ca.cert_path, dir.join("ca.pem"))?;

    let compose_hash = ratls::ComposeHash::of(b"{\"name\":\"bench\"}");
    let id = Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: ratls::InstanceId([7; 20]),
    };
    let m = Measurer::new(Arc::new(SimulatedProvider::new()));
    m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())?;
    m.emit(names::APP_ID, id.app_id.0.to_vec())?;
    m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())?;
    let cert = issue(
        &m,
        &id,
        &CertProfile::server_and_client(vec![format!("*.{base}")], Duration::from_secs(86400)),
        None,
    )?;
    std::fs::write(dir.join("ratls.pem"), cert.cert_pem())?;
    std::fs::write(
        dir.join("ratls.key"),
        ratls::cert::pem_encode("PRIVATE KEY", &cert.key_pkcs8_der()),
    )?;
    std::fs::write(dir.join("app_id"), id.app_id.to_hex())?;
    Ok(())
}

async fn register(dir: &Path, reg_port: u16, front: &str) -> Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in pem::parse_many(std::fs::read(dir.join("ca.pem"))?)? {
        roots.add(c.into_contents().into())?;
    }
    let cert = pem::parse(std::fs::read(dir.join("ratls.pem"))?)?.into_contents();
    let key = pem::parse(std::fs::read(dir.join("ratls.key"))?)?.into_contents();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![cert.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", reg_port))
        .await
        .context("connect to registration port")?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("gateway.apps.bench.test")?,
            tcp,
        )
        .await?;
    let body = serde_json::json!({ "front_addr": front, "ports": [80] }).to_string();
    let req = format!("POST /v1/register HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    tls.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    if !out.starts_with("HTTP/1.1 200") {
        bail!("registration failed: {out}");
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("certs") if args.len() == 4 => certs(Path::new(&args[2]), &args[3]),
        Some("register") if args.len() == 5 => {
            register(Path::new(&args[2]), args[3].parse()?, &args[4]).await
        }
        _ => bail!("usage: bench_instance certs DIR BASE | register DIR REG_PORT FRONT_ADDR"),
    }
}
