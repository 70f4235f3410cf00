//! Gateway replicas sharing state through etcd: real `etcd` members and `teegate gateway`
//! processes on loopback (each replica on its own 127.0.0.N address), simulated CVM
//! instances, Pebble for ACME and `teegate dns` answering with the live replicas.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::etcd::*;
use support::*;

fn app_host(id: &ratls::cert::Identity) -> String {
    format!("{}.{BASE}", id.app_id)
}

/// Polls `GET https://<host>/` on one replica (bounded) until `ok(status, body)`; returns
/// the time it took.
async fn wait_until_served(
    client: &reqwest::Client,
    host: &str,
    within: Duration,
    ok: impl Fn(u16, &str) -> bool,
    what: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = get(client, host).await;
        if let Ok((s, b)) = &got {
            if ok(*s, b) {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < within,
            "{what}: still {got:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metrics_of(r: &Replica) -> String {
    http_get(r.gw.ports.admin, "/metrics", None, "GET").await.1
}

/// A simulated instance of `id` with its front running, registered at `replica`
/// (registration must succeed).
async fn registered_at(
    replica: &Replica,
    ca_pem: &str,
    id: &ratls::cert::Identity,
    name: &str,
) -> Front {
    let cert = ratls_cert(id);
    let front = start_front(&cert, name).await;
    let (s, body) = register(
        replica.gw.ports.registration,
        ca_pem,
        &cert,
        &register_body(front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 200, "registration at {}: {body}", replica.ip);
    front
}

/// Waits (bounded) until the replica's `teegate_store_up` reads `up`.
async fn wait_store_up(r: &Replica, up: bool, within: Duration) {
    let want = if up { 1.0 } else { 0.0 };
    let deadline = Instant::now() + within;
    loop {
        let m = metrics_of(r).await;
        if metric(&m, "teegate_store_up") == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {} does not report store_up = {want} within {within:?}:\n{m}\n{}",
            r.ip,
            r.gw.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_at_one_replica_routes_at_all_and_lease_expiry_removes_it_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = start_etcd(dir.path(), 1);
    let set = ReplicaSet::new(
        dir.path(),
        &etcd,
        "[registration]\nallow_loopback = true\nlease_secs = 3\n",
    );
    let replicas = set.start_all(dir.path(), 3);
    let id = identity(b"replicas: shared registration", 1);
    let host = app_host(&id);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.https).collect();
    let forged = identity(b"replicas: forged record", 7);
    let clients = replica_clients(set.ca_pem(), &[host.clone(), app_host(&forged)], &addrs);
    let client = |r: &Replica| clients[&IpAddr::V4(r.ip)].clone();

    let (s, _) = get(&client(&replicas[1]), &host).await.unwrap();
    assert_ne!(s, 200, "not registered yet");

    // Each replica lists all three, with the addresses DNS hands out: within a moment, since
    // the replicas start together and each learns of the others' records through its watch.
    let mut ips: Vec<String> = replicas.iter().map(|r| r.ip.to_string()).collect();
    ips.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, listed) = http_get(
            replicas[1].gw.ports.admin,
            "/v1/replicas",
            Some("test-admin-token-0123456789"),
            "GET",
        )
        .await;
        assert_eq!(status, 200, "{listed}");
        let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
        assert_eq!(listed["store"], "etcd");
        let mut addrs_listed: Vec<String> = listed["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["addrs"][0].as_str().unwrap().to_string())
            .collect();
        addrs_listed.sort();
        if addrs_listed == ips {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica 2 does not list all three within 10 s: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let front = registered_at(&replicas[0], set.ca_pem(), &id, "one").await;
    let registered = Instant::now();
    for r in &replicas[1..] {
        wait_until_served(
            &client(r),
            &host,
            Duration::from_secs(1).saturating_sub(registered.elapsed()),
            |s, b| s == 200 && b.starts_with("instance=one"),
            "registered at replica 1, served by another",
        )
        .await;
        eprintln!(
            "replica {}: routable {:?} after the registration at replica 1 answered",
            r.ip,
            registered.elapsed()
        );
    }
    assert!(
        registered.elapsed() < Duration::from_secs(1),
        "routable everywhere within a second"
    );

    // No renewal: when the 3 s lease runs out, every replica stops routing the app.
    for r in &replicas {
        wait_until_served(
            &client(r),
            &host,
            Duration::from_secs(6).saturating_sub(registered.elapsed()),
            |s, _| s != 200,
            "lease expired",
        )
        .await;
        let m = metrics_of(r).await;
        assert_eq!(metric(&m, "teegate_registered_instances"), 0.0, "{m}");
    }
    eprintln!(
        "removed everywhere {:?} after the registration (lease 3 s)",
        registered.elapsed()
    );
    assert!(registered.elapsed() >= Duration::from_secs(2));

    // A record written into etcd behind the replicas' back, with a certificate whose
    // quote does not verify, is never routed: each replica checks what it reads.
    let bad = tampered_ratls_cert(&forged);
    let record = serde_json::json!({
        "app_id": forged.app_id.to_hex(),
        "instance_id": forged.instance_id.to_hex(),
        "compose_hash": forged.compose_hash.to_hex(),
        "front_addr": front.addr.to_string(),
        "ports": [80],
        "fingerprints": [],
        "certs": [hex::encode(&bad.rustls_chain()[0])],
        "tcb_status": "UpToDate",
        "simulated": true,
        "mrtd": "00".repeat(48),
        "lease_expires": ratls::verifier::unix_now() + 600,
    });
    etcd.etcdctl(&[
        "put",
        &format!(
            "/teegate-test/instances/{}/{}",
            forged.app_id.to_hex(),
            forged.instance_id.to_hex()
        ),
        &record.to_string(),
    ]);
    for r in &replicas {
        wait_for_line(&r.gw.proc, "does not verify here", Duration::from_secs(5));
        let (s, _) = get(&client(r), &app_host(&forged)).await.unwrap();
        assert_eq!(s, 404, "a forged record is not routed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_starting_together_order_one_certificate_and_all_serve_it() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = start_etcd(dir.path(), 1);
    let dns = start_dns(&dir.path().join("dns"), &etcd, "127.0.0.1");
    let pebble = start_pebble(dir.path(), dns.udp, None);
    let root = pebble.issuing_root_pem().await;
    let extra = format!(
        "[tls]\nmode = \"acme\"\n[tls.acme]\ndirectory_url = \"{}\"\nca_bundle = \"{}\"\ndns_api_url = \"http://{}\"\ndns_api_token_file = \"{}\"\n",
        pebble.directory,
        pebble.https_ca.display(),
        dns.api,
        dns_api_token_file(&dir.path().join("dns")).display()
    );
    // Another holder has the ACME lock, so all three replicas queue on it; then that
    // holder dies, and its lease frees the lock.
    let holder = etcd.hold_lock("/teegate-test/locks/acme-order");
    let set = ReplicaSet::new(dir.path(), &etcd, &extra);
    let replicas = set.start_all(dir.path(), 3);
    for r in &replicas {
        wait_for_line(
            &r.gw.proc,
            "store lock held elsewhere",
            Duration::from_secs(10),
        );
    }
    drop(holder);

    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(dev_roots(&root))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut served = Vec::new();
    for r in &replicas {
        let cert = loop {
            let tcp = tokio::net::TcpStream::connect(r.https).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(format!("x.{BASE}")).unwrap();
            match connector.connect(name, tcp).await {
                Ok(tls) => break tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "replica {} serves no Pebble certificate: {e}\n{}",
                        r.ip,
                        r.gw.proc.log()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        served.push(cert);
    }
    assert!(
        served.iter().all(|c| *c == served[0]),
        "all replicas serve the same certificate"
    );
    // The two replicas that did not order take their turn at the lock and find the
    // certificate in etcd (they may serve it, from the watch, before their turn comes).
    let deadline = Instant::now() + Duration::from_secs(10);
    let waited = loop {
        let waited = replicas
            .iter()
            .filter(|r| r.gw.proc.log().contains("not ordering again"))
            .count();
        if waited >= 2 || Instant::now() >= deadline {
            break waited;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pebble_log = pebble.proc.log();
    let issued = pebble_log
        .lines()
        .filter(|l| l.contains("Issued certificate serial"))
        .count();
    eprintln!(
        "{issued} certificate issued; {waited} replicas waited on the lock and took it from etcd"
    );
    assert_eq!(issued, 1, "exactly one certificate issued:\n{pebble_log}");
    assert!(
        !pebble_log.contains("There are now 2 orders"),
        "exactly one order:\n{pebble_log}"
    );
    let accounts = pebble_log
        .lines()
        .filter(|l| l.contains("There are now") && l.contains("accounts"))
        .count();
    assert_eq!(accounts, 1, "one ACME account for all:\n{pebble_log}");
    assert_eq!(
        waited, 2,
        "the two replicas that did not order took the certificate from etcd"
    );
    // Unattested replicas seal under the key file they share: etcd holds the certificate's
    // key and the ACME account's only sealed, in no encoding a reader could use.
    use gateway::seal::Kind;
    let seal = gateway::seal::SealKey::load_or_create_file(&set.seal_key_file).unwrap();
    let get = |key: String| etcd.etcdctl(&["get", &key, "--print-value-only"]);
    let wildcard = format!("*.{BASE}");
    let record: serde_json::Value =
        serde_json::from_str(get(format!("/teegate-test/certs/{wildcard}")).trim()).unwrap();
    let cert_key = seal
        .open_text(
            Kind::CertKey,
            &wildcard,
            record["key_pem"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(key_spki(&cert_key), cert_spki(&served[0]));
    let account = gateway::acme::account_key(&pebble.directory);
    let creds = seal
        .open_text(
            Kind::Value,
            &account,
            get(format!("/teegate-test/values/{account}")).trim(),
        )
        .unwrap();
    let everything = etcd.etcdctl(&["get", "--prefix", ""]);
    assert_no_key_in(everything.as_bytes(), &cert_key, "etcd (certificate key)");
    assert_no_key_in(
        everything.as_bytes(),
        &acme_account_key_pem(&creds),
        "etcd (ACME account key)",
    );
}

/// Counts of a load run.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    /// Requests that failed on every address offered.
    failed: AtomicU64,
    /// Attempts that failed on one address and were retried on another.
    retried: AtomicU64,
}

/// Clients that resolve `host` through `dns` before each request and, when one address
/// fails, retry on the next (as browsers do with several A records), until `stop`.
fn run_load(
    dns: SocketAddr,
    host: String,
    clients: Arc<std::collections::HashMap<IpAddr, reqwest::Client>>,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let tasks = (0..workers)
        .map(|w| {
            let (load, clients, stop, host) =
                (load.clone(), clients.clone(), stop.clone(), host.clone());
            tokio::spawn(async move {
                let mut turn = w;
                while !stop.load(Ordering::Relaxed) {
                    let addrs = dns_a(dns, &host).await;
                    let mut done = false;
                    for k in 0..addrs.len() {
                        let ip = addrs[(turn + k) % addrs.len()];
                        let Some(c) = clients.get(&ip) else { continue };
                        match get(c, &host).await {
                            Ok((200, _)) => {
                                done = true;
                                break;
                            }
                            _ => {
                                load.retried.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    turn += 1;
                    if done {
                        load.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        load.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    (load, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_leaves_dns_within_its_lease_and_clients_lose_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = start_etcd(dir.path(), 1);
    let dns = start_dns(&dir.path().join("dns"), &etcd, "127.0.0.9");
    let set = ReplicaSet::new(dir.path(), &etcd, "replica_lease_secs = 3\n");
    let mut replicas = set.start_all(dir.path(), 3);
    let id = identity(b"replicas: kill one", 1);
    let host = app_host(&id);
    let ips: Vec<IpAddr> = replicas.iter().map(|r| IpAddr::V4(r.ip)).collect();
    wait_for_dns(dns.udp, &host, Duration::from_secs(10), |a| a == ips).await;

    let _front = registered_at(&replicas[0], set.ca_pem(), &id, "one").await;
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.https).collect();
    let clients = Arc::new(replica_clients(
        set.ca_pem(),
        std::slice::from_ref(&host),
        &addrs,
    ));
    for r in &replicas {
        wait_until_served(
            &clients[&IpAddr::V4(r.ip)],
            &host,
            Duration::from_secs(2),
            |s, _| s == 200,
            "served before the load",
        )
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (load, tasks) = run_load(dns.udp, host.clone(), clients.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before_kill = load.ok.load(Ordering::Relaxed);
    let dead = IpAddr::V4(replicas[1].ip);
    replicas[1].gw.proc.signal(libc::SIGKILL);
    let killed = Instant::now();
    let (after, when) = wait_for_dns(dns.udp, &host, Duration::from_secs(6), |a| {
        !a.contains(&dead)
    })
    .await;
    let gone_after = when - killed;
    eprintln!("DNS stopped answering the killed replica {gone_after:?} after the kill (lease 3 s): now {after:?}");
    assert_eq!(after, vec![ips[0], ips[2]]);
    // The lease lapses at most 3 s after the kill; etcd notices expired leases on a
    // 500 ms tick, and the DNS sees the deletion through its watch.
    assert!(
        gone_after <= Duration::from_secs(4),
        "within the replica lease (3 s, plus etcd's expiry check): {gone_after:?}"
    );
    let at_gone = load.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("load worker stops")
            .unwrap();
    }
    let (ok, failed, retried) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        load.retried.load(Ordering::Relaxed),
    );
    eprintln!("load: {ok} ok, {failed} failed, {retried} retried on another address");
    assert_eq!(failed, 0, "no request failed on every address");
    assert!(
        before_kill > 0 && ok > at_gone,
        "served before and after the kill"
    );
    assert!(replicas[1].gw.proc.child.as_mut().unwrap().wait().is_ok());

    // A replica that stops cleanly gives its lease back: DNS drops it at once.
    replicas[2].gw.proc.signal(libc::SIGTERM);
    let stopping = Instant::now();
    let (after, when) =
        wait_for_dns(dns.udp, &host, Duration::from_secs(2), |a| a == [ips[0]]).await;
    eprintln!(
        "DNS dropped the stopped replica {:?} after SIGTERM: now {after:?}",
        when - stopping
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_etcd_keeps_routing_refuses_registrations_and_catches_up() {
    etcd_outage(1, &[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_quorum_loss_keeps_routing_refuses_registrations_and_catches_up() {
    // Two of three members die: no quorum, so etcd answers nothing useful.
    etcd_outage(3, &[1, 2]).await;
}

/// Two replicas under a load; the etcd members `kill` die and come back.
async fn etcd_outage(members: usize, kill: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = start_etcd(dir.path(), members);
    let set = ReplicaSet::new(dir.path(), &etcd, "");
    let replicas = set.start_all(dir.path(), 2);
    let a = identity(b"replicas: etcd outage A", 1);
    let b = identity(b"replicas: etcd outage B", 2);
    let (host_a, host_b) = (app_host(&a), app_host(&b));
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.https).collect();
    let clients = Arc::new(replica_clients(
        set.ca_pem(),
        &[host_a.clone(), host_b.clone()],
        &addrs,
    ));
    let client = |r: &Replica| clients[&IpAddr::V4(r.ip)].clone();

    let _front_a = registered_at(&replicas[0], set.ca_pem(), &a, "a").await;
    wait_until_served(
        &client(&replicas[1]),
        &host_a,
        Duration::from_secs(1),
        |s, _| s == 200,
        "A served at replica 2",
    )
    .await;

    // Load on both replicas, for app A, through the whole outage.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = replicas
        .iter()
        .map(|r| {
            let (c, host, stop, failures, served) = (
                client(r),
                host_a.clone(),
                stop.clone(),
                failures.clone(),
                served.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match get(&c, &host).await {
                        Ok((200, _)) => served.fetch_add(1, Ordering::Relaxed),
                        _ => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    for &i in kill {
        etcd.nodes[i].kill();
    }
    let outage = Instant::now();
    for r in &replicas {
        wait_store_up(r, false, Duration::from_secs(10)).await;
    }
    eprintln!(
        "outage reported by both replicas after {:?}",
        outage.elapsed()
    );
    let cert_b = ratls_cert(&b);
    let front_b = start_front(&cert_b, "b").await;
    let started = Instant::now();
    let (s, body) = register(
        replicas[1].gw.ports.registration,
        set.ca_pem(),
        &cert_b,
        &register_body(front_b.addr, &[80]),
    )
    .await;
    eprintln!(
        "registration refused in {:?}: {s} {body}",
        started.elapsed()
    );
    assert_eq!(s, 503, "{body}");
    assert!(
        body.contains("etcd") && body.contains("store"),
        "the error names the store: {body}"
    );
    let (s, _) = get(&client(&replicas[0]), &host_b).await.unwrap();
    assert_ne!(s, 200, "B was not registered anywhere");
    assert!(
        replicas[1].gw.proc.log().contains("etcd unreachable"),
        "the outage is logged:\n{}",
        replicas[1].gw.proc.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // etcd comes back: the replicas resume without a restart.
    etcd.restart(kill);
    let back = Instant::now();
    for r in &replicas {
        wait_store_up(r, true, Duration::from_secs(15)).await;
    }
    eprintln!(
        "replicas saw etcd again {:?} after its restart",
        back.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, body) = register(
            replicas[1].gw.ports.registration,
            set.ca_pem(),
            &cert_b,
            &register_body(front_b.addr, &[80]),
        )
        .await;
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "registration after etcd returned: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let registered = Instant::now();
    wait_until_served(
        &client(&replicas[0]),
        &host_b,
        Duration::from_secs(3),
        |s, b| s == 200 && b.starts_with("instance=b"),
        "B registered at replica 2 after the outage, served by replica 1",
    )
    .await;
    eprintln!(
        "B routable at replica 1 {:?} after its registration at replica 2",
        registered.elapsed()
    );

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("load worker stops")
            .unwrap();
    }
    let (ok, failed) = (
        served.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    eprintln!("load on A through the outage: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "A stayed served through the outage");
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_cut_off_from_etcd_serves_its_last_state_and_catches_up_on_return() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = start_etcd(dir.path(), 3);
    let set = ReplicaSet::new(dir.path(), &etcd, "");
    // Replica 1 talks to member 0 only: killing that member cuts it off while the
    // cluster, and replica 2 (members 1 and 2), go on.
    let only = |i: usize| format!("[\"{}\"]", etcd.nodes[i].endpoint());
    let r1 = set.start_with(&dir.path().join("r1"), 1, &only(0));
    let r2 = set.start_with(
        &dir.path().join("r2"),
        2,
        &format!(
            "[\"{}\", \"{}\"]",
            etcd.nodes[1].endpoint(),
            etcd.nodes[2].endpoint()
        ),
    );
    let a = identity(b"replicas: cut off A", 1);
    let b = identity(b"replicas: cut off B", 2);
    let (host_a, host_b) = (app_host(&a), app_host(&b));
    let clients = replica_clients(
        set.ca_pem(),
        &[host_a.clone(), host_b.clone()],
        &[r1.https, r2.https],
    );
    let (c1, c2) = (&clients[&IpAddr::V4(r1.ip)], &clients[&IpAddr::V4(r2.ip)]);
    let _front_a = registered_at(&r2, set.ca_pem(), &a, "a").await;
    wait_until_served(
        c1,
        &host_a,
        Duration::from_secs(1),
        |s, _| s == 200,
        "A at replica 1",
    )
    .await;

    etcd.nodes[0].kill();
    wait_store_up(&r1, false, Duration::from_secs(10)).await;
    // Cut off, replica 1 serves what it knew; the others go on registering.
    let cert_b = ratls_cert(&b);
    let front_b = start_front(&cert_b, "b").await;
    let (s, body) = register(
        r1.gw.ports.registration,
        set.ca_pem(),
        &cert_b,
        &register_body(front_b.addr, &[80]),
    )
    .await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("etcd"), "{body}");
    // Losing member 0 may cost the cluster its leader: a registration racing the election
    // is refused, and the sidecar's next try gets through.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, body) = register(
            r2.gw.ports.registration,
            set.ca_pem(),
            &cert_b,
            &register_body(front_b.addr, &[80]),
        )
        .await;
        if s == 200 {
            break;
        }
        assert!(
            s == 503 && Instant::now() < deadline,
            "registration at replica 2: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_until_served(
        c2,
        &host_b,
        Duration::from_secs(1),
        |s, _| s == 200,
        "B at replica 2",
    )
    .await;
    let (s, _) = get(c1, &host_b).await.unwrap();
    assert_ne!(s, 200, "replica 1 cannot know B yet");
    let (s, _) = get(c1, &host_a).await.unwrap();
    assert_eq!(s, 200, "replica 1 still serves A");
    let m2 = metrics_of(&r2).await;
    assert_eq!(metric(&m2, "teegate_store_up"), 1.0, "{m2}");

    etcd.restart(&[0]);
    let back = Instant::now();
    let took = wait_until_served(
        c1,
        &host_b,
        Duration::from_secs(10),
        |s, b| s == 200 && b.starts_with("instance=b"),
        "replica 1 catches up on B after etcd returns",
    )
    .await;
    eprintln!(
        "replica 1 routes B {took:?} after its etcd member was back ({:?} since restart)",
        back.elapsed()
    );
    assert_eq!(metric(&metrics_of(&r1).await, "teegate_store_up"), 1.0);
}
