//! Recently refused registrations, kept so the attestation page can show which link of an
//! instance's chain of trust broke. Bounded, and keyed by certificate fingerprint so a
//! sidecar retrying the same certificate takes one slot. Entries are filed under the app
//! id the certificate claims: a claim, never a fact, and labelled so on the page.

use std::collections::VecDeque;
use std::sync::Mutex;

use ratls::{AppId, Fingerprint, InstanceId};

/// How many refused certificates are remembered.
pub const MAX_REFUSED: usize = 32;

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
    pub fn record(&self, chain: Vec<Vec<u8>>, error: String, now: u64) {
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
        if entries.len() >= MAX_REFUSED {
            entries.pop_back();
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
        log.record(vec![b"junk".to_vec()], "bad".into(), 1);
        log.record(vec![], "none".into(), 1);
        assert!(log.recent().is_empty());
    }

    fn ratls_cert(app: u8) -> Vec<u8> {
        use ratls::cert::{issue, CertProfile, Identity};
        use ratls::provider::{Measurer, SimulatedProvider};
        let id = Identity {
            app_id: AppId([app; 20]),
            compose_hash: ratls::ComposeHash([app; 32]),
            instance_id: InstanceId([app; 20]),
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
        log.record(vec![a.clone()], "first".into(), 10);
        log.record(vec![ratls_cert(2)], "other".into(), 11);
        log.record(vec![a], "again".into(), 12);
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
            log.record(vec![ratls_cert(i)], "x".into(), 20);
        }
        assert_eq!(log.recent().len(), MAX_REFUSED);
    }
}
