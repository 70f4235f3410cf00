//! The container manager: runs an app's compose on the local Docker daemon (Engine API
//! through bollard) and keeps it running.
//!
//! ```text
//! ContainerManager::resolve_images   each service's image bound by content (pins.rs):
//!        name@sha256:<id> │ a tag in a sha256-checked `images` tarball; the id read back
//!        from Docker must be the pinned one (bare tags only with allow_unpinned)
//! ContainerManager::up
//!   ├─ network  teegate-<prefix>            (bridge; services reach each other by name)
//!   ├─ volumes  teegate-<prefix>_<name>     (named volumes of the compose)
//!   └─ per service, in depends_on order:
//!        wait for dependencies (started / healthy, bounded)
//!        adopt the labelled container (same compose hash and measured image id)
//!          │ or remove + recreate (other hash or image)
//!        create from the resolved image id (ports on 127.0.0.1:<picked>, restart policy, healthcheck, mounts) → start
//! ContainerManager::watch    Docker events → ContainerEvent; restarts what Docker does not
//! ContainerManager::logs     a stream of LogLine for one service
//! ContainerManager::endpoints  service → container port → 127.0.0.1:<host port>
//! ContainerManager::down / remove_app   containers, network (volumes when asked)
//! ```
//!
//! `<prefix>` is the first 16 hex characters of the app id. Every object carries the labels
//! `teegate.app-id` (40 hex), `teegate.compose-hash` (64 hex) and, on containers,
//! `teegate.service`, so a restarted sidecar finds and adopts what is running instead of
//! starting copies. Every daemon call is bounded by [`ManagerConfig`] timeouts.

mod images;
mod logs;
pub mod pins;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings,
    HealthConfig, HealthStatusEnum, HostConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveContainerOptions, RemoveVolumeOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use tracing::{debug, info, warn};

use crate::compose::{
    AppId, ComposeHash, ComposeSpec, DependsCondition, HealthTest, Healthcheck, ImageTarball,
    Restart, ServiceSpec, VolumeMount,
};

pub use logs::{LogLine, LogStream, LogStreamKind};
pub use watch::{ContainerEvent, ContainerEventKind, Watcher};

/// Label: the app id (40 hex).
pub const LABEL_APP_ID: &str = "teegate.app-id";
/// Label: the compose service name.
pub const LABEL_SERVICE: &str = "teegate.service";
/// Label: the compose hash (64 hex) the container was made from.
pub const LABEL_COMPOSE_HASH: &str = "teegate.compose-hash";

/// What went wrong, naming the step and (where there is one) the service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    #[error("Docker daemon not reachable at {socket}: {message}")]
    DaemonUnreachable { socket: String, message: String },
    #[error("{step} for service {service}: {source}")]
    Docker {
        step: &'static str,
        service: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{step} for service {service}: timed out after {after:?}")]
    Timeout {
        step: &'static str,
        service: String,
        after: Duration,
    },
    #[error(
        "image {image} for service {service} is not available: not present locally, {tarballs}, and pulling it failed: {pull_error}"
    )]
    ImageUnavailable {
        service: String,
        image: String,
        tarballs: String,
        pull_error: String,
    },
    #[error("loading image tarball {path} for service {service}: {message}")]
    ImageTarball {
        service: String,
        path: String,
        message: String,
    },
    #[error("waiting for {dependency} to be healthy (needed by {service}): {message}")]
    Unhealthy {
        service: String,
        dependency: String,
        message: String,
    },
    #[error("{step} for service {service}: {message}")]
    Conflict {
        step: &'static str,
        service: String,
        message: String,
    },
    #[error("no service named {service} in the compose")]
    UnknownService { service: String },
    #[error(transparent)]
    Pin(#[from] pins::PinError),
    #[error("service {service}: image {image} is pinned to {expected} but Docker has {found}; nothing of this service starts")]
    ImageMismatch {
        service: String,
        image: String,
        expected: String,
        found: String,
    },
}

