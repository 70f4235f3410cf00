//! From the gateway's `[verifier]` config to a ratls verifier: policy, TCB statuses,
//! collateral sources. The config crate knows nothing of ratls, so the mapping lives here.

use std::sync::Arc;
use std::time::Duration;

use ratls::collateral::{CachedSource, CollateralSource, FileSource, PccsClient, SourceChain};
use ratls::{Allowlist, AppAuthority, AttestationVerifier, Policy, TcbPolicy, TcbStatus};

#[derive(Debug, thiserror::Error)]
pub enum AttestConfigError {
    #[error("verifier.tcb_statuses: {0}")]
    Tcb(String),
    #[error("verifier.collateral: {0}")]
    Collateral(#[from] ratls::collateral::CollateralError),
    #[error("verifier.kms_roots[{index}] ({path}): {message}")]
    KmsRoot {
        index: usize,
        path: String,
        message: String,
    },
}

/// The pinned KMS roots (DER), each file a PEM certificate.
pub fn kms_roots(cfg: &config::VerifierConfig) -> Result<Vec<Vec<u8>>, AttestConfigError> {
    let mut roots = Vec::with_capacity(cfg.kms_roots.len());
    for (index, path) in cfg.kms_roots.iter().enumerate() {
        let fail = |message: String| AttestConfigError::KmsRoot {
            index,
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        roots.push(ratls::authorise::read_kms_root(&bytes).map_err(fail)?);
    }
    Ok(roots)
}

fn list<C, R: Ord>(cfg: &config::Allowlist<C>, f: impl Fn(&C) -> R) -> Allowlist<R> {
    match cfg {
        config::Allowlist::Any => Allowlist::Any,
        config::Allowlist::Only(items) => Allowlist::only(items.iter().map(f)),
    }
}

pub fn policy(cfg: &config::VerifierConfig) -> Result<Policy, AttestConfigError> {
    let statuses = cfg
        .tcb_statuses
        .iter()
        .map(|s| {
            s.as_str()
                .parse::<TcbStatus>()
                .map_err(|e| AttestConfigError::Tcb(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Policy {
        tcb: TcbPolicy::allowing(statuses).map_err(|e| AttestConfigError::Tcb(e.to_string()))?,
        allow_simulated: cfg.allow_simulated,
        mrtd: list(&cfg.mrtd, |m| ratls::Measurement(*m.as_bytes())),
        rtmr0: list(&cfg.rtmr0, |m| ratls::Measurement(*m.as_bytes())),
        rtmr1: list(&cfg.rtmr1, |m| ratls::Measurement(*m.as_bytes())),
        rtmr2: list(&cfg.rtmr2, |m| ratls::Measurement(*m.as_bytes())),
        compose_hashes: list(&cfg.compose_hashes, |h| ratls::ComposeHash(*h.as_bytes())),
        app_ids: list(&cfg.app_ids, |a| ratls::AppId(*a.as_bytes())),
        images: Default::default(),
    })
}

pub fn collateral(
    cfg: &config::CollateralConfig,
) -> Result<Arc<dyn CollateralSource>, AttestConfigError> {
    let mut chain = SourceChain::new();
    if !cfg.files.is_empty() {
        chain = chain.with(Arc::new(FileSource::load(&cfg.files)?));
    }
    if let Some(url) = &cfg.pccs_url {
        let pccs: Arc<dyn CollateralSource> =
            Arc::new(PccsClient::new(&url.to_string(), Duration::from_secs(20))?);
        let source = match &cfg.cache_dir {
            Some(dir) => {
                Arc::new(CachedSource::new(dir.clone(), pccs)?) as Arc<dyn CollateralSource>
            }
            None => pccs,
        };
        chain = chain.with(source);
    }
    Ok(Arc::new(chain))
}

/// The verifier for `cfg`: its policy, collateral and the KMS roots that may authorise
/// named app ids (none pinned: content-addressed app ids only).
pub fn verifier(cfg: &config::VerifierConfig) -> Result<AttestationVerifier, AttestConfigError> {
    let roots = kms_roots(cfg)?;
    let authority = if roots.is_empty() {
        AppAuthority::content_addressed_only()
    } else {
        AppAuthority::kms_roots(roots)
    };
    Ok(
        AttestationVerifier::new(collateral(&cfg.collateral)?, policy(cfg)?)
            .with_authority(authority),
    )
}
