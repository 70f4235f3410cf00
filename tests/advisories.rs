//! dstack's published flaws, one class a test, against teegate's real processes: each
//! test would fail if teegate had the flaw. Named after the class (dstack issue or
//! advisory). App ids not authorised for their compose hash are covered where that
//! feature is tested, in `tests/route_integrity.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ratls::cert::{issue, CertProfile};
use ratls::eventlog::names;
use ratls::provider::{Measurer, SimulatedProvider};
use support::*;

const VICTIM: &[u8] = br#"{"name":"advisory-victim"}"#;

/// dstack #674: admin calls without authentication. Every admin call without the token,
/// or with a wrong one, is refused, and the victim's registration is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dstack_674_unauthenticated_admin_calls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let id = identity(VICTIM, 1);
    let cert = ratls_cert(&id);
    let front = start_front(&cert, "victim").await;
    let (s, b) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &register_body(front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let inst = id.instance_id.to_hex();
    for (method, path) in [
        ("GET", "/v1/apps".to_string()),
        ("GET", format!("/v1/apps/{}", id.app_id)),
        ("GET", "/v1/instances".to_string()),
        ("GET", "/v1/replicas".to_string()),
        ("DELETE", format!("/v1/instances/{inst}")),
    ] {
        for token in [None, Some("wrong-token-0123456789abcdef")] {
            let (status, body) = http_get(gw.ports.admin, &path, token, method).await;
            assert!(
                status == 401 || status == 403,
                "{method} {path} with {token:?} answered {status}: {body}"
            );
            assert!(!body.contains(&inst), "{method} {path} leaked the instance");
        }
    }
    let (status, body) = http_get(
        gw.ports.admin,
        &format!("/v1/apps/{}", id.app_id),
        Some("test-admin-token-0123456789"),
        "GET",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&inst),
        "the victim is still registered: {body}"
    );
}

/// GHSA-9fcv: app info trusted from unverified fields instead of the quote. A certificate
/// whose claims name one app while its (replaying, quoted) event log records another is
/// refused, and so is one claiming to be real TDX on a simulated quote; the app it claims
/// gains nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghsa_9fcv_app_info_is_taken_from_the_quote_not_from_unverified_fields() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let victim = identity(VICTIM, 1);
    let attacker = identity(br#"{"name":"advisory-attacker"}"#, 2);
    // The quote's RTMR3 (and the log) say "attacker"; the claims say "victim".
    let m = Measurer::new(Arc::new(SimulatedProvider::new()));
    m.emit(names::COMPOSE_HASH, victim.compose_hash.0.to_vec())
        .unwrap();
    m.emit(names::APP_ID, attacker.app_id.0.to_vec()).unwrap();
    m.emit(names::INSTANCE_ID, victim.instance_id.0.to_vec())
        .unwrap();
    m.emit(names::KEY_PROVIDER, b"kms".to_vec()).unwrap();
    let profile =
        CertProfile::server_and_client(vec![format!("*.{BASE}")], Duration::from_secs(3600));
    let lying = issue(&m, &victim, &profile, None).unwrap();
    let front = start_front(&lying, "attacker").await;
    let (s, b) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &lying,
        &register_body(front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b.contains("event-log-replay") && b.contains("app-id"),
        "{b}"
    );
    let (_, apps) = http_get(
        gw.ports.admin,
        "/v1/apps",
        Some("test-admin-token-0123456789"),
        "GET",
    )
    .await;
    assert!(!apps.contains(&victim.app_id.to_hex()), "{apps}");
}

