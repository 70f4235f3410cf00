//! Wiring: from a validated `GatewayConfig` to a running gateway. Everything that can
//! fail (config, data directory, certificates, ports) fails before any listener opens;
//! the steps before the listeners are in `startup.rs`, the background services (hyper
//! listeners, ACME, evidence, lease reaper) in `services.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use config::{GatewayConfig, StoreConfig, TlsMode};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignalWatch};
use pingora_core::services::background::GenBackgroundService;
use ratls::tls::{ChainTrust, DeferredClientVerifier, RaTlsCheck};
use ratls::CachingVerifier;
use rustls::crypto::CryptoProvider;
use tokio::sync::Semaphore;

use crate::acme::{Acme, AcmeSettings, Http01Tokens};
use crate::admin::{self, Admin};
use crate::attest;
use crate::certs::{self, CertResolver};
use crate::custom::CustomDomains;
use crate::evidence::HeldKeys;
use crate::frontdoor::FrontDoor;
use crate::metrics::Metrics;
use crate::ondemand::OnDemand;
use crate::per_ip::PerIp;
use crate::proxy::{GatewayProxy, ProxySettings};
use crate::refused::RefusedLog;
use crate::registration::Registrar;
use crate::registry::{Balance, Registry};
use crate::replicas::{self, ReplicaHeartbeat, StoreSync, StoreWatch};
use crate::self_attest::SelfAttestError;
use crate::services::{AcmeService, EvidenceService, Handler, HttpListener, LeaseReaper};
use crate::startup::{bind, evidence_publisher, install_certificates, load_kms_roots, restore};
use crate::store::{EmbeddedStore, EtcdStore, ReplicaRecord, SealReport, SealedStore, Store};
use crate::trust_page::TrustPages;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr} ({what}): {message}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error(transparent)]
    Attest(#[from] attest::AttestConfigError),
    #[error(transparent)]
    SelfAttest(#[from] SelfAttestError),
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    /// The store holds sealed records this gateway cannot open (another gateway's).
    #[error("the store holds records this gateway cannot open: {records}. They were sealed by a gateway of another app (or another seal_key_file) and are left untouched; this gateway does not start rather than serve without them or overwrite them. Give it its own store (data_dir, or store.etcd.prefix), or delete those records if the gateway that wrote them is retired")]
    SealedByOther { records: String },
}

/// What a running gateway tells its operator at start.
#[derive(Debug, Clone)]
pub struct StartInfo {
    pub https: SocketAddr,
    pub registration: SocketAddr,
    pub admin: SocketAddr,
    pub dev_ca: Option<std::path::PathBuf>,
}

/// The process's TLS crypto: ring, or aws-lc-rs when built with the `aws-lc` feature (the
/// two are compared in docs/performance.md), with TLS 1.3's HKDF on prepared HMAC keys.
fn crypto() -> CryptoProvider {
    #[cfg(feature = "aws-lc")]
    return crate::prepared_hkdf::provider();
    #[cfg(not(feature = "aws-lc"))]
    rustls::crypto::ring::default_provider()
}

/// Session tickets from the same crypto as [`crypto`].
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc")]
    return rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(not(feature = "aws-lc"))]
    rustls::crypto::ring::Ticketer::new()
}

