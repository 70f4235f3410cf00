//! The gateway's own identity at start: attested (`[attestation]`: the start-up check of
//! its own quote, then the sealing key derived through its guest API) or not (the sealing
//! key from `seal_key_file`, and the warning that its operator can read the traffic); and
//! the refusal to start over records sealed under a key it does not hold.

use std::sync::Arc;

use config::GatewayConfig;

use crate::seal::{KeySource, SealKey};
use crate::self_attest::AttestedSelf;
use crate::server::GatewayError;
use crate::store::SealedStore;

/// Stops the start when the store holds records sealed under a key this gateway lacks.
pub(crate) fn refuse_unreadable(store: &SealedStore) -> Result<(), GatewayError> {
    let unreadable = store.report().unreadable();
    if unreadable.is_empty() {
        return Ok(());
    }
    let records = unreadable
        .iter()
        .map(|u| format!("{} ({})", u.record, u.reason))
        .collect::<Vec<_>>()
        .join("; ");
    Err(GatewayError::SealedByOther { records })
}

/// The attested gateway's start-up check and its sealing key; or, unattested, the key
/// file's key and the warning that the operator can read the traffic.
pub(crate) fn attest_and_key(
    cfg: &GatewayConfig,
    verifier: &ratls::AttestationVerifier,
) -> Result<(Option<Arc<AttestedSelf>>, SealKey), GatewayError> {
    let Some(att) = &cfg.attestation else {
        tracing::warn!("{}", crate::trust_page::model::NOT_ATTESTED);
        let path = cfg
            .seal_key_file
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("seal.key"));
        let key = SealKey::load_or_create_file(&path)?;
        tracing::info!(key_id = %key.id(), path = %path.display(), "private keys in the store are sealed under an unattested key file (protects the store, not against this host's operator)");
        return Ok((None, key));
    };
    // Several blocking steps wait on this runtime (the self-check's quote), so give it a
    // worker thread of its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let me = rt.block_on(crate::self_attest::check(&att.guest_api, verifier))?;
    let key = rt
        .block_on(me.api.derive_key(&att.key_path, crate::seal::PURPOSE))
        .map_err(|e| {
            GatewayError::Config(format!(
                "attestation.guest_api: deriving the store-sealing key (attestation.key_path = {:?}): {e}",
                att.key_path
            ))
        })?;
    let key = SealKey::new(
        key.into_zeroizing(),
        KeySource::Attested {
            app_id: me.info.app_id.to_hex(),
            key_path: att.key_path.clone(),
        },
    );
    tracing::info!(
        app_id = %me.info.app_id,
        compose_hash = %me.info.compose_hash,
        instance_id = %me.info.instance_id,
        simulated = me.verified.is_simulated(),
        tcb_status = %me.verified.tcb_status(),
        key_id = %key.id(),
        "this gateway is attested: a fresh quote from its guest API verified with its own [verifier]; private keys are sealed under its KMS-derived key"
    );
    Ok((Some(Arc::new(me)), key))
}
