//! The zone model: the fixed records from the config (SOA, NS, TTL, CAA issuer) and the
//! records that change at run time (gateway addresses, DNS-01 TXT values, the CAA account),
//! behind a cloneable [`ZoneHandle`].
//!
//! Readers take an `Arc` of the current [`Snapshot`] (one short read lock, no copying);
//! writers build a new snapshot and swap it in, bumping the SOA serial.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use hickory_server::proto::rr::rdata::{A, AAAA, CAA, NS, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};

use crate::api::{
    ClientError, ZoneView, ACME_CHALLENGE_LABEL, MAX_ACCOUNT_URI_LEN, MAX_CHALLENGE_NAMES,
    MAX_GATEWAY_ADDRS, MAX_TXT_VALUES, MAX_TXT_VALUE_LEN,
};
use crate::error::ZoneError;

/// Parts of the zone fixed at start.
#[derive(Debug)]
pub(crate) struct Fixed {
    /// The apex, fully qualified.
    pub origin: Name,
    pub origin_lower: LowerName,
    /// TTL of positive answers.
    pub ttl: u32,
    /// SOA without the serial (filled per snapshot).
    soa: SOA,
    ns: Vec<Name>,
    caa_issuer: String,
    /// Name-server names inside the zone, answered with this server's own addresses
    /// (`ns_addrs`) instead of the gateways'; empty when `ns_addrs` is.
    ns_hosts: Vec<LowerName>,
    /// A and AAAA data of `ns_addrs`.
    pub ns_v4: Vec<RData>,
    pub ns_v6: Vec<RData>,
}

/// The records served at one moment.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub state: State,
    /// The SOA record at the apex (positive answer).
    pub soa: Record,
    /// The SOA record as sent in negative answers (TTL per RFC 2308).
    pub negative_soa: Record,
    pub ns: Vec<Record>,
    /// `issue` and `issuewild`, empty until an account is set.
    pub caa: Vec<Record>,
    pub v4: Vec<RData>,
    pub v6: Vec<RData>,
    /// TXT records by owner name.
    pub txt: HashMap<LowerName, Vec<Record>>,
}

/// The run-time state, as the API shows it.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub serial: u32,
    pub gateway_addrs: Vec<IpAddr>,
    /// Keyed by the lowercase record name without the trailing dot.
    pub acme: BTreeMap<String, Vec<String>>,
    pub caa_account: Option<String>,
}

/// Where a name sits in the zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Not the base domain nor below it.
    Outside,
    /// The base domain itself.
    Apex,
    /// `_acme-challenge.<host>`, where `<host>` is the apex or a host name below it.
    Challenge,
    /// A name with an underscore label (a service or attribute name, RFC 8552) that is not a
    /// challenge name: no wildcard covers it, so it does not exist.
    Absent,
    /// Any other name below the apex: the wildcard `*.<base>` covers it.
    Host,
    /// One of the zone's own name-server names, when `ns_addrs` gives its addresses.
    NameServer,
}

