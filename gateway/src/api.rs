//! Wire types of the gateway's APIs, usable without the server (`default-features = false`).
//!
//! Registration (`POST /v1/register` on the registration listener, mutual RA-TLS): the
//! instance's client certificate is its RA-TLS certificate; app id, instance id and compose
//! hash come from that certificate's verified attestation, never from this body.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Largest registration body the gateway reads.
pub const MAX_REGISTER_BODY: usize = 256 * 1024;
/// Most front certificates one registration may carry.
pub const MAX_FRONT_CERTS: usize = 4;
/// Most exposed ports one instance may register.
pub const MAX_PORTS: usize = 64;
/// Largest `app_compose` a registration may carry.
pub const MAX_APP_COMPOSE: usize = 128 * 1024;

/// `POST /v1/register`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Where the gateway reaches the instance's RA-TLS front.
    pub front_addr: SocketAddr,
    /// Container ports the compose exposes (the front refuses any other).
    pub ports: Vec<u16>,
    /// RA-TLS certificates (hex DER) the front serves or is about to serve. Each must
    /// attest the same app and instance as the client certificate. Empty: the client
    /// certificate itself is what the front serves.
    #[serde(default)]
    pub front_certs: Vec<String>,
    /// The exact bytes of the instance's `app-compose.json` (UTF-8). The gateway keeps it
    /// for the attestation page only if its SHA-256 is the attested compose hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_compose: Option<String>,
    /// The KMS root CA (hex DER) that signed the instance's app CA, for the attestation
    /// page's chain. Trusted only where the gateway pins it (`web.kms_root_ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_root_ca: Option<String>,
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub app_id: String,
    pub instance_id: String,
    /// Renew before this many seconds pass, or the instance is dropped.
    pub lease_secs: u64,
    /// SHA-256 fingerprints (hex) of the certificates the gateway will accept upstream.
    pub accepted_fingerprints: Vec<String>,
}

/// Every error body: a reason a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// One registered instance, as the admin API and the web UI show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub app_id: String,
    pub compose_hash: String,
    pub front_addr: SocketAddr,
    pub ports: Vec<u16>,
    pub fingerprints: Vec<String>,
    pub tcb_status: String,
    pub simulated: bool,
    pub mrtd: String,
    pub lease_expires_unix: u64,
    pub healthy: bool,
}

/// `GET /v1/apps`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    pub app_id: String,
    pub instances: Vec<InstanceInfo>,
}
