//! dstack's guest API over a real Unix socket: the answers dstack's SDKs read, the key
//! chain up to the KMS k256 root, and 4xx for bad input. (The real Python SDK drives the
//! booted sidecar in the root package's `tests/dstack_sdk.rs`.)

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kms::derive::RootSecret;
use kms::dstack_keys;
use ratls::cert::{CertAuthority, Identity};
use ratls::eventlog::names;
use ratls::provider::{Measurer, SimulatedProvider};
use teegate_guest_sidecar::dstack_api::{self, AppK256, DstackState};
use teegate_guest_sidecar::guest_api::{self, GuestState};

struct Api {
    path: std::path::PathBuf,
    identity: Identity,
    kms_root: k256::ecdsa::VerifyingKey,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start(with_kms: bool) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/dstack.sock");
    let compose = br#"{"manifest_version":2,"name":"sdk-app"}"#;
    let compose_hash = ratls::ComposeHash::of(compose);
    let identity = Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: ratls::InstanceId([9; 20]),
    };
    let m = Measurer::new(Arc::new(SimulatedProvider::new()));
    m.emit(names::COMPOSE_HASH, identity.compose_hash.0.to_vec())
        .unwrap();
    m.emit(names::APP_ID, identity.app_id.0.to_vec()).unwrap();
    // The KMS side, as the KMS derives it for this app.
    let root = RootSecret::from_bytes([3; 32]);
    let kms_root = dstack_keys::kms_k256_root(&root);
    let app_key = dstack_keys::app_k256_key(&root, &identity.app_id.0);
    let sig = dstack_keys::kms_signature_for_app(&kms_root, &identity.app_id.0, &app_key).unwrap();
    let k256 = AppK256::from_released(&app_key.to_bytes(), &hex::encode(sig)).unwrap();
    let guest = Arc::new(GuestState {
        identity: identity.clone(),
        measurer: Arc::new(m),
        keys: None,
        app_ca: with_kms
            .then(|| Arc::new(CertAuthority::generate("test app CA", Some(0)).unwrap())),
        instance_cert_pem: Arc::new(std::sync::RwLock::new(String::new())),
    });
    let state = Arc::new(
        DstackState::new(
            guest,
            "sdk-app".into(),
            String::from_utf8(compose.to_vec()).unwrap(),
            r#"{"id":"","name":"kms"}"#.into(),
            with_kms.then_some(k256),
        )
        .unwrap(),
    );
    let listener = guest_api::bind(&path).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(dstack_api::serve(listener, state, stopped));
    Api {
        path,
        identity,
        kms_root: *kms_root.verifying_key(),
        _dir: dir,
        _stop: stop,
    }
}

