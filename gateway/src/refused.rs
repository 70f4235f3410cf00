//! Recently refused registrations, kept so the attestation page can show which link of an
//! instance's chain of trust broke. Bounded, and keyed by certificate fingerprint so a
//! sidecar retrying the same certificate takes one slot. Entries are filed under the app
//! id the certificate claims: a claim, never a fact, and labelled so on the page.
//!
//! Anyone who completes a handshake can be refused, so one source may hold at most
//! [`MAX_PER_SOURCE`] entries and one claimed app at most [`MAX_PER_APP`]: a flood from one
//! address (or one IPv6 /64) only replaces its own entries, and a flood claiming one app
//! cannot push out other apps' refusals.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;

use ratls::{AppId, Fingerprint, InstanceId};

/// How many refused certificates are remembered.
pub const MAX_REFUSED: usize = 32;
/// Most entries one source address (IPv6: one /64) holds.
pub const MAX_PER_SOURCE: usize = 4;
/// Most entries filed under one claimed app.
pub const MAX_PER_APP: usize = 8;

/// The unit one party is assumed to control: an IPv4 address, or an IPv6 /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug, Clone)]
pub struct Refused {
    pub fingerprint: Fingerprint,
    pub claimed_app: AppId,
    pub claimed_instance: InstanceId,
    /// The verification error's text (step and reason).
    pub error: String,
    /// The refused certificate and what the peer presented above it (DER).
    pub chain: Vec<Vec<u8>>,
    pub first_unix: u64,
    pub last_unix: u64,
    pub attempts: u64,
    /// Where the registration came from (IPv6: its /64).
    pub source: IpAddr,
}

#[derive(Default)]
pub struct RefusedLog {
    entries: Mutex<VecDeque<Refused>>,
}

