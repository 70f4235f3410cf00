//! The gateway's front-door limits, attacked over real TLS against a real `teegate
//! gateway` process: slow request heads, one address holding many connections, client
//! errors that used to mark instances down, forwarding-header spellings, and HTTP/2
//! stream, rapid-reset and CONTINUATION floods. Each test also checks that a normal
//! client keeps being served.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

const COMPOSE: &[u8] = b"{\"name\":\"limits\"}";
const ATTACKER: [u8; 4] = [127, 0, 0, 1];
/// Another loopback address: a different client as far as the gateway can tell.
const BYSTANDER: [u8; 4] = [127, 0, 0, 2];

/// A gateway with one registered instance; returns it, the app's host name and the front.
async fn gateway_with_app(dir: &std::path::Path, limits: &str) -> (Gateway, String, Front) {
    let gw = start_gateway_in(dir, GatewayPorts::new(), &format!("[limits]\n{limits}\n"));
    let (id, front) = registered_instance(&gw, COMPOSE, 1, &[80]).await;
    (gw, app_host(&id, ""), front)
}

async fn tcp_from(local: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::from(local), 0))?;
    s.connect(to).await
}

async fn tls_from(gw: &Gateway, local: [u8; 4], host: &str, alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(dev_roots(&gw.dev_ca_pem()))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tcp_from(local, gw.https_addr()).await.expect("tcp connect");
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("tls handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

/// Reads one HTTP/1 response (head and Content-Length body); (status, head + body).
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await {
            Ok(Ok(1)) => buf.push(byte[0]),
            other => panic!("response head cut short ({other:?}): {buf:?}"),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head[9..12].parse().expect("status code");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body))
        .await
        .expect("body in time")
        .expect("body");
    (status, head + &String::from_utf8_lossy(&body))
}

/// One GET on a fresh connection from `local`; its status.
async fn get_from(gw: &Gateway, local: [u8; 4], host: &str) -> u16 {
    let mut s = tls_from(gw, local, host, b"http/1.1").await;
    let req = format!("GET /ok HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await.0
}

/// Sends a request head one line every 300 ms (far longer than the 1 s deadline) and
/// returns what the gateway answered and how long after the head started.
async fn slow_head<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    s: S,
    host: &str,
) -> (String, Duration) {
    let (mut rd, mut wr) = tokio::io::split(s);
    let first = format!("GET /slow HTTP/1.1\r\nHost: {host}\r\n");
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        wr.write_all(first.as_bytes()).await?;
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            wr.write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await?;
        }
        wr.write_all(b"\r\n").await
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut got)).await;
    writer.abort();
    assert!(
        read.is_ok(),
        "no answer within 5 s: {:?}",
        String::from_utf8_lossy(&got)
    );
    (String::from_utf8_lossy(&got).to_string(), started.elapsed())
}

fn assert_408(answer: &str, took: Duration) {
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "408 after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_get_408_and_close_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, host, _front) = gateway_with_app(dir.path(), "header_timeout_secs = 1").await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let s = tls_from(&gw, ATTACKER, &host, b"http/1.1").await;
        let host = host.clone();
        slow.push(tokio::spawn(async move { slow_head(s, &host).await }));
    }
    // The bystander keeps being served while 50 heads dawdle.
    let c = client(&gw, std::slice::from_ref(&host), false);
    let until = Instant::now() + Duration::from_secs(2);
    let mut served = 0;
    while Instant::now() < until {
        let r = c.get(format!("https://{host}/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        served += 1;
    }
    for t in slow {
        let (answer, took) = t.await.unwrap();
        assert_408(&answer, took);
    }
    assert!(served > 5, "only {served} requests served");
    let (_, metrics) = http_get(
        gw.ports.admin,
        "/metrics",
        Some("test-admin-token-0123456789"),
        "GET",
    )
    .await;
    assert!(
        metrics.contains("teegate_requests_total{app=\"-\",status=\"408\"} 50"),
        "{metrics}"
    );
    assert!(
        gw.proc.log().lines().all(|l| !l.contains("path=/slow")),
        "a slow head was proxied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_slow_head_on_a_kept_alive_connection_gets_408_and_idle_ones_just_close() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, host, _front) =
        gateway_with_app(dir.path(), "header_timeout_secs = 1\nidle_timeout_secs = 2").await;
    let req = format!("GET /ok HTTP/1.1\r\nHost: {host}\r\n\r\n");

    let mut kept = tls_from(&gw, ATTACKER, &host, b"http/1.1").await;
    kept.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut kept).await.0, 200);
    let (answer, took) = slow_head(kept, &host).await;
    assert_408(&answer, took);

    // Idle after a request: no bytes of a new one, so the idle timeout closes it, no 408.
    let mut idle = tls_from(&gw, ATTACKER, &host, b"http/1.1").await;
    idle.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut idle).await.0, 200);
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), idle.read_to_end(&mut rest))
        .await
        .expect("idle connection closed within 6 s");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(get_from(&gw, BYSTANDER, &host).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    // 300 connections in all, 256 (the default) per address; idle pre-TLS connections
    // are held for 20 s, so only the per-address bound frees room for others.
    let (gw, host, _front) = gateway_with_app(
        dir.path(),
        "max_connections = 300\nmax_connections_per_app = 300\nclient_hello_timeout_ms = 20000",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(tcp_from(ATTACKER, gw.https_addr()).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut closed = 0;
    let mut open = Vec::new();
    for mut s in held {
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            Ok(_) => closed += 1,
            Err(_) => open.push(s),
        }
    }
    assert_eq!(
        closed,
        300 - 256,
        "connections past the per-address bound are closed"
    );
    for _ in 0..5 {
        assert_eq!(get_from(&gw, BYSTANDER, &host).await, 200);
    }
    drop(open);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get_from(&gw, ATTACKER, &host).await,
        200,
        "slots are freed on close"
    );
}

