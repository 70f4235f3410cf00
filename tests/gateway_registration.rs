//! The gateway's registration and admin surfaces end to end: a real `teegate gateway`
//! process, simulated CVM instances that register over mutual RA-TLS, refusals that name
//! their reason, the admin token, restarts and lease expiry.

mod support;

use std::time::Duration;

use support::*;

const COMPOSE: &[u8] = b"{\"name\":\"web\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refusals_name_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let id = identity(COMPOSE, 1);
    let cert = ratls_cert(&id);

    // Loopback front with allow_loopback = false is tested on a strict gateway below; here
    // malformed bodies and bad ports.
    let (status, body) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &serde_json::json!({"front_addr": "10.1.1.1:443"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid registration"), "{body}");
    let (status, body) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &register_body("10.1.1.1:443".parse().unwrap(), &[0]),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // A plain (non-RA-TLS) client certificate.
    let plain = rcgen::generate_simple_self_signed(vec!["x.test".into()]).unwrap();
    let (status, body) = register_with(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        vec![plain.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(plain.signing_key.serialize_der().into()),
        &register_body("10.0.0.1:1".parse().unwrap(), &[80]),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("parse"), "{body}");

    // A strict gateway: no simulated quotes, no loopback fronts.
    let strict_dir = tempfile::tempdir().unwrap();
    let strict = start_gateway_in(
        strict_dir.path(),
        GatewayPorts::new(),
        "[registration]\nallow_loopback = false\n[verifier]\nallow_simulated = false\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\ncompose_hashes = \"any\"\napp_ids = \"any\"\n",
    );
    let (status, body) = register(
        strict.ports.registration,
        &strict.dev_ca_pem(),
        &cert,
        &register_body("10.1.1.1:443".parse().unwrap(), &[80]),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("quote-signature") && body.contains("SIMULATED"),
        "{body}"
    );

    let loose_dir = tempfile::tempdir().unwrap();
    let no_loopback = start_gateway_in(
        loose_dir.path(),
        GatewayPorts::new(),
        "[registration]\nallow_loopback = false\n",
    );
    let (status, body) = register(
        no_loopback.ports.registration,
        &no_loopback.dev_ca_pem(),
        &cert,
        &register_body("127.0.0.1:9".parse().unwrap(), &[80]),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("loopback"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let (id, _front) = registered_instance(&gw, COMPOSE, 1, &[80]).await;
    assert_eq!(
        http_get(gw.ports.admin, "/v1/apps", None, "GET").await.0,
        401
    );
    assert_eq!(
        http_get(
            gw.ports.admin,
            "/v1/apps",
            Some("wrong-token-0123456789"),
            "GET"
        )
        .await
        .0,
        403
    );
    let (status, body) = http_get(
        gw.ports.admin,
        "/v1/apps",
        Some("test-admin-token-0123456789"),
        "GET",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains(&id.app_id.to_hex()), "{body}");
    let (status, body) = http_get(
        gw.ports.admin,
        "/v1/replicas",
        Some("test-admin-token-0123456789"),
        "GET",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("\"store\":\"embedded\""), "{body}");
    assert_eq!(
        http_get(gw.ports.admin, "/v1/replicas", None, "GET")
            .await
            .0,
        401
    );
    let path = format!("/v1/instances/{}", id.instance_id);
    assert_eq!(
        http_get(
            gw.ports.admin,
            &path,
            Some("test-admin-token-0123456789"),
            "DELETE"
        )
        .await
        .0,
        200
    );
    let host = app_host(&id, "");
    let r = client(&gw, std::slice::from_ref(&host), false)
        .get(format!("https://{host}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_certificates_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ports = GatewayPorts::new();
    let mut gw = start_gateway_in(dir.path(), ports, "");
    let (id, _front) = registered_instance(&gw, COMPOSE, 1, &[80]).await;
    let ca_before = gw.dev_ca_pem();
    let cert_before = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(
        gw.proc.stop(Duration::from_secs(10)).is_some(),
        "gateway did not stop on SIGTERM"
    );
    let ports = GatewayPorts {
        https: gw.ports.https,
        http: gw.ports.http,
        registration: gw.ports.registration,
        admin: gw.ports.admin,
    };
    let gw2 = start_gateway_in(dir.path(), ports, "");
    assert_eq!(gw2.dev_ca_pem(), ca_before);
    let host = app_host(&id, "");
    let body = client(&gw2, std::slice::from_ref(&host), false)
        .get(format!("https://{host}/again"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("path=/again"), "{body}");
    let cert_after = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    let wildcard = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["certs"].clone();
    assert_eq!(
        wildcard(&cert_before),
        wildcard(&cert_after),
        "the wildcard certificate is reused, not re-issued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_with_a_tampered_quote_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let id = identity(COMPOSE, 1);
    let cert = tampered_ratls_cert(&id);
    let (status, body) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &register_body("10.1.1.1:443".parse().unwrap(), &[80]),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("quote-signature"), "{body}");
    let (_, metrics) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
    assert!(
        metrics.contains("teegate_registrations_total{result=\"attestation\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("teegate_registered_instances 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_drops_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(
        dir.path(),
        GatewayPorts::new(),
        "[registration]\nallow_loopback = true\nlease_secs = 1\n",
    );
    let (id, _front) = registered_instance(&gw, COMPOSE, 1, &[80]).await;
    let host = app_host(&id, "");
    let c = client(&gw, std::slice::from_ref(&host), false);
    assert_eq!(
        c.get(format!("https://{host}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = c
            .get(format!("https://{host}/"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "instance still routed after its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
