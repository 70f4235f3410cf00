//! `GatewayConfig`: the Pingora gateway (TLS termination, routing to CVMs,
//! registration, admin API, certificate management, shared store).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use crate::attestation::AttestationConfig;
use crate::error::ConfigError;
use crate::load::Component;
use crate::store::StoreConfig;
use crate::types::{DnsName, DomainSuffix, HttpUrl, Secret};
use crate::validate::{
    check, distinct_listeners, in_range, key, non_empty_path, read_token_file, token, Validate,
};
use crate::verifier::VerifierConfig;

/// Let's Encrypt's production ACME directory.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

const MIB: u32 = 1024 * 1024;

/// The gateway's configuration (`[gateway]`-less top level of its file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Apps are served at `<app-id>.<base_domain>` (required).
    pub base_domain: DnsName,
    /// Public HTTPS listener (default `0.0.0.0:443`).
    #[serde(
        default = "default_listen_https",
        deserialize_with = "crate::types::socket_addr"
    )]
    pub listen_https: SocketAddr,
    /// Plain HTTP listener, for redirects (default `0.0.0.0:80`).
    #[serde(
        default = "default_listen_http",
        deserialize_with = "crate::types::socket_addr"
    )]
    pub listen_http: SocketAddr,
    /// Where sidecars register over mutual RA-TLS (default `0.0.0.0:8443`).
    #[serde(
        default = "default_listen_registration",
        deserialize_with = "crate::types::socket_addr"
    )]
    pub listen_registration: SocketAddr,
    /// Admin API and metrics (default `127.0.0.1:9443`).
    #[serde(
        default = "default_listen_admin",
        deserialize_with = "crate::types::socket_addr"
    )]
    pub listen_admin: SocketAddr,
    /// State directory (default `/var/lib/teegate/gateway`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Pingora worker threads (1 to 256, default 1).
    #[serde(default = "default_workers")]
    pub workers: u16,
    /// With several workers, give each its own HTTPS listening socket (SO_REUSEPORT: the
    /// kernel spreads new connections over them, and a connection is accepted and served
    /// on one thread) instead of one socket whose connections are handed to the workers
    /// (default true).
    #[serde(default = "yes")]
    pub listener_per_worker: bool,
    /// Seconds to let connections finish on shutdown (1 to 3600, default 10).
    #[serde(default = "default_grace_period_secs")]
    pub grace_period_secs: u64,
    /// Bearer token for the admin API; none turns the admin API off. Prefer
    /// `TEEGATE_GATEWAY__ADMIN_TOKEN` to writing it in the file.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// Log each request (default true).
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Where the gateway's own certificate comes from.
    #[serde(default)]
    pub tls: GatewayTlsConfig,
    /// Size, count and time limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How upstream CVM instances are picked and reached.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Sidecar registrations.
    #[serde(default)]
    pub registration: RegistrationConfig,
    /// Custom domains (certificates on demand).
    #[serde(default)]
    pub custom_domains: CustomDomainsConfig,
    /// How sidecars' RA-TLS certificates are verified.
    #[serde(default)]
    pub verifier: VerifierConfig,
    /// Where shared state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// Public addresses of this replica. With an etcd store they are published in the
    /// replica list, from which `teegate dns` answers `*.<base_domain>`; empty (default):
    /// this replica is not offered by DNS.
    #[serde(default)]
    pub advertise_addrs: Vec<IpAddr>,
    /// Seconds a replica stays in the replica list after it stops renewing its lease, i.e.
    /// how long DNS may still offer a dead replica (2 to 300, default 10).
    #[serde(default = "default_replica_lease_secs")]
    pub replica_lease_secs: u64,
    /// The chain-of-trust pages at `https://<base_domain>/`.
    #[serde(default)]
    pub web: WebConfig,
    /// The gateway's own attestation (a guest API to quote and derive keys through);
    /// none: the gateway is not attested.
    #[serde(default)]
    pub attestation: Option<AttestationConfig>,
    /// Unattested gateways only: the file holding the key that seals private keys in the
    /// store (default `<data_dir>/seal.key`, made with mode 0600 when missing). Replicas
    /// sharing an etcd store need the same file.
    #[serde(default)]
    pub seal_key_file: Option<PathBuf>,
}

fn default_replica_lease_secs() -> u64 {
    10
}
fn default_listen_https() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 443))
}
fn default_listen_http() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 80))
}
fn default_listen_registration() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}
fn default_listen_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9443))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/teegate/gateway")
}
fn default_workers() -> u16 {
    1
}
fn default_grace_period_secs() -> u64 {
    10
}
fn yes() -> bool {
    true
}