type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// Timeouts and choices for the manager.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Bound on each single Docker call (inspect, create, start, …).
    pub step_timeout: Duration,
    /// Bound on waiting for a `service_healthy` dependency.
    pub healthy_timeout: Duration,
    /// Bound on a registry pull.
    pub pull_timeout: Duration,
    /// Bound on loading an image tarball.
    pub load_timeout: Duration,
    /// Grace period when stopping a container (then SIGKILL).
    pub stop_grace: Duration,
    /// Address container ports are published on (the RA-TLS front connects there).
    pub publish_ip: Ipv4Addr,
    /// Whether to try a registry pull when an image is neither local nor in a tarball.
    pub allow_pull: bool,
    /// Run images that nothing pins by content (development only; labelled unpinned).
    pub allow_unpinned: bool,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            step_timeout: Duration::from_secs(30),
            healthy_timeout: Duration::from_secs(120),
            pull_timeout: Duration::from_secs(300),
            load_timeout: Duration::from_secs(600),
            stop_grace: Duration::from_secs(10),
            publish_ip: Ipv4Addr::LOCALHOST,
            allow_pull: true,
            allow_unpinned: false,
        }
    }
}

/// Connects to the Docker daemon on a Unix socket, agrees on an API version and pings it.
pub async fn connect_docker(socket: &Path, timeout: Duration) -> Result<Docker> {
    let s = socket.display().to_string();
    let unreachable = |message: String| ContainerError::DaemonUnreachable {
        socket: s.clone(),
        message,
    };
    let docker =
        Docker::connect_with_socket(&s, timeout.as_secs().max(1), bollard::API_DEFAULT_VERSION)
            .map_err(|e| unreachable(e.to_string()))?;
    let docker = tokio::time::timeout(timeout, docker.negotiate_version())
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(timeout, docker.ping())
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    debug!(socket = %s, version = ?docker.client_version(), "connected to Docker");
    Ok(docker)
}

/// What the manager runs: the app's identity, its parsed compose and image tarballs.
#[derive(Clone, Debug)]
pub struct AppDeployment {
    pub app_id: AppId,
    pub compose_hash: ComposeHash,
    pub spec: ComposeSpec,
    pub images: Vec<ImageTarball>,
    /// Named volumes backed by a directory (an encrypted filesystem's plaintext side):
    /// bind-mounted instead of being Docker volumes.
    pub volume_dirs: BTreeMap<String, std::path::PathBuf>,
}

/// How `up` got each service's container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No container existed; one was created.
    Created,
    /// A container with the same compose hash existed and was reused.
    Adopted,
    /// A container from another compose hash existed; it was removed and a new one made.
    Recreated,
}

#[derive(Clone, Debug)]
pub struct ServiceReport {
    pub service: String,
    pub container_id: String,
    pub outcome: Outcome,
}

/// State of one service's container.
#[derive(Clone, Debug)]
pub struct ServiceStatus {
    pub service: String,
    pub container_id: String,
    /// `running`, `exited`, `restarting`, …
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or `None` without a healthcheck.
    pub health: Option<String>,
    pub exit_code: Option<i64>,
    pub restart_count: i64,
}

/// `service → container port → host address`.
pub type Endpoints = BTreeMap<String, BTreeMap<u16, SocketAddr>>;

/// Runs one app's containers. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ContainerManager {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    app: AppDeployment,
    config: ManagerConfig,
    /// Set by `down`, so the watcher does not restart what is being stopped.
    stopping: AtomicBool,
    /// Container ids being removed by the manager (the watcher leaves them alone).
    removing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Image tarballs already loaded by this manager.
    loaded: tokio::sync::Mutex<std::collections::BTreeSet<std::path::PathBuf>>,
    /// Each service's image content id, once resolved (and measured by the caller).
    resolved: std::sync::Mutex<Option<BTreeMap<String, pins::ResolvedImage>>>,
}

/// Runs `fut` with a timeout, mapping both failure kinds to a [`ContainerError`].
async fn bounded<T>(
    step: &'static str,
    service: &str,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ContainerError::Docker {
            step,
            service: service.to_string(),
            source,
        }),
        Err(_) => Err(ContainerError::Timeout {
            step,
            service: service.to_string(),
            after,
        }),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn label_filter(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )])
}

