//! The gateway as an attested app (`[attestation]`), against real processes: a `teegate
//! kms`, two `teegate sidecar` processes (simulated TDX, `runtime = "none"`) whose guest
//! APIs stand for two gateway apps' CVMs, and a real etcd. An attested gateway starts only
//! when its own fresh quote verifies; every private key it stores is sealed under its
//! KMS-derived key (etcd holds no encoding of any of them); a restart opens them again;
//! a gateway of another app sharing the etcd cannot open them, says which record, leaves
//! it alone and does not start, while the first keeps serving. Without `[attestation]` the
//! gateway seals under a key file instead, and a plaintext record of an earlier version is
//! re-sealed on load.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gateway::guest::GuestApi;
use gateway::seal::{KeySource, Kind, SealKey};
use support::cvm::gateway_compose;
use support::etcd::*;
use support::*;

/// A gateway app with a named app id (teegate's compose format): the KMS, not the compose
/// hash, ties it to its composes.
fn named_gateway_compose(name: &str, app: &str) -> String {
    serde_json::json!({
        "name": name,
        "app_id": app,
        "docker_compose": "services:\n  gateway:\n    image: teegate-test/gateway:latest\n",
        "exposed_ports": [],
        "allowed_envs": [],
        "kms_url": "https://127.0.0.1:1",
        "gateway_urls": [],
        "key_provider": "kms",
    })
    .to_string()
}

fn hash(compose: &str) -> String {
    ratls::ComposeHash::of(compose.as_bytes()).to_hex()
}

