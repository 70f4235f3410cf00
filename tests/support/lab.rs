//! Separate hosts for the partition tests: Docker containers on private Docker networks,
//! each with its own network stack, run from an image imported from this very build
//! ([`super::lab_image`]), so no registry is involved. A host is cut off from a network
//! with `docker network disconnect` and brought back, at the same address, with `connect`.
//! Cut off, its packets to that network go to its default route, where Docker's isolation
//! rules drop them, and packets to its old address find nobody: silence, as in a real
//! partition, not a quick "connection refused".
//!
//! Why containers rather than network namespaces joined by veth pairs: the daemon gives
//! every host its own filesystem too (the sidecar's sockets and every data directory sit at
//! fixed paths), keeps logs, and removes everything by name or label, even what a killed
//! test run left behind; namespaces would need root `ip netns` plumbing, a bridge, and a
//! sweeper of our own for the same.
//!
//! ```text
//! Lab ── image  teegate-lab:<run>        (removed when the Lab drops)
//!     ├─ Net    <run>-<name>, 10.a.b.0/24 (static addresses: host N is 10.a.b.N on every net)
//!     └─ Host   <run>-<name>, its output collected line by line
//! ```
//!
//! Every name carries a per-run id, so runs (and other engineers' tests) never collide.
//! Everything a lab made is removed when it drops, also when the test fails; what a killed
//! run left behind (its processes end within [`MAX_LIFE_SECS`] anyway) is removed by the
//! next lab once older than [`STALE_AFTER_SECS`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig,
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListImagesOptions,
    ListNetworksOptions, LogsOptions, RemoveContainerOptions, RemoveImageOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

/// The label every lab container and network carries (value: unix seconds at creation).
const LABEL: &str = "teegate.test.lab.created";
const IMAGE_REPO: &str = "teegate-lab";
/// Left-overs of a run older than this are removed by the next lab.
const STALE_AFTER_SECS: u64 = 15 * 60;
/// Each host's command runs under `timeout`: a run killed before its cleanup leaves no
/// process running longer than this.
pub const MAX_LIFE_SECS: u64 = 10 * 60;
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A private Docker network with a /24 of its own.
pub struct Net {
    pub name: String,
    prefix: [u8; 3],
}

impl Net {
    /// Host `n`'s address on this network.
    pub fn ip(&self, n: u8) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, n)
    }
}

