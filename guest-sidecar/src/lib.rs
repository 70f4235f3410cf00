//! # guest-sidecar: teegate's agent inside each Confidential VM
//!
//! Measures the app into RTMR3, fetches its keys from the KMS over mutual RA-TLS, runs
//! its containers through the Docker Engine API, serves the guest API on a Unix socket
//! and the RA-TLS front, and registers with the gateways.
//!
//! ```text
//! app-compose.json ──▶ compose::LoadedAppCompose ── ComposeHash, AppId
//!                        │ docker_compose (YAML, env-interpolated)
//!                        ▼
//!                      compose::ComposeSpec ──▶ containers::ContainerManager ──▶ Docker (bollard)
//!                        images pinned (containers::pins) ┘   named volumes ◀── storage (gocryptfs,
//!                                                                                KMS disk key)
//!                                                 up / watch / logs / endpoints / down
//!                                                 │ service → container port → 127.0.0.1:port
//!                                                 ▼
//!                      front (RA-TLS, SNI → exposed port) ◀── register (gateways, heartbeat)
//!                      guest_api (Unix socket for the containers)
//!                      dstack_api (dstack's guest API, for apps written with dstack's SDKs)
//! ```
//!
//! - [`compose`]: the `app-compose.json` format, the compose hash and app id, and the
//!   supported docker compose subset ([`compose::spec`]).
//! - [`boot`]: the boot flow. With `runtime = "none"` (development only, simulated
//!   quotes) no containers run and the front forwards to the config's `upstreams`.
//! - [`storage`]: named volumes on gocryptfs keyed by the KMS disk key.
//! - [`dstack_api`]: dstack's guest API (`/var/run/dstack.sock`), sharing the guest API's
//!   measurer, app CA and bounds; [`compose::dstack`] reads dstack's app-compose form.
//! - [`containers`]: the container manager (network, volumes, images, containers in
//!   dependency order, adoption by label, restart watcher, logs, teardown).

pub mod boot;
pub mod compose;
pub mod containers;
pub mod dstack_api;
pub mod front;
pub mod guest_api;
pub mod register;
pub mod storage;
