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
        "base_domain = \"{BASE}\"\nlisten_udp = \"127.0.0.1:{udp}\"\nlisten_tcp = \"127.0.0.1:{udp}\"\ngateway_addrs = [\"127.0.0.1\"]\n[api]\nlisten = \"127.0.0.1:{api}\"\n"
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

fn acme_gateway_config(pebble: &Pebble, dns_api: u16) -> String {
    format!(
        "[tls]\nmode = \"acme\"\n[tls.acme]\ndirectory_url = \"{}\"\nca_bundle = \"{}\"\ndns_api_url = \"http://127.0.0.1:{dns_api}\"\n",
        pebble.directory,
        pebble.https_ca.display()
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
    let pebble = start_pebble(dir.path(), dns_udp);
    let root = pebble.issuing_root_pem().await;
    let gw_dir = dir.path().join("gw");
    let ports = GatewayPorts::new();
    let mut gw = start_gateway_in(&gw_dir, ports, &acme_gateway_config(&pebble, dns_api));

    let first = served_cert(&gw, &root, Duration::from_secs(60)).await;
    let (_, m) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
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
    let gw2 = start_gateway_in(&gw_dir, ports, &acme_gateway_config(&pebble, dns_api));
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
    let extra = format!("[tls]\nmode = \"acme\"\n[tls.acme]\ndirectory_url = \"https://127.0.0.1:{dead}/dir\"\ndns_api_url = \"http://127.0.0.1:{dns_api}\"\n");
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
