//! The gateway's own evidence and `teegate verify` of a URL the gateway terminates, against
//! real processes: a `teegate kms` and a `teegate sidecar` (simulated TDX) standing for the
//! gateway's CVM, an attested `teegate gateway` using that sidecar's guest API, and an app
//! instance registered with it. The evidence binds the certificate the gateway serves;
//! `teegate verify` (and `ratls::site` for programs) passes with the right pins, and names
//! the step when a pin is wrong (`gateway-pin`), when a TLS-terminating relay with its own
//! certificate sits in front (`gateway-key-binding`), and when that relay tampers with the
//! evidence (`gateway-quote`). The gateway is unaffected by all of it.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use ratls::gateway_evidence::{GatewayClaims, GatewayDocument, KeyRole, WELL_KNOWN_PATH};
use ratls::site::{SiteCheck, SiteStep};
use support::cvm::{gateway_compose, start_gateway_cvm};
use support::*;

const APP_COMPOSE: &[u8] = b"{\"name\":\"evidence-app\"}";

/// Runs `teegate verify <args>`; returns (exit code, stdout, stderr). Bounded.
fn verify_cli(args: &[String]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_teegate"))
        .arg("verify")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn teegate verify");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("teegate verify {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What is being relayed to the client, when a relay sits in front of the gateway.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tamper {
    /// Only its own TLS certificate (a TLS-terminating proxy).
    Nothing,
    /// One byte of the evidence's quote flipped.
    Quote,
    /// The claims buffer rewritten to list the relay's own key too.
    Claims,
    /// An event's payload rewritten (its digest recomputed, so it decodes).
    Event,
}

/// A TLS-terminating relay with its own CA and certificate for `*.<BASE>` and `<BASE>`,
/// forwarding every request to the gateway over verified TLS and rewriting the gateway's
/// evidence as `tamper` says.
struct Relay {
    addr: SocketAddr,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tampered(body: &[u8], tamper: Tamper, relay_spki: ratls::SpkiHash) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_slice(body).expect("evidence JSON");
    let ev = &mut doc["evidence"];
    match tamper {
        Tamper::Nothing => return body.to_vec(),
        Tamper::Quote => {
            let mut q = hex::decode(ev["quote"].as_str().unwrap()).unwrap();
            q[200] ^= 1;
            ev["quote"] = hex::encode(q).into();
        }
        Tamper::Claims => {
            let cb = hex::decode(ev["claims_buffer"].as_str().unwrap()).unwrap();
            let mut claims = GatewayClaims::from_claims_buffer(&cb).unwrap();
            claims.keys.push(ratls::gateway_evidence::BoundKey {
                role: KeyRole::Certificate,
                name: format!("*.{BASE}"),
                spki_sha256: relay_spki,
            });
            ev["claims_buffer"] = hex::encode(claims.to_claims_buffer().unwrap()).into();
        }
        Tamper::Event => {
            let log: ratls::eventlog::EventLog =
                serde_json::from_value(ev["event_log"].clone()).unwrap();
            let mut forged = ratls::eventlog::EventLog::new();
            for e in log.events() {
                let payload = if e.name == ratls::eventlog::names::KEY_PROVIDER {
                    ratls::eventlog::names::key_provider_payload("none", "")
                } else {
                    e.payload.clone()
                };
                forged
                    .push(ratls::eventlog::Event::new(&e.name, payload).unwrap())
                    .unwrap();
            }
            ev["event_log"] = serde_json::to_value(&forged).unwrap();
        }
    }
    serde_json::to_vec(&doc).unwrap()
}

async fn start_relay(gw: &Gateway, app_host: &str, tamper: Tamper) -> Relay {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "relay test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![format!("*.{BASE}"), BASE.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let relay_spki = ratls::SpkiHash::of_certificate(leaf.der()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let upstream = client(gw, &[BASE.to_string(), app_host.to_string()], false);
    let gw_port = gw.ports.https;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let upstream = upstream.clone();
                        async move {
                            let host = req
                                .headers()
                                .get(http::header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or(BASE)
                                .split(':')
                                .next()
                                .unwrap_or(BASE)
                                .to_string();
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_default();
                            let resp = upstream
                                .get(format!("https://{host}:{gw_port}{path}"))
                                .header("accept", "application/json")
                                .send()
                                .await;
                            let (status, body) = match resp {
                                Ok(r) => (
                                    r.status().as_u16(),
                                    r.bytes().await.unwrap_or_default().to_vec(),
                                ),
                                Err(e) => (502, e.to_string().into_bytes()),
                            };
                            let body = if path.starts_with(WELL_KNOWN_PATH) && status == 200 {
                                tampered(&body, tamper, relay_spki)
                            } else {
                                body
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Relay {
        addr,
        ca_pem: ca.pem(),
        task,
    }
}

/// The served certificate for `host` (DER), trusting the gateway's dev CA.
async fn served_cert(gw: &Gateway, host: &str) -> Vec<u8> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(dev_roots(&gw.dev_ca_pem()))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.https_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The site check a program makes, as `teegate verify` makes it.
fn site_check(roots_pem: &str, connect: SocketAddr, gateway: ratls::pins::Pins) -> SiteCheck {
    let mut check = SiteCheck::new(dev_roots(roots_pem))
        .gateway(ratls::pins::Pins {
            allow_simulated: true,
            ..gateway
        })
        .app(ratls::pins::Pins {
            allow_simulated: true,
            ..Default::default()
        });
    check.connect = Some(connect.to_string());
    check.timeout = Duration::from_secs(20);
    check
}

async fn verify_lib(url: String, check: SiteCheck) -> ratls::site::SiteReport {
    tokio::task::spawn_blocking(move || ratls::site::verify_site(&url, &check))
        .await
        .unwrap()
}

async fn verify_cli_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || verify_cli(&args))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attested_gateway_publishes_evidence_that_verify_checks_step_by_step() {
    let dir = tempfile::tempdir().unwrap();
    let cvm = start_gateway_cvm(dir.path(), &gateway_compose("evidence-test-gateway"));
    let gw = start_gateway_in(
        &dir.path().join("gw"),
        GatewayPorts::new(),
        &format!("[attestation]\nguest_api = \"{}\"\n", cvm.socket.display()),
    );
    let id = identity(APP_COMPOSE, 1);
    let cert = ratls_cert(&id);
    let _front = start_front(&cert, &id.instance_id.to_hex()).await;
    let (status, body) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &register_body(_front.addr, &[80]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let app_host = format!("{}.{BASE}", id.app_id);
    let url = format!("https://{app_host}:{}/", gw.ports.https);
    let ca = write(dir.path(), "dev-ca.pem", &gw.dev_ca_pem());
    let direct = gw.https_addr();

    // 1. The evidence is published and binds the certificate the gateway serves.
    let c = client(&gw, &[BASE.to_string(), app_host.clone()], false);
    let r = c
        .get(format!(
            "https://{BASE}:{}{WELL_KNOWN_PATH}",
            gw.ports.https
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc = GatewayDocument::from_json(&r.bytes().await.unwrap()).unwrap();
    assert!(doc.attested);
    let ev = doc.clone().into_evidence().unwrap();
    assert_eq!(ev.compose_hash, cvm.compose_hash);
    assert_eq!(ev.app_id, cvm.app_id);
    assert!(ev.simulated);
    let served = served_cert(&gw, &app_host).await;
    let served_spki = ratls::SpkiHash::of_certificate(&served).unwrap();
    let claims = doc.claims.clone().unwrap();
    let bound = claims
        .find(&served_spki)
        .expect("the served certificate's key is bound");
    assert_eq!(bound.role, KeyRole::Certificate);
    assert_eq!(bound.name, format!("*.{BASE}"));
    let pins = ratls::pins::Pins {
        allow_simulated: true,
        compose_hash: Some(cvm.compose_hash),
        ..Default::default()
    };
    let verified = pins.verifier().verify_gateway(&ev).unwrap();
    verified.binding_of_certificate(&served).unwrap();
    // The app page gives each instance's certificate, for clients to verify themselves.
    let page = get_json(
        &c,
        &format!("https://{BASE}:{}/apps/{}.json", gw.ports.https, id.app_id),
    )
    .await;
    assert_eq!(
        page["instances"][0]["certificates"][0],
        hex::encode(&cert.cert_der)
    );
    assert_eq!(page["gateway"]["attested"], true);
    assert_eq!(page["gateway"]["verdict"], "verified");
    assert_eq!(page["gateway"]["served"]["bound"], true);

    // 2. teegate verify with the right pins, from flags and from a pin file.
    let base_args = |connect: SocketAddr, ca: &Path| {
        vec![
            url.clone(),
            "--connect".into(),
            connect.to_string(),
            "--ca".into(),
            ca.display().to_string(),
            "--allow-simulated".into(),
        ]
    };
    let mut args = base_args(direct, &ca);
    args.extend([
        "--gateway-compose-hash".into(),
        cvm.compose_hash.to_hex(),
        "--gateway-app-id".into(),
        cvm.app_id.to_hex(),
        "--gateway-mrtd".into(),
        ratls::provider::SimulatedProvider::new().mrtd().to_hex(),
    ]);
    let (code, out, err) = verify_cli_async(args.clone()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("verification    OK"), "{out}");
    assert!(out.contains("SIMULATED TDX"), "{out}");
    assert!(
        out.contains(&format!(
            "the received certificate's key (certificate *.{BASE})"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} verified", id.instance_id)),
        "{out}"
    );
    let pin_file = write(
        dir.path(),
        "pins.toml",
        &format!(
            "compose_hash = \"{}\"\n[gateway]\ncompose_hash = \"{}\"\nca = \"{}\"\n",
            id.compose_hash,
            cvm.compose_hash,
            ca.display()
        ),
    );
    let (code, out, err) = verify_cli_async(vec![
        url.clone(),
        "--connect".into(),
        direct.to_string(),
        "--pin-file".into(),
        pin_file.display().to_string(),
        "--allow-simulated".into(),
        "--json".into(),
    ])
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["kind"], "terminated");
    assert_eq!(json["gateway"]["compose_hash"], cvm.compose_hash.to_hex());
    assert_eq!(json["bound_key"]["spki_sha256"], served_spki.to_hex());
    assert_eq!(json["instances"][0]["ok"], true);

    // 3. A wrong gateway pin fails at gateway-pin, naming what differs.
    for (flag, value, what) in [
        ("--gateway-compose-hash", "ab".repeat(32), "compose hash"),
        ("--gateway-mrtd", "cd".repeat(48), "MRTD"),
        ("--gateway-app-id", "ef".repeat(20), "app id"),
    ] {
        let mut args = base_args(direct, &ca);
        args.extend([flag.to_string(), value]);
        let (code, out, err) = verify_cli_async(args).await;
        assert_eq!(code, 1, "{flag}: {out}\n{err}");
        assert!(
            err.contains("verification failed at gateway-pin"),
            "{flag}: {err}"
        );
        assert!(err.contains(what), "{flag}: {err}");
    }
    // A wrong app pin is checked on the instances, by this client.
    let mut args = base_args(direct, &ca);
    args.extend(["--compose-hash".into(), "ab".repeat(32)]);
    let (code, _, err) = verify_cli_async(args).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("verification failed at policy: instance"),
        "{err}"
    );

    // 4. A TLS-terminating relay in front, with a certificate of its own that the client
    // trusts: the gateway's evidence does not bind it.
    let relay = start_relay(&gw, &app_host, Tamper::Nothing).await;
    let relay_ca = write(dir.path(), "relay-ca.pem", &relay.ca_pem);
    let (code, out, err) = verify_cli_async(base_args(relay.addr, &relay_ca)).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("verification failed at gateway-key-binding"),
        "{err}"
    );
    assert!(err.contains(&format!("*.{BASE}")), "{err}");
    let report = verify_lib(
        url.clone(),
        site_check(&relay.ca_pem, relay.addr, Default::default()),
    )
    .await;
    assert_eq!(
        report.error.as_ref().unwrap().step,
        SiteStep::GatewayKeyBinding,
        "{:?}",
        report.error
    );
    assert!(report.gateway.is_some(), "the evidence itself verified");
    drop(relay);

    // 5. A relay that tampers with the evidence: it fails at gateway-quote, whatever the
    // relay changed, before any key is compared.
    for tamper in [Tamper::Quote, Tamper::Claims, Tamper::Event] {
        let relay = start_relay(&gw, &app_host, tamper).await;
        std::fs::write(&relay_ca, &relay.ca_pem).unwrap();
        let (code, out, err) = verify_cli_async(base_args(relay.addr, &relay_ca)).await;
        assert_eq!(code, 1, "{tamper:?}: {out}\n{err}");
        assert!(
            err.contains("verification failed at gateway-quote"),
            "{tamper:?}: {err}"
        );
        let inner = match tamper {
            Tamper::Quote => "quote-signature",
            Tamper::Claims => "key-binding",
            _ => "event-log-replay",
        };
        assert!(err.contains(inner), "{tamper:?}: {err}");
        let report = verify_lib(
            url.clone(),
            site_check(&relay.ca_pem, relay.addr, Default::default()),
        )
        .await;
        assert_eq!(
            report.error.as_ref().unwrap().step,
            SiteStep::GatewayQuote,
            "{tamper:?}"
        );
        assert!(report.gateway.is_none());
    }

    // 6. The library, direct: right pins pass, a wrong one fails at gateway-pin.
    let report = verify_lib(
        url.clone(),
        site_check(
            &gw.dev_ca_pem(),
            direct,
            ratls::pins::Pins {
                compose_hash: Some(cvm.compose_hash),
                ..Default::default()
            },
        ),
    )
    .await;
    report.result().unwrap();
    assert_eq!(report.instances.len(), 1);
    assert_eq!(report.bound.as_ref().unwrap().spki_sha256, served_spki);
    let report = verify_lib(
        url.clone(),
        site_check(
            &gw.dev_ca_pem(),
            direct,
            ratls::pins::Pins {
                compose_hash: Some(ratls::ComposeHash([1; 32])),
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(report.error.unwrap().step, SiteStep::GatewayPin);

    // The gateway was unaffected by all of it: it serves the app, and verifies as before.
    let r = c
        .get(format!("https://{app_host}:{}/x", gw.ports.https))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(&id.instance_id.to_hex()));
    let (code, out, err) = verify_cli_async(base_args(direct, &ca)).await;
    assert_eq!(code, 0, "{out}\n{err}");

    // 7. Passthrough names keep working: the instance's own RA-TLS certificate.
    let (code, out, err) = verify_cli_async(vec![
        format!("https://{}s.{BASE}:{}/", id.app_id, gw.ports.https),
        "--connect".into(),
        direct.to_string(),
        "--allow-simulated".into(),
        "--app-id".into(),
        id.app_id.to_hex(),
    ])
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("app id          {}", id.app_id)),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unattested_gateway_says_so_and_verify_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let c = client(&gw, &[BASE.to_string()], false);
    let r = c
        .get(format!(
            "https://{BASE}:{}{WELL_KNOWN_PATH}",
            gw.ports.https
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["attested"], false);
    assert_eq!(doc["note"], ratls::gateway_evidence::NOT_ATTESTED);
    let ca = write(dir.path(), "ca.pem", &gw.dev_ca_pem());
    let url = format!("https://{}.{BASE}:{}/", "ab".repeat(20), gw.ports.https);
    let (code, out, err) = verify_cli_async(vec![
        url,
        "--connect".into(),
        gw.https_addr().to_string(),
        "--ca".into(),
        ca.display().to_string(),
        "--allow-simulated".into(),
    ])
    .await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("verification failed at gateway-quote: this gateway is not attested: its operator can read the traffic"),
        "{err}"
    );

    // Every other surface says it too: the start-up log, the index's JSON twin, and the
    // page as a browser renders it.
    assert!(
        gw.proc
            .log()
            .contains(ratls::gateway_evidence::NOT_ATTESTED),
        "{}",
        gw.proc.log()
    );
    let index = get_json(&c, &format!("https://{BASE}:{}/", gw.ports.https)).await;
    assert_eq!(index["gateway"]["attested"], false, "{index}");
    assert_eq!(
        index["gateway"]["note"],
        ratls::gateway_evidence::NOT_ATTESTED
    );
    let profile = dir.path().join("chromium");
    let url = format!("https://{BASE}:{}/", gw.ports.https);
    let dom = tokio::task::block_in_place(|| {
        support::chromium::chromium(&gw, &profile, &url, &["--dump-dom"])
    });
    assert!(
        dom.contains("data-attested=\"false\"")
            && dom.contains("this gateway is not attested: its operator can read the traffic"),
        "no unattested-gateway banner in the rendered page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_is_requoted_when_a_key_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let cvm = start_gateway_cvm(dir.path(), &gateway_compose("evidence-requote-gateway"));
    let resolver = Arc::new(gateway::certs::CertResolver::new(BASE, provider()));
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    let sealing = gateway::seal::SealKey::load_or_create_file(&ca_dir.join("seal.key")).unwrap();
    let ca = gateway::certs::DevCa::load_or_create(&ca_dir, &sealing).unwrap();
    resolver.install(&ca.issue_wildcard(BASE).unwrap()).unwrap();
    let held = Arc::new(gateway::evidence::HeldKeys::new(resolver.clone()));
    let (api, info) = gateway::guest::GuestApi::connect(&cvm.socket)
        .await
        .unwrap();
    let pins = ratls::pins::Pins {
        allow_simulated: true,
        ..Default::default()
    };
    let publisher = Arc::new(
        gateway::evidence::Publisher::attested(api, info, held.clone(), pins.verifier())
            .await
            .unwrap(),
    );
    let first = publisher.current();
    assert_eq!(first.document.claims.as_ref().unwrap().keys.len(), 1);
    // A custom domain's certificate arrives before the publisher runs: it must not be
    // missed for want of a subscriber (nothing else changes until the ACME account below).
    let custom = ca
        .issue("shop.example", vec!["shop.example".into()])
        .unwrap();
    resolver.install(&custom).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runner = {
        let p = publisher.clone();
        tokio::spawn(async move { p.run(stopped).await })
    };
    let wait_keys = |n: usize, step: &'static str| {
        let publisher = publisher.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let now = publisher.current();
                if now.document.claims.as_ref().unwrap().keys.len() == n {
                    return now;
                }
                assert!(
                    Instant::now() < deadline,
                    "{step}: not re-quoted within 15 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_keys(2, "a certificate installed before the publisher ran").await;
    // Then, while it runs, the ACME account.
    held.set_acme_account("https://acme.test/acct/7", ratls::SpkiHash([7; 32]));
    let now = wait_keys(3, "the ACME account added while it ran").await;
    let ev = now.document.evidence.clone().unwrap();
    let v = pins.verifier().verify_gateway(&ev).unwrap();
    let custom_der = pem::parse_many(&custom.cert_chain_pem).unwrap()[0]
        .contents()
        .to_vec();
    assert_eq!(
        v.binding_of_certificate(&custom_der).unwrap().name,
        "shop.example"
    );
    assert!(v
        .claims()
        .keys
        .iter()
        .any(|k| k.role == KeyRole::AcmeAccount && k.name == "https://acme.test/acct/7"));
    assert!(now.last_error.is_none());
    // The old evidence does not bind the new key: that is what re-quoting is for.
    let old = pins
        .verifier()
        .verify_gateway(first.document.evidence.as_ref().unwrap())
        .unwrap();
    assert!(old.binding_of_certificate(&custom_der).is_err());
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("the publisher stops")
        .unwrap();
}
