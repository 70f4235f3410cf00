//! `StoreConfig`: where the gateway keeps shared state.

use std::path::PathBuf;

use serde::Deserialize;

use crate::env::env_var_name;
use crate::error::ConfigError;
use crate::types::{HttpUrl, Secret};
use crate::validate::{check, key, non_empty_path, Validate};

/// The state backend.
///
/// In TOML: `store = "embedded"` (default) or
/// `[store.etcd]` with `endpoints = ["https://…:2379"]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreConfig {
    /// A file in the gateway's data directory; one replica.
    #[default]
    Embedded,
    /// An etcd cluster shared by replicas.
    Etcd(EtcdConfig),
}

impl Validate for StoreConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        match self {
            StoreConfig::Embedded => Ok(()),
            StoreConfig::Etcd(etcd) => etcd.validate(&key(at, "etcd")),
        }
    }
}

fn default_prefix() -> String {
    "/teegate".to_owned()
}

/// `[store.etcd]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Cluster members (`http://` or `https://`; at least one).
    pub endpoints: Vec<HttpUrl>,
    /// Key prefix (default `/teegate`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Client TLS.
    #[serde(default)]
    pub tls: Option<EtcdTlsConfig>,
    /// User name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (with `username`); prefer `TEEGATE_GATEWAY__STORE__ETCD__PASSWORD`.
    #[serde(default)]
    pub password: Option<Secret>,
}

impl Validate for EtcdConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::invalid(
                key(at, "endpoints"),
                "must list at least one endpoint",
            ));
        }
        let prefix_ok = self.prefix.starts_with('/')
            && !self.prefix.contains(char::is_whitespace)
            && (self.prefix.len() == 1 || !self.prefix.ends_with('/'));
        check(
            at,
            "prefix",
            if prefix_ok {
                Ok(())
            } else {
                Err(format!(
                    "{:?} must start with '/', not end with '/' and hold no whitespace",
                    self.prefix
                ))
            },
        )?;
        match (&self.username, &self.password) {
            (Some(_), None) => {
                let password = key(at, "password");
                let var = match password.split_once('.') {
                    Some((component, rest)) => env_var_name(component, rest),
                    None => env_var_name(&password, ""),
                };
                return Err(ConfigError::invalid(
                    password,
                    format!(
                        "is required when username is set (set {var} to keep it out of the file)"
                    ),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    key(at, "username"),
                    "is required when password is set",
                ))
            }
            (Some(user), Some(_)) if user.is_empty() => {
                return Err(ConfigError::invalid(
                    key(at, "username"),
                    "must not be empty",
                ))
            }
            _ => {}
        }
        if self.password.is_some() {
            // etcd authenticates with the password itself: never send it over the network
            // in clear.
            for (i, e) in self.endpoints.iter().enumerate() {
                check(
                    at,
                    &format!("endpoints[{i}]"),
                    e.require_https_or_loopback()
                        .map_err(|m| format!("{m}: the password would cross the network in clear")),
                )?;
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate(&key(at, "tls"))?;
            // TLS settings with a plain endpoint would be silently unused for it.
            if let Some((i, e)) = self
                .endpoints
                .iter()
                .enumerate()
                .find(|(_, e)| !e.is_https())
            {
                return Err(ConfigError::invalid(
                    key(at, &format!("endpoints[{i}]")),
                    format!(
                        "{e} is not https:// but [tls] is set; use https:// for every endpoint"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `[store.etcd.tls]`: all optional; a client certificate needs both files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdTlsConfig {
    /// CA certificate(s) to trust for the servers.
    pub ca_file: Option<PathBuf>,
    /// Client certificate.
    pub cert_file: Option<PathBuf>,
    /// Client key.
    pub key_file: Option<PathBuf>,
}

impl Validate for EtcdTlsConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    key(at, "key_file"),
                    "is required when cert_file is set",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    key(at, "cert_file"),
                    "is required when key_file is set",
                ))
            }
            _ => {}
        }
        for (field, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(path) = path {
                non_empty_path(at, field, path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_etcd(text: &str) -> Result<(), String> {
        let cfg: EtcdConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate("gateway.store.etcd")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tls_settings_refuse_a_plain_endpoint() {
        let e = check_etcd(
            "endpoints = [\"https://a:2379\", \"http://b:2379\"]\n[tls]\nca_file = \"/ca.pem\"",
        )
        .unwrap_err();
        assert!(e.contains("gateway.store.etcd.endpoints[1]"), "{e}");
        check_etcd("endpoints = [\"https://a:2379\"]\n[tls]\nca_file = \"/ca.pem\"").unwrap();
    }

    #[test]
    fn password_is_never_sent_in_clear_beyond_loopback() {
        let e = check_etcd(
            "endpoints = [\"http://etcd.internal:2379\"]\nusername = \"u\"\npassword = \"p\"",
        )
        .unwrap_err();
        assert!(
            e.contains("gateway.store.etcd.endpoints[0]") && e.contains("clear"),
            "{e}"
        );
        check_etcd("endpoints = [\"http://127.0.0.1:2379\"]\nusername = \"u\"\npassword = \"p\"")
            .unwrap();
        check_etcd(
            "endpoints = [\"https://etcd.internal:2379\"]\nusername = \"u\"\npassword = \"p\"",
        )
        .unwrap();
    }
}
