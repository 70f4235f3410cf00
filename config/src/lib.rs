//! Typed, validated configuration for every teegate component (gateway,
//! guest sidecar, KMS, DNS).
//!
//! Data enters as TOML text (a file via [`load`], or a string via
//! [`from_toml_str`]) plus `TEEGATE_<COMPONENT>__<KEY>__<SUBKEY>=value`
//! environment overrides, which are laid over the TOML value tree before it
//! is deserialised. It leaves as a fully validated struct such as
//! [`GatewayConfig`], or as one [`ConfigError`] naming the bad key by its
//! dotted path (`gateway.limits.max_header_bytes`) or the bad variable: a
//! config that fails validation never half-starts a component.
//!
//! Overrides: `TEEGATE_GATEWAY__LIMITS__MAX_HEADER_BYTES=32768` sets
//! `limits.max_header_bytes` of the gateway. Segments are separated by `__`
//! and lower-cased; the value is read as TOML when it is a number, boolean,
//! array, inline table or quoted string, and as text otherwise. An override
//! of an unknown key is an error naming the variable. Secrets ([`Secret`]:
//! the gateway admin token, the DNS API token, the etcd password) can come
//! from the environment only, and print as `***` in `Debug` output.
//!
//! ```
//! let cfg: teegate_config::GatewayConfig = teegate_config::from_toml_str_with_env(
//!     "base_domain = \"apps.example.com\"",
//!     [("TEEGATE_GATEWAY__WORKERS".to_string(), "4".to_string())],
//! )?;
//! assert_eq!(cfg.workers, 4);
//! # Ok::<(), teegate_config::ConfigError>(())
//! ```

mod allowlist;
mod attestation;
mod dns;
mod env;
mod error;
mod gateway;
mod keys;
mod kms;
mod load;
mod quote_provider;
mod sidecar;
mod store;
mod types;
mod validate;
mod verifier;

pub use allowlist::Allowlist;
pub use attestation::{AttestationConfig, DEFAULT_SEAL_KEY_PATH};
pub use dns::{DnsApiConfig, DnsConfig, SoaConfig};
pub use env::{env_var_name, ENV_PREFIX, ENV_SEPARATOR};
pub use error::ConfigError;
pub use gateway::{
    AcmeConfig, Balance, CustomDomainsConfig, GatewayConfig, GatewayTlsConfig, LimitsConfig,
    RegistrationConfig, TlsMode, UpstreamConfig, WebConfig, LETS_ENCRYPT_DIRECTORY,
};
pub use keys::{component_keys, config_keys, ConfigKey, COMPONENTS};
pub use kms::{
    AppPolicies, AppPolicy, KmsConfig, KmsLimits, KmsPolicyConfig, MeasurementPolicy, WebhookConfig,
};
pub use load::{from_toml_str, from_toml_str_with_env, load, load_with_env, Component};
pub use quote_provider::{QuoteProviderConfig, DEFAULT_TSM_PATH};
pub use sidecar::SidecarConfig;
pub use store::{EtcdConfig, EtcdTlsConfig, StoreConfig};
pub use types::{AppId, ComposeHash, DnsName, DomainSuffix, HttpUrl, Measurement, Scheme, Secret};
pub use validate::Validate;
pub use verifier::{CollateralConfig, TcbStatusName, VerifierConfig};