/// dstack #831: custom-domain TXT records that point the gateway at loopback or internal
/// addresses. Names whose own addresses are loopback, private, link-local (the cloud
/// metadata address), or IPv4-mapped private are refused (404, nothing proxied), while the
/// app they name keeps serving its public custom domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dstack_831_custom_domain_txt_pointing_at_internal_addresses_is_refused() {
    use hickory_proto::rr::rdata::{A, AAAA, TXT};
    use hickory_proto::rr::RData;
    let victim = identity(VICTIM, 1);
    let app = victim.app_id.to_hex();
    let txt = || RData::TXT(TXT::new(vec![app.clone()]));
    let internal = [
        ("loopback.example", RData::A(A::new(127, 0, 0, 1))),
        ("metadata.example", RData::A(A::new(169, 254, 169, 254))),
        ("private.example", RData::A(A::new(10, 0, 0, 5))),
        (
            "v6-loopback.example",
            RData::AAAA(AAAA::from(std::net::Ipv6Addr::LOCALHOST)),
        ),
        (
            "mapped.example",
            RData::AAAA(AAAA::from(
                "::ffff:192.168.1.1".parse::<std::net::Ipv6Addr>().unwrap(),
            )),
        ),
    ];
    let mut answers = vec![
        ("_teegate-app.public.example.", txt()),
        ("public.example.", RData::A(A::new(203, 0, 113, 10))),
    ];
    for (name, addr) in &internal {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        answers.push((leak(format!("_teegate-app.{name}.")), txt()));
        answers.push((leak(format!("{name}.")), addr.clone()));
    }
    let (dns, _) = start_test_dns(answers).await;
    let dir = tempfile::tempdir().unwrap();
    let mut names: Vec<&str> = internal.iter().map(|(n, _)| *n).collect();
    names.push("public.example");
    store_dev_certs(dir.path(), &names).await;
    let gw = start_gateway_in(
        dir.path(),
        GatewayPorts::new(),
        &format!(
            "[custom_domains]\nenabled = true\nallow = [\"example\"]\nnameservers = [\"{dns}\"]\n"
        ),
    );
    let cert = ratls_cert(&victim);
    let front = start_front(&cert, "victim").await;
    let (s, b) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &register_body(front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let hosts: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let c = client(&gw, &hosts, false);
    for (name, _) in &internal {
        let r = c.get(format!("https://{name}/")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{name}");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("instance="),
            "{name} reached the app: {body}"
        );
    }
    let r = c.get("https://public.example/ok").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("instance=victim") && body.contains("path=/ok"),
        "{body}"
    );
}

