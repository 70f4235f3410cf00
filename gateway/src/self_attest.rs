//! The start-up check of an attested gateway (`[attestation]`): its guest API answers, and
//! a fresh quote from it verifies under the gateway's own `[verifier]`, through the very
//! pipeline sidecars' certificates go through (quote signature, TCB status, key binding,
//! freshness, event-log replay, app authorisation, policy). There is no fallback: any
//! failure stops the gateway, naming `attestation.guest_api`, the step and the cause.
//!
//! A content-addressed gateway app (app id = its compose hash's first 20 bytes) is checked
//! on a throwaway certificate the gateway issues itself, quoting through the guest API
//! with a nonce of its own. A named app id can only be authorised by the KMS, through the
//! app CA it signs for the app: then the check is on a fresh certificate the sidecar
//! issues with that CA (`POST /tls-key`), verified with its chain against
//! `verifier.kms_roots`. A named app id keeps its KMS keys, so its sealed records, across
//! compose upgrades the KMS policy allows.
//!
//! ```text
//!  GET /info ─▶ identity ─┐
//!  POST /quote (zeros) ─▶ event log ─┐
//!                                    ├─▶ ratls::cert::issue (throwaway key, client nonce,
//!  POST /quote (claims hash) ◀───────┘      quote through GuestQuoter) ─▶ self-check cert
//!  AttestationVerifier (+ expect_nonce) ─▶ VerifiedAttestation of the gateway's own CVM
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratls::cert::{issue, CertProfile, Identity};
use ratls::eventlog::EventLog;
use ratls::provider::{Measurer, ProviderError, ProviderKind, QuoteProvider};
use ratls::{AttestationVerifier, Measurement, ReportData, VerifiedAttestation, VerifyError};

use crate::guest::{GuestApi, GuestError, GuestInfo};

/// How often the check is retried when the CVM's event log grew between reading it and
/// quoting (an event emitted meanwhile); more than that is not a race but a busy emitter.
const LOG_RACE_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum SelfAttestError {
    #[error("attestation.guest_api: the gateway's guest API is unreachable ({0}); without it the gateway does not start (no fallback to running unattested)")]
    Unreachable(GuestError),
    #[error("attestation.guest_api: {0}")]
    GuestApi(GuestError),
    #[error("attestation.guest_api: the gateway's own quote does not verify with its [verifier] at step {}: {}", .0.step, .0.reason)]
    Verify(VerifyError),
    #[error("attestation.guest_api: could not build the self-check certificate: {0}")]
    Issue(String),
    #[error("attestation.guest_api: the CVM's event log kept changing while quoting ({LOG_RACE_RETRIES} tries)")]
    LogRace,
}

impl SelfAttestError {
    /// The verification step that failed, when it was verification.
    pub fn step(&self) -> Option<ratls::Step> {
        match self {
            SelfAttestError::Verify(e) => Some(e.step),
            _ => None,
        }
    }
}

/// An attested gateway's own CVM: its guest API, what it says of itself, and the verdict
/// of the start-up check on a fresh quote from it.
#[derive(Debug, Clone)]
pub struct AttestedSelf {
    pub api: GuestApi,
    pub info: GuestInfo,
    pub verified: VerifiedAttestation,
}

/// Quotes through the guest API for `ratls::cert::issue`, which asks synchronously: it
/// runs on a blocking thread and waits on the runtime. It never extends RTMR3.
struct GuestQuoter {
    api: GuestApi,
    runtime: tokio::runtime::Handle,
    kind: ProviderKind,
    /// The event log the guest API returned with the last quote.
    last_log: Mutex<Option<EventLog>>,
    /// Why the last quote failed, kept whole (the provider error type only carries text).
    last_error: Mutex<Option<GuestError>>,
}

