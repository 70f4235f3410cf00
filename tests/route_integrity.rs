//! Route integrity against a real gateway process, attacked as an outsider would: only
//! code authorised for an app id receives its traffic, and instance ids cannot be taken
//! from another app or another certificate lineage. Each attack checks the refusal and
//! that the victim's instances, routes and traffic are unchanged.

mod support;

use std::time::Duration;

use ratls::AppId;
use support::*;

const VICTIM: &[u8] = br#"{"name":"victim","docker_compose":"services: {}"}"#;
const ATTACKER: &[u8] = br#"{"name":"attacker","docker_compose":"services: {}"}"#;
const NAMED: &[u8] = br#"{"name":"named","app_id":"5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e"}"#;

fn host(app: &AppId) -> String {
    format!("{app}.{BASE}")
}

/// Every answer for `app` comes from `instance`.
async fn all_served_by(c: &reqwest::Client, name: &str, instance: &str, n: usize) {
    for i in 0..n {
        let r = c
            .get(format!("https://{name}/req{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i} to {name}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains(&format!("instance={instance} ")),
            "request {i} to {name} reached {body}"
        );
    }
}

async fn instances_of(gw: &Gateway, app: &AppId) -> Vec<String> {
    let (status, body) = http_get(
        gw.ports.admin,
        &format!("/v1/apps/{app}"),
        Some("test-admin-token-0123456789"),
        "GET",
    )
    .await;
    if status == 404 {
        return vec![];
    }
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_app_id_is_routed_only_when_a_pinned_kms_signed_its_app_ca() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let other_kms = TestKms::new();
    let root = kms.write_root(&dir.path().join("kms-root.pem"));
    let gw = start_gateway_in(
        &dir.path().join("gw"),
        GatewayPorts::new(),
        &format!(
            "[verifier]\nallow_simulated = true\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\ncompose_hashes = \"any\"\napp_ids = \"any\"\nkms_roots = [\"{}\"]\n",
            root.display()
        ),
    );
    let ca = gw.dev_ca_pem();

    // The victim: a content-addressed app, routed.
    let victim = identity(VICTIM, 1);
    let victim_cert = ratls_cert(&victim);
    let victim_front = start_front(&victim_cert, "victim").await;
    let (s, b) = register(
        gw.ports.registration,
        &ca,
        &victim_cert,
        &register_body(victim_front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // Attacks: a CVM running other code that claims the victim's app id.
    let app = victim.app_id;
    let attacks: Vec<(&str, ratls::cert::RaTlsCert, &str)> = vec![
        (
            "self-signed, no KMS",
            ratls_cert(&named_identity(app, ATTACKER, 2)),
            "presented without an app CA",
        ),
        (
            "app CA from an unpinned KMS",
            ratls_cert_by(&named_identity(app, ATTACKER, 3), &other_kms.app_ca(&app)),
            "not signed by a pinned KMS root",
        ),
        (
            "another app's CA from the pinned KMS",
            ratls_cert_by(
                &named_identity(app, ATTACKER, 4),
                &kms.app_ca(&AppId([0x77; 20])),
            ),
            "not app",
        ),
    ];
    let mut fronts = Vec::new();
    for (what, cert, why) in &attacks {
        let front = start_front(cert, "attacker").await;
        let (s, b) = register(
            gw.ports.registration,
            &ca,
            cert,
            &register_body(front.addr, &[80]),
        )
        .await;
        fronts.push(front);
        assert_eq!(s, 403, "{what}: {b}");
        assert!(b.contains("app-authorisation"), "{what}: {b}");
        assert!(b.contains(why), "{what}: {b}");
    }

    // A named app whose app CA the pinned KMS signed is routed.
    let named_app: AppId = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e".parse().unwrap();
    let named = named_identity(named_app, NAMED, 5);
    let named_cert = ratls_cert_by(&named, &kms.app_ca(&named_app));
    let named_front = start_front(&named_cert, "named").await;
    let (s, b) = register(
        gw.ports.registration,
        &ca,
        &named_cert,
        &register_body(named_front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // The victim is unaffected: one instance, and all its traffic.
    assert_eq!(
        instances_of(&gw, &app).await,
        vec![victim.instance_id.to_hex()]
    );
    let c = client(&gw, &[host(&app), host(&named_app)], false);
    all_served_by(&c, &host(&app), "victim", 20).await;
    all_served_by(&c, &host(&named_app), "named", 3).await;

    // Counted, and shown on the page as refused at that step.
    let (_, metrics) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
    assert!(
        metrics.contains("teegate_registrations_total{result=\"app-authorisation\"} 3"),
        "{metrics}"
    );
    let base_client = client(&gw, &[BASE.to_string()], false);
    let page = base_client
        .get(format!("https://{BASE}/apps/{app}?format=json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("app-authorisation"), "{page}");
    assert!(page.contains(&victim.instance_id.to_hex()), "{page}");

    // A gateway that pins no KMS routes only content-addressed app ids.
    let plain = start_gateway_in(&dir.path().join("gw2"), GatewayPorts::new(), "");
    let (s, b) = register(
        plain.ports.registration,
        &plain.dev_ca_pem(),
        &named_cert,
        &register_body(named_front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b.contains("app-authorisation") && b.contains("kms_roots"),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_id_cannot_be_taken_from_another_app_or_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    // Until the gateway runs attested, its log says what that means for the traffic.
    assert!(
        gw.proc
            .log()
            .contains("this gateway is not attested: its operator can read the traffic"),
        "{}",
        gw.proc.log()
    );
    let ca = gw.dev_ca_pem();
    let victim = identity(VICTIM, 9);
    let victim_cert = ratls_cert(&victim);
    let victim_front = start_front(&victim_cert, "victim").await;
    let body = register_body(victim_front.addr, &[80]);
    let (s, b) = register(gw.ports.registration, &ca, &victim_cert, &body).await;
    assert_eq!(s, 200, "{b}");

    // Another attested app reuses the victim's (public) instance id.
    let thief = identity(ATTACKER, 9);
    let thief_cert = ratls_cert(&thief);
    let thief_front = start_front(&thief_cert, "thief").await;
    let (s, b) = register(
        gw.ports.registration,
        &ca,
        &thief_cert,
        &register_body(thief_front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b.contains("instance-conflict") && b.contains("another app"),
        "{b}"
    );

    // The victim's own app id and instance id, but a certificate of another key.
    let clone_cert = ratls_cert(&victim);
    let clone_front = start_front(&clone_cert, "clone").await;
    let (s, b) = register(
        gw.ports.registration,
        &ca,
        &clone_cert,
        &register_body(clone_front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b.contains("instance-conflict") && b.contains("lineage"),
        "{b}"
    );

    // Nothing moved: the app, the pinned name and the registry still reach the victim.
    let pinned = format!("{}.{BASE}", victim.instance_id);
    let c = client(
        &gw,
        &[host(&victim.app_id), pinned.clone(), host(&thief.app_id)],
        false,
    );
    all_served_by(&c, &host(&victim.app_id), "victim", 10).await;
    all_served_by(&c, &pinned, "victim", 5).await;
    assert_eq!(
        instances_of(&gw, &victim.app_id).await,
        vec![victim.instance_id.to_hex()]
    );
    assert!(instances_of(&gw, &thief.app_id).await.is_empty());
    let r = c
        .get(format!("https://{}/", host(&thief.app_id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (_, metrics) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
    assert!(
        metrics.contains("teegate_registrations_total{result=\"instance-conflict\"} 2"),
        "{metrics}"
    );

    // The holder renews as usual, and the other app registers under its own id.
    let (s, b) = register(gw.ports.registration, &ca, &victim_cert, &body).await;
    assert_eq!(s, 200, "{b}");
    let thief_own = identity(ATTACKER, 10);
    let thief_own_cert = ratls_cert(&thief_own);
    let (s, b) = register(
        gw.ports.registration,
        &ca,
        &thief_own_cert,
        &register_body(thief_front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // After a restart (state from the store) the victim still holds its id.
    let mut gw = gw;
    gw.proc.stop(Duration::from_secs(10));
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    assert_eq!(
        instances_of(&gw, &victim.app_id).await,
        vec![victim.instance_id.to_hex()]
    );
}
