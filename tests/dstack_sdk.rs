//! Apps written for dstack run unchanged: dstack's official Python SDK (dstack-sdk 0.5.4,
//! in a venv that `scripts/dstack-sdk-venv` makes) drives a real `teegate sidecar` process
//! (simulated TDX, `runtime = "none"`) whose keys a real `teegate kms` process released,
//! booted from a dstack-format app-compose.json. `tests/dstack/sdk_check.py` checks every
//! call (see its header); this side checks the app id dstack would give the compose, that
//! the GetTlsKey certificate verifies as RA-TLS, and that a compose pinning another KMS
//! (`key_provider_id`) is refused before it gets keys.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use support::*;

/// The compose as dstack's tooling writes it; `pin` is a `key_provider_id`.
fn dstack_compose(pin: &str) -> String {
    let yaml = "services:\n  app:\n    image: teegate-test/busybox:latest\n    command: [\"sleep\", \"3600\"]\n    volumes: [\"/var/run/dstack.sock:/var/run/dstack.sock\"]\n";
    serde_json::to_string_pretty(&serde_json::json!({
        "manifest_version": 2,
        "name": "dstack-sdk-app",
        "runner": "docker-compose",
        "docker_compose_file": yaml,
        "kms_enabled": true,
        "gateway_enabled": false,
        "public_logs": true,
        "public_sysinfo": true,
        "local_key_provider_enabled": false,
        "key_provider_id": pin,
        "allowed_envs": [],
        "no_instance_id": false,
        "secure_time": false,
    }))
    .unwrap()
}

/// dstack's app id: the first 20 bytes of SHA-256 of the file (computed here, not by teegate).
fn dstack_app_id(compose: &str) -> (String, String) {
    let digest = sha2::Sha256::digest(compose.as_bytes());
    (hex::encode(&digest[..20]), hex::encode(digest))
}

/// The venv's python, made if missing. No venv is a failure, never a skip: these checks
/// are the only proof that dstack apps work.
fn sdk_python() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/dstack-sdk-venv"
    ))
    .arg(target.join("pyvenv"))
    .output()
    .expect("run scripts/dstack-sdk-venv");
    assert!(
        out.status.success(),
        "could not make the dstack SDK venv (needs Debian's python3-venv and PyPI; scripts/test installs the package):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn kms_config(dir: &Path, port: u16, apps: &[(String, String)]) -> PathBuf {
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nquote_provider = \"simulated\"\n[verifier]\nallow_simulated = true\n[policy.os]\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\n",
        dir.join("kms-data").display()
    );
    for (app, hash) in apps {
        text += &format!(
            "[policy.apps.{app}]\ncompose_hashes = [\"{hash}\"]\nallow_simulated = true\n"
        );
    }
    let path = dir.join("kms.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn sidecar_config(dir: &Path, name: &str, compose: &str, kms_port: u16) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("app-compose.json"), compose).unwrap();
    let text = format!(
        "compose_file = \"{d}/app-compose.json\"\nsocket_path = \"{d}/teegate.sock\"\ndstack_socket_path = \"{d}/dstack.sock\"\nlisten_front = \"127.0.0.1:0\"\nkms_url = \"https://127.0.0.1:{kms_port}\"\nkms_root_ca = \"{root}\"\nquote_provider = \"simulated\"\ndata_dir = \"{d}/data\"\nruntime = \"none\"\n[verifier]\nallow_simulated = true\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\ncompose_hashes = \"any\"\napp_ids = \"any\"\n",
        d = d.display(),
        root = dir.join("kms-data/root-ca.pem").display(),
    );
    let path = d.join("sidecar.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn kms_k256_root(dir: &Path, port: u16) -> String {
    let root = pem::parse(std::fs::read(dir.join("kms-data/root-ca.pem")).unwrap()).unwrap();
    let mut p = ratls::Policy::any_measurements();
    p.allow_simulated = true;
    let verifier = Arc::new(ratls::CachingVerifier::new(
        ratls::AttestationVerifier::new(Arc::new(ratls::collateral::SourceChain::new()), p),
        4,
    ));
    let pinned = kms::client::pinned_root(root.contents(), verifier).unwrap();
    let client = kms::client::KmsClient::new(
        &format!("https://127.0.0.1:{port}"),
        pinned,
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    client.info().await.unwrap().k256_root_public_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dstacks_python_sdk_works_against_a_booted_sidecar() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let python = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let compose = dstack_compose("");
    let (app_id, compose_hash) = dstack_app_id(&compose);
    // Pins a KMS whose root CA key is not this KMS's.
    let wrong_pin = dstack_compose(&"00".repeat(91));
    let (wrong_app, wrong_hash) = dstack_app_id(&wrong_pin);

    let kms_port = free_port();
    let kms_cfg = kms_config(
        dir.path(),
        kms_port,
        &[
            (app_id.clone(), compose_hash.clone()),
            (wrong_app, wrong_hash),
        ],
    );
    let _kms = spawn_teegate(
        &["kms", "--config", kms_cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    let k256_root = kms_k256_root(dir.path(), kms_port).await;
    assert_eq!(k256_root.len(), 66, "compressed secp256k1 key: {k256_root}");

    // The pinned-elsewhere app is refused before it is given keys; the KMS keeps serving.
    let cfg = sidecar_config(dir.path(), "pinned", &wrong_pin, kms_port);
    let out = Command::new(env!("CARGO_BIN_EXE_teegate"))
        .args(["sidecar", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is not the app's key_provider_id"), "{err}");

    let cfg = sidecar_config(dir.path(), "app", &compose, kms_port);
    let _sidecar = spawn_teegate(
        &["sidecar", "--config", cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    let socket = dir.path().join("app/dstack.sock");
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/dstack/sdk_check.py"
        ))
        .args([socket.to_str().unwrap(), &app_id, &compose_hash, &k256_root])
        .arg(dir.path().join("kms-data/root-ca.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the dstack SDK check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["ok"], true);

    // The GetTlsKey certificate is an RA-TLS certificate of this app, issued by its app CA.
    let chain: Vec<Vec<u8>> = result["tls_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| pem::parse(p.as_str().unwrap()).unwrap().into_contents())
        .collect();
    let mut policy = ratls::Policy::any_measurements();
    policy.allow_simulated = true;
    let verifier =
        ratls::AttestationVerifier::new(Arc::new(ratls::collateral::SourceChain::new()), policy);
    let v = verifier.verify(&chain[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.app_id().to_hex(), app_id);
    assert!(
        String::from_utf8_lossy(&chain[1]).contains(&app_id),
        "the app CA names the app"
    );
    // And the SDK's quote carries the report data it asked for.
    let quote =
        ratls::Quote::parse(&hex::decode(result["quote"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(
        quote.report_data().to_hex(),
        result["report_data"].as_str().unwrap()
    );
}
