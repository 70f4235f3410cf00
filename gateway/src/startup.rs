//! The start-up steps `server::run` takes before any listener opens: registrations
//! restored (re-verified) from the store, the certificates for the TLS mode installed,
//! the KMS roots the pages vouch for read, the listening sockets bound, and the first
//! evidence quoted. Each fails with an error naming what is wrong.

use std::net::SocketAddr;
use std::sync::Arc;

use config::{GatewayConfig, TlsMode};
use ratls::CachingVerifier;

use crate::certs::{self, CertResolver, DevCa};
use crate::evidence::{HeldKeys, Publisher};
use crate::guest::{GuestApi, GuestInfo};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::server::GatewayError;
use crate::store::{SealedStore, Store};

/// Re-verifies stored registrations, so only still-valid instances come back after a restart.
pub(crate) async fn restore(
    store: &dyn Store,
    verifier: &CachingVerifier,
    registry: &Registry,
) -> Result<usize, GatewayError> {
    let now = ratls::verifier::unix_now();
    let mut restored = 0;
    for record in store.instances().await? {
        if record.lease_expires <= now {
            store.delete_instance(&record.key()).await?;
            continue;
        }
        if crate::replicas::verifies(&record, verifier) {
            let key = record.key();
            match registry.upsert(record, now) {
                Ok(()) => restored += 1,
                Err(e) => {
                    tracing::warn!(instance = %key, error = %e, "stored registration conflicts with another; not routed")
                }
            }
        } else {
            tracing::warn!(instance = %record.instance_id, "stored registration no longer verifies; dropped");
            store.delete_instance(&record.key()).await?;
        }
    }
    Ok(restored)
}

/// Serves the stored certificates and makes sure the wildcard exists for the TLS mode
/// (self-signed: issued from the development CA; files: read; ACME: left to the renewal
/// loop). Returns the development CA's path when there is one.
pub(crate) async fn install_certificates(
    cfg: &GatewayConfig,
    base: &str,
    store: &SealedStore,
    resolver: &CertResolver,
    metrics: &Metrics,
) -> Result<Option<std::path::PathBuf>, GatewayError> {
    let wildcard = format!("*.{base}");
    let stored = store.certs().await?;
    if cfg.tls.mode == TlsMode::Acme {
        // Reading the account also reports it when it does not open.
        let _ = store
            .get_value(&crate::acme::account_key(
                &cfg.tls.acme.directory_url.to_string(),
            ))
            .await;
    }
    crate::own_identity::refuse_unreadable(store)?;
    for record in &stored {
        resolver.install(record)?;
        metrics
            .cert_not_after
            .with_label_values(&[&record.name])
            .set(record.not_after as i64);
    }
    let now = ratls::verifier::unix_now();
    let have_wildcard = stored
        .iter()
        .any(|r| r.name == wildcard && r.not_after > now + 7 * 86400);
    let mut dev_ca_path = None;
    let record = match cfg.tls.mode {
        TlsMode::SelfSigned => {
            let ca = DevCa::load_or_create(&cfg.data_dir, store.key())?;
            dev_ca_path = Some(ca.cert_path.clone());
            (!have_wildcard)
                .then(|| ca.issue_wildcard(base))
                .transpose()?
        }
        TlsMode::Files => {
            let (Some(c), Some(k)) = (&cfg.tls.cert_file, &cfg.tls.key_file) else {
                return Err(GatewayError::Config(
                    "tls.cert_file and tls.key_file are required with tls.mode = \"files\"".into(),
                ));
            };
            Some(certs::from_files(&wildcard, c, k)?)
        }
        TlsMode::Acme => {
            if !have_wildcard {
                tracing::warn!(
                    "no wildcard certificate yet: TLS handshakes fail until ACME issues one"
                );
            }
            None
        }
    };
    if let Some(record) = record {
        resolver.install(&record)?;
        metrics
            .cert_not_after
            .with_label_values(&[&record.name])
            .set(record.not_after as i64);
        store.put_cert(&record).await?;
    }
    Ok(dev_ca_path)
}

/// Reads the KMS root CAs the attestation pages vouch for (`web.kms_root_ca`).
pub(crate) fn load_kms_roots(paths: &[std::path::PathBuf]) -> Result<Vec<Vec<u8>>, GatewayError> {
    let mut roots = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| {
            GatewayError::Config(format!("web.kms_root_ca: {}: {e}", path.display()))
        })?;
        let before = roots.len();
        for block in pem::parse_many(&text).map_err(|e| {
            GatewayError::Config(format!("web.kms_root_ca: {}: {e}", path.display()))
        })? {
            if block.tag() == "CERTIFICATE" {
                roots.push(block.into_contents());
            }
        }
        if roots.len() == before {
            return Err(GatewayError::Config(format!(
                "web.kms_root_ca: {}: no CERTIFICATE in the file",
                path.display()
            )));
        }
    }
    Ok(roots)
}

pub(crate) fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<std::net::TcpListener, GatewayError> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| GatewayError::Listen {
        addr,
        what,
        message: e.to_string(),
    })?;
    l.set_nonblocking(true).map_err(|e| GatewayError::Listen {
        addr,
        what,
        message: e.to_string(),
    })?;
    Ok(l)
}

/// The gateway's evidence publisher: with a guest API (`[attestation]`), its first
/// evidence is quoted now, over the keys already installed, and must verify with the
/// gateway's own verifier or the gateway does not start; without one, the published
/// document says the gateway is not attested.
pub(crate) fn evidence_publisher(
    guest: Option<(GuestApi, GuestInfo)>,
    held: Arc<HeldKeys>,
    verifier: &ratls::AttestationVerifier,
) -> Result<Arc<Publisher>, GatewayError> {
    let Some((api, info)) = guest else {
        return Ok(Arc::new(Publisher::unattested(held)));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let publisher = rt
        .block_on(Publisher::attested(api, info, held, verifier.clone()))
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    Ok(Arc::new(publisher))
}
