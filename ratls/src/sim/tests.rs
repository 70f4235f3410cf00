use dcap_qvl::quote::Quote;
use dcap_qvl::verify::QuoteVerifier;

use super::quote_builder::{HEADER_LEN, ISV_SIGNATURE_OFFSET, TD_REPORT10_LEN};
use super::*;

/// 2026-01-01T00:00:00Z, inside every validity window of the simulated PKI.
const NOW: u64 = 1_767_225_600;

fn sample_td() -> SimTdReport {
    SimTdReport {
        mr_td: [0x11; 48],
        mr_config_id: [0x22; 48],
        mr_owner: [0x33; 48],
        mr_owner_config: [0x44; 48],
        rt_mr: [[0x50; 48], [0x51; 48], [0x52; 48], [0x53; 48]],
        report_data: core::array::from_fn(|i| i as u8),
        ..SimTdReport::default()
    }
}

/// Verification result with the error rendered (including context) for assertions.
type VerifyResult = Result<dcap_qvl::verify::VerifiedReport, String>;

fn verify(pki: &SimulatedPki, quote: &[u8]) -> VerifyResult {
    QuoteVerifier::new(pki.root_ca_der().to_vec())
        .verify(quote, pki.collateral(), NOW)
        .map_err(|e| format!("{e:#}"))
}

#[test]
fn simulated_quote_verifies_up_to_date() {
    let pki = SimulatedPki::well_known();
    let td = sample_td();
    let report = verify(pki, &pki.quote(&td)).expect("simulated quote must verify");
    assert_eq!(report.status, "UpToDate");
    assert!(report.advisory_ids.is_empty());
    let body = report.report.as_td10().expect("TD 1.0 report");
    assert_eq!(body.rt_mr3, td.rt_mr[3]);
    assert_eq!(body.report_data, td.report_data);
    assert_eq!(body.mr_td, td.mr_td);
    assert_eq!(body.mr_config_id, td.mr_config_id);
    assert_eq!(body.td_attributes, td.td_attributes);
}

#[test]
fn default_td_report_verifies_now_and_in_the_far_future() {
    let pki = SimulatedPki::well_known();
    let quote = pki.quote(&SimTdReport::default());
    let v = QuoteVerifier::new(pki.root_ca_der().to_vec());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    // 2099-12-30T00:00:00Z and 2024-01-01T00:00:00Z.
    for t in [now, 4_102_272_000, 1_704_067_200] {
        let report = v.verify(&quote, pki.collateral(), t).expect("verifies");
        assert_eq!(report.status, "UpToDate");
    }
    // Outside the window: after nextUpdate / before issueDate.
    assert!(v.verify(&quote, pki.collateral(), 4_102_444_801).is_err());
    assert!(v.verify(&quote, pki.collateral(), 1_704_067_199).is_err());
}

#[test]
fn strict_policy_accepts_simulated_quote() {
    let pki = SimulatedPki::well_known();
    let claims = QuoteVerifier::new(pki.root_ca_der().to_vec())
        .verify_with_policy(
            &pki.quote(&sample_td()),
            pki.collateral(),
            NOW,
            &dcap_qvl::QuotePolicy::strict(NOW),
        )
        .expect("strict policy");
    assert_eq!(claims.tcb.eval_data_number, 17);
    assert_eq!(hex::encode_upper(claims.platform.pck.fmspc), "00906ED50000");
}

#[test]
fn from_seed_is_deterministic() {
    let a = SimulatedPki::from_seed(&SIMULATION_SEED).expect("pki a");
    let b = SimulatedPki::from_seed(&SIMULATION_SEED).expect("pki b");
    assert_eq!(a.root_ca_der(), b.root_ca_der());
    assert_eq!(a.root_ca_der(), SimulatedPki::well_known().root_ca_der());
    let json = |p: &SimulatedPki| serde_json::to_string(p.collateral()).expect("json");
    assert_eq!(json(&a), json(&b));
    assert_eq!(a.quote(&sample_td()), b.quote(&sample_td()));

    let mut other_seed = SIMULATION_SEED;
    other_seed[0] ^= 1;
    let c = SimulatedPki::from_seed(&other_seed).expect("pki c");
    assert_ne!(a.root_ca_der(), c.root_ca_der());
    // Each seed's quotes only verify against that seed's root.
    let quote_c = c.quote(&sample_td());
    assert!(verify(&c, &quote_c).is_ok());
    assert!(QuoteVerifier::new(a.root_ca_der().to_vec())
        .verify(&quote_c, c.collateral(), NOW)
        .is_err());
}

#[test]
fn tampered_report_data_is_rejected() {
    let pki = SimulatedPki::well_known();
    let mut quote = pki.quote(&sample_td());
    // report_data is the last 64 bytes of the TD report.
    quote[HEADER_LEN + TD_REPORT10_LEN - 64] ^= 0x01;
    let err = verify(pki, &quote).expect_err("must fail");
    assert!(
        err.contains("ISV enclave report signature is invalid"),
        "{err}"
    );
}

#[test]
fn tampered_isv_signature_is_rejected() {
    let pki = SimulatedPki::well_known();
    let mut quote = pki.quote(&sample_td());
    quote[ISV_SIGNATURE_OFFSET + 5] ^= 0x80;
    assert!(verify(pki, &quote).is_err());
}

#[test]
fn intel_root_rejects_simulated_quote() {
    let pki = SimulatedPki::well_known();
    let result = QuoteVerifier::new_prod().verify(&pki.quote(&sample_td()), pki.collateral(), NOW);
    assert!(result.is_err());
}

#[test]
fn debug_td_is_rejected_by_default() {
    let pki = SimulatedPki::well_known();
    let mut td = sample_td();
    td.td_attributes[0] |= TD_ATTRIBUTES_DEBUG[0];
    let quote = pki.quote(&td);
    let err = verify(pki, &quote).expect_err("debug TD must be rejected");
    assert!(err.contains("Debug"), "{err}");
    // The rejection is the debug policy, not a broken signature.
    let report = QuoteVerifier::new(pki.root_ca_der().to_vec())
        .allow_debug(true)
        .verify(&quote, pki.collateral(), NOW)
        .expect("allowed when debug is allowed");
    assert_eq!(report.status, "UpToDate");
}

#[test]
fn all_zero_td_attributes_are_rejected() {
    // dcap-qvl demands SEPT_VE_DISABLE; documents why Default sets it.
    let pki = SimulatedPki::well_known();
    let td = SimTdReport {
        td_attributes: [0; 8],
        ..sample_td()
    };
    let err = verify(pki, &pki.quote(&td)).expect_err("must fail");
    assert!(err.contains("SEPT_VE_DISABLE"), "{err}");
}

#[test]
fn quote_parses_as_tdx_v4() {
    let pki = SimulatedPki::well_known();
    let raw = pki.quote(&sample_td());
    let quote = Quote::parse(&raw).expect("parse");
    assert_eq!(quote.header.version, 4);
    assert_eq!(quote.header.tee_type, 0x81);
    assert_eq!(quote.header.attestation_key_type, 2);
    assert_eq!(quote.inner_cert_type(), 5);
    let ext = dcap_qvl::intel::parse_pck_extension_from_pem(quote.inner_cert_data())
        .expect("PCK SGX extension");
    assert_eq!(ext.fmspc, platform::FMSPC);
    assert_eq!(ext.cpu_svn, platform::CPU_SVN);
    assert_eq!(ext.pce_svn, platform::PCE_SVN);
    assert_eq!(ext.sgx_type, 1);
    assert_eq!(ext.smt_enabled, Some(false));
}
