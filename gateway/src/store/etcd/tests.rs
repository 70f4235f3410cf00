//! The etcd backend against real etcd members (Debian `etcd-server`) on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use tokio::sync::watch;

use super::*;

/// A one-member etcd (Debian `etcd-server`) on loopback, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    /// Its whole command line, to restart it on the same data and ports.
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Kills it (as a crash would) and starts it again on its data.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_member(&self.args);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_etcd() -> Etcd {
    start_etcd_with("http", &[])
}

fn start_etcd_with(scheme: &str, args: &[String]) -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let client = format!("{scheme}://127.0.0.1:{}", port());
    let peer = format!("http://127.0.0.1:{}", port());
    let mut all: Vec<String> = vec![
        "--data-dir".into(),
        dir.path().join("data").to_str().unwrap().into(),
    ];
    all.extend_from_slice(args);
    for (flag, value) in [
        ("--listen-client-urls", client.as_str()),
        ("--advertise-client-urls", &client),
        ("--listen-peer-urls", &peer),
        ("--initial-advertise-peer-urls", &peer),
        ("--initial-cluster", &format!("default={peer}")),
        ("--heartbeat-interval", "50"),
        ("--election-timeout", "500"),
    ] {
        all.push(flag.into());
        all.push(value.into());
    }
    Etcd {
        child: spawn_member(&all),
        endpoint: client,
        args: all,
        _dir: dir,
    }
}

/// Runs `etcd <args>` and waits (bounded) until it serves clients.
fn spawn_member(args: &[String]) -> Child {
    let mut child = Command::new("etcd")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcd is installed (scripts/test installs etcd-server)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ready to serve client requests") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("etcd ready within 20 s");
    child
}

async fn store(etcd: &Etcd) -> EtcdStore {
    let cfg = EtcdConfig {
        endpoints: vec![config::HttpUrl::parse(&etcd.endpoint).unwrap()],
        prefix: "/unit".into(),
        tls: None,
        username: None,
        password: None,
    };
    EtcdStore::connect(&cfg, None).await.unwrap()
}

/// Built from JSON so fields added to `InstanceRecord` with defaults need no change here.
fn record(n: u8, lease_secs: u64) -> InstanceRecord {
    serde_json::from_value(serde_json::json!({
        "app_id": hex::encode([n; 20]),
        "instance_id": hex::encode([n; 20]),
        "compose_hash": hex::encode([n; 32]),
        "front_addr": "10.0.0.1:8443",
        "ports": [80],
        "fingerprints": [hex::encode([n; 32])],
        "certs": [],
        "tcb_status": "UpToDate",
        "simulated": true,
        "mrtd": hex::encode([n; 48]),
        "lease_expires": ratls::verifier::unix_now() + lease_secs,
    }))
    .unwrap()
}

