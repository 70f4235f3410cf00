//! Every key a component's TOML accepts, derived from the types themselves.
//!
//! [`config_keys`] walks a config type with a probing [`Deserializer`]: no
//! value is ever built. Each probe follows one path of keys (a struct field,
//! an enum variant, a table entry) and records what the type asks for at its
//! end: a struct's field list (serde passes it to `deserialize_struct`), an
//! enum's variants, a table with free keys, an array, or a scalar (with the
//! text the type's visitor says it expects, such as "a DNS name string").
//! Types with a hand-written `Deserialize` that take a string or a table
//! (`quote_provider`) are offered a table with an unknown key; the
//! `unknown_variant`/`unknown_field` error they answer with lists the keys
//! they accept. A field added to any config struct therefore shows up here
//! without anyone listing it, which is what `docs/configuration.md`'s test
//! relies on.
//!
//! Not walkable: `#[serde(flatten)]` fields and untagged enums, which buffer
//! their input instead of asking for fields; the config types use neither
//! (their keys would show up as a free-keyed table, `*`).

use std::cell::RefCell;
use std::fmt;

use serde::de::value::StringDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, Expected, IntoDeserializer,
    MapAccess, SeqAccess, VariantAccess, Visitor,
};

use crate::load::Component;
use crate::{DnsConfig, GatewayConfig, KmsConfig, SidecarConfig};

/// The components with a config file, by [`Component::NAME`].
pub const COMPONENTS: [&str; 4] = [
    GatewayConfig::NAME,
    SidecarConfig::NAME,
    KmsConfig::NAME,
    DnsConfig::NAME,
];

/// One key a config file accepts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigKey {
    /// Dotted path below the component, as written in the file:
    /// `tls.acme.directory_url`. A segment the user names (a table keyed by
    /// app id) is `*`; an element of an array of tables is `[]`.
    pub key: String,
    /// What the value is, in the words of the type's deserialiser: `u16`,
    /// `a boolean`, `a DNS name string`, `one of "acme", "self_signed",
    /// "files"`, `array of a URL string`, … Prefixed with `optional ` when
    /// the field is an `Option`.
    pub kind: String,
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.key, self.kind)
    }
}

/// Every key `T` accepts, sorted by key. Tables themselves are not listed,
/// only what is written inside them; an enum (`tls.mode`, `store`) or a
/// string-or-table value (`quote_provider`) is listed itself and with the
/// keys of its table forms (`store.etcd.endpoints`).
pub fn config_keys<T: DeserializeOwned>() -> Vec<ConfigKey> {
    let mut out = Vec::new();
    walk::<T>(&mut Vec::new(), &mut out);
    out.sort();
    out.dedup();
    out
}

/// [`config_keys`] for the component named `component` (`gateway`,
/// `sidecar`, `kms`, `dns`; see [`COMPONENTS`]).
pub fn component_keys(component: &str) -> Option<Vec<ConfigKey>> {
    match component {
        GatewayConfig::NAME => Some(config_keys::<GatewayConfig>()),
        SidecarConfig::NAME => Some(config_keys::<SidecarConfig>()),
        KmsConfig::NAME => Some(config_keys::<KmsConfig>()),
        DnsConfig::NAME => Some(config_keys::<DnsConfig>()),
        _ => None,
    }
}

/// Keys tried, in turn, for a table whose keys the user chooses, until the
/// type accepts one (an app id is 40 hex characters).
const MAP_KEY_CANDIDATES: &[&str] = &[
    "0000000000000000000000000000000000000000",
    "example.com",
    "a",
    "0",
];

/// A key no config type accepts, to make a type list the ones it does.
const PROBE_KEY: &str = "\u{1}teegate-probe";

/// Deepest path walked (config nesting is far shallower).
const MAX_DEPTH: usize = 16;

#[derive(Clone, Debug)]
enum Seg {
    /// A struct field, enum variant or keyed-table entry.
    Key(String),
    /// An entry of a table with free keys, probed with this key.
    MapKey(String),
    /// An element of an array.
    Elem,
}

#[derive(Clone, Debug)]
enum Node {
    Struct(&'static [&'static str]),
    Enum(&'static [&'static str]),
    /// A hand-written type that took a table and named the keys it accepts.
    Keyed(&'static [&'static str], String),
    Map,
    Seq,
    Unit,
    Leaf(String),
}

fn display(path: &[Seg]) -> String {
    let mut key = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) | Seg::MapKey(k) => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(if matches!(seg, Seg::MapKey(_)) {
                    "*"
                } else {
                    k
                });
            }
            Seg::Elem => key.push_str("[]"),
        }
    }
    key
}

