//! The content-addressed name grammar: `<app-id|instance-id>[-<port>][s|g].<base-domain>`.
//! The id is 40 hex characters (an optional `0x` prefix is accepted, case is ignored), the
//! port is the container port (80 when absent, 1-65535, no leading zeros), `s` asks for TLS
//! passthrough to the CVM and `g` for an HTTP/2 (gRPC) upstream.

use std::fmt;
use std::sync::Mutex;

/// How the gateway carries a connection to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Terminate TLS here, proxy HTTP/1.1 or HTTP/2 to the instance over RA-TLS.
    Terminate,
    /// Relay the client's TLS bytes untouched; the client sees the RA-TLS certificate.
    Passthrough,
    /// Terminate TLS here, HTTP/2 upstream (gRPC).
    Grpc,
}

/// A parsed app name: which id, which container port, which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// An app id or an instance id; the routing table tells which.
    pub id: [u8; 20],
    pub port: u16,
    pub mode: Mode,
}

impl Target {
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// Why a host is not one of our app names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Not under the base domain (may be a custom domain).
    NotOurDomain,
    /// The base domain itself (the attestation web UI lives there).
    BaseDomain,
    /// Under the base domain but not a valid app label.
    BadLabel(&'static str),
    /// Longer than DNS allows.
    TooLong,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::NotOurDomain => f.write_str("not under the base domain"),
            NameError::BaseDomain => f.write_str("the base domain itself"),
            NameError::BadLabel(why) => write!(f, "not an app name: {why}"),
            NameError::TooLong => f.write_str("name longer than 253 characters"),
        }
    }
}

impl std::error::Error for NameError {}

const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Lower-cases a Host header or SNI value and strips a trailing dot and `:port`.
pub fn normalize_host(host: &str) -> Result<String, NameError> {
    strip_host(host).map(str::to_ascii_lowercase)
}

/// `host` without surrounding space, a numeric `:port` or a trailing dot; not lower-cased
/// (so parsing a request's host allocates nothing).
fn strip_host(host: &str) -> Result<&str, NameError> {
    let host = host.trim();
    let host = match host.rsplit_once(':') {
        // Only strip a numeric port; IPv6 literals are not app names anyway.
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    Ok(host)
}

/// Parses `host` (already normalised or not) against `base_domain` (lowercase).
pub fn parse(host: &str, base_domain: &str) -> Result<Target, NameError> {
    let host = strip_host(host)?;
    if host.eq_ignore_ascii_case(base_domain) {
        return Err(NameError::BaseDomain);
    }
    // `<label>.<base_domain>`, the base compared without regard to case.
    let label = host
        .len()
        .checked_sub(base_domain.len() + 1)
        .filter(|&cut| host.as_bytes()[cut] == b'.')
        .and_then(|cut| Some((host.get(..cut)?, host.get(cut + 1..)?)))
        .filter(|(_, base)| base.eq_ignore_ascii_case(base_domain))
        .map(|(label, _)| label)
        .ok_or(NameError::NotOurDomain)?;
    if label.contains('.') {
        return Err(NameError::BadLabel(
            "more than one label before the base domain",
        ));
    }
    parse_label(label)
}

/// Each byte's value as a lower-case hex digit, or 0xff. The label is decoded for every
/// request, and the hex crate's per-digit matching was ~1.5% of a keep-alive request.
const HEX_DIGIT: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// The 20-byte id from 40 lower-case hex digits.
fn decode_id(hex: &[u8]) -> Option<[u8; 20]> {
    let mut id = [0u8; 20];
    // Any byte that is not a digit sets the high bits of `bad`.
    let mut bad = 0u8;
    for (out, pair) in id.iter_mut().zip(hex.chunks_exact(2)) {
        let (hi, lo) = (HEX_DIGIT[pair[0] as usize], HEX_DIGIT[pair[1] as usize]);
        bad |= hi | lo;
        *out = hi << 4 | lo;
    }
    (hex.len() == 40 && bad & 0xf0 == 0).then_some(id)
}

/// The last host name a connection's requests named, and what it parsed to: clients name
/// the same host on every request of a connection, and parsing it was ~3% of a keep-alive
/// request's instructions. A different name is parsed afresh (and remembered instead).
/// The lock is never contended: one task serves a connection and all its streams.
/// It holds the name's bytes as the client sent them, so the usual request, naming the same
/// host again, is answered by comparing bytes, before any UTF-8 check or parse.
#[derive(Default)]
pub struct HostMemo(Mutex<Option<(Box<[u8]>, Target)>>);

impl HostMemo {
    /// [`parse`]`(host, base_domain)`, from the memo when `host` is the name parsed last;
    /// `base_domain` must be the same on every call. A host that is not UTF-8 is no name of
    /// ours.
    pub fn parse(&self, host: &[u8], base_domain: &str) -> Result<Target, NameError> {
        let parse_new = || {
            let name = std::str::from_utf8(host).map_err(|_| NameError::BadLabel("not ASCII"))?;
            parse(name, base_domain)
        };
        let Ok(mut last) = self.0.lock() else {
            return parse_new();
        };
        match &*last {
            Some((name, target)) if **name == *host => Ok(*target),
            _ => {
                let target = parse_new()?;
                *last = Some((host.into(), target));
                Ok(target)
            }
        }
    }
}

/// Parses the first label alone: `<id>[-<port>][s|g]`.
pub fn parse_label(label: &str) -> Result<Target, NameError> {
    if label.is_empty() {
        return Err(NameError::BadLabel("empty label"));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::BadLabel("label longer than 63 characters"));
    }
    // Byte offsets below assume ASCII; anything else is no name of ours (and slicing a
    // multi-byte character would panic: found by fuzzing).
    if !label.is_ascii() {
        return Err(NameError::BadLabel("only ASCII letters, digits and '-'"));
    }
    // Lower-cased on the stack: the label is ASCII and at most 63 bytes.
    let mut lower = [0u8; MAX_LABEL_LEN];
    let lower = &mut lower[..label.len()];
    lower.copy_from_slice(label.as_bytes());
    lower.make_ascii_lowercase();
    let label = std::str::from_utf8(lower).map_err(|_| NameError::BadLabel("not ASCII"))?;
    let rest = label.strip_prefix("0x").unwrap_or(label);
    if rest.len() < 40 {
        return Err(NameError::BadLabel("id must be 40 hex characters"));
    }
    let (id_hex, rest) = rest.split_at(40);
    let id = decode_id(id_hex.as_bytes()).ok_or(NameError::BadLabel("id is not hex"))?;
    let (rest, mode) = match rest.as_bytes().last() {
        Some(b's') => (&rest[..rest.len() - 1], Mode::Passthrough),
        Some(b'g') => (&rest[..rest.len() - 1], Mode::Grpc),
        _ => (rest, Mode::Terminate),
    };
    let port = match rest {
        "" => 80,
        _ => {
            let digits = rest
                .strip_prefix('-')
                .ok_or(NameError::BadLabel("unexpected characters after the id"))?;
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(NameError::BadLabel("port must be 1-65535"));
            }
            if digits.starts_with('0') {
                return Err(NameError::BadLabel("port must not have leading zeros"));
            }
            match digits.parse::<u32>() {
                Ok(p @ 1..=65535) => p as u16,
                _ => return Err(NameError::BadLabel("port must be 1-65535")),
            }
        }
    };
    Ok(Target { id, port, mode })
}