impl Fixed {
    pub(crate) fn from_config(cfg: &config::DnsConfig) -> Result<Fixed, ZoneError> {
        let name = |text: &str| -> Result<Name, ZoneError> {
            let mut n = Name::from_ascii(text).map_err(|e| ZoneError::Config {
                what: text.to_owned(),
                reason: e.to_string(),
            })?;
            n.set_fqdn(true);
            Ok(n.to_lowercase())
        };
        let origin = name(cfg.base_domain.as_str())?;
        let ns = cfg
            .ns_names
            .iter()
            .map(|n| name(n.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        let mname = match &cfg.soa.mname {
            Some(m) => name(m.as_str())?,
            None => ns.first().cloned().unwrap_or_else(|| origin.clone()),
        };
        let rname = match &cfg.soa.rname {
            Some(r) => name(r.as_str())?,
            None => name(&format!("hostmaster.{}", cfg.base_domain))?,
        };
        // The config bounds the timers to 31 bits, so the casts keep their values.
        let timer = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        let soa = SOA::new(
            mname,
            rname,
            cfg.soa.serial,
            timer(cfg.soa.refresh),
            timer(cfg.soa.retry),
            timer(cfg.soa.expire),
            cfg.soa.minimum,
        );
        let origin_lower = LowerName::new(&origin);
        let ns_hosts = if cfg.ns_addrs.is_empty() {
            Vec::new()
        } else {
            ns.iter()
                .map(LowerName::new)
                .filter(|n| origin_lower.zone_of(n) && *n != origin_lower)
                .collect()
        };
        let (ns_v4, ns_v6) = split_addrs(&cfg.ns_addrs);
        Ok(Fixed {
            origin_lower,
            origin,
            ttl: cfg.ttl_secs,
            soa,
            ns,
            caa_issuer: cfg.caa_issuer.as_str().to_owned(),
            ns_hosts,
            ns_v4,
            ns_v6,
        })
    }

    /// Where `name` sits.
    pub(crate) fn place(&self, name: &LowerName) -> Place {
        if !self.origin_lower.zone_of(name) {
            return Place::Outside;
        }
        let below = usize::from(name.num_labels()) - usize::from(self.origin.num_labels());
        if below == 0 {
            return Place::Apex;
        }
        if self.ns_hosts.contains(name) {
            return Place::NameServer;
        }
        let mut labels = name.iter().take(below);
        let first = labels.next().unwrap_or_default();
        let rest_underscored = labels.any(|l| l.first() == Some(&b'_'));
        if rest_underscored {
            Place::Absent
        } else if first.eq_ignore_ascii_case(ACME_CHALLENGE_LABEL.as_bytes()) {
            Place::Challenge
        } else if first.first() == Some(&b'_') {
            Place::Absent
        } else {
            Place::Host
        }
    }

    fn snapshot(&self, state: State) -> Snapshot {
        let mut soa_data = self.soa.clone();
        soa_data.serial = state.serial;
        let soa = Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(soa_data.clone()));
        // RFC 2308 section 3: a negative answer's SOA carries the lesser of its TTL and the
        // SOA minimum, which resolvers use as the negative-caching time.
        let negative_soa = Record::from_rdata(
            self.origin.clone(),
            self.ttl.min(self.soa.minimum),
            RData::SOA(soa_data),
        );
        let ns = self
            .ns
            .iter()
            .map(|n| Record::from_rdata(self.origin.clone(), self.ttl, RData::NS(NS(n.clone()))))
            .collect();
        let caa = match &state.caa_account {
            None => Vec::new(),
            Some(uri) => {
                let value = caa_value(&self.caa_issuer, uri);
                [
                    CAA::new_issue(false, None, Vec::new()),
                    CAA::new_issuewild(false, None, Vec::new()),
                ]
                .into_iter()
                .map(|mut c| {
                    c.value = value.clone();
                    Record::from_rdata(self.origin.clone(), self.ttl, RData::CAA(c))
                })
                .collect()
            }
        };
        let (v4, v6) = split_addrs(&state.gateway_addrs);
        let txt = state
            .acme
            .iter()
            .filter_map(|(owner, values)| {
                let mut name = Name::from_ascii(owner).ok()?;
                name.set_fqdn(true);
                // Challenge values are short-lived: a small TTL keeps a retried order from
                // meeting a stale cached value.
                let ttl = self.ttl.min(60);
                let records = values
                    .iter()
                    .map(|v| {
                        Record::from_rdata(name.clone(), ttl, RData::TXT(TXT::new(vec![v.clone()])))
                    })
                    .collect();
                Some((LowerName::new(&name), records))
            })
            .collect();
        Snapshot {
            state,
            soa,
            negative_soa,
            ns,
            caa,
            v4,
            v6,
            txt,
        }
    }

    /// A challenge record name, checked and normalised (lowercase, no trailing dot).
    fn challenge_name(&self, record_name: &str) -> Result<String, ZoneError> {
        let bad = |reason: &str| ZoneError::ChallengeName {
            name: record_name.to_owned(),
            reason: reason.to_owned(),
        };
        let text = record_name.strip_suffix('.').unwrap_or(record_name);
        if text.is_empty() || text.len() > 253 {
            return Err(bad("must be 1 to 253 characters"));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
        }
        let lower = text.to_ascii_lowercase();
        let mut name = Name::from_ascii(&lower).map_err(|e| bad(&e.to_string()))?;
        name.set_fqdn(true);
        match self.place(&LowerName::new(&name)) {
            Place::Challenge => Ok(lower),
            Place::Outside => Err(bad(&format!(
                "is not in the zone {}",
                self.origin.to_ascii().trim_end_matches('.')
            ))),
            _ => Err(bad(&format!(
                "must be {ACME_CHALLENGE_LABEL}.<domain> for a host name in the zone"
            ))),
        }
    }
}

/// `<issuer>; accounturi=<uri>; validationmethods=dns-01` (RFC 8659 section 4.2, RFC 8657).
fn caa_value(issuer: &str, account_uri: &str) -> Vec<u8> {
    format!("{issuer}; accounturi={account_uri}; validationmethods=dns-01").into_bytes()
}

/// A and AAAA record data for a list of addresses.
fn split_addrs(addrs: &[IpAddr]) -> (Vec<RData>, Vec<RData>) {
    let v4 = addrs
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(RData::A(A(*v4))),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6 = addrs
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(v6) => Some(RData::AAAA(AAAA(*v6))),
            IpAddr::V4(_) => None,
        })
        .collect();
    (v4, v6)
}

