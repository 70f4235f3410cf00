//! The RTMR3 runtime event log: named events with payloads, in dstack's V1 runtime-event
//! form so dstack's SDKs and verifier replay the same RTMR3 as ours: each event is extended
//! into RTMR3 as `SHA-384(0x08000001 as u32 LE ‖ ":" ‖ name ‖ ":" ‖ payload)`, from 48 zero
//! bytes, `mr = SHA-384(mr ‖ digest)`. On the wire (JSON and CBOR) an event is dstack's entry
//! `{imr, event_type, digest, event, event_payload}` (hex for bytes). Replaying the log must
//! reproduce the quoted RTMR3 exactly; only then are the payloads (compose hash, app id,
//! instance id, …) believed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use crate::types::Measurement;

/// dstack's event type for runtime events (not a TCG-defined type).
pub const DSTACK_RUNTIME_EVENT_TYPE: u32 = 0x0800_0001;
/// Runtime events go to RTMR3 (the SDK's `imr` index).
pub const RTMR3_IMR: u32 = 3;

/// Event names teegate's boot flow records, in this order. They are dstack's names for the
/// same meanings (dstack-util's `measure_app_info` / `verify_app`), so dstack tools that look
/// events up by name find ours.
pub mod names {
    pub const COMPOSE_HASH: &str = "compose-hash";
    pub const APP_ID: &str = "app-id";
    pub const INSTANCE_ID: &str = "instance-id";
    pub const KEY_PROVIDER: &str = "key-provider";
    /// One per service, before its container starts: `<service>@sha256:<content id>`.
    pub const IMAGE: &str = "image";
    /// How the app's volumes are stored (`gocryptfs …` or `none: …`).
    pub const STORAGE: &str = "storage";

    /// Every name a boot flow (teegate's or dstack's) records, so that no container can
    /// emit one and make a verifier read a forged second value: ours (the compose, its
    /// images and storage) and dstack's other boot events.
    pub const RESERVED: &[&str] = &[
        COMPOSE_HASH,
        APP_ID,
        INSTANCE_ID,
        KEY_PROVIDER,
        IMAGE,
        STORAGE,
        "system-preparing",
        "init-script-hash",
        "boot-mr-done",
        "storage-fs",
        "system-ready",
        "os-image-hash",
        "gpu-policy-hash",
        "gpu-attestation",
    ];

    /// The `key-provider` payload as dstack writes it: `{"name": "kms", "id": "<hex>"}`
    /// (`name` is `kms` or `none`; `id` names the provider's key when the booting CVM knows
    /// it, empty otherwise).
    pub fn key_provider_payload(name: &str, id: &str) -> Vec<u8> {
        serde_json::json!({ "name": name, "id": id })
            .to_string()
            .into_bytes()
    }

    /// Whether `name` belongs to the boot flow (see [`RESERVED`]).
    pub fn is_reserved(name: &str) -> bool {
        RESERVED.contains(&name)
    }
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
    #[error("event {name:?}: imr {imr} / event_type {event_type:#x} is not a dstack runtime event (imr 3, event_type 0x08000001)")]
    NotRuntimeEvent {
        name: String,
        imr: u32,
        event_type: u32,
    },
    #[error("event {name:?}: digest {found} is not the event's digest {expected}")]
    // Boxed: this error travels inside provider and issue errors, which stay small.
    DigestMismatch {
        name: String,
        expected: Box<Measurement>,
        found: Box<Measurement>,
    },
}

/// One RTMR3 event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireEvent", into = "WireEvent")]
pub struct Event {
    pub name: String,
    pub payload: Vec<u8>,
}

/// dstack's JSON entry for an event, as the SDK's `EventLog` model reads it.
#[derive(Serialize, Deserialize)]
struct WireEvent {
    imr: u32,
    event_type: u32,
    digest: Measurement,
    event: String,
    #[serde(with = "crate::hexser")]
    event_payload: Vec<u8>,
}

impl From<Event> for WireEvent {
    fn from(e: Event) -> Self {
        Self {
            imr: RTMR3_IMR,
            event_type: DSTACK_RUNTIME_EVENT_TYPE,
            digest: e.digest(),
            event: e.name,
            event_payload: e.payload,
        }
    }
}

impl TryFrom<WireEvent> for Event {
    type Error = EventLogError;

