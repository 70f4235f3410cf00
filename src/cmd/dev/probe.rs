//! Readiness checks: a port that accepts, and an HTTPS GET through the dev gateway
//! trusting only its development CA (what the printed curl command does, checked before
//! it is printed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::procs::Proc;

/// The largest answer read.
const MAX_RESPONSE: usize = 256 * 1024;

pub fn roots(dev_ca_pem: &std::path::Path) -> Result<Arc<rustls::RootCertStore>> {
    let text = std::fs::read_to_string(dev_ca_pem)
        .with_context(|| format!("reading {}", dev_ca_pem.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for p in pem::parse_many(text).context("the development CA")? {
        if p.tag() == "CERTIFICATE" {
            roots
                .add(rustls::pki_types::CertificateDer::from(p.into_contents()))
                .context("the development CA")?;
        }
    }
    Ok(Arc::new(roots))
}

/// `GET https://<host>:<port>/` connecting to 127.0.0.1; returns (status, body).
pub async fn get(
    roots: Arc<rustls::RootCertStore>,
    host: &str,
    port: u16,
) -> Result<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(5), get_inner(roots, host, port))
        .await
        .map_err(|_| anyhow!("no answer within 5 s"))?
}

async fn get_inner(
    roots: Arc<rustls::RootCertStore>,
    host: &str,
    port: u16,
) -> Result<(u16, String)> {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    let req = format!(
        "GET / HTTP/1.1\r\nhost: {host}:{port}\r\nuser-agent: teegate-dev\r\nconnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut tls)
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut raw)
        .await
        .or_else(|e| {
            // Servers that close without close_notify still sent a whole answer.
            if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() {
                Ok(0)
            } else {
                Err(e)
            }
        })?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

/// Waits until the app answers 200 through the gateway (its registration is in).
pub async fn routable(
    cvm: &mut Proc,
    roots: Arc<rustls::RootCertStore>,
    host: &str,
    port: u16,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match get(roots.clone(), host, port).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!(
                "HTTP {status}: {}",
                body.chars().take(200).collect::<String>()
            ),
            Err(e) => format!("{e:#}"),
        };
        if let Some(status) = cvm.exited() {
            return Err(cvm.died(status));
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "{} does not answer through the gateway at https://{host}:{port}/ ({last}); last lines of {}:\n{}",
                cvm.name,
                cvm.log.display(),
                cvm.tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
