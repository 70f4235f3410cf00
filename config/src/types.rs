//! Small validated value types: each checks its text once, while the config
//! is deserialised, so a bad value is reported with its key.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A secret string (API token, password).
///
/// `Debug` prints `***`; read the value with [`Secret::expose`]. There is no
/// `Display`, so a secret does not end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes (safe to report).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl Visitor<'_> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                if v.is_empty() {
                    return Err(E::custom("must not be empty"));
                }
                Ok(Secret(v.to_owned()))
            }
            // An environment override such as `TEEGATE_DNS__API__TOKEN=1234`
            // reads as a number; a secret takes it as its text.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// A fully qualified DNS host name: lowercase ASCII letters, digits and `-`,
/// labels of 1 to 63 characters, at most 253 characters in all. A single
/// trailing dot is accepted and dropped.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsName(String);

impl DnsName {
    /// Checks `text` and wraps it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fail = |why: &str| Err(format!("{text:?} is not a valid DNS name: {why}"));
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.is_empty() {
            return fail("it is empty");
        }
        if name.len() > 253 {
            return fail("longer than 253 characters");
        }
        for label in name.split('.') {
            if label.is_empty() {
                return fail("empty label");
            }
            if label.len() > 63 {
                return fail("a label is longer than 63 characters");
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return fail(&format!("character {c:?} is not allowed"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return fail("a label starts or ends with '-'");
            }
        }
        if name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return fail("the last label is numeric (an IP address is not a DNS name)");
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return fail(&format!(
                "must be lowercase (use {:?})",
                name.to_ascii_lowercase()
            ));
        }
        Ok(DnsName(name.to_owned()))
    }

    /// The name, without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<label>.<self>`, checked.
    pub fn prepend(&self, label: &str) -> Result<DnsName, String> {
        DnsName::parse(&format!("{label}.{}", self.0))
    }

    /// Whether `host` is this name or a name below it.
    pub fn is_suffix_of(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        host.eq_ignore_ascii_case(&self.0)
            || (host.len() > self.0.len()
                && host.as_bytes()[host.len() - self.0.len() - 1] == b'.'
                && host[host.len() - self.0.len()..].eq_ignore_ascii_case(&self.0))
    }
}

impl FromStr for DnsName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DnsName::parse(s)
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for DnsName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A domain pattern for custom domains: `example.com` matches the domain and
/// every name below it; `*.example.com` matches only names below it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DomainSuffix {
    domain: DnsName,
    subdomains_only: bool,
}

impl DomainSuffix {
    /// Parses `example.com` or `*.example.com`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (rest, subdomains_only) = match text.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        let domain = DnsName::parse(rest).map_err(|e| format!("bad domain pattern: {e}"))?;
        Ok(DomainSuffix {
            domain,
            subdomains_only,
        })
    }

    /// The domain the pattern is anchored at.
    pub fn domain(&self) -> &DnsName {
        &self.domain
    }

    /// Whether `host` matches the pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        if self.subdomains_only && host.eq_ignore_ascii_case(self.domain.as_str()) {
            return false;
        }
        self.domain.is_suffix_of(host)
    }
}

impl fmt::Display for DomainSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains_only {
            f.write_str("*.")?;
        }
        f.write_str(self.domain.as_str())
    }
}

impl fmt::Debug for DomainSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// URL scheme of an [`HttpUrl`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`
    Http,
    /// `https://`
    Https,
}

/// An `http://` or `https://` URL, checked for shape (scheme, host, port);
/// no user info, no whitespace.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    text: String,
    scheme: Scheme,
    host: String,
    port: Option<u16>,
}

