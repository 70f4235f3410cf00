//! The boot flow, step by step; each failure stops the boot and names its step.
//!
//! ```text
//! compose  read app-compose.json → compose hash, app id
//! measure  RTMR3 ← compose-hash, app-id, instance-id, key-provider (configfs-tsm or simulated)
//! kms      mutual RA-TLS to the KMS → app CA, disk key, env key, app/<path> keys
//! env      decrypt the encrypted environment (allowed names only)
//! containers  create / adopt the compose's containers on Docker (runtime = "none",
//!          development only: no containers, the configured upstreams instead)
//! serve    RA-TLS front (cert signed by the app CA) + guest API socket
//! register with every gateway, renewed on a heartbeat
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use config::SidecarConfig;
use ratls::cert::{issue, CertAuthority, CertProfile, Identity};
use ratls::eventlog::names;
use ratls::provider::{Measurer, QuoteProvider, SimulatedProvider, TsmProvider};
use ratls::{CachingVerifier, InstanceId};
use sha2::Digest;
use tokio::sync::watch;

use crate::compose::{ComposeOptions, KeyProvider, LoadedAppCompose};
use crate::containers::pins::ResolvedImage;
use crate::containers::{connect_docker, AppDeployment, ContainerManager, ManagerConfig};
use crate::dstack_api::{self, AppK256, DstackState};
use crate::front::{self, CertSlot, FrontLimits, FrontResolver, Routes};
use crate::guest_api::{self, GuestState, KeySource};
use crate::register::{GatewayTarget, Registrar, Registration};
use crate::storage;

#[derive(Debug, thiserror::Error)]
#[error("boot step {step}: {message}")]
pub struct BootError {
    pub step: &'static str,
    pub message: String,
}

fn step(step: &'static str) -> impl Fn(String) -> BootError {
    move |message| BootError { step, message }
}

/// Keys under the app's KMS-released key material.
struct DerivedKeys(kms::secret::SecretBytes);

impl KeySource for DerivedKeys {
    fn derive(&self, path: &str, purpose: &str) -> [u8; 32] {
        // HMAC-like domain separation: the disk key never leaves the sidecar as such.
        let mut h = sha2::Sha256::new();
        h.update(b"teegate-guest-key\0");
        h.update(self.0.expose());
        h.update(path.as_bytes());
        h.update([0]);
        h.update(purpose.as_bytes());
        h.finalize().into()
    }
}

/// A booted instance: what it serves, and how to stop it.
pub struct Running {
    pub identity: Identity,
    pub front_addr: SocketAddr,
    pub socket_path: std::path::PathBuf,
    pub containers: Option<ContainerManager>,
    stop: watch::Sender<bool>,
    rotator: Arc<Rotator>,
}

/// Rotates the instance certificate: issue, register with every gateway, then serve.
struct Rotator {
    measurer: Arc<Measurer>,
    identity: Identity,
    app_ca: Option<Arc<CertAuthority>>,
    names: Vec<String>,
    validity: Duration,
    slot: Arc<CertSlot>,
    cert_pem: Arc<RwLock<String>>,
    registrar: Arc<Registrar>,
    gateways: tokio::sync::Mutex<Vec<GatewayTarget>>,
    /// What registrations send (client certificate and front certificates).
    registration: watch::Sender<Registration>,
    heartbeat: Duration,
    stopped: watch::Receiver<bool>,
}