fn probe<T: DeserializeOwned>(path: &[Seg]) -> Option<Node> {
    let found = RefCell::new(None);
    // Every probe ends in an error by design; only what it recorded counts.
    let _ = T::deserialize(Probe {
        path,
        found: &found,
        optional: false,
    });
    found.into_inner()
}

fn walk<T: DeserializeOwned>(path: &mut Vec<Seg>, out: &mut Vec<ConfigKey>) {
    if path.len() > MAX_DEPTH {
        return;
    }
    let Some(node) = probe::<T>(path) else {
        return;
    };
    let push = |out: &mut Vec<ConfigKey>, path: &[Seg], kind: String| {
        out.push(ConfigKey {
            key: display(path),
            kind,
        })
    };
    match node {
        Node::Leaf(kind) => push(out, path, kind),
        Node::Unit => {}
        Node::Struct(fields) => {
            for field in fields {
                path.push(Seg::Key((*field).to_owned()));
                walk::<T>(path, out);
                path.pop();
            }
        }
        Node::Enum(variants) => {
            push(out, path, format!("one of {}", quoted(variants)));
            for variant in variants {
                path.push(Seg::Key((*variant).to_owned()));
                walk::<T>(path, out);
                path.pop();
            }
        }
        Node::Keyed(names, expected) => {
            push(out, path, format!("{expected}: one of {}", quoted(names)));
            for name in names {
                path.push(Seg::Key((*name).to_owned()));
                walk::<T>(path, out);
                path.pop();
            }
        }
        Node::Map => {
            let accepted = MAP_KEY_CANDIDATES.iter().find(|candidate| {
                path.push(Seg::MapKey((**candidate).to_owned()));
                let found = probe::<T>(path).is_some();
                path.pop();
                found
            });
            match accepted {
                Some(candidate) => {
                    path.push(Seg::MapKey((*candidate).to_owned()));
                    walk::<T>(path, out);
                    path.pop();
                }
                None => push(out, path, "a table".to_owned()),
            }
        }
        Node::Seq => {
            path.push(Seg::Elem);
            let element = probe::<T>(path);
            match element {
                Some(Node::Leaf(kind)) => {
                    path.pop();
                    push(out, path, format!("array of {kind}"));
                }
                Some(_) => {
                    walk::<T>(path, out);
                    path.pop();
                }
                None => {
                    path.pop();
                    push(out, path, "an array".to_owned());
                }
            }
        }
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a visitor says it expects (`u16`, `a DNS name string`).
fn expecting(visitor: &dyn Expected) -> String {
    visitor.to_string()
}

#[derive(Debug)]
enum ProbeError {
    /// A type rejected a key and listed the ones it accepts.
    Expected(&'static [&'static str]),
    Other,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("config key probe")
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<M: fmt::Display>(_msg: M) -> Self {
        ProbeError::Other
    }
    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        ProbeError::Expected(expected)
    }
    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        ProbeError::Expected(expected)
    }
}

/// Follows `path` into the type being deserialised and records what it
/// finds at the end.
struct Probe<'a> {
    path: &'a [Seg],
    found: &'a RefCell<Option<Node>>,
    optional: bool,
}

impl<'a> Probe<'a> {
    fn at_end(&self) -> bool {
        self.path.is_empty()
    }

    fn rest(&self) -> Probe<'a> {
        Probe {
            path: &self.path[1..],
            found: self.found,
            optional: false,
        }
    }

    fn record(&self, node: Node) -> ProbeError {
        *self.found.borrow_mut() = Some(node);
        ProbeError::Other
    }

    fn leaf<T>(self, expected: String) -> Result<T, ProbeError> {
        if self.at_end() {
            let kind = if self.optional {
                format!("optional {expected}")
            } else {
                expected
            };
            Err(self.record(Node::Leaf(kind)))
        } else {
            Err(ProbeError::Other)
        }
    }

    /// Hands `visitor` a table holding just the next path segment.
    fn enter<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        match self.path.first() {
            Some(Seg::Key(k) | Seg::MapKey(k)) => visitor.visit_map(OneEntry {
                key: Some(k.clone()),
                value: Some(self.rest()),
            }),
            Some(Seg::Elem) => visitor.visit_seq(OneElement(Some(self.rest()))),
            None => Err(ProbeError::Other),
        }
    }
}