/// Builds and runs the gateway until `shutdown` fires. `on_start` sees where it listens.
pub fn run(
    cfg: GatewayConfig,
    shutdown: Box<dyn ShutdownSignalWatch>,
    on_start: impl FnOnce(&StartInfo),
) -> Result<(), GatewayError> {
    let provider: Arc<CryptoProvider> = Arc::new(crypto());
    // Several rustls backends may be compiled in; pick ours for anything using the default.
    let _ = CryptoProvider::install_default(crypto());
    tracing::info!(
        provider = if cfg!(feature = "aws-lc") {
            "aws-lc-rs"
        } else {
            "ring"
        },
        "TLS crypto"
    );
    let base = cfg.base_domain.as_str().to_ascii_lowercase();
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new());
    let verifier = Arc::new(CachingVerifier::new(
        attest::verifier(&cfg.verifier)?,
        ratls::cache::DEFAULT_CACHE_ENTRIES,
    ));
    if cfg.verifier.allow_simulated {
        tracing::warn!(
            "verifier.allow_simulated = true: SIMULATED TDX quotes are accepted (development only)"
        );
    }
    // With [attestation], no listener opens unless the gateway's own quote verifies.
    let (attested, seal_key) = crate::own_identity::attest_and_key(&cfg, verifier.verifier())?;
    match cfg.verifier.kms_roots.len() {
        0 => tracing::info!(
            "app authorisation: content-addressed app ids only (no verifier.kms_roots pinned)"
        ),
        n => tracing::info!(
            kms_roots = n,
            "app authorisation: content-addressed app ids, and named ones whose app CA a pinned KMS root signed"
        ),
    }
    let (backend, etcd): (Arc<dyn Store>, Option<EtcdStore>) = match &cfg.store {
        StoreConfig::Embedded => (Arc::new(EmbeddedStore::open(&cfg.data_dir)?), None),
        StoreConfig::Etcd(etcd_cfg) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| GatewayError::Config(e.to_string()))?;
            let etcd = rt.block_on(EtcdStore::connect(etcd_cfg, Some(metrics.clone())))?;
            (Arc::new(etcd.clone()), Some(etcd))
        }
    };
    // Every private key goes through the sealing layer, whichever backend holds it.
    let sealed = Arc::new(SealedStore::new(
        backend,
        Arc::new(seal_key),
        Arc::new(SealReport::new(Some(metrics.sealed_unreadable.clone()))),
    ));
    let store: Arc<dyn Store> = sealed.clone();

    let resolver = Arc::new(CertResolver::new(&base, provider.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let dev_ca_path = rt.block_on(async {
        let restored = restore(store.as_ref(), &verifier, &registry).await?;
        tracing::info!(restored, "registrations restored from the store");
        install_certificates(&cfg, &base, &sealed, &resolver, &metrics).await
    })?;
    drop(rt);
    let held_keys = Arc::new(HeldKeys::new(resolver.clone()));
    // The evidence is quoted through the same guest API the start-up check verified.
    let guest = attested.map(|me| (me.api.clone(), me.info.clone()));
    let evidence = evidence_publisher(guest, held_keys.clone(), verifier.verifier())?;

    let registration_listener = bind(cfg.listen_registration, "registration")?;
    let admin_listener = bind(cfg.listen_admin, "admin")?;
    let http_listener = bind(cfg.listen_http, "http")?;
    // Thread per core: with several workers each gets its own listening socket
    // (SO_REUSEPORT) and a one-thread runtime, so the kernel spreads connections and a
    // connection is accepted, served and pooled on one thread.
    let per_worker = cfg.listener_per_worker && cfg.workers > 1;
    let (listeners, threads) = if per_worker {
        (usize::from(cfg.workers), 1)
    } else {
        (1, usize::from(cfg.workers))
    };
    let https_sockets = crate::https_listener::bind(cfg.listen_https, listeners, per_worker)?;
    let https_addr = https_sockets
        .first()
        .and_then(|s| s.local_addr().ok())
        .unwrap_or(cfg.listen_https);

    let info = StartInfo {
        https: https_addr,
        registration: registration_listener
            .local_addr()
            .unwrap_or(cfg.listen_registration),
        admin: admin_listener.local_addr().unwrap_or(cfg.listen_admin),
        dev_ca: dev_ca_path,
    };

    let anchor =
        crate::upstream_roots::write_anchor(&cfg.data_dir).map_err(GatewayError::Config)?;
    let conf = ServerConf {
        threads: usize::from(cfg.workers),
        // Thread per core: each worker is a current-thread runtime, so a connection and
        // its fast path (and this thread's upstream pool) stay on one thread.
        work_stealing: false,
        // Upstreams are checked by fingerprint, never against roots (see upstream_roots).
        ca_file: Some(anchor.to_string_lossy().into_owned()),
        grace_period_seconds: Some(cfg.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(cfg.grace_period_secs),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    let settings = ProxySettings {
        base_domain: base.clone(),
        balance: match cfg.upstream.balance {
            config::Balance::RoundRobin => Balance::RoundRobin,
            config::Balance::LeastConnections => Balance::LeastConnections,
        },
        down_backoff: Duration::from_secs(cfg.upstream.down_backoff_secs),
        retries: usize::from(cfg.upstream.retries),
        connect_timeout: Duration::from_millis(cfg.upstream.connect_timeout_ms),
        idle_timeout: Duration::from_secs(cfg.limits.idle_timeout_secs),
        request_timeout: Duration::from_secs(cfg.limits.request_timeout_secs),
        access_log: cfg.access_log,
        max_header_bytes: cfg.limits.max_header_bytes as usize,
        max_in_flight_per_app: cfg.limits.max_connections_per_app,
    };
    let acme = match cfg.tls.mode {
        TlsMode::Acme => {
            let Some(url) = &cfg.tls.acme.dns_api_url else {
                return Err(GatewayError::Config(
                    "tls.acme.dns_api_url is required with tls.mode = \"acme\" (the teegate DNS record API that publishes DNS-01 records)".into(),
                ));
            };
            let dns = dns::api::HttpAcmeDnsClient::new(
                &url.to_string(),
                cfg.tls
                    .acme
                    .dns_api_token
                    .as_ref()
                    .map(|t| t.expose().to_string()),
            )
            .map_err(|e| GatewayError::Config(format!("tls.acme.dns_api_url: {e}")))?;
            let settings = AcmeSettings {
                base_domain: base.clone(),
                directory_url: cfg.tls.acme.directory_url.to_string(),
                ca_bundle: cfg.tls.acme.ca_bundle.clone(),
                contact: cfg.tls.acme.contact.clone(),
                renew_at_fraction: cfg.tls.acme.renew_at_fraction,
            };
            let acme = Arc::new(Acme::new(
                settings,
                store.clone(),
                Arc::new(dns),
                resolver.clone(),
                metrics.clone(),
            ));
            server.add_service(GenBackgroundService::new(
                "teegate acme".into(),
                Arc::new(AcmeService(acme.clone())),
            ));
            Some(acme)
        }
        _ => None,
    };
    let custom = if cfg.custom_domains.enabled {
        Some(Arc::new(
            CustomDomains::new(&cfg.custom_domains).map_err(GatewayError::Config)?,
        ))
    } else {
        None
    };
    let refused = Arc::new(RefusedLog::new());
    let pages = if cfg.web.enabled {
        // The pages vouch for the roots the verifier pins too.
        let mut page_roots = load_kms_roots(&cfg.web.kms_root_ca)?;
        for root in verifier.verifier().authority().pinned_roots() {
            if !page_roots.contains(root) {
                page_roots.push(root.clone());
            }
        }
        Some(Arc::new(
            TrustPages::new(
                base.clone(),
                https_addr.port(),
                registry.clone(),
                verifier.clone(),
                refused.clone(),
                page_roots,
            )
            .with_gateway(evidence.clone(), resolver.clone()),
        ))
    } else {
        None
    };
    let mut proxy = pingora_proxy::http_proxy(
        &conf,
        GatewayProxy {
            registry: registry.clone(),
            metrics: metrics.clone(),
            settings: settings.clone(),
            custom: custom.clone(),
            pages,
        },
    );
    proxy.h2_options = Some(crate::frontdoor::h2_options(&cfg.limits));
    let mut server_options = pingora_core::apps::HttpServerOptions::default();
    // An HTTP/2 connection with no open stream closes like an idle HTTP/1 one.
    server_options.h2_idle_timeout = Some(settings.idle_timeout);
    proxy.server_options = Some(server_options);
    let proxy = Arc::new(proxy);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| GatewayError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption: stateless tickets (TLS 1.2 and 1.3, keys rotated by rustls), and a
    // session cache for clients that resume by id, sized for the connections we allow
    // rather than rustls' default 256 (a few hundred bytes per entry).
    tls.ticketer = ticketer().map_err(|e| GatewayError::Config(format!("TLS ticketer: {e}")))?;
    tls.session_storage = rustls::server::ServerSessionMemoryCache::new(
        (cfg.limits.max_connections as usize).clamp(1024, 65_536),
    );
    let tls = Arc::new(tls);
    let tokens = Arc::new(Http01Tokens::default());
    let on_demand = match (&acme, &custom) {
        (Some(acme), Some(custom)) => Some(Arc::new(OnDemand::new(
            acme.clone(),
            custom.clone(),
            resolver.clone(),
            registry.clone(),
            metrics.clone(),
            tokens.clone(),
            cfg.custom_domains.ask_url.as_ref().map(|u| u.to_string()),
            cfg.custom_domains.max_orders_per_hour as usize,
        ))),
        (None, Some(_)) => {
            tracing::warn!("custom domains are enabled but tls.mode is not \"acme\": certificates for them must be installed by hand");
            None
        }
        _ => None,
    };
    let upstreams = crate::upstream::Upstreams::new(
        registry.clone(),
        provider.clone(),
        base.clone(),
        settings.connect_timeout,
        settings.idle_timeout,
        cfg.limits.upstream_idle_per_instance as usize,
    )
    .map_err(|e| GatewayError::Config(format!("upstream TLS: {e}")))?;
    let fast = Arc::new(crate::fast::FastPath {
        registry: registry.clone(),
        metrics: metrics.clone(),
        settings: settings.clone(),
        upstreams,
    });
    // Every worker's front door shares one TLS config (tickets, session cache), the
    // connection bounds and the fast path.
    let connections = Arc::new(Semaphore::new(cfg.limits.max_connections as usize));
    let per_ip = PerIp::new(cfg.limits.max_connections_per_ip);
    for (worker, socket) in https_sockets.into_iter().enumerate() {
        let front = FrontDoor {
            proxy: proxy.clone(),
            fast: fast.clone(),
            acceptor: tokio_rustls::TlsAcceptor::from(tls.clone()),
            registry: registry.clone(),
            metrics: metrics.clone(),
            base_domain: base.clone(),
            balance: settings.balance,
            hello_timeout: Duration::from_millis(cfg.limits.client_hello_timeout_ms),
            hello_max: cfg.limits.client_hello_max_bytes as usize,
            idle_timeout: settings.idle_timeout,
            request_timeout: settings.request_timeout,
            connect_timeout: settings.connect_timeout,
            connections: connections.clone(),
            per_ip: per_ip.clone(),
            header_timeout: Duration::from_secs(cfg.limits.header_timeout_secs),
            max_per_app: cfg.limits.max_connections_per_app,
            on_demand: on_demand.clone(),
        };
        let name = if per_worker {
            format!("teegate https {worker}")
        } else {
            "teegate https".to_string()
        };
        server.add_service(crate::https_listener::HttpsListener {
            name,
            socket: Some(socket),
            front: Arc::new(front),
            threads,
        });
    }
    if per_worker {
        tracing::info!(
            workers = cfg.workers,
            "HTTPS: one listening socket per worker (SO_REUSEPORT)"
        );
    }

    let check = RaTlsCheck::new(verifier.clone(), ChainTrust::SelfSigned, provider.clone());
    let reg_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| GatewayError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(DeferredClientVerifier::required(check.clone())))
        .with_cert_resolver(resolver.clone());
    let registrar = Arc::new(Registrar {
        check,
        verifier: verifier.clone(),
        registry: registry.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        lease: Duration::from_secs(cfg.registration.lease_secs),
        allow_loopback: cfg.registration.allow_loopback,
        refused,
    });
    if cfg.registration.allow_loopback {
        tracing::warn!("registration.allow_loopback = true: instances on loopback addresses are accepted (development only)");
    }
    let reg_handler: Handler =
        Arc::new(move |req, peer| Box::pin(registrar.clone().handle(req, peer)));
    server.add_service(GenBackgroundService::new(
        "teegate registration".into(),
        Arc::new(HttpListener {
            name: "registration",
            listener: std::sync::Mutex::new(Some(registration_listener)),
            tls: Some(tokio_rustls::TlsAcceptor::from(Arc::new(reg_tls))),
            handler: reg_handler,
        }),
    ));

    let admin = Arc::new(Admin {
        acme,
        token: cfg.admin_token.as_ref().map(|t| t.expose().to_string()),
        registry: registry.clone(),
        store: store.clone(),
        etcd: etcd.clone(),
        metrics: metrics.clone(),
        sealing: sealed.clone(),
    });
    let admin_handler: Handler =
        Arc::new(move |req, peer| Box::pin(admin.clone().handle(req, peer)));
    server.add_service(GenBackgroundService::new(
        "teegate admin".into(),
        Arc::new(HttpListener {
            name: "admin",
            listener: std::sync::Mutex::new(Some(admin_listener)),
            tls: None,
            handler: admin_handler,
        }),
    ));
    let https_port = https_addr.port();
    let redirect_handler: Handler =
        Arc::new(move |req, peer| Box::pin(admin::redirect(req, peer, https_port, tokens.clone())));
    server.add_service(GenBackgroundService::new(
        "teegate http redirect".into(),
        Arc::new(HttpListener {
            name: "http",
            listener: std::sync::Mutex::new(Some(http_listener)),
            tls: None,
            handler: redirect_handler,
        }),
    ));
    if let Some(etcd) = etcd {
        // Subscribed before the watch starts, so the first resync is not missed.
        let sync = StoreSync::new(
            store.clone(),
            verifier.clone(),
            registry.clone(),
            resolver.clone(),
            metrics.clone(),
            cfg.registration.allow_loopback,
        );
        server.add_service(GenBackgroundService::new(
            "teegate store sync".into(),
            Arc::new(sync),
        ));
        server.add_service(GenBackgroundService::new(
            "teegate store watch".into(),
            Arc::new(StoreWatch(etcd.clone())),
        ));
        let record = ReplicaRecord {
            id: replicas::new_replica_id(),
            addrs: cfg.advertise_addrs.clone(),
            https_port: https_addr.port(),
        };
        server.add_service(GenBackgroundService::new(
            "teegate replica heartbeat".into(),
            Arc::new(ReplicaHeartbeat {
                store: etcd,
                record,
                ttl: Duration::from_secs(cfg.replica_lease_secs),
            }),
        ));
    }
    server.add_service(GenBackgroundService::new(
        "teegate gateway evidence".into(),
        Arc::new(EvidenceService(evidence)),
    ));
    server.add_service(GenBackgroundService::new(
        "teegate lease reaper".into(),
        Arc::new(LeaseReaper {
            registry,
            store,
            metrics,
        }),
    ));

    on_start(&info);
    server.run(RunArgs {
        shutdown_signal: shutdown,
    });
    Ok(())
}
