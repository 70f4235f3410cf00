//! The sidecar's RA-TLS front and registration client against a real gateway process:
//! register over mutual RA-TLS, keep the lease alive, and carry requests to the container
//! port named in the SNI; names for other apps or unexposed ports fail the handshake.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use guest_sidecar::front::{self, CertSlot, FrontLimits, FrontResolver, Routes};
use guest_sidecar::register::{GatewayTarget, Registrar, Registration};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

/// A plain-HTTP "container" answering `container=<name> path=<path>`.
async fn start_container(name: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(format!("container={name} path={}", req.uri().path())),
                        )))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

struct Instance {
    id: ratls::cert::Identity,
    front_addr: std::net::SocketAddr,
    registration: Registration,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start_instance(n: u8) -> Instance {
    let id = identity(b"{\"name\":\"sidecar-test\"}", n);
    let cert = ratls_cert(&id);
    let web = start_container("web").await;
    let api = start_container("api").await;
    let routes = Routes {
        app_id: id.app_id,
        instance_id: id.instance_id,
        ports: HashMap::from([(80, web), (8080, api)]),
    };
    let slot = Arc::new(CertSlot::new(
        front::certified_key(cert.rustls_chain(), cert.rustls_key()).unwrap(),
    ));
    let resolver = Arc::new(FrontResolver {
        routes: Arc::new(RwLock::new(routes)),
        cert: slot,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(front::serve(
        listener,
        resolver,
        FrontLimits::default(),
        stopped,
    ));
    let registration = Registration {
        client_chain: cert.rustls_chain(),
        client_key: Arc::new(cert.rustls_key()),
        request: gateway::api::RegisterRequest {
            front_addr,
            ports: vec![80, 8080],
            front_certs: vec![],
            app_compose: None,
            kms_root_ca: None,
        },
    };
    Instance {
        id,
        front_addr,
        registration,
        _stop: stop,
    }
}

fn registrar(gw: &Gateway) -> Arc<Registrar> {
    Arc::new(Registrar::new(dev_roots(&gw.dev_ca_pem())))
}

fn target(gw: &Gateway) -> GatewayTarget {
    GatewayTarget {
        addr: format!("127.0.0.1:{}", gw.ports.registration),
        server_name: format!("gateway.{BASE}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_front_carries_requests_to_the_named_container_port() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(dir.path(), GatewayPorts::new(), "");
    let inst = start_instance(1).await;
    let resp = registrar(&gw)
        .register(&target(&gw), &inst.registration)
        .await
        .unwrap();
    assert_eq!(resp.instance_id, inst.id.instance_id.to_hex());
    assert_eq!(resp.accepted_fingerprints.len(), 1);

    let hosts = vec![
        format!("{}.{BASE}", inst.id.app_id),
        format!("{}-8080.{BASE}", inst.id.app_id),
    ];
    let c = client(&gw, &hosts, false);
    let body = c
        .get(format!("https://{}/a", hosts[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "container=web path=/a");
    let body = c
        .get(format!("https://{}/b", hosts[1]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "container=api path=/b");
}

async fn front_handshake(front: std::net::SocketAddr, sni: &str) -> Result<(), String> {
    let (cfg, _) = ratls_client_config(None);
    let tcp = tokio::net::TcpStream::connect(front)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_refuses_other_apps_and_unexposed_ports_at_the_handshake() {
    let inst = start_instance(2).await;
    let app = inst.id.app_id.to_hex();
    front_handshake(inst.front_addr, &format!("{app}-8080s.{BASE}"))
        .await
        .expect("exposed port");
    front_handshake(inst.front_addr, &format!("{}.{BASE}", inst.id.instance_id))
        .await
        .expect("instance id, port 80");
    let err = front_handshake(inst.front_addr, &format!("{app}-9999.{BASE}"))
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    assert!(
        front_handshake(inst.front_addr, &format!("{}.{BASE}", "ef".repeat(20)))
            .await
            .is_err(),
        "another app's name"
    );
    assert!(front_handshake(inst.front_addr, "localhost").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_short_lease_alive_and_refusals_carry_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway_in(
        dir.path(),
        GatewayPorts::new(),
        "[registration]\nallow_loopback = true\nlease_secs = 2\n",
    );
    let inst = start_instance(3).await;
    let (_tx, current) = tokio::sync::watch::channel(inst.registration.clone());
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(registrar(&gw).keep_registered(
        target(&gw),
        current,
        Duration::from_secs(30),
        stopped,
    ));
    let host = format!("{}.{BASE}", inst.id.app_id);
    let c = client(&gw, std::slice::from_ref(&host), false);
    // Wait for the first registration (bounded), then outlive several leases.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c
        .get(format!("https://{host}/"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(std::time::Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        c.get(format!("https://{host}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "lease lapsed despite heartbeats"
    );

    let strict_dir = tempfile::tempdir().unwrap();
    let strict = start_gateway_in(strict_dir.path(), GatewayPorts::new(), "[verifier]\nallow_simulated = false\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\ncompose_hashes = \"any\"\napp_ids = \"any\"\n");
    let err = registrar(&strict)
        .register(&target(&strict), &inst.registration)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("403") && text.contains("SIMULATED"), "{text}");
}
