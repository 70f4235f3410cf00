//! Custom domains: `shop.example.com` reaches an app when `_teegate-app.shop.example.com`
//! has a TXT record `<app-id>[:<port>]`, the operator's allow rules admit the name, and the
//! name's own addresses are public (a name pointing at loopback or private addresses is
//! refused, so the gateway cannot be aimed at internal networks through DNS). Answers,
//! good and bad, are cached with a bound on entries; failures are cached more briefly.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::names::{self, Mode, Target};

/// Why a custom domain does not route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomError {
    #[error("custom domains are not enabled")]
    Disabled,
    #[error("{0} is not allowed by the operator's custom domain rules")]
    NotAllowed(String),
    #[error("no _teegate-app TXT record for {0}")]
    NoRecord(String),
    #[error("_teegate-app TXT record for {name} is not <app-id>[:<port>]: {value:?}")]
    BadRecord { name: String, value: String },
    #[error("{name} resolves to {addr}, a loopback or private address; refused")]
    PrivateAddress { name: String, addr: IpAddr },
    #[error("DNS lookup for {name} failed: {message}")]
    Lookup { name: String, message: String },
}

struct Cached {
    answer: Result<Target, CustomError>,
    expires: Instant,
}

pub struct CustomDomains {
    resolver: TokioResolver,
    allow: Vec<config::DomainSuffix>,
    cache: DashMap<String, Cached>,
    ttl: Duration,
    max: usize,
    allow_internal: bool,
}

/// Loopback, private, link-local, unspecified, CGNAT and unique-local addresses.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

