//! `teegate dev`: the whole stack on loopback with simulated CVMs, for development.
//!
//! ```text
//! teegate dev (supervisor) ─┬─ teegate kms          simulated quotes, policy = the demo apps
//!                           ├─ teegate dns          *.teegate.localhost → 127.0.0.1
//!                           ├─ teegate gateway      https://*.teegate.localhost:<port>, dev CA
//!                           └─ teegate dev simulated-cvm × N
//!                                sidecar (simulated TDX) → demo compose on Docker,
//!                                or the built-in demo HTTP service (no Docker)
//! ```
//!
//! Each child runs in its own process group with its log in `<data-dir>/logs/`. Start-up
//! checks each app end to end through the gateway before printing its curl command. Ctrl-C
//! (or SIGTERM) stops every child, removes the demo containers and exits 0; a child that
//! dies stops the rest and is reported with the tail of its log. State (the gateway's dev
//! CA, the KMS root, instance ids) stays in the data directory, so the CA a browser trusts
//! and the app URLs survive restarts.

mod cvm;
mod docker;
mod output;
mod ports;
mod probe;
mod procs;
mod stack;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use ports::Ports;
use procs::{Proc, Procs};
use stack::{App, GatewayCvm, Layout};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    internal: Option<Internal>,
    /// How many simulated apps (one CVM each) to start.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32))]
    apps: u16,
    /// Use the built-in demo HTTP service even when Docker is available.
    #[arg(long)]
    no_docker: bool,
    /// The gateway's HTTPS port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8443)]
    port: u16,
    /// State directory, kept across runs [default: $XDG_STATE_HOME/teegate/dev or
    /// ~/.local/state/teegate/dev].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Internal {
    /// One simulated CVM (started by `teegate dev`).
    #[command(hide = true)]
    SimulatedCvm(cvm::Args),
}

pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(Internal::SimulatedCvm(a)) = args.internal {
        return cvm::run(a);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    // The supervisor runs on this (the main) thread, so children are forked from a thread
    // that lives as long as the process: their parent-death signal fires only when it
    // really dies.
    rt.block_on(supervise(args))
}

/// SIGINT and SIGTERM, caught from the very start so no child is ever left behind.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

fn default_data_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match state {
        Some(dir) => dir.join("teegate/dev"),
        None => PathBuf::from(".teegate-dev"),
    }
}

/// Creates the data directory and locks it: two `teegate dev` on one directory would
/// fight over its files. The lock is released when the process ends, however it ends.
fn open_data_dir(dir: &Path) -> Result<(Layout, std::fs::File)> {
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let root = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    let lock_path = root.join("lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    // SAFETY: flock(2) on a file descriptor we own; no memory is shared.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        bail!(
            "another teegate dev is using {}; stop it, or use another --data-dir",
            root.display()
        );
    }
    Ok((Layout { root }, lock))
}

/// How the demo apps run.
enum Runtime {
    Docker(bollard::Docker),
    Builtin { why: String },
}

/// What the supervisor started, for the summary and the clean-up.
#[derive(Default)]
struct Stack {
    gateway: Option<GatewayCvm>,
    apps: Vec<App>,
    ports: Option<Ports>,
    docker: Option<bollard::Docker>,
}

pub(crate) fn secs(since: Instant) -> String {
    format!("{:.2} s", since.elapsed().as_secs_f64())
}

/// Prints `label… `, runs `f`, then `ok (0.4 s)` or `failed`.
async fn step<T>(
    label: &str,
    since: Instant,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    print!("{label}… ");
    let _ = std::io::stdout().flush();
    let r = f.await;
    match &r {
        Ok(_) => println!("ok ({})", secs(since)),
        Err(_) => println!("failed"),
    }
    r
}

