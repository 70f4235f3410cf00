//! Malformed, truncated, oversized and hostile input never stops the server: after each
//! batch it still answers a valid query over UDP and TCP. TCP connections are bounded.

mod support;

use std::time::Duration;

use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::RecordType;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

async fn still_answers(s: &Running) {
    let q = query(&format!("alive.{BASE}."), RecordType::A, true);
    assert_eq!(
        udp(s.at.udp, &q).await.answers.len(),
        2,
        "UDP still answers"
    );
    assert_eq!(
        tcp(s.at.tcp, &q).await.answers.len(),
        2,
        "TCP still answers"
    );
}

#[tokio::test]
async fn random_bytes_over_udp_and_tcp() {
    let s = start("").await;
    let mut rng = Rng::new(0x7ee6a7e);
    for round in 0..4 {
        for _ in 0..200 {
            let len = rng.below(600);
            let bytes = rng.bytes(len);
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            sock.send_to(&bytes, s.at.udp).await.unwrap();
        }
        for _ in 0..20 {
            let len = rng.below(300);
            let body = rng.bytes(len);
            let _ = tokio::time::timeout(
                Duration::from_millis(500),
                tcp_raw(s.at.tcp, &frame(&body), 1),
            )
            .await;
        }
        still_answers(&s).await;
        let _ = round;
    }
    s.stop().await;
}

#[tokio::test]
async fn truncated_queries_get_formerr_or_nothing() {
    let s = start("").await;
    let whole = query(&format!("x.{BASE}."), RecordType::A, true)
        .to_vec()
        .unwrap();
    for cut in 0..whole.len() {
        let answer = udp_raw_within(s.at.udp, &whole[..cut], Duration::from_millis(150)).await;
        if cut < 12 {
            assert!(
                answer.is_none(),
                "no answer to {cut} bytes, shorter than a header"
            );
        } else if let Some(answer) = answer {
            let m = Message::from_vec(&answer).expect("a well-formed error answer");
            assert_ne!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "cut at {cut}"
            );
        }
    }
    still_answers(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn mutated_queries_with_a_seeded_rng() {
    let s = start("").await;
    let mut rng = Rng::new(42);
    let base = query(&format!("_acme-challenge.{BASE}."), RecordType::TXT, true)
        .to_vec()
        .unwrap();
    for _ in 0..500 {
        let mut m = base.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(m.len());
            m[at] = rng.next_u64() as u8;
        }
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&m, s.at.udp).await.unwrap();
    }
    still_answers(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn oversized_and_lying_messages() {
    let s = start("").await;
    // A UDP datagram as large as it gets.
    let big = vec![0xabu8; 65_000];
    let _ = udp_raw(s.at.udp, &big).await;
    // Question count 65535 with one question present.
    let mut lying = query(&format!("x.{BASE}."), RecordType::A, false)
        .to_vec()
        .unwrap();
    lying[4] = 0xff;
    lying[5] = 0xff;
    let _ = udp_raw(s.at.udp, &lying).await;
    // A TCP frame that announces 65535 bytes and sends 10, then stalls: closed by the
    // server's idle limit (the test's own limit is shorter, so just send and drop).
    let mut frame_head = vec![0xff, 0xff];
    frame_head.extend_from_slice(&[0u8; 10]);
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        tcp_raw(s.at.tcp, &frame_head, 1),
    )
    .await;
    // A response (QR=1) is never answered: no reflection.
    let mut resp = query(&format!("x.{BASE}."), RecordType::A, false)
        .to_vec()
        .unwrap();
    resp[2] |= 0x80;
    assert!(udp_raw(s.at.udp, &resp).await.is_none());
    // Two questions in one message: FORMERR.
    let mut two = query(&format!("x.{BASE}."), RecordType::A, false);
    two.add_query(hickory_server::proto::op::Query::query(
        hickory_server::proto::rr::Name::from_ascii(format!("y.{BASE}.")).unwrap(),
        RecordType::A,
    ));
    let m = udp(s.at.udp, &two).await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    still_answers(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn several_queries_on_one_tcp_connection() {
    let s = start("").await;
    let mut payload = Vec::new();
    for i in 0..5 {
        let q = query(&format!("h{i}.{BASE}."), RecordType::A, false);
        payload.extend(frame(&q.to_vec().unwrap()));
    }
    let answers = tcp_raw(s.at.tcp, &payload, 5).await;
    assert_eq!(answers.len(), 5);
    s.stop().await;
}

#[tokio::test]
async fn tcp_connections_are_bounded_and_idle_ones_closed() {
    let limits = teegate_dns::Limits {
        tcp_max_connections: 4,
        tcp_idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let s = start_with(config(""), limits).await;
    // Four idle connections fill the slots; a fifth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(s.at.tcp).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fifth = TcpStream::connect(s.at.tcp).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf))
        .await
        .expect("the fifth connection is closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // The idle ones are closed by the idle limit, which frees the slots.
    for c in &mut idle {
        let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("idle connection closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    still_answers(&s).await;
    s.stop().await;
}
