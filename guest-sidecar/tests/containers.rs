//! The container manager against the real Docker daemon (these tests fail, saying so, when
//! no daemon is reachable). Each test uses its own app id and cleans up in a guard.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{KillContainerOptions, ListContainersOptions};
use futures_util::StreamExt;
use support::*;
use teegate_guest_sidecar::containers::{
    ContainerError, ContainerEventKind, ContainerManager, Outcome, LABEL_APP_ID,
    LABEL_COMPOSE_HASH, LABEL_SERVICE,
};

const TWO_SERVICES: &str = r#"
services:
  web:
    image: teegate-test/busybox:latest
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    ports: ["80"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/index.html"]
      interval: 200ms
      timeout: 2s
      retries: 50
  probe:
    image: teegate-test/busybox:latest
    command: ["sh", "-c", "wget -q -O- http://web/index.html; echo probe-done; exec sleep 3600"]
    restart: unless-stopped
    depends_on:
      web:
        condition: service_healthy
"#;

async fn app_containers(app: &str) -> Vec<bollard::models::ContainerSummary> {
    let d = docker().await;
    d.list_containers(Some(ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_APP_ID}={app}")],
        )])),
        ..Default::default()
    }))
    .await
    .expect("list containers")
}

#[tokio::test]
async fn two_service_compose_comes_up_and_serves_its_file() {
    let d = docker().await;
    busybox_image(&d).await;
    let id = unique_app_id();
    let _guard = AppGuard(id);
    let loaded = load(&id, TWO_SERVICES, &[80], "");
    let mgr = manager(&loaded).await;

    let report = mgr.up().await.expect("up");
    let order: Vec<&str> = report.iter().map(|r| r.service.as_str()).collect();
    assert_eq!(order, ["web", "probe"]);
    assert!(report.iter().all(|r| r.outcome == Outcome::Created));

    // The web service answers on its published 127.0.0.1 port.
    let endpoints = mgr.endpoints().await.expect("endpoints");
    let addr = endpoints["web"][&80];
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(mgr.endpoint_for_port(80).await.unwrap(), Some(addr));
    let (status, body) = http_get(addr, "/index.html").await.expect("GET web");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "hello from teegate\n");

    // Labels are set on every container.
    let containers = app_containers(&id.to_hex()).await;
    assert_eq!(containers.len(), 2);
    for c in &containers {
        let l = c.labels.as_ref().expect("labels");
        assert_eq!(l[LABEL_APP_ID], id.to_hex());
        assert_eq!(l[LABEL_COMPOSE_HASH], loaded.compose_hash.to_hex());
        assert!(["web", "probe"].contains(&l[LABEL_SERVICE].as_str()));
    }

    // The probe reached web by its service name; its log says so.
    let mut logs = mgr.logs("probe", true, None).await.expect("logs");
    let lines = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = Vec::new();
        while let Some(line) = logs.next().await {
            let line = line.expect("log line").line;
            let done = line == "probe-done";
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    })
    .await
    .expect("probe log within 10s");
    assert_eq!(lines, ["hello from teegate", "probe-done"]);

    let status = mgr.status().await.expect("status");
    let web = status.iter().find(|s| s.service == "web").expect("web");
    assert_eq!(web.state, "running");
    assert_eq!(web.health.as_deref(), Some("healthy"));

    mgr.down(true).await.expect("down");
    assert!(app_containers(&id.to_hex()).await.is_empty());
    let nets = d
        .inspect_network(
            &teegate_guest_sidecar::containers::network_name(&id),
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await;
    assert!(nets.is_err(), "network left behind");
}

#[tokio::test]
async fn second_manager_adopts_running_containers() {
    let d = docker().await;
    busybox_image(&d).await;
    let id = unique_app_id();
    let _guard = AppGuard(id);
    let loaded = load(&id, TWO_SERVICES, &[80], "");

    let first = manager(&loaded).await.up().await.expect("first up");
    let before = app_containers(&id.to_hex()).await.len();
    assert_eq!(before, 2);

    // A fresh manager (as after a sidecar restart) with the same compose adopts them.
    let second = manager(&loaded).await.up().await.expect("second up");
    assert!(
        second.iter().all(|r| r.outcome == Outcome::Adopted),
        "{second:?}"
    );
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.container_id, b.container_id);
    }
    assert_eq!(app_containers(&id.to_hex()).await.len(), before);

    // Another compose (another hash) for the same app id recreates them.
    let changed = load(
        &id,
        &TWO_SERVICES.replace("sleep 3600", "sleep 3601"),
        &[80],
        "",
    );
    assert_ne!(changed.compose_hash, loaded.compose_hash);
    let third = manager(&changed).await.up().await.expect("third up");
    assert!(
        third.iter().all(|r| r.outcome == Outcome::Recreated),
        "{third:?}"
    );
    let now = app_containers(&id.to_hex()).await;
    assert_eq!(now.len(), 2);
    for c in &now {
        assert_eq!(
            c.labels.as_ref().unwrap()[LABEL_COMPOSE_HASH],
            changed.compose_hash.to_hex()
        );
    }
}

