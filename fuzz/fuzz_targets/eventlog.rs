//! Event-log decoding (JSON, as saved and served) and replay.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = serde_json::from_slice::<ratls::eventlog::EventLog>(data) {
        let _ = log.validate();
        let _ = log.replay();
        let _ = log.payloads("compose-hash").count();
    }
});