/// One container: a host with an address on each of its networks.
pub struct Host {
    pub name: String,
    /// Its host number: address `<net prefix>.<n>` on every network it joins.
    pub n: u8,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Host {
    pub fn ip(&self, net: &Net) -> Ipv4Addr {
        net.ip(self.n)
    }

    /// Everything it printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (bounded) until it has printed a line containing `needle`.
    pub async fn wait_for_line(&self, needle: &str, within: Duration) {
        self.wait_for(|l| l.contains(needle), needle, within).await
    }

    /// Waits (bounded) until its program printed `ready` (a line of its own).
    pub async fn wait_ready(&self, within: Duration) {
        self.wait_for(|l| l.trim() == "ready", "ready", within)
            .await
    }

    async fn wait_for(&self, ok: impl Fn(&str) -> bool, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.lines.lock().unwrap().iter().any(|l| ok(l)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no line {what:?} within {within:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// What a host runs and where.
pub struct HostSpec<'a> {
    /// Short name (the container is `<run>-<name>`).
    pub name: &'a str,
    pub n: u8,
    pub nets: &'a [&'a Net],
    /// The command, run by busybox `sh -c` (under `timeout`).
    pub script: String,
    /// `name:ip` entries for the host's `/etc/hosts`.
    pub extra_hosts: Vec<String>,
}

#[derive(Default)]
struct Made {
    containers: Vec<String>,
    networks: Vec<String>,
}

/// The containers, networks and image of one test; all removed on drop.
pub struct Lab {
    pub docker: Docker,
    pub run: String,
    pub image: String,
    /// Mounted read-only at `/cfg` in every host: configuration files, certificates.
    pub dir: PathBuf,
    made: Mutex<Made>,
}

fn socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(String::from))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

async fn connect() -> Docker {
    let s = socket();
    guest_sidecar::containers::connect_docker(Path::new(&s), Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| {
            panic!("the partition tests need a running Docker daemon, and none is reachable ({e}); start dockerd or set DOCKER_HOST=unix:///path/to/docker.sock")
        })
}

impl Lab {
    /// Removes stale left-overs of earlier runs, then imports this run's image.
    pub async fn new(dir: &Path) -> Lab {
        let docker = connect().await;
        sweep(&docker).await;
        let run = format!("tglab{}x{:x}", std::process::id(), rand_u32());
        let image = format!("{IMAGE_REPO}:{run}");
        let started = Instant::now();
        let tar = super::lab_image::rootfs_of_this_build();
        let size = tar.len();
        let opts = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(IMAGE_REPO.into()),
            tag: Some(run.clone()),
            ..Default::default()
        };
        let lab = Lab {
            docker,
            run,
            image,
            dir: dir.to_path_buf(),
            made: Mutex::new(Made::default()),
        };
        // The import may take a while on a busy machine; everything else gets 10 s.
        let importer = lab.docker.clone().with_timeout(Duration::from_secs(180));
        let mut s = importer.create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
        while let Some(item) = s.next().await {
            item.expect("docker import of the lab image");
        }
        eprintln!(
            "lab {}: image of {} MB imported in {:?}",
            lab.run,
            size / 1_000_000,
            started.elapsed()
        );
        lab
    }

    fn labels() -> HashMap<String, String> {
        HashMap::from([(LABEL.to_string(), now_secs().to_string())])
    }

    /// A new private network `<run>-<name>` on a /24 of 10.0.0.0/8 no other network uses.
    pub async fn net(&self, name: &str) -> Net {
        let full = format!("{}-{name}", self.run);
        let mut last = String::new();
        for _ in 0..30 {
            let r = rand_u32();
            let prefix = [10, 100 + (r % 150) as u8, (r >> 8) as u8];
            let subnet = format!("{}.{}.{}.0/24", prefix[0], prefix[1], prefix[2]);
            let req = NetworkCreateRequest {
                name: full.clone(),
                driver: Some("bridge".into()),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet),
                        gateway: Some(format!("{}.{}.{}.1", prefix[0], prefix[1], prefix[2])),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(Self::labels()),
                ..Default::default()
            };
            match self.docker.create_network(req).await {
                Ok(_) => {
                    self.made.lock().unwrap().networks.push(full.clone());
                    return Net { name: full, prefix };
                }
                // Another network (another run's, another engineer's) has that subnet.
                Err(e) => last = e.to_string(),
            }
        }
        panic!("no free /24 for network {full}: {last}");
    }