#[tokio::test]
async fn killed_container_with_restart_always_comes_back() {
    let d = docker().await;
    busybox_image(&d).await;
    let id = unique_app_id();
    let _guard = AppGuard(id);
    let yaml = "services:\n  sleeper:\n    image: teegate-test/busybox:latest\n    command: sleep 3600\n    restart: always\n";
    let loaded = load(&id, yaml, &[], "");
    let mgr = manager(&loaded).await;
    let report = mgr.up().await.expect("up");
    let cid = report[0].container_id.clone();
    let mut watcher = mgr.watch();
    // Let the watcher's event stream open before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started_at = |info: bollard::models::ContainerInspectResponse| {
        info.state.and_then(|s| s.started_at).unwrap_or_default()
    };
    let first_start = started_at(d.inspect_container(&cid, None).await.unwrap());
    d.kill_container(
        &cid,
        Some(KillContainerOptions {
            signal: "SIGKILL".into(),
        }),
    )
    .await
    .expect("docker kill");

    poll(
        Duration::from_secs(15),
        "the killed container to run again",
        || {
            let d = d.clone();
            let cid = cid.clone();
            let first_start = first_start.clone();
            async move {
                let info = d.inspect_container(&cid, None).await.ok()?;
                let running = info.state.as_ref().and_then(|s| s.running) == Some(true);
                let start = started_at(info);
                (running && start != first_start).then_some(())
            }
        },
    )
    .await;

    // The watcher reported the exit and its own restart.
    let mut kinds = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = watcher.recv().await {
            assert_eq!(ev.service, "sleeper");
            kinds.push(ev.kind.clone());
            if ev.kind == ContainerEventKind::RestartedBySidecar {
                break;
            }
        }
    })
    .await;
    assert!(
        kinds.contains(&ContainerEventKind::Exited { exit_code: 137 }),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&ContainerEventKind::RestartedBySidecar),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn missing_image_without_tarball_or_registry_is_named() {
    let d = docker().await;
    let id = unique_app_id();
    let _guard = AppGuard(id);
    let image = format!("teegate-test/missing-{}:1", &id.to_hex()[..8]);
    let yaml = format!("services:\n  app:\n    image: {image}\n");
    let loaded = load(&id, &yaml, &[], "");
    let mgr = manager(&loaded).await;
    let err = mgr.up().await.expect_err("up must fail");
    assert!(
        matches!(err, ContainerError::ImageUnavailable { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&image), "{msg}");
    assert!(msg.contains("service app"), "{msg}");
    assert!(msg.contains("no image tarballs are listed"), "{msg}");
    assert!(app_containers(&id.to_hex()).await.is_empty());
    let _ = d;
}

/// Saves the busybox image under a new tag into a tarball, then removes the tag, so the
/// image is only available from the tarball.
async fn tarball_of_busybox(dir: &std::path::Path, tag: &str) -> (std::path::PathBuf, String) {
    let d = docker().await;
    busybox_image(&d).await;
    let (repo, t) = tag.split_once(':').unwrap();
    d.tag_image(
        BUSYBOX_IMAGE,
        Some(bollard::query_parameters::TagImageOptions {
            repo: Some(repo.into()),
            tag: Some(t.into()),
        }),
    )
    .await
    .expect("tag");
    let mut bytes = Vec::new();
    let mut s = d.export_image(tag);
    while let Some(chunk) = s.next().await {
        bytes.extend_from_slice(&chunk.expect("export"));
    }
    d.remove_image(
        tag,
        None::<bollard::query_parameters::RemoveImageOptions>,
        None,
    )
    .await
    .expect("untag");
    let path = dir.join("image.tar");
    std::fs::write(&path, &bytes).unwrap();
    use sha2::Digest;
    (path, hex::encode(sha2::Sha256::digest(&bytes)))
}

#[tokio::test]
async fn loads_image_from_tarball_after_checking_its_sha256() {
    let d = docker().await;
    let dir = tempfile::tempdir().unwrap();
    let id = unique_app_id();
    let _guard = AppGuard(id);
    let tag = format!("teegate-test/loaded-{}:1", &id.to_hex()[..8]);
    let (path, sha) = tarball_of_busybox(dir.path(), &tag).await;
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", &self.0])
                .output();
        }
    }
    let _untag = Untag(tag.clone());
    let yaml = format!("services:\n  app:\n    image: {tag}\n    command: sleep 3600\n");

    // A wrong digest is refused before anything is loaded.
    let bad = load(
        &id,
        &yaml,
        &[],
        &format!(
            r#","images":[{{"path":"{}","sha256":"{}"}}]"#,
            path.display(),
            "00".repeat(32)
        ),
    );
    let err = manager(&bad).await.up().await.expect_err("bad digest");
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert!(
        d.inspect_image(&tag).await.is_err(),
        "image loaded despite bad digest"
    );

    let good = load(
        &id,
        &yaml,
        &[],
        &format!(
            r#","images":[{{"path":"{}","sha256":"{sha}"}}]"#,
            path.display()
        ),
    );
    let report = manager(&good).await.up().await.expect("up from tarball");
    assert_eq!(report[0].outcome, Outcome::Created);
    assert!(d.inspect_image(&tag).await.is_ok());
}

