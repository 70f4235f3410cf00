//! The gateway's registration body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<gateway::api::RegisterRequest>(data);
});
