//! dstack's guest API after HTTP: the first byte picks the method, the rest is the body,
//! answered by `DstackState::answer` with a simulated TD, an app k256 root and an app CA
//! (so every method runs to the end). A fresh measurer per input, as in `guest_api`.
#![no_main]
use std::sync::Arc;

use http::Method;
use libfuzzer_sys::fuzz_target;
use ratls::cert::{CertAuthority, Identity};
use ratls::provider::{Measurer, SimulatedProvider};

const METHODS: &[(Method, &str)] = &[
    (Method::POST, "/GetQuote"),
    (Method::POST, "/Attest"),
    (Method::POST, "/GetKey"),
    (Method::POST, "/GetTlsKey"),
    (Method::POST, "/Sign"),
    (Method::POST, "/Verify"),
    (Method::POST, "/EmitEvent"),
    (Method::POST, "/Info"),
    (Method::GET, "/Version"),
    (Method::GET, "/GetKey"),
    (Method::POST, "/Nothing"),
];

const COMPOSE: &str = r#"{"manifest_version":2,"name":"fuzz-app"}"#;

thread_local! {
    static CA: Arc<CertAuthority> =
        Arc::new(CertAuthority::generate("fuzz app CA", Some(0)).expect("a CA"));
}

fn identity() -> Identity {
    let compose_hash = ratls::ComposeHash::of(COMPOSE.as_bytes());
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
    let (method, path) = &METHODS[usize::from(pick) % METHODS.len()];
    let guest = Arc::new(guest_sidecar::guest_api::GuestState {
        identity: identity(),
        measurer: Arc::new(Measurer::new(Arc::new(SimulatedProvider::new()))),
        keys: None,
        app_ca: Some(CA.with(Arc::clone)),
        instance_cert_pem: Arc::new(std::sync::RwLock::new(String::new())),
    });
    let k256 = guest_sidecar::dstack_api::AppK256::from_released(&[3; 32], &"11".repeat(65))
        .expect("a k256 root");
    let state = guest_sidecar::dstack_api::DstackState::new(
        guest,
        "fuzz-app".into(),
        COMPOSE.into(),
        r#"{"id":"","name":"kms"}"#.into(),
        Some(k256),
    )
    .expect("a simulated quote");
    let reply = state.answer(method, path, body);
    assert!(!reply.status().is_server_error(), "{}", reply.status());
});
