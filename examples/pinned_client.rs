//! A Rust client that talks to a confidential app only if it attests the expected app id,
//! in a few lines with `ratls::pins`; and, through a gateway that terminates TLS, only if
//! the gateway's evidence binds the certificate received and every instance verifies
//! (`ratls::site`).
//!
//! `cargo run --example pinned_client -- HOST:PORT SERVER_NAME APP_ID [--allow-simulated]`
//! `cargo run --example pinned_client -- site URL CA.pem GATEWAY_COMPOSE_HASH [--connect HOST:PORT] [--allow-simulated]`

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let allow_simulated = args.iter().any(|a| a == "--allow-simulated");
    if args.get(1).map(String::as_str) == Some("site") {
        return site(&args, allow_simulated);
    }
    let (addr, name, app) = match &args[..] {
        [_, addr, name, app, ..] => (addr.clone(), name.clone(), app.parse()?),
        _ => anyhow::bail!("usage: pinned_client HOST:PORT SERVER_NAME APP_ID [--allow-simulated] | pinned_client site URL CA.pem GATEWAY_COMPOSE_HASH [--connect HOST:PORT] [--allow-simulated]"),
    };
    let pins = ratls::pins::Pins {
        app_id: Some(app),
        allow_simulated,
        ..Default::default()
    };
    let (config, check) = ratls::pins::client_config(&pins)?;
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .context("connect")?;
    let server = rustls::pki_types::ServerName::try_from(name.clone())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server, tcp)
        .await
        .context("RA-TLS handshake")?;
    let attested = check
        .attestation_of(tls.get_ref().1.peer_certificates().unwrap_or_default())
        .context("no verified attestation")?;
    eprintln!(
        "talking to app {} instance {} (TCB {})",
        attested.app_id(),
        attested.instance_id(),
        attested.tcb_status()
    );
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    println!("{out}");
    Ok(())
}

/// A site behind a terminating gateway: pin the gateway's compose hash, trust the CA that
/// issued its certificate, and let `ratls::site` check the whole chain.
fn site(args: &[String], allow_simulated: bool) -> Result<()> {
    let [_, _, url, ca, gateway_compose, ..] = args else {
        anyhow::bail!("usage: pinned_client site URL CA.pem GATEWAY_COMPOSE_HASH [--connect HOST:PORT] [--allow-simulated]");
    };
    let mut roots = rustls::RootCertStore::empty();
    for block in pem::parse_many(std::fs::read(ca).context("reading the CA")?)? {
        roots.add(block.into_contents().into())?;
    }
    let mut check = ratls::site::SiteCheck::new(roots)
        .gateway(ratls::pins::Pins {
            compose_hash: Some(gateway_compose.parse()?),
            allow_simulated,
            ..Default::default()
        })
        .app(ratls::pins::Pins {
            allow_simulated,
            ..Default::default()
        });
    check.connect = args
        .iter()
        .position(|a| a == "--connect")
        .and_then(|i| args.get(i + 1).cloned());
    let report = ratls::site::verify_site(url, &check);
    report.result()?;
    let gateway = report.gateway.as_ref().context("a verified gateway")?;
    println!(
        "gateway app {} binds the certificate received; {} instance(s) of app {} verified",
        gateway.app_id(),
        report.instances.len(),
        report.app_id.map(|a| a.to_hex()).unwrap_or_default()
    );
    Ok(())
}