impl Rotator {
    async fn rotate(&self) -> Result<(), BootError> {
        let s = step("rotate");
        let next = issue(
            &self.measurer,
            &self.identity,
            &CertProfile::server_and_client(self.names.clone(), self.validity),
            self.app_ca.as_deref(),
        )
        .map_err(|e| s(e.to_string()))?;
        let current = self.registration.borrow().clone();
        // Announce the new certificate (alongside the current one) before serving it.
        let mut announce = current.clone();
        announce.request.front_certs = vec![hex::encode(&next.cert_der)];
        for gw in self.gateways.lock().await.iter() {
            self.registrar
                .register(gw, &announce)
                .await
                .map_err(|e| s(e.to_string()))?;
        }
        let key = front::certified_key(next.rustls_chain(), next.rustls_key())
            .map_err(|e| s(e.to_string()))?;
        self.slot.replace(key);
        *self.cert_pem.write().unwrap_or_else(|p| p.into_inner()) = next.cert_pem();
        // From now on the new certificate is the client identity; the previous one stays
        // accepted upstream until it expires, for connections the gateway already pools.
        let old_leaf = current
            .client_chain
            .first()
            .map(|c| hex::encode(c.as_ref()));
        let _ = self.registration.send(Registration {
            client_chain: next.rustls_chain(),
            client_key: Arc::new(next.rustls_key()),
            request: gateway::api::RegisterRequest {
                front_certs: old_leaf.into_iter().collect(),
                ..current.request
            },
        });
        tracing::info!("instance certificate rotated");
        Ok(())
    }

    /// Rotates at two thirds of each certificate's validity; retries failures with back-off.
    async fn run(self: Arc<Self>) {
        let mut stopped = self.stopped.clone();
        let mut wait = self.validity.mul_f64(2.0 / 3.0);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => return,
            }
            wait = match self.rotate().await {
                Ok(()) => self.validity.mul_f64(2.0 / 3.0),
                Err(e) => {
                    tracing::warn!(error = %e, "certificate rotation failed; retrying");
                    Duration::from_secs(30).min(self.validity / 10)
                }
            };
        }
    }
}

impl Running {
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// The RTMR3 event log as measured so far.
    pub fn event_log(&self) -> ratls::eventlog::EventLog {
        self.rotator.measurer.event_log()
    }

    /// What the sidecar sends gateways when it registers.
    pub fn registration(&self) -> Registration {
        self.rotator.registration.borrow().clone()
    }

    /// Registers with one more gateway and keeps that registration alive.
    pub async fn add_gateway(&self, target: GatewayTarget) {
        let r = &self.rotator;
        r.gateways.lock().await.push(target.clone());
        tokio::spawn(r.registrar.clone().keep_registered(
            target,
            r.registration.subscribe(),
            r.heartbeat,
            r.stopped.clone(),
        ));
    }

    /// Rotates the instance certificate now (registered with every gateway first).
    pub async fn rotate_certificate(&self) -> Result<(), BootError> {
        self.rotator.rotate().await
    }
}

fn instance_id(data_dir: &Path) -> Result<InstanceId, BootError> {
    let err = step("measure");
    std::fs::create_dir_all(data_dir).map_err(|e| err(format!("{}: {e}", data_dir.display())))?;
    let path = data_dir.join("instance-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(id) = text.trim().parse::<InstanceId>() {
            return Ok(id);
        }
    }
    let id = InstanceId(rand::random());
    std::fs::write(&path, id.to_hex()).map_err(|e| err(format!("{}: {e}", path.display())))?;
    Ok(id)
}

