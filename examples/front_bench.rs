//! Benchmark of the sidecar's RA-TLS front (issue #4): new connections per second and
//! keep-alive requests per second through the front, against the same backend directly,
//! in the same run. The backend is an nginx in its own process (`return 200`); the front
//! and the load loops share this process (one tokio runtime, 2 threads).
//!
//! `cargo run --release --example front_bench -- [SECONDS]` (needs nginx; benches/front.sh runs it)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use guest_sidecar::front::{self, CertSlot, FrontLimits, FrontResolver, Routes};
use ratls::cert::{issue, CertProfile, Identity};
use ratls::eventlog::names;
use ratls::provider::{Measurer, SimulatedProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONCURRENCY: usize = 32;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_nginx(dir: &std::path::Path, port: u16) -> Result<()> {
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{ access_log off; keepalive_requests 1000000; server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let status = std::process::Command::new("nginx")
        .args([
            "-c",
            &dir.join("nginx.conf").to_string_lossy(),
            "-p",
            &dir.to_string_lossy(),
            "-e",
            &dir.join("error.log").to_string_lossy(),
        ])
        .status()
        .context("nginx (apt-get install nginx)")?;
    anyhow::ensure!(status.success(), "nginx failed to start");
    Ok(())
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// Reads one small HTTP response (headers + the fixed 6-byte body).
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<()> {
    buf.clear();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if buf.len() >= end + 4 + 6 {
                return Ok(());
            }
        }
    }
}

enum Target {
    Direct(SocketAddr),
    Front(SocketAddr, Arc<rustls::ClientConfig>, String),
}

async fn run(target: Arc<Target>, secs: u64, keepalive: bool) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (target, count) = (target.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::new();
            while Instant::now() < deadline {
                let result: Result<()> = async {
                    match &*target {
                        Target::Direct(addr) => {
                            let mut s = tokio::net::TcpStream::connect(addr).await?;
                            loop {
                                s.write_all(REQUEST).await?;
                                read_response(&mut s, &mut buf).await?;
                                count.fetch_add(1, Ordering::Relaxed);
                                if !keepalive || Instant::now() >= deadline {
                                    return Ok(());
                                }
                            }
                        }
                        Target::Front(addr, cfg, sni) => {
                            let tcp = tokio::net::TcpStream::connect(addr).await?;
                            let name = rustls::pki_types::ServerName::try_from(sni.clone())?;
                            let mut s = tokio_rustls::TlsConnector::from(cfg.clone())
                                .connect(name, tcp)
                                .await?;
                            loop {
                                s.write_all(REQUEST).await?;
                                read_response(&mut s, &mut buf).await?;
                                count.fetch_add(1, Ordering::Relaxed);
                                if !keepalive || Instant::now() >= deadline {
                                    return Ok(());
                                }
                            }
                        }
                    }
                }
                .await;
                if let Err(e) = result {
                    eprintln!("error: {e}");
                    return;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    count.load(Ordering::Relaxed) as f64 / secs as f64
}

fn main() -> Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let backend_port = free_port()?;
        start_nginx(dir.path(), backend_port)?;
        let backend: SocketAddr = ([127, 0, 0, 1], backend_port).into();
        tokio::time::sleep(Duration::from_millis(300)).await;

        let compose_hash = ratls::ComposeHash::of(b"front-bench");
        let id = Identity { app_id: compose_hash.default_app_id(), compose_hash, instance_id: ratls::InstanceId([1; 20]) };
        let m = Measurer::new(Arc::new(SimulatedProvider::new()));
        m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())?;
        m.emit(names::APP_ID, id.app_id.0.to_vec())?;
        m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())?;
        let cert = issue(&m, &id, &CertProfile::server_and_client(vec!["bench.internal".into()], Duration::from_secs(3600)), None)?;
        let slot = Arc::new(CertSlot::new(front::certified_key(cert.rustls_chain(), cert.rustls_key())?));
        let routes = Arc::new(RwLock::new(Routes { app_id: id.app_id, instance_id: id.instance_id, ports: HashMap::from([(80, backend)]) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let front_addr = listener.local_addr()?;
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(front::serve(listener, Arc::new(FrontResolver { routes, cert: slot }), FrontLimits::default(), stopped));

        // The client verifies the RA-TLS certificate (cached after the first connection).
        let mut policy = ratls::Policy::any_measurements();
        policy.allow_simulated = true;
        let verifier = Arc::new(ratls::CachingVerifier::new(ratls::AttestationVerifier::new(Arc::new(ratls::collateral::SourceChain::new()), policy), 16));
        let check = ratls::tls::RaTlsCheck::new(verifier, ratls::tls::ChainTrust::SelfSigned, Arc::new(rustls::crypto::ring::default_provider()));
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ratls::tls::RaTlsServerVerifier(check)))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let front = Arc::new(Target::Front(front_addr, Arc::new(cfg), format!("{}.bench.internal", id.app_id)));
        let direct = Arc::new(Target::Direct(backend));

        let d_ka = run(direct.clone(), secs, true).await;
        let f_ka = run(front.clone(), secs, true).await;
        let d_new = run(direct, secs, false).await;
        let f_new = run(front, secs, false).await;
        println!("RA-TLS front vs the backend directly, {secs}s each, {CONCURRENCY} connections");
        println!("keep-alive   direct {d_ka:>10.0} req/s   front {f_ka:>10.0} req/s   front/direct {:.2}", f_ka / d_ka);
        println!("new conns    direct {d_new:>10.0} conn/s  front {f_new:>10.0} conn/s  front/direct {:.2}", f_new / d_new);
        let pid = std::fs::read_to_string(dir.path().join("nginx.pid")).unwrap_or_default();
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        Ok(())
    })
}
