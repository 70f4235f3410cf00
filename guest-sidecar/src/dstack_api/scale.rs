//! dstack's `VersionedAttestation`, as its `Attest` method returns it: the legacy SCALE
//! wire form (`V0`), which dstack's guest agent writes for TDX whenever every runtime event
//! is a V1 event (teegate's always are), and which every dstack verifier decodes.
//!
//! ```text
//! VersionedAttestation::V0          0x00
//!  Attestation
//!   quote: AttestationQuote::DstackTdx   0x00
//!    TdxQuote { quote: Vec<u8>, event_log: Vec<TdxEvent> }
//!     TdxEvent { imr: u32, event_type: u32, digest: Vec<u8>, event: String, event_payload: Vec<u8> }
//!   runtime_events: Vec<RuntimeEvent { event: String, payload: Vec<u8> }>
//!   report_data: [u8; 64]
//!   config: String                    (dstack's vm_config JSON)
//! ```
//!
//! SCALE: integers little-endian, `Vec`/`String` as a compact length then the items, enum
//! variants as one index byte, fixed arrays raw. The event log carries RTMR3's runtime events
//! only (teegate reads no firmware CCEL), so `event_log` and `runtime_events` hold the same
//! events, as in dstack for RTMR3.

use ratls::eventlog::{EventLog, DSTACK_RUNTIME_EVENT_TYPE, RTMR3_IMR};
use ratls::ReportData;

/// `VersionedAttestation::V0`, the legacy SCALE form.
const VERSION_V0: u8 = 0;
/// `AttestationQuote::DstackTdx`.
const QUOTE_DSTACK_TDX: u8 = 0;

/// Appends SCALE's compact encoding of `n` (a length here).
fn compact(out: &mut Vec<u8>, n: usize) {
    let n = n as u64;
    if n < 1 << 6 {
        out.push((n as u8) << 2);
    } else if n < 1 << 14 {
        out.extend_from_slice(&(((n as u16) << 2) | 0b01).to_le_bytes());
    } else if n < 1 << 30 {
        out.extend_from_slice(&(((n as u32) << 2) | 0b10).to_le_bytes());
    } else {
        let bytes = n.to_le_bytes();
        let len = 8 - (n.leading_zeros() as usize / 8);
        out.push((((len - 4) as u8) << 2) | 0b11);
        out.extend_from_slice(&bytes[..len]);
    }
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    compact(out, b.len());
    out.extend_from_slice(b);
}

/// One `TdxEvent` as dstack encodes it.
struct TdxEventRef<'a> {
    imr: u32,
    event_type: u32,
    digest: &'a [u8],
    event: &'a str,
    payload: &'a [u8],
}