/// The short app-id prefix used in Docker object names.
pub fn name_prefix(app_id: &AppId) -> String {
    format!("teegate-{}", &app_id.to_hex()[..16])
}

/// The app's network name: `teegate-<first 16 hex of the app id>`.
pub fn network_name(app_id: &AppId) -> String {
    name_prefix(app_id)
}

/// The Docker name of a service's container.
pub fn container_name(app_id: &AppId, service: &str) -> String {
    format!("{}-{service}", name_prefix(app_id))
}

/// The Docker name of a named volume.
pub fn volume_name(app_id: &AppId, volume: &str) -> String {
    format!("{}_{volume}", name_prefix(app_id))
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn restart_policy(r: Restart) -> RestartPolicy {
    let (name, max) = match r {
        Restart::No => (RestartPolicyNameEnum::NO, None),
        Restart::Always => (RestartPolicyNameEnum::ALWAYS, None),
        Restart::UnlessStopped => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
        Restart::OnFailure { max_retries } => (
            RestartPolicyNameEnum::ON_FAILURE,
            max_retries.map(i64::from),
        ),
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: max,
    }
}

fn health_config(h: &Healthcheck) -> HealthConfig {
    match h {
        Healthcheck::Disabled => HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        },
        Healthcheck::Check {
            test,
            interval,
            timeout,
            start_period,
            retries,
        } => HealthConfig {
            test: test.as_ref().map(|t| match t {
                HealthTest::Cmd(args) => std::iter::once("CMD".to_string())
                    .chain(args.iter().cloned())
                    .collect(),
                HealthTest::Shell(cmd) => vec!["CMD-SHELL".into(), cmd.clone()],
            }),
            interval: interval.map(nanos),
            timeout: timeout.map(nanos),
            start_period: start_period.map(nanos),
            retries: retries.map(i64::from),
            start_interval: None,
        },
    }
}

/// Picks a free TCP port on `ip` (the kernel chooses; the listener is closed again).
fn pick_port(ip: Ipv4Addr) -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?.port())
}

impl ContainerManager {
    pub fn new(docker: Docker, app: AppDeployment, config: ManagerConfig) -> Self {
        ContainerManager {
            inner: Arc::new(Inner {
                docker,
                app,
                config,
                stopping: AtomicBool::new(false),
                removing: Default::default(),
                loaded: Default::default(),
                resolved: Default::default(),
            }),
        }
    }

    pub fn app(&self) -> &AppDeployment {
        &self.inner.app
    }

    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    fn app_hex(&self) -> String {
        self.inner.app.app_id.to_hex()
    }

    fn service(&self, name: &str) -> Result<&ServiceSpec> {
        self.inner
            .app
            .spec
            .services
            .get(name)
            .ok_or_else(|| ContainerError::UnknownService {
                service: name.to_string(),
            })
    }