async fn supervise(args: Args) -> Result<ExitCode> {
    let t0 = Instant::now();
    let mut signals = Signals::new()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let (layout, _lock) = open_data_dir(&data_dir)?;

    println!("teegate dev: SIMULATED TDX. Every quote here is signed by a mock Intel PKI; nothing is attested by hardware. For development only.");
    println!("  data dir  {} (logs in logs/)", layout.root.display());

    let mut procs = Procs::default();
    let mut stack = Stack::default();
    let started = tokio::select! {
        r = start(&args, &layout, &mut procs, &mut stack) => r.map(Some),
        _ = signals.recv() => {
            println!();
            println!("interrupted while starting");
            Ok(None)
        }
    };
    let outcome = match started {
        Ok(Some(())) => {
            output::summary(
                &layout,
                stack.ports.as_ref(),
                stack.gateway.as_ref(),
                &stack.apps,
                t0,
            );
            tokio::select! {
                _ = signals.recv() => Ok(()),
                e = watch_children(&mut procs) => Err(e),
            }
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };

    if let Err(e) = &outcome {
        eprintln!("error: {e:#}");
    }
    if procs.list.is_empty() && stack.docker.is_none() {
        return Ok(if outcome.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    println!("stopping…");
    let stopping = Instant::now();
    let hurry = async {
        loop {
            signals.recv().await;
            // One Ctrl-C can arrive twice (a wrapper forwarding it to its whole group);
            // a second press, later, means kill now.
            if stopping.elapsed() > Duration::from_millis(500) {
                println!("killing what is left");
                return;
            }
        }
    };
    let killed = procs.stop_all(Duration::from_secs(10), hurry).await;
    if !killed.is_empty() {
        println!("  killed (did not stop in time): {}", killed.join(", "));
    }
    if let Some(d) = &stack.docker {
        let ids: Vec<ratls::AppId> = stack.apps.iter().map(|a| a.app_id).collect();
        if let Err(e) = docker::remove_apps(d, &ids).await {
            eprintln!("warning: {e:#}");
        }
    }
    match outcome {
        Ok(()) => {
            println!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(_) => {
            println!("stopped after the error above");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Completes with the error of the first child that exits.
async fn watch_children(procs: &mut Procs) -> anyhow::Error {
    loop {
        if let Some((i, status)) = procs.first_dead() {
            return procs.list[i].died(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn choose_runtime(args: &Args, socket: &Path, t0: Instant) -> Runtime {
    if args.no_docker {
        return Runtime::Builtin {
            why: "--no-docker".into(),
        };
    }
    let docker = match docker::detect(socket).await {
        Ok(d) => d,
        Err(why) => return Runtime::Builtin { why },
    };
    let built = step("preparing the demo image", t0, async {
        docker::ensure_demo_image(&docker).await
    })
    .await;
    match built {
        Ok(_) => Runtime::Docker(docker),
        Err(e) => Runtime::Builtin {
            why: format!("the demo image could not be built: {e:#}"),
        },
    }
}

async fn start(args: &Args, layout: &Layout, procs: &mut Procs, stack: &mut Stack) -> Result<()> {
    let ports = Ports::pick(args.port)?;
    stack.ports = Some(ports.clone());
    let dev_id = layout.dev_id()?;

    let socket = docker::socket();
    let t_docker = Instant::now();
    let mut apps;
    match choose_runtime(args, &socket, t_docker).await {
        Runtime::Docker(d) => {
            // The compose pins the demo image by content, as the sidecar requires.
            let image = docker::demo_image_ref(&d).await?;
            apps = (1..=usize::from(args.apps))
                .map(|i| stack::app(layout, &dev_id, i, &image))
                .collect::<Result<Vec<_>>>()?;
            println!(
                "  apps      {} × the demo compose on Docker ({}, image {image})",
                apps.len(),
                socket.display(),
            );
            stack.docker = Some(d);
        }
        Runtime::Builtin { why } => {
            // Nothing runs the compose's image here, so its tag is only measured.
            apps = (1..=usize::from(args.apps))
                .map(|i| stack::app(layout, &dev_id, i, stack::DEMO_IMAGE))
                .collect::<Result<Vec<_>>>()?;
            println!(
                "  apps      {} × the built-in demo HTTP service, no containers (Docker not used: {why})",
                apps.len()
            );
            for app in &mut apps {
                app.demo_addr = Some(format!("127.0.0.1:{}", ports::free_port()?).parse()?);
            }
        }
    }
    stack.apps = apps.clone();

    let gw_cvm = stack::gateway_cvm(layout, &dev_id)?;
    let kms_cfg = stack::kms_config(layout, &ports, &gw_cvm, &apps)?;
    let dns_cfg = stack::dns_config(layout, &ports)?;
    let gw_cvm_cfg = stack::gateway_cvm_config(layout, &ports, &gw_cvm)?;
    let gw_cfg = stack::gateway_config(layout, &ports, &gw_cvm)?;
    stack.gateway = Some(gw_cvm.clone());
    // Registrations of the last run point at fronts that are gone. The dev CA lives
    // beside this file and is kept; the gateway issues a new wildcard from it.
    let _ = std::fs::remove_file(layout.gateway_dir().join("state.json"));

    let spawn = |procs: &mut Procs, name: &str, log: &str, args: &[&str]| -> Result<usize> {
        procs.push(Proc::spawn(name, args, &layout.log(log))?);
        Ok(procs.list.len() - 1)
    };
    let path = |p: &Path| p.display().to_string();
    // KMS and DNS start together; the gateway's CVM waits for the KMS (its sidecar gets the
    // gateway app's keys there), and the gateway for its CVM's guest API: it quotes
    // through it and seals its keys under a key derived there.
    let t = Instant::now();
    let kms = spawn(procs, "KMS", "kms", &["kms", "--config", &path(&kms_cfg)])?;
    let dns = spawn(procs, "DNS", "dns", &["dns", "--config", &path(&dns_cfg)])?;
    let wait = Duration::from_secs(30);
    step("starting KMS", t, procs.list[kms].ready(wait)).await?;
    let cvm = spawn(
        procs,
        "gateway CVM (simulated)",
        "gateway-cvm",
        &["sidecar", "--config", &path(&gw_cvm_cfg)],
    )?;
    step(
        "starting the gateway's CVM (simulated)",
        t,
        procs.list[cvm].ready(wait),
    )
    .await?;
    let gw = spawn(
        procs,
        "gateway",
        "gateway",
        &["gateway", "--config", &path(&gw_cfg)],
    )?;
    step("starting DNS", t, procs.list[dns].ready(wait)).await?;
    step("starting gateway", t, async {
        procs.list[gw].ready(wait).await?;
        probe::wait_listening(ports.https, wait).await
    })
    .await?;

    let t = Instant::now();
    let registration = format!("127.0.0.1:{}", ports.registration);
    let mut cvms = Vec::new();
    for app in &apps {
        stack::sidecar_config(layout, &ports, app, &socket)?;
        let name = format!("app {} (simulated CVM)", app.index);
        let index = app.index.to_string();
        let mut a = vec![
            "dev".to_string(),
            "simulated-cvm".into(),
            "--config".into(),
            path(&app.config_path),
            "--gateway".into(),
            registration.clone(),
            "--gateway-name".into(),
            stack::REGISTRATION_NAME.into(),
            "--app-name".into(),
            index,
        ];
        if let Some(addr) = app.demo_addr {
            a.push("--builtin-demo".into());
            a.push(addr.to_string());
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        cvms.push(spawn(procs, &name, &format!("app{}", app.index), &a)?);
    }
    let roots = probe::roots(&layout.dev_ca())?;
    for (app, i) in apps.iter().zip(cvms) {
        let label = format!("starting app {} (simulated CVM)", app.index);
        step(&label, t, async {
            let p = &mut procs.list[i];
            // Docker may have to create the containers first.
            p.ready(Duration::from_secs(90)).await?;
            probe::routable(p, roots.clone(), &app.host(), ports.https).await
        })
        .await?;
    }
    tracing::debug!(
        pids = ?procs.list.iter().map(|p| (p.name.clone(), p.pid())).collect::<Vec<_>>(),
        "children"
    );
    Ok(())
}