impl QuoteProvider for GuestQuoter {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    fn quote(&self, report_data: &ReportData) -> Result<Vec<u8>, ProviderError> {
        let answer = match self.runtime.block_on(self.api.quote(report_data)) {
            Ok(a) => a,
            Err(e) => {
                let text = e.to_string();
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return Err(ProviderError::Simulated(text));
            }
        };
        *self.last_log.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer.event_log);
        Ok(answer.quote)
    }

    fn extend_rtmr3(&self, _digest: &Measurement) -> Result<(), ProviderError> {
        Err(ProviderError::Simulated(
            "the gateway's self-check never extends RTMR3".into(),
        ))
    }
}

/// Connects to the guest API at `socket` and verifies a fresh quote from it with `verifier`.
pub async fn check(
    socket: &std::path::Path,
    verifier: &AttestationVerifier,
) -> Result<AttestedSelf, SelfAttestError> {
    let (api, info) = GuestApi::connect(socket).await.map_err(|e| {
        if e.kind.is_unreachable() {
            SelfAttestError::Unreachable(e)
        } else {
            SelfAttestError::GuestApi(e)
        }
    })?;
    if info.app_id != info.compose_hash.default_app_id() {
        let verified = check_named(&api, verifier).await?;
        return Ok(AttestedSelf {
            api,
            info,
            verified,
        });
    }
    for _ in 0..LOG_RACE_RETRIES {
        let log = api
            .quote(&ReportData::ZERO)
            .await
            .map_err(SelfAttestError::GuestApi)?
            .event_log;
        let quoter = Arc::new(GuestQuoter {
            api: api.clone(),
            runtime: tokio::runtime::Handle::current(),
            kind: if info.simulated {
                ProviderKind::Simulated
            } else {
                ProviderKind::Tdx
            },
            last_log: Mutex::new(None),
            last_error: Mutex::new(None),
        });
        let identity = Identity {
            app_id: info.app_id,
            compose_hash: info.compose_hash,
            instance_id: info.instance_id,
        };
        let nonce: [u8; 32] = rand::random();
        let mut profile = CertProfile::server_and_client(
            vec!["gateway-self-check.invalid".into()],
            Duration::from_secs(600),
        );
        profile.nonce = Some(nonce.to_vec());
        let measurer = Measurer::resume(quoter.clone(), log.clone());
        // `issue` asks for its quote synchronously: off the runtime's worker threads.
        let cert = tokio::task::spawn_blocking(move || issue(&measurer, &identity, &profile, None))
            .await
            .map_err(|e| SelfAttestError::Issue(e.to_string()))?
            .map_err(|e| {
                match quoter
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    Some(guest) => SelfAttestError::GuestApi(guest),
                    None => SelfAttestError::Issue(e.to_string()),
                }
            })?;
        let quoted_log = quoter
            .last_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if quoted_log.as_ref() != Some(&log) {
            tracing::info!("the CVM's event log changed while quoting; checking again");
            continue;
        }
        let verified = verifier
            .clone()
            .expect_nonce(nonce.to_vec())
            .verify(&cert.cert_der)
            .map_err(SelfAttestError::Verify)?;
        return Ok(AttestedSelf {
            api,
            info,
            verified,
        });
    }
    Err(SelfAttestError::LogRace)
}

/// The check of a named app id: a certificate the sidecar issues now with the app CA.
async fn check_named(
    api: &GuestApi,
    verifier: &AttestationVerifier,
) -> Result<VerifiedAttestation, SelfAttestError> {
    let issued = api
        .tls_key(&["gateway-self-check.invalid".to_string()], 600)
        .await
        .map_err(SelfAttestError::GuestApi)?;
    let issuers: Vec<&[u8]> = issued.chain[1..].iter().map(Vec::as_slice).collect();
    let verified = verifier
        .verify_chain(&issued.chain[0], &issuers)
        .map_err(SelfAttestError::Verify)?;
    // Issued for this check, not an old certificate replayed: its validity starts now
    // (the sidecar backdates by at most five minutes).
    let not_before = crate::certs::x509_not_before(&issued.chain[0]).unwrap_or(0);
    let now = ratls::verifier::unix_now();
    if not_before + 600 < now || not_before > now + 600 {
        return Err(SelfAttestError::Issue(format!(
            "the guest API's certificate is not fresh (valid from unix {not_before}, now {now})"
        )));
    }
    Ok(verified)
}
