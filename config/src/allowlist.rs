//! `Allowlist<T>`: the string `"any"` or a list; the default, an empty list,
//! allows nothing.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Unexpected, Visitor};

/// Which values a policy accepts.
///
/// In TOML: `mrtd = "any"` or `mrtd = ["…", "…"]`. Left out, it is an empty
/// list: deny by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowlist<T> {
    /// Every value is accepted (the TOML string `"any"`).
    Any,
    /// Only these values are accepted; empty means none.
    Only(Vec<T>),
}

impl<T> Default for Allowlist<T> {
    fn default() -> Self {
        Allowlist::Only(Vec::new())
    }
}

impl<T: PartialEq> Allowlist<T> {
    /// Whether `value` is accepted.
    pub fn allows(&self, value: &T) -> bool {
        match self {
            Allowlist::Any => true,
            Allowlist::Only(list) => list.contains(value),
        }
    }
}

impl<T> Allowlist<T> {
    /// Whether this is `"any"`.
    pub fn is_any(&self) -> bool {
        matches!(self, Allowlist::Any)
    }

    /// Whether nothing at all is accepted.
    pub fn denies_all(&self) -> bool {
        matches!(self, Allowlist::Only(list) if list.is_empty())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Allowlist<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AllowlistVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for AllowlistVisitor<T> {
            type Value = Allowlist<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the string \"any\" or a list")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "any" {
                    Ok(Allowlist::Any)
                } else {
                    Err(E::invalid_value(Unexpected::Str(v), &self))
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Allowlist::Only(items))
            }
        }

        deserializer.deserialize_any(AllowlistVisitor(PhantomData))
    }
}
