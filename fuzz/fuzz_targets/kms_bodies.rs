//! KMS request bodies and the answers a sidecar parses.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<kms::api::AppKeysRequest>(data) {
        for p in &r.paths {
            let _ = kms::derive::check_path(p);
        }
    }
    let _ = serde_json::from_slice::<kms::api::AppKeysResponse>(data);
});