/// Parses a TXT value `<app-id>[:<port>]` into a route.
pub fn parse_txt(value: &str) -> Option<Target> {
    let value = value.trim();
    let (id, port) = match value.split_once(':') {
        Some((id, port)) => (id, port.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => (value, 80),
    };
    // Only the bare id: the port, if any, comes after ':'.
    let bare = id.strip_prefix("0x").unwrap_or(id);
    if bare.len() != 40 {
        return None;
    }
    let label = names::parse_label(id).ok()?;
    Some(Target {
        id: label.id,
        port,
        mode: Mode::Terminate,
    })
}

/// The route named by a host's `_teegate-app` TXT records, each given as its character
/// strings (joined, lossy UTF-8): every record must parse and all must agree. Also the
/// fuzzer's entry point for the TXT value.
#[doc(hidden)]
pub fn route_from_txt<R, P>(
    host: &str,
    records: impl IntoIterator<Item = R>,
) -> Result<Target, CustomError>
where
    R: IntoIterator<Item = P>,
    P: AsRef<[u8]>,
{
    let values: Vec<String> = records
        .into_iter()
        .map(|parts| {
            parts
                .into_iter()
                .map(|part| String::from_utf8_lossy(part.as_ref()).into_owned())
                .collect::<String>()
        })
        .collect();
    let mut targets = values.iter().map(|v| {
        parse_txt(v).ok_or_else(|| CustomError::BadRecord {
            name: host.to_string(),
            value: v.to_string(),
        })
    });
    let first = targets
        .next()
        .ok_or_else(|| CustomError::NoRecord(host.to_string()))??;
    for other in targets {
        if other? != first {
            return Err(CustomError::BadRecord {
                name: host.to_string(),
                value: values.join(" | "),
            });
        }
    }
    Ok(first)
}

impl CustomDomains {
    pub fn new(cfg: &config::CustomDomainsConfig) -> Result<Self, String> {
        let provider = TokioRuntimeProvider::default();
        let builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| format!("system resolver: {e}"))?
        } else {
            let servers = cfg.nameservers.iter().map(|addr: &SocketAddr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            });
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers.collect()),
                provider,
            )
        };
        let resolver = builder.build().map_err(|e| format!("resolver: {e}"))?;
        Ok(Self {
            resolver,
            allow: cfg.allow.clone(),
            cache: DashMap::new(),
            ttl: Duration::from_secs(cfg.txt_cache_secs),
            max: cfg.max_cached as usize,
            allow_internal: cfg.allow_internal_addresses,
        })
    }

    fn allowed(&self, host: &str) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|rule| rule.matches(host))
    }

    /// The route for a custom domain (host already normalised, lowercase).
    pub async fn lookup(&self, host: &str) -> Result<Target, CustomError> {
        if !self.allowed(host) {
            return Err(CustomError::NotAllowed(host.to_string()));
        }
        let now = Instant::now();
        if let Some(hit) = self.cache.get(host).filter(|c| c.expires > now) {
            return hit.answer.clone();
        }
        let answer = self.resolve(host).await;
        // Failures are retried sooner than successes are refreshed, but never on every request.
        let ttl = if answer.is_ok() {
            self.ttl
        } else {
            self.ttl.min(Duration::from_secs(30))
        };
        self.insert(
            host,
            Cached {
                answer: answer.clone(),
                expires: now + ttl,
            },
        );
        answer
    }

    fn insert(&self, host: &str, entry: Cached) {
        if self.cache.len() >= self.max {
            let now = Instant::now();
            self.cache.retain(|_, c| c.expires > now);
            if self.cache.len() >= self.max {
                // Still full of live entries: drop a quarter, whichever the map yields first.
                let victims: Vec<String> = self
                    .cache
                    .iter()
                    .take(self.max / 4 + 1)
                    .map(|e| e.key().clone())
                    .collect();
                for v in victims {
                    self.cache.remove(&v);
                }
            }
        }
        self.cache.insert(host.to_string(), entry);
    }

    async fn resolve(&self, host: &str) -> Result<Target, CustomError> {
        let lookup_err = |e: &dyn std::fmt::Display| CustomError::Lookup {
            name: host.to_string(),
            message: e.to_string(),
        };
        let txt_name = format!("_teegate-app.{host}.");
        let txt = match self.resolver.txt_lookup(txt_name.as_str()).await {
            Ok(t) => t,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                return Err(CustomError::NoRecord(host.to_string()))
            }
            Err(e) => return Err(lookup_err(&e)),
        };
        let first = route_from_txt(
            host,
            txt.answers().iter().filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::TXT(t) => Some(t.txt_data.iter()),
                _ => None,
            }),
        )?;
        let ips = self
            .resolver
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| lookup_err(&e))?;
        if let Some(addr) = ips
            .iter()
            .find(|ip| !self.allow_internal && is_internal(*ip))
        {
            return Err(CustomError::PrivateAddress {
                name: host.to_string(),
                addr,
            });
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_values() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(parse_txt(id).unwrap().port, 80);
        assert_eq!(parse_txt(&format!("0x{id}:8080")).unwrap().port, 8080);
        for bad in [
            "",
            "nothex",
            &format!("{id}:0"),
            &format!("{id}:99999"),
            &format!("{id}-80"),
            &format!("{id}s"),
            &format!("{id}:80:1"),
        ] {
            assert!(parse_txt(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn txt_records_join_their_strings_and_must_agree() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        let split: Vec<Vec<&[u8]>> =
            vec![vec![&id.as_bytes()[..20], &id.as_bytes()[20..], b":8443"]];
        assert_eq!(route_from_txt("a.test", &split).unwrap().port, 8443);
        let agree = vec![vec![id.as_bytes()], vec![id.as_bytes()]];
        assert!(route_from_txt("a.test", &agree).is_ok());
        let other = format!("{id}:81");
        let disagree = vec![vec![id.as_bytes()], vec![other.as_bytes()]];
        assert!(matches!(
            route_from_txt("a.test", &disagree),
            Err(CustomError::BadRecord { .. })
        ));
        let none: Vec<Vec<&[u8]>> = Vec::new();
        assert_eq!(
            route_from_txt("a.test", &none),
            Err(CustomError::NoRecord("a.test".into()))
        );
        // Invalid UTF-8 is read lossily and then refused, never panics.
        let junk = vec![vec![&[0xff, 0xfe][..]]];
        assert!(route_from_txt("a.test", &junk).is_err());
    }

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in ["203.0.113.7", "8.8.8.8", "2001:db8::1", "100.128.0.1"] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }
}
