//! The gateway's fast path against a real `teegate gateway` process and a scripted RA-TLS
//! front that answers with raw bytes: chunked bodies with trailers, close-delimited HTTP/1.0
//! bodies, interim 1xx answers, request bodies, keep-alive reuse of both connections,
//! malformed answers, and a front presenting another instance's certificate; the same over
//! HTTP/2 from the client (bodies re-framed, many streams at once on one connection, a
//! stream left unanswered timed out beside answered ones).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

const COMPOSE: &[u8] = b"{\"name\":\"fast\"}";

/// Length of the front's `/big` answer, whose byte at offset `i` is `i % 251`.
const BIG: usize = 32 << 20;
/// Bytes of `/big` the scripted front has written so far (one test asks for it).
static BIG_SENT: AtomicUsize = AtomicUsize::new(0);

/// A front that serves `cert` and answers each request by its path, counting connections.
async fn scripted_front(cert: &ratls::cert::RaTlsCert) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.rustls_chain(), cert.rustls_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                loop {
                    // One request head (and a Content-Length body) at a time.
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < end + len {
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[end..end + len]).to_string();
                    buf.drain(..end + len);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let answer = match path.as_str() {
                        "/chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n".to_string(),
                        "/early" => "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlater".to_string(),
                        "/bad" => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_string(),
                        "/head" => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}", head.len()),
                        "/empty" => "HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n".to_string(),
                        // Read, never answered: held until the gateway lets go.
                        "/silent" => {
                            let mut rest = [0u8; 1];
                            let _ = tls.read(&mut rest).await;
                            return;
                        }
                        "/big" => {
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                            if tls.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            let mut at = 0;
                            while at < BIG {
                                let piece: Vec<u8> =
                                    (at..(at + 65536).min(BIG)).map(|i| (i % 251) as u8).collect();
                                if tls.write_all(&piece).await.is_err() {
                                    return;
                                }
                                at += piece.len();
                                BIG_SENT.store(at, Ordering::SeqCst);
                            }
                            continue;
                        }
                        "/close" => {
                            let _ = tls.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil the end").await;
                            let _ = tls.shutdown().await;
                            return;
                        }
                        _ => {
                            let text = format!("{path} body={body}");
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Seen: {}\r\n\r\n{text}", text.len(), head.lines().filter(|l| l.to_ascii_lowercase().starts_with("x-forwarded-for")).count())
                        }
                    };
                    if tls.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// Starts a [`scripted_front`] for instance `id` and registers it with `gw`.
async fn register_scripted_front(
    gw: &Gateway,
    id: &ratls::cert::Identity,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let cert = ratls_cert(id);
    let (front, conns) = scripted_front(&cert).await;
    let (status, body) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &cert,
        &register_body(front, &[80]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (front, conns)
}

/// A gateway with one instance registered whose front is [`scripted_front`].
struct ScriptedApp {
    gw: Gateway,
    id: ratls::cert::Identity,
    /// The front's address.
    front: std::net::SocketAddr,
    /// Connections the front accepted.
    conns: Arc<AtomicUsize>,
}

async fn gateway_with_scripted_app(dir: &std::path::Path) -> ScriptedApp {
    let gw = start_gateway_in(dir, GatewayPorts::new(), "");
    let id = identity(COMPOSE, 1);
    let (front, conns) = register_scripted_front(&gw, &id).await;
    ScriptedApp {
        gw,
        id,
        front,
        conns,
    }
}

async fn tls_to(gw: &Gateway, host: &str) -> TlsStream<tokio::net::TcpStream> {
    tls_alpn(gw, host, b"http/1.1").await
}

async fn tls_alpn(gw: &Gateway, host: &str, alpn: &[u8]) -> TlsStream<tokio::net::TcpStream> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(dev_roots(&gw.dev_ca_pem()))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.https_addr())
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from(host.to_string()).unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Sends `GET path` for `host` on `s` (HTTP/1.1, no body).
async fn send_get(s: &mut TlsStream<tokio::net::TcpStream>, host: &str, path: &str) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
}