/// A manager that binds images by content, as the sidecar runs it.
async fn strict_manager(
    loaded: &teegate_guest_sidecar::compose::LoadedAppCompose,
) -> ContainerManager {
    let cfg = teegate_guest_sidecar::containers::ManagerConfig {
        allow_unpinned: false,
        ..test_config()
    };
    ContainerManager::new(docker().await, deployment(loaded), cfg)
}

#[tokio::test]
async fn images_are_bound_by_content() {
    let d = docker().await;
    let id = unique_app_id();
    let _guard = AppGuard(id);

    // A bare tag is refused, naming the service; nothing starts.
    let yaml =
        "services:\n  web:\n    image: teegate-test/busybox:latest\n    command: sleep 3600\n";
    let err = strict_manager(&load(&id, yaml, &[], ""))
        .await
        .up()
        .await
        .expect_err("unpinned tag");
    let msg = err.to_string();
    assert!(
        msg.contains("service web") && msg.contains("not pinned by content"),
        "{msg}"
    );
    assert!(app_containers(&id.to_hex()).await.is_empty());

    // Pinned by its content id: it starts, from exactly that id, and the id is reported.
    let busybox = busybox_id(&d).await;
    let yaml = format!(
        "services:\n  web:\n    image: teegate-test/busybox@{busybox}\n    command: sleep 3600\n"
    );
    let mgr = strict_manager(&load(&id, &yaml, &[], "")).await;
    let resolved = mgr.resolve_images().await.expect("resolve");
    assert_eq!(resolved["web"].id.to_string(), busybox);
    assert!(resolved["web"].pinned);
    assert_eq!(
        resolved["web"].event_payload("web"),
        format!("web@{busybox}")
    );
    let report = mgr.up().await.expect("up");
    let c = d
        .inspect_container(&report[0].container_id, None)
        .await
        .unwrap();
    assert_eq!(c.image.as_deref(), Some(busybox.as_str()));
    mgr.down(true).await.unwrap();
}

#[tokio::test]
async fn a_replaced_image_under_a_pinned_name_is_refused_naming_both_digests() {
    let d = docker().await;
    let id = unique_app_id();
    let _guard = AppGuard(id);
    let name = format!("teegate-test/pinned-{}", &id.to_hex()[..8]);
    let reference = format!("{name}:1");
    let original = tiny_image(&d, &reference, id.to_hex().as_bytes()).await;
    let yaml =
        format!("services:\n  web:\n    image: {name}@{original}\n    command: sleep 3600\n");
    // The host swaps the image: the pinned one is gone, another carries its name.
    let _ = d
        .remove_image(
            &original,
            Some(bollard::query_parameters::RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
    let other = tiny_image(&d, &reference, b"other content").await;
    assert_ne!(original, other);
    let err = strict_manager(&load(&id, &yaml, &[], ""))
        .await
        .up()
        .await
        .expect_err("replaced image");
    let msg = err.to_string();
    assert!(msg.contains("service web"), "{msg}");
    assert!(msg.contains(&original), "{msg}");
    assert!(
        msg.contains(&other),
        "the image found instead is named: {msg}"
    );
    assert!(msg.contains("nothing of this service starts"), "{msg}");
    assert!(app_containers(&id.to_hex()).await.is_empty());
    let _ = d
        .remove_image(
            &reference,
            Some(bollard::query_parameters::RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
}

#[tokio::test]
async fn a_tag_from_a_pinned_tarball_is_bound_to_the_id_its_manifest_names() {
    let d = docker().await;
    let dir = tempfile::tempdir().unwrap();
    let id = unique_app_id();
    let _guard = AppGuard(id);
    let tag = format!("teegate-test/tarred-{}:1", &id.to_hex()[..8]);
    let (path, sha) = tarball_of_busybox(dir.path(), &tag).await;
    let yaml = format!("services:\n  app:\n    image: {tag}\n    command: sleep 3600\n");
    let extra = format!(
        r#","images":[{{"path":"{}","sha256":"{sha}"}}]"#,
        path.display()
    );
    // Someone retags the name locally to other content: the tarball's image wins.
    let _ = tiny_image(&d, &tag, b"retagged").await;
    let mgr = strict_manager(&load(&id, &yaml, &[], &extra)).await;
    let resolved = mgr.resolve_images().await.expect("resolve from tarball");
    assert_eq!(resolved["app"].id.to_string(), busybox_id(&d).await);
    mgr.up().await.expect("up");
    mgr.down(true).await.unwrap();
    let _ = d
        .remove_image(
            &tag,
            Some(bollard::query_parameters::RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
}