    /// Creates and starts a host; returns once it runs (not once its program is ready).
    pub async fn host(&self, spec: HostSpec<'_>) -> Host {
        let name = format!("{}-{}", self.run, spec.name);
        let endpoint = |net: &Net| EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(net.ip(spec.n).to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (first, rest) = spec.nets.split_first().expect("a host on some network");
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            hostname: Some(spec.name.to_string()),
            cmd: Some(vec![
                "/bin/timeout".into(),
                MAX_LIFE_SECS.to_string(),
                "/bin/sh".into(),
                "-c".into(),
                spec.script.clone(),
            ]),
            env: Some(vec!["TEEGATE_LOG=info".into(), "PATH=/bin:/usr/bin".into()]),
            labels: Some(Self::labels()),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:/cfg:ro", self.dir.display())]),
                extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
                // The network is the thing under test: no port publishing, no host network.
                network_mode: Some(first.name.clone()),
                ..Default::default()
            }),
            // API 1.41 takes one network at creation; the others are connected before start.
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(first.name.clone(), endpoint(first))])),
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(opts), body)
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        self.made.lock().unwrap().containers.push(name.clone());
        for net in rest {
            self.docker
                .connect_network(
                    &net.name,
                    NetworkConnectRequest {
                        container: name.clone(),
                        endpoint_config: Some(endpoint(net)),
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("connecting {name} to {}: {e}", net.name));
        }
        self.docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(follow_logs(
            self.docker.clone(),
            name.clone(),
            lines.clone(),
        ));
        Host {
            name,
            n: spec.n,
            lines,
        }
    }

    /// Cuts `host` off `net`: its interface there is gone; packets to that network from
    /// it, and to its old address from the others, are dropped.
    pub async fn disconnect(&self, host: &Host, net: &Net) {
        self.docker
            .disconnect_network(
                &net.name,
                NetworkDisconnectRequest {
                    container: host.name.clone(),
                    force: Some(true),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("disconnecting {} from {}: {e}", host.name, net.name));
    }

    /// Puts `host` back on `net`, at the address it had.
    pub async fn connect(&self, host: &Host, net: &Net) {
        self.docker
            .connect_network(
                &net.name,
                NetworkConnectRequest {
                    container: host.name.clone(),
                    endpoint_config: Some(EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(host.ip(net).to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("connecting {} to {}: {e}", host.name, net.name));
    }

    /// Writes `text` to `<dir>/<name>` (seen as `/cfg/<name>` in the hosts).
    pub fn file(&self, name: &str, text: &str) -> String {
        std::fs::write(self.dir.join(name), text).unwrap();
        format!("/cfg/{name}")
    }
}

async fn follow_logs(docker: Docker, name: String, lines: Arc<Mutex<Vec<String>>>) {
    let opts = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut stream = docker.logs(&name, Some(opts));
    let mut partial = String::new();
    while let Some(Ok(out)) = stream.next().await {
        partial.push_str(&String::from_utf8_lossy(&out.into_bytes()));
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            lines.lock().unwrap().push(line.trim_end().to_string());
        }
    }
    if !partial.is_empty() {
        lines.lock().unwrap().push(partial);
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Removes lab containers, networks and images older than [`STALE_AFTER_SECS`]: a run
/// that was killed could not clean up. Younger ones may belong to a run in progress.
async fn sweep(docker: &Docker) {
    let stale = |created: u64| created + STALE_AFTER_SECS < now_secs();
    let by_label = Some(HashMap::from([(
        "label".to_string(),
        vec![LABEL.to_string()],
    )]));
    let created = |labels: Option<&HashMap<String, String>>| {
        labels
            .and_then(|l| l.get(LABEL))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX / 2)
    };
    if let Ok(list) = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: by_label.clone(),
            ..Default::default()
        }))
        .await
    {
        for c in list.iter().filter(|c| stale(created(c.labels.as_ref()))) {
            if let Some(id) = &c.id {
                let _ = docker
                    .remove_container(
                        id,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
    }
    if let Ok(list) = docker
        .list_networks(Some(ListNetworksOptions { filters: by_label }))
        .await
    {
        for n in list.iter().filter(|n| stale(created(n.labels.as_ref()))) {
            if let Some(id) = &n.id {
                let _ = docker.remove_network(id).await;
            }
        }
    }
    if let Ok(list) = docker
        .list_images(Some(ListImagesOptions {
            filters: Some(HashMap::from([(
                "reference".to_string(),
                vec![format!("{IMAGE_REPO}:*")],
            )])),
            ..Default::default()
        }))
        .await
    {
        for i in list.iter().filter(|i| stale(i.created.max(0) as u64)) {
            for tag in &i.repo_tags {
                let _ = docker
                    .remove_image(
                        tag,
                        Some(RemoveImageOptions {
                            force: true,
                            ..Default::default()
                        }),
                        None,
                    )
                    .await;
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap_or_else(|p| p.into_inner()));
        let image = self.image.clone();
        // Drop cannot await, and the test's runtime may be in the middle of a panic: clean
        // up on a thread of its own, with a connection of its own, and wait for it.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                let docker = connect().await;
                let removals = made.containers.iter().map(|c| {
                    docker.remove_container(
                        c,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                });
                for (c, r) in made
                    .containers
                    .iter()
                    .zip(futures_util::future::join_all(removals).await)
                {
                    if let Err(e) = r {
                        eprintln!("lab cleanup: container {c}: {e}");
                    }
                }
                for n in &made.networks {
                    if let Err(e) = docker.remove_network(n).await {
                        eprintln!("lab cleanup: network {n}: {e}");
                    }
                }
                if let Err(e) = docker
                    .remove_image(
                        &image,
                        Some(RemoveImageOptions {
                            force: true,
                            ..Default::default()
                        }),
                        None,
                    )
                    .await
                {
                    // Not there when the import failed.
                    if !e.to_string().contains("No such image") {
                        eprintln!("lab cleanup: image {image}: {e}");
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}
