//! A Rust client that talks to a confidential app only if it attests the expected app id,
//! in a few lines with `ratls::pins`.
//!
//! `cargo run --example pinned_client -- HOST:PORT SERVER_NAME APP_ID [--allow-simulated]`

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (addr, name, app) = match &args[..] {
        [_, addr, name, app, ..] => (addr.clone(), name.clone(), app.parse()?),
        _ => anyhow::bail!("usage: pinned_client HOST:PORT SERVER_NAME APP_ID [--allow-simulated]"),
    };
    let pins = ratls::pins::Pins {
        app_id: Some(app),
        allow_simulated: args.iter().any(|a| a == "--allow-simulated"),
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