    /// Brings the app up: network, volumes, then each service in dependency order, adopting
    /// containers that already run this compose hash.
    pub async fn up(&self) -> Result<Vec<ServiceReport>> {
        self.inner.stopping.store(false, Ordering::SeqCst);
        let app = &self.inner.app;
        info!(app_id = %app.app_id, compose_hash = %app.compose_hash, services = app.spec.services.len(), "bringing the app up");
        // Images first: every one is bound by content before any container starts.
        let cached = self
            .inner
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let images = match cached {
            Some(r) => r,
            None => self.resolve_images().await?,
        };
        self.ensure_network().await?;
        self.ensure_volumes().await?;

        let existing = self.list_app_containers().await?;
        let mut by_service: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for c in existing {
            let labels = c.labels.unwrap_or_default();
            let (Some(id), Some(service)) = (c.id, labels.get(LABEL_SERVICE).cloned()) else {
                continue;
            };
            let hash = labels.get(LABEL_COMPOSE_HASH).cloned().unwrap_or_default();
            // A container is adopted only when it runs the measured image; one from any
            // other image counts as another compose and is replaced.
            let image_ok = images.get(&service).is_some_and(|r| {
                c.image_id.as_deref().and_then(pins::ImageId::parse) == Some(r.id)
            });
            let hash = if image_ok {
                hash
            } else {
                format!("{hash} (image differs from the measured one)")
            };
            by_service.entry(service).or_default().push((id, hash));
        }
        // Containers of services this compose no longer has.
        for (service, containers) in &by_service {
            if !app.spec.services.contains_key(service) {
                for (id, _) in containers {
                    info!(service, container = %short(id), "removing container of a service no longer in the compose");
                    self.remove_container(service, id).await?;
                }
            }
        }

        let mut reports = Vec::new();
        let hash_hex = app.compose_hash.to_hex();
        for name in &app.spec.start_order {
            let svc = self.service(name)?;
            self.wait_dependencies(svc).await?;
            let found = by_service.remove(name).unwrap_or_default();
            let (same, other): (Vec<_>, Vec<_>) =
                found.into_iter().partition(|(_, h)| *h == hash_hex);
            let mut outcome = if other.is_empty() {
                Outcome::Created
            } else {
                Outcome::Recreated
            };
            for (id, h) in &other {
                info!(service = %name, container = %short(id), old_hash = %h, "removing container from another compose hash");
                self.remove_container(name, id).await?;
            }
            let mut same = same.into_iter();
            let adopted = same.next();
            for (id, _) in same {
                warn!(service = %name, container = %short(&id), "removing duplicate container");
                self.remove_container(name, &id).await?;
            }
            let id = match adopted {
                Some((id, _)) => {
                    outcome = Outcome::Adopted;
                    info!(service = %name, container = %short(&id), "adopting running container");
                    id
                }
                None => {
                    let image = images
                        .get(name)
                        .ok_or_else(|| ContainerError::ImageMismatch {
                            service: name.clone(),
                            image: svc.image.clone(),
                            expected: "a resolved image".into(),
                            found: "none".into(),
                        })?;
                    self.create_container(svc, &image.id).await?
                }
            };
            self.start_if_needed(name, &id).await?;
            reports.push(ServiceReport {
                service: name.clone(),
                container_id: id,
                outcome,
            });
        }
        info!(app_id = %app.app_id, "app is up");
        Ok(reports)
    }

