//! teegate's guest API after HTTP: the first byte picks the method and path, the rest is
//! the body, answered by `GuestState::answer` with a simulated TD, keys and an app CA (so
//! every endpoint runs to the end). Each input gets a fresh measurer: `/emit-event` would
//! otherwise carry state from one input to the next.
#![no_main]
use std::sync::Arc;

use http::Method;
use libfuzzer_sys::fuzz_target;
use ratls::cert::{CertAuthority, Identity};
use ratls::provider::{Measurer, SimulatedProvider};

const ENDPOINTS: &[(Method, &str)] = &[
    (Method::POST, "/quote"),
    (Method::POST, "/key"),
    (Method::POST, "/tls-key"),
    (Method::POST, "/emit-event"),
    (Method::GET, "/info"),
    (Method::GET, "/attestation"),
    (Method::GET, "/quote"),
    (Method::POST, "/nowhere"),
];

struct Keys;

impl guest_sidecar::guest_api::KeySource for Keys {
    fn derive(&self, path: &str, purpose: &str) -> [u8; 32] {
        let mut k = [0u8; 32];
        for (i, b) in path.bytes().chain(purpose.bytes()).enumerate() {
            k[i % 32] ^= b;
        }
        k
    }
}

thread_local! {
    static CA: Arc<CertAuthority> =
        Arc::new(CertAuthority::generate("fuzz app CA", Some(0)).expect("a CA"));
}

fn identity() -> Identity {
    let compose_hash = ratls::ComposeHash::of(b"{\"name\":\"fuzz\"}");
    Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: ratls::InstanceId([7; 20]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (method, path) = &ENDPOINTS[usize::from(pick) % ENDPOINTS.len()];
    let state = guest_sidecar::guest_api::GuestState {
        identity: identity(),
        measurer: Arc::new(Measurer::new(Arc::new(SimulatedProvider::new()))),
        keys: Some(Arc::new(Keys)),
        app_ca: Some(CA.with(Arc::clone)),
        instance_cert_pem: Arc::new(std::sync::RwLock::new(String::new())),
    };
    let reply = state.answer(method, path, body);
    // Every answer is a status with a JSON body; a server error would be a bug here.
    assert!(!reply.status().is_server_error(), "{}", reply.status());
});
