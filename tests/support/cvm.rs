//! The CVM an attested gateway runs in, as real processes: a `teegate kms` that releases
//! keys to the gateway app's compose, and a `teegate sidecar` (simulated TDX, no
//! containers) whose guest API the gateway uses through `[attestation] guest_api`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{free_port, spawn_teegate, Proc};

/// A gateway app's compose (dstack format; a gateway does not register with a gateway).
pub fn gateway_compose(name: &str) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "manifest_version": 2,
        "name": name,
        "runner": "docker-compose",
        "docker_compose_file": "services:\n  gateway:\n    image: teegate-test/gateway:latest\n",
        "kms_enabled": true,
        "gateway_enabled": false,
        "public_logs": true,
        "public_sysinfo": true,
        "local_key_provider_enabled": false,
        "allowed_envs": [],
        "no_instance_id": false,
        "secure_time": false,
    }))
    .expect("compose JSON")
}

/// A running KMS and the gateway CVM's sidecar.
pub struct GatewayCvm {
    pub kms: Proc,
    pub sidecar: Proc,
    /// The guest API socket: `[attestation] guest_api`.
    pub socket: PathBuf,
    pub compose_hash: ratls::ComposeHash,
    pub app_id: ratls::AppId,
}

/// Starts a KMS allowing `compose` (simulated quotes) and a sidecar booting it, in `dir`.
pub fn start_gateway_cvm(dir: &Path, compose: &str) -> GatewayCvm {
    let kms_port = free_port();
    let hash = ratls::ComposeHash::of(compose.as_bytes());
    let kms_cfg = format!(
        "listen = \"127.0.0.1:{kms_port}\"\ndata_dir = \"{data}\"\nquote_provider = \"simulated\"\n[verifier]\nallow_simulated = true\n[policy.os]\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\n[policy.apps.{app}]\ncompose_hashes = [\"{hash}\"]\nallow_simulated = true\n",
        data = dir.join("kms-data").display(),
        app = hash.default_app_id(),
    );
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("kms.toml"), kms_cfg).expect("kms.toml");
    let kms = spawn_teegate(
        &[
            "kms",
            "--config",
            dir.join("kms.toml").to_str().expect("path"),
        ],
        "ready",
        Duration::from_secs(30),
    );
    let d = dir.join("gateway-cvm");
    std::fs::create_dir_all(&d).expect("cvm dir");
    std::fs::write(d.join("app-compose.json"), compose).expect("compose");
    let text = format!(
        "compose_file = \"{d}/app-compose.json\"\nsocket_path = \"{d}/teegate.sock\"\ndstack_socket_path = \"{d}/dstack.sock\"\nlisten_front = \"127.0.0.1:0\"\nkms_url = \"https://127.0.0.1:{kms_port}\"\nkms_root_ca = \"{root}\"\nquote_provider = \"simulated\"\ndata_dir = \"{d}/data\"\nruntime = \"none\"\n[verifier]\nallow_simulated = true\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\ncompose_hashes = \"any\"\napp_ids = \"any\"\n",
        d = d.display(),
        root = dir.join("kms-data/root-ca.pem").display(),
    );
    std::fs::write(d.join("sidecar.toml"), text).expect("sidecar.toml");
    let sidecar = spawn_teegate(
        &[
            "sidecar",
            "--config",
            d.join("sidecar.toml").to_str().expect("path"),
        ],
        "ready",
        Duration::from_secs(30),
    );
    GatewayCvm {
        kms,
        sidecar,
        socket: d.join("teegate.sock"),
        compose_hash: hash,
        app_id: hash.default_app_id(),
    }
}
