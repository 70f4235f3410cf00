//! The server's part of a resumed TLS 1.3 handshake (rustls in memory: reading the
//! ClientHello, writing its flight, reading the client's Finished, writing the session
//! tickets), with rustls' stock aws-lc-rs suites against the gateway's (the same suites with
//! TLS 1.3's HKDF on prepared HMAC keys, `gateway/src/prepared_hkdf.rs`), for a SHA-384 and a
//! SHA-256 suite. The client side runs untimed on the stock suites. Run with
//! `cargo bench --bench tls13_hkdf`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ClientConnection, HandshakeKind, RootCertStore};
use rustls::{ServerConfig, ServerConnection};

struct Pair {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn pair(suite: CipherSuite, server_provider: CryptoProvider) -> Pair {
    let only = |mut p: CryptoProvider| {
        p.cipher_suites.retain(|s| s.suite() == suite);
        Arc::new(p)
    };
    let cert = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let mut server = ServerConfig::builder_with_provider(only(server_provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    // As the gateway resumes: stateless tickets.
    server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
    let mut client =
        ClientConfig::builder_with_provider(only(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    client.resumption = Resumption::in_memory_sessions(256);
    Pair {
        client: Arc::new(client),
        server: Arc::new(server),
    }
}

/// One handshake; returns the time spent in the server's steps.
fn handshake(p: &Pair, want: HandshakeKind) -> Duration {
    let name = ServerName::try_from("app.test").unwrap();
    let mut c = ClientConnection::new(p.client.clone(), name).unwrap();
    let mut s = ServerConnection::new(p.server.clone()).unwrap();
    let mut buf = Vec::with_capacity(4096);
    let mut spent = Duration::ZERO;
    for _ in 0..4 {
        buf.clear();
        c.write_tls(&mut buf).unwrap();
        let t = Instant::now();
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets().unwrap();
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        spent += t.elapsed();
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets().unwrap();
        if !c.is_handshaking() && !s.is_handshaking() && buf.is_empty() {
            break;
        }
    }
    assert_eq!(c.handshake_kind(), Some(want));
    spent
}

fn resumed(c: &mut Criterion) {
    let mut g = c.benchmark_group("resumed TLS 1.3 handshake, server side");
    for (label, suite) in [
        ("AES_256_GCM_SHA384", CipherSuite::TLS13_AES_256_GCM_SHA384),
        ("AES_128_GCM_SHA256", CipherSuite::TLS13_AES_128_GCM_SHA256),
    ] {
        for (who, provider) in [
            ("stock", rustls::crypto::aws_lc_rs::default_provider()),
            ("prepared", gateway::prepared_hkdf::provider()),
        ] {
            let p = pair(suite, provider);
            // The first handshake is full and leaves the tickets the others resume with.
            handshake(&p, HandshakeKind::Full);
            g.bench_function(format!("{label} {who}"), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| handshake(&p, HandshakeKind::Resumed))
                        .sum()
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4));
    targets = resumed
}
criterion_main!(benches);
