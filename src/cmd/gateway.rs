//! `teegate gateway --config FILE`: load and validate the config, then run until SIGTERM
//! (graceful: drains connections within grace_period_secs) or SIGINT (fast).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pingora_core::server::UnixShutdownSignalWatch;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Gateway config (TOML); see config/examples/gateway.toml.
    #[arg(long, short)]
    pub config: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let cfg: config::GatewayConfig =
        config::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    let base = cfg.base_domain.as_str().to_string();
    gateway::server::run(cfg, Box::new(UnixShutdownSignalWatch), |info| {
        eprintln!("teegate gateway for *.{base}");
        eprintln!("  https        {}", info.https);
        eprintln!("  registration {}", info.registration);
        eprintln!("  admin        {}", info.admin);
        if let Some(ca) = &info.dev_ca {
            eprintln!(
                "  self-signed development CA: {} (trust it with curl --cacert)",
                ca.display()
            );
        }
        eprintln!("ready");
    })
    .context("gateway")?;
    Ok(ExitCode::SUCCESS)
}
