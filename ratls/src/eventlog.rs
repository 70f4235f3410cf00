//! The RTMR3 runtime event log: named events with payloads, each extended into RTMR3 as
//! `SHA-384(name ":" payload)`. Replaying the log must reproduce the quoted RTMR3 exactly;
//! only then are the payloads (compose hash, app id, instance id, …) believed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use crate::types::Measurement;

/// Event names teegate's boot flow records, in this order.
pub mod names {
    pub const COMPOSE_HASH: &str = "compose-hash";
    pub const APP_ID: &str = "app-id";
    pub const INSTANCE_ID: &str = "instance-id";
    pub const KEY_PROVIDER: &str = "key-provider";
    /// One per service, before its container starts: `<service>@sha256:<content id>`.
    pub const IMAGE: &str = "image";
    /// How the app's volumes are stored (`gocryptfs …` or `none: …`).
    pub const STORAGE: &str = "storage";
    /// Names only the boot flow records; an app emitting one is refused, so nothing can
    /// forge a second compose hash, image or storage kind.
    pub const RESERVED: &[&str] = &[
        COMPOSE_HASH,
        APP_ID,
        INSTANCE_ID,
        KEY_PROVIDER,
        IMAGE,
        STORAGE,
    ];
}

pub const MAX_EVENTS: usize = 1024;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_PAYLOAD_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventLogError {
    #[error("event name {0:?} must be 1-64 characters of a-z, 0-9, '.', '_' or '-'")]
    BadName(String),
    #[error("event {name:?} payload is {len} bytes, over the {MAX_PAYLOAD_LEN}-byte limit")]
    PayloadTooLarge { name: String, len: usize },
    #[error("event log holds more than {MAX_EVENTS} events")]
    TooManyEvents,
}

/// One RTMR3 event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub name: String,
    #[serde(with = "crate::hexser")]
    pub payload: Vec<u8>,
}

impl Event {
    pub fn new(name: &str, payload: impl Into<Vec<u8>>) -> Result<Self, EventLogError> {
        let e = Self {
            name: name.to_string(),
            payload: payload.into(),
        };
        e.validate()?;
        Ok(e)
    }

    fn validate(&self) -> Result<(), EventLogError> {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN || !self.name.chars().all(ok_char)
        {
            return Err(EventLogError::BadName(self.name.chars().take(80).collect()));
        }
        if self.payload.len() > MAX_PAYLOAD_LEN {
            return Err(EventLogError::PayloadTooLarge {
                name: self.name.clone(),
                len: self.payload.len(),
            });
        }
        Ok(())
    }

    /// The value extended into RTMR3. Names cannot contain ':', so the encoding is unambiguous.
    pub fn digest(&self) -> Measurement {
        let mut h = Sha384::new();
        h.update(self.name.as_bytes());
        h.update(b":");
        h.update(&self.payload);
        Measurement(h.finalize().into())
    }
}

/// `RTMR_new = SHA-384(RTMR_old || digest)`, as the TDX module extends.
pub fn extend(rtmr: &Measurement, digest: &Measurement) -> Measurement {
    let mut h = Sha384::new();
    h.update(rtmr.0);
    h.update(digest.0);
    Measurement(h.finalize().into())
}

/// The ordered RTMR3 event log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventLog {
    events: Vec<Event>,
}

/// One replay step: the event and RTMR3 after it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayStep<'a> {
    pub event: &'a Event,
    pub digest: Measurement,
    pub rtmr3: Measurement,
}

impl EventLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks every event and the length; use after deserialising untrusted input.
    pub fn validate(&self) -> Result<(), EventLogError> {
        if self.events.len() > MAX_EVENTS {
            return Err(EventLogError::TooManyEvents);
        }
        self.events.iter().try_for_each(Event::validate)
    }

    pub fn push(&mut self, event: Event) -> Result<(), EventLogError> {
        event.validate()?;
        if self.events.len() >= MAX_EVENTS {
            return Err(EventLogError::TooManyEvents);
        }
        self.events.push(event);
        Ok(())
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The payloads of every event with this name, in order.
    pub fn payloads<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.events
            .iter()
            .filter(move |e| e.name == name)
            .map(|e| e.payload.as_slice())
    }

    /// RTMR3 after replaying every event from zero, recomputing each digest.
    pub fn replay(&self) -> Measurement {
        self.events
            .iter()
            .fold(Measurement::ZERO, |acc, e| extend(&acc, &e.digest()))
    }

    /// Every intermediate value of the replay, for display.
    pub fn replay_steps(&self) -> Vec<ReplayStep<'_>> {
        let mut acc = Measurement::ZERO;
        self.events
            .iter()
            .map(|event| {
                let digest = event.digest();
                acc = extend(&acc, &digest);
                ReplayStep {
                    event,
                    digest,
                    rtmr3: acc,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_log() -> EventLog {
        let mut log = EventLog::new();
        log.push(Event::new(names::COMPOSE_HASH, vec![1; 32]).unwrap())
            .unwrap();
        log.push(Event::new(names::APP_ID, vec![2; 20]).unwrap())
            .unwrap();
        log
    }

    #[test]
    fn replay_matches_manual_extension() {
        let log = boot_log();
        let mut rtmr = Measurement::ZERO;
        for e in log.events() {
            let mut h = Sha384::new();
            h.update(e.name.as_bytes());
            h.update(b":");
            h.update(&e.payload);
            let d: [u8; 48] = h.finalize().into();
            let mut h = Sha384::new();
            h.update(rtmr.0);
            h.update(d);
            rtmr = Measurement(h.finalize().into());
        }
        assert_eq!(log.replay(), rtmr);
        assert_eq!(log.replay_steps().last().unwrap().rtmr3, rtmr);
    }

    #[test]
    fn order_and_payload_change_the_result() {
        let log = boot_log();
        let mut swapped = EventLog::new();
        for e in log.events().iter().rev() {
            swapped.push(e.clone()).unwrap();
        }
        assert_ne!(log.replay(), swapped.replay());
        let mut tampered = log.clone();
        tampered.events[0].payload[0] ^= 1;
        assert_ne!(log.replay(), tampered.replay());
    }

    #[test]
    fn rejects_bad_names_and_oversize_payloads() {
        assert!(Event::new("app:id", vec![]).is_err());
        assert!(Event::new("", vec![]).is_err());
        assert!(Event::new("Upper", vec![]).is_err());
        assert!(Event::new("ok", vec![0; MAX_PAYLOAD_LEN + 1]).is_err());
    }

    #[test]
    fn json_roundtrip_uses_hex_payloads() {
        let log = boot_log();
        let json = serde_json::to_string(&log).unwrap();
        assert!(json.contains(&"01".repeat(32)));
        assert_eq!(serde_json::from_str::<EventLog>(&json).unwrap(), log);
    }
}