fn encode_parts(
    quote: &[u8],
    event_log: &[TdxEventRef<'_>],
    runtime_events: &[(&str, &[u8])],
    report_data: &[u8; 64],
    config: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(quote.len() + 256 * event_log.len() + 128);
    out.push(VERSION_V0);
    out.push(QUOTE_DSTACK_TDX);
    bytes(&mut out, quote);
    compact(&mut out, event_log.len());
    for e in event_log {
        out.extend_from_slice(&e.imr.to_le_bytes());
        out.extend_from_slice(&e.event_type.to_le_bytes());
        bytes(&mut out, e.digest);
        bytes(&mut out, e.event.as_bytes());
        bytes(&mut out, e.payload);
    }
    compact(&mut out, runtime_events.len());
    for (name, payload) in runtime_events {
        bytes(&mut out, name.as_bytes());
        bytes(&mut out, payload);
    }
    out.extend_from_slice(report_data);
    bytes(&mut out, config.as_bytes());
    out
}

/// Encodes an attestation of a TDX `quote` whose RTMR3 the `log` replays to; `config` is
/// the vm_config JSON dstack puts there.
pub fn encode(quote: &[u8], log: &EventLog, report_data: &ReportData, config: &str) -> Vec<u8> {
    let digests: Vec<_> = log.events().iter().map(|e| e.digest()).collect();
    let tdx: Vec<TdxEventRef<'_>> = log
        .events()
        .iter()
        .zip(&digests)
        .map(|(e, d)| TdxEventRef {
            imr: RTMR3_IMR,
            event_type: DSTACK_RUNTIME_EVENT_TYPE,
            digest: &d.0,
            event: &e.name,
            payload: &e.payload,
        })
        .collect();
    let runtime: Vec<(&str, &[u8])> = log
        .events()
        .iter()
        .map(|e| (e.name.as_str(), e.payload.as_slice()))
        .collect();
    encode_parts(quote, &tdx, &runtime, &report_data.0, config)
}

/// A decoder, for tests: it reads dstack's own attestations back, which proves the encoder
/// writes the layout dstack writes.
#[cfg(test)]
pub(crate) mod decode {
    #[derive(Debug, PartialEq, Eq)]
    pub struct TdxEvent {
        pub imr: u32,
        pub event_type: u32,
        pub digest: Vec<u8>,
        pub event: String,
        pub event_payload: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Eq)]
    pub struct Attestation {
        pub quote: Vec<u8>,
        pub event_log: Vec<TdxEvent>,
        pub runtime_events: Vec<(String, Vec<u8>)>,
        pub report_data: [u8; 64],
        pub config: String,
    }

    struct Reader<'a>(&'a [u8]);

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], String> {
            if self.0.len() < n {
                return Err(format!("need {n} bytes, {} left", self.0.len()));
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Ok(a)
        }
        fn u8(&mut self) -> Result<u8, String> {
            Ok(self.take(1)?[0])
        }
        fn u32(&mut self) -> Result<u32, String> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        fn compact(&mut self) -> Result<usize, String> {
            let first = self.u8()?;
            let v = match first & 0b11 {
                0 => u64::from(first >> 2),
                1 => u64::from(u16::from_le_bytes([first, self.u8()?]) >> 2),
                2 => {
                    let b = self.take(3)?;
                    u64::from(u32::from_le_bytes([first, b[0], b[1], b[2]]) >> 2)
                }
                _ => {
                    let len = usize::from(first >> 2) + 4;
                    let mut buf = [0u8; 8];
                    buf[..len].copy_from_slice(self.take(len)?);
                    u64::from_le_bytes(buf)
                }
            };
            usize::try_from(v).map_err(|e| e.to_string())
        }
        fn bytes(&mut self) -> Result<Vec<u8>, String> {
            let n = self.compact()?;
            Ok(self.take(n)?.to_vec())
        }
        fn string(&mut self) -> Result<String, String> {
            String::from_utf8(self.bytes()?).map_err(|e| e.to_string())
        }
    }

    pub fn attestation(input: &[u8]) -> Result<Attestation, String> {
        let mut r = Reader(input);
        if r.u8()? != super::VERSION_V0 || r.u8()? != super::QUOTE_DSTACK_TDX {
            return Err("not a V0 DstackTdx attestation".into());
        }
        let quote = r.bytes()?;
        let mut event_log = Vec::new();
        for _ in 0..r.compact()? {
            event_log.push(TdxEvent {
                imr: r.u32()?,
                event_type: r.u32()?,
                digest: r.bytes()?,
                event: r.string()?,
                event_payload: r.bytes()?,
            });
        }
        let mut runtime_events = Vec::new();
        for _ in 0..r.compact()? {
            runtime_events.push((r.string()?, r.bytes()?));
        }
        let mut report_data = [0u8; 64];
        report_data.copy_from_slice(r.take(64)?);
        let config = r.string()?;
        if !r.0.is_empty() {
            return Err(format!("{} trailing bytes", r.0.len()));
        }
        Ok(Attestation {
            quote,
            event_log,
            runtime_events,
            report_data,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::decode::attestation;
    use super::*;
    use ratls::eventlog::Event;

    /// An attestation dstack's guest agent wrote (its `guest-agent/fixtures/attestation.bin`,
    /// Apache-2.0; see `testdata/README.md`): a real TDX quote and a full boot event log.
    const DSTACK_FIXTURE: &[u8] = include_bytes!("testdata/dstack-attestation-v0.bin");

    #[test]
    fn compact_lengths_use_every_mode() {
        let enc = |n| {
            let mut v = Vec::new();
            compact(&mut v, n);
            v
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(63), [0xfc]);
        assert_eq!(enc(64), [0x01, 0x01]);
        assert_eq!(enc(5010), [0x49, 0x4e]);
        assert_eq!(enc(16_383), [0xfd, 0xff]);
        assert_eq!(enc(16_384), [0x02, 0x00, 0x01, 0x00]);
        assert_eq!(enc(1 << 30), [0x03, 0x00, 0x00, 0x00, 0x40]);
    }

    #[test]
    fn reads_dstacks_own_attestation_and_writes_it_back_byte_for_byte() {
        let a = attestation(DSTACK_FIXTURE).unwrap();
        assert_eq!(a.quote.len(), 5010);
        assert_eq!(&a.quote[..2], &[4, 0], "a TDX quote v4");
        assert_eq!(
            a.event_log.len(),
            33,
            "firmware (RTMR0-2) and runtime events"
        );
        let names: Vec<&str> = a.runtime_events.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names[1..4], ["app-id", "compose-hash", "instance-id"]);
        let tdx: Vec<TdxEventRef<'_>> = a
            .event_log
            .iter()
            .map(|e| TdxEventRef {
                imr: e.imr,
                event_type: e.event_type,
                digest: &e.digest,
                event: &e.event,
                payload: &e.event_payload,
            })
            .collect();
        let runtime: Vec<(&str, &[u8])> = a
            .runtime_events
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_slice()))
            .collect();
        assert!(
            encode_parts(&a.quote, &tdx, &runtime, &a.report_data, &a.config) == DSTACK_FIXTURE,
            "the encoder writes dstack's bytes"
        );

        // Its RTMR3 events are dstack's V1 runtime events, which teegate's log reproduces
        // (same digests), and `encode` writes them as dstack does.
        let rtmr3: Vec<_> = a.event_log.iter().filter(|e| e.imr == 3).collect();
        let mut log = EventLog::new();
        for (e, (name, payload)) in rtmr3.iter().zip(&a.runtime_events) {
            assert_eq!(e.event_type, DSTACK_RUNTIME_EVENT_TYPE);
            assert_eq!((&e.event, &e.event_payload), (name, payload));
            let ours = Event::new(name, payload.clone()).unwrap();
            assert_eq!(ours.digest().0.as_slice(), e.digest, "digest of {name}");
            log.push(ours).unwrap();
        }
        let ours = encode(&a.quote, &log, &ReportData(a.report_data), &a.config);
        let only_rtmr3: Vec<TdxEventRef<'_>> = tdx.into_iter().filter(|e| e.imr == 3).collect();
        assert!(ours == encode_parts(&a.quote, &only_rtmr3, &runtime, &a.report_data, &a.config));
        let back = attestation(&ours).unwrap();
        assert_eq!(back.event_log.iter().collect::<Vec<_>>(), rtmr3);
        assert_eq!(back.runtime_events, a.runtime_events);
    }

    #[test]
    fn encodes_quote_events_and_report_data_where_dstack_reads_them() {
        let mut log = EventLog::new();
        log.push(Event::new("compose-hash", vec![7; 32]).unwrap())
            .unwrap();
        log.push(Event::new("app-id", vec![8; 20]).unwrap())
            .unwrap();
        let mut rd = [0u8; 64];
        rd[..5].copy_from_slice(b"hello");
        let bytes = encode(&[9; 100], &log, &ReportData(rd), "{}");
        let a = attestation(&bytes).unwrap();
        assert_eq!(a.quote, vec![9; 100]);
        assert_eq!(a.report_data, rd);
        assert_eq!(a.config, "{}");
        assert_eq!(a.event_log.len(), 2);
        assert_eq!(a.event_log[1].imr, 3);
        assert_eq!(a.event_log[1].event, "app-id");
        assert_eq!(a.event_log[1].digest, log.events()[1].digest().0.to_vec());
        assert_eq!(
            a.runtime_events,
            vec![
                ("compose-hash".to_string(), vec![7; 32]),
                ("app-id".to_string(), vec![8; 20])
            ]
        );
    }
}
