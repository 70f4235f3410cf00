//! The test side of a lab: client loops that count every request through a replica,
//! bounded waits on what a replica serves or reports, probe registrations, and what the
//! admin API lists.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::etcd::{get, metric};
use super::lab::Host;
use super::lab_hosts::{Replica, ADMIN_TOKEN};
use super::{http_get_at, register_body, register_with_at};

pub async fn metrics(r: &Replica) -> String {
    http_get_at(r.admin, "/metrics", None, "GET").await.1
}

/// Waits (bounded) until `series` reads `want` on `r`; returns how long it took.
pub async fn wait_metric(r: &Replica, series: &str, want: f64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let m = metrics(r).await;
        if metric(&m, series) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{}: {series} is not {want} after {within:?}:\n{m}\n{}",
            r.host.name,
            r.host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `GET https://<host>/` (bounded) until `ok(status, body)`; returns how long it took.
pub async fn wait_served(
    client: &reqwest::Client,
    host: &str,
    within: Duration,
    ok: impl Fn(u16, &str) -> bool,
    what: &str,
    explain: &[&Host],
) -> Duration {
    let start = Instant::now();
    loop {
        let got = get(client, host).await;
        if let Ok((s, b)) = &got {
            if ok(*s, b) {
                return start.elapsed();
            }
        }
        if start.elapsed() >= within {
            let logs: Vec<String> = explain
                .iter()
                .map(|h| format!("--- {}:\n{}", h.name, h.log()))
                .collect();
            panic!(
                "{what}: still {got:?} after {within:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A probe registration of a simulated instance at `r` (its front address need not serve:
/// only the answer matters).
pub async fn probe_register(
    r: &Replica,
    ca_pem: &str,
    probe: &ratls::cert::RaTlsCert,
    front: SocketAddr,
) -> (u16, String) {
    register_with_at(
        r.registration,
        ca_pem,
        probe.rustls_chain(),
        probe.rustls_key(),
        &register_body(front, &[80]),
    )
    .await
}

/// Retries the probe registration (bounded) until it is accepted; returns how long it took.
pub async fn registers_within(
    r: &Replica,
    ca_pem: &str,
    probe: &ratls::cert::RaTlsCert,
    front: SocketAddr,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let (s, body) = probe_register(r, ca_pem, probe, front).await;
        if s == 200 {
            return start.elapsed();
        }
        eprintln!(
            "{}: registration refused, to be retried: {s} {body}",
            r.host.name
        );
        assert!(
            s == 503 && start.elapsed() < within,
            "registration at {}: {s} {body}\n{}",
            r.host.name,
            r.host.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (bounded by `within`) until `n` probe registrations in a row at every replica are
/// accepted, each answered within `fast`; returns how long that took. Refusals and slow
/// answers before then are printed.
pub async fn registrations_settle(
    replicas: &[Replica],
    ca_pem: &str,
    probe: &ratls::cert::RaTlsCert,
    front: SocketAddr,
    n: usize,
    fast: Duration,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < n * replicas.len() {
        let r = &replicas[in_a_row % replicas.len()];
        let asked = Instant::now();
        let (s, body) = probe_register(r, ca_pem, probe, front).await;
        let took = asked.elapsed();
        if s == 200 && took < fast {
            in_a_row += 1;
            continue;
        }
        eprintln!(
            "{}: registration not taken at once ({took:?}): {s} {}",
            r.host.name,
            body.chars().take(200).collect::<String>()
        );
        in_a_row = 0;
        assert!(
            start.elapsed() < within,
            "registrations are not taken at once within {within:?}:\n{}",
            r.host.log()
        );
    }
    start.elapsed()
}

/// Polls `GET /v1/replicas` at `r` (bounded) until it lists `want`; returns how long it took.
/// A 503 (the store unreachable, as a read can find it just after a partition heals, when
/// the etcd client's connection to a member was started during the cut) is printed and
/// asked again; any other refusal fails at once.
pub async fn lists_replicas_within(r: &Replica, want: &[IpAddr], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match listed_replicas(r).await {
            Ok(ips) if ips == want => return start.elapsed(),
            Ok(ips) => eprintln!("{}: lists {ips:?}, not yet {want:?}", r.host.name),
            Err((503, body)) => eprintln!("{}: replica list refused: 503 {body}", r.host.name),
            Err((s, body)) => panic!("replica list at {}: {s} {body}", r.host.name),
        }
        assert!(
            start.elapsed() < within,
            "{} does not list {want:?} within {within:?}\n{}",
            r.host.name,
            r.host.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The replica addresses `GET /v1/replicas` lists at `r`, or its error status and body.
pub async fn listed_replicas(r: &Replica) -> Result<Vec<IpAddr>, (u16, String)> {
    let (s, body) = http_get_at(r.admin, "/v1/replicas", Some(ADMIN_TOKEN), "GET").await;
    if s != 200 {
        return Err((s, body));
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut ips: Vec<IpAddr> = v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["addrs"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    ips.sort();
    Ok(ips)
}

pub fn ips(rs: &[&Replica]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = rs.iter().map(|r| IpAddr::V4(r.ip)).collect();
    v.sort();
    v
}

/// A client loop against one replica.
#[derive(Default)]
pub struct Load {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub slowest_ms: AtomicU64,
    /// The first few failures: when the request was sent, and what came back.
    pub errors: Mutex<Vec<(Instant, String)>>,
    /// Answers by the instance that gave them.
    pub by_instance: Mutex<HashMap<String, u64>>,
}

impl Load {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Answers so far whose body starts with `who` (`instance=<name>`).
    pub fn from(&self, who: &str) -> u64 {
        self.by_instance
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(who))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Two workers sending `GET https://<host>/` through `client` until `stop`, a request
/// every 10 ms or so each.
fn spawn_load(
    client: reqwest::Client,
    host: String,
    stop: Arc<AtomicBool>,
) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let tasks = (0..2)
        .map(|_| {
            let (load, client, host, stop) =
                (load.clone(), client.clone(), host.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let got = get(&client, &host).await;
                    load.slowest_ms
                        .fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    match got {
                        Ok((200, body)) if body.starts_with("instance=") => {
                            load.ok.fetch_add(1, Ordering::Relaxed);
                            let who = body.trim().to_string();
                            *load.by_instance.lock().unwrap().entry(who).or_default() += 1;
                        }
                        other => {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                            let mut e = load.errors.lock().unwrap();
                            if e.len() < 5 {
                                e.push((started, format!("{other:?}")));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    (load, tasks)
}

/// Client loops through several replicas at once, for one app, stopped together.
pub struct Loads {
    /// One per client, in order.
    pub each: Vec<Arc<Load>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Loads {
    /// A loop through each of `clients` for `host`; returns once every loop was served.
    pub async fn start(clients: &[reqwest::Client], host: &str) -> Loads {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let each = clients
            .iter()
            .map(|c| {
                let (load, t) = spawn_load(c.clone(), host.to_string(), stop.clone());
                tasks.extend(t);
                load
            })
            .collect();
        let loads = Loads { each, stop, tasks };
        let deadline = Instant::now() + Duration::from_secs(10);
        while loads.each.iter().any(|l| l.ok() < 3) {
            assert!(
                Instant::now() < deadline,
                "the client loops are not served: {:?}",
                loads.oks()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loads
    }

    /// Each loop's served requests so far.
    pub fn oks(&self) -> Vec<u64> {
        self.each.iter().map(|l| l.ok()).collect()
    }

    /// Stops the loops (bounded) and asserts that none lost a request; prints their counts
    /// under `names`, and when one did, the warnings of `witnesses` (the replicas and
    /// instances it went through), which say why.
    pub async fn stop(self, names: &[&str], witnesses: &[&Host]) {
        let loads = self.finish_telling(witnesses).await;
        for (load, name) in loads.iter().zip(names) {
            assert_no_failure(name, load);
        }
    }

    /// Stops the loops (bounded) and returns them, to be judged by the caller; when one
    /// lost a request, prints the warnings of `witnesses` first.
    pub async fn finish_telling(self, witnesses: &[&Host]) -> Vec<Arc<Load>> {
        let loads = self.finish().await;
        if loads.iter().any(|l| l.failed() > 0) {
            for host in witnesses {
                let log = host.log();
                let warned: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
                eprintln!(
                    "{}'s warnings (last 20 of {}):\n{}",
                    host.name,
                    warned.len(),
                    warned[warned.len().saturating_sub(20)..].join("\n")
                );
            }
        }
        loads
    }

    /// Stops the loops (bounded) and returns them, to be judged by the caller.
    pub async fn finish(self) -> Vec<Arc<Load>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("a client loop stops")
                .unwrap();
        }
        self.each
    }
}

/// Prints a loop's counts under `what`.
pub fn report(what: &str, load: &Load) {
    let by = load.by_instance.lock().unwrap().clone();
    eprintln!(
        "{what}: {} ok, {} failed, slowest {} ms, by instance {by:?}",
        load.ok(),
        load.failed(),
        load.slowest_ms.load(Ordering::Relaxed)
    );
}

/// Asserts a loop lost no request and served some; prints its counts.
pub fn assert_no_failure(what: &str, load: &Load) {
    report(what, load);
    assert_eq!(
        load.failed(),
        0,
        "{what}: requests failed: {:?}",
        load.errors.lock().unwrap()
    );
    assert!(load.ok() > 0, "{what}: nothing served");
}