    /// Refuses entries that are not RTMR3 runtime events, and entries whose stated digest
    /// is not their content's: a reader shown the digest must be able to trust it matches.
    fn try_from(w: WireEvent) -> Result<Self, EventLogError> {
        if w.imr != RTMR3_IMR || w.event_type != DSTACK_RUNTIME_EVENT_TYPE {
            return Err(EventLogError::NotRuntimeEvent {
                name: w.event.chars().take(80).collect(),
                imr: w.imr,
                event_type: w.event_type,
            });
        }
        let e = Event::new(&w.event, w.event_payload)?;
        let expected = e.digest();
        if expected != w.digest {
            return Err(EventLogError::DigestMismatch {
                name: e.name,
                expected: Box::new(expected),
                found: Box::new(w.digest),
            });
        }
        Ok(e)
    }
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

    /// The value extended into RTMR3 (dstack's V1 runtime-event digest). Names cannot
    /// contain ':', so the encoding is unambiguous.
    pub fn digest(&self) -> Measurement {
        let mut h = Sha384::new();
        h.update(DSTACK_RUNTIME_EVENT_TYPE.to_le_bytes());
        h.update(b":");
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

    /// Known answers computed apart from this code (Python hashlib, as dstack-sdk's
    /// `replay_rtmr` does): dstack's V1 digest and the replay from 48 zero bytes.
    #[test]
    fn digests_and_replay_match_dstack_v1_known_answers() {
        let log = boot_log();
        let steps = log.replay_steps();
        assert_eq!(
            steps[0].digest.to_hex(),
            "7d4757031d553d5909fc8f62f33a778c2221b1e7175ed3cb6f5eef23cd13b16925b0300b4f9685c31fc4ec4c781e74aa"
        );
        assert_eq!(
            steps[1].digest.to_hex(),
            "83e7db32bf808503d7ef329e4ee6ab8a8b7d23e65d262ebf259b837d9819f169ca75ad6cf5512e2bf9d30fe01da39f98"
        );
        let rtmr3 = "454cb0910e2a17b54f592a318a3c58e23f4e7e7daa281e87ceeb65423a91d6d285768fa670205c5e72d386eff36f5803";
        assert_eq!(log.replay().to_hex(), rtmr3);
        assert_eq!(steps[1].rtmr3.to_hex(), rtmr3);
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
    fn json_is_dstacks_event_log_entries() {
        let log = boot_log();
        let json = serde_json::to_value(&log).unwrap();
        let first = &json[0];
        assert_eq!(first["imr"], 3);
        assert_eq!(first["event_type"], 134_217_729);
        assert_eq!(first["event"], "compose-hash");
        assert_eq!(first["event_payload"], "01".repeat(32));
        assert_eq!(first["digest"], log.events()[0].digest().to_hex());
        assert_eq!(first.as_object().unwrap().len(), 5);
        assert_eq!(serde_json::from_value::<EventLog>(json).unwrap(), log);
        // CBOR (the certificate claims) carries the same entries.
        let mut cbor = Vec::new();
        ciborium::into_writer(&log, &mut cbor).unwrap();
        assert_eq!(
            ciborium::from_reader::<EventLog, _>(&cbor[..]).unwrap(),
            log
        );
    }

    #[test]
    fn refuses_entries_whose_digest_or_register_is_not_theirs() {
        let mut json = serde_json::to_value(boot_log()).unwrap();
        json[1]["event_payload"] = "03".repeat(20).into();
        let err = serde_json::from_value::<EventLog>(json).unwrap_err();
        assert!(
            err.to_string().contains("is not the event's digest"),
            "{err}"
        );
        for (field, value) in [("imr", 2), ("event_type", 1)] {
            let mut json = serde_json::to_value(boot_log()).unwrap();
            json[0][field] = value.into();
            let err = serde_json::from_value::<EventLog>(json).unwrap_err();
            assert!(
                err.to_string().contains("not a dstack runtime event"),
                "{err}"
            );
        }
    }

    #[test]
    fn refuses_the_pre_dstack_format() {
        let old = format!(
            r#"[{{"name":"compose-hash","payload":"{}"}}]"#,
            "01".repeat(32)
        );
        assert!(serde_json::from_str::<EventLog>(&old).is_err());
    }

    #[test]
    fn boot_names_are_reserved() {
        for n in [
            names::COMPOSE_HASH,
            names::APP_ID,
            names::INSTANCE_ID,
            names::KEY_PROVIDER,
            "boot-mr-done",
            "system-ready",
        ] {
            assert!(names::is_reserved(n), "{n}");
        }
        assert!(!names::is_reserved("app-started"));
    }
}