/// Extends RTMR3 with the boot events, or — when this TD's RTMR3 already holds them from
/// an earlier run of the sidecar (saved in the data directory) — resumes that log, since
/// RTMR3 cannot be reset and extending twice would make the log unreplayable.
fn measure(
    provider: Arc<dyn QuoteProvider>,
    identity: &Identity,
    key_provider_info: &[u8],
    data_dir: &Path,
) -> Result<Measurer, BootError> {
    let m = step("measure");
    let saved_path = data_dir.join("event-log.json");
    let (quote, _) = Measurer::new(provider.clone())
        .quote(&ratls::ReportData::ZERO)
        .map_err(|e| m(e.to_string()))?;
    let rtmr3 = ratls::Quote::parse(&quote)
        .map_err(|e| m(e.to_string()))?
        .rtmr3();
    if rtmr3 != ratls::Measurement::ZERO {
        let text = std::fs::read_to_string(&saved_path).map_err(|e| {
            m(format!(
                "RTMR3 is already extended but {} is unreadable: {e}",
                saved_path.display()
            ))
        })?;
        // A log saved before teegate adopted dstack's event format ({name, payload}
        // entries, digest SHA-384(name ":" payload)) is refused, not converted: this TD's
        // RTMR3 holds the old digests, so no dstack-format log could replay to it.
        let log: ratls::eventlog::EventLog = serde_json::from_str(&text).map_err(|e| {
            m(format!(
                "{}: not a dstack-format event log ({e}); a log saved by a teegate sidecar older than the dstack event format cannot be resumed, because this TD's RTMR3 holds the old digests: restart the CVM to boot afresh",
                saved_path.display()
            ))
        })?;
        if log.replay() != rtmr3 {
            return Err(m(format!(
                "RTMR3 {rtmr3} does not match the saved event log ({}); refusing to boot",
                log.replay()
            )));
        }
        let logged = |name: &str| log.payloads(name).next().map(<[u8]>::to_vec);
        if logged(names::COMPOSE_HASH) != Some(identity.compose_hash.0.to_vec())
            || logged(names::APP_ID) != Some(identity.app_id.0.to_vec())
        {
            return Err(m(
                "this TD was booted with another app-compose.json; a TD runs one app".into(),
            ));
        }
        tracing::info!("resuming the RTMR3 event log of an earlier sidecar run in this TD");
        return Ok(Measurer::resume(provider, log));
    }
    let measurer = Measurer::new(provider);
    measurer
        .emit(names::COMPOSE_HASH, identity.compose_hash.0.to_vec())
        .map_err(|e| m(e.to_string()))?;
    measurer
        .emit(names::APP_ID, identity.app_id.0.to_vec())
        .map_err(|e| m(e.to_string()))?;
    measurer
        .emit(names::INSTANCE_ID, identity.instance_id.0.to_vec())
        .map_err(|e| m(e.to_string()))?;
    measurer
        .emit(names::KEY_PROVIDER, key_provider_info.to_vec())
        .map_err(|e| m(e.to_string()))?;
    let json = serde_json::to_string(&measurer.event_log()).map_err(|e| m(e.to_string()))?;
    std::fs::write(&saved_path, json).map_err(|e| m(format!("{}: {e}", saved_path.display())))?;
    Ok(measurer)
}

/// `KEY=VALUE` lines (comments and blank lines skipped, optional double quotes).
pub fn parse_dotenv(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=VALUE", n + 1))?;
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("line {}: bad name {k:?}", n + 1));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn pem_certs(text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect()
}

/// Records each service's image (resolved by content) and the storage kind in RTMR3
/// before anything starts, or checks a resumed log recorded exactly these.
fn measure_runtime(
    measurer: &Measurer,
    images: &BTreeMap<String, ResolvedImage>,
    start_order: &[String],
    storage_kind: &str,
    data_dir: &Path,
) -> Result<(), BootError> {
    let m = step("measure");
    let mut want: Vec<(&str, String)> = start_order
        .iter()
        .filter_map(|s| images.get(s).map(|r| (names::IMAGE, r.event_payload(s))))
        .collect();
    want.push((names::STORAGE, storage_kind.to_string()));
    let log = measurer.event_log();
    let logged: Vec<(&str, String)> = [names::IMAGE, names::STORAGE]
        .into_iter()
        .flat_map(|n| {
            log.payloads(n)
                .map(move |p| (n, String::from_utf8_lossy(p).into_owned()))
        })
        .collect();
    if !logged.is_empty() {
        if logged != want {
            let show = |v: &[(&str, String)]| {
                v.iter()
                    .map(|(n, p)| format!("{n} {p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(m(format!(
                "this TD measured other images or storage ({}) than it now has ({}); refusing to run them",
                show(&logged),
                show(&want)
            )));
        }
        return Ok(());
    }
    for (name, payload) in &want {
        measurer
            .emit(name, payload.clone().into_bytes())
            .map_err(|e| m(e.to_string()))?;
        tracing::info!(event = name, payload = %payload, "measured into RTMR3");
    }
    let saved_path = data_dir.join("event-log.json");
    let json = serde_json::to_string(&measurer.event_log()).map_err(|e| m(e.to_string()))?;
    std::fs::write(&saved_path, json).map_err(|e| m(format!("{}: {e}", saved_path.display())))
}

