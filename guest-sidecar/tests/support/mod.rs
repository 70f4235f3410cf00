//! Shared helpers for tests against the real Docker daemon: connecting (failing loudly
//! when there is none), the offline busybox test image, unique app ids and a cleanup guard.
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use teegate_guest_sidecar::compose::{AppId, LoadedAppCompose};
use teegate_guest_sidecar::containers::{
    connect_docker, remove_app, AppDeployment, ContainerManager, ManagerConfig,
};

/// The offline test image: a busybox-static rootfs with `CMD ["/bin/sh"]`.
pub const BUSYBOX_IMAGE: &str = "teegate-test/busybox:latest";
const BUSYBOX_BIN: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "httpd", "wget", "sleep", "echo", "cat", "ls", "mkdir", "true", "false", "nc",
];

fn socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(String::from))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

/// Connects to the Docker daemon; panics with a message saying these tests need one.
pub async fn docker() -> Docker {
    let s = socket();
    match connect_docker(Path::new(&s), Duration::from_secs(10)).await {
        Ok(d) => d,
        Err(e) => panic!(
            "these tests need a running Docker daemon, and none is reachable ({e}); start dockerd or set DOCKER_HOST=unix:///path/to/docker.sock"
        ),
    }
}

static IMAGE_LOCK: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

fn rootfs_tar() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX_BIN).unwrap_or_else(|e| {
        panic!("{BUSYBOX_BIN} is needed to build the test image ({e}); install it with: apt-get install -y busybox-static")
    });
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = |path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, std::io::empty())
            .expect("tar dir");
    };
    dir("bin/", 0o755);
    dir("tmp/", 0o1777);
    dir("www/", 0o755);
    dir("etc/", 0o755);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice())
        .expect("tar busybox");
    for a in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .expect("tar link");
    }
    let index = b"hello from teegate\n";
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(index.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, "www/index.html", &index[..])
        .expect("tar index");
    b.into_inner().expect("tar finish")
}

/// Makes sure [`BUSYBOX_IMAGE`] exists, importing it offline the first time.
pub async fn busybox_image(docker: &Docker) -> &'static str {
    let mut done = IMAGE_LOCK.lock().await;
    if *done || docker.inspect_image(BUSYBOX_IMAGE).await.is_ok() {
        *done = true;
        return BUSYBOX_IMAGE;
    }
    let tar = rootfs_tar();
    let (repo, tag) = BUSYBOX_IMAGE.split_once(':').expect("tagged");
    let opts = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        changes: vec![r#"CMD ["/bin/sh"]"#.into()],
        ..Default::default()
    };
    let mut s = docker.create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
    while let Some(item) = s.next().await {
        item.expect("docker import of the busybox test image");
    }
    docker
        .inspect_image(BUSYBOX_IMAGE)
        .await
        .expect("busybox test image after import");
    *done = true;
    BUSYBOX_IMAGE
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// An app id no other test (or test run) uses.
pub fn unique_app_id() -> AppId {
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    h.update(COUNTER.fetch_add(1, Ordering::SeqCst).to_le_bytes());
    let d = h.finalize();
    let mut id = [0u8; 20];
    id.copy_from_slice(&d[..20]);
    AppId(id)
}

/// An `app-compose.json` for `yaml` naming `app_id`, parsed as the sidecar would.
pub fn load(app_id: &AppId, yaml: &str, exposed: &[u16], extra: &str) -> LoadedAppCompose {
    let json = format!(
        r#"{{"name":"test","app_id":"{}","key_provider":"none","exposed_ports":{:?},"docker_compose":{}{extra}}}"#,
        app_id.to_hex(),
        exposed,
        serde_json::to_string(yaml).expect("json string")
    );
    LoadedAppCompose::from_bytes(json.as_bytes()).expect("test app-compose.json")
}

pub fn deployment(loaded: &LoadedAppCompose) -> AppDeployment {
    AppDeployment {
        app_id: loaded.app_id,
        compose_hash: loaded.compose_hash,
        spec: loaded
            .compose
            .compose_spec(&Default::default(), &Default::default())
            .expect("compose spec"),
        images: loaded.compose.images.clone(),
        volume_dirs: Default::default(),
    }
}

/// Manager settings for tests: short timeouts.
pub fn test_config() -> ManagerConfig {
    ManagerConfig {
        step_timeout: Duration::from_secs(20),
        healthy_timeout: Duration::from_secs(30),
        pull_timeout: Duration::from_secs(20),
        stop_grace: Duration::from_secs(1),
        // These tests exercise the manager with the shared test image's tag; binding
        // images by content has its own tests (`images_are_bound_by_content`).
        allow_unpinned: true,
        ..Default::default()
    }
}

/// The shared test image's content id, `sha256:<hex>`.
pub async fn busybox_id(docker: &Docker) -> String {
    busybox_image(docker).await;
    docker
        .inspect_image(BUSYBOX_IMAGE)
        .await
        .expect("inspect busybox")
        .id
        .expect("image id")
}

/// Imports a one-file image under `reference` (repo:tag); returns its content id.
pub async fn tiny_image(docker: &Docker, reference: &str, content: &[u8]) -> String {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(content.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, "marker", content).expect("tar");
    let tar = b.into_inner().expect("tar finish");
    let (repo, tag) = reference.split_once(':').expect("tagged");
    let opts = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        ..Default::default()
    };
    let mut s = docker.create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
    while let Some(item) = s.next().await {
        item.expect("docker import");
    }
    docker
        .inspect_image(reference)
        .await
        .expect("imported")
        .id
        .expect("image id")
}

pub async fn manager(loaded: &LoadedAppCompose) -> ContainerManager {
    ContainerManager::new(docker().await, deployment(loaded), test_config())
}

/// Removes the app's containers, network and volumes when dropped, also when the test
/// panics.
pub struct AppGuard(pub AppId);

impl Drop for AppGuard {
    fn drop(&mut self) {
        let id = self.0;
        let r = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                let s = socket();
                let d = connect_docker(Path::new(&s), Duration::from_secs(10)).await?;
                remove_app(&d, &id, true, &test_config()).await
            })
        })
        .join();
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleanup of app {id} failed: {e}"),
            Err(_) => eprintln!("cleanup of app {id} panicked"),
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain HTTP/1.0 GET; returns (status line, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("read timed out"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}