/// dstack #566/#567: compressed or oversized event-log and certificate extensions, and
/// allocation sized by length fields. A registration whose client certificate carries a
/// gzip bomb, CBOR length fields claiming 2^32..2^64 items, or an event log over its bound
/// is refused at evidence parsing with the reason; the gateway stays up and the victim
/// registered before keeps its route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dstack_566_567_compressed_oversized_and_length_bomb_evidence_is_refused_at_registration() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let victim = identity(VICTIM, 1);
    let cert = ratls_cert(&victim);
    let front = start_front(&cert, "victim").await;
    let (s, b) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &register_body(front.addr, &[80]),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let attacker = ratls_cert(&identity(br#"{"name":"advisory-566"}"#, 3));
    for (what, der) in hostile::small_hostile_certs(&attacker) {
        let (s, b) = register_with(
            gw.ports.registration,
            &gw.dev_ca_pem(),
            vec![der.into()],
            attacker.rustls_key(),
            &register_body(front.addr, &[80]),
        )
        .await;
        assert_eq!(s, 403, "{what}: {b}");
        assert!(
            b.contains("evidence") || b.contains("event log"),
            "{what}: {b}"
        );
    }
    // An oversized evidence extension announced as a front certificate.
    let big = hostile::oversized_evidence_cert(&attacker);
    let mut body = register_body(front.addr, &[80]);
    body["front_certs"] = serde_json::json!([hex::encode(&big)]);
    let (s, b) = register(gw.ports.registration, &gw.dev_ca_pem(), &attacker, &body).await;
    assert!(s == 403 || s == 413, "oversized front certificate: {s} {b}");
    let c = client(&gw, &[format!("{}.{BASE}", victim.app_id)], false);
    let r = c
        .get(format!("https://{}.{BASE}/still", victim.app_id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("instance=victim"));
}

/// dstack #566/#567 through `teegate verify`: each hostile certificate (and one with an
/// evidence extension over its bound) is refused, naming the evidence, within seconds and
/// without a large allocation; the genuine certificate still verifies.
#[test]
fn dstack_566_567_compressed_oversized_and_length_bomb_evidence_is_refused_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let base = ratls_cert(&identity(br#"{"name":"advisory-566-verify"}"#, 4));
    let mut certs = hostile::small_hostile_certs(&base);
    certs.push((
        "oversized-extension",
        hostile::oversized_evidence_cert(&base),
    ));
    certs.push(("genuine", base.cert_der.clone()));
    for (what, der) in certs {
        let path = dir.path().join(format!("{what}.pem"));
        std::fs::write(&path, ratls::cert::pem_encode("CERTIFICATE", &der)).unwrap();
        let started = std::time::Instant::now();
        let o = teegate(&["verify", path.to_str().unwrap(), "--allow-simulated"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what} took {:?}",
            started.elapsed()
        );
        if what == "genuine" {
            assert!(o.status.success(), "{err}");
        } else {
            assert!(!o.status.success(), "{what} verified");
            // Over 64 KiB the X.509 parser itself refuses the certificate, before evidence.
            let named = err.contains("evidence")
                || err.contains("event log")
                || (what == "oversized-extension" && err.contains("invalid peer certificate"));
            assert!(named, "{what}: {err}");
        }
    }
    // The largest child this test waited for stayed small: no length field was believed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    assert!(
        usage.ru_maxrss < 512 * 1024,
        "a child reached {} kB",
        usage.ru_maxrss
    );
}

/// dstack #557: boot events forged from inside the CVM. A container asking the guest API
/// to emit any event name the boot flow records is refused, and RTMR3 is unchanged.
#[tokio::test]
async fn dstack_557_forged_boot_events_from_inside_the_cvm_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let compose = dir.path().join("app-compose.json");
    std::fs::write(
        &compose,
        r#"{"name":"advisory-557","docker_compose":"services:\n  web:\n    image: x@sha256:0000000000000000000000000000000000000000000000000000000000000000\n    ports: [\"80\"]\n","key_provider":"none","exposed_ports":[80],"gateway_urls":[]}"#,
    )
    .unwrap();
    let socket = dir.path().join("run/teegate.sock");
    let cfg = dir.path().join("sidecar.toml");
    std::fs::write(
        &cfg,
        format!(
            "compose_file = \"{}\"\nsocket_path = \"{}\"\nlisten_front = \"127.0.0.1:0\"\nkms_url = \"https://127.0.0.1:1\"\nquote_provider = \"simulated\"\ndata_dir = \"{}\"\nruntime = \"none\"\n[upstreams]\n80 = \"127.0.0.1:1\"\n",
            compose.display(),
            socket.display(),
            dir.path().join("data").display(),
        ),
    )
    .unwrap();
    let _sidecar = spawn_teegate(
        &["sidecar", "--config", cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    let rtmr3 = |att: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(att).unwrap();
        let q = hex::decode(v["quote"].as_str().unwrap()).unwrap();
        ratls::Quote::parse(&q).unwrap().rtmr3().to_hex()
    };
    let (_, before) = guest(&socket, "GET", "/attestation", "").await;
    for name in names::RESERVED {
        let (status, body) = guest(
            &socket,
            "POST",
            "/emit-event",
            &format!(r#"{{"name":"{name}","payload":"00"}}"#),
        )
        .await;
        assert_eq!(status, 403, "{name}: {body}");
        assert!(body.contains("reserved"), "{name}: {body}");
    }
    let (_, after) = guest(&socket, "GET", "/attestation", "").await;
    assert_eq!(rtmr3(&before), rtmr3(&after), "RTMR3 moved");
    // An app's own event still works: the refusal is about the names.
    let (status, body) = guest(
        &socket,
        "POST",
        "/emit-event",
        r#"{"name":"app-ready","payload":"01"}"#,
    )
    .await;
    assert!(status == 200 || status == 204, "{body}");
}

/// dstack #619: an unauthenticated KMS call that returns CA or key material. Without a
/// client certificate (or with one that is not RA-TLS) the KMS releases nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dstack_619_unauthenticated_kms_calls_return_no_ca_or_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let app = ratls::ComposeHash::of(VICTIM).default_app_id();
    let cfg = dir.path().join("kms.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nquote_provider = \"simulated\"\n[verifier]\nallow_simulated = true\n[policy.os]\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\n[policy.apps.{app}]\ncompose_hashes = \"any\"\nallow_simulated = true\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let _kms = spawn_teegate(
        &["kms", "--config", cfg.to_str().unwrap()],
        "ready",
        Duration::from_secs(30),
    );
    // A TLS client that checks nothing and presents no certificate: the outsider.
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider())))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    for (method, path) in [("POST", "/v1/app-keys"), ("POST", "/v1/onboard")] {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(
            status == 401 || status == 403,
            "{method} {path} answered {status}: {text}"
        );
        for secret in [
            "PRIVATE KEY",
            "disk_key",
            "app_ca_key",
            "env_private_key",
            "root_secret",
        ] {
            assert!(
                !text.contains(secret),
                "{method} {path} leaked {secret}: {text}"
            );
        }
    }
}