/// The KMS policy: each app id with the compose hashes it may run.
fn kms_config(dir: &Path, port: u16, apps: &[(String, Vec<String>)]) -> PathBuf {
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nquote_provider = \"simulated\"\n[verifier]\nallow_simulated = true\n[policy.os]\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\n",
        dir.join("kms-data").display()
    );
    for (app, hashes) in apps {
        text +=
            &format!("[policy.apps.{app}]\ncompose_hashes = {hashes:?}\nallow_simulated = true\n");
    }
    let path = dir.join("kms.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A sidecar for the gateway app `name`; returns its process and guest-API socket.
fn start_gateway_cvm(dir: &Path, name: &str, compose: &str, kms_port: u16) -> (Proc, PathBuf) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("app-compose.json"), compose).unwrap();
    let text = format!(
        "compose_file = \"{d}/app-compose.json\"\nsocket_path = \"{d}/teegate.sock\"\ndstack_socket_path = \"{d}/dstack.sock\"\nlisten_front = \"127.0.0.1:0\"\nkms_url = \"https://127.0.0.1:{kms_port}\"\nkms_root_ca = \"{root}\"\nquote_provider = \"simulated\"\ndata_dir = \"{d}/data\"\nruntime = \"none\"\n[verifier]\nallow_simulated = true\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\ncompose_hashes = \"any\"\napp_ids = \"any\"\n",
        d = d.display(),
        root = dir.join("kms-data/root-ca.pem").display(),
    );
    let cfg = d.join("sidecar.toml");
    std::fs::write(&cfg, text).unwrap();
    let proc = spawn_teegate(
        &["sidecar", "--config", cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    (proc, d.join("teegate.sock"))
}

const TOKEN: &str = "test-admin-token-0123456789";

const ANY_OS: &str =
    "allow_simulated = true\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\n";

/// A gateway config in `dir` whose `[attestation]` names `socket`, plus `extra` tables.
fn attested(dir: &Path, ports: &GatewayPorts, socket: &Path, extra: &str) -> PathBuf {
    gateway_config(
        dir,
        ports,
        &format!(
            "[attestation]\nguest_api = \"{}\"\n{extra}",
            socket.display()
        ),
    )
}

fn refused(cfg: &Path) -> String {
    expect_exit_failure(
        Command::new(env!("CARGO_BIN_EXE_teegate")).args([
            "gateway",
            "--config",
            cfg.to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    )
}

/// The served certificate for a name under the base domain, trusting `ca_pem`.
async fn served(https: std::net::SocketAddr, ca_pem: &str) -> Vec<u8> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(dev_roots(ca_pem))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(format!("x.{BASE}")).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS to {https}: {e}"));
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The sealing key a gateway app derives, derived here through the same guest API.
async fn app_seal_key(socket: &Path) -> SealKey {
    let (api, info) = GuestApi::connect(socket).await.unwrap();
    let key = api
        .derive_key(config::DEFAULT_SEAL_KEY_PATH, gateway::seal::PURPOSE)
        .await
        .unwrap();
    SealKey::new(
        key.into_zeroizing(),
        KeySource::Attested {
            app_id: info.app_id.to_hex(),
            key_path: config::DEFAULT_SEAL_KEY_PATH.into(),
        },
    )
}

/// The wildcard record as etcd holds it (JSON), under `prefix`.
fn etcd_cert(etcd: &Etcd, prefix: &str) -> serde_json::Value {
    let out = etcd.etcdctl(&[
        "get",
        &format!("{prefix}/certs/*.{BASE}"),
        "--print-value-only",
    ]);
    serde_json::from_str(out.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_gateway_starts_verified_and_seals_its_keys_in_etcd() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (compose_a, compose_b) = (
        gateway_compose("teegate-gateway-a"),
        gateway_compose("teegate-gateway-b"),
    );
    let named = "9a".repeat(20);
    let compose_v1 = named_gateway_compose("teegate-gateway-named-v1", &named);
    let content_addressed = |c: &str| {
        (
            ratls::ComposeHash::of(c.as_bytes())
                .default_app_id()
                .to_hex(),
            vec![hash(c)],
        )
    };
    let kms_port = free_port();
    let kms_cfg = kms_config(
        dir.path(),
        kms_port,
        &[
            content_addressed(&compose_a),
            content_addressed(&compose_b),
            (named.clone(), vec![hash(&compose_v1)]),
        ],
    );
    let _kms = spawn_teegate(
        &["kms", "--config", kms_cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    let (_cvm_a, sock_a) = start_gateway_cvm(dir.path(), "cvm-a", &compose_a, kms_port);
    let (_cvm_b, sock_b) = start_gateway_cvm(dir.path(), "cvm-b", &compose_b, kms_port);
    let etcd = start_etcd(dir.path(), 1);
    let prefix = "/seal-test";
    let store = format!(
        "[store.etcd]\nendpoints = {}\nprefix = \"{prefix}\"\n",
        etcd.endpoints_toml()
    );

    // No guest API at the configured path: refused, naming the key and the cause.
    let missing = dir.path().join("no-such.sock");
    let cfg = attested(
        &dir.path().join("gw-missing"),
        &GatewayPorts::new(),
        &missing,
        "",
    );
    let err = refused(&cfg);
    assert!(err.contains("attestation.guest_api"), "{err}");
    assert!(
        err.contains("unreachable") && err.contains("no-such.sock"),
        "{err}"
    );

    // The gateway's own policy pins another compose hash: its quote does not verify.
    let pin = format!(
        "[verifier]\n{ANY_OS}compose_hashes = [\"{}\"]\napp_ids = \"any\"\n",
        "ab".repeat(32)
    );
    let cfg = attested(
        &dir.path().join("gw-pinned"),
        &GatewayPorts::new(),
        &sock_a,
        &pin,
    );
    let err = refused(&cfg);
    assert!(err.contains("attestation.guest_api"), "{err}");
    assert!(err.contains("at step policy"), "{err}");
    // And simulated quotes are not silently allowed for the gateway itself.
    let strict = "[verifier]\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\ncompose_hashes = \"any\"\napp_ids = \"any\"\n";
    let cfg = attested(
        &dir.path().join("gw-strict"),
        &GatewayPorts::new(),
        &sock_a,
        strict,
    );
    let err = refused(&cfg);
    assert!(err.contains("at step quote-signature"), "{err}");

    // Gateway app A starts attested, with its keys in etcd.
    let a_dir = dir.path().join("gw-a");
    let ports = GatewayPorts::new();
    let cfg = attested(&a_dir, &ports, &sock_a, &store);
    let mut gw_a = spawn_teegate(
        &["gateway", "--config", cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    assert!(
        gw_a.log().contains("this gateway is attested"),
        "{}",
        gw_a.log()
    );
    let https = std::net::SocketAddr::from(([127, 0, 0, 1], ports.https));
    wait_for_port(ports.https, Duration::from_secs(10));
    let ca_pem = std::fs::read_to_string(a_dir.join("dev-ca.pem")).unwrap();
    let first = served(https, &ca_pem).await;
    let (s, sealing) = http_get(ports.admin, "/v1/sealing", Some(TOKEN), "GET").await;
    assert_eq!(s, 200, "{sealing}");
    let sealing: serde_json::Value = serde_json::from_str(&sealing).unwrap();
    assert_eq!(sealing["key_source"]["mode"], "attested", "{sealing}");

    // The record opens under the key app A derives (and only so), and is the served key;
    // no encoding of it, or of the development CA's key, is in etcd or the data dir.
    let key_a = app_seal_key(&sock_a).await;
    let att = GuestApi::new(&sock_a).attestation().await.unwrap();
    assert!(att.certificate_pem.contains("BEGIN CERTIFICATE") && !att.event_log.is_empty());
    assert_eq!(sealing["key_id"], key_a.id().to_string());
    let record = etcd_cert(&etcd, prefix);
    let wildcard = format!("*.{BASE}");
    assert_eq!(record["name"], wildcard.as_str(), "{record}");
    let sealed_text = record["key_pem"].as_str().unwrap().to_string();
    let key_pem = key_a
        .open_text(Kind::CertKey, &wildcard, &sealed_text)
        .expect("sealed under app A's KMS key");
    assert_eq!(
        key_spki(&key_pem),
        cert_spki(&first),
        "the sealed key is the served one"
    );
    let key_b = app_seal_key(&sock_b).await;
    assert!(key_b.open(Kind::CertKey, &wildcard, &sealed_text).is_err());
    let dev_ca_key = key_a
        .open_text(
            Kind::File,
            "dev-ca.key",
            &std::fs::read_to_string(a_dir.join("dev-ca.key")).unwrap(),
        )
        .expect("the development CA key is sealed too");
    let everything = etcd.etcdctl(&["get", "--prefix", ""]);
    let files = all_file_bytes(&a_dir);
    for (what, key) in [
        ("served certificate", &key_pem),
        ("development CA", &dev_ca_key),
    ] {
        assert_no_key_in(everything.as_bytes(), key, &format!("etcd ({what} key)"));
        assert_no_key_in(&files, key, &format!("the data dir ({what} key)"));
    }

    // A restart opens the sealed keys again: the same certificate is served.
    assert!(gw_a.stop(Duration::from_secs(10)).is_some());
    let mut gw_a = spawn_teegate(
        &["gateway", "--config", cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    wait_for_port(ports.https, Duration::from_secs(10));
    assert_eq!(
        served(https, &ca_pem).await,
        first,
        "restart serves the sealed certificate"
    );
    assert_eq!(etcd_cert(&etcd, prefix), record, "and did not rewrite it");

    // Gateway app B on the same etcd derives another key: it names the record it cannot
    // open, does not start, and leaves the record; A still serves it.
    let cfg_b = attested(
        &dir.path().join("gw-b"),
        &GatewayPorts::new(),
        &sock_b,
        &store,
    );
    let err = refused(&cfg_b);
    assert!(err.contains(&format!("cert/{wildcard}")), "{err}");
    assert!(err.contains("sealed under another key"), "{err}");
    assert!(
        err.contains(&key_a.id().to_string()),
        "names the key that sealed it: {err}"
    );
    assert_eq!(
        etcd_cert(&etcd, prefix),
        record,
        "B did not overwrite A's record"
    );
    assert_eq!(
        served(https, &ca_pem).await,
        first,
        "A still serves its certificate"
    );

    // A record another gateway app sealed, arriving while A runs: A names it (log, metric,
    // admin API), neither serves nor overwrites it, and keeps serving its own.
    let foreign = serde_json::json!({
        "name": "b-only.example",
        "cert_chain_pem": record["cert_chain_pem"],
        "key_pem": key_b.seal(Kind::CertKey, "b-only.example", key_pem.as_bytes()),
        "not_after": record["not_after"],
    });
    etcd.etcdctl(&[
        "put",
        &format!("{prefix}/certs/b-only.example"),
        &foreign.to_string(),
    ]);
    wait_for_line(
        &gw_a,
        "cannot be opened by this gateway",
        Duration::from_secs(10),
    );
    let (_, m) = http_get(ports.admin, "/metrics", None, "GET").await;
    assert_eq!(metric(&m, "teegate_sealed_records_unreadable"), 1.0, "{m}");
    let (_, sealing) = http_get(ports.admin, "/v1/sealing", Some(TOKEN), "GET").await;
    assert!(
        sealing.contains("cert/b-only.example") && sealing.contains(&key_b.id().to_string()),
        "{sealing}"
    );
    assert_eq!(served(https, &ca_pem).await, first);
    assert!(gw_a.stop(Duration::from_secs(10)).is_some());

    // A named gateway app: authorised only through the KMS's app CA. Unpinned, the
    // start-up check refuses it at app-authorisation; pinned, the check passes but its
    // evidence would carry no app CA chain, so no client could believe its app id: it is
    // refused too, before any listener opens, naming the step.
    let (_cvm_v1, sock_v1) = start_gateway_cvm(dir.path(), "cvm-v1", &compose_v1, kms_port);
    let cfg = attested(
        &dir.path().join("gw-unpinned"),
        &GatewayPorts::new(),
        &sock_v1,
        "",
    );
    let err = refused(&cfg);
    assert!(err.contains("at step app-authorisation"), "{err}");
    let pinned = format!(
        "[verifier]\n{ANY_OS}compose_hashes = \"any\"\napp_ids = \"any\"\nkms_roots = [\"{}\"]\n",
        dir.path().join("kms-data/root-ca.pem").display()
    );
    let cfg = attested(
        &dir.path().join("gw-named"),
        &GatewayPorts::new(),
        &sock_v1,
        &pinned,
    );
    let err = refused(&cfg);
    assert!(
        err.contains("attestation.guest_api")
            && err.contains("app-authorisation")
            && err.contains("content-addressed"),
        "{err}"
    );

    // Gateway app A again, on the embedded store.
    let n_dir = dir.path().join("gw-embedded");
    let ports = GatewayPorts::new();
    let https = std::net::SocketAddr::from(([127, 0, 0, 1], ports.https));
    let cfg = attested(&n_dir, &ports, &sock_a, "");
    let mut gw = spawn_teegate(
        &["gateway", "--config", cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    assert!(
        gw.log().contains("this gateway is attested"),
        "{}",
        gw.log()
    );
    wait_for_port(ports.https, Duration::from_secs(10));
    let ca = std::fs::read_to_string(n_dir.join("dev-ca.pem")).unwrap();
    let served_cert = served(https, &ca).await;
    assert!(gw.stop(Duration::from_secs(10)).is_some());
    // In the embedded store too, the key is there only sealed.
    let key = app_seal_key(&sock_a).await;
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(n_dir.join("state.json")).unwrap()).unwrap();
    let wildcard = format!("*.{BASE}");
    let key_pem = key
        .open_text(
            Kind::CertKey,
            &wildcard,
            state["certs"][&wildcard]["key_pem"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(key_spki(&key_pem), cert_spki(&served_cert));
    assert_no_key_in(
        &all_file_bytes(&n_dir),
        &key_pem,
        "the data dir (state.json)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unattested_gateway_seals_under_its_key_file_and_reseals_old_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    // A store as an earlier version left it: the wildcard's key in plaintext.
    let (legacy, ca_pem) = {
        use gateway::store::Store;
        let ca = dev_ca_in(dir.path());
        let record = ca.issue_wildcard(BASE).unwrap();
        let backend = gateway::store::EmbeddedStore::open(dir.path()).unwrap();
        backend.put_cert(&record).await.unwrap();
        (record, ca.cert_pem.clone())
    };
    let before = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(
        before.contains("PRIVATE KEY"),
        "the legacy record is plaintext"
    );

    let mut gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let first = served(gw.https_addr(), &ca_pem).await;
    assert_eq!(
        cert_spki(&first),
        key_spki(&legacy.key_pem),
        "the old record is still served"
    );
    assert!(
        gw.proc.log().contains("sealing it now"),
        "{}",
        gw.proc.log()
    );
    let (_, sealing) = http_get(gw.ports.admin, "/v1/sealing", Some(TOKEN), "GET").await;
    assert!(sealing.contains("unattested-key-file"), "{sealing}");
    let dev_ca_key = seal_key_in(dir.path())
        .open_text(
            Kind::File,
            "dev-ca.key",
            &std::fs::read_to_string(dir.path().join("dev-ca.key")).unwrap(),
        )
        .unwrap();
    let state = std::fs::read(dir.path().join("state.json")).unwrap();
    assert_no_key_in(
        &state,
        &legacy.key_pem,
        "state.json (served certificate key)",
    );
    assert_no_key_in(&state, &dev_ca_key, "state.json (development CA key)");
    let files = all_file_bytes(dir.path());
    assert_no_key_in(&files, &legacy.key_pem, "the data dir");
    assert_no_key_in(&files, &dev_ca_key, "the data dir");

    // Restart: the re-sealed record opens and is served.
    let ports = GatewayPorts {
        https: gw.ports.https,
        http: gw.ports.http,
        registration: gw.ports.registration,
        admin: gw.ports.admin,
    };
    assert!(gw.proc.stop(Duration::from_secs(10)).is_some());
    let gw = start_gateway_in(dir.path(), ports, "");
    assert_eq!(served(gw.https_addr(), &ca_pem).await, first);

    // A key file others can read is refused, naming the key.
    drop(gw);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("seal.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = refused(&dir.path().join("gateway.toml"));
    assert!(
        err.contains("seal_key_file") && err.contains("chmod 600"),
        "{err}"
    );
}
