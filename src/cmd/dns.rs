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
            // Never the token itself: only where it comes from.
            let from = match &cfg.api.token_file {
                Some(path) => format!("bearer token from {}", path.display()),
                None => "bearer token".to_owned(),
            };
            eprintln!("  api  http://{api} ({from}; Host must name this API)");
        }
        let base = cfg.base_domain.as_str();
        let in_zone: Vec<&str> = cfg
            .ns_names
            .iter()
            .map(|n| n.as_str())
            .filter(|n| n.ends_with(&format!(".{base}")))
            .collect();
        if !in_zone.is_empty() && cfg.ns_addrs.is_empty() {
            eprintln!(
                "  warning: {} inside {base} resolve to the gateways (wildcard); set ns_addrs to this server's addresses (the glue) unless DNS runs on the gateways",
                in_zone.join(", ")
            );
        }
        let (stop_replicas, replicas_stopped) = tokio::sync::watch::channel(false);
        if let config::StoreConfig::Etcd(etcd) = &cfg.store {
            // Settings that cannot work stop the start; an unreachable cluster does not:
            // the zone answers `gateway_addrs` until etcd is there.
            let store = match gateway::store::EtcdStore::connect(etcd, None).await {
                Ok(store) => Some(store),
                Err(e @ gateway::store::StoreError::Config(_)) => {
                    return Err(anyhow::Error::new(e).context("dns: store.etcd"))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd unreachable; answering gateway_addrs until it is");
                    None
                }
            };
            eprintln!(
                "  gateway replicas from etcd {} (prefix {}), else {:?}",
                etcd.endpoints
                    .iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                etcd.prefix,
                cfg.gateway_addrs
            );
            tokio::spawn(follow_replicas(
                store,
                etcd.clone(),
                server.zone(),
                cfg.gateway_addrs.clone(),
                replicas_stopped,
            ));
        }
        eprintln!("ready");
        server.run(shutdown_signal()).await.context("dns")?;
        let _ = stop_replicas.send(true);
        eprintln!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Answers `*.<base>` with the advertised addresses of the live gateway replicas, or the
/// configured `gateway_addrs` while no replica advertises any (so a cluster that lost every
/// replica, or was never set up with `advertise_addrs`, still resolves as configured).
async fn follow_replicas(
    store: Option<gateway::store::EtcdStore>,
    etcd: config::EtcdConfig,
    zone: dns::ZoneHandle,
    fallback: Vec<std::net::IpAddr>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut store = store;
    let store = loop {
        if let Some(s) = store.take() {
            break s;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
        match gateway::store::EtcdStore::connect(&etcd, None).await {
            Ok(s) => store = Some(s),
            Err(e) => tracing::warn!(error = %e, "etcd still unreachable"),
        }
    };
    let mut current: Option<Vec<std::net::IpAddr>> = None;
    store
        .watch_replicas(shutdown, move |replicas| {
            let mut addrs: Vec<std::net::IpAddr> =
                replicas.into_iter().flat_map(|r| r.addrs).collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                addrs = fallback.clone();
            }
            if current.as_ref() != Some(&addrs) {
                match zone.set_gateway_addrs(addrs.clone()) {
                    Ok(()) => current = Some(addrs),
                    Err(e) => tracing::warn!(error = %e, "replica addresses not usable in DNS"),
                }
            }
        })
        .await;
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