impl RefusedLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers a refusal of `chain` (leaf first). Certificates that do not even carry
    /// teegate claims are not kept: they cannot be filed under an app.
    pub fn record(&self, chain: Vec<Vec<u8>>, error: String, source: IpAddr, now: u64) {
        let source = source_key(source);
        let Some(leaf) = chain.first() else { return };
        let Ok(parsed) = ratls::cert::parse_ratls_cert(leaf) else {
            return;
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = entries
            .iter()
            .position(|e| e.fingerprint == parsed.fingerprint)
        {
            if let Some(mut e) = entries.remove(pos) {
                e.attempts += 1;
                e.last_unix = now;
                e.error = error;
                entries.push_front(e);
            }
            return;
        }
        // Make room: first within this source, then within the claimed app, then the
        // oldest entry of whichever source holds the most.
        let oldest_where =
            |entries: &VecDeque<Refused>, f: &dyn Fn(&Refused) -> bool| entries.iter().rposition(f);
        let of_source = entries.iter().filter(|e| e.source == source).count();
        let of_app = entries
            .iter()
            .filter(|e| e.claimed_app == parsed.claims.app_id)
            .count();
        let victim = if of_source >= MAX_PER_SOURCE {
            oldest_where(&entries, &|e| e.source == source)
        } else if of_app >= MAX_PER_APP {
            oldest_where(&entries, &|e| e.claimed_app == parsed.claims.app_id)
        } else if entries.len() >= MAX_REFUSED {
            let mut counts: std::collections::HashMap<IpAddr, usize> = Default::default();
            for e in entries.iter() {
                *counts.entry(e.source).or_default() += 1;
            }
            let busiest = counts.into_iter().max_by_key(|&(_, n)| n).map(|(ip, _)| ip);
            busiest.and_then(|ip| oldest_where(&entries, &|e| e.source == ip))
        } else {
            None
        };
        if let Some(pos) = victim {
            entries.remove(pos);
        }
        entries.push_front(Refused {
            fingerprint: parsed.fingerprint,
            claimed_app: parsed.claims.app_id,
            claimed_instance: parsed.claims.instance_id,
            error,
            chain,
            first_unix: now,
            last_unix: now,
            attempts: 1,
            source,
        });
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Refused> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().cloned().collect()
    }

    pub fn for_app(&self, app: &AppId) -> Vec<Refused> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|e| e.claimed_app == *app)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_what_is_not_an_ratls_certificate() {
        let log = RefusedLog::new();
        log.record(vec![b"junk".to_vec()], "bad".into(), ip(1), 1);
        log.record(vec![], "none".into(), ip(1), 1);
        assert!(log.recent().is_empty());
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn ratls_cert(app: u8) -> Vec<u8> {
        ratls_cert_for(app, app)
    }

    fn ratls_cert_for(app: u8, inst: u8) -> Vec<u8> {
        use ratls::cert::{issue, CertProfile, Identity};
        use ratls::provider::{Measurer, SimulatedProvider};
        let id = Identity {
            app_id: AppId([app; 20]),
            compose_hash: ratls::ComposeHash([app; 32]),
            instance_id: InstanceId([inst; 20]),
        };
        let m = Measurer::new(std::sync::Arc::new(SimulatedProvider::new()));
        let profile = CertProfile::server_and_client(
            vec!["a.test".into()],
            std::time::Duration::from_secs(60),
        );
        issue(&m, &id, &profile, None).unwrap().cert_der
    }

    #[test]
    fn one_slot_per_certificate_newest_first_and_bounded() {
        let log = RefusedLog::new();
        let a = ratls_cert(1);
        log.record(vec![a.clone()], "first".into(), ip(1), 10);
        log.record(vec![ratls_cert(2)], "other".into(), ip(2), 11);
        log.record(vec![a], "again".into(), ip(1), 12);
        let recent = log.recent();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].claimed_app, AppId([1; 20]));
        assert_eq!(
            (
                recent[0].attempts,
                recent[0].first_unix,
                recent[0].last_unix
            ),
            (2, 10, 12)
        );
        assert_eq!(recent[0].error, "again");
        assert_eq!(log.for_app(&AppId([2; 20])).len(), 1);
        for i in 0..(MAX_REFUSED as u8 + 5) {
            log.record(vec![ratls_cert(i)], "x".into(), ip(100 + i), 20);
        }
        assert_eq!(log.recent().len(), MAX_REFUSED);
    }

    #[test]
    fn a_flood_from_one_source_or_for_one_app_keeps_others_refusals() {
        let log = RefusedLog::new();
        let genuine = ratls_cert(1);
        log.record(vec![genuine.clone()], "genuine".into(), ip(1), 1);
        // One address floods with many certificates claiming many apps.
        for i in 0..40u8 {
            log.record(vec![ratls_cert_for(50 + i, i)], "flood".into(), ip(9), 2);
        }
        let from_flooder = log.recent().iter().filter(|e| e.source == ip(9)).count();
        assert_eq!(from_flooder, MAX_PER_SOURCE);
        assert!(log.recent().iter().any(|e| e.error == "genuine"));
        // Many addresses flood certificates that all claim app 1's neighbour app 2.
        for i in 0..40u8 {
            log.record(
                vec![ratls_cert_for(2, 100 + i)],
                "flood".into(),
                ip(100 + i),
                3,
            );
        }
        let of_app2 = log.for_app(&AppId([2; 20])).len();
        assert_eq!(of_app2, MAX_PER_APP);
        assert_eq!(
            log.for_app(&AppId([1; 20])).len(),
            1,
            "app 1's refusal stays"
        );
        // IPv6 addresses in one /64 count as one source.
        for i in 0..10u16 {
            let v6 = IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, i + 1]);
            log.record(vec![ratls_cert_for(200, i as u8)], "v6".into(), v6, 4);
        }
        assert_eq!(
            log.recent().iter().filter(|e| e.error == "v6").count(),
            MAX_PER_SOURCE
        );
        assert!(log.recent().iter().any(|e| e.error == "genuine"));
    }
}
