//! Docker for `teegate dev`: whether it can be used (and why not), the demo image built
//! offline from busybox-static, and removing the demo containers when dev stops.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures_util::StreamExt;

use super::stack::DEMO_IMAGE;

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "httpd", "mkdir", "echo", "hostname", "cat", "ls", "sleep", "wget",
];

/// The Docker Engine socket: `DOCKER_HOST` when it is a `unix://` URL, else the default.
pub fn socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// A daemon to run the demo on, or the reason there is none.
pub async fn detect(socket: &Path) -> std::result::Result<Docker, String> {
    guest_sidecar::containers::connect_docker(socket, Duration::from_secs(3))
        .await
        .map_err(|e| format!("no Docker daemon reachable ({e})"))
}

/// Imports [`DEMO_IMAGE`] (a busybox-static root filesystem) unless it exists already.
/// Returns whether it had to be built.
pub async fn ensure_demo_image(docker: &Docker) -> Result<bool> {
    if docker.inspect_image(DEMO_IMAGE).await.is_ok() {
        return Ok(false);
    }
    if !Path::new(BUSYBOX).exists() {
        anyhow::bail!("{BUSYBOX} is missing (apt-get install busybox-static)");
    }
    let rootfs = rootfs_tar().context("packing the demo image")?;
    let (repo, tag) = DEMO_IMAGE.split_once(':').unwrap_or((DEMO_IMAGE, "latest"));
    let opts = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        changes: vec![r#"CMD ["/bin/sh"]"#.into()],
        ..Default::default()
    };
    let mut progress =
        docker.create_image(Some(opts), Some(bollard::body_full(rootfs.into())), None);
    while let Some(item) = progress.next().await {
        item.context("docker import of the demo image")?;
    }
    docker
        .inspect_image(DEMO_IMAGE)
        .await
        .context("the demo image after its import")?;
    Ok(true)
}

/// The demo image pinned by its content id: `teegate-dev/demo@sha256:<id>`.
pub async fn demo_image_ref(docker: &Docker) -> Result<String> {
    let id = docker
        .inspect_image(DEMO_IMAGE)
        .await
        .context("the demo image")?
        .id
        .context("the demo image has no id")?;
    let name = DEMO_IMAGE.split(':').next().unwrap_or(DEMO_IMAGE);
    Ok(format!("{name}@{id}"))
}

fn rootfs_tar() -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin/", 0o755),
        ("tmp/", 0o1777),
        ("www/", 0o755),
        ("etc/", 0o755),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, dir, std::io::empty())?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    Ok(b.into_inner()?)
}

/// Removes the demo apps' containers, all apps at once (the sidecar leaves them running
/// on purpose, for adoption; dev's Ctrl-C means stop everything).
pub async fn remove_apps(docker: &Docker, apps: &[ratls::AppId]) -> Result<()> {
    let cfg = guest_sidecar::containers::ManagerConfig {
        // A demo container has nothing to save: kill it rather than wait for it.
        stop_grace: Duration::ZERO,
        step_timeout: Duration::from_secs(15),
        ..Default::default()
    };
    let removals = apps.iter().map(|app| {
        let id = guest_sidecar::compose::AppId(app.0);
        let cfg = &cfg;
        async move {
            guest_sidecar::containers::remove_app(docker, &id, true, cfg)
                .await
                .with_context(|| format!("removing the containers of app {app}"))
        }
    });
    futures_util::future::join_all(removals)
        .await
        .into_iter()
        .collect()
}
