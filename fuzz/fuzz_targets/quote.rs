//! TDX quote parsing, and verification up to the collateral lookup.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = ratls::Quote::parse(data) {
        let _ = (q.rtmrs(), q.mrtd(), q.report_data(), q.fmspc(), q.is_debug());
        let v = ratls::QuoteVerifier::new(
            Arc::new(ratls::collateral::SourceChain::new()),
            ratls::TcbPolicy::default(),
            true,
        );
        let _ = v.verify(q, None, 1_800_000_000);
    }
});