    async fn ensure_network(&self) -> Result<()> {
        let name = network_name(&self.inner.app.app_id);
        let t = self.inner.config.step_timeout;
        let docker = &self.inner.docker;
        match tokio::time::timeout(
            t,
            docker.inspect_network(
                &name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            ),
        )
        .await
        {
            Ok(Ok(net)) => {
                let owner = net.labels.unwrap_or_default().get(LABEL_APP_ID).cloned();
                if owner.as_deref() != Some(self.app_hex().as_str()) {
                    return Err(ContainerError::Conflict {
                        step: "create network",
                        service: "-".into(),
                        message: format!("network {name} exists and belongs to app {owner:?}"),
                    });
                }
                debug!(network = %name, "network exists");
                return Ok(());
            }
            Ok(Err(e)) if is_not_found(&e) => {}
            Ok(Err(source)) => {
                return Err(ContainerError::Docker {
                    step: "inspect network",
                    service: "-".into(),
                    source,
                })
            }
            Err(_) => {
                return Err(ContainerError::Timeout {
                    step: "inspect network",
                    service: "-".into(),
                    after: t,
                })
            }
        }
        let req = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(self.app_labels()),
            ..Default::default()
        };
        bounded("create network", "-", t, docker.create_network(req)).await?;
        info!(network = %name, "created app network");
        Ok(())
    }

    fn app_labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_APP_ID.to_string(), self.app_hex()),
            (
                LABEL_COMPOSE_HASH.to_string(),
                self.inner.app.compose_hash.to_hex(),
            ),
        ])
    }

    async fn ensure_volumes(&self) -> Result<()> {
        for v in &self.inner.app.spec.volumes {
            if self.inner.app.volume_dirs.contains_key(v) {
                continue;
            }
            let name = volume_name(&self.inner.app.app_id, v);
            let mut labels = HashMap::from([(LABEL_APP_ID.to_string(), self.app_hex())]);
            labels.insert("teegate.volume".into(), v.clone());
            let req = VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(labels),
                ..Default::default()
            };
            // Creating an existing local volume returns it unchanged.
            bounded(
                "create volume",
                "-",
                self.inner.config.step_timeout,
                self.inner.docker.create_volume(req),
            )
            .await?;
            debug!(volume = %name, "volume ready");
        }
        Ok(())
    }

    async fn list_app_containers(&self) -> Result<Vec<bollard::models::ContainerSummary>> {
        list_containers(
            &self.inner.docker,
            &self.app_hex(),
            self.inner.config.step_timeout,
        )
        .await
    }

    async fn inspect(&self, service: &str, id: &str) -> Result<ContainerInspectResponse> {
        bounded(
            "inspect container",
            service,
            self.inner.config.step_timeout,
            self.inner.docker.inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            ),
        )
        .await
    }

    async fn remove_container(&self, service: &str, id: &str) -> Result<()> {
        self.mark_removing(id, true);
        let r = remove_one(&self.inner.docker, service, id, &self.inner.config).await;
        self.mark_removing(id, false);
        r
    }

    fn mark_removing(&self, id: &str, on: bool) {
        if let Ok(mut set) = self.inner.removing.lock() {
            if on {
                set.insert(id.to_string());
            } else {
                set.remove(id);
            }
        }
    }

    pub(crate) fn is_removing(&self, id: &str) -> bool {
        self.inner
            .removing
            .lock()
            .map(|s| s.contains(id))
            .unwrap_or(false)
    }

    async fn start_if_needed(&self, service: &str, id: &str) -> Result<()> {
        let info = self.inspect(service, id).await?;
        let status = info.state.and_then(|s| s.status);
        if matches!(
            status,
            Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::RESTARTING)
        ) {
            return Ok(());
        }
        bounded(
            "start container",
            service,
            self.inner.config.step_timeout,
            self.inner
                .docker
                .start_container(id, None::<StartContainerOptions>),
        )
        .await?;
        info!(service, container = %short(id), "started container");
        Ok(())
    }

    /// Creates `svc`'s container from the image content id `image` (never the tag, so a
    /// retag after the id was measured changes nothing).
    async fn create_container(&self, svc: &ServiceSpec, image: &pins::ImageId) -> Result<String> {
        let app = &self.inner.app;
        let cfg = &self.inner.config;
        let net = network_name(&app.app_id);
        let mut labels: HashMap<String, String> = svc
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend(self.app_labels());
        labels.insert(LABEL_SERVICE.into(), svc.name.clone());

        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for p in &svc.ports {
            let host_port = pick_port(cfg.publish_ip).map_err(|e| ContainerError::Conflict {
                step: "pick host port",
                service: svc.name.clone(),
                message: e.to_string(),
            })?;
            let key = format!("{}/tcp", p.container_port);
            exposed.push(key.clone());
            port_bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: Some(cfg.publish_ip.to_string()),
                    host_port: Some(host_port.to_string()),
                }]),
            );
        }
        let mounts: Vec<Mount> = svc
            .volumes
            .iter()
            .map(|v| match v {
                VolumeMount::Named {
                    name,
                    target,
                    read_only,
                } => match app.volume_dirs.get(name) {
                    Some(dir) => Mount {
                        typ: Some(MountType::BIND),
                        source: Some(dir.display().to_string()),
                        target: Some(target.clone()),
                        read_only: Some(*read_only),
                        ..Default::default()
                    },
                    None => Mount {
                        typ: Some(MountType::VOLUME),
                        source: Some(volume_name(&app.app_id, name)),
                        target: Some(target.clone()),
                        read_only: Some(*read_only),
                        ..Default::default()
                    },
                },
                VolumeMount::Anonymous { target } => Mount {
                    typ: Some(MountType::VOLUME),
                    target: Some(target.clone()),
                    ..Default::default()
                },
                VolumeMount::Bind {
                    source,
                    target,
                    read_only,
                } => Mount {
                    typ: Some(MountType::BIND),
                    source: Some(source.display().to_string()),
                    target: Some(target.clone()),
                    read_only: Some(*read_only),
                    ..Default::default()
                },
            })
            .collect();
        let host_config = HostConfig {
            port_bindings: Some(port_bindings),
            restart_policy: Some(restart_policy(svc.restart)),
            mounts: (!mounts.is_empty()).then_some(mounts),
            network_mode: Some(net.clone()),
            readonly_rootfs: Some(svc.read_only),
            init: svc.init,
            cap_drop: (!svc.cap_drop.is_empty()).then(|| svc.cap_drop.clone()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: svc.command.clone(),
            entrypoint: svc.entrypoint.clone(),
            env: Some(
                svc.environment
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck: svc.healthcheck.as_ref().map(health_config),
            working_dir: svc.working_dir.clone(),
            user: svc.user.clone(),
            hostname: svc.hostname.clone(),
            stop_signal: svc.stop_signal.clone(),
            stop_timeout: svc.stop_grace_period.map(|d| d.as_secs() as i64),
            tty: Some(svc.tty),
            open_stdin: Some(svc.stdin_open),
            host_config: Some(host_config),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    net,
                    EndpointSettings {
                        aliases: Some(vec![svc.name.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let name = container_name(&app.app_id, &svc.name);
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = bounded(
            "create container",
            &svc.name,
            cfg.step_timeout,
            self.inner.docker.create_container(Some(opts), body),
        )
        .await
        .map_err(|e| match e {
            ContainerError::Docker {
                source:
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 409,
                        message,
                    },
                ..
            } => ContainerError::Conflict {
                step: "create container",
                service: svc.name.clone(),
                message: format!(
                    "a container named {name} exists but is not this app's: {message}"
                ),
            },
            e => e,
        })?;
        for w in &created.warnings {
            warn!(service = %svc.name, warning = %w, "Docker warning on create");
        }
        info!(service = %svc.name, container = %short(&created.id), image = %svc.image, id = %image, "created container");
        Ok(created.id)
    }

    async fn container_of(&self, service: &str) -> Result<Option<String>> {
        let list = list_containers_of(
            &self.inner.docker,
            &self.app_hex(),
            Some(service),
            self.inner.config.step_timeout,
        )
        .await?;
        Ok(list.into_iter().find_map(|c| c.id))
    }

    async fn wait_dependencies(&self, svc: &ServiceSpec) -> Result<()> {
        for (dep, cond) in &svc.depends_on {
            if *cond != DependsCondition::Healthy {
                continue;
            }
            info!(service = %svc.name, dependency = %dep, "waiting for dependency to be healthy");
            let unhealthy = |message: String| ContainerError::Unhealthy {
                service: svc.name.clone(),
                dependency: dep.clone(),
                message,
            };
            let id = self
                .container_of(dep)
                .await?
                .ok_or_else(|| unhealthy("it has no container".into()))?;
            let deadline = tokio::time::Instant::now() + self.inner.config.healthy_timeout;
            loop {
                let info = self.inspect(dep, &id).await?;
                let state = info.state.unwrap_or_default();
                let health = state.health.as_ref().and_then(|h| h.status);
                match health {
                    Some(HealthStatusEnum::HEALTHY) => break,
                    Some(HealthStatusEnum::UNHEALTHY) => {
                        let last = state
                            .health
                            .and_then(|h| h.log)
                            .and_then(|l| l.last().and_then(|r| r.output.clone()))
                            .unwrap_or_default();
                        return Err(unhealthy(format!(
                            "it is unhealthy (last check: {})",
                            last.trim()
                        )));
                    }
                    None | Some(HealthStatusEnum::NONE) | Some(HealthStatusEnum::EMPTY) => {
                        return Err(unhealthy(
                            "it has no healthcheck (condition service_healthy needs one)".into(),
                        ))
                    }
                    Some(HealthStatusEnum::STARTING) => {}
                }
                if matches!(
                    state.status,
                    Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD)
                ) {
                    return Err(unhealthy(format!(
                        "it exited with code {}",
                        state.exit_code.unwrap_or(-1)
                    )));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(unhealthy(format!(
                        "not healthy within {:?}",
                        self.inner.config.healthy_timeout
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            info!(service = %svc.name, dependency = %dep, "dependency is healthy");
        }
        Ok(())
    }

    /// `service → container port → host address` of the running app, read from Docker
    /// (the host ports are fixed at creation, so they survive container restarts).
    pub async fn endpoints(&self) -> Result<Endpoints> {
        let mut out = Endpoints::new();
        for c in self.list_app_containers().await? {
            let labels = c.labels.unwrap_or_default();
            let (Some(id), Some(service)) = (c.id, labels.get(LABEL_SERVICE)) else {
                continue;
            };
            let info = self.inspect(service, &id).await?;
            let bindings = info
                .host_config
                .and_then(|h| h.port_bindings)
                .unwrap_or_default();
            let entry = out.entry(service.clone()).or_default();
            for (key, binds) in bindings {
                let Some(cport) = key.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok())
                else {
                    continue;
                };
                let Some(b) = binds.and_then(|b| b.into_iter().next()) else {
                    continue;
                };
                let ip: IpAddr = b
                    .host_ip
                    .as_deref()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                if let Some(hp) = b.host_port.as_deref().and_then(|s| s.parse::<u16>().ok()) {
                    entry.insert(cport, SocketAddr::new(ip, hp));
                }
            }
        }
        Ok(out)
    }

    /// The host address of container port `port` (of the one service that publishes it).
    pub async fn endpoint_for_port(&self, port: u16) -> Result<Option<SocketAddr>> {
        let Some(svc) = self.inner.app.spec.service_for_port(port) else {
            return Ok(None);
        };
        Ok(self
            .endpoints()
            .await?
            .get(&svc.name)
            .and_then(|m| m.get(&port))
            .copied())
    }

    /// The state of each of the app's containers.
    pub async fn status(&self) -> Result<Vec<ServiceStatus>> {
        let mut out = Vec::new();
        for c in self.list_app_containers().await? {
            let labels = c.labels.unwrap_or_default();
            let (Some(id), Some(service)) = (c.id, labels.get(LABEL_SERVICE)) else {
                continue;
            };
            let info = self.inspect(service, &id).await?;
            let state = info.state.unwrap_or_default();
            out.push(ServiceStatus {
                service: service.clone(),
                container_id: id,
                state: state.status.map(|s| s.to_string()).unwrap_or_default(),
                health: state.health.and_then(|h| h.status).map(|s| s.to_string()),
                exit_code: state.exit_code,
                restart_count: info.restart_count.unwrap_or(0),
            });
        }
        out.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(out)
    }

    /// Stops and removes the app's containers (dependents first) and its network; its
    /// named volumes too when `remove_volumes`. The watcher stops restarting things.
    pub async fn down(&self, remove_volumes: bool) -> Result<()> {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let app = &self.inner.app;
        info!(app_id = %app.app_id, remove_volumes, "taking the app down");
        for name in app.spec.start_order.iter().rev() {
            if let Some(id) = self.container_of(name).await? {
                self.remove_container(name, &id).await?;
            }
        }
        remove_app(
            &self.inner.docker,
            &app.app_id,
            remove_volumes,
            &self.inner.config,
        )
        .await
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

async fn list_containers(
    docker: &Docker,
    app_hex: &str,
    t: Duration,
) -> Result<Vec<bollard::models::ContainerSummary>> {
    list_containers_of(docker, app_hex, None, t).await
}

async fn list_containers_of(
    docker: &Docker,
    app_hex: &str,
    service: Option<&str>,
    t: Duration,
) -> Result<Vec<bollard::models::ContainerSummary>> {
    let mut pairs = vec![(LABEL_APP_ID, app_hex)];
    if let Some(s) = service {
        pairs.push((LABEL_SERVICE, s));
    }
    let opts = ListContainersOptions {
        all: true,
        filters: Some(label_filter(&pairs)),
        ..Default::default()
    };
    bounded(
        "list containers",
        service.unwrap_or("-"),
        t,
        docker.list_containers(Some(opts)),
    )
    .await
}

async fn remove_one(docker: &Docker, service: &str, id: &str, cfg: &ManagerConfig) -> Result<()> {
    let grace = cfg.stop_grace;
    let stop = docker.stop_container(
        id,
        Some(StopContainerOptions {
            t: Some(grace.as_secs() as i32),
            signal: None,
        }),
    );
    match tokio::time::timeout(grace + cfg.step_timeout, stop).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if is_not_found(&e) => return Ok(()),
        // 304: already stopped; other errors: removal with force still kills it.
        Ok(Err(e)) => debug!(service, error = %e, "stop container"),
        Err(_) => warn!(service, container = %short(id), "stop timed out; removing with force"),
    }
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match tokio::time::timeout(cfg.step_timeout, docker.remove_container(id, Some(opts))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if is_not_found(&e) => {}
        Ok(Err(source)) => {
            return Err(ContainerError::Docker {
                step: "remove container",
                service: service.to_string(),
                source,
            })
        }
        Err(_) => {
            return Err(ContainerError::Timeout {
                step: "remove container",
                service: service.to_string(),
                after: cfg.step_timeout,
            })
        }
    }
    info!(service, container = %short(id), "removed container");
    Ok(())
}

/// Removes every container, the network and (when `remove_volumes`) the named volumes
/// labelled with `app_id`, without needing the compose. Used by `down`, and to clean up.
pub async fn remove_app(
    docker: &Docker,
    app_id: &AppId,
    remove_volumes: bool,
    cfg: &ManagerConfig,
) -> Result<()> {
    let hex = app_id.to_hex();
    let t = cfg.step_timeout;
    for c in list_containers(docker, &hex, t).await? {
        let service = c
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE).cloned())
            .unwrap_or_default();
        if let Some(id) = c.id {
            remove_one(docker, &service, &id, cfg).await?;
        }
    }
    let nets = bounded(
        "list networks",
        "-",
        t,
        docker.list_networks(Some(ListNetworksOptions {
            filters: Some(label_filter(&[(LABEL_APP_ID, &hex)])),
        })),
    )
    .await?;
    for n in nets {
        let Some(id) = n.id else { continue };
        match tokio::time::timeout(t, docker.remove_network(&id)).await {
            Ok(Ok(())) => info!(network = n.name.as_deref().unwrap_or(""), "removed network"),
            Ok(Err(e)) if is_not_found(&e) => {}
            Ok(Err(source)) => {
                return Err(ContainerError::Docker {
                    step: "remove network",
                    service: "-".into(),
                    source,
                })
            }
            Err(_) => {
                return Err(ContainerError::Timeout {
                    step: "remove network",
                    service: "-".into(),
                    after: t,
                })
            }
        }
    }
    if remove_volumes {
        let vols = bounded(
            "list volumes",
            "-",
            t,
            docker.list_volumes(Some(ListVolumesOptions {
                filters: Some(label_filter(&[(LABEL_APP_ID, &hex)])),
            })),
        )
        .await?;
        for v in vols.volumes.unwrap_or_default() {
            bounded(
                "remove volume",
                "-",
                t,
                docker.remove_volume(&v.name, None::<RemoveVolumeOptions>),
            )
            .await?;
            info!(volume = %v.name, "removed volume");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_use_the_app_id_prefix() {
        let id = AppId([0xab; 20]);
        assert_eq!(network_name(&id), "teegate-abababababababab");
        assert_eq!(container_name(&id, "web"), "teegate-abababababababab-web");
        assert_eq!(volume_name(&id, "data"), "teegate-abababababababab_data");
    }

    #[test]
    fn maps_restart_and_health() {
        let r = restart_policy(Restart::OnFailure {
            max_retries: Some(3),
        });
        assert_eq!(r.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(r.maximum_retry_count, Some(3));
        let h = health_config(&Healthcheck::Check {
            test: Some(HealthTest::Shell("true".into())),
            interval: Some(Duration::from_millis(500)),
            timeout: None,
            start_period: None,
            retries: Some(2),
        });
        assert_eq!(h.test.unwrap(), ["CMD-SHELL", "true"]);
        assert_eq!(h.interval, Some(500_000_000));
        assert_eq!(
            health_config(&Healthcheck::Disabled).test.unwrap(),
            ["NONE"]
        );
    }
}