impl Component for GatewayConfig {
    const NAME: &'static str = "gateway";

    fn resolve_defaults(&mut self) -> Result<(), ConfigError> {
        let acme = &mut self.tls.acme;
        read_token_file(
            &key(Self::NAME, "tls.acme"),
            "dns_api_token_file",
            acme.dns_api_token_file.as_deref(),
            &mut acme.dns_api_token,
            "dns_api_token",
        )
    }
}

impl Validate for GatewayConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        distinct_listeners(
            at,
            &[
                ("listen_https", self.listen_https),
                ("listen_http", self.listen_http),
                ("listen_registration", self.listen_registration),
                ("listen_admin", self.listen_admin),
            ],
        )?;
        non_empty_path(at, "data_dir", &self.data_dir)?;
        in_range(at, "workers", self.workers, 1..=256)?;
        in_range(at, "grace_period_secs", self.grace_period_secs, 1..=3600)?;
        if let Some(t) = &self.admin_token {
            token(at, "admin_token", t)?;
        }
        self.tls.validate(&key(at, "tls"))?;
        self.limits.validate(&key(at, "limits"))?;
        self.upstream.validate(&key(at, "upstream"))?;
        self.registration.validate(&key(at, "registration"))?;
        self.custom_domains.validate(&key(at, "custom_domains"))?;
        self.verifier.validate(&key(at, "verifier"))?;
        self.web.validate(&key(at, "web"))?;
        for (i, ip) in self.advertise_addrs.iter().enumerate() {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(ConfigError::invalid(
                    key(at, &format!("advertise_addrs[{i}]")),
                    format!("{ip} is not an address clients can reach"),
                ));
            }
        }
        in_range(at, "replica_lease_secs", self.replica_lease_secs, 2..=300)?;
        if let Some(a) = &self.attestation {
            a.validate(&key(at, "attestation"))?;
        }
        if let Some(path) = &self.seal_key_file {
            non_empty_path(at, "seal_key_file", path)?;
            if self.attestation.is_some() {
                return Err(ConfigError::invalid(
                    key(at, "seal_key_file"),
                    "is only used without [attestation] (an attested gateway's sealing key comes from its guest API)",
                ));
            }
        }
        self.store.validate(&key(at, "store"))
    }
}

/// Where the gateway's wildcard certificate comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Obtained and renewed with ACME DNS-01.
    #[default]
    Acme,
    /// Generated at start (development).
    SelfSigned,
    /// Read from `cert_file` and `key_file`.
    Files,
}

/// `[tls]`: the gateway's certificate.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayTlsConfig {
    /// `acme` (default), `self_signed` or `files`.
    pub mode: TlsMode,
    /// PEM certificate chain (mode `files` only).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (mode `files` only).
    pub key_file: Option<PathBuf>,
    /// ACME settings (mode `acme`).
    pub acme: AcmeConfig,
}

impl Validate for GatewayTlsConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for (field, value) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            match (self.mode, value) {
                (TlsMode::Files, None) => {
                    return Err(ConfigError::invalid(
                        key(at, field),
                        "is required when tls.mode = \"files\"",
                    ))
                }
                (TlsMode::Files, Some(path)) => non_empty_path(at, field, path)?,
                (_, Some(_)) => {
                    return Err(ConfigError::invalid(
                        key(at, field),
                        "is only used when tls.mode = \"files\"",
                    ))
                }
                (_, None) => {}
            }
        }
        self.acme.validate(&key(at, "acme"))
    }
}

/// `[tls.acme]`: certificate issuance.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// ACME directory (default Let's Encrypt production).
    pub directory_url: HttpUrl,
    /// Extra CA bundle to trust for the ACME server (e.g. Pebble's).
    pub ca_bundle: Option<PathBuf>,
    /// Account contacts, `mailto:` URIs.
    pub contact: Vec<String>,
    /// Renew once this fraction of the validity has passed (default 0.666).
    pub renew_at_fraction: f64,
    /// teegate DNS record API that publishes the DNS-01 TXT records (required for `acme`).
    pub dns_api_url: Option<HttpUrl>,
    /// Bearer token for the DNS record API (better set by `TEEGATE_GATEWAY__TLS__ACME__DNS_API_TOKEN`).
    /// After loading it holds the token read from `dns_api_token_file` when that is set.
    pub dns_api_token: Option<Secret>,
    /// File holding that token (read at load). One of the two is required with
    /// `dns_api_url`.
    pub dns_api_token_file: Option<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory_url: HttpUrl::parse(LETS_ENCRYPT_DIRECTORY)
                .expect("the built-in ACME directory URL is valid"),
            ca_bundle: None,
            contact: Vec::new(),
            renew_at_fraction: 0.666,
            dns_api_url: None,
            dns_api_token: None,
            dns_api_token_file: None,
        }
    }
}

