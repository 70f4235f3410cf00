//! A full boot of the guest sidecar: a real KMS process releases the app's keys to the
//! simulated CVM, the encrypted environment is decrypted, a two-service compose comes up
//! on the real Docker daemon, the RA-TLS front serves the web service through a real
//! gateway, and the guest API reports what was measured. Then: a second boot adopts the
//! running containers, and a compose the KMS does not allow stops the boot before any
//! container starts.

extern crate guest_sidecar as teegate_guest_sidecar;

#[path = "../guest-sidecar/tests/support/mod.rs"]
mod docker_support;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_sidecar::boot;
use guest_sidecar::register::GatewayTarget;
use support::*;

fn compose_json(name: &str, image: &str) -> String {
    let yaml = r#"
services:
  web:
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /www && echo \"greeting=$GREETING\" > /www/index.html && exec httpd -f -p 80 -h /www"]
    environment:
      GREETING: ${GREETING}
    ports: ["80"]
    restart: always
  worker:
    image: IMAGE
    command: ["sleep", "3600"]
    depends_on: [web]
"#;
    let yaml = yaml.replace("IMAGE", image);
    serde_json::json!({
        "name": name,
        "docker_compose": yaml,
        "exposed_ports": [80],
        "allowed_envs": ["GREETING"],
        "kms_url": "https://127.0.0.1:1",
        "gateway_urls": [],
        "key_provider": "kms",
    })
    .to_string()
}

