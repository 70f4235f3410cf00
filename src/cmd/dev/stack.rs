//! The files of a development stack: where everything lives in the data directory, each
//! app's `app-compose.json` and every component's config (the ports are `ports.rs`'s).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::ports::Ports;

/// The base domain: browsers resolve `*.localhost` to loopback by themselves.
pub const BASE: &str = "teegate.localhost";
/// The name the sidecars expect on the gateway's registration certificate.
pub const REGISTRATION_NAME: &str = "gateway.teegate.localhost";
/// The demo image, built locally from busybox-static (no registry is needed).
pub const DEMO_IMAGE: &str = "teegate-dev/demo:1";
/// The container port every demo app exposes.
pub const APP_PORT: u16 = 80;

/// A TOML basic string holding `text` (quotes and backslashes escaped).
pub fn toml_str(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn path_str(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

/// One simulated CVM running one demo app.
#[derive(Debug, Clone)]
pub struct App {
    /// 1-based, as printed.
    pub index: usize,
    pub dir: PathBuf,
    pub compose_path: PathBuf,
    pub config_path: PathBuf,
    pub app_id: ratls::AppId,
    pub compose_hash: ratls::ComposeHash,
    /// Where the built-in demo service listens (no Docker).
    pub demo_addr: Option<SocketAddr>,
}

impl App {
    pub fn host(&self) -> String {
        format!("{}.{BASE}", self.app_id)
    }
}

/// The simulated CVM the gateway runs in: the gateway is a teegate app of its own, whose
/// sidecar measures its compose and derives the key that seals the gateway's private keys.
#[derive(Debug, Clone)]
pub struct GatewayCvm {
    pub dir: PathBuf,
    pub compose_path: PathBuf,
    pub config_path: PathBuf,
    /// The guest API the gateway uses (`[attestation] guest_api`).
    pub socket: PathBuf,
    pub app_id: ratls::AppId,
    pub compose_hash: ratls::ComposeHash,
}

/// The layout of the data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    pub fn kms_dir(&self) -> PathBuf {
        self.root.join("kms")
    }
    pub fn gateway_dir(&self) -> PathBuf {
        self.root.join("gateway")
    }
    /// The gateway's development CA: made once, kept across runs.
    pub fn dev_ca(&self) -> PathBuf {
        self.gateway_dir().join("dev-ca.pem")
    }
    pub fn kms_root_ca(&self) -> PathBuf {
        self.kms_dir().join("root-ca.pem")
    }
    /// The DNS record API's bearer token, shared by `teegate dns` and the gateway.
    pub fn dns_api_token(&self) -> PathBuf {
        self.root.join("dns-api-token")
    }

    /// A short random id for this data directory, made once: it names the demo apps, so
    /// two data directories never share app ids (nor containers), while one directory
    /// keeps its app ids, and so its URLs, across runs.
    pub fn dev_id(&self) -> Result<String> {
        let path = self.root.join("dev-id");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let id = text.trim();
            if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id.to_string());
            }
        }
        let mut bytes = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .context("reading /dev/urandom")?;
        let id = hex::encode(bytes);
        std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
        Ok(id)
    }
}

/// The demo compose: busybox httpd serving a page that names the app and its container.
/// `image` is the demo image pinned by content (`name@sha256:<id>`); the sidecar refuses
/// a bare tag.
fn demo_compose_yaml(index: usize, image: &str) -> String {
    let script = "mkdir -p /www && echo \"teegate demo app $$DEMO_APP (SIMULATED TDX): served by a Docker container, hostname $$(hostname)\" > /www/index.html && exec httpd -f -p 80 -h /www";
    let command = serde_json::json!(["sh", "-c", script]);
    format!(
        "services:\n  web:\n    image: {image}\n    command: {command}\n    environment:\n      DEMO_APP: \"{index}\"\n    ports: [\"{APP_PORT}\"]\n    restart: always\n"
    )
}

