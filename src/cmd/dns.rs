//! `teegate dns --config FILE`: the authoritative DNS for the base domain and its record
//! API; prints where it listens, runs until SIGINT or SIGTERM, then stops cleanly.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// DNS config (TOML); see config/examples/dns.toml.
    #[arg(long, short)]
    pub config: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let cfg: config::DnsConfig =
        config::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = dns::DnsServer::bind(&cfg).await.context("dns")?;
        let at = server.listening();
        eprintln!("teegate dns for {} (and *.{0})", cfg.base_domain);
        eprintln!("  udp  {}", at.udp);
        eprintln!("  tcp  {}", at.tcp);
        if let Some(api) = at.api {
            let auth = if cfg.api.token.is_some() {
                "bearer token"
            } else {
                "no token, loopback only"
            };
            eprintln!("  api  http://{api} ({auth})");
        }
        eprintln!("ready");
        server.run(shutdown_signal()).await.context("dns")?;
        eprintln!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, Ctrl-C still ends the process the default way.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
