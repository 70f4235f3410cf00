//! The KMS's HTTP API: paths and JSON request/response bodies. Builds without the server
//! (`default-features = false`), so sidecars and tools share these types.
//!
//! | method | path                        | client certificate        | body → answer                     |
//! |--------|-----------------------------|---------------------------|-----------------------------------|
//! | POST   | `/v1/app-keys`              | RA-TLS (app instance)     | [`AppKeysRequest`] → [`AppKeysResponse`] |
//! | GET    | `/v1/apps/<app-id>/env-key` | none                      | → [`EnvKeyResponse`]              |
//! | GET    | `/v1/info`                  | none                      | → [`InfoResponse`]                |
//! | POST   | `/v1/onboard`               | RA-TLS (KMS replica)      | → [`OnboardResponse`]             |
//!
//! Every refusal is an HTTP error status with an [`ErrorBody`] whose `reason` says why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::P256Box;
use crate::secret::{SecretBytes, SecretString};

pub const PATH_APP_KEYS: &str = "/v1/app-keys";
pub const PATH_INFO: &str = "/v1/info";
pub const PATH_ONBOARD: &str = "/v1/onboard";

/// `/v1/apps/<app-id>/env-key`.
pub fn env_key_path(app_id_hex: &str) -> String {
    format!("/v1/apps/{app_id_hex}/env-key")
}

/// What an attested caller proved, as the KMS judged it (all values lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootInfo {
    pub app_id: String,
    pub compose_hash: String,
    pub instance_id: String,
    pub mrtd: String,
    pub rtmr0: String,
    pub rtmr1: String,
    pub rtmr2: String,
    pub rtmr3: String,
    /// Intel TCB status name (`UpToDate`, `SWHardeningNeeded`, …).
    pub tcb_status: String,
    #[serde(default)]
    pub advisory_ids: Vec<String>,
    /// The quote came from teegate's simulated TDX, which proves nothing about hardware.
    pub simulated: bool,
    /// SHA-256 of the caller's certificate.
    pub cert_fingerprint: String,
}

/// `POST /v1/app-keys` body. An empty body (or `{}`) asks for the standard keys only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppKeysRequest {
    /// Extra app-chosen keys, derived with purpose `app/<path>` (32 bytes each).
    #[serde(default)]
    pub paths: Vec<String>,
}

/// `POST /v1/app-keys` answer: everything an app instance needs, and how it was judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppKeysResponse {
    pub app_id: String,
    /// The app CA certificate (PEM), signed by the root CA, path length 0.
    pub app_ca_cert_pem: String,
    /// The app CA private key (PKCS#8 PEM).
    pub app_ca_key_pem: SecretString,
    /// 32-byte disk encryption key.
    pub disk_key: SecretBytes,
    /// X25519 private key for the encrypted environment (32 bytes).
    pub env_private_key: SecretBytes,
    /// Its public key (hex), as `/v1/apps/<id>/env-key` publishes it.
    pub env_public_key: String,
    /// One 32-byte key per requested `app/<path>`.
    #[serde(default)]
    pub app_keys: BTreeMap<String, SecretBytes>,
    /// The app's secp256k1 root key (32 bytes), which signs dstack `GetKey` keys.
    pub app_k256_key: SecretBytes,
    /// The KMS k256 root's signature (65 bytes `r ‖ s ‖ v`, hex) over the app k256 public
    /// key, [`crate::dstack_keys::kms_issued_message`]: dstack's `signature_chain[1]`.
    pub app_k256_signature: String,
    /// The KMS root CA certificate (PEM).
    pub root_ca_cert_pem: String,
    pub boot_info: BootInfo,
}

/// `GET /v1/apps/<app-id>/env-key` answer. Check it with [`crate::envelope::verify_env_key`]
/// against a root CA you pinned, never against the `root_ca_cert_pem` it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvKeyResponse {
    pub app_id: String,
    /// X25519 public key, hex.
    pub env_public_key: String,
    /// ECDSA P-256 / SHA-256 signature (DER, hex) by the root CA key over
    /// [`crate::envelope::env_key_message`].
    pub signature: String,
    pub root_ca_cert_pem: String,
}

/// An allowlist as a summary: `"any"`, `"none (deny)"` or the values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ListSummary {
    Word(String),
    Values(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasurementSummary {
    pub mrtd: ListSummary,
    pub rtmr0: ListSummary,
    pub rtmr1: ListSummary,
    pub rtmr2: ListSummary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppPolicySummary {
    pub app_id: String,
    pub compose_hashes: ListSummary,
    pub allow_simulated: bool,
    pub min_tcb_status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    pub os: MeasurementSummary,
    pub kms_measurements: MeasurementSummary,
    pub apps: Vec<AppPolicySummary>,
    /// Webhook URL, when releases also need its approval.
    pub webhook: Option<String>,
    /// Whether simulated quotes can pass verification at all.
    pub verifier_allows_simulated: bool,
}

/// `GET /v1/info` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResponse {
    pub version: String,
    pub root_ca_cert_pem: String,
    /// The KMS's secp256k1 root public key (compressed SEC1, hex): the end of every dstack
    /// `GetKey` signature chain of this KMS's apps.
    pub k256_root_public_key: String,
    /// The KMS's own RA-TLS certificate (PEM): its quote and event log are inside.
    pub kms_cert_pem: String,
    /// What that certificate attests.
    pub attestation: KmsAttestation,
    pub policy: PolicySummary,
}

/// The KMS's own identity and measurements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsAttestation {
    pub app_id: String,
    pub compose_hash: String,
    pub instance_id: String,
    pub mrtd: String,
    pub rtmrs: [String; 4],
    pub simulated: bool,
    pub provider: String,
}

/// `POST /v1/onboard` answer: the root of trust, sealed to the replica's RA-TLS key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnboardResponse {
    pub root_ca_cert_pem: String,
    /// [`OnboardSecrets`] as JSON, sealed with [`crate::envelope::seal_p256`] to the public
    /// key of the replica's client certificate; the AAD is [`onboard_aad`].
    pub sealed: P256Box,
}

/// What a replica receives inside [`OnboardResponse::sealed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnboardSecrets {
    pub root_secret: SecretBytes,
    /// Root CA private key, PKCS#8 DER.
    pub root_ca_key_pkcs8: SecretBytes,
    /// Root CA certificate, DER (hex).
    pub root_ca_cert: String,
}

/// Additional data bound into the onboarding box: the replica certificate's fingerprint,
/// so a box made for one replica handshake cannot be replayed into another context.
pub fn onboard_aad(replica_cert_fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut aad = b"teegate-onboard-v1:".to_vec();
    aad.extend_from_slice(replica_cert_fingerprint);
    aad
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Short code: `unauthenticated`, `denied`, `bad-request`, `not-found`, `internal`.
    pub error: String,
    /// Why, in words (for a denial: the verification step or policy rule that failed).
    pub reason: String,
}