impl Validate for AcmeConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check(
            at,
            "directory_url",
            self.directory_url.require_https_or_loopback(),
        )?;
        if let Some(bundle) = &self.ca_bundle {
            non_empty_path(at, "ca_bundle", bundle)?;
        }
        for (i, contact) in self.contact.iter().enumerate() {
            let valid = contact
                .strip_prefix("mailto:")
                .and_then(|addr| addr.split_once('@'))
                .is_some_and(|(user, host)| {
                    !user.is_empty() && !host.is_empty() && !contact.contains(char::is_whitespace)
                });
            if !valid {
                return Err(ConfigError::invalid(
                    key(at, &format!("contact[{i}]")),
                    format!("{contact:?} must be a mailto: URI such as \"mailto:ops@example.com\""),
                ));
            }
        }
        if let Some(url) = &self.dns_api_url {
            check(at, "dns_api_url", url.require_https_or_loopback())?;
            match &self.dns_api_token {
                Some(t) => token(at, "dns_api_token", t)?,
                None => {
                    return Err(ConfigError::invalid(
                        key(at, "dns_api_token_file"),
                        "is required with dns_api_url: the DNS record API takes no call without its bearer token (or set dns_api_token / TEEGATE_GATEWAY__TLS__ACME__DNS_API_TOKEN)",
                    ))
                }
            }
        }
        let f = self.renew_at_fraction;
        if !(f > 0.0 && f < 1.0) {
            return Err(ConfigError::invalid(
                key(at, "renew_at_fraction"),
                format!("must be greater than 0 and less than 1, got {f}"),
            ));
        }
        Ok(())
    }
}

/// `[limits]`: sizes, counts and timeouts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request header block (1024 to 1 MiB, default 16384).
    pub max_header_bytes: u32,
    /// Concurrent connections per app (default 1024).
    pub max_connections_per_app: u32,
    /// Concurrent connections in all (default 10000).
    pub max_connections: u32,
    /// Close idle client connections after this long (default 60).
    pub idle_timeout_secs: u64,
    /// Give up on a request after this long (default 60).
    pub request_timeout_secs: u64,
    /// Time to receive a ClientHello (default 5000).
    pub client_hello_timeout_ms: u64,
    /// Largest ClientHello read while peeking the SNI (default 16384).
    pub client_hello_max_bytes: u32,
    /// Time from a request head's first byte to its end, for every request on a
    /// connection; past it the client gets 408 and the connection closes (1 to 3600,
    /// default 15).
    pub header_timeout_secs: u64,
    /// Concurrent client connections from one IP address (1 to `max_connections`,
    /// default 256), so one address cannot hold all of `max_connections`.
    pub max_connections_per_ip: u32,
    /// Concurrent HTTP/2 streams per client connection (1 to 1000, default 100).
    pub max_h2_streams: u32,
    /// Idle verified upstream connections kept per instance and port on each worker
    /// thread (1 to 16384, default 512). Each request in flight needs its own upstream
    /// connection (HTTP/1 to the CVM), so this should cover the requests one worker has in
    /// flight to one instance (HTTP/2 clients multiply them); below that, requests open new
    /// TLS connections to the CVM instead of reusing one.
    pub upstream_idle_per_instance: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: 16384,
            max_connections_per_app: 1024,
            max_connections: 10_000,
            idle_timeout_secs: 60,
            request_timeout_secs: 60,
            client_hello_timeout_ms: 5000,
            client_hello_max_bytes: 16384,
            header_timeout_secs: 15,
            max_connections_per_ip: 256,
            max_h2_streams: 100,
            upstream_idle_per_instance: 512,
        }
    }
}

