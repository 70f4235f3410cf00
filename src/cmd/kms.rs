//! `teegate kms --config FILE [--onboard-from URL]`: run the KMS until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// KMS config (TOML); see config/examples/kms.toml.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Receive the root secret from this running KMS (https://host:port) if the data
    /// directory has none yet; overrides `onboard_from` in the config.
    #[arg(long, value_name = "URL")]
    pub onboard_from: Option<String>,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg: config::KmsConfig =
        config::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    if let Some(url) = &args.onboard_from {
        anyhow::ensure!(
            url.starts_with("https://"),
            "--onboard-from must be an https:// URL"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let opts = kms::RunOptions {
        onboard_from: args.onboard_from,
    };
    rt.block_on(kms::run(cfg, opts, shutdown_signal(), |r| {
        eprintln!("teegate kms listening on https://{}", r.addr);
        if r.simulated {
            eprintln!(
                "  WARNING: SIMULATED quote provider: root secret stored in PLAIN TEXT, attestation proves nothing"
            );
        }
        let origin = match r.root_origin {
            kms::run::RootOrigin::Loaded => "loaded",
            kms::run::RootOrigin::Generated => "generated (first start)",
            kms::run::RootOrigin::Onboarded => "received from the onboarding KMS",
        };
        eprintln!("  root       {origin}: {}", r.root_path.display());
        eprintln!("  root CA    {} (publish; clients pin it)", r.root_ca_pem.display());
        eprintln!("  audit log  {}", r.audit_log.display());
        eprintln!("  app policies: {}", r.app_policies);
        eprintln!("ready");
    }))
    .context("kms")?;
    eprintln!("teegate kms stopped");
    Ok(ExitCode::SUCCESS)
}