async fn call(
    api: &Api,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> (u16, serde_json::Value) {
    let stream = tokio::net::UnixStream::connect(&api.path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn get_quote_pads_report_data_and_its_event_log_replays_to_rtmr3() {
    let api = start(true).await;
    let (s, q) = call(&api, "POST", "/GetQuote", r#"{"report_data":"68656c6c6f"}"#).await;
    assert_eq!(s, 200, "{q}");
    let quote = ratls::Quote::parse(&hex::decode(q["quote"].as_str().unwrap()).unwrap()).unwrap();
    let want = format!("68656c6c6f{}", "00".repeat(59));
    assert_eq!(quote.report_data().to_hex(), want);
    assert_eq!(q["report_data"], want);
    // event_log is JSON text of dstack's entries, as the SDK's replay_rtmrs() reads it.
    let entries: serde_json::Value =
        serde_json::from_str(q["event_log"].as_str().unwrap()).unwrap();
    assert_eq!(entries[0]["event"], "compose-hash");
    assert_eq!(entries[0]["imr"], 3);
    let log: ratls::eventlog::EventLog = serde_json::from_value(entries).unwrap();
    assert_eq!(log.replay(), quote.rtmr3());

    let (s, info) = call(&api, "GET", "/Info", "").await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["app_id"], api.identity.app_id.to_hex());
    let tcb: serde_json::Value = serde_json::from_str(info["tcb_info"].as_str().unwrap()).unwrap();
    assert_eq!(tcb["rtmr3"], quote.rtmr3().to_hex());
    assert_eq!(
        tcb["app_compose"],
        r#"{"manifest_version":2,"name":"sdk-app"}"#
    );
}

#[tokio::test]
async fn get_key_chain_recovers_to_the_kms_k256_root() {
    let api = start(true).await;
    let key = |path: &str, purpose: &str, alg: &str| {
        call(
            &api,
            "POST",
            "/GetKey",
            format!(r#"{{"path":"{path}","purpose":"{purpose}","algorithm":"{alg}"}}"#),
        )
    };
    let (s, a) = key("wallet", "eth", "secp256k1").await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(key("wallet", "eth", "secp256k1").await.1, a, "stable");
    assert_ne!(key("other", "eth", "secp256k1").await.1["key"], a["key"]);
    let secret = hex::decode(a["key"].as_str().unwrap()).unwrap();
    let derived = k256::ecdsa::SigningKey::from_slice(&secret).unwrap();
    let derived_pub = dstack_keys::public_sec1(derived.verifying_key());
    let chain: Vec<Vec<u8>> = a["signature_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| hex::decode(s.as_str().unwrap()).unwrap())
        .collect();
    let app_root = dstack_keys::recover(
        format!("eth:{}", hex::encode(&derived_pub)).as_bytes(),
        &chain[0],
    )
    .unwrap();
    let msg = dstack_keys::kms_issued_message(
        &api.identity.app_id.0,
        &dstack_keys::public_sec1(&app_root),
    );
    assert_eq!(dstack_keys::recover(&msg, &chain[1]).unwrap(), api.kms_root);

    let (s, e) = key("wallet", "eth", "ed25519").await;
    assert_eq!(s, 200, "{e}");
    assert_ne!(e["key"], a["key"]);
}

#[tokio::test]
async fn sign_and_verify_round_trip() {
    let api = start(true).await;
    for alg in ["secp256k1", "ed25519"] {
        let (s, r) = call(
            &api,
            "POST",
            "/Sign",
            format!(r#"{{"algorithm":"{alg}","data":"0102"}}"#),
        )
        .await;
        assert_eq!(s, 200, "{r}");
        let body = |data: &str| {
            format!(
                r#"{{"algorithm":"{alg}","data":"{data}","signature":"{}","public_key":"{}"}}"#,
                r["signature"].as_str().unwrap(),
                r["public_key"].as_str().unwrap()
            )
        };
        assert_eq!(
            call(&api, "POST", "/Verify", body("0102")).await.1["valid"],
            true
        );
        assert_eq!(
            call(&api, "POST", "/Verify", body("0103")).await.1["valid"],
            false
        );
    }
}

#[tokio::test]
async fn bad_input_gets_the_4xx_the_sdk_expects() {
    let api = start(true).await;
    for (path, body, status) in [
        (
            "/GetQuote",
            format!(r#"{{"report_data":"{}"}}"#, "00".repeat(65)),
            400,
        ),
        ("/GetQuote", r#"{"report_data":"zz"}"#.to_string(), 400),
        (
            "/Attest",
            format!(r#"{{"report_data":"{}"}}"#, "00".repeat(65)),
            400,
        ),
        (
            "/GetKey",
            r#"{"path":"a","algorithm":"rsa"}"#.to_string(),
            400,
        ),
        (
            "/Sign",
            r#"{"algorithm":"p256","data":"00"}"#.to_string(),
            400,
        ),
        (
            "/Sign",
            r#"{"algorithm":"secp256k1_prehashed","data":"00"}"#.to_string(),
            400,
        ),
        (
            "/Verify",
            r#"{"algorithm":"ed25519","data":"00","signature":"00","public_key":"00"}"#.to_string(),
            400,
        ),
        ("/GetQuote", "not json".to_string(), 400),
        (
            "/GetQuote",
            format!(r#"{{"report_data":"{}"}}"#, "0".repeat(70_000)),
            413,
        ),
        (
            "/EmitEvent",
            r#"{"event":"compose-hash","payload":"00"}"#.to_string(),
            403,
        ),
        (
            "/EmitEvent",
            r#"{"event":"boot-mr-done","payload":""}"#.to_string(),
            403,
        ),
        ("/NoSuchMethod", "{}".to_string(), 404),
        (
            "/GetTlsKey",
            r#"{"subject":"a.test","usage_server_auth":false,"usage_client_auth":false}"#
                .to_string(),
            400,
        ),
        ("/GetTlsKey", r#"{"subject":"a b"}"#.to_string(), 400),
        (
            "/GetTlsKey",
            r#"{"subject":"a.test","not_after":1}"#.to_string(),
            400,
        ),
    ] {
        let (s, e) = call(&api, "POST", path, body).await;
        assert_eq!(s, status, "{path}: {e}");
        assert!(e["error"].is_string(), "{path}: {e}");
    }
    assert_eq!(call(&api, "GET", "/GetKey", "").await.0, 405);
    // The refused events left RTMR3 as it was: one compose-hash, the sidecar's.
    let (_, q) = call(&api, "POST", "/GetQuote", r#"{"report_data":""}"#).await;
    let log: ratls::eventlog::EventLog =
        serde_json::from_str(q["event_log"].as_str().unwrap()).unwrap();
    assert_eq!(log.payloads(names::COMPOSE_HASH).count(), 1);
    assert_eq!(log.len(), 2);
    let (s, _) = call(
        &api,
        "POST",
        "/EmitEvent",
        r#"{"event":"app-ready","payload":"01"}"#,
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn without_a_kms_key_methods_answer_503() {
    let api = start(false).await;
    for (path, body) in [
        ("/GetKey", r#"{"path":"a"}"#),
        ("/Sign", r#"{"algorithm":"secp256k1","data":"00"}"#),
        ("/GetTlsKey", r#"{"subject":"x.test"}"#),
    ] {
        let (s, e) = call(&api, "POST", path, body).await;
        assert_eq!(s, 503, "{path}: {e}");
        assert!(e["error"].as_str().unwrap().contains("no key provider"));
    }
    assert_eq!(
        call(&api, "POST", "/GetQuote", r#"{"report_data":"01"}"#)
            .await
            .0,
        200
    );
}

/// Hex of the bytes of `v`'s string field, decoded.
fn unhex_field(v: &serde_json::Value, field: &str) -> Vec<u8> {
    hex::decode(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {v}")),
    )
    .unwrap()
}

#[tokio::test]
async fn info_reports_dstacks_platform_values() {
    use sha2::{Digest, Sha256};
    let api = start(true).await;
    let (s, info) = call(&api, "POST", "/Info", "{}").await;
    assert_eq!(s, 200, "{info}");
    let (_, q) = call(&api, "POST", "/GetQuote", r#"{"report_data":""}"#).await;
    let quote = ratls::Quote::parse(&unhex_field(&q, "quote")).unwrap();
    let r = quote.rtmrs();
    let mut os = Sha256::new();
    os.update(quote.mrtd().0);
    for m in &r[..3] {
        os.update(m.0);
    }
    let mut agg = Sha256::new();
    agg.update(quote.mrtd().0);
    for m in &r {
        agg.update(m.0);
    }
    assert_eq!(info["os_image_hash"], hex::encode(os.finalize()));
    assert_eq!(info["mr_aggregated"], hex::encode(agg.finalize()));
    let leaf = quote.pck_chain().unwrap().remove(0);
    let ppid = dcap_qvl::intel::parse_pck_extension(&leaf).unwrap().ppid;
    assert_eq!(info["device_id"], hex::encode(Sha256::digest(&ppid)));
    let tcb: serde_json::Value = serde_json::from_str(info["tcb_info"].as_str().unwrap()).unwrap();
    for f in ["os_image_hash", "mr_aggregated", "device_id"] {
        assert_eq!(tcb[f], info[f], "tcb_info.{f}");
    }
    let vm: serde_json::Value = serde_json::from_str(info["vm_config"].as_str().unwrap()).unwrap();
    assert_eq!(vm["os_image_hash"], info["os_image_hash"]);
    assert_eq!(q["vm_config"], info["vm_config"]);
}

#[tokio::test]
async fn attest_answers_dstacks_scale_attestation() {
    let api = start(true).await;
    let (s, a) = call(&api, "POST", "/Attest", r#"{"report_data":"0a0b"}"#).await;
    assert_eq!(s, 200, "{a}");
    let bytes = unhex_field(&a, "attestation");
    // VersionedAttestation::V0, AttestationQuote::DstackTdx, then the quote (compact length).
    assert_eq!(&bytes[..2], &[0, 0]);
    let len = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]) >> 2);
    assert_eq!(bytes[2] & 0b11, 1, "two-byte compact length");
    let quote = ratls::Quote::parse(&bytes[4..4 + len]).unwrap();
    let mut want = [0u8; 64];
    want[..2].copy_from_slice(&[0x0a, 0x0b]);
    assert_eq!(quote.report_data().0, want);
    // The report data is written once more near the end, before the vm_config string.
    let (_, info) = call(&api, "POST", "/Info", "{}").await;
    let config = info["vm_config"].as_str().unwrap().as_bytes();
    assert!(bytes.ends_with(config));
    let rd_at = bytes.len() - config.len() - 2 - 64;
    assert_eq!(&bytes[rd_at..rd_at + 64], &want[..]);
}

#[tokio::test]
async fn get_tls_key_honours_a_future_not_before_within_bounds() {
    let api = start(true).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (nb, na) = (now + 7 * 86_400, now + 14 * 86_400);
    let (s, r) = call(
        &api,
        "POST",
        "/GetTlsKey",
        format!(r#"{{"subject":"later.test","not_before":{nb},"not_after":{na}}}"#),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let leaf = pem::parse(r["certificate_chain"][0].as_str().unwrap()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).unwrap();
    let v = cert.validity();
    assert_eq!(v.not_before.timestamp(), nb as i64);
    assert_eq!(v.not_after.timestamp(), na as i64);
    // Past the bound, refused naming the field; the API keeps serving.
    let (s, e) = call(
        &api,
        "POST",
        "/GetTlsKey",
        format!(
            r#"{{"subject":"later.test","not_before":{}}}"#,
            now + 91 * 86_400
        ),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("not_before"), "{e}");
    let (s, e) = call(
        &api,
        "POST",
        "/GetTlsKey",
        format!(r#"{{"subject":"later.test","not_before":{na},"not_after":{nb}}}"#),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"]
        .as_str()
        .unwrap()
        .contains("earlier than not_after"));
    assert_eq!(
        call(&api, "POST", "/GetTlsKey", r#"{"subject":"now.test"}"#)
            .await
            .0,
        200
    );
}
