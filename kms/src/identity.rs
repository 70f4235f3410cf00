//! The KMS's own attested identity: a [`Measurer`] booted with the same four RTMR3 events
//! an app records, under a fixed KMS "compose" (name and version), so replicas of the
//! same KMS release have the same compose hash and app id. Its RA-TLS certificates: the
//! server certificate (signed by the root CA) and, before it has a root, a self-signed
//! client certificate for onboarding.

use std::sync::Arc;
use std::time::Duration;

use rand_core::RngCore;
use ratls::cert::{issue, CertAuthority, CertProfile, Identity, IssueError, RaTlsCert};
use ratls::eventlog::names;
use ratls::provider::{Measurer, ProviderError, ProviderKind, QuoteProvider};
use ratls::{ComposeHash, InstanceId, Measurement, Quote, ReportData};

use crate::api::KmsAttestation;
use crate::root::{RootOfTrust, Sealing};

/// DNS names in the KMS's certificates (clients pin its root and attestation, not names).
pub const KMS_NAMES: [&str; 2] = ["kms.teegate.internal", "localhost"];
/// Lifetime of the KMS's server certificate; a new one is issued at every start.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(30 * 86400);

/// The KMS's stand-in for an `app-compose.json`: its name and version.
pub fn kms_compose() -> String {
    format!(
        "{{\"name\":\"teegate-kms\",\"version\":\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    )
}

pub fn kms_compose_hash() -> ComposeHash {
    ComposeHash::of(kms_compose().as_bytes())
}

/// The KMS as an attested TD.
pub struct KmsIdentity {
    measurer: Measurer,
    identity: Identity,
    boot: (Measurement, [Measurement; 4]),
}

impl std::fmt::Debug for KmsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsIdentity")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl KmsIdentity {
    /// Reads the boot measurements, then records the KMS's events in RTMR3.
    pub fn boot(provider: Arc<dyn QuoteProvider>) -> Result<Self, ProviderError> {
        let measurer = Measurer::new(provider);
        let (quote, _) = measurer.quote(&ReportData::ZERO)?;
        let parsed = Quote::parse(&quote)
            .map_err(|e| ProviderError::Simulated(format!("own quote does not parse: {e}")))?;
        let boot = (parsed.mrtd(), parsed.rtmrs());
        let compose_hash = kms_compose_hash();
        let mut instance = [0u8; 20];
        rand_core::OsRng.fill_bytes(&mut instance);
        let identity = Identity {
            app_id: compose_hash.default_app_id(),
            compose_hash,
            instance_id: InstanceId(instance),
        };
        measurer.emit(names::COMPOSE_HASH, compose_hash.0.to_vec())?;
        measurer.emit(names::APP_ID, identity.app_id.0.to_vec())?;
        measurer.emit(names::INSTANCE_ID, identity.instance_id.0.to_vec())?;
        measurer.emit(
            names::KEY_PROVIDER,
            names::key_provider_payload("teegate-kms", ""),
        )?;
        Ok(Self {
            measurer,
            identity,
            boot,
        })
    }

    pub fn kind(&self) -> ProviderKind {
        self.measurer.kind()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// How `root.json` is protected for this provider (see [`crate::root`]).
    pub fn sealing(&self) -> Sealing {
        match self.kind() {
            ProviderKind::Simulated => Sealing::Plain,
            ProviderKind::Tdx => {
                let (mrtd, r) = &self.boot;
                Sealing::from_measurements(&mrtd.0, [&r[0].0, &r[1].0, &r[2].0])
            }
        }
    }

    fn profile() -> CertProfile {
        CertProfile::server_and_client(
            KMS_NAMES.iter().map(|s| s.to_string()).collect(),
            SERVER_CERT_VALIDITY,
        )
    }

    /// The KMS's server certificate, signed by its root CA.
    pub fn server_cert(&self, root: &RootOfTrust) -> Result<RaTlsCert, IssueError> {
        let ca = CertAuthority::from_der(root.ca_cert_der().to_vec(), root.ca_key_pkcs8())?;
        issue(&self.measurer, &self.identity, &Self::profile(), Some(&ca))
    }

    /// A self-signed RA-TLS certificate (a replica that has no root yet).
    pub fn self_signed_cert(&self) -> Result<RaTlsCert, IssueError> {
        issue(&self.measurer, &self.identity, &Self::profile(), None)
    }

    pub fn attestation(&self) -> KmsAttestation {
        let (mrtd, _) = &self.boot;
        let quote = self
            .measurer
            .quote(&ReportData::ZERO)
            .ok()
            .and_then(|(q, _)| Quote::parse(&q).ok());
        let rtmrs = quote.map(|q| q.rtmrs()).unwrap_or(self.boot.1);
        KmsAttestation {
            app_id: self.identity.app_id.to_hex(),
            compose_hash: self.identity.compose_hash.to_hex(),
            instance_id: self.identity.instance_id.to_hex(),
            mrtd: mrtd.to_hex(),
            rtmrs: rtmrs.map(|r| r.to_hex()),
            simulated: self.kind() == ProviderKind::Simulated,
            provider: self.kind().to_string(),
        }
    }
}