/// The zone, shared by the DNS listeners, the record API and in-process callers. Cheap to
/// clone; every clone sees and makes the same changes.
#[derive(Clone, Debug)]
pub struct ZoneHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fixed: Fixed,
    current: RwLock<Arc<Snapshot>>,
}

impl ZoneHandle {
    /// The zone for `cfg`, with its gateway addresses and CAA account (if any) from the config.
    pub fn from_config(cfg: &config::DnsConfig) -> Result<ZoneHandle, ZoneError> {
        let fixed = Fixed::from_config(cfg)?;
        check_addrs(&cfg.gateway_addrs)?;
        let caa_account = cfg
            .caa_account_uri
            .as_ref()
            .map(|u| check_account_uri(u.as_str()))
            .transpose()?;
        let state = State {
            serial: cfg.soa.serial,
            gateway_addrs: cfg.gateway_addrs.clone(),
            acme: BTreeMap::new(),
            caa_account,
        };
        let snapshot = Arc::new(fixed.snapshot(state));
        Ok(ZoneHandle {
            inner: Arc::new(Inner {
                fixed,
                current: RwLock::new(snapshot),
            }),
        })
    }

    pub(crate) fn fixed(&self) -> &Fixed {
        &self.inner.fixed
    }

    /// The records served now.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        match self.inner.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Applies `change` to a copy of the state and, if it succeeds, bumps the serial and
    /// publishes the copy. A failed change publishes nothing.
    fn update<R>(
        &self,
        change: impl FnOnce(&mut State) -> Result<R, ZoneError>,
    ) -> Result<R, ZoneError> {
        let mut guard = match self.inner.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut state = guard.state.clone();
        let out = change(&mut state)?;
        state.serial = state.serial.wrapping_add(1);
        *guard = Arc::new(self.inner.fixed.snapshot(state));
        Ok(out)
    }

    /// Replaces the addresses `<base>` and `*.<base>` answer (A for IPv4, AAAA for IPv6).
    /// An empty list makes those names answer NODATA.
    pub fn set_gateway_addrs(&self, addrs: Vec<IpAddr>) -> Result<(), ZoneError> {
        check_addrs(&addrs)?;
        let mut addrs = addrs;
        addrs.dedup();
        tracing::info!(?addrs, "gateway addresses set");
        self.update(|s| {
            s.gateway_addrs = addrs;
            Ok(())
        })
    }

