//! `teegate verify` as a pinning client uses it: over a passthrough name through a real
//! gateway, and on certificate files; every failing pin is named.

mod support;

use std::process::Output;

use support::*;

const COMPOSE: &[u8] = b"{\"name\":\"verify-test\"}";

fn verify(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_teegate"))
        .arg("verify")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn certificate_file_pins_pass_and_each_wrong_pin_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let id = identity(COMPOSE, 1);
    let cert = ratls_cert(&id);
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, cert.cert_pem()).unwrap();
    let p = path.to_str().unwrap();
    let (app, hash) = (id.app_id.to_hex(), id.compose_hash.to_hex());

    let ok = verify(&[
        p,
        "--allow-simulated",
        "--app-id",
        &app,
        "--compose-hash",
        &hash,
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("verification    OK"));

    let o = verify(&[p, "--allow-simulated", "--compose-hash", &"ab".repeat(32)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("compose hash"), "{}", stderr(&o));
    let o = verify(&[p, "--allow-simulated", "--app-id", &"cd".repeat(20)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("app id"), "{}", stderr(&o));
    let o = verify(&[p, "--app-id", &app]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("SIMULATED"), "{}", stderr(&o));

    // KMS root: a certificate issued by the app CA passes with that CA pinned, and a
    // different root is named as the failure.
    let ca = ratls::cert::CertAuthority::generate("test KMS root", Some(1)).unwrap();
    let other = ratls::cert::CertAuthority::generate("another root", Some(1)).unwrap();
    let m = booted(
        std::sync::Arc::new(ratls::provider::SimulatedProvider::new()),
        &id,
    );
    let signed = ratls::cert::issue(
        &m,
        &id,
        &ratls::cert::CertProfile::server_and_client(
            vec!["x.test".into()],
            std::time::Duration::from_secs(600),
        ),
        Some(&ca),
    )
    .unwrap();
    let chain_path = dir.path().join("chain.pem");
    let chain: String = signed
        .rustls_chain()
        .iter()
        .map(|c| ratls::cert::pem_encode("CERTIFICATE", c))
        .collect();
    std::fs::write(&chain_path, chain).unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, ratls::cert::pem_encode("CERTIFICATE", ca.cert_der())).unwrap();
    let wrong = dir.path().join("wrong.pem");
    std::fs::write(
        &wrong,
        ratls::cert::pem_encode("CERTIFICATE", other.cert_der()),
    )
    .unwrap();
    let c = chain_path.to_str().unwrap();
    let o = verify(&[c, "--allow-simulated", "--kms-root", root.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = verify(&[
        c,
        "--allow-simulated",
        "--kms-root",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("pinned KMS root"), "{}", stderr(&o));

    // The same pins from a file.
    let pin_file = dir.path().join("pins.toml");
    std::fs::write(
        &pin_file,
        format!(
            "app_id = \"{app}\"\ncompose_hash = \"{}\"\n",
            "ef".repeat(32)
        ),
    )
    .unwrap();
    let o = verify(&[
        p,
        "--allow-simulated",
        "--pin-file",
        pin_file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("compose hash"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_a_live_instance_through_a_passthrough_name() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let id = identity(COMPOSE, 2);
    let cert = ratls_cert(&id);
    let front = start_front(&cert, "verify").await;
    let (status, body) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &register_body(front.addr, &[80]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let url = format!("https://{}s.{BASE}:{}/", id.app_id, gw.ports.https);
    let connect = format!("127.0.0.1:{}", gw.ports.https);
    let app = id.app_id.to_hex();
    let out = tokio::task::spawn_blocking(move || {
        verify(&[
            &url,
            "--connect",
            &connect,
            "--allow-simulated",
            "--app-id",
            &app,
            "--json",
        ])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["certificate"]["instance_id"], id.instance_id.to_hex());
}

#[test]
fn a_named_app_id_verifies_only_with_the_kms_root_that_signed_its_app_ca() {
    let dir = tempfile::tempdir().unwrap();
    let kms = TestKms::new();
    let root = kms.write_root(&dir.path().join("kms-root.pem"));
    let app: ratls::AppId = "6a".repeat(20).parse().unwrap();
    let id = named_identity(app, COMPOSE, 1);
    let write_chain = |name: &str, cert: &ratls::cert::RaTlsCert| {
        let path = dir.path().join(name);
        let pem: String = cert
            .rustls_chain()
            .iter()
            .map(|c| ratls::cert::pem_encode("CERTIFICATE", c))
            .collect();
        std::fs::write(&path, pem).unwrap();
        path
    };
    let good = write_chain("good.pem", &ratls_cert_by(&id, &kms.app_ca(&app)));
    let good = good.to_str().unwrap();
    let root = root.to_str().unwrap();
    let app_hex = app.to_hex();

    let o = verify(&[
        good,
        "--allow-simulated",
        "--kms-root",
        root,
        "--app-id",
        &app_hex,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Without the KMS root nothing vouches for the name.
    let o = verify(&[good, "--allow-simulated", "--app-id", &app_hex]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("app-authorisation"), "{}", stderr(&o));
    // Self-signed, and signed by another app's CA: refused at the same step.
    let selfsigned = write_chain("self.pem", &ratls_cert(&id));
    let o = verify(&[
        selfsigned.to_str().unwrap(),
        "--allow-simulated",
        "--kms-root",
        root,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("app-authorisation") || stderr(&o).contains("pinned KMS root"),
        "{}",
        stderr(&o)
    );
    let other = write_chain(
        "other.pem",
        &ratls_cert_by(&id, &kms.app_ca(&ratls::AppId([1; 20]))),
    );
    let o = verify(&[
        other.to_str().unwrap(),
        "--allow-simulated",
        "--kms-root",
        root,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("app-authorisation"), "{}", stderr(&o));
}

#[test]
fn an_image_pin_checks_the_services_measured_image() {
    let dir = tempfile::tempdir().unwrap();
    let id = identity(COMPOSE, 3);
    let m = booted(
        std::sync::Arc::new(ratls::provider::SimulatedProvider::new()),
        &id,
    );
    let image = format!("sha256:{}", "4b".repeat(32));
    m.emit("image", format!("web@{image}").into_bytes())
        .unwrap();
    let cert = ratls::cert::issue(
        &m,
        &id,
        &ratls::cert::CertProfile::server_and_client(
            vec!["x.test".into()],
            std::time::Duration::from_secs(600),
        ),
        None,
    )
    .unwrap();
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, cert.cert_pem()).unwrap();
    let p = path.to_str().unwrap();

    let ok = verify(&[p, "--allow-simulated", "--image", &format!("web={image}")]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&image));
    let other = format!("web=sha256:{}", "4c".repeat(32));
    let o = verify(&[p, "--allow-simulated", "--image", &other]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("image") && stderr(&o).contains(&image),
        "the measured image is named: {}",
        stderr(&o)
    );
    let o = verify(&[p, "--allow-simulated", "--image", &format!("db={image}")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no image event for service db"),
        "{}",
        stderr(&o)
    );
    // A tag is no pin: refused before anything is checked.
    let o = verify(&[p, "--allow-simulated", "--image", "web=latest"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("SERVICE=sha256"), "{}", stderr(&o));
}