impl Validate for LimitsConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        in_range(at, "max_header_bytes", self.max_header_bytes, 1024..=MIB)?;
        in_range(at, "max_connections", self.max_connections, 1..=10_000_000)?;
        in_range(
            at,
            "max_connections_per_app",
            self.max_connections_per_app,
            1..=self.max_connections,
        )?;
        in_range(at, "idle_timeout_secs", self.idle_timeout_secs, 1..=86_400)?;
        in_range(
            at,
            "request_timeout_secs",
            self.request_timeout_secs,
            1..=86_400,
        )?;
        in_range(
            at,
            "client_hello_timeout_ms",
            self.client_hello_timeout_ms,
            1..=60_000,
        )?;
        in_range(
            at,
            "client_hello_max_bytes",
            self.client_hello_max_bytes,
            512..=MIB,
        )?;
        in_range(
            at,
            "header_timeout_secs",
            self.header_timeout_secs,
            1..=3600,
        )?;
        in_range(
            at,
            "max_connections_per_ip",
            self.max_connections_per_ip,
            1..=self.max_connections,
        )?;
        in_range(at, "max_h2_streams", self.max_h2_streams, 1..=1000)?;
        in_range(
            at,
            "upstream_idle_per_instance",
            self.upstream_idle_per_instance,
            1..=16384,
        )
    }
}

/// How an instance is picked among an app's healthy instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The one with the fewest open connections.
    LeastConnections,
}

/// `[upstream]`: proxying to sidecars.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `round_robin` (default) or `least_connections`.
    pub balance: Balance,
    /// Skip an instance this long after it failed (default 10).
    pub down_backoff_secs: u64,
    /// Retries on another instance when connecting fails (0 to 5, default 1).
    pub retries: u8,
    /// Connect timeout (default 3000).
    pub connect_timeout_ms: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            balance: Balance::RoundRobin,
            down_backoff_secs: 10,
            retries: 1,
            connect_timeout_ms: 3000,
        }
    }
}

impl Validate for UpstreamConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        in_range(at, "down_backoff_secs", self.down_backoff_secs, 1..=3600)?;
        in_range(at, "retries", self.retries, 0..=5)?;
        in_range(
            at,
            "connect_timeout_ms",
            self.connect_timeout_ms,
            1..=60_000,
        )
    }
}

/// `[registration]`: sidecar registrations.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// A registration expires unless renewed within this time (default 60).
    pub lease_secs: u64,
    /// Accept instances whose address is a loopback one (tests, `dev`).
    pub allow_loopback: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            lease_secs: 60,
            allow_loopback: false,
        }
    }
}

impl Validate for RegistrationConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        in_range(at, "lease_secs", self.lease_secs, 1..=86_400)
    }
}

/// `[web]`: the chain-of-trust pages served at the base domain.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the pages (default true). Off: the base domain answers 404.
    pub enabled: bool,
    /// PEM files of the KMS root CAs the pages vouch for. An instance's chain whose root
    /// is not among them is shown as failed; with none, roots are shown as not checked.
    pub kms_root_ca: Vec<PathBuf>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            kms_root_ca: Vec::new(),
        }
    }
}

impl Validate for WebConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for path in &self.kms_root_ca {
            non_empty_path(at, "kms_root_ca", path)?;
        }
        Ok(())
    }
}

/// `[custom_domains]`: domains pointed at an app by a TXT record.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CustomDomainsConfig {
    /// Serve custom domains at all (default false).
    pub enabled: bool,
    /// Domains allowed (`example.com`: it and below; `*.example.com`: only
    /// below). Empty: any domain with a valid TXT record.
    pub allow: Vec<DomainSuffix>,
    /// Optional URL asked (`?domain=…`) before ordering a certificate.
    pub ask_url: Option<HttpUrl>,
    /// How long a `_teegate-app` TXT answer is cached (default 300).
    pub txt_cache_secs: u64,
    /// Most cached domains (default 10000).
    pub max_cached: u32,
    /// DNS servers asked for `_teegate-app` TXT records (default: the system resolver).
    pub nameservers: Vec<SocketAddr>,
    /// Accept custom domains whose addresses are loopback or private (development and
    /// tests only; default false).
    pub allow_internal_addresses: bool,
    /// Most on-demand certificate orders per hour, across all names (default 20).
    pub max_orders_per_hour: u32,
}

impl Default for CustomDomainsConfig {
    fn default() -> Self {
        CustomDomainsConfig {
            enabled: false,
            allow: Vec::new(),
            ask_url: None,
            txt_cache_secs: 300,
            max_cached: 10_000,
            nameservers: Vec::new(),
            allow_internal_addresses: false,
            max_orders_per_hour: 20,
        }
    }
}

impl Validate for CustomDomainsConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if let Some(url) = &self.ask_url {
            check(at, "ask_url", url.require_https_or_loopback())?;
        }
        in_range(at, "txt_cache_secs", self.txt_cache_secs, 1..=86_400)?;
        in_range(
            at,
            "max_orders_per_hour",
            self.max_orders_per_hour,
            1..=10_000,
        )?;
        in_range(at, "max_cached", self.max_cached, 1..=10_000_000)
    }
}
