//! RA-TLS certificates: X.509, the CCC evidence, the claims buffer and app claims, then
//! every verification step (simulated quotes allowed, so the whole path runs).
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ratls::cert::parse_ratls_cert(data);
    let mut policy = ratls::Policy::any_measurements();
    policy.allow_simulated = true;
    let verifier =
        ratls::AttestationVerifier::new(Arc::new(ratls::collateral::SourceChain::new()), policy)
            .at_time(1_800_000_000);
    let _ = verifier.inspect_chain_at(data, &[data], 1_800_000_000);
});
