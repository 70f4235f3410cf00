//! Where a component gets TDX quotes: configfs-tsm or the simulator.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::ConfigError;
use crate::validate::{non_empty_path, Validate};

/// Default configfs-tsm report directory.
pub const DEFAULT_TSM_PATH: &str = "/sys/kernel/config/tsm/report";

/// How quotes are produced.
///
/// In TOML: `quote_provider = "tdx"`, `quote_provider = "simulated"`, or
/// `quote_provider = { tdx = { tsm_path = "/sys/kernel/config/tsm/report" } }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuoteProviderConfig {
    /// Real Intel TDX quotes through Linux configfs-tsm.
    Tdx {
        /// The configfs-tsm report directory.
        tsm_path: PathBuf,
    },
    /// Quotes signed by the mock Intel PKI (development and tests only).
    Simulated,
}

impl Default for QuoteProviderConfig {
    fn default() -> Self {
        QuoteProviderConfig::Tdx {
            tsm_path: PathBuf::from(DEFAULT_TSM_PATH),
        }
    }
}

impl QuoteProviderConfig {
    /// Whether quotes are simulated.
    pub fn is_simulated(&self) -> bool {
        matches!(self, QuoteProviderConfig::Simulated)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TdxOptions {
    #[serde(default = "default_tsm_path")]
    tsm_path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

fn default_tsm_path() -> PathBuf {
    PathBuf::from(DEFAULT_TSM_PATH)
}

const VARIANTS: &[&str] = &["tdx", "simulated"];

impl<'de> Deserialize<'de> for QuoteProviderConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProviderVisitor;

        impl<'de> Visitor<'de> for ProviderVisitor {
            type Value = QuoteProviderConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"tdx\", \"simulated\" or a table { tdx = { tsm_path = \"…\" } }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "tdx" => Ok(QuoteProviderConfig::default()),
                    "simulated" => Ok(QuoteProviderConfig::Simulated),
                    other => Err(E::unknown_variant(other, VARIANTS)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let Some(kind) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("expected one of `tdx` or `simulated`"));
                };
                let provider = match kind.as_str() {
                    "tdx" => QuoteProviderConfig::Tdx {
                        tsm_path: map.next_value::<TdxOptions>()?.tsm_path,
                    },
                    "simulated" => {
                        map.next_value::<NoOptions>()?;
                        QuoteProviderConfig::Simulated
                    }
                    other => return Err(de::Error::unknown_variant(other, VARIANTS)),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom(
                        "expected exactly one of `tdx` or `simulated`",
                    ));
                }
                Ok(provider)
            }
        }

        deserializer.deserialize_any(ProviderVisitor)
    }
}

impl Validate for QuoteProviderConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        match self {
            QuoteProviderConfig::Tdx { tsm_path } => non_empty_path(at, "tdx.tsm_path", tsm_path),
            QuoteProviderConfig::Simulated => Ok(()),
        }
    }
}