/// Creates (or adopts) the compose's containers; returns the manager and, per exposed
/// port, the address the container publishes it on.
async fn start_containers(
    cfg: &SidecarConfig,
    loaded: &LoadedAppCompose,
    spec: crate::compose::ComposeSpec,
    measurer: &Measurer,
    disk_key: Option<&kms::secret::SecretBytes>,
) -> Result<(Option<ContainerManager>, HashMap<u16, SocketAddr>), BootError> {
    let c = step("containers");
    // Every image pinned by content, or refused naming the service (before Docker).
    crate::containers::pins::plan(
        spec.services.values(),
        &loaded.compose.images,
        cfg.dev_allow_unpinned_images,
    )
    .map_err(|e| step("compose")(e.to_string()))?;
    let start_order = spec.start_order.clone();
    // storage: named volumes on gocryptfs under the disk key, before any container.
    let volumes: Vec<String> = spec.volumes.iter().cloned().collect();
    let (storage_kind, volume_dirs) = match disk_key {
        Some(key) => {
            let mounted = storage::mount_all(&cfg.data_dir, &volumes, key.expose())
                .map_err(|e| step("storage")(e.to_string()))?;
            (storage::KIND_GOCRYPTFS, mounted.dirs)
        }
        None => {
            if !volumes.is_empty() {
                tracing::warn!(
                    ?volumes,
                    "key_provider = none: no disk key, so the app's volumes are NOT encrypted"
                );
            }
            (storage::KIND_NONE, BTreeMap::new())
        }
    };
    let docker = connect_docker(&cfg.docker_socket, Duration::from_secs(10))
        .await
        .map_err(|e| c(e.to_string()))?;
    let manager = ContainerManager::new(
        docker,
        AppDeployment {
            app_id: loaded.app_id,
            compose_hash: loaded.compose_hash,
            spec,
            images: loaded.compose.images.clone(),
            volume_dirs,
        },
        ManagerConfig {
            allow_unpinned: cfg.dev_allow_unpinned_images,
            ..ManagerConfig::default()
        },
    );
    let images = manager
        .resolve_images()
        .await
        .map_err(|e| c(e.to_string()))?;
    measure_runtime(measurer, &images, &start_order, storage_kind, &cfg.data_dir)?;
    manager.up().await.map_err(|e| c(e.to_string()))?;
    let mut ports = HashMap::new();
    for port in &loaded.compose.exposed_ports {
        let p = port.0;
        let addr = manager
            .endpoint_for_port(p)
            .await
            .map_err(|e| c(e.to_string()))?
            .ok_or_else(|| c(format!("exposed port {p} has no published address")))?;
        ports.insert(p, addr);
    }
    tracing::info!(?ports, "containers up");
    Ok((Some(manager), ports))
}

/// `runtime = "none"` (development only, simulated quotes): no containers; each exposed
/// port goes to the service the config names for it.
fn development_upstreams(
    cfg: &SidecarConfig,
    loaded: &LoadedAppCompose,
) -> Result<HashMap<u16, SocketAddr>, BootError> {
    let c = step("containers");
    if !cfg.quote_provider.is_simulated() {
        return Err(c(
            "runtime = \"none\" needs quote_provider = \"simulated\" (development only)".into(),
        ));
    }
    let mut ports = HashMap::new();
    for port in &loaded.compose.exposed_ports {
        let addr = cfg.upstreams.get(&port.0).ok_or_else(|| {
            c(format!(
                "runtime = \"none\": exposed port {} has no entry in [upstreams]",
                port.0
            ))
        })?;
        ports.insert(port.0, *addr);
    }
    tracing::warn!(
        ?ports,
        "runtime = none: the compose's containers do not run; the front forwards to these development services"
    );
    Ok(ports)
}