impl HttpUrl {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fail = |why: &str| Err(format!("{text:?} is not a valid URL: {why}"));
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return fail("contains whitespace");
        }
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return fail("must start with https:// or http://");
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if authority.contains('@') {
            return fail("user info (user@host) is not allowed");
        }
        let (host, port_text) = if let Some(v6) = authority.strip_prefix('[') {
            let Some(close) = v6.find(']') else {
                return fail("unclosed '[' in the host");
            };
            let host = &v6[..close];
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return fail("bad IPv6 address");
            }
            let after = &v6[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return fail("unexpected text after the IPv6 address"),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return fail("no host");
        }
        if !authority.starts_with('[')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return fail("bad character in the host");
        }
        let port = match port_text {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return fail("port must be a number from 1 to 65535"),
                Ok(n) => Some(n),
            },
        };
        Ok(HttpUrl {
            text: text.to_owned(),
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host (lowercase; an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port, or the scheme's default one.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        })
    }

    /// Whether the scheme is `https`.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::Https
    }

    /// Whether the host is `localhost` (or below it) or a loopback IP.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self.host.ends_with(".localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Err unless the URL is `https://`.
    pub(crate) fn require_https(&self) -> Result<(), String> {
        if self.is_https() {
            Ok(())
        } else {
            Err(format!("{:?} must use https://", self.text))
        }
    }

    /// Err unless the URL is `https://`, or `http://` to a loopback host.
    pub(crate) fn require_https_or_loopback(&self) -> Result<(), String> {
        if self.is_https() || self.is_loopback() {
            Ok(())
        } else {
            Err(format!(
                "{:?} must use https:// (http:// is allowed only to a loopback host)",
                self.text
            ))
        }
    }
}

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        HttpUrl::parse(s)
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

/// Decodes exactly `N` bytes of hex (either case).
fn decode_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    if text.len() != 2 * N {
        return Err(format!(
            "{text:?} is not a valid {what}: expected {} hex characters ({N} bytes), got {}",
            2 * N,
            text.chars().count()
        ));
    }
    let mut out = [0u8; N];
    let bytes = text.as_bytes();
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = hex_value(bytes[2 * i]);
        let lo = hex_value(bytes[2 * i + 1]);
        match (hi, lo) {
            (Some(hi), Some(lo)) => *byte = hi << 4 | lo,
            _ => {
                let pos = if hi.is_none() { 2 * i } else { 2 * i + 1 };
                return Err(format!(
                    "{text:?} is not a valid {what}: character {:?} at position {pos} is not hex",
                    char::from(bytes[pos])
                ));
            }
        }
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn write_hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

macro_rules! hex_newtype {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr, accept_0x = $accept_0x:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Parses hex text (either case).
            pub fn parse(text: &str) -> Result<Self, String> {
                let hex = if $accept_0x {
                    text.strip_prefix("0x")
                        .or_else(|| text.strip_prefix("0X"))
                        .unwrap_or(text)
                } else {
                    text
                };
                decode_hex::<$len>(hex, $what).map($name)
            }

            /// Wraps raw bytes.
            pub fn from_bytes(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::parse(s)
            }
        }

        /// Lowercase hex, no prefix.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "\"{self}\"")
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(FromStrVisitor::<$name>::new($what))
            }
        }
    };
}

hex_newtype!(
    /// A TDX measurement register value (MRTD or RTMR0-3): 48 bytes, written
    /// as 96 hex characters.
    Measurement,
    48,
    "measurement",
    accept_0x = false
);
hex_newtype!(
    /// A compose hash: SHA-256 of `app-compose.json`, 64 hex characters.
    ComposeHash,
    32,
    "compose hash",
    accept_0x = false
);
hex_newtype!(
    /// An app id: 20 bytes, 40 hex characters; an optional `0x` prefix and
    /// uppercase are accepted and normalised to lowercase.
    AppId,
    20,
    "app id",
    accept_0x = true
);

/// Deserialises any `FromStr<Err = String>` type from a string.
pub(crate) struct FromStrVisitor<T> {
    what: &'static str,
    _marker: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    pub(crate) fn new(what: &'static str) -> Self {
        FromStrVisitor {
            what,
            _marker: std::marker::PhantomData,
        }
    }
}

impl<T: FromStr<Err = String>> Visitor<'_> for FromStrVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} string", self.what)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

macro_rules! deserialize_from_str {
    ($name:ident, $what:expr) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(FromStrVisitor::<$name>::new($what))
            }
        }
    };
}

