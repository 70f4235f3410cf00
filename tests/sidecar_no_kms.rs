//! A real `teegate sidecar` process booted with `key_provider = "none"`: its guest API
//! serves no key (there is no app secret without a KMS), answering 503 with a message that
//! says so, and never the old "key" that anyone could compute from the public compose hash.
//! The rest of the guest API is unaffected.

mod support;

use std::time::Duration;

use sha2::Digest;
use support::*;

const NO_KEY_PROVIDER: &str = "no key provider is configured";

/// What `/key` answered before: SHA-256 over a constant, the compose hash (public: it is on
/// `/info`, in the quote and on the trust page), the path and the purpose.
fn public_data_key(compose_hash: &[u8], path: &str, purpose: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"teegate-guest-key\0");
    h.update(compose_hash);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(purpose.as_bytes());
    hex::encode(h.finalize())
}

#[tokio::test]
async fn without_a_kms_no_key_is_served_and_nothing_computable_from_public_data() {
    let dir = tempfile::tempdir().unwrap();
    let compose = dir.path().join("app-compose.json");
    std::fs::write(
        &compose,
        r#"{"name":"no-kms","docker_compose":"services:\n  web:\n    image: busybox\n    ports: [\"80\"]\n","key_provider":"none","exposed_ports":[80],"gateway_urls":[]}"#,
    )
    .unwrap();
    let socket = dir.path().join("run/teegate.sock");
    let cfg = dir.path().join("sidecar.toml");
    std::fs::write(
        &cfg,
        format!(
            "compose_file = \"{}\"\nsocket_path = \"{}\"\ndstack_socket_path = \"{}\"\nlisten_front = \"127.0.0.1:0\"\nkms_url = \"https://127.0.0.1:1\"\nquote_provider = \"simulated\"\ndata_dir = \"{}\"\nruntime = \"none\"\n[upstreams]\n80 = \"127.0.0.1:1\"\n",
            compose.display(),
            socket.display(),
            dir.path().join("run/dstack.sock").display(),
            dir.path().join("data").display(),
        ),
    )
    .unwrap();
    let mut sidecar = spawn_teegate(
        &["sidecar", "--config", cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );

    let (status, info) = guest(&socket, "GET", "/info", "").await;
    assert_eq!(status, 200, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let compose_hash = hex::decode(info["compose_hash"].as_str().unwrap()).unwrap();

    for (path, purpose) in [("disk", "encryption"), ("app/db", "password")] {
        let (status, body) = guest(
            &socket,
            "POST",
            "/key",
            &format!(r#"{{"path":"{path}","purpose":"{purpose}"}}"#),
        )
        .await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains(NO_KEY_PROVIDER), "{body}");
        assert!(
            !body.contains(&public_data_key(&compose_hash, path, purpose)),
            "the key computable from the public compose hash is served: {body}"
        );
        assert!(!body.contains("\"key\""), "{body}");
    }
    let (status, body) = guest(
        &socket,
        "POST",
        "/tls-key",
        r#"{"names":["app.example"],"validity_secs":3600}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(NO_KEY_PROVIDER), "{body}");
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    // dstack's API on its own socket holds to the same rule.
    let dstack = dir.path().join("run/dstack.sock");
    for (method, body) in [
        ("/GetKey", r#"{"path":"wallet","purpose":"signing"}"#),
        ("/Sign", r#"{"algorithm":"secp256k1","data":"00"}"#),
        ("/GetTlsKey", r#"{"subject":"app.example"}"#),
    ] {
        let (status, body) = guest(&dstack, "POST", method, body).await;
        assert_eq!(status, 503, "{method}: {body}");
        assert!(body.contains(NO_KEY_PROVIDER), "{body}");
        assert!(
            !body.contains("\"key\"") && !body.contains("signature"),
            "{body}"
        );
    }
    let (status, body) = guest(&dstack, "POST", "/GetQuote", r#"{"report_data":"01"}"#).await;
    assert_eq!(status, 200, "{body}");

    // What needs no app secret still answers: quotes and the attestation.
    let (status, body) = guest(
        &socket,
        "POST",
        "/quote",
        &format!(r#"{{"report_data":"{}"}}"#, "ab".repeat(64)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = guest(&socket, "GET", "/attestation", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("BEGIN CERTIFICATE"), "{body}");
    assert!(
        sidecar.stop(Duration::from_secs(10)).is_some(),
        "{}",
        sidecar.log()
    );
}
