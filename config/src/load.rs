//! Loading: TOML text → value tree → environment overlay → typed struct →
//! defaults that depend on other keys → validation. Either every step
//! succeeds or the caller gets one error; nothing is half-loaded.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use toml::{Table, Value};

use crate::env;
use crate::error::ConfigError;
use crate::validate::Validate;

/// A component's top-level configuration.
pub trait Component: DeserializeOwned + Validate {
    /// The component name: first segment of every key in errors, and the
    /// `<COMPONENT>` in `TEEGATE_<COMPONENT>__…` overrides.
    const NAME: &'static str;

    /// Fills defaults computed from other keys (run before validation).
    fn resolve_defaults(&mut self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Reads the file at `path`, applies the process's `TEEGATE_*` overrides and
/// validates.
pub fn load<T: Component>(path: &Path) -> Result<T, ConfigError> {
    load_with_env(path, env::process_env()?)
}

/// Like [`load`], with the overrides taken from `env` instead of the process
/// environment.
pub fn load_with_env<T: Component>(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    from_toml_str_with_env(&text, env)
}

/// Parses `text`, applies the process's `TEEGATE_*` overrides and validates.
pub fn from_toml_str<T: Component>(text: &str) -> Result<T, ConfigError> {
    from_toml_str_with_env(text, env::process_env()?)
}

/// Parses `text`, applies the overrides in `env` (pairs of variable name and
/// value; variables not for this component are ignored) and validates.
pub fn from_toml_str_with_env<T: Component>(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut table = parse_table(text)?;
    let overrides = env::collect(T::NAME, env)?;
    env::apply(&mut table, &overrides);
    build::<T>(table).map_err(|e| env::attribute(e, &overrides))
}

fn build<T: Component>(table: Table) -> Result<T, ConfigError> {
    let mut config: T = deserialize(T::NAME, table)?;
    config.resolve_defaults()?;
    config.validate(T::NAME)?;
    Ok(config)
}

fn parse_table(text: &str) -> Result<Table, ConfigError> {
    toml::from_str::<Table>(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_column(text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Syntax {
            line,
            column,
            message: e.message().trim_end().to_owned(),
        }
    })
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn deserialize<T: DeserializeOwned>(component: &str, table: Table) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let key = dotted_key(component, e.path());
        classify(key, e.inner().message())
    })
}

/// `component.a.b[2].c`, from serde's path.
fn dotted_key(component: &str, path: &serde_path_to_error::Path) -> String {
    let mut key = component.to_owned();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } => push_segment(&mut key, k),
            Segment::Enum { variant } => push_segment(&mut key, variant),
            Segment::Unknown => key.push_str(".?"),
        }
    }
    key
}

fn push_segment(key: &mut String, segment: &str) {
    key.push('.');
    let bare = !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.push_str(segment);
    } else {
        key.push_str(&format!("{segment:?}"));
    }
}

/// Turns serde's messages for unknown and missing fields into their own
/// variants, with the field in the key.
fn classify(key: String, message: &str) -> ConfigError {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let key = with_field(key, field);
        let expected = backticked(rest.split_once("expected").map_or("", |(_, e)| e));
        let suggestion = closest(field, &expected);
        return ConfigError::UnknownKey { key, suggestion };
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return ConfigError::MissingKey {
            key: with_field(key, field),
        };
    }
    ConfigError::Parse {
        key,
        message: message.to_owned(),
    }
}

fn with_field(mut key: String, field: &str) -> String {
    if !key.ends_with(&format!(".{field}")) {
        push_segment(&mut key, field);
    }
    key
}

/// The `quoted` names in serde's "expected one of `a`, `b`".
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The expected name nearest to `field`, if it is close enough to be a typo.
fn closest(field: &str, expected: &[&str]) -> Option<String> {
    expected
        .iter()
        .map(|name| (edit_distance(field, name), *name))
        .filter(|(d, name)| *d <= 2.max(name.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("a\nbc", 3), (2, 2));
        assert_eq!(line_column("", 0), (1, 1));
    }

    #[test]
    fn suggestion_picks_close_names_only() {
        assert_eq!(
            closest("listen_htps", &["listen_https", "listen_http"]),
            Some("listen_https".into())
        );
        assert_eq!(closest("zzz", &["listen_https"]), None);
    }
}
