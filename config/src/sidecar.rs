//! `SidecarConfig`: the in-CVM agent (compose, keys, RA-TLS front, guest
//! API, registration with gateways).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;
use crate::load::Component;
use crate::quote_provider::QuoteProviderConfig;
use crate::types::HttpUrl;
use crate::validate::{check, in_range, key, non_empty_path, Validate};
use crate::verifier::VerifierConfig;

/// The guest sidecar's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// Path to `app-compose.json` (required).
    pub compose_file: PathBuf,
    /// Guest API Unix socket (default `/var/run/teegate/teegate.sock`).
    #[serde(default = "default_socket_path")]
    pub socket_path: PathBuf,
    /// dstack's guest API Unix socket, where dstack's SDKs look (default
    /// `/var/run/dstack.sock`).
    #[serde(default = "default_dstack_socket_path")]
    pub dstack_socket_path: PathBuf,
    /// RA-TLS front listener (default `0.0.0.0:8443`).
    #[serde(
        default = "default_listen_front",
        deserialize_with = "crate::types::socket_addr"
    )]
    pub listen_front: SocketAddr,
    /// Address at which gateways reach the front, if not `listen_front`.
    #[serde(default, deserialize_with = "crate::types::opt_socket_addr")]
    pub advertise_addr: Option<SocketAddr>,
    /// The KMS (`https://`, required).
    pub kms_url: HttpUrl,
    /// Gateway registration listeners (`https://`).
    #[serde(default)]
    pub gateways: Vec<HttpUrl>,
    /// Where quotes come from (default `tdx`).
    #[serde(default)]
    pub quote_provider: QuoteProviderConfig,
    /// Docker Engine API socket (default `/var/run/docker.sock`).
    #[serde(default = "default_docker_socket")]
    pub docker_socket: PathBuf,
    /// Registration renewal interval (1 to 3600, default 20).
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// Validity of RA-TLS certificates (60 s to 366 days, default 86400).
    #[serde(default = "default_cert_validity_secs")]
    pub cert_validity_secs: u64,
    /// Env vars encrypted to the app's `env` key.
    #[serde(default)]
    pub encrypted_env_file: Option<PathBuf>,
    /// How the KMS's and gateways' RA-TLS certificates are verified.
    #[serde(default)]
    pub verifier: VerifierConfig,
    /// State directory (default `/var/lib/teegate/sidecar`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The KMS root CA (PEM) to pin. Without it the first KMS contact is trusted on its
    /// verified attestation alone (the root it presents is then remembered).
    #[serde(default)]
    pub kms_root_ca: Option<PathBuf>,
    /// CA certificates (PEM) for the gateways' registration listeners, in addition to the
    /// public web roots (a development gateway's self-signed CA, for one).
    #[serde(default)]
    pub gateway_ca: Option<PathBuf>,
    /// DNS names in the instance's RA-TLS certificate (default `<app-id>.teegate.internal`).
    #[serde(default)]
    pub cert_names: Vec<String>,
    /// What runs the app: `docker` (default) or `none` (development only).
    #[serde(default)]
    pub runtime: Runtime,
    /// With `runtime = "none"`: exposed port → address of a service already listening
    /// on this machine, which the front forwards that port to.
    #[serde(default, deserialize_with = "upstreams")]
    pub upstreams: BTreeMap<u16, SocketAddr>,
    /// Boot an app-compose that names its `app_id` with `key_provider = "none"`. Nothing
    /// authorises such an id (no KMS vouches for it), so gateways refuse it at
    /// `app-authorisation`; for development with simulated quotes only.
    #[serde(default)]
    pub dev_allow_named_app_without_kms: bool,
    /// Run service images that nothing pins by content (a bare tag): measured, and labelled
    /// `(unpinned)` in the `image` event and everywhere it shows. Development only.
    #[serde(default)]
    pub dev_allow_unpinned_images: bool,
}

/// What runs the app's services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// The compose's containers, through the Docker Engine API.
    #[default]
    Docker,
    /// No containers: the front forwards to `upstreams`. For development on machines
    /// without Docker (`teegate dev --no-docker`); the compose is measured but not run,
    /// so it is allowed only with simulated quotes.
    None,
}

impl Runtime {
    /// Whether the app's containers run on Docker.
    pub fn uses_docker(self) -> bool {
        self == Runtime::Docker
    }
}

/// `[upstreams]` keys are TOML strings; they must be port numbers.
fn upstreams<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<u16, SocketAddr>, D::Error> {
    use serde::de::Error;
    let raw = BTreeMap::<String, String>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(port, addr)| {
            let p = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| D::Error::custom(format!("{port:?} is not a port (1 to 65535)")))?;
            let a = addr.parse::<SocketAddr>().map_err(|_| {
                D::Error::custom(format!(
                    "{addr:?} (port {p}) is not a socket address such as \"127.0.0.1:8080\""
                ))
            })?;
            Ok((p, a))
        })
        .collect()
}

fn default_socket_path() -> PathBuf {
    PathBuf::from("/var/run/teegate/teegate.sock")
}
fn default_dstack_socket_path() -> PathBuf {
    PathBuf::from("/var/run/dstack.sock")
}
fn default_listen_front() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}
fn default_docker_socket() -> PathBuf {
    PathBuf::from("/var/run/docker.sock")
}
fn default_heartbeat_secs() -> u64 {
    20
}
fn default_cert_validity_secs() -> u64 {
    86_400
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/teegate/sidecar")
}

