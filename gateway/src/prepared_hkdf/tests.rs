use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::tls13::OkmBlock;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig};
use rustls::{ServerConnection, SupportedCipherSuite};

use super::*;

fn stock_tls13() -> Vec<&'static Tls13CipherSuite> {
    rustls::crypto::aws_lc_rs::default_provider()
        .cipher_suites
        .iter()
        .filter_map(|s| match s {
            SupportedCipherSuite::Tls13(t) => Some(*t),
            SupportedCipherSuite::Tls12(_) => None,
        })
        .collect()
}

#[test]
fn rfc5869_test_case_1() {
    let ikm = [0x0b; 22];
    let salt: Vec<u8> = (0x00..=0x0c).collect();
    let info: Vec<u8> = (0xf0..=0xf9).collect();
    let mut okm = [0u8; 42];
    HKDF_SHA256
        .extract_from_secret(Some(&salt), &ikm)
        .expand_slice(&[&info], &mut okm)
        .unwrap();
    assert_eq!(
        hex::encode(okm),
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    );
}

/// Every operation of the key schedule gives what aws-lc-rs's own HKDF gives, for both hashes,
/// several lengths and split infos.
#[test]
fn the_prepared_hkdf_agrees_with_aws_lc_rs_own() {
    for stock in stock_tls13() {
        let ours = hkdf_for(stock.common.hash_provider.algorithm()).unwrap();
        let theirs = stock.hkdf_provider;
        let salt = [7u8; 48];
        let secret: Vec<u8> = (0..=200).collect();
        let info: [&[u8]; 3] = [b"\x00\x20", b"tls13 c hs traffic", b"\x20context"];
        for (a, b) in [
            (
                ours.extract_from_secret(Some(&salt[..20]), &secret),
                theirs.extract_from_secret(Some(&salt[..20]), &secret),
            ),
            (
                ours.extract_from_secret(None, &secret[..32]),
                theirs.extract_from_secret(None, &secret[..32]),
            ),
            (
                ours.extract_from_zero_ikm(Some(&salt)),
                theirs.extract_from_zero_ikm(Some(&salt)),
            ),
            (
                ours.extract_from_zero_ikm(None),
                theirs.extract_from_zero_ikm(None),
            ),
        ] {
            assert_eq!(a.hash_len(), b.hash_len());
            assert_eq!(
                a.expand_block(&info).as_ref(),
                b.expand_block(&info).as_ref()
            );
            for len in [1, 12, 16, 32, 48, 100, 255] {
                let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
                a.expand_slice(&info, &mut x).unwrap();
                b.expand_slice(&info, &mut y).unwrap();
                assert_eq!(x, y, "expand of {len} bytes");
            }
            // Longer than 255 hash blocks is refused by both.
            let mut too_long = vec![0u8; 255 * a.hash_len() + 1];
            assert!(a.expand_slice(&info, &mut too_long).is_err());
            assert!(b.expand_slice(&info, &mut too_long).is_err());
            // A key made from an output block, and an HMAC under it.
            let okm = a.expand_block(&[b"next"]);
            let okm = OkmBlock::new(okm.as_ref());
            assert_eq!(
                ours.expander_for_okm(&okm).expand_block(&info).as_ref(),
                theirs.expander_for_okm(&okm).expand_block(&info).as_ref()
            );
            assert_eq!(
                ours.hmac_sign(&okm, b"finished").as_ref(),
                theirs.hmac_sign(&okm, b"finished").as_ref()
            );
        }
    }
}

#[test]
fn the_provider_keeps_aws_lc_rs_suites_in_their_order() {
    let stock = rustls::crypto::aws_lc_rs::default_provider();
    let ours = provider();
    let names = |p: &CryptoProvider| {
        p.cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&ours), names(&stock));
    // Every TLS 1.3 suite is ours, on its own hash.
    for suite in &ours.cipher_suites {
        if let SupportedCipherSuite::Tls13(t) = suite {
            assert!(
                SUITES.iter().any(|s| std::ptr::eq(s, *t)),
                "{:?}",
                t.common.suite
            );
        }
    }
    assert_eq!(ours.kx_groups.len(), stock.kx_groups.len());
}

fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) {
    let mut buf = Vec::new();
    // A TLS 1.3 handshake takes two round trips; the bound stops a stuck one.
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        buf.clear();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut &buf[..]).unwrap();
        server.process_new_packets().expect("server");
        buf.clear();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut &buf[..]).unwrap();
        client.process_new_packets().expect("client");
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
}

fn echo(client: &mut ClientConnection, server: &mut ServerConnection) {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    client.writer().write_all(b"ping").unwrap();
    client.write_tls(&mut buf).unwrap();
    server.read_tls(&mut &buf[..]).unwrap();
    server.process_new_packets().unwrap();
    let mut got = [0u8; 4];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    server.writer().write_all(b"pong").unwrap();
    buf.clear();
    server.write_tls(&mut buf).unwrap();
    client.read_tls(&mut &buf[..]).unwrap();
    client.process_new_packets().unwrap();
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
}

/// Real handshakes, full then resumed, for each TLS 1.3 suite, with the prepared-key suites
/// on one side and rustls' stock aws-lc-rs suites on the other, both ways round: any
/// difference in the key schedule fails the Finished check.
#[test]
fn handshakes_and_resumption_work_against_stock_suites_both_ways() {
    let cert = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let stock = || rustls::crypto::aws_lc_rs::default_provider();
    for suite in stock_tls13() {
        let only = |mut p: CryptoProvider| {
            p.cipher_suites.retain(|s| s.suite() == suite.common.suite);
            Arc::new(p)
        };
        for (server_provider, client_provider) in [
            (only(provider()), only(stock())),
            (only(stock()), only(provider())),
        ] {
            let server = Arc::new(
                ServerConfig::builder_with_provider(server_provider)
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(vec![cert.cert.der().clone()], key.clone_key())
                    .unwrap(),
            );
            let mut client = ClientConfig::builder_with_provider(client_provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            client.resumption = Resumption::in_memory_sessions(8);
            let client = Arc::new(client);
            for kind in [HandshakeKind::Full, HandshakeKind::Resumed] {
                let name = ServerName::try_from("app.test").unwrap();
                let mut c = ClientConnection::new(client.clone(), name).unwrap();
                let mut s = ServerConnection::new(server.clone()).unwrap();
                handshake(&mut c, &mut s);
                assert_eq!(c.handshake_kind(), Some(kind), "{:?}", suite.common.suite);
                assert_eq!(
                    c.negotiated_cipher_suite().map(|s| s.suite()),
                    Some(suite.common.suite)
                );
                // The tickets the server sent after the handshake reach the client here.
                echo(&mut c, &mut s);
            }
        }
    }
}