macro_rules! leaves {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
                let expected = expecting(&visitor);
                self.leaf(expected)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    leaves!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        if !self.at_end() {
            return self.enter(visitor);
        }
        // A hand-written type: offer it a table with an unknown key.
        let expected = expecting(&visitor);
        let result = visitor.visit_map(ProbeKeyMap {
            key_given: false,
            found: self.found,
        });
        if self.found.borrow().is_some() {
            return Err(ProbeError::Other);
        }
        match result {
            Err(ProbeError::Expected(names)) => Err(self.record(Node::Keyed(names, expected))),
            _ => self.leaf(expected),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        let optional = self.at_end();
        visitor.visit_some(Probe { optional, ..self })
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        let expected = expecting(&visitor);
        self.leaf(expected)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        if self.at_end() {
            return Err(self.record(Node::Seq));
        }
        self.enter(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        let expected = expecting(&visitor);
        self.leaf(expected)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        let expected = expecting(&visitor);
        self.leaf(expected)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        if self.at_end() {
            return Err(self.record(Node::Map));
        }
        self.enter(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        if self.at_end() {
            return Err(self.record(Node::Struct(fields)));
        }
        self.enter(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        match self.path.first() {
            None => Err(self.record(Node::Enum(variants))),
            Some(Seg::Key(k)) => visitor.visit_enum(OneVariant {
                variant: k.clone(),
                value: self.rest(),
            }),
            Some(_) => Err(ProbeError::Other),
        }
    }
}

/// A table of one entry: the next path segment, whose value probes on.
struct OneEntry<'a> {
    key: Option<String>,
    value: Option<Probe<'a>>,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        match self.key.take() {
            Some(key) => {
                let key: StringDeserializer<ProbeError> = key.into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        match self.value.take() {
            Some(probe) => seed.deserialize(probe),
            None => Err(ProbeError::Other),
        }
    }
}

/// An array of one element that probes on.
struct OneElement<'a>(Option<Probe<'a>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ProbeError> {
        match self.0.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

/// A table with one key no type accepts; a type that asks for its value
/// takes any key (a table with free keys).
struct ProbeKeyMap<'a> {
    key_given: bool,
    found: &'a RefCell<Option<Node>>,
}

impl<'de> MapAccess<'de> for ProbeKeyMap<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        if std::mem::replace(&mut self.key_given, true) {
            return Ok(None);
        }
        let key: StringDeserializer<ProbeError> = PROBE_KEY.to_owned().into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        _seed: V,
    ) -> Result<V::Value, ProbeError> {
        *self.found.borrow_mut() = Some(Node::Map);
        Err(ProbeError::Other)
    }
}

/// The enum variant named by the next path segment.
struct OneVariant<'a> {
    variant: String,
    value: Probe<'a>,
}

impl<'de, 'a> EnumAccess<'de> for OneVariant<'a> {
    type Error = ProbeError;
    type Variant = Probe<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Probe<'a>), ProbeError> {
        let name: StringDeserializer<ProbeError> = self.variant.into_deserializer();
        Ok((seed.deserialize(name)?, self.value))
    }
}

impl<'de> VariantAccess<'de> for Probe<'_> {
    type Error = ProbeError;

    fn unit_variant(self) -> Result<(), ProbeError> {
        if self.at_end() {
            Err(self.record(Node::Unit))
        } else {
            Err(ProbeError::Other)
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ProbeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<T: DeserializeOwned>() -> Vec<String> {
        config_keys::<T>().into_iter().map(|k| k.key).collect()
    }

    #[test]
    fn walks_structs_enums_options_and_keyed_tables() {
        let gateway = config_keys::<GatewayConfig>();
        let find = |key: &str| {
            gateway
                .iter()
                .find(|k| k.key == key)
                .unwrap_or_else(|| panic!("{key} missing from {gateway:#?}"))
        };
        assert_eq!(
            find("tls.mode").kind,
            r#"one of "acme", "self_signed", "files""#
        );
        assert_eq!(find("workers").kind, "u16");
        assert!(find("admin_token").kind.starts_with("optional "));
        find("tls.acme.dns_api_token");
        find("store");
        find("store.etcd.tls.ca_file");
        assert!(!gateway
            .iter()
            .any(|k| k.key == "tls" || k.key == "store.embedded"));

        let kms = keys::<KmsConfig>();
        assert!(
            kms.contains(&"policy.apps.*.compose_hashes".to_owned()),
            "{kms:#?}"
        );
        assert!(kms.contains(&"webhook.timeout_ms".to_owned()));
        assert!(kms.contains(&"quote_provider".to_owned()));
        assert!(kms.contains(&"quote_provider.tdx.tsm_path".to_owned()));
    }

    #[test]
    fn every_component_is_listed() {
        for name in COMPONENTS {
            assert!(!component_keys(name).unwrap().is_empty(), "{name}");
        }
        assert!(component_keys("nope").is_none());
    }
}