impl SidecarConfig {
    /// The address gateways should connect to.
    pub fn front_addr(&self) -> SocketAddr {
        self.advertise_addr.unwrap_or(self.listen_front)
    }
}

impl Component for SidecarConfig {
    const NAME: &'static str = "sidecar";
}

impl Validate for SidecarConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        non_empty_path(at, "compose_file", &self.compose_file)?;
        non_empty_path(at, "socket_path", &self.socket_path)?;
        non_empty_path(at, "dstack_socket_path", &self.dstack_socket_path)?;
        if self.dstack_socket_path == self.socket_path {
            return Err(ConfigError::invalid(
                key(at, "dstack_socket_path"),
                "must differ from socket_path (the two APIs are served on separate sockets)",
            ));
        }
        non_empty_path(at, "docker_socket", &self.docker_socket)?;
        non_empty_path(at, "data_dir", &self.data_dir)?;
        if let Some(file) = &self.encrypted_env_file {
            non_empty_path(at, "encrypted_env_file", file)?;
        }
        if let Some(addr) = self.advertise_addr {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(ConfigError::invalid(
                    key(at, "advertise_addr"),
                    format!("{addr} must be a concrete address and port that gateways can reach"),
                ));
            }
        }
        check(at, "kms_url", self.kms_url.require_https())?;
        for (i, url) in self.gateways.iter().enumerate() {
            check(at, &format!("gateways[{i}]"), url.require_https())?;
        }
        self.quote_provider.validate(&key(at, "quote_provider"))?;
        for (set, name) in [
            (
                self.dev_allow_named_app_without_kms,
                "dev_allow_named_app_without_kms",
            ),
            (self.dev_allow_unpinned_images, "dev_allow_unpinned_images"),
        ] {
            if set && !self.quote_provider.is_simulated() {
                return Err(ConfigError::invalid(
                    key(at, name),
                    "is for development only: it needs quote_provider = \"simulated\"",
                ));
            }
        }
        match self.runtime {
            Runtime::Docker if !self.upstreams.is_empty() => {
                return Err(ConfigError::invalid(
                    key(at, "upstreams"),
                    "is used only with runtime = \"none\" (with docker, the compose's published ports are the upstreams)",
                ));
            }
            Runtime::None if !self.quote_provider.is_simulated() => {
                return Err(ConfigError::invalid(
                    key(at, "runtime"),
                    "\"none\" runs no containers and is for development only: it needs quote_provider = \"simulated\"",
                ));
            }
            Runtime::None => {
                for (port, addr) in &self.upstreams {
                    if addr.ip().is_unspecified() || addr.port() == 0 {
                        return Err(ConfigError::invalid(
                            key(at, &format!("upstreams.{port}")),
                            format!("{addr} must be a concrete address and port"),
                        ));
                    }
                }
            }
            Runtime::Docker => {}
        }
        in_range(at, "heartbeat_secs", self.heartbeat_secs, 1..=3600)?;
        in_range(
            at,
            "cert_validity_secs",
            self.cert_validity_secs,
            60..=366 * 86_400,
        )?;
        self.verifier.validate(&key(at, "verifier"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "compose_file = \"/c.json\"\nkms_url = \"https://kms.example.com\"\n";

    fn parse(extra: &str) -> Result<SidecarConfig, String> {
        crate::from_toml_str(&format!("{MIN}{extra}")).map_err(|e| e.to_string())
    }

    #[test]
    fn runtime_defaults_to_docker_without_upstreams() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.runtime, Runtime::Docker);
        assert!(cfg.runtime.uses_docker());
        assert!(cfg.upstreams.is_empty());
    }

    #[test]
    fn runtime_none_forwards_to_upstreams_with_simulated_quotes_only() {
        let cfg = parse(
            "runtime = \"none\"\nquote_provider = \"simulated\"\n[upstreams]\n80 = \"127.0.0.1:8080\"\n",
        )
        .unwrap();
        assert!(!cfg.runtime.uses_docker());
        assert_eq!(cfg.upstreams[&80], "127.0.0.1:8080".parse().unwrap());

        let e = parse("runtime = \"none\"\n").unwrap_err();
        assert!(
            e.contains("sidecar.runtime") && e.contains("simulated"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_upstreams_naming_them() {
        let sim = "quote_provider = \"simulated\"\n";
        let e = parse(&format!("{sim}[upstreams]\n80 = \"127.0.0.1:8080\"\n")).unwrap_err();
        assert!(e.contains("sidecar.upstreams") && e.contains("none"), "{e}");
        let none = format!("{sim}runtime = \"none\"\n[upstreams]\n");
        let e = parse(&format!("{none}http = \"127.0.0.1:8080\"\n")).unwrap_err();
        assert!(e.contains("upstreams") && e.contains("not a port"), "{e}");
        let e = parse(&format!("{none}80 = \"localhost\"\n")).unwrap_err();
        assert!(e.contains("not a socket address"), "{e}");
        let e = parse(&format!("{none}80 = \"0.0.0.0:80\"\n")).unwrap_err();
        assert!(e.contains("sidecar.upstreams.80"), "{e}");
    }
}
