//! The one error type every loading step returns.

use std::path::PathBuf;

/// Why a configuration could not be loaded.
///
/// Every variant that concerns a value names it by its dotted key, prefixed
/// with the component (`gateway.limits.max_header_bytes`), or by the
/// environment variable that set it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("TOML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// A key that the component does not know.
    #[error("unknown key {key}{}", suggestion_text(suggestion))]
    UnknownKey {
        /// Dotted path of the unknown key.
        key: String,
        /// A known key with a similar name, if there is one.
        suggestion: Option<String>,
    },
    /// A key that must be set was not.
    #[error("missing required key {key}")]
    MissingKey {
        /// Dotted path of the missing key.
        key: String,
    },
    /// A value of the wrong type or shape (caught while deserialising).
    #[error("invalid config: {key}: {message}")]
    Parse {
        /// Dotted path of the bad value.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value with the right type that breaks a rule (range, format, a
    /// combination of keys).
    #[error("invalid config: {key}: {reason}")]
    Invalid {
        /// Dotted path of the bad value.
        key: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A `TEEGATE_*` environment override that is malformed or that set a
    /// bad or unknown key.
    #[error("invalid environment override {var}: {reason}")]
    Env {
        /// The environment variable.
        var: String,
        /// Why it is rejected (names the key when there is one).
        reason: String,
    },
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

impl ConfigError {
    /// Builds an [`ConfigError::Invalid`] for `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The dotted key this error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::MissingKey { key }
            | ConfigError::Parse { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}