fn kms_config(dir: &Path, port: u16, allowed_hash: &str, app: &str) -> PathBuf {
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nquote_provider = \"simulated\"\n[verifier]\nallow_simulated = true\n[policy.os]\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\n[policy.apps.{app}]\ncompose_hashes = [\"{allowed_hash}\"]\nallow_simulated = true\n",
        dir.join("kms-data").display()
    );
    let path = dir.join("kms.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn sidecar_config(
    dir: &Path,
    compose: &Path,
    kms_port: u16,
    env: Option<&Path>,
    gateway_ca: Option<&Path>,
) -> config::SidecarConfig {
    let ca_line = gateway_ca
        .map(|p| format!("gateway_ca = \"{}\"\n", p.display()))
        .unwrap_or_default();
    let env_line = env
        .map(|p| format!("encrypted_env_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    let text = format!(
        "compose_file = \"{}\"\nsocket_path = \"{}\"\ndstack_socket_path = \"{}\"\nlisten_front = \"127.0.0.1:0\"\nkms_url = \"https://127.0.0.1:{kms_port}\"\nkms_root_ca = \"{}\"\nquote_provider = \"simulated\"\ndata_dir = \"{}\"\n{env_line}{ca_line}[verifier]\nallow_simulated = true\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\ncompose_hashes = \"any\"\napp_ids = \"any\"\n",
        compose.display(),
        dir.join("run/teegate.sock").display(),
        dir.join("run/dstack.sock").display(),
        dir.join("kms-data/root-ca.pem").display(),
        dir.join("sidecar-data").display(),
    );
    config::from_toml_str(&text).unwrap()
}

async fn guest_get(socket: &Path, path: &str) -> serde_json::Value {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "teegate")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let body = sender
        .send_request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_boot_serves_the_app_through_the_gateway_and_adopts_on_restart() {
    let docker = docker_support::docker().await;
    let busybox = docker_support::busybox_id(&docker).await;
    let image = format!("teegate-test/busybox@{busybox}");
    let dir = tempfile::tempdir().unwrap();
    let unique = format!("boot-{}", std::process::id());
    let compose = compose_json(&unique, &image);
    let compose_path = dir.path().join("app-compose.json");
    std::fs::write(&compose_path, &compose).unwrap();
    let hash = ratls::ComposeHash::of(compose.as_bytes());
    let app = hash.default_app_id();
    let _guard = docker_support::AppGuard(teegate_guest_sidecar::compose::AppId(app.0));

    let kms_port = free_port();
    let kms_cfg = kms_config(dir.path(), kms_port, &hash.to_hex(), &app.to_hex());
    let _kms = spawn_teegate(
        &["kms", "--config", kms_cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );

    // The operator encrypts the environment to the app, pinning the KMS root.
    let enc = std::process::Command::new(env!("CARGO_BIN_EXE_teegate"))
        .args([
            "env",
            "encrypt",
            "--kms",
            &format!("https://127.0.0.1:{kms_port}"),
            "--app-id",
            &app.to_hex(),
            "--kms-root",
        ])
        .arg(dir.path().join("kms-data/root-ca.pem"))
        .arg("--allow-simulated-kms")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut enc = enc;
    enc.stdin
        .take()
        .unwrap()
        .write_all(b"GREETING=hello-from-the-enclave\n")
        .unwrap();
    let out = enc.wait_with_output().unwrap();
    assert!(out.status.success(), "env encrypt failed");
    let env_path = dir.path().join("env.enc");
    std::fs::write(&env_path, &out.stdout).unwrap();

    // Through a real gateway to the web container, by SNI at the front.
    let gw_dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(gw_dir.path(), GatewayPorts::new(), "");
    let gw_ca = gw_dir.path().join("dev-ca.pem");
    let cfg = sidecar_config(
        dir.path(),
        &compose_path,
        kms_port,
        Some(&env_path),
        Some(&gw_ca),
    );
    let running = boot::boot(&cfg).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(running.identity.app_id, app);

    let target = GatewayTarget {
        addr: format!("127.0.0.1:{}", gw.ports.registration),
        server_name: format!("gateway.{BASE}"),
    };
    // The gateway's registration listener has a development CA (`gateway_ca`) and is
    // reached by address, with its certificate's name.
    running.add_gateway(target).await;
    let host = format!("{app}.{BASE}");
    let c = client(&gw, std::slice::from_ref(&host), false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let r = c.get(format!("https://{host}/")).send().await.unwrap();
        if r.status() == 200 {
            break r.text().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sidecar never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        body.trim(),
        "greeting=hello-from-the-enclave",
        "the decrypted env reached the container"
    );

    // The guest API reports what was measured, and the log replays to the quoted RTMR3.
    let info = guest_get(&running.socket_path, "/info").await;
    assert_eq!(info["app_id"], app.to_hex());
    assert_eq!(info["compose_hash"], hash.to_hex());
    let att = guest_get(&running.socket_path, "/attestation").await;
    let quote = ratls::Quote::parse(&hex::decode(att["quote"].as_str().unwrap()).unwrap()).unwrap();
    let log: ratls::eventlog::EventLog = serde_json::from_value(att["event_log"].clone()).unwrap();
    assert_eq!(log.replay(), quote.rtmr3());
    let events: Vec<&str> = log.events().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        events,
        [
            "compose-hash",
            "app-id",
            "instance-id",
            "key-provider",
            "image",
            "image",
            "storage"
        ]
    );
    // Each service's image, by content id, in start order, before anything started.
    let images: Vec<String> = log
        .payloads("image")
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    assert_eq!(
        images,
        [format!("web@{busybox}"), format!("worker@{busybox}")]
    );

    // Rotation: the new certificate is registered first, then served; traffic keeps flowing.
    let before = front_fingerprint(running.front_addr, &app).await;
    running.rotate_certificate().await.unwrap();
    let after = front_fingerprint(running.front_addr, &app).await;
    assert_ne!(before, after, "the front serves the new certificate");
    let (_, apps) = http_get(
        gw.ports.admin,
        &format!("/v1/apps/{app}"),
        Some("test-admin-token-0123456789"),
        "GET",
    )
    .await;
    assert!(
        apps.contains(&after),
        "the gateway knew the new certificate before it was served: {apps}"
    );
    for _ in 0..5 {
        let r = c.get(format!("https://{host}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }

    // A second boot (sidecar restart) adopts the containers instead of duplicating them.
    let count = || async {
        let mut filters = std::collections::HashMap::new();
        filters.insert("label".to_string(), vec![format!("teegate.app-id={app}")]);
        let opts = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        docker.list_containers(Some(opts)).await.unwrap().len()
    };
    assert_eq!(count().await, 2);
    running.shutdown();
    let again = boot::boot(&cfg).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count().await, 2, "no duplicate containers after a restart");
    assert_eq!(
        again.identity.instance_id, running.identity.instance_id,
        "the instance keeps its id"
    );
    again.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_not_allowed_by_the_kms_stops_the_boot_before_containers() {
    let docker = docker_support::docker().await;
    let busybox = docker_support::busybox_id(&docker).await;
    let dir = tempfile::tempdir().unwrap();
    let compose = compose_json(
        &format!("refused-{}", std::process::id()),
        &format!("teegate-test/busybox@{busybox}"),
    );
    let compose_path = dir.path().join("app-compose.json");
    std::fs::write(&compose_path, &compose).unwrap();
    let app = ratls::ComposeHash::of(compose.as_bytes()).default_app_id();
    let _guard = docker_support::AppGuard(teegate_guest_sidecar::compose::AppId(app.0));
    let kms_port = free_port();
    // The KMS allows this app id only with another compose hash.
    let kms_cfg = kms_config(dir.path(), kms_port, &"ab".repeat(32), &app.to_hex());
    let _kms = spawn_teegate(
        &["kms", "--config", kms_cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    let cfg = sidecar_config(dir.path(), &compose_path, kms_port, None, None);
    let err = match boot::boot(&cfg).await {
        Ok(_) => panic!("boot must fail"),
        Err(e) => e,
    };
    assert_eq!(err.step, "kms", "{err}");
    assert!(err.to_string().contains("compose hash"), "{err}");
    let mut filters = std::collections::HashMap::new();
    filters.insert("label".to_string(), vec![format!("teegate.app-id={app}")]);
    let opts = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    assert!(
        docker.list_containers(Some(opts)).await.unwrap().is_empty(),
        "no container may start"
    );
}

#[tokio::test]
async fn malformed_app_compose_stops_the_boot_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let compose_path = dir.path().join("app-compose.json");
    std::fs::write(&compose_path, r#"{"name":"x","docker_compose":"services: {}","exposed_ports":[70000],"key_provider":"kms"}"#).unwrap();
    let cfg = sidecar_config(dir.path(), &compose_path, 1, None, None);
    let err = match boot::boot(&cfg).await {
        Ok(_) => panic!("boot must fail"),
        Err(e) => e,
    };
    assert_eq!(err.step, "compose");
    assert!(err.to_string().contains("exposed_ports"), "{err}");
}

/// The SHA-256 fingerprint (hex) of the certificate the front presents for the app.
async fn front_fingerprint(front: std::net::SocketAddr, app: &ratls::AppId) -> String {
    let (cfg, _) = ratls_client_config(Some(*app));
    let tcp = tokio::net::TcpStream::connect(front).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(format!("{app}.{BASE}")).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    ratls::Fingerprint::of(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref()).to_hex()
}

#[tokio::test]
async fn a_named_app_id_without_a_kms_stops_the_boot() {
    let dir = tempfile::tempdir().unwrap();
    let compose_path = dir.path().join("app-compose.json");
    let mut compose: serde_json::Value =
        serde_json::from_str(&compose_json("named-without-kms", "x@sha256:00")).unwrap();
    compose["app_id"] = "42".repeat(20).into();
    compose["key_provider"] = "none".into();
    compose.as_object_mut().unwrap().remove("kms_url");
    std::fs::write(&compose_path, compose.to_string()).unwrap();
    let cfg = sidecar_config(dir.path(), &compose_path, 1, None, None);
    let err = match boot::boot(&cfg).await {
        Ok(_) => panic!("boot must fail"),
        Err(e) => e,
    };
    assert_eq!(err.step, "compose");
    assert!(
        err.to_string()
            .contains("only a KMS can authorise a named app id"),
        "{err}"
    );
    // Nothing was measured: no event log was written for this TD.
    assert!(!dir
        .path()
        .join("sidecar-data")
        .join("event-log.json")
        .exists());
}

/// The bytes of every file under `dir` and every path name, for looking for plaintext.
fn everything_under(dir: &Path) -> (Vec<u8>, String) {
    let (mut bytes, mut names) = (Vec::new(), String::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            names.push_str(&p.display().to_string());
            names.push('\n');
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                bytes.extend_from_slice(&b);
            }
        }
    }
    (bytes, names)
}

fn docker_exec_cat(container: &str, path: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["exec", container, "cat", path])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_volumes_are_encrypted_survive_a_restart_and_open_on_another_host() {
    let docker = docker_support::docker().await;
    let busybox = docker_support::busybox_id(&docker).await;
    let dir = tempfile::tempdir().unwrap();
    let token = format!("{}x{}", std::process::id(), ratls::verifier::unix_now());
    let script = format!(
        "test -f /data/marker-file-{token} || echo marker-content-{token} > /data/marker-file-{token}; exec httpd -f -p 80 -h /data"
    );
    let yaml = format!(
        "services:\n  web:\n    image: teegate-test/busybox@{busybox}\n    command: {}\n    ports: [\"80\"]\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {{}}\n",
        serde_json::json!(["sh", "-c", script])
    );
    let compose = serde_json::json!({
        "name": format!("volumes-{token}"),
        "docker_compose": yaml,
        "exposed_ports": [80],
        "kms_url": "https://127.0.0.1:1",
        "gateway_urls": [],
        "key_provider": "kms",
    })
    .to_string();
    let compose_path = dir.path().join("app-compose.json");
    std::fs::write(&compose_path, &compose).unwrap();
    let hash = ratls::ComposeHash::of(compose.as_bytes());
    let app = hash.default_app_id();
    let _guard = docker_support::AppGuard(teegate_guest_sidecar::compose::AppId(app.0));
    let kms_port = free_port();
    let kms_cfg = kms_config(dir.path(), kms_port, &hash.to_hex(), &app.to_hex());
    let _kms = spawn_teegate(
        &["kms", "--config", kms_cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    let cfg = sidecar_config(dir.path(), &compose_path, kms_port, None, None);
    let data_dir = dir.path().join("sidecar-data");
    struct Unmount(Vec<PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for d in &self.0 {
                teegate_guest_sidecar::storage::unmount_all(d);
            }
        }
    }
    let second_dir = tempfile::tempdir().unwrap();
    let second_data = second_dir.path().join("sidecar-data");
    let _unmount = Unmount(vec![data_dir.clone(), second_data.clone()]);

    let running = boot::boot(&cfg).await.unwrap_or_else(|e| panic!("{e}"));
    let container = teegate_guest_sidecar::containers::container_name(
        &teegate_guest_sidecar::compose::AppId(app.0),
        "web",
    );
    let path = format!("/data/marker-file-{token}");
    let marker = format!("marker-content-{token}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while docker_exec_cat(&container, &path) != marker {
        assert!(
            std::time::Instant::now() < deadline,
            "the app never wrote its file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // RTMR3 records the storage kind.
    let log = running.event_log();
    let storage: Vec<String> = log
        .payloads("storage")
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(storage, [teegate_guest_sidecar::storage::KIND_GOCRYPTFS]);

    // The host sees ciphertext only: no marker in any file, none in a file name.
    let cipher = data_dir.join("volumes").join("data.enc");
    let (bytes, names) = everything_under(&cipher);
    assert!(!bytes.is_empty());
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "plaintext on the host"
    );
    assert!(
        !names.contains("marker"),
        "a plaintext file name on the host: {names}"
    );

    // A sidecar restart: the container is adopted and still reads its data.
    running.shutdown();
    let again = boot::boot(&cfg).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docker_exec_cat(&container, &path), marker);
    again.shutdown();

    // Another host: the ciphertext copied to a new data dir (a new instance), the same
    // app through the KMS, reads back byte for byte.
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    teegate_guest_sidecar::storage::unmount_all(&data_dir);
    std::fs::create_dir_all(second_data.join("volumes")).unwrap();
    let copied = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&cipher)
        .arg(second_data.join("volumes"))
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::create_dir_all(second_dir.path().join("kms-data")).unwrap();
    std::fs::copy(
        dir.path().join("kms-data/root-ca.pem"),
        second_dir.path().join("kms-data/root-ca.pem"),
    )
    .unwrap();
    let moved_cfg = sidecar_config(second_dir.path(), &compose_path, kms_port, None, None);
    let moved = boot::boot(&moved_cfg)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(moved.identity.instance_id, running.identity.instance_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while docker_exec_cat(&container, &path) != marker {
        assert!(
            std::time::Instant::now() < deadline,
            "the moved data did not read back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    moved.shutdown();
}

#[tokio::test]
async fn an_unpinned_image_stops_the_boot_at_compose_naming_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let compose_path = dir.path().join("app-compose.json");
    // The KMS is never reached: the refusal comes first.
    let mut compose: serde_json::Value =
        serde_json::from_str(&compose_json("unpinned", "teegate-test/busybox:latest")).unwrap();
    compose["key_provider"] = "none".into();
    compose.as_object_mut().unwrap().remove("kms_url");
    compose["allowed_envs"] = serde_json::json!([]);
    let yaml = compose["docker_compose"]
        .as_str()
        .unwrap()
        .replace("      GREETING: ${GREETING}\n", "      GREETING: x\n");
    compose["docker_compose"] = yaml.into();
    std::fs::write(&compose_path, compose.to_string()).unwrap();
    let cfg = sidecar_config(dir.path(), &compose_path, 1, None, None);
    let err = match boot::boot(&cfg).await {
        Ok(_) => panic!("boot must fail"),
        Err(e) => e,
    };
    assert_eq!(err.step, "compose", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("service web") && msg.contains("not pinned by content"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kms_volumes_are_not_encrypted_and_it_says_so() {
    let docker = docker_support::docker().await;
    let busybox = docker_support::busybox_id(&docker).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "services:\n  web:\n    image: teegate-test/busybox@{busybox}\n    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/data\"]\n    ports: [\"80\"]\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {{}}\n"
    );
    let compose = serde_json::json!({
        "name": format!("no-kms-volumes-{}", std::process::id()),
        "docker_compose": yaml,
        "exposed_ports": [80],
        "gateway_urls": [],
        "key_provider": "none",
    })
    .to_string();
    let compose_path = dir.path().join("app-compose.json");
    std::fs::write(&compose_path, &compose).unwrap();
    let app = ratls::ComposeHash::of(compose.as_bytes()).default_app_id();
    let _guard = docker_support::AppGuard(teegate_guest_sidecar::compose::AppId(app.0));
    let cfg = sidecar_config(dir.path(), &compose_path, 1, None, None);
    let running = boot::boot(&cfg).await.unwrap_or_else(|e| panic!("{e}"));
    let storage: Vec<String> = running
        .event_log()
        .payloads("storage")
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(storage, [teegate_guest_sidecar::storage::KIND_NONE]);
    // The volume is a plain Docker volume: no encrypted directory was made.
    assert!(!dir.path().join("sidecar-data/volumes/data.enc").exists());
    let container = teegate_guest_sidecar::containers::container_name(
        &teegate_guest_sidecar::compose::AppId(app.0),
        "web",
    );
    let c = docker.inspect_container(&container, None).await.unwrap();
    let mounts = c.mounts.unwrap_or_default();
    assert!(
        mounts.iter().any(
            |m| m.destination.as_deref() == Some("/data") && m.typ.as_deref() == Some("volume")
        ),
        "{mounts:?}"
    );
    running.shutdown();
}
