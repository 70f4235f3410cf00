//! A terminating gateway's evidence (`/.well-known/teegate/gateway`): the JSON document,
//! its bounds, the gateway claims buffer, then every verification step (simulated quotes
//! allowed, so the whole path runs).
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ratls::gateway_evidence::{GatewayClaims, GatewayDocument};

fuzz_target!(|data: &[u8]| {
    let _ = GatewayClaims::from_claims_buffer(data);
    let Ok(doc) = GatewayDocument::from_json(data) else {
        return;
    };
    if let Ok(ev) = doc.into_evidence() {
        let _ = GatewayClaims::from_claims_buffer(&ev.claims_buffer);
        let mut policy = ratls::Policy::any_measurements();
        policy.allow_simulated = true;
        let verifier = ratls::AttestationVerifier::new(
            Arc::new(ratls::collateral::SourceChain::new()),
            policy,
        )
        .at_time(1_800_000_000);
        let _ = verifier.verify_gateway(&ev);
    }
});
