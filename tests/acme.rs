//! The gateway obtains its wildcard certificate from a real ACME server (Pebble) by DNS-01,
//! published through teegate's own DNS, serves it, renews it when forced, and reuses it
//! after a restart without ordering again.

mod support;

use std::time::{Duration, Instant};

use support::*;

async fn start_dns(
    dir: &std::path::Path,
) -> (std::net::SocketAddr, u16, tokio::sync::oneshot::Sender<()>) {
    let (udp, api) = (free_port(), free_port());
    let text = format!(
        "base_domain = \"{BASE}\"\nlisten_udp = \"127.0.0.1:{udp}\"\nlisten_tcp = \"127.0.0.1:{udp}\"\ngateway_addrs = [\"127.0.0.1\"]\n[api]\nlisten = \"127.0.0.1:{api}\"\ntoken_file = \"{}\"\n",
        dns_api_token_file(dir).display()
    );
    std::fs::write(dir.join("dns.toml"), &text).unwrap();
    let cfg: config::DnsConfig = config::from_toml_str(&text).unwrap();
    let server = dns::DnsServer::bind(&cfg).await.unwrap();
    let listening = server.listening();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (listening.udp, listening.api.unwrap().port(), stop)
}

fn acme_gateway_config(pebble: &Pebble, dns_api: u16, dir: &std::path::Path) -> String {
    format!(
        "[tls]\nmode = \"acme\"\n[tls.acme]\ndirectory_url = \"{}\"\nca_bundle = \"{}\"\ndns_api_url = \"http://127.0.0.1:{dns_api}\"\ndns_api_token_file = \"{}\"\n",
        pebble.directory,
        pebble.https_ca.display(),
        dns_api_token_file(dir).display()
    )
}