async fn next_event(
    rx: &mut broadcast::Receiver<StoreEvent>,
    want: impl Fn(&StoreEvent) -> bool,
    within: Duration,
) -> StoreEvent {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(e)) if want(&e) => return e,
            Ok(Ok(_)) => {}
            other => panic!("no expected store event within {within:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_id_is_never_taken_from_its_live_holder_at_any_replica() {
    use crate::store::Conflict;
    let etcd = start_etcd();
    let (one, two) = (store(&etcd).await, store(&etcd).await);
    let victim = record(1, 60);
    one.put_instance(&victim).await.unwrap();
    let mut other_app = record(2, 60);
    other_app.instance_id = victim.instance_id;
    let e = two.put_instance(&other_app).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(Conflict::OtherApp { .. })),
        "{e}"
    );
    let mut other_key = victim.clone();
    other_key.fingerprints = vec![ratls::Fingerprint([9; 32])];
    let e = two.put_instance(&other_key).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(Conflict::OtherLineage { .. })),
        "{e}"
    );
    assert_eq!(two.instances().await.unwrap(), vec![victim.clone()]);
    // A record written straight into etcd under the victim's key but for another app
    // is not believed.
    let mut c = one.client();
    c.put(
        one.key(&format!("instances/{}", victim.key())),
        serde_json::to_vec(&other_app).unwrap(),
        None,
    )
    .await
    .unwrap();
    assert!(two.instances().await.unwrap().is_empty());
    // Renewal by the holder restores it, and deleting frees the id for another app.
    one.put_instance(&victim).await.unwrap();
    one.delete_instance(&victim.key()).await.unwrap();
    two.put_instance(&other_app).await.unwrap();
    assert_eq!(one.instances().await.unwrap(), vec![other_app]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_at_one_replica_reach_the_others_and_leases_end_registrations() {
    let etcd = start_etcd();
    let (one, two) = (store(&etcd).await, store(&etcd).await);
    let mut events = two.subscribe();
    let (stop, stopped) = watch::channel(false);
    let watcher = tokio::spawn({
        let two = two.clone();
        async move { two.run_watch(stopped).await }
    });
    next_event(
        &mut events,
        |e| matches!(e, StoreEvent::Resync),
        Duration::from_secs(5),
    )
    .await;

    one.put_instance(&record(1, 2)).await.unwrap();
    let put = next_event(
        &mut events,
        |e| matches!(e, StoreEvent::InstancePut(_)),
        Duration::from_secs(2),
    )
    .await;
    assert!(
        matches!(put, StoreEvent::InstancePut(r) if r.instance_id == ratls::InstanceId([1; 20]))
    );
    assert_eq!(two.instances().await.unwrap().len(), 1);
    // A renewal moves the key to a fresh lease; the first lease must not take it away.
    one.put_instance(&record(3, 60)).await.unwrap();
    one.put_instance(&record(3, 60)).await.unwrap();

    // Nobody deletes instance 1: its etcd lease does, at every replica.
    let gone = next_event(
        &mut events,
        |e| matches!(e, StoreEvent::InstanceDeleted(_)),
        Duration::from_secs(6),
    )
    .await;
    assert!(
        matches!(gone, StoreEvent::InstanceDeleted(k) if k.instance == ratls::InstanceId([1; 20]))
    );
    let left: Vec<_> = one
        .instances()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.instance_id)
        .collect();
    assert_eq!(left, vec![ratls::InstanceId([3; 20])]);

    one.put_cert(&CertRecord {
        name: "*.x.test".into(),
        cert_chain_pem: "c".into(),
        key_pem: zeroize::Zeroizing::new("k".into()),
        not_after: 9,
    })
    .await
    .unwrap();
    next_event(
        &mut events,
        |e| matches!(e, StoreEvent::CertPut(n) if n == "*.x.test"),
        Duration::from_secs(2),
    )
    .await;
    one.put_value("acme-account", "{}").await.unwrap();
    assert_eq!(
        two.get_value("acme-account").await.unwrap().as_deref(),
        Some("{}")
    );
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watch stops at shutdown")
        .unwrap();
}

