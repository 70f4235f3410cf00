#![allow(dead_code)]

use teegate_config::{from_toml_str_with_env, Component, ConfigError};

/// Parses with no environment overrides.
pub fn parse<T: Component>(text: &str) -> Result<T, ConfigError> {
    from_toml_str_with_env(text, Vec::new())
}

/// Parses with the given overrides.
pub fn parse_env<T: Component>(text: &str, env: &[(&str, &str)]) -> Result<T, ConfigError> {
    from_toml_str_with_env(
        text,
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
    )
}

/// The error's Display text; panics if parsing succeeded.
pub fn error<T: Component + std::fmt::Debug>(text: &str) -> String {
    match parse::<T>(text) {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts `text` contains every needle.
#[track_caller]
pub fn assert_contains(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "{text:?} does not contain {needle:?}"
        );
    }
}

pub const MEASUREMENT: &str = "898dbafbc5577344ae112dbfbb312b4000f0882bec1a783fa2283d2678b8ecc50b7d5f139f1cfec4c050851a8de27513";
pub const COMPOSE_HASH: &str = "e7ebc629edc2fd03a11694f92c7ba45dc80b47b3ab8699e4134e3a6e314e8167";
pub const APP_ID: &str = "e7ebc629edc2fd03a11694f92c7ba45dc80b47b3";
