//! `teegate dev simulated-cvm` (internal; `teegate dev` starts one per app): a guest
//! sidecar booted from its config that registers with the dev gateway by address (the
//! gateway's name, under `*.localhost`, resolves in browsers but not through libc), and,
//! without Docker, the built-in demo HTTP service the sidecar's front forwards port 80 to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Sidecar config (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// The gateway's registration listener.
    #[arg(long)]
    pub gateway: SocketAddr,
    /// The name on the gateway's registration certificate.
    #[arg(long)]
    pub gateway_name: String,
    /// Serve the built-in demo service here (with `runtime = "none"`).
    #[arg(long)]
    pub builtin_demo: Option<SocketAddr>,
    /// How the demo names this app ("1", "2", …).
    #[arg(long, default_value = "1")]
    pub app_name: String,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg: config::SidecarConfig =
        config::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    rt.block_on(async {
        // Bound before the boot so the front never forwards to a closed port.
        let about = Arc::new(OnceLock::new());
        if let Some(addr) = args.builtin_demo {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("built-in demo service on {addr}"))?;
            tokio::spawn(serve_demo(listener, args.app_name.clone(), about.clone()));
        }
        let running = guest_sidecar::boot::boot(&cfg)
            .await
            .map_err(anyhow::Error::new)?;
        let _ = about.set(format!(
            "app id {}, instance {}",
            running.identity.app_id, running.identity.instance_id
        ));
        running
            .add_gateway(guest_sidecar::register::GatewayTarget {
                addr: args.gateway.to_string(),
                server_name: args.gateway_name.clone(),
            })
            .await;
        eprintln!("*** SIMULATED TDX: this CVM's attestation proves nothing about hardware ***");
        eprintln!(
            "simulated CVM: app {} instance {}",
            running.identity.app_id, running.identity.instance_id
        );
        eprintln!("  RA-TLS front  {}", running.front_addr);
        match args.builtin_demo {
            Some(addr) => eprintln!("  app           built-in demo service on {addr} (no Docker)"),
            None => eprintln!("  app           the demo compose on Docker"),
        }
        eprintln!("ready");
        shutdown_signal().await;
        running.shutdown();
        eprintln!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The largest request head read; the demo answers every path the same way.
const MAX_HEAD: usize = 16 * 1024;

async fn serve_demo(listener: tokio::net::TcpListener, name: String, about: Arc<OnceLock<String>>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, for one: back off rather than spin.
                tracing::warn!(error = %e, "demo service: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let body = format!(
            "teegate demo app {name} (SIMULATED TDX): built-in demo HTTP service, no containers (no Docker); {}\n",
            about.get().map(String::as_str).unwrap_or("booting")
        );
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &body)).await;
        });
    }
}

/// Reads requests on one connection and answers each with `body`, until the peer closes.
async fn answer(mut stream: tokio::net::TcpStream, body: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        // Requests with a body (the demo has no use for one) end the connection.
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let has_body =
            head.contains("\r\ncontent-length:") || head.contains("\r\ntransfer-encoding:");
        let close = has_body || head.contains("\r\nconnection: close");
        let head_only = head.starts_with("head ");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{}",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
            if head_only { "" } else { body }
        );
        stream.write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
        buf.drain(..head_end);
    }
}
