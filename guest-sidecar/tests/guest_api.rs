//! The guest API over a real Unix socket: answers, and 4xx for bad input.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ratls::cert::{CertAuthority, Identity};
use ratls::eventlog::names;
use ratls::provider::{Measurer, SimulatedProvider};
use teegate_guest_sidecar::guest_api::{self, GuestState, KeySource};

struct TestKeys;

impl KeySource for TestKeys {
    fn derive(&self, path: &str, purpose: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(format!("test-root|{path}|{purpose}")).into()
    }
}

struct Api {
    path: std::path::PathBuf,
    identity: Identity,
    ca: Arc<CertAuthority>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/teegate.sock");
    let compose_hash = ratls::ComposeHash::of(b"{\"name\":\"api-test\"}");
    let identity = Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: ratls::InstanceId([9; 20]),
    };
    let m = Measurer::new(Arc::new(SimulatedProvider::new()));
    m.emit(names::COMPOSE_HASH, identity.compose_hash.0.to_vec())
        .unwrap();
    m.emit(names::APP_ID, identity.app_id.0.to_vec()).unwrap();
    m.emit(names::INSTANCE_ID, identity.instance_id.0.to_vec())
        .unwrap();
    let ca = Arc::new(CertAuthority::generate("test app CA", Some(0)).unwrap());
    let state = Arc::new(GuestState {
        identity: identity.clone(),
        measurer: Arc::new(m),
        keys: Some(Arc::new(TestKeys)),
        app_ca: Some(ca.clone()),
        instance_cert_pem: Arc::new(std::sync::RwLock::new(
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
        )),
    });
    let listener = guest_api::bind(&path).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(guest_api::serve(listener, state, stopped));
    Api {
        path,
        identity,
        ca,
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
        .header("host", "teegate")
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
async fn info_quote_and_event_log_agree() {
    let api = start().await;
    let (s, info) = call(&api, "GET", "/info", "").await;
    assert_eq!(s, 200);
    assert_eq!(info["app_id"], api.identity.app_id.to_hex());
    assert_eq!(info["compose_hash"], api.identity.compose_hash.to_hex());
    assert_eq!(info["simulated"], true);

    let rd = "ab".repeat(64);
    let (s, q) = call(
        &api,
        "POST",
        "/quote",
        format!("{{\"report_data\":\"{rd}\"}}"),
    )
    .await;
    assert_eq!(s, 200, "{q}");
    let quote = ratls::Quote::parse(&hex::decode(q["quote"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(quote.report_data().to_hex(), rd);
    let log: ratls::eventlog::EventLog = serde_json::from_value(q["event_log"].clone()).unwrap();
    assert_eq!(
        log.replay(),
        quote.rtmr3(),
        "the event log replays to the quoted RTMR3"
    );
    assert_eq!(info["rtmr3"], quote.rtmr3().to_hex());

    let (s, e) = call(
        &api,
        "POST",
        "/emit-event",
        r#"{"name":"app-started","payload":"01"}"#,
    )
    .await;
    assert_eq!(s, 200, "{e}");
    assert_ne!(e["rtmr3"], info["rtmr3"]);
    let (s, e) = call(
        &api,
        "POST",
        "/emit-event",
        r#"{"name":"app-id","payload":"00"}"#,
    )
    .await;
    assert_eq!(s, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("reserved"));
}

/// An app cannot forge a boot event (ours or dstack's) to make a verifier read a second
/// `compose-hash`; the refusal leaves RTMR3 and the log as they were.
#[tokio::test]
async fn emitting_a_boot_event_name_is_refused_and_changes_nothing() {
    let api = start().await;
    let (_, before) = call(&api, "GET", "/info", "").await;
    for name in [
        "compose-hash",
        "instance-id",
        "key-provider",
        "boot-mr-done",
        "system-ready",
    ] {
        let (s, e) = call(
            &api,
            "POST",
            "/emit-event",
            format!(r#"{{"name":"{name}","payload":"{}"}}"#, "ee".repeat(32)),
        )
        .await;
        assert_eq!(s, 403, "{name}: {e}");
    }
    let (_, after) = call(&api, "GET", "/info", "").await;
    assert_eq!(after["rtmr3"], before["rtmr3"], "RTMR3 untouched");
    let (_, q) = call(
        &api,
        "POST",
        "/quote",
        format!("{{\"report_data\":\"{}\"}}", "00".repeat(64)),
    )
    .await;
    let log: ratls::eventlog::EventLog = serde_json::from_value(q["event_log"].clone()).unwrap();
    assert_eq!(log.payloads(names::COMPOSE_HASH).count(), 1);
    assert_eq!(
        log.payloads(names::COMPOSE_HASH).next().unwrap(),
        api.identity.compose_hash.0
    );
}

#[tokio::test]
async fn keys_are_deterministic_per_path_and_purpose() {
    let api = start().await;
    let k = |p: &'static str, u: &'static str| {
        call(
            &api,
            "POST",
            "/key",
            format!("{{\"path\":\"{p}\",\"purpose\":\"{u}\"}}"),
        )
    };
    let a = k("db", "encryption").await;
    let b = k("db", "encryption").await;
    let c = k("db", "signing").await;
    assert_eq!(a.0, 200);
    assert_eq!(a.1, b.1);
    assert_ne!(a.1, c.1);
    assert_eq!(a.1["key"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn tls_key_is_an_app_ca_signed_ratls_certificate() {
    let api = start().await;
    let (s, r) = call(
        &api,
        "POST",
        "/tls-key",
        r#"{"names":["svc.internal"],"validity_secs":600}"#,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let chain = pem::parse_many(r["certificate_chain"].as_str().unwrap()).unwrap();
    assert_eq!(chain.len(), 2, "leaf and app CA");
    let mut policy = ratls::Policy::any_measurements();
    policy.allow_simulated = true;
    let verifier =
        ratls::AttestationVerifier::new(Arc::new(ratls::collateral::SourceChain::new()), policy);
    let v = verifier.verify(chain[0].contents()).unwrap();
    assert_eq!(v.app_id(), &api.identity.app_id);
    assert_eq!(chain[1].contents(), api.ca.cert_der());
}

#[tokio::test]
async fn bad_input_gets_4xx_with_a_message() {
    let api = start().await;
    for (method, path, body, status) in [
        ("POST", "/quote", "not json".to_string(), 400),
        (
            "POST",
            "/quote",
            r#"{"report_data":"abcd"}"#.to_string(),
            400,
        ),
        (
            "POST",
            "/quote",
            r#"{"report_data":"00","extra":1}"#.to_string(),
            400,
        ),
        (
            "POST",
            "/key",
            r#"{"path":"","purpose":"x"}"#.to_string(),
            400,
        ),
        (
            "POST",
            "/key",
            r#"{"path":"a b","purpose":"x"}"#.to_string(),
            400,
        ),
        ("POST", "/tls-key", r#"{"names":[]}"#.to_string(), 400),
        (
            "POST",
            "/emit-event",
            r#"{"name":"Bad:Name","payload":"00"}"#.to_string(),
            400,
        ),
        (
            "POST",
            "/emit-event",
            r#"{"name":"ok","payload":"zz"}"#.to_string(),
            400,
        ),
        ("GET", "/nope", String::new(), 404),
        ("GET", "/quote", String::new(), 405),
        ("POST", "/key", "x".repeat(guest_api::MAX_BODY + 1), 413),
    ] {
        let (s, v) = call(&api, method, path, body.clone()).await;
        assert_eq!(s, status, "{method} {path} {body:.40}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: {v}"
        );
    }
}

#[tokio::test]
async fn socket_is_group_accessible_only() {
    use std::os::unix::fs::PermissionsExt;
    let api = start().await;
    let mode = std::fs::metadata(&api.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
}
