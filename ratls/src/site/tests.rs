//! URL parsing, and the small HTTP client against a real rustls server on loopback.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

const APP: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn parses_teegate_names_and_tells_passthrough_apart() {
    let u = parse_url(&format!("https://{APP}.apps.test:8443/x")).unwrap();
    assert_eq!(u.app_id.unwrap().to_hex(), APP);
    assert_eq!(u.base_domain.as_deref(), Some("apps.test"));
    assert_eq!(u.port, 8443);
    assert!(!u.passthrough);
    for (host, passthrough) in [
        (format!("{APP}-8080.apps.test"), false),
        (format!("{APP}g.apps.test"), false),
        (format!("{APP}-8080g.apps.test"), false),
        (format!("{APP}s.apps.test"), true),
        (format!("{APP}-443s.apps.test"), true),
    ] {
        let u = parse_url(&format!("https://{}/", host.to_ascii_uppercase())).unwrap();
        assert_eq!(u.app_id.unwrap().to_hex(), APP, "{host}");
        assert_eq!(u.port, 443);
        assert_eq!(u.passthrough, passthrough, "{host}");
    }
    let custom = parse_url("https://shop.example.com/").unwrap();
    assert!(custom.app_id.is_none() && custom.base_domain.is_none() && !custom.passthrough);
    for bad in [
        "http://x.test/",
        "https://",
        "https://x.test:notaport/",
        "https://u@x.test/",
    ] {
        assert_eq!(parse_url(bad).unwrap_err().step, SiteStep::Url, "{bad}");
    }
}

#[test]
fn a_custom_domain_needs_a_base_and_an_app_id() {
    let check = SiteCheck::new(rustls::RootCertStore::empty());
    let r = verify_site("https://shop.example.com/", &check);
    assert_eq!(r.error.unwrap().step, SiteStep::Url);
    let r = verify_site(&format!("https://{APP}s.apps.test/"), &check);
    let e = r.error.unwrap();
    assert_eq!(e.step, SiteStep::Url);
    assert!(e.reason.contains("passthrough"), "{e}");
}

/// Serves canned answers over TLS, one per request, on one connection.
fn serve(answers: Vec<Vec<u8>>) -> (u16, rustls::RootCertStore) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["site.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            if tls.conn.complete_io(&mut tls.sock).is_err() {
                return;
            }
        }
        for answer in answers {
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") {
                if tls.read(&mut b).unwrap_or(0) == 0 {
                    return;
                }
                req.push(b[0]);
            }
            tls.write_all(&answer).unwrap();
            tls.flush().unwrap();
        }
    });
    (port, roots)
}

fn client(port: u16, roots: rustls::RootCertStore) -> http::Conn {
    let check = SiteCheck::new(roots);
    http::Conn::connect(
        &format!("127.0.0.1:{port}"),
        "site.test",
        tls_config(&check).unwrap(),
        Instant::now() + Duration::from_secs(10),
    )
    .unwrap()
}

#[test]
fn reads_length_and_chunked_bodies_on_one_connection_and_bounds_them() {
    let (port, roots) = serve(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
            .to_vec(),
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec(),
    ]);
    let mut c = client(port, roots);
    assert_eq!(c.peer_chain().len(), 1);
    assert_eq!(c.get("site.test", "/a", 10).unwrap(), b"hello");
    assert_eq!(c.get("site.test", "/b", 10).unwrap(), b"abcde");
    let e = c.get("site.test", "/c", 10).unwrap_err();
    assert!(
        e.message.contains("404") && e.message.contains("nope"),
        "{}",
        e.message
    );
    let e = c.get("site.test", "/d", 10).unwrap_err();
    assert!(e.message.contains("limit"), "{}", e.message);
}

#[test]
fn a_certificate_outside_the_roots_fails_the_handshake() {
    let (port, _) = serve(vec![]);
    let check = SiteCheck::new(rustls::RootCertStore::empty());
    let e = http::Conn::connect(
        &format!("127.0.0.1:{port}"),
        "site.test",
        tls_config(&check).unwrap(),
        Instant::now() + Duration::from_secs(10),
    )
    .err()
    .unwrap();
    assert!(
        e.message.contains("UnknownIssuer") || e.message.contains("invalid peer certificate"),
        "{}",
        e.message
    );
}
