//! `teegate quote` and `teegate ratls inspect` as a user runs them.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors")
}

fn teegate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_teegate"))
        .args(args)
        .output()
        .expect("run teegate")
}

fn quote_cmd(quote: &str, collateral: &str, at: &str, extra: &[&str]) -> Output {
    let q = vectors().join(quote);
    let c = vectors().join(collateral);
    let mut args = vec![
        "quote",
        q.to_str().unwrap(),
        "--collateral",
        c.to_str().unwrap(),
        "--at",
        at,
    ];
    args.extend_from_slice(extra);
    teegate(&args)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn quote_up_to_date_vector_passes() {
    let o = quote_cmd(
        "dcap-qvl_tdx_quote",
        "dcap-qvl_tdx_quote_collateral.json",
        "2025-06-20T00:00:00Z",
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("TCB status      UpToDate"), "{out}");
    assert!(out.contains("FMSPC           B0C06F000000"), "{out}");
    assert!(out.contains("9a9d48e7f6799642"), "{out}");
}

#[test]
fn quote_json_output_carries_status() {
    let o = quote_cmd(
        "dcap-qvl_tdx_quote_td15ex",
        "dcap-qvl_tdx_quote_td15ex_collateral.json",
        "2026-10-10T00:00:00Z",
        &["--json"],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["tcb_status"], "UpToDate");
    assert_eq!(v["version"], 5);
    assert_eq!(v["td_report"], "1.5-ex");
}

#[test]
fn quote_with_expired_collateral_fails_with_reason() {
    let o = quote_cmd(
        "dcap-qvl_tdx_quote",
        "dcap-qvl_tdx_quote_collateral.json",
        "2025-08-20T00:00:00Z",
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    assert!(err.contains("TCBInfo expired"), "{err}");
    assert!(err.contains("quote-signature"), "{err}");
}

#[test]
fn quote_without_matching_tcb_level_fails_at_tcb_status() {
    let o = quote_cmd(
        "dcap-qvl_tdx_quote_outdated",
        "dcap-qvl_tdx_quote_outdated_collateral.json",
        "2026-02-20T00:00:00Z",
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    assert!(
        err.contains("tcb-status") && err.contains("No matching TCB level"),
        "{err}"
    );
}

#[test]
fn quote_with_tampered_report_data_is_rejected() {
    let mut q = std::fs::read(vectors().join("dcap-qvl_tdx_quote")).unwrap();
    let rd =
        hex::decode("9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9").unwrap();
    let pos = q.windows(32).position(|w| w == rd.as_slice()).unwrap();
    q[pos] ^= 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tampered");
    std::fs::write(&path, &q).unwrap();
    let c = vectors().join("dcap-qvl_tdx_quote_collateral.json");
    let o = teegate(&[
        "quote",
        path.to_str().unwrap(),
        "--collateral",
        c.to_str().unwrap(),
        "--at",
        "2025-06-20T00:00:00Z",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    assert!(err.contains("signature"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line reason: {err}");
}

#[test]
fn quote_accepts_hex_input_and_rejects_garbage() {
    let q = std::fs::read(vectors().join("dcap-qvl_tdx_quote")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hex_path = dir.path().join("quote.hex");
    std::fs::write(&hex_path, hex::encode(&q)).unwrap();
    let c = vectors().join("dcap-qvl_tdx_quote_collateral.json");
    let o = teegate(&[
        "quote",
        hex_path.to_str().unwrap(),
        "--collateral",
        c.to_str().unwrap(),
        "--at",
        "2025-06-20T00:00:00Z",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));

    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"\x00\x01garbage").unwrap();
    let o = teegate(&["quote", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("parse"), "{:?}", text(&o));
}

#[test]
fn quote_without_collateral_says_so() {
    let q = vectors().join("dcap-qvl_tdx_quote");
    let o = teegate(&["quote", q.to_str().unwrap(), "--at", "2025-06-20T00:00:00Z"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no collateral"), "{:?}", text(&o));
}

fn write_sim_cert(dir: &std::path::Path) -> PathBuf {
    use ratls::cert::{issue, CertProfile, Identity};
    use ratls::eventlog::names;
    use ratls::provider::{Measurer, SimulatedProvider};
    let compose_hash = ratls::ComposeHash::of(b"compose");
    let id = Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: ratls::InstanceId([3; 20]),
    };
    let m = Measurer::new(Arc::new(SimulatedProvider::new()));
    m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())
        .unwrap();
    m.emit(names::APP_ID, id.app_id.0.to_vec()).unwrap();
    m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())
        .unwrap();
    let cert = issue(
        &m,
        &id,
        &CertProfile::server_and_client(vec!["demo.test".into()], Duration::from_secs(600)),
        None,
    )
    .unwrap();
    let path = dir.join("cert.pem");
    std::fs::write(&path, cert.cert_pem()).unwrap();
    path
}

#[test]
fn ratls_inspect_shows_claims_and_labels_simulated() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_sim_cert(dir.path());
    let o = teegate(&[
        "ratls",
        "inspect",
        path.to_str().unwrap(),
        "--allow-simulated",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("SIMULATED"), "{out}");
    assert!(
        out.contains(&ratls::ComposeHash::of(b"compose").to_hex()),
        "{out}"
    );
    assert!(out.contains("verification    OK"), "{out}");

    let o = teegate(&["ratls", "inspect", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("allow_simulated"), "{:?}", text(&o));
}

#[test]
fn ratls_inspect_rejects_garbage_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.pem");
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let o = teegate(&["ratls", "inspect", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("parse"), "{:?}", text(&o));
}

#[test]
fn ratls_inspect_reads_other_implementations_ccc_certificates() {
    for name in ["ccc-gramine-cert.pem", "ccc-intel-sgxsdk-cert.pem"] {
        let path = vectors().join(name);
        let o = teegate(&["ratls", "inspect", path.to_str().unwrap()]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
        // Described as a CCC certificate of another implementation, never as garbage.
        assert!(
            out.contains("CCC RA-TLS certificate without teegate app claims"),
            "{name}: {out}\n{err}"
        );
        assert!(!err.contains("no teegate app claims extension"), "{err}");
        assert!(out.contains("claims keys     pubkey-hash"), "{out}");
        assert!(
            out.contains("quote           SGX quote v3 (tee_type 0)"),
            "{out}"
        );
        let line = |step: &str| {
            out.lines()
                .find(|l| l.starts_with(step))
                .unwrap_or_else(|| panic!("no {step} line: {out}"))
                .to_string()
        };
        assert!(line("parse ").contains("verified"), "{out}");
        assert!(line("key-binding").contains("verified"), "{out}");
        let q = line("quote-signature");
        assert!(
            q.contains("failed") && q.contains("SGX (tee_type 0)"),
            "{q}"
        );
        assert!(q.contains("teegate verifies TDX quotes"), "{q}");
        assert!(line("policy").contains("not checked"), "{out}");
        assert!(out.contains("FAILED at quote-signature"), "{out}");

        let o = teegate(&["ratls", "inspect", path.to_str().unwrap(), "--json"]);
        assert_eq!(o.status.code(), Some(1));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(v["ok"], false);
        assert_eq!(v["teegate_certificate"], false);
        assert_eq!(v["step"], "quote-signature");
        assert!(v["error"].as_str().unwrap().contains("SGX"), "{v}");
        let ev = &v["evidence"];
        assert_eq!(ev["claim_keys"], serde_json::json!(["pubkey-hash"]));
        assert_eq!(ev["tee"], "SGX");
        assert_eq!(ev["report_data"], ev["expected_report_data"]);
        let checks = v["checks"].as_array().unwrap();
        let status = |step: &str| {
            checks
                .iter()
                .find(|c| c["step"] == step)
                .map(|c| c["status"].clone())
                .unwrap()
        };
        assert_eq!(status("key-binding"), "verified");
        assert_eq!(status("quote-signature"), "failed");
    }
}