/// Connects with SNI under the base domain, trusting only Pebble's issuing root; returns
/// the served certificate's DER once one verifies (bounded wait).
async fn served_cert(gw: &Gateway, root_pem: &str, within: Duration) -> Vec<u8> {
    let roots = dev_roots(root_pem);
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let deadline = Instant::now() + within;
    loop {
        let tcp = tokio::net::TcpStream::connect(gw.https_addr())
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(format!("anything.{BASE}")).unwrap();
        match connector.connect(name, tcp).await {
            Ok(tls) => return tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no Pebble-issued certificate served in time: {e}\n{}",
                    gw.proc.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn attempts(metrics: &str, result: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "teegate_acme_attempts_total{{result=\"{result}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_certificate_by_dns01_renewal_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (dns_udp, dns_api, _dns_stop) = start_dns(dir.path()).await;
    let pebble = start_pebble(dir.path(), dns_udp, None);
    let root = pebble.issuing_root_pem().await;
    let gw_dir = dir.path().join("gw");
    let ports = GatewayPorts::new();
    let mut gw = start_gateway_in(
        &gw_dir,
        ports,
        &acme_gateway_config(&pebble, dns_api, dir.path()),
    );

    let first = served_cert(&gw, &root, Duration::from_secs(60)).await;
    // The certificate is served as soon as it is installed; the issuance is counted once
    // it is also stored, a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let (_, m) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
        if attempts(&m, "ok") >= 1 || Instant::now() >= deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(attempts(&m, "ok"), 1, "{m}");
    assert!(
        m.contains("teegate_cert_not_after_seconds{name=\"*.apps.teegate.test\"}"),
        "{m}"
    );

    // Forced renewal: a new certificate is issued and served.
    let (s, _) = http_post_admin(gw.ports.admin, "/v1/acme/renew").await;
    assert_eq!(s, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let c = served_cert(&gw, &root, Duration::from_secs(10)).await;
        if c != first {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "renewal did not replace the certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Restart: the stored certificate comes back, no new order.
    assert!(gw.proc.stop(Duration::from_secs(10)).is_some());
    let ports = GatewayPorts {
        https: gw.ports.https,
        http: gw.ports.http,
        registration: gw.ports.registration,
        admin: gw.ports.admin,
    };
    let gw2 = start_gateway_in(
        &gw_dir,
        ports,
        &acme_gateway_config(&pebble, dns_api, dir.path()),
    );
    assert_eq!(
        served_cert(&gw2, &root, Duration::from_secs(10)).await,
        second
    );
    let (_, m) = http_get(gw2.ports.admin, "/metrics", None, "GET").await;
    assert_eq!(attempts(&m, "ok"), 0, "no issuance after a restart: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_acme_server_backs_off_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (_dns_udp, dns_api, _dns_stop) = start_dns(dir.path()).await;
    let dead = free_port();
    let extra = format!(
        "[tls]\nmode = \"acme\"\n[tls.acme]\ndirectory_url = \"https://127.0.0.1:{dead}/dir\"\ndns_api_url = \"http://127.0.0.1:{dns_api}\"\ndns_api_token_file = \"{}\"\n",
        dns_api_token_file(dir.path()).display()
    );
    let gw = start_gateway_in(&dir.path().join("gw"), GatewayPorts::new(), &extra);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
        if attempts(&m, "failed") >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "failure not counted: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        gw.proc.log().contains("certificate issuance failed"),
        "{}",
        gw.proc.log()
    );
}

/// Answers 200 for `?domain=shop.example`, 403 for anything else.
async fn start_ask() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 2048];
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let ok = req.starts_with("GET /ask?domain=shop.example ");
            let status = if ok { "200 OK" } else { "403 Forbidden" };
            let _ = tcp
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    port
}

async fn handshake_cert(gw: &Gateway, name: &str, root_pem: &str) -> Result<Vec<u8>, String> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(dev_roots(root_pem))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.https_addr())
        .await
        .unwrap();
    let sni = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio::time::timeout(
        Duration::from_secs(70),
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(sni, tcp),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

fn on_demand(metrics: &str, result: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "teegate_on_demand_certificates_total{{result=\"{result}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domain_gets_an_on_demand_http01_certificate_and_others_get_none() {
    use hickory_proto::rr::rdata::{A, TXT};
    use hickory_proto::rr::RData;
    let dir = tempfile::tempdir().unwrap();
    let (_teegate_dns, dns_api, _dns_stop) = start_dns(dir.path()).await;
    let id = identity(b"{\"name\":\"shop\"}", 1);
    let app = id.app_id.to_hex();
    let (names_dns, _) = start_test_dns(vec![
        (
            "_teegate-app.shop.example.",
            RData::TXT(TXT::new(vec![app.clone()])),
        ),
        ("shop.example.", RData::A(A::new(127, 0, 0, 1))),
        (
            "_teegate-app.ghost.example.",
            RData::TXT(TXT::new(vec!["ee".repeat(20)])),
        ),
        ("ghost.example.", RData::A(A::new(127, 0, 0, 1))),
        ("plain.example.", RData::A(A::new(127, 0, 0, 1))),
        (
            "_teegate-app.refused.example.",
            RData::TXT(TXT::new(vec![app.clone()])),
        ),
        ("refused.example.", RData::A(A::new(127, 0, 0, 1))),
    ])
    .await;
    let ask = start_ask().await;
    let ports = GatewayPorts::new();
    let pebble = start_pebble(dir.path(), names_dns, Some(ports.http));
    let root = pebble.issuing_root_pem().await;
    // The wildcard is already in the store, so only the custom domain is ordered.
    let gw_dir = dir.path().join("gw");
    {
        use gateway::store::Store;
        let ca = dev_ca_in(&gw_dir);
        let store = sealed_store_in(&gw_dir);
        store
            .put_cert(&ca.issue_wildcard(BASE).unwrap())
            .await
            .unwrap();
    }
    let extra = format!(
        "{}[custom_domains]\nenabled = true\nnameservers = [\"{names_dns}\"]\nallow_internal_addresses = true\nask_url = \"http://127.0.0.1:{ask}/ask\"\n",
        acme_gateway_config(&pebble, dns_api, dir.path())
    );
    let gw = start_gateway_in(&gw_dir, ports, &extra);
    let cert = ratls_cert(&id);
    let front = start_front(&cert, "shop-instance").await;
    let (status, body) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &register_body(front.addr, &[80]),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let leaf = handshake_cert(&gw, "shop.example", &root)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc.log()));
    let names = x509_names(&leaf);
    assert_eq!(names, vec!["shop.example".to_string()]);
    let body = client_with_root(&gw, &root, "shop.example")
        .get("https://shop.example/through")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("instance=shop-instance") && body.contains("path=/through"),
        "{body}"
    );

    for name in ["ghost.example", "plain.example", "refused.example"] {
        assert!(
            handshake_cert(&gw, name, &root).await.is_err(),
            "{name} must get no certificate"
        );
    }
    let (_, m) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
    assert_eq!(on_demand(&m, "issued"), 1, "{m}");
    assert_eq!(on_demand(&m, "unknown-app"), 1, "{m}");
    assert_eq!(on_demand(&m, "no-valid-record"), 1, "{m}");
    assert_eq!(on_demand(&m, "ask-refused"), 1, "{m}");
    // A failed name is refused from the cache, without asking again.
    assert!(handshake_cert(&gw, "ghost.example", &root).await.is_err());
    let (_, m) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
    assert_eq!(on_demand(&m, "recently-failed"), 1, "{m}");
}

