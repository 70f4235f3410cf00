//! The gateway end to end on loopback: a real `teegate gateway` process, simulated CVM
//! instances with RA-TLS fronts that register over mutual RA-TLS, and real HTTPS clients.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;

const COMPOSE: &[u8] = b"{\"name\":\"web\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_app_port_and_instance_with_forwarding_headers() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let (id, _front) = registered_instance(&gw, COMPOSE, 1, &[80, 8080]).await;
    let hosts = vec![
        app_host(&id, ""),
        app_host(&id, "-8080"),
        format!("{}.{BASE}", id.instance_id),
        format!("{}.{BASE}", "ab".repeat(20)),
    ];
    let c = client(&gw, &hosts, false);

    let r = c
        .get(format!("https://{}/hello", hosts[0]))
        .header("X-Forwarded-For", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(
        body.contains(&format!("instance={}", id.instance_id)),
        "{body}"
    );
    assert!(body.contains("port=80 path=/hello"), "{body}");
    assert!(
        body.contains("xff=127.0.0.1 proto=https"),
        "client-sent X-Forwarded-For must be overwritten: {body}"
    );

    let body = c
        .get(format!("https://{}/", hosts[1]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("port=8080"), "{body}");

    let body = c
        .get(format!("https://{}/pinned", hosts[2]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains(&format!("instance={}", id.instance_id)),
        "{body}"
    );

    let r = c
        .get(format!("https://{}/", hosts[3]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body = r.text().await.unwrap();
    assert!(body.contains("is not registered"), "{body}");
    assert!(body.contains(&"ab".repeat(20)), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_names_use_http2_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let (id, _front) = registered_instance(&gw, COMPOSE, 1, &[50051]).await;
    let host = app_host(&id, "-50051g");
    let c = client(&gw, std::slice::from_ref(&host), true);
    let r = c
        .post(format!("https://{host}/helloworld.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("port=50051 path=/helloworld.Greeter/SayHello"),
        "{body}"
    );
    assert!(
        body.contains("version=HTTP/2.0"),
        "upstream must be h2 for g names: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_shows_the_instance_ratls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let (id, _front) = registered_instance(&gw, COMPOSE, 1, &[80]).await;
    let (mut cfg, check) = ratls_client_config(Some(id.app_id));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(gw.https_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(app_host(&id, "s")).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("RA-TLS handshake through passthrough");
    let peer = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    let att = check.attestation_of(&peer).expect("verified attestation");
    assert_eq!(att.instance_id(), &id.instance_id);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).contains("path=/direct"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_with_an_unverified_certificate_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let id = identity(COMPOSE, 1);
    let registered = ratls_cert(&id);
    // The front serves a different (also valid) RA-TLS certificate than the one registered.
    let served = ratls_cert(&id);
    let front = start_front(&served, "impostor").await;
    let (status, body) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &registered,
        &register_body(front.addr, &[80]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let host = app_host(&id, "");
    let r = client(&gw, std::slice::from_ref(&host), false)
        .get(format!("https://{host}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502, "gateway log:\n{}", gw.proc.log());
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("impostor"),
        "nothing from the unverified upstream may leak: {body}"
    );
    let (_, metrics) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
    assert!(
        metrics.contains("teegate_upstream_failures_total{reason=\"unverified-certificate\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_retries_on_the_other_instance_and_marks_the_dead_one_down() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let (id, front1) = registered_instance(&gw, COMPOSE, 1, &[80]).await;
    let (_, _front2) = registered_instance(&gw, COMPOSE, 2, &[80]).await;
    let host = app_host(&id, "");
    let c = client(&gw, std::slice::from_ref(&host), false);
    let mut seen = std::collections::HashSet::new();
    for i in 0..60 {
        if i == 20 {
            front1.kill();
        }
        let r = c.get(format!("https://{host}/{i}")).send().await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "request {i} failed during failover; gateway log:\n{}",
            gw.proc.log()
        );
        seen.insert(
            r.text()
                .await
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        seen.len(),
        2,
        "both instances served before the kill: {seen:?}"
    );
    let (_, apps) = http_get(
        gw.ports.admin,
        "/v1/apps",
        Some("test-admin-token-0123456789"),
        "GET",
    )
    .await;
    let apps: serde_json::Value = serde_json::from_str(&apps).unwrap();
    let inst = apps[0]["instances"].as_array().unwrap();
    let dead = inst
        .iter()
        .find(|i| i["instance_id"] == id.instance_id.to_hex())
        .unwrap();
    assert_eq!(dead["healthy"], false, "{apps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_slow_client_hello_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(
        dir.path(),
        GatewayPorts::new(),
        "[limits]\nmax_header_bytes = 4096\nclient_hello_timeout_ms = 300\n",
    );
    let (id, _front) = registered_instance(&gw, COMPOSE, 1, &[80]).await;
    let host = app_host(&id, "");
    let c = client(&gw, std::slice::from_ref(&host), false);
    let r = c
        .get(format!("https://{host}/"))
        .header("x-big", "a".repeat(8000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert!(
        !r.text().await.unwrap().contains("instance="),
        "the app must not see the request"
    );

    // A client that connects and never sends a ClientHello is cut off.
    use tokio::io::AsyncReadExt;
    let mut tcp = tokio::net::TcpStream::connect(gw.https_addr())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("gateway must close a silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(3));
    let (_, metrics) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
    assert!(
        metrics.contains("teegate_tls_handshakes_total{result=\"client-hello-timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.ports.http))
        .await
        .unwrap();
    tcp.write_all(
        format!("GET /a?b=c HTTP/1.1\r\nHost: x.{BASE}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out)).await;
    assert!(out.starts_with("HTTP/1.1 301"), "{out}");
    assert!(
        out.contains(&format!(
            "location: https://x.{BASE}:{}/a?b=c",
            gw.ports.https
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_app_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let (id, _front) = registered_instance(&gw, COMPOSE, 1, &[80]).await;
    let host = app_host(&id, "");
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &format!("{host}:{}:127.0.0.1", gw.ports.https),
            "--cacert",
        ])
        .arg(dir.path().join("dev-ca.pem"))
        .arg(format!("https://{host}:{}/from-curl", gw.ports.https))
        .output()
        .await
        .expect("curl is installed (scripts/test installs it)");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("path=/from-curl"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domains_route_by_txt_and_refuse_internal_or_unlisted_names() {
    use hickory_proto::rr::rdata::{A, TXT};
    use hickory_proto::rr::RData;
    let id = identity(COMPOSE, 1);
    let app = id.app_id.to_hex();
    let (dns, seen) = start_test_dns(vec![
        (
            "_teegate-app.shop.example.",
            RData::TXT(TXT::new(vec![format!("{app}:8080")])),
        ),
        ("shop.example.", RData::A(A::new(203, 0, 113, 10))),
        (
            "_teegate-app.internal.example.",
            RData::TXT(TXT::new(vec![app.clone()])),
        ),
        ("internal.example.", RData::A(A::new(10, 0, 0, 5))),
        (
            "_teegate-app.junk.example.",
            RData::TXT(TXT::new(vec!["not-an-app".into()])),
        ),
        ("junk.example.", RData::A(A::new(203, 0, 113, 11))),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Certificates for the custom names, from the gateway's own development CA.
    store_dev_certs(
        dir.path(),
        &[
            "shop.example",
            "internal.example",
            "junk.example",
            "missing.example",
            "shop.other",
        ],
    )
    .await;
    let gw = start_gateway_in(
        dir.path(),
        GatewayPorts::new(),
        &format!("[custom_domains]\nenabled = true\nallow = [\"example\"]\nnameservers = [\"{dns}\"]\ntxt_cache_secs = 60\n"),
    );
    let (_, _front) = registered_instance(&gw, COMPOSE, 1, &[80, 8080]).await;
    let names: Vec<String> = [
        "shop.example",
        "internal.example",
        "junk.example",
        "missing.example",
        "shop.other",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c = client(&gw, &names, false);
    let get = |host: &str| c.get(format!("https://{host}/custom")).send();

    let r = get("shop.example").await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("port=8080 path=/custom"), "{body}");
    for refused in [
        "internal.example",
        "junk.example",
        "missing.example",
        "shop.other",
    ] {
        assert_eq!(get(refused).await.unwrap().status(), 404, "{refused}");
    }
    // Cached: a second request for each name asks DNS nothing new.
    let before = seen.lock().unwrap().len();
    assert_eq!(get("shop.example").await.unwrap().status(), 200);
    assert_eq!(get("missing.example").await.unwrap().status(), 404);
    assert_eq!(seen.lock().unwrap().len(), before, "answers are cached");
    let asked = seen.lock().unwrap().join("\n");
    assert!(
        !asked.contains("shop.other"),
        "a name outside the allow rules is never looked up:\n{asked}"
    );
}

/// Listening TCP sockets on `port` held by process `pid` (from /proc: the sockets in LISTEN
/// state on that port, matched by inode against the process's descriptors).
fn listening_sockets(pid: u32, port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next().unwrap();
            if u16::from_str_radix(local_port, 16).unwrap() == port && f[3] == "0A" {
                inodes.insert(f[9].to_string());
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| {
            let l = l.to_string_lossy();
            l.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .is_some_and(|i| inodes.contains(i))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_gets_its_own_listening_socket_unless_configured_otherwise() {
    for (extra, sockets) in [("", 2), ("listener_per_worker = false", 1)] {
        let dir = tempfile::tempdir().unwrap();
        // The test gateways run `workers = 2`.
        let gw = start_gateway_in(dir.path(), GatewayPorts::new(), extra);
        let pid = gw.proc.child.as_ref().unwrap().id();
        // The services bind one after the other once the gateway is ready.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = listening_sockets(pid, gw.ports.https);
        while seen < sockets && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen = listening_sockets(pid, gw.ports.https);
        }
        assert_eq!(seen, sockets, "HTTPS listening sockets with {extra:?}");
        let (id, _front) = registered_instance(&gw, COMPOSE, 1, &[80]).await;
        let host = app_host(&id, "");
        // Fresh connections, each to whichever socket the kernel picks: all served.
        for _ in 0..20 {
            let c = client(&gw, std::slice::from_ref(&host), false);
            let r = c.get(format!("https://{host}/")).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
}