#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn vectors() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors")
}

fn teegate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_teegate"))
        .args(args)
        .output()
        .unwrap()
}

/// The 2026 attestation-pipeline audit: QE identity not checked. A real quote with QE
/// identity collateral whose content was altered (signature no longer matching) is
/// refused at quote-signature; the same quote with the genuine collateral passes.
#[test]
fn audit_2026_qe_identity_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let quote = vectors().join("dcap-qvl_tdx_quote");
    let good = vectors().join("dcap-qvl_tdx_quote_collateral.json");
    let at = "2025-06-20T00:00:00Z";
    let o = teegate(&[
        "quote",
        quote.to_str().unwrap(),
        "--collateral",
        good.to_str().unwrap(),
        "--at",
        at,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    let qe = c["qe_identity"]
        .as_str()
        .unwrap()
        .replace("\"isvprodid\":2", "\"isvprodid\":3");
    assert_ne!(
        qe,
        c["qe_identity"].as_str().unwrap(),
        "the vector changed shape"
    );
    c["qe_identity"] = qe.into();
    let bad = dir.path().join("tampered-qe.json");
    std::fs::write(&bad, c.to_string()).unwrap();
    let o = teegate(&[
        "quote",
        quote.to_str().unwrap(),
        "--collateral",
        bad.to_str().unwrap(),
        "--at",
        at,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("quote-signature"), "{err}");
}

/// The 2026 audit: TCB status not checked. A quote whose platform has no matching TCB
/// level is refused at tcb-status, and out-of-date statuses cannot even be configured.
#[test]
fn audit_2026_tcb_status_is_checked() {
    let quote = vectors().join("dcap-qvl_tdx_quote_outdated");
    let coll = vectors().join("dcap-qvl_tdx_quote_outdated_collateral.json");
    let o = teegate(&[
        "quote",
        quote.to_str().unwrap(),
        "--collateral",
        coll.to_str().unwrap(),
        "--at",
        "2026-02-20T00:00:00Z",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("tcb-status") || err.contains("TCB"), "{err}");
    let e = config::from_toml_str::<config::GatewayConfig>(
        "base_domain = \"x.test\"\n[verifier]\ntcb_statuses = [\"OutOfDate\"]\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("tcb_statuses"), "{e}");
}

/// The 2026 audit: a PCCS fetched without TLS verification, or at a URL the client
/// chooses. teegate fetches collateral only from the PCCS its own configuration names
/// (https, or http on loopback), and a PCCS whose certificate does not verify is
/// refused, never used.
#[test]
fn audit_2026_pccs_is_verified_and_chosen_by_the_verifier_only() {
    // A TLS server with a self-signed certificate, standing in for a PCCS on the path.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut conn = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        // The handshake must fail on the client's side; nothing is ever sent back.
        let _ = conn.complete_io(&mut tcp);
        conn.wants_read()
    });
    let pccs = ratls::collateral::PccsClient::new(
        &format!("https://localhost:{}", addr.port()),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = pccs
        .fetch("B0C06F000000", "platform")
        .unwrap_err()
        .to_string();
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("tls"),
        "{err}"
    );
    let _ = served.join();
    // Plain http to a PCCS that is not on loopback is refused by configuration.
    let e = config::from_toml_str::<config::GatewayConfig>(
        "base_domain = \"x.test\"\n[verifier.collateral]\npccs_url = \"http://pccs.example.com:8081/\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("pccs_url"), "{e}");
    // A release request cannot name a PCCS (or anything else) for the KMS to use.
    let r: Result<kms::api::AppKeysRequest, _> =
        serde_json::from_str(r#"{"pccs_url":"http://attacker.example/"}"#);
    assert!(r.is_err());
}
