//! The host-name grammar: `<app-id>[-<port>][s|g].<base>` and its labels.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(host) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(norm) = gateway::names::normalize_host(host) {
        let _ = gateway::names::parse(&norm, "apps.example.com");
    }
    let _ = gateway::names::parse(host, "apps.example.com");
    let _ = gateway::names::parse_label(host);
});