/// Writes app `index`'s `app-compose.json` (the same bytes every run, so the same app id)
/// and returns the app.
pub fn app(layout: &Layout, dev_id: &str, index: usize, image: &str) -> Result<App> {
    let dir = layout.root.join(format!("app{index}"));
    std::fs::create_dir_all(dir.join("data"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let compose = serde_json::json!({
        "name": format!("teegate-dev-{dev_id}-app{index}"),
        "docker_compose": demo_compose_yaml(index, image),
        "exposed_ports": [APP_PORT],
        "allowed_envs": [],
        "key_provider": "kms",
        // Part of the measured compose, so it names no port (ports change every run);
        // the sidecar's config says where the KMS listens.
        "kms_url": format!("https://kms.{BASE}"),
    })
    .to_string();
    let compose_path = dir.join("app-compose.json");
    std::fs::write(&compose_path, &compose)
        .with_context(|| format!("writing {}", compose_path.display()))?;
    let compose_hash = ratls::ComposeHash::of(compose.as_bytes());
    Ok(App {
        index,
        config_path: dir.join("sidecar.toml"),
        dir,
        compose_path,
        app_id: compose_hash.default_app_id(),
        compose_hash,
        demo_addr: None,
    })
}

/// Writes the gateway's own `app-compose.json` (dstack's format; the same bytes every run,
/// so the gateway keeps its app id and its sealing key across runs) and returns its CVM.
pub fn gateway_cvm(layout: &Layout, dev_id: &str) -> Result<GatewayCvm> {
    let dir = layout.root.join("gateway-cvm");
    std::fs::create_dir_all(dir.join("data"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let socket = dir.join("guest.sock");
    // sun_path holds 108 bytes including the terminating NUL.
    if socket.as_os_str().len() > 100 {
        bail!(
            "the data directory's path is too long for a Unix socket ({}); choose a shorter --data-dir",
            socket.display()
        );
    }
    let compose = serde_json::to_string_pretty(&serde_json::json!({
        "manifest_version": 2,
        "name": format!("teegate-dev-{dev_id}-gateway"),
        "runner": "docker-compose",
        "docker_compose_file": "services:\n  gateway:\n    image: teegate-dev/gateway:1\n    command: [\"teegate\", \"gateway\", \"--config\", \"/etc/teegate/gateway.toml\"]\n",
        "kms_enabled": true,
        // A gateway does not register with a gateway.
        "gateway_enabled": false,
        "public_logs": true,
        "public_sysinfo": true,
        "allowed_envs": [],
        "no_instance_id": false,
        "secure_time": false,
    }))
    .context("the gateway's compose")?;
    let compose_path = dir.join("app-compose.json");
    std::fs::write(&compose_path, &compose)
        .with_context(|| format!("writing {}", compose_path.display()))?;
    let compose_hash = ratls::ComposeHash::of(compose.as_bytes());
    Ok(GatewayCvm {
        config_path: dir.join("sidecar.toml"),
        compose_path,
        socket,
        app_id: compose_hash.default_app_id(),
        compose_hash,
        dir,
    })
}

const ANY_MEASUREMENT: &str = "mrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\n";

fn write(path: &Path, text: &str) -> Result<PathBuf> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// The KMS releases keys to exactly the demo apps' and the gateway's compose hashes,
/// simulated quotes allowed.
pub fn kms_config(
    layout: &Layout,
    ports: &Ports,
    gateway: &GatewayCvm,
    apps: &[App],
) -> Result<PathBuf> {
    let mut text = format!(
        "# written by teegate dev on every start\nlisten = \"127.0.0.1:{}\"\ndata_dir = {}\nquote_provider = \"simulated\"\n\n[verifier]\nallow_simulated = true\n\n[policy.os]\n{ANY_MEASUREMENT}",
        ports.kms,
        path_str(&layout.kms_dir()),
    );
    let measured = std::iter::once((gateway.app_id, gateway.compose_hash))
        .chain(apps.iter().map(|a| (a.app_id, a.compose_hash)));
    for (app_id, compose_hash) in measured {
        text.push_str(&format!(
            "\n[policy.apps.{app_id}]\ncompose_hashes = [\"{}\"]\nallow_simulated = true\n",
            compose_hash.to_hex()
        ));
    }
    write(&layout.root.join("kms.toml"), &text)
}

/// A new random record-API token (32 bytes, hex) in a 0600 file: the API takes no call
/// without one, even on loopback, where any local process or browser page can reach it.
pub fn write_dns_api_token(layout: &Layout) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = layout.dns_api_token();
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    // `mode` applies only when the file is created; a file left by an older run is narrowed.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| writeln!(file, "{}", hex::encode(bytes)))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The DNS server, with a fresh record-API token (see [`write_dns_api_token`]).
pub fn dns_config(layout: &Layout, ports: &Ports) -> Result<PathBuf> {
    let token = write_dns_api_token(layout)?;
    let text = format!(
        "# written by teegate dev on every start\nbase_domain = \"{BASE}\"\nlisten_udp = \"127.0.0.1:{dns}\"\nlisten_tcp = \"127.0.0.1:{dns}\"\ngateway_addrs = [\"127.0.0.1\"]\n\n[api]\nlisten = \"127.0.0.1:{api}\"\ntoken_file = {token}\n",
        dns = ports.dns,
        api = ports.dns_api,
        token = path_str(&token),
    );
    write(&layout.root.join("dns.toml"), &text)
}

/// The gateway, attested through its CVM's guest API (`[attestation]`).
pub fn gateway_config(layout: &Layout, ports: &Ports, cvm: &GatewayCvm) -> Result<PathBuf> {
    let text = format!(
        "# written by teegate dev on every start\nbase_domain = \"{BASE}\"\nlisten_https = \"127.0.0.1:{https}\"\nlisten_http = \"127.0.0.1:{http}\"\nlisten_registration = \"127.0.0.1:{reg}\"\nlisten_admin = \"127.0.0.1:{admin}\"\ndata_dir = {dir}\ngrace_period_secs = 1\nworkers = 2\n\n[tls]\nmode = \"self_signed\"\n\n[registration]\nallow_loopback = true\nlease_secs = 30\n\n[verifier]\nallow_simulated = true\n{ANY_MEASUREMENT}compose_hashes = \"any\"\napp_ids = \"any\"\n# Named app ids are routed only when the dev KMS signed their app CA.\nkms_roots = [{root}]\n\n# The attestation page vouches for the dev KMS's root.\n[web]\nkms_root_ca = [{root}]\n",
        root = path_str(&layout.kms_root_ca()),
        https = ports.https,
        http = ports.http,
        reg = ports.registration,
        admin = ports.admin,
        dir = path_str(&layout.gateway_dir()),
    );
    // The dev DNS's record API and its token, for when tls.mode is switched to "acme".
    let text = format!(
        "{text}\n[tls.acme]\ndns_api_url = \"http://127.0.0.1:{}\"\ndns_api_token_file = {}\n",
        ports.dns_api,
        path_str(&layout.dns_api_token()),
    );
    // Its certificates' keys and the dev CA's are sealed under a key the KMS derives for
    // the gateway's app; its evidence binds the keys it serves.
    let text = format!(
        "{text}\n[attestation]\nguest_api = {}\n",
        path_str(&cvm.socket)
    );
    write(&layout.root.join("gateway.toml"), &text)
}

/// The sidecar of the gateway's simulated CVM: no containers, no registration (the
/// gateway is its only client, through the guest API socket).
pub fn gateway_cvm_config(layout: &Layout, ports: &Ports, cvm: &GatewayCvm) -> Result<PathBuf> {
    let text = format!(
        "# written by teegate dev on every start\ncompose_file = {compose}\nsocket_path = {socket}\ndstack_socket_path = {dstack}\nlisten_front = \"127.0.0.1:0\"\nkms_url = \"https://127.0.0.1:{kms}\"\nkms_root_ca = {root}\nquote_provider = \"simulated\"\ndata_dir = {data}\nruntime = \"none\"\n\n[verifier]\nallow_simulated = true\n{ANY_MEASUREMENT}compose_hashes = \"any\"\napp_ids = \"any\"\n",
        compose = path_str(&cvm.compose_path),
        socket = path_str(&cvm.socket),
        dstack = path_str(&cvm.dir.join("dstack.sock")),
        kms = ports.kms,
        root = path_str(&layout.kms_root_ca()),
        data = path_str(&cvm.dir.join("data")),
    );
    write(&cvm.config_path, &text)
}

/// The sidecar of one simulated CVM: simulated quotes, the dev KMS pinned by its root,
/// the gateway's dev CA trusted for registration, and either Docker or (no Docker) the
/// built-in demo service as the app's port 80.
pub fn sidecar_config(
    layout: &Layout,
    ports: &Ports,
    app: &App,
    docker_socket: &Path,
) -> Result<PathBuf> {
    let socket = app.dir.join("guest.sock");
    let dstack_socket = app.dir.join("dstack.sock");
    // sun_path holds 108 bytes including the terminating NUL.
    if dstack_socket.as_os_str().len() > 100 {
        bail!(
            "the data directory's path is too long for a Unix socket ({}); choose a shorter --data-dir",
            dstack_socket.display()
        );
    }
    let runtime = match app.demo_addr {
        Some(addr) => format!("runtime = \"none\"\n\n[upstreams]\n{APP_PORT} = \"{addr}\"\n"),
        None => "runtime = \"docker\"\n".to_string(),
    };
    let text = format!(
        "# written by teegate dev on every start\ncompose_file = {compose}\nsocket_path = {socket}\ndstack_socket_path = {dstack}\nlisten_front = \"127.0.0.1:0\"\nkms_url = \"https://127.0.0.1:{kms}\"\nkms_root_ca = {root}\ngateway_ca = {ca}\nquote_provider = \"simulated\"\ndata_dir = {data}\ndocker_socket = {docker}\nheartbeat_secs = 10\n{runtime}\n[verifier]\nallow_simulated = true\n{ANY_MEASUREMENT}compose_hashes = \"any\"\napp_ids = \"any\"\n",
        compose = path_str(&app.compose_path),
        socket = path_str(&socket),
        dstack = path_str(&dstack_socket),
        kms = ports.kms,
        root = path_str(&layout.kms_root_ca()),
        ca = path_str(&layout.dev_ca()),
        data = path_str(&app.dir.join("data")),
        docker = path_str(docker_socket),
    );
    write(&app.config_path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_load_and_the_sidecar_runs_the_builtin_demo_without_docker() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().join("dev \"quoted\""),
        };
        std::fs::create_dir_all(&layout.root).unwrap();
        let ports = Ports::pick(0).unwrap();
        let id = layout.dev_id().unwrap();
        assert_eq!(layout.dev_id().unwrap(), id, "kept across runs");
        let mut a = app(&layout, &id, 1, DEMO_IMAGE).unwrap();
        let again = app(&layout, &id, 1, DEMO_IMAGE).unwrap();
        assert_eq!(a.app_id, again.app_id, "same compose bytes, same app id");
        assert_ne!(a.app_id, app(&layout, &id, 2, DEMO_IMAGE).unwrap().app_id);

        let gw_cvm = gateway_cvm(&layout, &id).unwrap();
        assert_eq!(
            gateway_cvm(&layout, &id).unwrap().app_id,
            gw_cvm.app_id,
            "the gateway keeps its app id (and its sealing key) across runs"
        );
        let kms: config::KmsConfig =
            config::load(&kms_config(&layout, &ports, &gw_cvm, std::slice::from_ref(&a)).unwrap())
                .unwrap();
        assert_eq!(
            kms.policy.apps.len(),
            2,
            "the gateway's app and the demo app"
        );
        for id in [gw_cvm.app_id, a.app_id] {
            assert!(
                kms.policy
                    .apps
                    .iter()
                    .any(|(k, _)| k.to_string() == id.to_string()),
                "{id}"
            );
        }
        let cvm_cfg: config::SidecarConfig =
            config::load(&gateway_cvm_config(&layout, &ports, &gw_cvm).unwrap()).unwrap();
        assert!(!cvm_cfg.runtime.uses_docker());
        assert_eq!(cvm_cfg.socket_path, gw_cvm.socket);
        let loaded = guest_sidecar::compose::LoadedAppCompose::read(&gw_cvm.compose_path).unwrap();
        assert_eq!(loaded.app_id.0, gw_cvm.app_id.0);
        let dns: config::DnsConfig = config::load(&dns_config(&layout, &ports).unwrap()).unwrap();
        let gw: config::GatewayConfig =
            config::load(&gateway_config(&layout, &ports, &gw_cvm).unwrap()).unwrap();
        assert_eq!(gw.data_dir, layout.gateway_dir());
        assert_eq!(gw.attestation.unwrap().guest_api, gw_cvm.socket);
        // Both sides read the same random token from one 0600 file; a new run makes a new one.
        use std::os::unix::fs::PermissionsExt;
        let token = dns.api.token.as_ref().expect("a DNS API token").expose();
        assert_eq!(token.len(), 64);
        assert_eq!(gw.tls.acme.dns_api_token.as_ref().unwrap().expose(), token);
        let mode = std::fs::metadata(layout.dns_api_token())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again: config::DnsConfig = config::load(&dns_config(&layout, &ports).unwrap()).unwrap();
        assert_ne!(again.api.token.unwrap().expose(), token);

        let docker = Path::new("/var/run/docker.sock");
        let cfg: config::SidecarConfig =
            config::load(&sidecar_config(&layout, &ports, &a, docker).unwrap()).unwrap();
        assert!(cfg.runtime.uses_docker());
        a.demo_addr = Some("127.0.0.1:4321".parse().unwrap());
        let cfg: config::SidecarConfig =
            config::load(&sidecar_config(&layout, &ports, &a, docker).unwrap()).unwrap();
        assert!(!cfg.runtime.uses_docker());
        assert_eq!(cfg.upstreams[&APP_PORT], a.demo_addr.unwrap());
    }

    #[test]
    fn the_demo_compose_is_a_valid_app_compose() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().to_path_buf(),
        };
        let a = app(&layout, "0123abcd", 3, DEMO_IMAGE).unwrap();
        let loaded = guest_sidecar::compose::LoadedAppCompose::read(&a.compose_path).unwrap();
        assert_eq!(loaded.app_id.0, a.app_id.0);
        let spec = loaded
            .compose
            .compose_spec(&Default::default(), &Default::default())
            .unwrap();
        let web = &spec.services["web"];
        assert_eq!(web.image, DEMO_IMAGE);
        assert!(web.command.as_ref().unwrap()[2].contains("$DEMO_APP"));
    }
}
