//! The KMS listener's bounds, against a real `teegate kms` process: connections that never
//! send a ClientHello are closed at `limits.handshake_timeout_secs`, connections beyond
//! `limits.max_connections` are closed at once, and an attested instance still gets its
//! keys while a flood holds the rest of the slots (and again once the flood is gone).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kms::api::AppKeysRequest;
use kms::client::KmsClient;
use ratls::{AttestationVerifier, CachingVerifier, ComposeHash, Policy};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const COMPOSE: &[u8] = b"{\"name\":\"flooded\"}";
const MAX: usize = 16;
const HANDSHAKE_SECS: u64 = 4;

fn start_kms(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let hash = ComposeHash::of(COMPOSE);
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nquote_provider = \"simulated\"\n\
         [limits]\nmax_connections = {MAX}\nhandshake_timeout_secs = {HANDSHAKE_SECS}\n\
         [verifier]\nallow_simulated = true\n\
         [policy.os]\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\n\
         [policy.apps.{}]\ncompose_hashes = [\"{hash}\"]\nallow_simulated = true\n",
        dir.join("data").display(),
        hash.default_app_id(),
    );
    let config = dir.join("kms.toml");
    std::fs::write(&config, text).unwrap();
    let proc = spawn_teegate(
        &["kms", "--config", config.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    (proc, port)
}

/// An attested instance of `COMPOSE` asking for its keys over mutual RA-TLS.
async fn fetch_keys(dir: &Path, port: u16, n: u8) -> Result<(), String> {
    let root = pem::parse(std::fs::read(dir.join("data/root-ca.pem")).unwrap())
        .unwrap()
        .into_contents();
    let mut policy = Policy::any_measurements();
    policy.allow_simulated = true;
    let attest = Arc::new(CachingVerifier::new(
        AttestationVerifier::new(Arc::new(ratls::collateral::SourceChain::new()), policy),
        16,
    ));
    let verifier = kms::client::pinned_root(&root, attest).unwrap();
    let cert = ratls_cert(&identity(COMPOSE, n));
    let client = KmsClient::new(
        &format!("https://127.0.0.1:{port}"),
        verifier,
        Some((cert.rustls_chain(), cert.rustls_key())),
        Duration::from_secs(5),
    )
    .unwrap();
    let keys = client
        .app_keys(&AppKeysRequest {
            paths: vec!["db/main".into()],
        })
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        keys.app_id,
        ComposeHash::of(COMPOSE).default_app_id().to_hex()
    );
    Ok(())
}

/// Opens `n` TCP connections that never send a byte; each task answers how long after
/// `since` the KMS closed it (EOF or reset), or `None` if it stayed open for 10 s.
async fn idle_connections(
    port: u16,
    n: usize,
    since: Instant,
) -> Vec<tokio::task::JoinHandle<Option<Duration>>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => Some(since.elapsed()),
                Ok(Ok(_)) => panic!("the KMS sent bytes before any ClientHello"),
                Err(_) => None,
            }
        }));
    }
    tasks
}

async fn closed_after(tasks: Vec<tokio::task::JoinHandle<Option<Duration>>>) -> Vec<Duration> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            t.await
                .unwrap()
                .expect("the KMS closed the idle connection"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flood_is_capped_and_timed_out_while_attested_instances_get_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kms, port) = start_kms(dir.path());
    fetch_keys(dir.path(), port, 1).await.unwrap();

    // A flood that leaves room: the attested instance still gets its keys.
    let start = Instant::now();
    let first = idle_connections(port, MAX - 4, start).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    fetch_keys(dir.path(), port, 2)
        .await
        .unwrap_or_else(|e| panic!("no keys during the flood: {e}\n{}", kms.log()));
    println!(
        "keys released in {:?} with {} idle connections open",
        t.elapsed(),
        MAX - 4
    );
    // The key fetch's connection holds a slot until the KMS reads its close: give it the
    // same time the flood got to be taken (without it, 7 of the next 10 were refused once).
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Ten more: four take the last slots, six are beyond the cap and closed at once.
    let beyond = Instant::now();
    let second = idle_connections(port, 10, beyond).await;
    let second = closed_after(second).await;
    let at_once: Vec<&Duration> = second
        .iter()
        .filter(|d| **d < Duration::from_millis(1000))
        .collect();
    println!("second batch closed after {second:?}");
    assert_eq!(
        at_once.len(),
        6,
        "exactly the connections beyond the cap are closed at once: {second:?}"
    );

    // Every connection that held a slot is closed at the handshake timeout, not before.
    let first = closed_after(first).await;
    println!("first batch closed after {first:?}");
    let limit = Duration::from_secs(HANDSHAKE_SECS);
    for d in &first {
        assert!(
            *d >= limit - Duration::from_millis(300) && *d < limit + Duration::from_secs(3),
            "closed after {d:?}, handshake timeout {limit:?}"
        );
    }
    let held: Vec<&Duration> = second
        .iter()
        .filter(|d| **d >= Duration::from_millis(1000))
        .collect();
    assert_eq!(held.len(), 4);
    for d in held {
        assert!(*d < limit + Duration::from_secs(3), "{d:?}");
    }

    // The slots are free again: keys as before.
    fetch_keys(dir.path(), port, 3).await.unwrap();
    assert!(kms.stop(Duration::from_secs(10)).is_some());
}