/// Boots the instance described by `cfg`; returns once everything serves.
pub async fn boot(cfg: &SidecarConfig) -> Result<Running, BootError> {
    // compose
    let loaded =
        LoadedAppCompose::read(&cfg.compose_file).map_err(|e| step("compose")(e.to_string()))?;
    let identity = Identity {
        app_id: ratls::AppId(loaded.app_id.0),
        compose_hash: ratls::ComposeHash(loaded.compose_hash.0),
        instance_id: instance_id(&cfg.data_dir)?,
    };
    tracing::info!(app = %identity.app_id, compose_hash = %identity.compose_hash, instance = %identity.instance_id, "compose loaded");
    if loaded.app_id_named
        && loaded.compose.key_provider == KeyProvider::None
        && !cfg.dev_allow_named_app_without_kms
    {
        // Only a KMS can authorise a named app id; without one this CVM would claim an
        // app that nobody gave it.
        return Err(step("compose")(format!(
            "app-compose.json names app_id {} with key_provider = \"none\": only a KMS can authorise a named app id (use key_provider = \"kms\", or drop app_id to use the compose hash's own id {})",
            identity.app_id,
            identity.compose_hash.default_app_id()
        )));
    }

    // measure
    let provider: Arc<dyn QuoteProvider> = match &cfg.quote_provider {
        config::QuoteProviderConfig::Simulated => {
            tracing::warn!("quote provider: SIMULATED TDX (no hardware attestation)");
            Arc::new(SimulatedProvider::new())
        }
        config::QuoteProviderConfig::Tdx { tsm_path } => Arc::new(TsmProvider::new(
            tsm_path.clone(),
            ratls::provider::DEFAULT_RTMR3_PATH,
        )),
    };
    let key_provider = match loaded.compose.key_provider {
        KeyProvider::Kms => "kms",
        KeyProvider::None => "none",
    };
    let key_provider_info =
        names::key_provider_payload(key_provider, &hex::encode(loaded.compose.key_provider_id()));
    let measurer = Arc::new(measure(
        provider,
        &identity,
        &key_provider_info,
        &cfg.data_dir,
    )?);
    tracing::info!(rtmr3 = %measurer.event_log().replay(), "RTMR3 holds the boot events");

    let validity = Duration::from_secs(cfg.cert_validity_secs);
    let cert_names = if cfg.cert_names.is_empty() {
        vec![format!("{}.teegate.internal", identity.app_id)]
    } else {
        cfg.cert_names.clone()
    };
    let verifier = Arc::new(CachingVerifier::new(
        gateway::attest::verifier(&cfg.verifier).map_err(|e| step("kms")(e.to_string()))?,
        1024,
    ));

    let mut env_vars = BTreeMap::new();

    // kms
    // The KMS root named in registrations, so the attestation page can show the chain.
    let mut kms_root_der: Option<Vec<u8>> = None;
    // Without a KMS there is no app secret: keys "derived" from the (public) compose hash
    // could be computed by anyone, so the guest API serves none.
    type Keys = (
        Option<Arc<CertAuthority>>,
        Option<Arc<dyn KeySource>>,
        Option<AppK256>,
    );
    // The disk key, for the app's encrypted volumes (only with a KMS).
    let mut disk_key: Option<kms::secret::SecretBytes> = None;
    let (app_ca, keys, k256): Keys = match loaded.compose.key_provider {
        KeyProvider::None => {
            tracing::warn!("key_provider = none: no KMS keys, no app CA (self-signed RA-TLS only); the guest API's /key and /tls-key answer 503");
            (None, None, None)
        }
        KeyProvider::Kms => {
            let k = step("kms");
            let client_cert = issue(
                &measurer,
                &identity,
                &CertProfile::server_and_client(cert_names.clone(), Duration::from_secs(600)),
                None,
            )
            .map_err(|e| k(e.to_string()))?;
            let server = match &cfg.kms_root_ca {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| k(format!("{}: {e}", path.display())))?;
                    let root = pem_certs(&text)
                        .into_iter()
                        .next()
                        .ok_or_else(|| k(format!("{}: no certificate", path.display())))?;
                    kms_root_der = Some(root.clone());
                    kms::client::pinned_root(&root, verifier.clone())
                        .map_err(|e| k(e.to_string()))?
                }
                None => Arc::new(kms::client::FirstContactVerifier::new(verifier.clone())),
            };
            let client = kms::client::KmsClient::new(
                cfg.kms_url.to_string().trim_end_matches('/'),
                server,
                Some((client_cert.rustls_chain(), client_cert.rustls_key())),
                Duration::from_secs(30),
            )
            .map_err(|e| k(e.to_string()))?;
            let released = client
                .app_keys(&kms::api::AppKeysRequest::default())
                .await
                .map_err(|e| k(e.to_string()))?;
            if kms_root_der.is_none() {
                kms_root_der = pem_certs(&released.root_ca_cert_pem).into_iter().next();
            }
            crate::compose::dstack::check_key_provider_id(
                loaded.compose.key_provider_id(),
                kms_root_der.as_deref(),
            )
            .map_err(&k)?;
            let ca_der = pem_certs(&released.app_ca_cert_pem)
                .into_iter()
                .next()
                .ok_or_else(|| k("no app CA certificate in the answer".into()))?;
            let ca_key = pem::parse(released.app_ca_key_pem.expose())
                .map_err(|e| k(format!("app CA key: {e}")))?;
            let ca =
                CertAuthority::from_der(ca_der, ca_key.contents()).map_err(|e| k(e.to_string()))?;
            tracing::info!("keys released by the KMS");

            // env
            if let Some(path) = &cfg.encrypted_env_file {
                let e = step("env");
                let bytes =
                    std::fs::read(path).map_err(|err| e(format!("{}: {err}", path.display())))?;
                let envelope =
                    kms::envelope::parse_env(&bytes).map_err(|err| e(err.to_string()))?;
                let secret = released
                    .env_private_key
                    .to_array32()
                    .ok_or_else(|| e("env key is not 32 bytes".into()))?;
                let plain = kms::envelope::open_env(&identity.app_id.0, &secret, &envelope)
                    .map_err(|err| e(err.to_string()))?;
                let vars = parse_dotenv(&String::from_utf8_lossy(&plain)).map_err(&e)?;
                let not_allowed: Vec<&String> = vars
                    .keys()
                    .filter(|k| !loaded.compose.allowed_envs.contains(k))
                    .collect();
                if !not_allowed.is_empty() {
                    return Err(e(format!("variables not in allowed_envs: {not_allowed:?}")));
                }
                tracing::info!(count = vars.len(), "encrypted environment decrypted");
                env_vars = vars;
            }
            let k256 = AppK256::from_released(
                released.app_k256_key.expose(),
                &released.app_k256_signature,
            )
            .map_err(k)?;
            disk_key = Some(released.disk_key.clone());
            (
                Some(Arc::new(ca)),
                Some(Arc::new(DerivedKeys(released.disk_key.clone()))),
                Some(k256),
            )
        }
    };

    // containers
    let c = step("containers");
    let spec = loaded
        .compose
        .compose_spec(&env_vars, &ComposeOptions::default())
        .map_err(|e| c(e.to_string()))?;
    let (manager, ports) = if cfg.runtime.uses_docker() {
        start_containers(cfg, &loaded, spec, &measurer, disk_key.as_ref()).await?
    } else {
        (None, development_upstreams(cfg, &loaded)?)
    };

    // serve
    let s = step("serve");
    let instance_cert = issue(
        &measurer,
        &identity,
        &CertProfile::server_and_client(cert_names.clone(), validity),
        app_ca.as_deref(),
    )
    .map_err(|e| s(e.to_string()))?;
    let slot = Arc::new(CertSlot::new(
        front::certified_key(instance_cert.rustls_chain(), instance_cert.rustls_key())
            .map_err(|e| s(e.to_string()))?,
    ));
    let routes = Arc::new(RwLock::new(Routes {
        app_id: identity.app_id,
        instance_id: identity.instance_id,
        ports,
    }));
    let resolver = Arc::new(FrontResolver {
        routes,
        cert: slot.clone(),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen_front)
        .await
        .map_err(|e| s(format!("front {}: {e}", cfg.listen_front)))?;
    let front_addr = cfg
        .advertise_addr
        .unwrap_or(listener.local_addr().map_err(|e| s(e.to_string()))?);
    let (stop, stopped) = watch::channel(false);
    let limits = FrontLimits::default();
    let fresh = Arc::new(front::Fresh::for_instance(
        measurer.clone(),
        identity.clone(),
        cert_names.clone(),
        app_ca.clone(),
        limits.fresh.clone(),
    ));
    tokio::spawn(front::serve_with_fresh(
        listener,
        resolver,
        Some(fresh),
        limits,
        stopped.clone(),
    ));
    let socket = guest_api::bind(&cfg.socket_path).map_err(|e| s(e.to_string()))?;
    let cert_pem = Arc::new(RwLock::new(instance_cert.cert_pem()));
    let state = Arc::new(GuestState {
        identity: identity.clone(),
        measurer: measurer.clone(),
        keys,
        app_ca: app_ca.clone(),
        instance_cert_pem: cert_pem.clone(),
    });
    let dstack_socket = guest_api::bind(&cfg.dstack_socket_path).map_err(|e| s(e.to_string()))?;
    let dstack = Arc::new(
        DstackState::new(
            state.clone(),
            loaded.compose.name.clone(),
            String::from_utf8_lossy(&loaded.bytes).into_owned(),
            String::from_utf8_lossy(&key_provider_info).into_owned(),
            k256,
        )
        .map_err(&s)?,
    );
    tokio::spawn(guest_api::serve(socket, state, stopped.clone()));
    tokio::spawn(dstack_api::serve(dstack_socket, dstack, stopped.clone()));
    tracing::info!(front = %front_addr, socket = %cfg.socket_path.display(), dstack_socket = %cfg.dstack_socket_path.display(), "serving");

    // register
    let r = step("register");
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.gateway_ca {
        let text =
            std::fs::read_to_string(path).map_err(|e| r(format!("{}: {e}", path.display())))?;
        for der in pem_certs(&text) {
            roots
                .add(der.into())
                .map_err(|e| r(format!("{}: {e}", path.display())))?;
        }
    }
    let registrar = Arc::new(Registrar::new(roots));
    let registration = Registration {
        client_chain: instance_cert.rustls_chain(),
        client_key: Arc::new(instance_cert.rustls_key()),
        request: gateway::api::RegisterRequest {
            front_addr,
            ports: loaded.compose.exposed_ports.iter().map(|p| p.0).collect(),
            front_certs: vec![],
            app_compose: (loaded.bytes.len() <= gateway::api::MAX_APP_COMPOSE)
                .then(|| String::from_utf8(loaded.bytes.clone()).ok())
                .flatten(),
            kms_root_ca: kms_root_der.as_deref().map(hex::encode),
        },
    };
    let (registration, _) = watch::channel(registration);
    let rotator = Arc::new(Rotator {
        measurer,
        identity: identity.clone(),
        app_ca,
        names: cert_names,
        validity,
        slot,
        cert_pem,
        registrar,
        gateways: tokio::sync::Mutex::new(Vec::new()),
        registration,
        heartbeat: Duration::from_secs(cfg.heartbeat_secs),
        stopped: stopped.clone(),
    });
    let running = Running {
        identity,
        front_addr,
        socket_path: cfg.socket_path.clone(),
        containers: manager,
        stop,
        rotator: rotator.clone(),
    };
    for url in &cfg.gateways {
        let target = GatewayTarget::from_url(&url.to_string())
            .ok_or_else(|| r(format!("bad gateway URL {url}")))?;
        running.add_gateway(target).await;
    }
    tokio::spawn(rotator.run());
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KP: &[u8] = br#"{"id":"","name":"kms"}"#;

    fn identity(compose: &[u8]) -> Identity {
        let compose_hash = ratls::ComposeHash::of(compose);
        Identity {
            app_id: compose_hash.default_app_id(),
            compose_hash,
            instance_id: InstanceId([4; 20]),
        }
    }

    #[test]
    fn a_restarted_sidecar_resumes_the_event_log_instead_of_extending_twice() {
        let dir = tempfile::tempdir().unwrap();
        // One simulated TD whose RTMR3 survives the sidecar's restart, as hardware's does.
        let td: Arc<dyn QuoteProvider> = Arc::new(SimulatedProvider::new());
        let id = identity(b"app");
        let first = measure(td.clone(), &id, KP, dir.path()).unwrap();
        let second = measure(td.clone(), &id, KP, dir.path()).unwrap();
        assert_eq!(second.event_log(), first.event_log());
        let (q, log) = second.quote(&ratls::ReportData::ZERO).unwrap();
        assert_eq!(
            log.replay(),
            ratls::Quote::parse(&q).unwrap().rtmr3(),
            "still replays after the restart"
        );

        let err = measure(td.clone(), &identity(b"another app"), KP, dir.path())
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("another app-compose.json"),
            "{err}"
        );
        std::fs::write(dir.path().join("event-log.json"), "[]").unwrap();
        let err = measure(td, &id, KP, dir.path()).err().unwrap();
        assert!(
            err.to_string()
                .contains("does not match the saved event log"),
            "{err}"
        );
    }

    #[test]
    fn a_saved_log_in_the_pre_dstack_format_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let td: Arc<dyn QuoteProvider> = Arc::new(SimulatedProvider::new());
        let id = identity(b"app");
        measure(td.clone(), &id, KP, dir.path()).unwrap();
        let old = format!(
            r#"[{{"name":"compose-hash","payload":"{}"}}]"#,
            hex::encode(id.compose_hash.0)
        );
        std::fs::write(dir.path().join("event-log.json"), old).unwrap();
        let err = measure(td, &id, KP, dir.path()).err().unwrap();
        assert!(
            err.to_string().contains("not a dstack-format event log")
                && err.to_string().contains("restart the CVM"),
            "{err}"
        );
    }

    #[test]
    fn boot_events_use_dstacks_names_and_key_provider_payload() {
        let dir = tempfile::tempdir().unwrap();
        let td: Arc<dyn QuoteProvider> = Arc::new(SimulatedProvider::new());
        let m = measure(td, &identity(b"app"), KP, dir.path()).unwrap();
        let log = m.event_log();
        let names: Vec<&str> = log.events().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["compose-hash", "app-id", "instance-id", "key-provider"]
        );
        let kp: serde_json::Value =
            serde_json::from_slice(log.payloads("key-provider").next().unwrap()).unwrap();
        assert_eq!(kp["name"], "kms");
        let saved = std::fs::read_to_string(dir.path().join("event-log.json")).unwrap();
        let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
        assert_eq!(saved[0]["event_type"], 0x0800_0001);
    }

    #[test]
    fn dotenv_lines() {
        let env = parse_dotenv("# c\nA=1\nexport B=\"two words\"\n\nC=\n").unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "");
        assert!(parse_dotenv("NOPE").is_err());
        assert!(parse_dotenv("BAD-NAME=1").is_err());
    }
}
