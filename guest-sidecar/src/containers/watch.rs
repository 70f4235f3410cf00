//! The watcher: follows Docker's events for the app's containers, reports them, and
//! restarts a container that stopped when its restart policy says it should run but Docker
//! did not restart it (Docker leaves containers stopped by `docker kill` or `docker stop`
//! alone, whatever their policy; in a CVM nothing but the sidecar should stop them).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{ContainerStateStatusEnum, EventMessage};
use bollard::query_parameters::{EventsOptions, StartContainerOptions};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{is_not_found, ContainerManager, LABEL_APP_ID, LABEL_COMPOSE_HASH, LABEL_SERVICE};
use crate::compose::Restart;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerEventKind {
    Started,
    /// The container's main process ended.
    Exited {
        exit_code: i64,
    },
    /// The kernel killed a process for lack of memory.
    OutOfMemory,
    /// `healthy` / `unhealthy` / `starting`.
    Health(String),
    /// The sidecar started the container again after Docker did not.
    RestartedBySidecar,
    /// The sidecar could not restart it.
    RestartFailed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    pub service: String,
    pub container_id: String,
    pub kind: ContainerEventKind,
}

/// A running watcher; dropping it stops watching (and restarting).
pub struct Watcher {
    rx: mpsc::Receiver<ContainerEvent>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// The next event; events are dropped when they are not read fast enough (1024 kept).
    pub async fn recv(&mut self) -> Option<ContainerEvent> {
        self.rx.recv().await
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long to wait for Docker to restart a container itself before the sidecar does.
const DOCKER_GRACE: Duration = Duration::from_millis(1000);

impl ContainerManager {
    /// Starts watching the app's containers.
    pub fn watch(&self) -> Watcher {
        let (tx, rx) = mpsc::channel(1024);
        let mgr = self.clone();
        let task = tokio::spawn(async move { mgr.watch_loop(tx).await });
        Watcher { rx, task }
    }

    async fn watch_loop(self, tx: mpsc::Sender<ContainerEvent>) {
        let app_hex = self.app_hex();
        let mut since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut sidecar_restarts: BTreeMap<String, u32> = BTreeMap::new();
        let mut backoff = Duration::from_millis(200);
        loop {
            let filters = HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "label".to_string(),
                    vec![format!("{LABEL_APP_ID}={app_hex}")],
                ),
            ]);
            let opts = EventsOptions {
                since: Some(since.to_string()),
                until: None,
                filters: Some(filters),
            };
            let mut events = self.docker().events(Some(opts));
            debug!(app_id = %app_hex, "watching container events");
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        backoff = Duration::from_millis(200);
                        if let Some(t) = ev.time {
                            since = since.max(t);
                        }
                        self.handle_event(ev, &tx, &mut sidecar_restarts);
                    }
                    Err(e) => {
                        warn!(error = %e, "Docker event stream failed; reconnecting");
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    fn handle_event(
        &self,
        ev: EventMessage,
        tx: &mpsc::Sender<ContainerEvent>,
        sidecar_restarts: &mut BTreeMap<String, u32>,
    ) {
        let actor = ev.actor.unwrap_or_default();
        let attrs = actor.attributes.unwrap_or_default();
        let (Some(id), Some(service)) = (actor.id, attrs.get(LABEL_SERVICE).cloned()) else {
            return;
        };
        let action = ev.action.unwrap_or_default();
        let kind = match action.as_str() {
            "start" => ContainerEventKind::Started,
            "die" => ContainerEventKind::Exited {
                exit_code: attrs
                    .get("exitCode")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(-1),
            },
            "oom" => ContainerEventKind::OutOfMemory,
            a if a.starts_with("health_status") => {
                ContainerEventKind::Health(a.rsplit(": ").next().unwrap_or(a).trim().to_string())
            }
            _ => return,
        };
        info!(service = %service, container = %super::short(&id), event = ?kind, "container event");
        let _ = tx.try_send(ContainerEvent {
            service: service.clone(),
            container_id: id.clone(),
            kind: kind.clone(),
        });
        let ContainerEventKind::Exited { exit_code } = kind else {
            return;
        };
        let current_hash = self.app().compose_hash.to_hex();
        if attrs.get(LABEL_COMPOSE_HASH) != Some(&current_hash) {
            return;
        }
        let Some(svc) = self.app().spec.services.get(&service) else {
            return;
        };
        let count = sidecar_restarts.entry(service.clone()).or_insert(0);
        let wanted = match svc.restart {
            Restart::No => false,
            Restart::Always | Restart::UnlessStopped => true,
            Restart::OnFailure { max_retries } => {
                exit_code != 0 && max_retries.is_none_or(|m| *count < m)
            }
        };
        if !wanted || self.is_stopping() || self.is_removing(&id) {
            return;
        }
        *count = count.saturating_add(1);
        let mgr = self.clone();
        let tx = tx.clone();
        tokio::spawn(async move { mgr.restart_if_docker_did_not(service, id, tx).await });
    }

    async fn restart_if_docker_did_not(
        self,
        service: String,
        id: String,
        tx: mpsc::Sender<ContainerEvent>,
    ) {
        let deadline = tokio::time::Instant::now() + DOCKER_GRACE;
        loop {
            if self.is_stopping() || self.is_removing(&id) {
                return;
            }
            let t = self.config().step_timeout;
            let info = match tokio::time::timeout(
                t,
                self.docker().inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                ),
            )
            .await
            {
                Ok(Ok(info)) => info,
                Ok(Err(e)) if is_not_found(&e) => return,
                Ok(Err(e)) => {
                    warn!(service = %service, error = %e, "inspect after exit");
                    return;
                }
                Err(_) => return,
            };
            let status = info.state.and_then(|s| s.status);
            if matches!(
                status,
                Some(ContainerStateStatusEnum::RUNNING)
                    | Some(ContainerStateStatusEnum::RESTARTING)
                    | Some(ContainerStateStatusEnum::REMOVING)
            ) {
                debug!(service = %service, "Docker restarted the container itself");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.is_stopping() || self.is_removing(&id) {
            return;
        }
        let t = self.config().step_timeout;
        let kind = match tokio::time::timeout(
            t,
            self.docker()
                .start_container(&id, None::<StartContainerOptions>),
        )
        .await
        {
            Ok(Ok(())) => {
                info!(service = %service, container = %super::short(&id), "restarted container per its restart policy");
                ContainerEventKind::RestartedBySidecar
            }
            Ok(Err(e)) => {
                warn!(service = %service, error = %e, "restart failed");
                ContainerEventKind::RestartFailed(e.to_string())
            }
            Err(_) => ContainerEventKind::RestartFailed(format!("timed out after {t:?}")),
        };
        let _ = tx.try_send(ContainerEvent {
            service,
            container_id: id,
            kind,
        });
    }
}
