//! The `Validate` trait and small helpers for range and shape checks.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;

use crate::error::ConfigError;

/// Rules a deserialised value must also satisfy (ranges, combinations of
/// keys). `at` is the dotted key of the value itself (`gateway.limits`), used
/// to name bad keys in errors.
pub trait Validate {
    /// Returns the first rule broken, naming its key.
    fn validate(&self, at: &str) -> Result<(), ConfigError>;
}

/// `at.field`, or `field` at the root.
pub(crate) fn key(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

/// Err unless `value` lies in `range`.
pub(crate) fn in_range<N: PartialOrd + Display>(
    at: &str,
    field: &str,
    value: N,
    range: RangeInclusive<N>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key(at, field),
            format!(
                "must be between {} and {}, got {value}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// Err if the path is empty.
pub(crate) fn non_empty_path(at: &str, field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        Err(ConfigError::invalid(key(at, field), "must not be empty"))
    } else {
        Ok(())
    }
}

/// Maps a `String` rule failure to an error naming `at.field`.
pub(crate) fn check(at: &str, field: &str, result: Result<(), String>) -> Result<(), ConfigError> {
    result.map_err(|reason| ConfigError::invalid(key(at, field), reason))
}

/// Err if two listeners share an address (port 0, "pick a free port", may
/// repeat).
pub(crate) fn distinct_listeners(
    at: &str,
    listeners: &[(&str, SocketAddr)],
) -> Result<(), ConfigError> {
    for (i, (name, addr)) in listeners.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
            return Err(ConfigError::invalid(
                key(at, name),
                format!("{addr} is already used by {}", key(at, other)),
            ));
        }
    }
    Ok(())
}

/// Minimum length of an API token.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

/// Err if a token is too short to resist guessing or holds whitespace.
pub(crate) fn token(at: &str, field: &str, token: &crate::Secret) -> Result<(), ConfigError> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(ConfigError::invalid(
            key(at, field),
            format!("must be at least {MIN_TOKEN_LEN} characters long"),
        ));
    }
    if token.expose().chars().any(char::is_whitespace) {
        return Err(ConfigError::invalid(
            key(at, field),
            "must not contain whitespace",
        ));
    }
    Ok(())
}

/// Fills `secret` from the file at `path` (`at.field`, a `*_token_file` key), so the token
/// need not be written into the config or the environment. The file holds the token alone;
/// a trailing newline is dropped. Naming both the file and the token is an error, since
/// one would silently win.
pub(crate) fn read_token_file(
    at: &str,
    field: &str,
    path: Option<&Path>,
    secret: &mut Option<crate::Secret>,
    token_field: &str,
) -> Result<(), ConfigError> {
    let Some(path) = path else {
        return Ok(());
    };
    non_empty_path(at, field, path)?;
    if secret.is_some() {
        return Err(ConfigError::invalid(
            key(at, field),
            format!("set either {field} or {token_field}, not both"),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key(at, field), format!("{}: {e}", path.display())))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(ConfigError::invalid(
            key(at, field),
            format!("{} is empty", path.display()),
        ));
    }
    let value = crate::Secret::new(value);
    // Checked under the file's key: the token itself is never shown.
    token(at, field, &value)?;
    *secret = Some(value);
    Ok(())
}