/// Reads one response: head, then `body_len` bytes or to the end when `None`.
async fn response(s: &mut TlsStream<tokio::net::TcpStream>, body_len: Option<usize>) -> String {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let (Some(n), Some(p)) = (body_len, got.windows(4).position(|w| w == b"\r\n\r\n")) {
            if got.len() >= p + 4 + n {
                break;
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "no whole response in time: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_every_body_framing_and_reuses_both_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ScriptedApp { gw, id, conns, .. } = gateway_with_scripted_app(dir.path()).await;
    let host = format!("{}.{BASE}", id.app_id);
    let mut c = tls_to(&gw, &host).await;

    // Keep-alive on both sides: ten requests, one client connection, one upstream one.
    for i in 0..10 {
        let req = format!("POST /echo{i} HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 6.6.6.6\r\nContent-Length: 5\r\n\r\nabcde");
        c.write_all(req.as_bytes()).await.unwrap();
        let expected = format!("/echo{i} body=abcde");
        let r = response(&mut c, Some(expected.len())).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(r.ends_with(&expected), "{r}");
        assert!(
            r.contains("X-Seen: 1"),
            "exactly one X-Forwarded-For, the gateway's: {r}"
        );
        assert_eq!(
            r.to_ascii_lowercase().matches("content-length").count(),
            1,
            "{r}"
        );
    }
    // A body sent after the head, in pieces.
    c.write_all(
        format!("PUT /late HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\n\r\n01234").as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"56789").await.unwrap();
    let r = response(&mut c, Some("/late body=0123456789".len())).await;
    assert!(r.ends_with("/late body=0123456789"), "{r}");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "the upstream connection is reused"
    );

    // Chunked, relayed as sent up to its end (trailers included), then the next request.
    send_get(&mut c, &host, "/chunked").await;
    let wire = "5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
    let r = response(&mut c, Some(wire.len())).await;
    assert!(r.ends_with(wire), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{r}"
    );
    // An interim answer is read past; the final one is relayed.
    send_get(&mut c, &host, "/early").await;
    let r = response(&mut c, Some(5)).await;
    assert!(
        r.starts_with("HTTP/1.1 200 ") && r.ends_with("later"),
        "{r}"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 1);

    // A body that ends when the front closes ends the client connection too.
    send_get(&mut c, &host, "/close").await;
    let r = response(&mut c, None).await;
    assert!(r.ends_with("until the end"), "{r}");
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");

    // A malformed answer is refused (502) and nothing of it reaches the client.
    let mut c = tls_to(&gw, &host).await;
    send_get(&mut c, &host, "/bad").await;
    let r = response(&mut c, None).await;
    assert!(r.starts_with("HTTP/1.1 502 "), "{r}");
    assert!(!r.contains("hello!"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_presenting_another_instances_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Instance 1 is genuine. Instance 2 registers its own certificate but points at
    // instance 1's front, which presents instance 1's certificate.
    let ScriptedApp {
        gw,
        id: victim,
        front: victim_front,
        ..
    } = gateway_with_scripted_app(dir.path()).await;
    let other = identity(b"{\"name\":\"other\"}", 2);
    let other_cert = ratls_cert(&other);
    let (s, b) = register(
        gw.ports.registration,
        &gw.dev_ca_pem(),
        &other_cert,
        &register_body(victim_front, &[80]),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    let other_host = format!("{}.{BASE}", other.app_id);
    let mut c = tls_to(&gw, &other_host).await;
    send_get(&mut c, &other_host, "/x").await;
    let r = response(&mut c, None).await;
    assert!(r.starts_with("HTTP/1.1 502 "), "{r}");
    assert!(!r.contains("body="), "nothing from the wrong instance: {r}");
    let (_, metrics) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
    assert!(
        metrics
            .contains("teegate_upstream_failures_total{reason=\"other-instance-certificate\"} 1"),
        "{metrics}"
    );
    // The victim is unaffected.
    let victim_host = format!("{}.{BASE}", victim.app_id);
    let mut c = tls_to(&gw, &victim_host).await;
    send_get(&mut c, &victim_host, "/ok").await;
    let r = response(&mut c, Some("/ok body=".len())).await;
    assert!(
        r.starts_with("HTTP/1.1 200 ") && r.ends_with("/ok body="),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_every_body_framing_as_http2_streams() {
    let dir = tempfile::tempdir().unwrap();
    let ScriptedApp { gw, id, conns, .. } = gateway_with_scripted_app(dir.path()).await;
    let host = format!("{}.{BASE}", id.app_id);
    let c = client(&gw, std::slice::from_ref(&host), true);
    let get = |path: &str| c.get(format!("https://{host}{path}")).send();

    // The upstream gets an HTTP/1.1 head: our host, one X-Forwarded-For (ours), the
    // cookies HTTP/2 split joined again.
    let r = c
        .get(format!("https://{host}/head"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let head = r.text().await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("get /head http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("host: {host}\r\n")), "{head}");
    assert_eq!(head.matches("x-forwarded-for").count(), 1, "{head}");
    assert!(!head.contains("6.6.6.6"), "{head}");
    assert!(head.contains("x-forwarded-proto: https"), "{head}");
    assert!(head.contains("cookie: a=1; b=2\r\n"), "{head}");

    // Chunked: the data arrives without its chunked framing, and no HTTP/1 framing header.
    let r = get("/chunked").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("transfer-encoding").is_none());
    assert_eq!(r.text().await.unwrap(), "hello, world");
    let r = get("/early").await.unwrap();
    assert_eq!(r.headers().get("content-length").unwrap(), "5");
    assert_eq!(r.text().await.unwrap(), "later");
    let r = get("/empty").await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers().get("x-empty").unwrap(), "1");
    assert_eq!(r.text().await.unwrap(), "");
    // Close-delimited: the stream ends when the front closes; the connection stays.
    let r = get("/close").await.unwrap();
    assert_eq!(r.text().await.unwrap(), "until the end");
    // A malformed answer: 502, nothing of it relayed.
    let r = get("/bad").await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(!r.text().await.unwrap().contains("hello!"));
    // A request body takes pingora's path, on the same connection.
    let r = c
        .post(format!("https://{host}/post"))
        .body("abcde")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "/post body=abcde");

    // Sequential requests reuse one verified upstream connection; concurrent streams on
    // the one client connection are all answered.
    let before = conns.load(Ordering::SeqCst);
    for i in 0..5 {
        let r = get(&format!("/seq{i}")).await.unwrap();
        assert_eq!(r.text().await.unwrap(), format!("/seq{i} body="));
    }
    assert!(
        conns.load(Ordering::SeqCst) <= before + 1,
        "sequential streams reuse the upstream connection"
    );
    let answers = futures_util::future::join_all((0..40).map(|i| {
        let c = c.clone();
        let url = format!("https://{host}/par{i}");
        async move { c.get(url).send().await.unwrap().text().await.unwrap() }
    }))
    .await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, &format!("/par{i} body="));
    }
    // Each stream went through the log phase (the POST through pingora's).
    let (_, metrics) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
    let ok = format!(
        "teegate_requests_total{{app=\"{}\",status=\"200\"}} ",
        id.app_id
    );
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&ok))
        .unwrap_or_default();
    assert_eq!(line.trim_start_matches(&ok), "50", "{metrics}");
    // All but the POST were the fast path's.
    assert!(
        metrics.contains("teegate_fast_path_requests_total{protocol=\"h2\"} 51\n"),
        "{metrics}"
    );
}

/// The HTTP/2 relay follows the client's flow control: while the client grants no window,
/// the gateway stops reading the app's answer (the app's writes stall, and the gateway holds
/// no more than the sockets between them can); once the client reads, every byte arrives,
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_does_not_read_holds_back_the_app_then_gets_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let ScriptedApp { gw, id, .. } = gateway_with_scripted_app(dir.path()).await;
    let host = format!("{}.{BASE}", id.app_id);
    let tls = tls_alpn(&gw, &host, b"h2").await;
    // The default windows: 64 KiB for the stream and for the connection.
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://{host}/big"))
        .body(())
        .unwrap();
    let (answer, _) = send.send_request(req, true).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("head within 10 s")
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-length"], BIG.to_string());
    let mut body = answer.into_body();
    let mut got = 0usize;
    let check = |data: &[u8], at: usize| {
        for (i, b) in [(0, data[0]), (data.len() - 1, data[data.len() - 1])] {
            assert_eq!(b as usize, (at + i) % 251, "byte {} of the body", at + i);
        }
    };
    // Take what the window lets through, giving none of it back.
    while got < 65_535 {
        let data = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("data within 10 s")
            .unwrap()
            .unwrap();
        check(&data, got);
        got += data.len();
    }
    assert_eq!(got, 65_535, "no more than the window");
    // The front's writes stall: its count stops moving (checked for up to 20 s).
    let mut last = usize::MAX;
    let mut held = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        held = BIG_SENT.load(Ordering::SeqCst);
        if held == last {
            break;
        }
        last = held;
    }
    assert_eq!(held, last, "the app kept writing: the gateway kept reading");
    assert!(
        held < BIG / 2,
        "the gateway read {held} bytes of the app's answer for a client that took {got}"
    );
    println!("the app's writes stalled at {held} bytes, the client had {got}");
    // Now read it all, returning the window as it arrives.
    body.flow_control().release_capacity(got).unwrap();
    while let Some(data) = tokio::time::timeout(Duration::from_secs(30), body.data())
        .await
        .expect("data within 30 s")
    {
        let data = data.unwrap();
        check(&data, got);
        got += data.len();
        body.flow_control().release_capacity(data.len()).unwrap();
    }
    assert_eq!(got, BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_app_leaves_unanswered_gets_504_over_both_protocols_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(
        dir.path(),
        GatewayPorts::new(),
        "[limits]\nrequest_timeout_secs = 1\n",
    );
    let id = identity(COMPOSE, 1);
    register_scripted_front(&gw, &id).await;
    let host = format!("{}.{BASE}", id.app_id);
    let c = client(&gw, std::slice::from_ref(&host), true);

    // Two streams on the one connection, one of them unanswered, and more streams opened
    // and answered while it waits.
    let started = std::time::Instant::now();
    let silent = c.get(format!("https://{host}/silent")).send();
    let neighbours = async {
        let mut seen = Vec::new();
        for i in 0..5 {
            let r = c.get(format!("https://{host}/n{i}")).send().await.unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            seen.push((r.status().as_u16(), r.text().await.unwrap()));
        }
        seen
    };
    let (silent, seen) = tokio::join!(silent, neighbours);
    for (i, (status, body)) in seen.iter().enumerate() {
        assert_eq!(
            (*status, body.as_str()),
            (200, format!("/n{i} body=").as_str())
        );
    }
    let silent = silent.unwrap();
    let waited = started.elapsed();
    assert_eq!(silent.status(), 504);
    assert_eq!(silent.version(), reqwest::Version::HTTP_2);
    assert!(
        silent
            .text()
            .await
            .unwrap()
            .contains("did not answer in time"),
        "the gateway's own 504 page"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "504 after {waited:?}, with a 1 s request timeout"
    );
    // The connection goes on serving after the timeout.
    let r = c.get(format!("https://{host}/after")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "/after body=");

    // The same over HTTP/1: 504, and the connection closes.
    let mut s = tls_to(&gw, &host).await;
    send_get(&mut s, &host, "/silent").await;
    let answer = response(&mut s, None).await;
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");

    // Both are counted for the app, and only they.
    let (_, metrics) = http_get(gw.ports.admin, "/metrics", None, "GET").await;
    let count = |status: &str| {
        let prefix = format!(
            "teegate_requests_total{{app=\"{}\",status=\"{status}\"}} ",
            id.app_id
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(count("504"), "2", "{metrics}");
    assert_eq!(count("200"), "6", "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_connection_is_routed_by_its_own_host() {
    // The fast path remembers the last host a connection named (names::HostMemo); a
    // request naming another app, or no app at all, must not be routed by that memory.
    let dir = tempfile::tempdir().unwrap();
    let ScriptedApp {
        gw,
        id,
        conns: conns_a,
        ..
    } = gateway_with_scripted_app(dir.path()).await;
    let other = identity(b"{\"name\":\"other\"}", 2);
    let (_, conns_b) = register_scripted_front(&gw, &other).await;
    let host_a = format!("{}.{BASE}", id.app_id);
    let host_b = format!("{}.{BASE}", other.app_id);
    assert_ne!(host_a, host_b);

    let mut c = tls_to(&gw, &host_a).await;
    let mut ask = async |host: &str, path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let expected = format!("{path} body=");
        let r = response(&mut c, Some(expected.len())).await;
        assert!(
            r.starts_with("HTTP/1.1 200 ") && r.ends_with(&expected),
            "{r}"
        );
    };
    ask(&host_a, "/a1").await;
    ask(&host_b, "/b1").await;
    ask(&host_a, "/a2").await;
    ask(&host_b, "/b2").await;
    // Each front saw its own app's requests, on one pooled connection each.
    assert_eq!(conns_a.load(Ordering::SeqCst), 1);
    assert_eq!(conns_b.load(Ordering::SeqCst), 1);

    // A name of no registered app on the same connection is refused, not sent to the app
    // named before it.
    let unknown = format!("{}.{BASE}", "ab".repeat(20));
    c.write_all(
        format!("GET /x HTTP/1.1\r\nHost: {unknown}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let r = response(&mut c, None).await;
    assert!(!r.starts_with("HTTP/1.1 200 "), "{r}");
    assert!(r.contains("is not registered"), "{r}");
}
