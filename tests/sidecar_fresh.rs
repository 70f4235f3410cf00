//! Freshness per connection against the sidecar's real RA-TLS front (real listener, real
//! rustls, real quotes from the simulated provider): a client that offers
//! `teegate-fresh-<hex nonce>` gets a certificate quoting over its nonce and still speaks
//! HTTP/1.1; `teegate verify --fresh` passes; a replayed fresh certificate fails at step
//! `freshness`; and the per-source bound refuses the N+1th fresh handshake while normal
//! handshakes keep working.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use guest_sidecar::front::{
    self, CertSlot, Fresh, FreshLimits, FrontLimits, FrontResolver, Routes,
};
use ratls::cert::{issue, CertProfile, Identity};
use ratls::provider::SimulatedProvider;
use rustls::pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain-HTTP/1.1 "container" answering every request with `container=web`.
async fn start_container() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let body = "container=web";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

struct FreshFront {
    id: Identity,
    addr: SocketAddr,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl FreshFront {
    fn sni(&self) -> String {
        format!("{}.{BASE}", self.id.app_id)
    }
}

/// A front with fresh handshakes on, wired like the sidecar's boot does.
async fn start_front(n: u8, fresh_limits: FreshLimits) -> FreshFront {
    let id = identity(b"{\"name\":\"fresh-test\"}", n);
    let measurer = Arc::new(booted(Arc::new(SimulatedProvider::new()), &id));
    let cert = issue(
        &measurer,
        &id,
        &CertProfile::server_and_client(vec![format!("*.{BASE}")], Duration::from_secs(3600)),
        None,
    )
    .unwrap();
    let routes = Routes {
        app_id: id.app_id,
        instance_id: id.instance_id,
        ports: HashMap::from([(80, start_container().await)]),
    };
    let resolver = Arc::new(FrontResolver {
        routes: Arc::new(RwLock::new(routes)),
        cert: Arc::new(CertSlot::new(
            front::certified_key(cert.rustls_chain(), cert.rustls_key()).unwrap(),
        )),
    });
    let fresh = Arc::new(Fresh::for_instance(
        measurer,
        id.clone(),
        vec![format!("*.{BASE}")],
        None,
        fresh_limits,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(front::serve_with_fresh(
        listener,
        resolver,
        Some(fresh),
        FrontLimits::default(),
        stopped,
    ));
    FreshFront {
        id,
        addr,
        _stop: stop,
    }
}

fn pins() -> ratls::pins::Pins {
    ratls::pins::Pins {
        allow_simulated: true,
        ..Default::default()
    }
}

/// A handshake through `ratls::pins` (fresh or not); returns the peer chain and the stream.
async fn handshake(
    front: &FreshFront,
    fresh: bool,
) -> Result<
    (
        Vec<Vec<u8>>,
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    ),
    String,
> {
    let config = if fresh {
        ratls::pins::fresh_client_config(&pins()).unwrap().0
    } else {
        ratls::pins::client_config(&pins()).unwrap().0
    };
    let tcp = tokio::net::TcpStream::connect(front.addr).await.unwrap();
    let name = ServerName::try_from(front.sni()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    Ok((chain, tls))
}

fn nonce_of(leaf: &[u8]) -> Option<Vec<u8>> {
    let c = ratls::cert::parse_ratls_cert(leaf).unwrap();
    ratls::cert::evidence::ClaimsBuffer::parse(&c.claims_buffer)
        .unwrap()
        .nonce
}

async fn teegate(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_teegate"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_handshake_quotes_the_clients_nonce_and_still_speaks_http1() {
    let front = start_front(1, FreshLimits::default()).await;
    let (normal, _) = handshake(&front, false).await.unwrap();
    assert_eq!(nonce_of(&normal[0]), None);

    let (fresh, mut tls) = handshake(&front, true).await.unwrap();
    let nonce = nonce_of(&fresh[0]).expect("a fresh certificate carries the nonce");
    assert_eq!(nonce.len(), ratls::fresh::MAX_NONCE_LEN);
    assert_ne!(fresh[0], normal[0]);
    // The client offered [teegate-fresh-…, http/1.1]: HTTP/1.1 is what was negotiated.
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tls.read_to_string(&mut resp).await.unwrap_or_default();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("container=web"), "{resp}");

    // The CLI, as a user runs it, by the passthrough name (`<app-id>s.<base>`: the
    // instance's own certificate; `<app-id>.<base>` is a URL the gateway terminates).
    let url = format!("https://{}s.{BASE}/", front.id.app_id);
    let o = teegate(vec![
        "verify".into(),
        url,
        "--connect".into(),
        front.addr.to_string(),
        "--allow-simulated".into(),
        "--fresh".into(),
    ])
    .await;
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("pin nonce"), "{out}");
    assert!(out.contains("verification    OK"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_fresh_certificate_fails_at_freshness() {
    let front = start_front(2, FreshLimits::default()).await;
    let (fresh, _) = handshake(&front, true).await.unwrap();
    let theirs = nonce_of(&fresh[0]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("fresh.pem");
    std::fs::write(&saved, ratls::cert::pem_encode("CERTIFICATE", &fresh[0])).unwrap();
    let verify = |nonce: &[u8]| {
        vec![
            "verify".to_string(),
            saved.to_str().unwrap().to_string(),
            "--allow-simulated".into(),
            "--nonce".into(),
            hex::encode(nonce),
        ]
    };
    // The certificate holds for the nonce it was made for…
    let o = teegate(verify(&theirs)).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // …and replayed to a client that sent another nonce, it fails at `freshness`.
    let o = teegate(verify(&[0x5a; 32])).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("failed at freshness"), "{err}");
    assert!(err.contains("replayed"), "{err}");

    // The instance's ordinary certificate carries no nonce at all: also `freshness`.
    let (normal, _) = handshake(&front, false).await.unwrap();
    std::fs::write(&saved, ratls::cert::pem_encode("CERTIFICATE", &normal[0])).unwrap();
    let o = teegate(verify(&theirs)).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("failed at freshness"), "{err}");
    assert!(err.contains("carries no nonce"), "{err}");

    // In a handshake: ratls::pins expecting a nonce refuses the certificate without it.
    let replay_pins = ratls::pins::Pins {
        nonce: Some(vec![0x5a; 32]),
        ..pins()
    };
    let (cfg, _) = ratls::pins::client_config(&replay_pins).unwrap();
    let tcp = tokio::net::TcpStream::connect(front.addr).await.unwrap();
    let e = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(front.sni()).unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("step: Freshness"), "{e}");
    assert!(e.to_string().contains("NoNonce"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_bound_refuses_the_next_fresh_handshake_but_not_normal_ones() {
    let limits = FreshLimits {
        per_source_burst: 3,
        per_source_interval: Duration::from_secs(3600),
        ..FreshLimits::default()
    };
    let front = start_front(3, limits).await;
    for i in 0..3 {
        let (chain, _) = handshake(&front, true)
            .await
            .unwrap_or_else(|e| panic!("fresh handshake {i}: {e}"));
        assert!(nonce_of(&chain[0]).is_some());
    }
    let refused = handshake(&front, true).await;
    assert!(
        refused.is_err(),
        "the 4th fresh handshake within the window"
    );
    // Refused means no certificate at all, never the instance's certificate passed off
    // as fresh; and the same source's normal handshakes are unaffected.
    for _ in 0..3 {
        let (chain, _) = handshake(&front, false).await.expect("normal handshake");
        assert_eq!(nonce_of(&chain[0]), None);
    }
}