/// The name a sidecar's RA-TLS front expects in SNI for `(id, port)`.
pub fn upstream_sni(app_id_hex: &str, port: u16, base_domain: &str) -> String {
    format!("{app_id_hex}-{port}.{base_domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "apps.example.com";
    const ID: &str = "0123456789abcdef0123456789abcdef01234567";

    fn ok(host: &str) -> Target {
        parse(host, BASE).unwrap_or_else(|e| panic!("{host}: {e}"))
    }

    fn bad(host: &str) -> NameError {
        parse(host, BASE).expect_err(host)
    }

    #[test]
    fn plain_app_name_defaults_to_port_80() {
        let t = ok(&format!("{ID}.{BASE}"));
        assert_eq!(
            (t.id_hex().as_str(), t.port, t.mode),
            (ID, 80, Mode::Terminate)
        );
    }

    #[test]
    fn accepts_upper_case_prefix_trailing_dot_and_port() {
        let t = ok(&format!("0X{}.APPS.Example.COM.:443", ID.to_uppercase()));
        assert_eq!(t.id_hex(), ID);
        let t = ok(&format!("0x{ID}-8080.{BASE}"));
        assert_eq!(t.port, 8080);
    }

    #[test]
    fn ports_and_suffixes() {
        assert_eq!(ok(&format!("{ID}-1.{BASE}")).port, 1);
        assert_eq!(ok(&format!("{ID}-65535.{BASE}")).port, 65535);
        let t = ok(&format!("{ID}-8443s.{BASE}"));
        assert_eq!((t.port, t.mode), (8443, Mode::Passthrough));
        let t = ok(&format!("{ID}s.{BASE}"));
        assert_eq!((t.port, t.mode), (80, Mode::Passthrough));
        let t = ok(&format!("{ID}-50051g.{BASE}"));
        assert_eq!((t.port, t.mode), (50051, Mode::Grpc));
        assert_eq!(ok(&format!("{ID}g.{BASE}")).mode, Mode::Grpc);
    }

    #[test]
    fn every_id_byte_decodes_and_any_non_hex_digit_is_refused() {
        let all: Vec<u8> = (0..=255u8).collect();
        for bytes in all.chunks(20) {
            let mut id = [0u8; 20];
            id[..bytes.len()].copy_from_slice(bytes);
            assert_eq!(ok(&format!("{}.{BASE}", hex::encode(id))).id, id);
        }
        for at in [0, 1, 17, 38, 39] {
            for c in ['g', 'z', '-', ':', '/', '@', '`', 'G'] {
                let mut label: Vec<char> = ID.chars().collect();
                label[at] = c;
                let label: String = label.into_iter().collect();
                assert!(
                    matches!(bad(&format!("{label}.{BASE}")), NameError::BadLabel(_)),
                    "{c:?} at {at}"
                );
            }
        }
    }

    #[test]
    fn the_memo_answers_for_the_name_parsed_last_and_only_for_it() {
        let memo = HostMemo::default();
        let other = ID.replace('a', "b");
        let a = format!("{ID}-8080.{BASE}");
        let b = format!("{other}s.{BASE}");
        assert_eq!(memo.parse(a.as_bytes(), BASE), parse(&a, BASE));
        assert_eq!(memo.parse(a.as_bytes(), BASE).unwrap().port, 8080);
        // Another name on the same connection is routed by that name, not the memo.
        let t = memo.parse(b.as_bytes(), BASE).unwrap();
        assert_eq!((t.id_hex(), t.port, t.mode), (other, 80, Mode::Passthrough));
        assert_eq!(memo.parse(a.as_bytes(), BASE).unwrap().id_hex(), ID);
        // A bad name is refused and leaves the memo as it was.
        assert!(memo.parse(format!("nope.{BASE}").as_bytes(), BASE).is_err());
        assert!(memo.parse(BASE.as_bytes(), BASE).is_err());
        assert_eq!(memo.parse(a.as_bytes(), BASE).unwrap().port, 8080);
        // Names differing only in case or a trailing dot are parsed, not matched.
        let upper = format!("{}-8080.{BASE}.", ID.to_uppercase());
        assert_eq!(memo.parse(upper.as_bytes(), BASE), parse(&a, BASE));
        // Bytes that are not UTF-8 are refused, and leave the memo as it was.
        let mut bad = a.clone().into_bytes();
        bad[0] = 0xff;
        assert_eq!(
            memo.parse(&bad, BASE),
            Err(NameError::BadLabel("not ASCII"))
        );
        assert_eq!(memo.parse(upper.as_bytes(), BASE).unwrap().port, 8080);
    }

    #[test]
    fn non_ascii_labels_are_refused_not_a_panic() {
        // The fuzzer's input: a multi-byte character across the 40-byte id boundary.
        let crash: &[u8] = &[
            205, 169, 112, 115, 46, 101, 120, 120, 120, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59,
            59, 4, 59, 59, 59, 59, 120, 97, 109, 112, 112, 108, 84, 86, 86, 36, 13, 13, 13, 205,
            169, 84, 86, 86, 36, 13, 13,
        ];
        let host = std::str::from_utf8(crash).unwrap();
        assert!(parse_label(host).is_err());
        assert!(parse(host, "apps.example.com").is_err());
        let label = format!("{}\u{369}s", "a".repeat(39));
        assert!(matches!(parse_label(&label), Err(NameError::BadLabel(_))));
    }

    #[test]
    fn rejects_bad_ports() {
        for p in ["0", "65536", "99999", "080", "", "12a", "-5", "123456"] {
            assert!(
                matches!(bad(&format!("{ID}-{p}.{BASE}")), NameError::BadLabel(_)),
                "port {p:?}"
            );
        }
        assert!(matches!(
            bad(&format!("{ID}-80x.{BASE}")),
            NameError::BadLabel(_)
        ));
        assert!(matches!(
            bad(&format!("{ID}-80sg.{BASE}")),
            NameError::BadLabel(_)
        ));
    }

    #[test]
    fn rejects_bad_ids() {
        assert!(matches!(
            bad(&format!("{}.{BASE}", &ID[..39])),
            NameError::BadLabel(_)
        ));
        assert!(matches!(
            bad(&format!("{}z.{BASE}", &ID[..39])),
            NameError::BadLabel(_)
        ));
        assert!(matches!(
            bad(&format!("{ID}0.{BASE}")),
            NameError::BadLabel(_)
        ));
        assert!(matches!(bad(&format!("0x.{BASE}")), NameError::BadLabel(_)));
        assert!(matches!(
            bad(&format!("www.{BASE}")),
            NameError::BadLabel(_)
        ));
    }

    #[test]
    fn names_that_are_not_ours() {
        assert_eq!(bad("example.org"), NameError::NotOurDomain);
        assert_eq!(bad(&format!("{ID}.evil{BASE}")), NameError::NotOurDomain);
        assert_eq!(
            bad(&format!("{ID}.{BASE}.evil.com")),
            NameError::NotOurDomain
        );
        assert_eq!(bad(BASE), NameError::BaseDomain);
        assert!(matches!(
            bad(&format!("a.{ID}.{BASE}")),
            NameError::BadLabel(_)
        ));
        assert!(matches!(bad(&format!(".{BASE}")), NameError::BadLabel(_)));
    }

    #[test]
    fn over_long_names_and_labels() {
        let long = format!("{}.{BASE}", "a".repeat(250));
        assert_eq!(bad(&long), NameError::TooLong);
        let label = format!("{ID}-{}", "1".repeat(30));
        assert!(matches!(
            bad(&format!("{label}.{BASE}")),
            NameError::BadLabel(_)
        ));
    }

    #[test]
    fn upstream_sni_round_trips() {
        let sni = upstream_sni(ID, 8080, BASE);
        let t = ok(&sni);
        assert_eq!((t.id_hex().as_str(), t.port), (ID, 8080));
    }
}