deserialize_from_str!(DnsName, "DNS name");
deserialize_from_str!(HttpUrl, "URL");

impl FromStr for DomainSuffix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DomainSuffix::parse(s)
    }
}
deserialize_from_str!(DomainSuffix, "domain pattern");

/// Parses `ip:port` with an error that shows the text.
fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not a valid socket address (expected IP:port such as \"0.0.0.0:443\" or \"[::1]:443\", port 0 to 65535)")
    })
}

/// `deserialize_with` for `SocketAddr` fields.
pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    struct AddrVisitor;
    impl Visitor<'_> for AddrVisitor {
        type Value = SocketAddr;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a socket address string such as \"0.0.0.0:443\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
            parse_socket_addr(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(AddrVisitor)
}

/// `deserialize_with` for `Option<SocketAddr>` fields (absent = `None`).
pub(crate) fn opt_socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_name_rejects_empty_label_and_uppercase() {
        let e = DnsName::parse("Example..com").unwrap_err();
        assert!(
            e.starts_with("\"Example..com\" is not a valid DNS name"),
            "{e}"
        );
        let e = DnsName::parse("Example.com").unwrap_err();
        assert!(e.contains("lowercase"), "{e}");
        assert!(DnsName::parse("-a.com").is_err());
        assert!(DnsName::parse("a_b.com").is_err());
        assert!(DnsName::parse("10.0.0.1").is_err());
        assert!(DnsName::parse(&format!("{}.com", "a".repeat(64))).is_err());
        assert_eq!(
            DnsName::parse("example.com.").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(DnsName::parse("localhost").unwrap().as_str(), "localhost");
    }

    #[test]
    fn dns_name_suffix_matches_only_on_label_boundary() {
        let d = DnsName::parse("example.com").unwrap();
        assert!(d.is_suffix_of("example.com"));
        assert!(d.is_suffix_of("a.Example.com."));
        assert!(!d.is_suffix_of("badexample.com"));
        let p = DomainSuffix::parse("*.example.com").unwrap();
        assert!(p.matches("x.example.com"));
        assert!(!p.matches("example.com"));
        assert_eq!(p.to_string(), "*.example.com");
    }

    #[test]
    fn url_parsing_checks_scheme_host_and_port() {
        let u = HttpUrl::parse("https://pccs.example.com:8081/sgx/certification/v4/").unwrap();
        assert_eq!(u.host(), "pccs.example.com");
        assert_eq!(u.port(), Some(8081));
        assert!(u.is_https());
        let u = HttpUrl::parse("http://[::1]:2379").unwrap();
        assert!(u.is_loopback());
        assert_eq!(u.port_or_default(), 2379);
        assert!(HttpUrl::parse("http://127.0.0.1").unwrap().is_loopback());
        assert!(HttpUrl::parse("ftp://x").is_err());
        assert!(HttpUrl::parse("https://").is_err());
        assert!(HttpUrl::parse("https://u@x").is_err());
        assert!(HttpUrl::parse("https://x:70000").is_err());
        assert!(HttpUrl::parse("https://x y").is_err());
        assert!(HttpUrl::parse("http://10.0.0.1/")
            .unwrap()
            .require_https_or_loopback()
            .is_err());
    }

    #[test]
    fn hex_types_check_length_and_digits_and_normalise() {
        let id = AppId::parse("0xABCDEF0123456789ABCDEF0123456789ABCDEF01").unwrap();
        assert_eq!(id.to_string(), "abcdef0123456789abcdef0123456789abcdef01");
        let e = Measurement::parse("abc").unwrap_err();
        assert!(e.contains("expected 96 hex characters"), "{e}");
        let e = ComposeHash::parse(&format!("{}zz", "0".repeat(62))).unwrap_err();
        assert!(e.contains("position 62"), "{e}");
        assert!(ComposeHash::parse(&format!("0x{}", "0".repeat(62))).is_err());
    }

    #[test]
    fn secret_debug_hides_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
    }
}
