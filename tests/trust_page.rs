//! The chain-of-trust pages end to end: a real `teegate gateway` process, attested in its
//! own simulated CVM (a `teegate kms` and `teegate sidecar`), pinning a KMS root; a
//! simulated instance whose chain runs KMS root → app CA → RA-TLS certificate, an instance
//! whose event log does not replay (injected here), the JSON twin over HTTPS, and the HTML
//! page rendered by headless Chromium — the whole chain from the certificate the browser
//! received to each instance — with a screenshot kept as an artifact (the README's).

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ratls::cert::{issue, CertAuthority, CertProfile, Identity, RaTlsCert};
use ratls::provider::{ProviderError, ProviderKind, QuoteProvider, SimulatedProvider};
use support::chromium::{chromium, screenshot};
use support::cvm::{gateway_compose, start_gateway_cvm};
use support::*;

const COMPOSE: &str = "{\"name\":\"shop\",\"exposed_ports\":[80]}\n";

/// A KMS-like root CA and an app CA it signed.
fn root_and_app_ca() -> (Vec<u8>, CertAuthority) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    root_params
        .distinguished_name
        .push(DnType::CommonName, "teegate test KMS root CA");
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "teegate test app CA");
    let ca = ca_params.signed_by(&ca_key, &issuer).unwrap();
    let app_ca = CertAuthority::from_der(ca.der().to_vec(), &ca_key.serialize_der()).unwrap();
    (root.der().to_vec(), app_ca)
}

/// A simulated TD whose RTMR3 never takes the events its log records.
struct NoRtmr3(SimulatedProvider);

impl QuoteProvider for NoRtmr3 {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Simulated
    }
    fn quote(&self, rd: &ratls::ReportData) -> Result<Vec<u8>, ProviderError> {
        self.0.quote(rd)
    }
    fn extend_rtmr3(&self, _: &ratls::Measurement) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// The `image` event every test instance records, as a booted sidecar does.
const WEB_IMAGE: &str =
    "web@sha256:5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5eb5";

const STORAGE: &str = "gocryptfs (key: KMS disk key)";

fn cert_from(provider: Arc<dyn QuoteProvider>, id: &Identity, ca: &CertAuthority) -> RaTlsCert {
    let m = booted(provider, id);
    m.emit("image", WEB_IMAGE.as_bytes().to_vec()).unwrap();
    m.emit("storage", STORAGE.as_bytes().to_vec()).unwrap();
    issue(
        &m,
        id,
        &CertProfile::server_and_client(vec![format!("*.{BASE}")], Duration::from_secs(3600)),
        Some(ca),
    )
    .unwrap()
}

fn pem(der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// The `<section …>` of the page whose `data-instance` is `instance` (and refused or not).
fn section<'a>(dom: &'a str, instance: &str, refused: bool) -> &'a str {
    dom.split("<section")
        .skip(1)
        .find(|s| {
            s.contains(&format!("data-instance=\"{instance}\""))
                && s.trim_start()
                    .starts_with("class=\"card instance refused\"")
                    == refused
        })
        .map(|s| s.split("</section>").next().unwrap_or(s))
        .unwrap_or_else(|| panic!("no section for instance {instance} (refused={refused})"))
}