fn x509_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn client_with_root(gw: &Gateway, root_pem: &str, host: &str) -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(dev_roots(root_pem))
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(host, gw.https_addr())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_challenge_is_counted_and_the_existing_certificate_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (_teegate_dns, dns_api, _dns_stop) = start_dns(dir.path()).await;
    // Pebble asks a DNS server that never has the challenge record: validation fails.
    let (wrong_dns, _) = start_test_dns(vec![]).await;
    let pebble = start_pebble(dir.path(), wrong_dns, None);
    let gw_dir = dir.path().join("gw");
    let existing = {
        use gateway::store::Store;
        let ca = dev_ca_in(&gw_dir);
        let store = sealed_store_in(&gw_dir);
        let rec = ca.issue_wildcard(BASE).unwrap();
        store.put_cert(&rec).await.unwrap();
        pem::parse(&rec.cert_chain_pem).unwrap().into_contents()
    };
    let gw = start_gateway_in(
        &gw_dir,
        GatewayPorts::new(),
        &acme_gateway_config(&pebble, dns_api, dir.path()),
    );
    let dev_ca = gw.dev_ca_pem();
    assert_eq!(
        served_cert(&gw, &dev_ca, Duration::from_secs(10)).await,
        existing
    );
    let (s, _) = http_post_admin(gw.ports.admin, "/v1/acme/renew").await;
    assert_eq!(s, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
        if attempts(&m, "failed") >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed renewal not counted:\n{m}\n{}",
            gw.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = gw.proc.log();
    let failure = log
        .lines()
        .find(|l| l.contains("certificate issuance failed"))
        .unwrap_or_default()
        .to_string();
    // The order itself failed (validation), not the account or the DNS API.
    assert!(failure.contains("ACME order"), "{log}");
    eprintln!("{failure}");
    assert_eq!(
        served_cert(&gw, &dev_ca, Duration::from_secs(10)).await,
        existing,
        "the old certificate still serves"
    );
}

/// The `accounturi` of the CAA records the DNS server answers for the base domain.
fn caa_account(dns: std::net::SocketAddr) -> Vec<String> {
    let out = std::process::Command::new("dig")
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            "+short",
            "+time=2",
            "+tries=2",
            BASE,
            "CAA",
        ])
        .output()
        .expect("dig is installed (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let uri = l.split("accounturi=").nth(1)?;
            Some(uri.split(';').next()?.trim().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caa_pins_the_sealed_acme_account_and_a_restart_reuses_it() {
    use gateway::seal::Kind;
    let dir = tempfile::tempdir().unwrap();
    let (dns_udp, dns_api, _dns_stop) = start_dns(dir.path()).await;
    let pebble = start_pebble(dir.path(), dns_udp, None);
    let root = pebble.issuing_root_pem().await;
    let gw_dir = dir.path().join("gw");
    let extra = acme_gateway_config(&pebble, dns_api, dir.path());
    let mut gw = start_gateway_in(&gw_dir, GatewayPorts::new(), &extra);
    let first = served_cert(&gw, &root, Duration::from_secs(60)).await;

    // The CAA records pin one account: the one whose credentials the store holds, sealed.
    let pinned = caa_account(dns_udp);
    assert_eq!(pinned.len(), 2, "issue and issuewild: {pinned:?}");
    assert!(pinned.iter().all(|u| *u == pinned[0]), "{pinned:?}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gw_dir.join("state.json")).unwrap()).unwrap();
    let account_key = gateway::acme::account_key(&pebble.directory);
    let sealed = state["values"][&account_key].as_str().unwrap();
    assert!(gateway::seal::is_sealed(sealed), "{sealed}");
    let seal = seal_key_in(&gw_dir);
    let creds = seal.open_text(Kind::Value, &account_key, sealed).unwrap();
    let account = gateway::acme::acme_account_spki(&creds).unwrap();
    assert_eq!(account.uri, pinned[0], "CAA pins the sealed account");
    // Neither the account key nor the served certificate's key is in state.json.
    let account_pem = acme_account_key_pem(&creds);
    assert_eq!(key_spki(&account_pem), account.spki_der);
    let wildcard = format!("*.{BASE}");
    let cert_key = seal
        .open_text(
            Kind::CertKey,
            &wildcard,
            state["certs"][&wildcard]["key_pem"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(key_spki(&cert_key), cert_spki(&first));
    let raw = std::fs::read(gw_dir.join("state.json")).unwrap();
    assert_no_key_in(&raw, &account_pem, "state.json (ACME account key)");
    assert_no_key_in(&raw, &cert_key, "state.json (certificate key)");

    // After a restart a forced renewal reuses the sealed account: no second account, and
    // the CAA pin stands.
    assert!(gw.proc.stop(Duration::from_secs(10)).is_some());
    let ports = GatewayPorts {
        https: gw.ports.https,
        http: gw.ports.http,
        registration: gw.ports.registration,
        admin: gw.ports.admin,
    };
    gw = start_gateway_in(&gw_dir, ports, &extra);
    let (s, _) = http_post_admin(gw.ports.admin, "/v1/acme/renew").await;
    assert_eq!(s, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while served_cert(&gw, &root, Duration::from_secs(10)).await == first {
        assert!(Instant::now() < deadline, "no renewal after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = pebble.proc.log();
    let accounts = log
        .lines()
        .filter(|l| l.contains("There are now") && l.contains("accounts"))
        .count();
    assert_eq!(
        accounts, 1,
        "one ACME account, reused after the restart:\n{log}"
    );
    assert_eq!(caa_account(dns_udp), pinned);
}