/// The lease `P/replicas/<id>` is held under, if the key exists.
async fn replica_lease(store: &EtcdStore, id: &str) -> Option<i64> {
    let mut c = store.client();
    let resp = c
        .get(store.key(&format!("replicas/{id}")), None)
        .await
        .ok()?;
    resp.kvs().first().map(|kv| kv.lease())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stays_listed_on_its_lease_when_the_connection_renewing_it_breaks() {
    let mut etcd = start_etcd();
    let (one, two) = (store(&etcd).await, store(&etcd).await);
    let record = ReplicaRecord {
        id: "r1".into(),
        addrs: vec!["192.0.2.1".parse().unwrap()],
        https_port: 443,
    };
    let (stop, stopped) = watch::channel(false);
    let keeper = tokio::spawn({
        let (one, record, stopped) = (one.clone(), record.clone(), stopped.clone());
        async move {
            one.keep_replica(&record, Duration::from_secs(2), stopped)
                .await
        }
    });
    // What `teegate dns` sees: every list of live replicas, in order.
    let lists = Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
    let watcher = tokio::spawn({
        let (two, lists) = (two.clone(), lists.clone());
        async move {
            two.watch_replicas(stopped, move |l| {
                lists
                    .lock()
                    .unwrap()
                    .push(l.into_iter().map(|r| r.id).collect())
            })
            .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let lease = loop {
        let listed = lists.lock().unwrap().last().cloned().unwrap_or_default();
        if let (true, Some(lease)) = (listed == ["r1"], replica_lease(&two, "r1").await) {
            break lease;
        }
        assert!(Instant::now() < deadline, "the replica is not listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let listed_before = lists.lock().unwrap().len();

    // Every connection to etcd breaks; the lease lives on in etcd's data.
    etcd.restart();
    // Longer than the lease: had it not been renewed, it would have run out.
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        if let Some(now) = replica_lease(&two, "r1").await {
            assert_eq!(now, lease, "the record moved to another lease");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = two.client();
    let left = c.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(left > 0, "the lease was not renewed after the restart");
    assert_eq!(replica_lease(&two, "r1").await, Some(lease));
    let lists = lists.lock().unwrap().clone();
    assert!(
        lists.len() > listed_before,
        "the watcher saw etcd come back"
    );
    assert!(
        lists[listed_before - 1..].iter().all(|l| l == &["r1"]),
        "a watcher saw the replica leave: {lists:?}"
    );

    // At shutdown the lease is revoked: the replica leaves at once.
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), keeper)
        .await
        .expect("the heartbeat stops")
        .unwrap();
    assert_eq!(replica_lease(&two, "r1").await, None);
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watch stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_excludes_other_replicas_until_released_or_its_holder_stops_renewing() {
    let etcd = start_etcd();
    let (one, two) = (store(&etcd).await, store(&etcd).await);
    let held = one
        .lock("acme-order", Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    assert!(held.is_some());
    assert!(two
        .lock(
            "acme-order",
            Duration::from_secs(60),
            Duration::from_millis(300)
        )
        .await
        .unwrap()
        .is_none());
    assert!(two
        .lock("other", Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap()
        .is_some());
    drop(held);
    let taken = two
        .lock("acme-order", Duration::from_secs(1), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(taken.is_some(), "released on drop");
    // A holder that stops renewing (as a dead one does) never releases: its lease does.
    std::mem::forget(taken);
    let start = Instant::now();
    assert!(one
        .lock(
            "acme-order",
            Duration::from_secs(60),
            Duration::from_secs(8)
        )
        .await
        .unwrap()
        .is_some());
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_a_clear_error_naming_etcd() {
    let dead = format!("http://127.0.0.1:{}", port());
    let cfg = EtcdConfig {
        endpoints: vec![config::HttpUrl::parse(&dead).unwrap()],
        prefix: "/unit".into(),
        tls: None,
        username: None,
        password: None,
    };
    let store = EtcdStore::connect(&cfg, None).await.unwrap();
    let start = Instant::now();
    let e = store.put_instance(&record(1, 30)).await.unwrap_err();
    assert!(start.elapsed() < OP_TIMEOUT + Duration::from_secs(1));
    let text = e.to_string();
    assert!(
        text.contains("store unavailable") && text.contains("etcd") && text.contains(&dead),
        "{text}"
    );
}

/// Writes a CA and certificates it signs (PEM files in `dir`); returns the CA's path.
fn pki(
    dir: &std::path::Path,
    tag: &str,
) -> (std::path::PathBuf, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{tag} CA"));
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(format!("{tag}-ca.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    (path, rcgen::Issuer::new(params, key))
}

fn leaf(
    dir: &std::path::Path,
    name: &str,
    sans: &[&str],
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.signed_by(&key, issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_password_auth_and_no_way_around_them() {
    let pki_dir = tempfile::tempdir().unwrap();
    let d = pki_dir.path();
    let (ca, issuer) = pki(d, "etcd");
    let (other_ca, _) = pki(d, "other");
    let (server_cert, server_key) = leaf(d, "server", &["127.0.0.1", "localhost"], &issuer);
    let (client_cert, client_key) = leaf(d, "client", &[], &issuer);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let etcd = start_etcd_with(
        "https",
        &[
            "--cert-file".into(),
            path(&server_cert),
            "--key-file".into(),
            path(&server_key),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            path(&ca),
        ],
    );
    for args in [
        &["user", "add", "root:etcd-root-pw"][..],
        &["auth", "enable"][..],
    ] {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.endpoint, "--cacert", &path(&ca)])
            .args(["--cert", &path(&client_cert), "--key", &path(&client_key)])
            .args(args)
            .output()
            .expect("etcdctl is installed (scripts/test installs etcd-client)");
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    }
    let cfg = |ca: &std::path::Path, client: bool, password: &str| EtcdConfig {
        endpoints: vec![config::HttpUrl::parse(&etcd.endpoint).unwrap()],
        prefix: "/unit".into(),
        tls: Some(EtcdTlsConfig {
            ca_file: Some(ca.to_path_buf()),
            cert_file: client.then(|| client_cert.clone()),
            key_file: client.then(|| client_key.clone()),
        }),
        username: Some("root".into()),
        password: Some(config::Secret::new(password)),
    };
    let good = EtcdStore::connect(&cfg(&ca, true, "etcd-root-pw"), None)
        .await
        .unwrap();
    good.put_value("k", "v").await.unwrap();
    assert_eq!(good.get_value("k").await.unwrap().as_deref(), Some("v"));

    // Each missing or wrong piece is an error, never a weaker connection.
    for (what, bad) in [
        ("an unknown server CA", cfg(&other_ca, true, "etcd-root-pw")),
        ("no client certificate", cfg(&ca, false, "etcd-root-pw")),
        ("a wrong password", cfg(&ca, true, "wrong")),
    ] {
        let result = match EtcdStore::connect(&bad, None).await {
            Err(e) => Err(e),
            Ok(store) => store.get_value("k").await.map(drop),
        };
        let e = result.expect_err(what);
        assert!(e.to_string().contains("etcd"), "{what}: {e}");
    }
    let mut plain = cfg(&ca, true, "etcd-root-pw");
    plain.endpoints =
        vec![config::HttpUrl::parse(&etcd.endpoint.replace("https", "http")).unwrap()];
    let e = EtcdStore::connect(&plain, None)
        .await
        .err()
        .expect("TLS config with http://");
    assert!(matches!(e, StoreError::Config(_)), "{e}");
}