    /// Sets the TXT values of the challenge record `record_name`
    /// (`_acme-challenge.<base>` or `_acme-challenge.<host>.<base>`), replacing any.
    /// An empty list clears the name.
    pub fn set_acme_txt(&self, record_name: &str, values: Vec<String>) -> Result<(), ZoneError> {
        let name = self.inner.fixed.challenge_name(record_name)?;
        if values.is_empty() {
            self.clear_acme_txt(&name)?;
            return Ok(());
        }
        if values.len() > MAX_TXT_VALUES {
            return Err(ZoneError::TxtValues(format!(
                "{} values given, at most {MAX_TXT_VALUES} are allowed",
                values.len()
            )));
        }
        for v in &values {
            if v.is_empty()
                || v.len() > MAX_TXT_VALUE_LEN
                || !v.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(ZoneError::TxtValues(format!(
                    "{v:?} must be 1 to {MAX_TXT_VALUE_LEN} printable ASCII characters without spaces"
                )));
            }
        }
        let count = values.len();
        self.update(|s| {
            if !s.acme.contains_key(&name) && s.acme.len() >= MAX_CHALLENGE_NAMES {
                return Err(ZoneError::TooManyChallenges(MAX_CHALLENGE_NAMES));
            }
            s.acme.insert(name.clone(), values);
            Ok(())
        })?;
        tracing::info!(name, count, "ACME challenge TXT set");
        Ok(())
    }

    /// Removes the TXT values of `record_name`; returns whether it had any.
    pub fn clear_acme_txt(&self, record_name: &str) -> Result<bool, ZoneError> {
        let name = self.inner.fixed.challenge_name(record_name)?;
        if !self.snapshot().state.acme.contains_key(&name) {
            return Ok(false);
        }
        let had = self.update(|s| Ok(s.acme.remove(&name).is_some()))?;
        tracing::info!(name, "ACME challenge TXT cleared");
        Ok(had)
    }

    /// Pins the ACME account in the CAA records at the apex: `issue` and `issuewild`
    /// `"<issuer>; accounturi=<uri>; validationmethods=dns-01"`.
    pub fn set_caa_account(&self, account_uri: &str) -> Result<(), ZoneError> {
        let uri = check_account_uri(account_uri)?;
        tracing::info!(account_uri = uri, "CAA account set");
        self.update(|s| {
            s.caa_account = Some(uri);
            Ok(())
        })
    }

    /// Removes the CAA records (any CA may then issue, as without CAA).
    pub fn clear_caa_account(&self) {
        tracing::info!("CAA account cleared");
        let cleared: Result<(), ZoneError> = self.update(|s| {
            s.caa_account = None;
            Ok(())
        });
        debug_assert!(cleared.is_ok());
    }

    /// The run-time records, as `GET /v1/zone` shows them.
    pub fn view(&self) -> ZoneView {
        let snap = self.snapshot();
        ZoneView {
            base_domain: self.base_domain(),
            serial: snap.state.serial,
            gateway_addrs: snap.state.gateway_addrs.clone(),
            acme_challenges: snap.state.acme.clone(),
            caa_account_uri: snap.state.caa_account.clone(),
            caa_issuer: self.inner.fixed.caa_issuer.clone(),
        }
    }

    /// The apex, without the trailing dot.
    pub fn base_domain(&self) -> String {
        self.inner
            .fixed
            .origin
            .to_ascii()
            .trim_end_matches('.')
            .to_owned()
    }
}

fn check_addrs(addrs: &[IpAddr]) -> Result<(), ZoneError> {
    if addrs.len() > MAX_GATEWAY_ADDRS {
        return Err(ZoneError::GatewayAddrs(format!(
            "{} addresses given, at most {MAX_GATEWAY_ADDRS} are allowed",
            addrs.len()
        )));
    }
    if let Some(ip) = addrs
        .iter()
        .find(|ip| ip.is_unspecified() || ip.is_multicast())
    {
        return Err(ZoneError::GatewayAddrs(format!(
            "{ip} is not a usable host address"
        )));
    }
    Ok(())
}

/// An account URI must be `https://` and fit a CAA value (RFC 8659: no spaces, no `;`).
fn check_account_uri(uri: &str) -> Result<String, ZoneError> {
    let bad = |reason: &str| ZoneError::AccountUri {
        uri: uri.chars().take(80).collect(),
        reason: reason.to_owned(),
    };
    if uri.len() > MAX_ACCOUNT_URI_LEN {
        return Err(bad(&format!("longer than {MAX_ACCOUNT_URI_LEN} bytes")));
    }
    let Some(rest) = uri.strip_prefix("https://") else {
        return Err(bad("must start with https://"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("names no host"));
    }
    if !uri.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b';') {
        return Err(bad("only printable ASCII without spaces or ';' is allowed"));
    }
    Ok(uri.to_owned())
}

#[async_trait::async_trait]
impl crate::api::AcmeDnsClient for ZoneHandle {
    async fn set_txt(&self, record_name: &str, values: Vec<String>) -> Result<(), ClientError> {
        self.set_acme_txt(record_name, values)
            .map_err(|e| ClientError::Rejected(e.to_string()))
    }

    async fn clear_txt(&self, record_name: &str) -> Result<(), ClientError> {
        self.clear_acme_txt(record_name)
            .map(drop)
            .map_err(|e| ClientError::Rejected(e.to_string()))
    }

    async fn set_caa_account(&self, account_uri: &str) -> Result<(), ClientError> {
        ZoneHandle::set_caa_account(self, account_uri)
            .map_err(|e| ClientError::Rejected(e.to_string()))
    }
}
