//! `DnsConfig`: the authoritative DNS server for the base domain (gateway
//! records, ACME DNS-01 TXT records, CAA).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::load::Component;
use crate::store::StoreConfig;
use crate::types::{DnsName, HttpUrl, Secret};
use crate::validate::{check, in_range, key, read_token_file, token, Validate};

/// Largest SOA timer value (RFC 2181: 31-bit).
const MAX_SOA_SECS: u32 = i32::MAX as u32;

/// The DNS server's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone served (required).
    pub base_domain: DnsName,
    /// UDP listener (default `0.0.0.0:53`).
    #[serde(
        default = "default_listen",
        deserialize_with = "crate::types::socket_addr"
    )]
    pub listen_udp: SocketAddr,
    /// TCP listener (default `0.0.0.0:53`).
    #[serde(
        default = "default_listen",
        deserialize_with = "crate::types::socket_addr"
    )]
    pub listen_tcp: SocketAddr,
    /// NS records; `["ns1.<base_domain>"]` when left empty (filled at load).
    #[serde(default)]
    pub ns_names: Vec<DnsName>,
    /// This server's own addresses: what the `ns_names` inside `base_domain` resolve to
    /// (the glue at the parent zone). Empty: those names fall under the wildcard and
    /// resolve to the gateways, which is right only when the DNS runs on the gateways.
    #[serde(default)]
    pub ns_addrs: Vec<IpAddr>,
    /// SOA record.
    #[serde(default)]
    pub soa: SoaConfig,
    /// Addresses `*.<base_domain>` resolves to (the gateway replicas).
    #[serde(default)]
    pub gateway_addrs: Vec<IpAddr>,
    /// TTL of answers (1 to 86400, default 60).
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u32,
    /// API through which the gateway sets ACME TXT records.
    #[serde(default)]
    pub api: DnsApiConfig,
    /// ACME account URI pinned in the CAA record (`accounturi=`).
    #[serde(default)]
    pub caa_account_uri: Option<HttpUrl>,
    /// The CA's issuer domain named in the CAA records (`issue "<caa_issuer>; accounturi=…"`;
    /// default `letsencrypt.org`).
    #[serde(default = "default_caa_issuer")]
    pub caa_issuer: DnsName,
    /// The gateways' shared store. With `[store.etcd]`, `*.<base_domain>` answers the
    /// `advertise_addrs` of the live gateway replicas (falling back to `gateway_addrs`
    /// while none is listed); `"embedded"` (default): `gateway_addrs` only.
    #[serde(default)]
    pub store: StoreConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 53))
}
fn default_ttl_secs() -> u32 {
    60
}
fn default_caa_issuer() -> DnsName {
    DnsName::parse("letsencrypt.org").expect("a valid constant name")
}

impl Component for DnsConfig {
    const NAME: &'static str = "dns";

    fn resolve_defaults(&mut self) -> Result<(), ConfigError> {
        let derived = |label: &str, field: &str| {
            self.base_domain
                .prepend(label)
                .map_err(|reason| ConfigError::invalid(key(Self::NAME, field), reason))
        };
        if self.ns_names.is_empty() {
            self.ns_names = vec![derived("ns1", "ns_names")?];
        }
        if self.soa.mname.is_none() {
            self.soa.mname = Some(self.ns_names[0].clone());
        }
        if self.soa.rname.is_none() {
            self.soa.rname = Some(derived("hostmaster", "soa.rname")?);
        }
        read_token_file(
            &key(Self::NAME, "api"),
            "token_file",
            self.api.token_file.as_deref(),
            &mut self.api.token,
            "token",
        )
    }
}

