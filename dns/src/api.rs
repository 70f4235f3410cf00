//! The record API's wire types, and the [`AcmeDnsClient`] trait through which an ACME client
//! sets and clears DNS-01 TXT records.
//!
//! Builds without the server (`default-features = false`); the HTTP implementation
//! [`HttpAcmeDnsClient`] needs the `client` feature. With the `server` feature,
//! [`crate::ZoneHandle`] implements the same trait in-process.
//!
//! Routes (JSON bodies; every call needs `Authorization: Bearer <token>` and a `Host` that
//! names the API: `localhost`, its listen address or one of `api.allowed_hosts`):
//!
//! | method   | path                          | body                  | success            |
//! |----------|-------------------------------|-----------------------|--------------------|
//! | `GET`    | `/v1/zone`                    |                       | 200 [`ZoneView`]   |
//! | `PUT`    | `/v1/acme-challenge/<name>`   | [`AcmeChallengeBody`] | 204                |
//! | `DELETE` | `/v1/acme-challenge/<name>`   |                       | 204                |
//! | `PUT`    | `/v1/gateway-addrs`           | [`GatewayAddrsBody`]  | 204                |
//! | `PUT`    | `/v1/caa-account`             | [`CaaAccountBody`]    | 204                |
//! | `DELETE` | `/v1/caa-account`             |                       | 204                |
//!
//! `<name>` is the TXT record's owner name, `_acme-challenge.<domain>` (see
//! [`challenge_record_name`]). Errors answer 400/401/404/405/413/421 with an [`ApiError`]
//! body (421: the `Host` is not this API, checked before the token).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Path of the zone view.
pub const ZONE_PATH: &str = "/v1/zone";
/// Prefix of the ACME challenge paths; the record name follows.
pub const ACME_CHALLENGE_PREFIX: &str = "/v1/acme-challenge/";
/// Path of the gateway address list.
pub const GATEWAY_ADDRS_PATH: &str = "/v1/gateway-addrs";
/// Path of the CAA account URI.
pub const CAA_ACCOUNT_PATH: &str = "/v1/caa-account";
/// The first label of every DNS-01 challenge record (RFC 8555 section 8.4).
pub const ACME_CHALLENGE_LABEL: &str = "_acme-challenge";

/// Most TXT values one challenge name holds (a certificate for `<base>` and `*.<base>` needs
/// two values at `_acme-challenge.<base>`).
pub const MAX_TXT_VALUES: usize = 8;
/// Longest TXT value in bytes (one character-string).
pub const MAX_TXT_VALUE_LEN: usize = 255;
/// Most challenge names held at once.
pub const MAX_CHALLENGE_NAMES: usize = 256;
/// Most gateway addresses answered for a name.
pub const MAX_GATEWAY_ADDRS: usize = 64;
/// Longest ACME account URI accepted.
pub const MAX_ACCOUNT_URI_LEN: usize = 512;

/// `PUT /v1/acme-challenge/<name>`: the complete set of TXT values for the name (replaces
/// any earlier set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeChallengeBody {
    /// Key authorisation digests (base64url, 43 characters for SHA-256).
    pub values: Vec<String>,
}

/// `PUT /v1/gateway-addrs`: the gateway replicas' addresses (replaces the list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayAddrsBody {
    /// IPv4 addresses answer A queries, IPv6 addresses AAAA queries.
    pub addrs: Vec<IpAddr>,
}

/// `PUT /v1/caa-account`: the ACME account allowed to issue for the zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaaAccountBody {
    /// The account URL the CA returned (`https://…`).
    pub account_uri: String,
}

