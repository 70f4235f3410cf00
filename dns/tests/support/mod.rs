//! Shared helpers: a running server on 127.0.0.1 with free ports, and DNS queries over UDP
//! and TCP built from hickory-proto messages. Every wait is bounded.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_server::proto::rr::{Name, RecordType};
use teegate_dns::{DnsServer, Listening, ZoneHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const BASE: &str = "apps.teegate.test";
pub const TOKEN: &str = "dns-api-token-for-tests-0123456789";
const WAIT: Duration = Duration::from_secs(5);

/// A server running in this process; stopped (and awaited) by [`Running::stop`] or on drop.
pub struct Running {
    pub at: Listening,
    pub zone: ZoneHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), teegate_dns::DnsError>>>,
}

impl Running {
    pub fn api_url(&self) -> String {
        format!("http://{}", self.at.api.expect("API bound"))
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let r = tokio::time::timeout(WAIT, t)
                .await
                .expect("server stops in time");
            r.expect("server task").expect("server result");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The config used by the tests: all listeners on 127.0.0.1 port 0, plus `extra` TOML.
pub fn config(extra: &str) -> config::DnsConfig {
    config::from_toml_str(&format!(
        "base_domain = \"{BASE}\"\n\
         listen_udp = \"127.0.0.1:0\"\n\
         listen_tcp = \"127.0.0.1:0\"\n\
         gateway_addrs = [\"192.0.2.10\", \"192.0.2.11\", \"2001:db8::10\"]\n\
         {extra}\n\
         [api]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ))
    .expect("test config")
}

pub async fn start(extra: &str) -> Running {
    start_with(config(extra), teegate_dns::Limits::default()).await
}

pub async fn start_with(cfg: config::DnsConfig, limits: teegate_dns::Limits) -> Running {
    let server = DnsServer::bind(&cfg)
        .await
        .expect("bind")
        .with_limits(limits);
    let at = server.listening();
    let zone = server.zone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        at,
        zone,
        stop: Some(tx),
        task: Some(task),
    }
}

/// A query message for `name`/`rtype`, with EDNS (1232 bytes) when `edns`.
pub fn query(name: &str, rtype: RecordType, edns: bool) -> Message {
    let mut m = Message::new(0x5eed, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.edns = Some(e);
    }
    m
}

pub async fn udp_raw(at: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    udp_raw_within(at, bytes, Duration::from_secs(1)).await
}

/// Sends one datagram and waits up to `wait` for an answer.
pub async fn udp_raw_within(at: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("udp bind");
    sock.send_to(bytes, at).await.expect("udp send");
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

pub async fn udp(at: SocketAddr, m: &Message) -> Message {
    let bytes = m.to_vec().expect("encode");
    for _ in 0..3 {
        if let Some(answer) = udp_raw(at, &bytes).await {
            return Message::from_vec(&answer).expect("decode answer");
        }
    }
    panic!("no UDP answer from {at}");
}

/// Writes `frames` (each length-prefixed) on one connection and reads `answers` answers.
pub async fn tcp_raw(at: SocketAddr, payload: &[u8], answers: usize) -> Vec<Vec<u8>> {
    tokio::time::timeout(WAIT, async {
        let mut s = TcpStream::connect(at).await.expect("tcp connect");
        s.write_all(payload).await.expect("tcp write");
        let mut out = Vec::new();
        for _ in 0..answers {
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).await.is_err() {
                break;
            }
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf).await.expect("tcp answer body");
            out.push(buf);
        }
        out
    })
    .await
    .expect("TCP exchange in time")
}

pub fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

pub async fn tcp(at: SocketAddr, m: &Message) -> Message {
    let answers = tcp_raw(at, &frame(&m.to_vec().expect("encode")), 1).await;
    Message::from_vec(answers.first().expect("one TCP answer")).expect("decode answer")
}

/// A small seeded generator (xorshift64*), so fuzz inputs are the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
