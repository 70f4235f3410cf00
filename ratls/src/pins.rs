//! Pins for clients that check an RA-TLS server themselves: the app, its compose hash,
//! measurements, and the KMS root its certificate must chain to. `client_config` turns
//! them into a rustls `ClientConfig` in one call:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pins = teegate_ratls::pins::Pins {
//!     app_id: Some("0123456789abcdef0123456789abcdef01234567".parse()?),
//!     ..Default::default()
//! };
//! let (config, _check) = teegate_ratls::pins::client_config(&pins)?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use crate::collateral::{CollateralSource, SourceChain};
use crate::policy::{Allowlist, Policy};
use crate::tls::{ChainTrust, RaTlsCheck, RaTlsServerVerifier};
use crate::{AppAuthority, AppId, AttestationVerifier, CachingVerifier, ComposeHash, Measurement};

/// What the server must attest. Unset pins accept any value.
#[derive(Clone, Default)]
pub struct Pins {
    pub app_id: Option<AppId>,
    pub compose_hash: Option<ComposeHash>,
    pub mrtd: Option<Measurement>,
    /// RTMR0-2 (RTMR3 is checked through the replayed event log's claims).
    pub rtmr: [Option<Measurement>; 3],
    /// DER of the KMS root CA the certificate must chain to.
    pub kms_root: Option<Vec<u8>>,
    /// Service → image content id (`sha256:<64 hex>`) its `image` event must record.
    pub images: std::collections::BTreeMap<String, String>,
    pub allow_simulated: bool,
    /// Where real quotes' collateral comes from (none: simulated quotes only).
    pub collateral: Option<Arc<dyn CollateralSource>>,
    /// Require the certificate to quote over this nonce (step `freshness`); see
    /// [`fresh_client_config`], which picks a random one per connection.
    pub nonce: Option<Vec<u8>>,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins")
            .field("app_id", &self.app_id)
            .field("compose_hash", &self.compose_hash)
            .field("mrtd", &self.mrtd)
            .field("rtmr", &self.rtmr)
            .field(
                "kms_root",
                &self.kms_root.as_ref().map(|r| crate::Fingerprint::of(r)),
            )
            .field("allow_simulated", &self.allow_simulated)
            .field("images", &self.images)
            .field("nonce", &self.nonce.as_ref().map(hex::encode))
            .finish_non_exhaustive()
    }
}

fn pin<T: Ord + Clone>(v: &Option<T>) -> Allowlist<T> {
    match v {
        Some(x) => Allowlist::only([x.clone()]),
        None => Allowlist::Any,
    }
}

impl Pins {
    pub fn policy(&self) -> Policy {
        Policy {
            allow_simulated: self.allow_simulated,
            mrtd: pin(&self.mrtd),
            rtmr0: pin(&self.rtmr[0]),
            rtmr1: pin(&self.rtmr[1]),
            rtmr2: pin(&self.rtmr[2]),
            compose_hashes: pin(&self.compose_hash),
            app_ids: pin(&self.app_id),
            images: self.images.clone(),
            ..Policy::default()
        }
    }

    /// The verifier these pins make: their policy, their collateral, and their KMS root as
    /// the authority for named app ids (without one only content-addressed app ids are
    /// believed). It also checks a gateway's evidence
    /// ([`AttestationVerifier::verify_gateway`]).
    pub fn verifier(&self) -> AttestationVerifier {
        let collateral = self
            .collateral
            .clone()
            .unwrap_or_else(|| Arc::new(SourceChain::new()));
        let authority = match &self.kms_root {
            Some(root) => AppAuthority::kms_roots(vec![root.clone()]),
            None => AppAuthority::content_addressed_only(),
        };
        let v = AttestationVerifier::new(collateral, self.policy()).with_authority(authority);
        match &self.nonce {
            Some(n) => v.expect_nonce(n.clone()),
            None => v,
        }
    }

    /// The check a TLS client runs: chain to the pinned KMS root (or the certificate's own
    /// chain), then the attestation under these pins.
    pub fn check(&self) -> Result<RaTlsCheck, rustls::Error> {
        let verifier = Arc::new(CachingVerifier::new(
            Pins {
                nonce: None,
                ..self.clone()
            }
            .verifier(),
            64,
        ));
        let trust = match &self.kms_root {
            Some(root) => ChainTrust::roots(std::slice::from_ref(root))?,
            None => ChainTrust::SelfSigned,
        };
        let check = RaTlsCheck::new(
            verifier,
            trust,
            Arc::new(rustls::crypto::ring::default_provider()),
        );
        Ok(match &self.nonce {
            Some(n) => check.expect_nonce(n.clone()),
            None => check,
        })
    }
}

/// A rustls client config that completes a handshake only with a server attesting `pins`.
pub fn client_config(pins: &Pins) -> Result<(rustls::ClientConfig, RaTlsCheck), rustls::Error> {
    let check = pins.check()?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(RaTlsServerVerifier(check.clone())))
    .with_no_client_auth();
    Ok((config, check))
}

/// A rustls client config for ONE connection that asks the server for a quote over a fresh
/// random nonce (ALPN `teegate-fresh-<hex>` first, then `http/1.1`; see [`crate::fresh`])
/// and completes the handshake only if the certificate carries it. Returns the nonce too.
/// Build a new config per connection: reusing one reuses its nonce.
pub fn fresh_client_config(
    pins: &Pins,
) -> Result<(rustls::ClientConfig, RaTlsCheck, Vec<u8>), rustls::Error> {
    let nonce = crate::fresh::random_nonce()?.to_vec();
    let pins = Pins {
        nonce: Some(nonce.clone()),
        ..pins.clone()
    };
    let (mut config, check) = client_config(&pins)?;
    config.alpn_protocols = vec![crate::fresh::alpn_id(&nonce), b"http/1.1".to_vec()];
    Ok((config, check, nonce))
}
