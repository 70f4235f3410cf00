//! Helper for `benches/soak.sh`: the certificates and registrations of simulated RA-TLS
//! instances (each one's front is an nginx serving the certificate), so the soak can
//! rotate certificates, restart instances and let leases lapse as a sidecar would.
//!
//! ```text
//! soak_instance ratls DIR INDEX GEN BASE
//!     # DIR/i<INDEX>-g<GEN>.{pem,key}: instance INDEX's RA-TLS certificate, generation GEN
//! soak_instance register CA_PEM REG_ADDR SERVER_NAME FRONT_ADDR CERT KEY [FRONT_CERT...]
//!     # mutual RA-TLS registration with CERT/KEY; FRONT_CERTs are announced beside it
//!     # (a rotation registers the new certificate with the current one first)
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ratls::cert::{issue, CertProfile, Identity};
use ratls::eventlog::names;
use ratls::provider::{Measurer, SimulatedProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Instance INDEX of the one soak app; every generation is a new key of the same instance.
fn ratls_cert(dir: &Path, index: u8, generation: u32, base: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let compose_hash = ratls::ComposeHash::of(b"{\"name\":\"soak\"}");
    let id = Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: ratls::InstanceId([index.wrapping_add(1); 20]),
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
    let stem = dir.join(format!("i{index}-g{generation}"));
    std::fs::write(stem.with_extension("pem"), cert.cert_pem())?;
    std::fs::write(
        stem.with_extension("key"),
        ratls::cert::pem_encode("PRIVATE KEY", &cert.key_pkcs8_der()),
    )?;
    std::fs::write(dir.join("app_id"), id.app_id.to_hex())?;
    Ok(())
}

fn pem_der(path: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    Ok(pem::parse(bytes)?.into_contents())
}

async fn register(args: &[String]) -> Result<()> {
    let [ca, reg_addr, server_name, front, cert, key, extra @ ..] = args else {
        bail!("register CA_PEM REG_ADDR SERVER_NAME FRONT_ADDR CERT KEY [FRONT_CERT...]");
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in pem::parse_many(std::fs::read(ca)?)? {
        roots.add(c.into_contents().into())?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![pem_der(cert)?.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pem_der(key)?.into()),
        )?;
    let tcp = tokio::net::TcpStream::connect(reg_addr.as_str())
        .await
        .context("connect to the registration port")?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from(server_name.clone())?,
            tcp,
        )
        .await
        .context("TLS to the registration port")?;
    let front_certs = extra
        .iter()
        .map(|p| pem_der(p).map(hex::encode))
        .collect::<Result<Vec<_>>>()?;
    let body =
        serde_json::json!({ "front_addr": front, "ports": [80], "front_certs": front_certs })
            .to_string();
    let req = format!(
        "POST /v1/register HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
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
        Some("ratls") if args.len() == 6 => {
            ratls_cert(Path::new(&args[2]), args[3].parse()?, args[4].parse()?, &args[5])
        }
        Some("register") => register(&args[2..]).await,
        _ => bail!("usage: soak_instance ratls DIR INDEX GEN BASE | register CA_PEM REG_ADDR SERVER_NAME FRONT_ADDR CERT KEY [FRONT_CERT...]"),
    }
}