impl Validate for DnsConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for (field, addrs) in [
            ("gateway_addrs", &self.gateway_addrs),
            ("ns_addrs", &self.ns_addrs),
        ] {
            for (i, ip) in addrs.iter().enumerate() {
                if ip.is_unspecified() || ip.is_multicast() {
                    return Err(ConfigError::invalid(
                        key(at, &format!("{field}[{i}]")),
                        format!("{ip} is not a usable host address"),
                    ));
                }
            }
        }
        if self.ns_addrs.len() > 16 {
            return Err(ConfigError::invalid(
                key(at, "ns_addrs"),
                "at most 16 addresses",
            ));
        }
        in_range(at, "ttl_secs", self.ttl_secs, 1..=86_400)?;
        self.store.validate(&key(at, "store"))?;
        self.soa.validate(&key(at, "soa"))?;
        self.api.validate(&key(at, "api"))?;
        if let Some(uri) = &self.caa_account_uri {
            check(at, "caa_account_uri", uri.require_https())?;
        }
        if !self.caa_issuer.as_str().contains('.') {
            return Err(ConfigError::invalid(
                key(at, "caa_issuer"),
                format!(
                    "{:?} is not an issuer domain (e.g. \"letsencrypt.org\")",
                    self.caa_issuer.as_str()
                ),
            ));
        }
        Ok(())
    }
}

/// `[soa]`: the zone's SOA record.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoaConfig {
    /// Primary name server; the first of `ns_names` when absent (always
    /// `Some` after loading).
    pub mname: Option<DnsName>,
    /// Responsible mailbox as a DNS name; `hostmaster.<base_domain>` when
    /// absent (always `Some` after loading).
    pub rname: Option<DnsName>,
    /// Serial (default 1).
    pub serial: u32,
    /// Seconds (default 3600).
    pub refresh: u32,
    /// Seconds (default 600).
    pub retry: u32,
    /// Seconds (default 604800).
    pub expire: u32,
    /// Negative-caching TTL in seconds (default 60).
    pub minimum: u32,
}

impl Default for SoaConfig {
    fn default() -> Self {
        SoaConfig {
            mname: None,
            rname: None,
            serial: 1,
            refresh: 3600,
            retry: 600,
            expire: 604_800,
            minimum: 60,
        }
    }
}

impl Validate for SoaConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        in_range(at, "refresh", self.refresh, 1..=MAX_SOA_SECS)?;
        in_range(at, "retry", self.retry, 1..=MAX_SOA_SECS)?;
        in_range(at, "expire", self.expire, 1..=MAX_SOA_SECS)?;
        in_range(at, "minimum", self.minimum, 1..=86_400)?;
        if self.expire <= self.refresh {
            return Err(ConfigError::invalid(
                key(at, "expire"),
                format!(
                    "must be greater than refresh ({}), got {}",
                    self.refresh, self.expire
                ),
            ));
        }
        Ok(())
    }
}

/// `[api]`: the record-update API.
///
/// It can rewrite `_acme-challenge`, CAA and the gateway records (enough to have a
/// certificate issued for the zone), so every call needs the token, also on loopback: a
/// browser on the same machine reaches loopback, and through DNS rebinding with a name of
/// the attacker's, which is why the `Host` header is checked too.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsApiConfig {
    /// Listener (default `127.0.0.1:8053`).
    #[serde(deserialize_with = "crate::types::socket_addr")]
    pub listen: SocketAddr,
    /// Bearer token. Prefer `token_file`, or `TEEGATE_DNS__API__TOKEN`. After loading it
    /// holds the token read from `token_file` when that is set.
    pub token: Option<Secret>,
    /// File holding the bearer token (read at load; a trailing newline is dropped). One
    /// of `token_file` and `token` is required.
    pub token_file: Option<PathBuf>,
    /// Names besides `localhost` and the listen address that clients may send as `Host`.
    pub allowed_hosts: Vec<DnsName>,
}

impl Default for DnsApiConfig {
    fn default() -> Self {
        DnsApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8053)),
            token: None,
            token_file: None,
            allowed_hosts: Vec::new(),
        }
    }
}

impl Validate for DnsApiConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.allowed_hosts.len() > 64 {
            return Err(ConfigError::invalid(
                key(at, "allowed_hosts"),
                "at most 64 names",
            ));
        }
        match &self.token {
            Some(t) => token(at, "token", t),
            None => Err(ConfigError::invalid(
                key(at, "token_file"),
                "is required: the record API takes no call without a bearer token (set api.token_file to a file holding one, or api.token / TEEGATE_DNS__API__TOKEN)",
            )),
        }
    }
}