/// Sends `raw` on a fresh connection; the status answered (0: closed without one).
async fn send_raw(gw: &Gateway, host: &str, raw: &[u8], then_close: bool) -> u16 {
    let mut s = tls_from(gw, ATTACKER, host, b"http/1.1").await;
    s.write_all(raw).await.unwrap();
    if then_close {
        drop(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
        return 0;
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_never_mark_the_instance_down() {
    let dir = tempfile::tempdir().unwrap();
    // One instance: had it been marked down, the next request would get 503.
    let (gw, host, _front) = gateway_with_app(dir.path(), "").await;
    let bad_chunks = format!(
        "POST /up HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    );
    assert_eq!(
        send_raw(&gw, &host, bad_chunks.as_bytes(), false).await,
        400
    );
    assert_eq!(
        get_from(&gw, BYSTANDER, &host).await,
        200,
        "after a bad chunked body"
    );

    let refused =
        format!("GET /ok HTTP/1.1\r\nHost: {host}\r\nConnection: X-Forwarded-For\r\n\r\n");
    let status = send_raw(&gw, &host, refused.as_bytes(), false).await;
    assert!(
        (400..500).contains(&status),
        "refused request answered {status}"
    );
    assert_eq!(
        get_from(&gw, BYSTANDER, &host).await,
        200,
        "after a refused request"
    );

    let aborted =
        format!("POST /up HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\nonly-a-little");
    for _ in 0..3 {
        send_raw(&gw, &host, aborted.as_bytes(), true).await;
    }
    assert_eq!(
        get_from(&gw, BYSTANDER, &host).await,
        200,
        "after aborted bodies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_header_spellings_never_reach_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, host, _front) = gateway_with_app(dir.path(), "").await;
    let c = client(&gw, std::slice::from_ref(&host), false);
    let mut req = c.get(format!("https://{host}/ok"));
    for (k, v) in [
        ("X_Forwarded_For", "6.6.6.6"),
        ("X-Forwarded_For", "6.6.6.7"),
        ("X_Forwarded_Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
        ("X_Forwarded_Port", "1"),
        ("Forwarded", "for=6.6.6.6"),
        ("X-Real-IP", "6.6.6.8"),
        ("x_real_ip", "6.6.6.9"),
    ] {
        req = req.header(k, v);
    }
    let body = req.send().await.unwrap().text().await.unwrap();
    assert!(
        body.ends_with("fwd=[x-forwarded-for:127.0.0.1,x-forwarded-proto:https]"),
        "{body}"
    );
}

// ------------------------------------------------------------------------------ HTTP/2

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// HPACK for GET https://<host>/ : static-table pseudo headers, literal authority.
fn get_block(host: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87, 0x84, 0x01, host.len() as u8];
    b.extend_from_slice(host.as_bytes());
    b
}

/// What the gateway sent on a raw HTTP/2 connection.
#[derive(Debug, Default)]
struct Seen {
    max_streams: Option<u32>,
    goaway: Option<u32>,
    resets: Vec<u32>,
    responses: usize,
}

/// Opens an HTTP/2 connection, exchanges SETTINGS, and reads frames in the background.
async fn h2_open(
    gw: &Gateway,
    host: &str,
) -> (
    tokio::io::WriteHalf<TlsStream<TcpStream>>,
    tokio::task::JoinHandle<Seen>,
) {
    let s = tls_from(gw, ATTACKER, host, b"h2").await;
    let (mut rd, mut wr) = tokio::io::split(s);
    wr.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    wr.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut seen = Seen::default();
    let mut head = [0u8; 9];
    // The server's SETTINGS come first; acknowledge them before anything else.
    rd.read_exact(&mut head).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
    rd.read_exact(&mut payload).await.unwrap();
    assert_eq!(head[3], SETTINGS);
    for s in payload.chunks(6) {
        if s[..2] == [0, 3] {
            seen.max_streams = Some(u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
        }
    }
    wr.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
    let reader = tokio::spawn(async move {
        loop {
            let read = tokio::time::timeout(Duration::from_secs(2), rd.read_exact(&mut head)).await;
            if !matches!(read, Ok(Ok(_))) {
                return seen;
            }
            let mut p = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
            if rd.read_exact(&mut p).await.is_err() {
                return seen;
            }
            let code = |at: usize| u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
            match head[3] {
                HEADERS => seen.responses += 1,
                RST_STREAM => seen.resets.push(code(0)),
                GOAWAY => seen.goaway = Some(code(4)),
                _ => {}
            }
        }
    });
    (wr, reader)
}

/// Requests the proxy has counted (any app, any status), from the admin metrics.
async fn proxied(gw: &Gateway) -> u64 {
    let (status, text) = http_get(
        gw.ports.admin,
        "/metrics",
        Some("test-admin-token-0123456789"),
        "GET",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| l.starts_with("teegate_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, n)| n.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

/// CPU seconds the process has used, and its resident memory in KiB.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    (ticks as f64 / 100.0, rss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_rapid_reset_and_continuation_floods_leave_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, host, _front) = gateway_with_app(dir.path(), "max_h2_streams = 50").await;
    let pid = gw.proc.child.as_ref().unwrap().id();
    let normal = client(&gw, std::slice::from_ref(&host), true);
    let served = |c: reqwest::Client, host: String| async move {
        let r = c.get(format!("https://{host}/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
    };
    served(normal.clone(), host.clone()).await;
    let (cpu0, rss0) = usage(pid);

    // Streams left open (no END_STREAM): those past the bound are refused.
    let (mut wr, reader) = h2_open(&gw, &host).await;
    for i in 0..80u32 {
        wr.write_all(&frame(HEADERS, END_HEADERS, 2 * i + 1, &get_block(&host)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(wr);
    let seen = reader.await.unwrap();
    assert_eq!(seen.max_streams, Some(50), "{seen:?}");
    assert!(
        seen.resets.iter().filter(|c| **c == 7).count() >= 30,
        "REFUSED_STREAM: {seen:?}"
    );
    served(normal.clone(), host.clone()).await;

    // Rapid reset: HEADERS then RST_STREAM(CANCEL), over and over, on several connections.
    let proxied_before = proxied(&gw).await;
    let mut goaways = 0;
    let mut sent = 0;
    for _ in 0..5 {
        let (mut wr, reader) = h2_open(&gw, &host).await;
        for batch in 0..100u32 {
            let mut burst = Vec::new();
            for i in 0..100u32 {
                let id = 2 * (batch * 100 + i) + 1;
                burst.extend(frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    id,
                    &get_block(&host),
                ));
                burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            }
            if wr.write_all(&burst).await.is_err() {
                break;
            }
            sent += 100;
        }
        drop(wr);
        let seen = reader.await.unwrap();
        goaways += usize::from(seen.goaway.is_some());
        served(normal.clone(), host.clone()).await;
    }
    let reached = proxied(&gw).await - proxied_before;
    eprintln!(
        "rapid reset: {sent} streams sent and reset, {reached} requests counted by the proxy, \
         {goaways}/5 connections got GOAWAY"
    );
    assert!(
        reached < sent / 10,
        "{reached} of {sent} reset streams were proxied"
    );
    assert!(
        goaways == 5,
        "every rapid-reset connection is ended by the gateway"
    );

    // CONTINUATION flood: one header block that never ends, ~10 KiB per frame.
    let (mut wr, reader) = h2_open(&gw, &host).await;
    wr.write_all(&frame(HEADERS, 0, 1, &get_block(&host)))
        .await
        .unwrap();
    let mut lit = Vec::new();
    for _ in 0..90 {
        lit.extend_from_slice(&[0x00, 7]);
        lit.extend_from_slice(b"x-flood");
        lit.push(100);
        lit.extend_from_slice(&[b'a'; 100]);
    }
    let mut flood_bytes = 0usize;
    let flood_started = Instant::now();
    for _ in 0..2000 {
        let f = frame(CONTINUATION, 0, 1, &lit);
        match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&f)).await {
            Ok(Ok(())) => flood_bytes += f.len(),
            _ => break,
        }
    }
    drop(wr);
    let seen = reader.await.unwrap();
    eprintln!(
        "continuation flood: {flood_bytes} bytes written in {:?}, gateway sent {seen:?}",
        flood_started.elapsed()
    );
    assert!(
        seen.goaway.is_some(),
        "the flood ends the connection: {seen:?}"
    );
    served(normal.clone(), host.clone()).await;

    let (cpu1, rss1) = usage(pid);
    eprintln!(
        "gateway: {:.2} s CPU for the floods, RSS {rss0} KiB -> {rss1} KiB",
        cpu1 - cpu0
    );
    assert!(
        cpu1 - cpu0 < 20.0,
        "CPU used by the floods: {:.2} s",
        cpu1 - cpu0
    );
    assert!(
        rss1 < rss0 + 128 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
}
