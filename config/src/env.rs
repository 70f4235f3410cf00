//! `TEEGATE_<COMPONENT>__<KEY>__<SUBKEY>=value` overrides, applied to the
//! TOML value tree before it is deserialised.
//!
//! Path segments are separated by a double underscore and lower-cased. The
//! value is read as a TOML value when it is one (numbers, booleans, arrays,
//! inline tables, quoted strings) and as a plain string otherwise; where the
//! file already holds a string at that key, the raw text is kept as a string.

use toml::{Table, Value};

use crate::error::ConfigError;

/// Prefix of every override variable.
pub const ENV_PREFIX: &str = "TEEGATE_";

/// Separator between path segments in a variable name.
pub const ENV_SEPARATOR: &str = "__";

/// One override taken from the environment.
#[derive(Debug, Clone)]
pub(crate) struct Override {
    /// The variable, for error messages.
    pub var: String,
    /// Path segments below the component (lower-cased).
    pub path: Vec<String>,
    /// Dotted key including the component (`gateway.limits.max_header_bytes`).
    pub key: String,
    /// The raw text.
    pub raw: String,
}

/// The variable name that overrides `key` (dotted, without the component) of
/// `component`: `env_var_name("gateway", "limits.max_header_bytes")` is
/// `TEEGATE_GATEWAY__LIMITS__MAX_HEADER_BYTES`.
pub fn env_var_name(component: &str, key: &str) -> String {
    let mut name = format!("{ENV_PREFIX}{}", component.to_ascii_uppercase());
    for segment in key.split('.') {
        name.push_str(ENV_SEPARATOR);
        name.push_str(&segment.to_ascii_uppercase());
    }
    name
}

/// The `TEEGATE_*` variables of this process.
pub(crate) fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        match value.into_string() {
            Ok(value) => vars.push((name.to_owned(), value)),
            Err(_) => {
                return Err(ConfigError::Env {
                    var: name.to_owned(),
                    reason: "value is not valid UTF-8".into(),
                })
            }
        }
    }
    Ok(vars)
}

/// Picks the overrides for `component` out of `env`, shallowest first (so a
/// deeper override refines a shallower one), then by name.
pub(crate) fn collect(
    component: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    let prefix = format!(
        "{ENV_PREFIX}{}{ENV_SEPARATOR}",
        component.to_ascii_uppercase()
    );
    let mut overrides = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(&prefix) else {
            continue;
        };
        let path: Vec<String> = rest
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                reason: format!("empty key segment (use {ENV_SEPARATOR} only between key names)"),
            });
        }
        let key = format!("{component}.{}", path.join("."));
        overrides.push(Override {
            var,
            path,
            key,
            raw,
        });
    }
    overrides.sort_by(|a, b| a.path.len().cmp(&b.path.len()).then(a.var.cmp(&b.var)));
    Ok(overrides)
}

/// Writes every override into `root`. An intermediate key that holds a
/// non-table value is replaced by a table.
pub(crate) fn apply(root: &mut Table, overrides: &[Override]) {
    for o in overrides {
        let Some((last, parents)) = o.path.split_last() else {
            continue;
        };
        let mut table = &mut *root;
        for segment in parents {
            let slot = table
                .entry(segment.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            if !slot.is_table() {
                *slot = Value::Table(Table::new());
            }
            let Value::Table(next) = slot else {
                unreachable!("slot was just made a table")
            };
            table = next;
        }
        let existing_is_string = matches!(table.get(last), Some(Value::String(_)));
        let value = parse_value(&o.raw, existing_is_string);
        table.insert(last.clone(), value);
    }
}

/// Reads an override's text as a TOML value where that is unambiguous.
fn parse_value(raw: &str, existing_is_string: bool) -> Value {
    let as_string = || Value::String(raw.to_owned());
    let parsed = match format!("v = {raw}").parse::<Table>() {
        Ok(mut table) if table.len() == 1 => table.remove("v"),
        _ => None,
    };
    match parsed {
        // An explicitly quoted string.
        Some(v @ Value::String(_)) => v,
        _ if existing_is_string => as_string(),
        // Numbers only in canonical form, so `TOKEN=0x1F` or `1_000` stays
        // text that a string field can take unchanged.
        Some(v @ (Value::Integer(_) | Value::Float(_))) => {
            if v.to_string() == raw {
                v
            } else {
                as_string()
            }
        }
        Some(v @ (Value::Boolean(_) | Value::Array(_) | Value::Table(_))) => v,
        Some(Value::Datetime(_)) | None => as_string(),
    }
}

/// Rewrites an error about a key that an override set (or one below or
/// above it) into an error naming the variable.
pub(crate) fn attribute(err: ConfigError, overrides: &[Override]) -> ConfigError {
    let Some(key) = err.key() else {
        return err;
    };
    if matches!(err, ConfigError::MissingKey { .. }) {
        return err;
    }
    let related = |a: &str, b: &str| {
        a == b
            || (a.len() > b.len()
                && a.starts_with(b)
                && matches!(a.as_bytes()[b.len()], b'.' | b'['))
    };
    // The deepest matching override is the most specific culprit.
    match overrides
        .iter()
        .rev()
        .find(|o| related(key, &o.key) || related(&o.key, key))
    {
        Some(o) => {
            let reason = match &err {
                ConfigError::Parse { key, message: why }
                | ConfigError::Invalid { key, reason: why } => {
                    format!("{key}: {why}")
                }
                other => other.to_string(),
            };
            ConfigError::Env {
                var: o.var.clone(),
                reason,
            }
        }
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_toml_when_unambiguous() {
        assert_eq!(parse_value("32768", false), Value::Integer(32768));
        assert_eq!(parse_value("true", false), Value::Boolean(true));
        assert_eq!(parse_value("0.5", false), Value::Float(0.5));
        assert_eq!(
            parse_value("[\"a\", \"b\"]", false),
            Value::Array(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_value("\"123\"", false), Value::String("123".into()));
        assert_eq!(parse_value("1_000", false), Value::String("1_000".into()));
        assert_eq!(
            parse_value("abc def", false),
            Value::String("abc def".into())
        );
        assert_eq!(parse_value("123", true), Value::String("123".into()));
        assert_eq!(
            parse_value("1\nx = 2", false),
            Value::String("1\nx = 2".into())
        );
    }

    #[test]
    fn var_name_round_trips() {
        assert_eq!(
            env_var_name("gateway", "limits.max_header_bytes"),
            "TEEGATE_GATEWAY__LIMITS__MAX_HEADER_BYTES"
        );
    }
}