/// `GET /v1/zone`: the records that change at run time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneView {
    /// The zone's apex, without a trailing dot.
    pub base_domain: String,
    /// The SOA serial; it grows by one on every change.
    pub serial: u32,
    /// What `<base>` and `*.<base>` answer.
    pub gateway_addrs: Vec<IpAddr>,
    /// TXT values by record name (`_acme-challenge.…`, lowercase, no trailing dot).
    pub acme_challenges: BTreeMap<String, Vec<String>>,
    /// The account pinned by the CAA records; no CAA records while `None`.
    pub caa_account_uri: Option<String>,
    /// The issuer domain named in the CAA records.
    pub caa_issuer: String,
}

/// An error answer's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What was wrong, for a person.
    pub error: String,
}

/// The DNS-01 record name for an identifier: `_acme-challenge.<domain>`, with a leading `*.`
/// removed (RFC 8555 section 8.4: a wildcard's challenge lives at the base name).
///
/// ```
/// use teegate_dns::api::challenge_record_name;
/// assert_eq!(challenge_record_name("*.apps.example.com"), "_acme-challenge.apps.example.com");
/// assert_eq!(challenge_record_name("Apps.Example.com."), "_acme-challenge.apps.example.com");
/// ```
pub fn challenge_record_name(domain: &str) -> String {
    let domain = domain.strip_prefix("*.").unwrap_or(domain);
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    format!("{ACME_CHALLENGE_LABEL}.{}", domain.to_ascii_lowercase())
}

/// Why a record API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint URL is not `http://host:port`.
    #[error("invalid DNS API endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// Why it is not usable.
        reason: String,
    },
    /// Connecting or talking to the API failed.
    #[error("DNS API at {endpoint} unreachable: {reason}")]
    Transport {
        /// The API's address.
        endpoint: String,
        /// The I/O or HTTP error.
        reason: String,
    },
    /// The API did not answer in time.
    #[error("DNS API at {endpoint} timed out after {secs} s")]
    Timeout {
        /// The API's address.
        endpoint: String,
        /// The limit that passed.
        secs: u64,
    },
    /// The token is missing or wrong (HTTP 401).
    #[error("DNS API refused the token (HTTP 401): {message}")]
    Unauthorized {
        /// The server's message.
        message: String,
    },
    /// The API answered with an error status.
    #[error("DNS API answered HTTP {status}: {message}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The request was refused by the in-process zone (bad name or values).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The answer could not be decoded.
    #[error("DNS API answer is not valid JSON: {0}")]
    Decode(String),
}

/// What an ACME client needs from the DNS: publish and withdraw DNS-01 TXT values, and pin
/// its account in the CAA records. Implemented in-process by [`crate::ZoneHandle`] (feature
/// `server`) and over HTTP by [`HttpAcmeDnsClient`] (feature `client`).
#[async_trait::async_trait]
pub trait AcmeDnsClient: Send + Sync {
    /// Sets the TXT values of `record_name` (`_acme-challenge.<domain>`), replacing any.
    async fn set_txt(&self, record_name: &str, values: Vec<String>) -> Result<(), ClientError>;
    /// Removes the TXT values of `record_name`; removing an absent name is not an error.
    async fn clear_txt(&self, record_name: &str) -> Result<(), ClientError>;
    /// Pins `account_uri` in the zone's CAA records.
    async fn set_caa_account(&self, account_uri: &str) -> Result<(), ClientError>;
}

#[cfg(feature = "client")]
pub use crate::client::HttpAcmeDnsClient;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_name_strips_wildcard_and_trailing_dot() {
        assert_eq!(
            challenge_record_name("*.a.example"),
            "_acme-challenge.a.example"
        );
        assert_eq!(
            challenge_record_name("x.a.example."),
            "_acme-challenge.x.a.example"
        );
    }

    #[test]
    fn bodies_reject_unknown_fields() {
        assert!(serde_json::from_str::<AcmeChallengeBody>(r#"{"values":["a"],"x":1}"#).is_err());
        let b: GatewayAddrsBody =
            serde_json::from_str(r#"{"addrs":["192.0.2.1","2001:db8::1"]}"#).unwrap();
        assert_eq!(b.addrs.len(), 2);
    }
}
