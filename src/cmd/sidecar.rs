//! `teegate sidecar --config FILE`: boot the app in this CVM (measure, fetch keys, start
//! containers, serve the RA-TLS front and guest API, register) and run until a signal.
//! Containers keep running when the sidecar stops; the next boot adopts them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Sidecar config (TOML); see config/examples/sidecar.toml.
    #[arg(long, short)]
    pub config: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let cfg: config::SidecarConfig =
        config::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    rt.block_on(async {
        let running = guest_sidecar::boot::boot(&cfg).await?;
        if cfg.quote_provider.is_simulated() {
            eprintln!(
                "*** SIMULATED TDX: this instance's attestation proves nothing about hardware ***"
            );
        }
        eprintln!(
            "teegate sidecar: app {} instance {}",
            running.identity.app_id, running.identity.instance_id
        );
        eprintln!("  RA-TLS front  {}", running.front_addr);
        eprintln!("  guest API     {}", running.socket_path.display());
        eprintln!("  dstack API    {}", cfg.dstack_socket_path.display());
        eprintln!("ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        running.shutdown();
        eprintln!("stopped (containers keep running; the next boot adopts them)");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
