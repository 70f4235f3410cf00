//! Starting the KMS: quote provider → own identity → root of trust (load, onboard from a
//! peer, or generate) → server certificate → HTTPS listener, until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use config::KmsConfig;
use ratls::collateral::{CachedSource, CollateralSource, FileSource, PccsClient, SourceChain};
use ratls::provider::{
    ProviderKind, QuoteProvider, SimulatedProvider, TsmProvider, DEFAULT_RTMR3_PATH,
};
use ratls::tls::{ChainTrust, DeferredClientVerifier, RaTlsCheck};
use ratls::{Allowlist, AttestationVerifier, CachingVerifier, Policy, TcbPolicy, TcbStatus};

use crate::api::InfoResponse;
use crate::audit::AuditLog;
use crate::client::crypto_provider;
use crate::identity::{kms_compose_hash, KmsIdentity, SERVER_CERT_VALIDITY};
use crate::onboard::{fetch_root, OnboardError};
use crate::policy::{Measurements, ReleasePolicy};
use crate::root::{RootError, RootOfTrust, RootStore};
use crate::server::{serve, KmsState};
use crate::server_cert::{keep_fresh, renew_after, ServerCert};

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("quote provider: {0}")]
    Provider(#[from] ratls::provider::ProviderError),
    #[error("verifier config: {0}")]
    Verifier(String),
    #[error("root of trust: {0}")]
    Root(#[from] RootError),
    #[error("onboarding from {url}: {source}")]
    Onboard { url: String, source: OnboardError },
    #[error("server certificate: {0}")]
    Cert(#[from] ratls::cert::IssueError),
    #[error(transparent)]
    ServerCert(#[from] crate::server_cert::ServerCertError),
    #[error("policy: {0}")]
    Policy(String),
    #[error("audit log {path}: {source}")]
    Audit {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Options the CLI adds to the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides `onboard_from`.
    pub onboard_from: Option<String>,
}

/// Where the root came from at this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootOrigin {
    Loaded,
    Generated,
    Onboarded,
}

/// What the KMS tells its caller once it listens.
#[derive(Debug, Clone)]
pub struct Ready {
    pub addr: SocketAddr,
    pub simulated: bool,
    pub root_origin: RootOrigin,
    pub root_path: PathBuf,
    pub root_ca_pem: PathBuf,
    pub audit_log: PathBuf,
    pub app_policies: usize,
}

fn provider(cfg: &config::QuoteProviderConfig) -> Arc<dyn QuoteProvider> {
    match cfg {
        config::QuoteProviderConfig::Simulated => Arc::new(SimulatedProvider::new()),
        config::QuoteProviderConfig::Tdx { tsm_path } => {
            Arc::new(TsmProvider::new(tsm_path.clone(), DEFAULT_RTMR3_PATH))
        }
    }
}

fn collateral(cfg: &config::CollateralConfig) -> Result<Arc<dyn CollateralSource>, KmsError> {
    let err = |e: ratls::collateral::CollateralError| KmsError::Verifier(e.to_string());
    let mut chain = SourceChain::new();
    if !cfg.files.is_empty() {
        chain = chain.with(Arc::new(FileSource::load(&cfg.files).map_err(err)?));
    }
    if let Some(url) = &cfg.pccs_url {
        let pccs: Arc<dyn CollateralSource> =
            Arc::new(PccsClient::new(url.as_str(), Duration::from_secs(20)).map_err(err)?);
        chain = chain.with(match &cfg.cache_dir {
            Some(dir) => Arc::new(CachedSource::new(dir.clone(), pccs).map_err(err)?),
            None => pccs,
        });
    }
    Ok(Arc::new(chain))
}

/// The ratls verifier: quotes, TCB statuses, simulation, key binding and replay, with
/// the given measurement lists (the release policy checks the rest).
fn verifier(
    cfg: &config::VerifierConfig,
    source: Arc<dyn CollateralSource>,
    measurements: Option<&Measurements>,
) -> Result<AttestationVerifier, KmsError> {
    let statuses = cfg
        .tcb_statuses
        .iter()
        .map(|s| s.as_str().parse::<TcbStatus>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KmsError::Verifier(e.to_string()))?;
    let mut policy = Policy::any_measurements();
    policy.tcb = TcbPolicy::allowing(statuses).map_err(|e| KmsError::Verifier(e.to_string()))?;
    policy.allow_simulated = cfg.allow_simulated;
    if let Some(m) = measurements {
        policy.mrtd = m.mrtd.clone();
        policy.rtmr0 = m.rtmr0.clone();
        policy.rtmr1 = m.rtmr1.clone();
        policy.rtmr2 = m.rtmr2.clone();
        policy.compose_hashes = Allowlist::only([kms_compose_hash()]);
    }
    // The KMS is the authority for named app ids: its [policy.apps] tables decide them
    // (content-addressed ones too, since every release needs an app table).
    Ok(AttestationVerifier::new(source, policy).with_authority(ratls::AppAuthority::kms_policy()))
}

/// Runs the KMS until `shutdown` completes.
pub async fn run(
    cfg: KmsConfig,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), KmsError> {
    let me = Arc::new(KmsIdentity::boot(provider(&cfg.quote_provider))?);
    let simulated = me.kind() == ProviderKind::Simulated;
    let store = RootStore::new(&cfg.data_dir, me.sealing());
    if simulated {
        tracing::warn!(
            path = %store.root_path().display(),
            "SIMULATED quote provider: the root secret is stored in PLAIN TEXT and this KMS's attestation proves nothing"
        );
    }
    let policy = ReleasePolicy::from_config(&cfg).map_err(|e| KmsError::Policy(e.0))?;
    let source = collateral(&cfg.verifier.collateral)?;
    let onboard_from = opts
        .onboard_from
        .or_else(|| cfg.onboard_from.as_ref().map(|u| u.as_str().to_string()));

    let (root, root_origin) = match store.load()? {
        Some(root) => {
            if let Some(url) = &onboard_from {
                tracing::info!(%url, "data_dir already holds a root; not onboarding");
            }
            (root, RootOrigin::Loaded)
        }
        None => match &onboard_from {
            Some(url) => {
                let check = Arc::new(CachingVerifier::new(
                    verifier(
                        &cfg.verifier,
                        source.clone(),
                        Some(&policy.kms_measurements),
                    )?,
                    16,
                ));
                let root =
                    fetch_root(url, &me, check)
                        .await
                        .map_err(|source| KmsError::Onboard {
                            url: url.clone(),
                            source,
                        })?;
                store.save(&root)?;
                (root, RootOrigin::Onboarded)
            }
            None => {
                let root = RootOfTrust::generate()?;
                store.save(&root)?;
                (root, RootOrigin::Generated)
            }
        },
    };

    let cert = Arc::new(ServerCert::issue(&me, &root)?);
    let crypto = crypto_provider();
    let check = RaTlsCheck::new(
        Arc::new(CachingVerifier::new(
            verifier(&cfg.verifier, source, None)?,
            4096,
        )),
        ChainTrust::SelfSigned,
        crypto.clone(),
    );
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(DeferredClientVerifier::optional(check.clone())))
        .with_cert_resolver(cert.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    let info = InfoResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        root_ca_cert_pem: root.ca_cert_pem(),
        k256_root_public_key: hex::encode(crate::dstack_keys::public_sec1(
            crate::dstack_keys::kms_k256_root(root.secret()).verifying_key(),
        )),
        kms_cert_pem: cert.cert_pem(),
        attestation: me.attestation(),
        policy: policy.summary(),
    };
    let audit_path = cfg.audit_log_path();
    let audit = AuditLog::open(&audit_path).map_err(|source| KmsError::Audit {
        path: audit_path.clone(),
        source,
    })?;
    let app_policies = policy.apps.len();
    let state = Arc::new(KmsState {
        root,
        policy,
        audit,
        check,
        info_json: std::sync::RwLock::new(Bytes::from(
            serde_json::to_vec(&info).unwrap_or_default(),
        )),
        app_ca_certs: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| KmsError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| KmsError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(keep_fresh(
        cert,
        me.clone(),
        state.clone(),
        info,
        renew_after(SERVER_CERT_VALIDITY),
        stop_rx.clone(),
    ));
    let server = tokio::spawn(serve(
        listener,
        Arc::new(tls),
        state,
        (&cfg.limits).into(),
        stop_rx,
    ));
    on_ready(&Ready {
        addr,
        simulated,
        root_origin,
        root_path: store.root_path(),
        root_ca_pem: store.root_ca_pem_path(),
        audit_log: audit_path,
        app_policies,
    });
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(6), server).await;
    Ok(())
}