/// Each `<li class="…">` of the section's links: (class, the li's text).
fn links(section: &str) -> Vec<(String, String)> {
    section
        .split("<li class=\"")
        .skip(1)
        .map(|s| {
            let class = s.split('"').next().unwrap_or("").to_string();
            let body = s.split("</li>").next().unwrap_or("").to_string();
            (class, body)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_of_trust_pages_show_verified_and_failing_links() {
    let dir = tempfile::tempdir().unwrap();
    let (root, app_ca) = root_and_app_ca();
    let root_path = dir.path().join("kms-root-ca.pem");
    std::fs::write(&root_path, pem(&root)).unwrap();
    let cvm = start_gateway_cvm(dir.path(), &gateway_compose("trust-page-gateway"));
    let gw = start_gateway_in(
        &dir.path().join("gw"),
        GatewayPorts::new(),
        &format!(
            "[web]\nkms_root_ca = [\"{}\"]\n[attestation]\nguest_api = \"{}\"\n",
            root_path.display(),
            cvm.socket.display()
        ),
    );

    // A good instance, with its compose file and KMS root.
    let good = identity(COMPOSE.as_bytes(), 1);
    let good_cert = cert_from(Arc::new(SimulatedProvider::new()), &good, &app_ca);
    let front = start_front(&good_cert, &good.instance_id.to_hex()).await;
    let mut body = register_body(front.addr, &[80]);
    body["app_compose"] = COMPOSE.into();
    body["kms_root_ca"] = hex::encode(&root).into();
    let (status, text) = register(gw.ports.registration, &gw.dev_ca_pem(), &good_cert, &body).await;
    assert_eq!(status, 200, "{text}");

    // A compose file that is not the attested one is refused, naming it.
    let mut lying = body.clone();
    lying["app_compose"] = "{\"name\":\"other\"}".into();
    let (status, text) =
        register(gw.ports.registration, &gw.dev_ca_pem(), &good_cert, &lying).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("app_compose hashes to"), "{text}");

    // A KMS root that is not hex, or not a certificate, and an oversized compose file are
    // refused, each naming the field.
    for (field, value, expect) in [
        (
            "kms_root_ca",
            serde_json::Value::from("zz"),
            "kms_root_ca is not hex",
        ),
        (
            "kms_root_ca",
            "00ff".into(),
            "kms_root_ca is not a certificate",
        ),
        (
            "app_compose",
            "x".repeat(129 * 1024).into(),
            "app_compose is over",
        ),
    ] {
        let mut bad_body = body.clone();
        bad_body[field] = value;
        let (status, text) = register(
            gw.ports.registration,
            &gw.dev_ca_pem(),
            &good_cert,
            &bad_body,
        )
        .await;
        assert_eq!(status, 400, "{field}: {text}");
        assert!(text.contains(expect), "{field}: {text}");
    }

    // The injected failure: same app, an event log RTMR3 never saw.
    let bad = identity(COMPOSE.as_bytes(), 2);
    let bad_cert = cert_from(Arc::new(NoRtmr3(SimulatedProvider::new())), &bad, &app_ca);
    let (status, text) = register(gw.ports.registration, &gw.dev_ca_pem(), &bad_cert, &body).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("event-log-replay"), "{text}");

    // JSON twin, over HTTPS through the gateway like any client.
    let app = good.app_id.to_hex();
    let client = client(&gw, &[BASE.to_string()], false);
    let base = format!("https://{BASE}:{}", gw.ports.https);
    let index = get_json(&client, &format!("{base}/")).await;
    assert_eq!(index["apps"][0]["app_id"], app.as_str(), "{index}");
    assert_eq!(index["simulated"], true);
    // The first link: the gateway itself, attested, its quote verified and the served
    // certificate's key among those it binds.
    assert_eq!(index["gateway"]["attested"], true, "{index}");
    assert_eq!(index["gateway"]["verdict"], "verified", "{index}");
    assert_eq!(index["gateway"]["app_id"], cvm.app_id.to_hex(), "{index}");
    assert_eq!(index["gateway"]["served"]["bound"], true, "{index}");
    assert!(index["refused"][0]["error"]
        .as_str()
        .unwrap()
        .contains("event-log-replay"));
    let page = get_json(&client, &format!("{base}/apps/{app}.json")).await;
    let inst = &page["instances"][0];
    assert_eq!(inst["verdict"], "verified", "{inst}");
    assert_eq!(inst["compose"]["file"], COMPOSE);
    assert_eq!(inst["compose"]["images"][0], WEB_IMAGE, "{inst}");
    assert_eq!(inst["compose"]["storage"], STORAGE, "{inst}");
    let roles: Vec<&str> = inst["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["KMS root CA", "app CA", "instance RA-TLS certificate"]
    );
    assert!(inst["chain"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["status"] == "verified"));
    assert_eq!(
        inst["event_log"]["rows"].as_array().unwrap().len(),
        6,
        "four boot events, one image, the storage kind"
    );
    assert_eq!(inst["report_data"]["binds_certificate_key"], true);
    let refused = &page["refused"][0];
    assert_eq!(refused["verdict"], "failed");
    let replay = refused["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["step"] == "event-log-replay")
        .unwrap();
    assert_eq!(replay["status"], "failed", "{replay}");
    let (status, _) = {
        let r = client
            .get(format!("{base}/apps/{}", "ab".repeat(20)))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status, 404);
    let post = client.post(format!("{base}/")).send().await.unwrap();
    assert_eq!(post.status().as_u16(), 405);

    // The HTML page as a browser renders it.
    let profile = dir.path().join("chromium");
    let url = format!("{base}/apps/{app}");
    let dom = tokio::task::block_in_place(|| chromium(&gw, &profile, &url, &["--dump-dom"]));
    assert!(dom.contains("SIMULATED TDX"), "no SIMULATED banner");
    assert!(
        dom.contains("data-attested=\"true\" data-verdict=\"verified\""),
        "the gateway's own link is verified"
    );
    assert!(
        !dom.contains("this gateway is not attested"),
        "no unattested banner"
    );
    let good_section = section(&dom, &good.instance_id.to_hex(), false);
    assert!(good_section.contains("data-verdict=\"verified\""));
    let good_links = links(good_section);
    // Three certificates and seven verification steps (app authorisation among them),
    // all verified.
    assert_eq!(good_links.len(), 10, "{good_links:?}");
    assert!(
        good_links
            .iter()
            .any(|(_, t)| t.contains("data-step=\"app-authorisation\"")),
        "{good_links:?}"
    );
    for (class, text) in &good_links {
        assert_eq!(class, "verified", "{text}");
    }
    assert!(good_section.contains("KMS root CA") && good_section.contains("app CA"));
    assert!(
        good_section.contains(WEB_IMAGE),
        "the page shows the service's image"
    );
    assert!(good_section.contains("&quot;shop&quot;") || good_section.contains("\"shop\""));
    let bad_section = section(&dom, &bad.instance_id.to_hex(), true);
    assert!(bad_section.contains("data-verdict=\"failed\""));
    let failing: Vec<_> = links(bad_section)
        .into_iter()
        .filter(|(c, _)| c == "failed")
        .collect();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert!(
        failing[0].1.contains("data-step=\"event-log-replay\""),
        "{failing:?}"
    );
    assert!(failing[0].1.contains("replays to RTMR3"), "{failing:?}");

    screenshot(&gw, &profile, &url, "trust-page.png", "1100,2600");
    // The same page at a phone's width, for a person to look at.
    screenshot(&gw, &profile, &url, "trust-page-phone.png", "390,1400");
    drop(front);
}

#[test]
fn a_kms_root_that_cannot_be_read_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (path, expect) in [
        (dir.path().join("missing.pem"), "No such file"),
        (not_pem, "no CERTIFICATE"),
    ] {
        let cfg = gateway_config(
            &dir.path().join("gw"),
            &GatewayPorts::new(),
            &format!("[web]\nkms_root_ca = [\"{}\"]\n", path.display()),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_teegate"))
            .args(["gateway", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("web.kms_root_ca") && err.contains(expect),
            "{err}"
        );
    }
}
