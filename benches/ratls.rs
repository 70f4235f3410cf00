//! RA-TLS costs: issuing a certificate, verifying a simulated certificate in full,
//! verifying the real vector quote in full, a verified-certificate cache hit, and a TLS
//! handshake with the sidecar's real front, normal against fresh (a quote over the client's
//! nonce, issued and verified per connection). Run with `cargo bench --bench ratls`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ratls::cert::{issue, CertProfile, Identity};
use ratls::collateral::{Collateral, FileSource, SourceChain};
use ratls::eventlog::names;
use ratls::provider::{Measurer, SimulatedProvider};
use ratls::{
    AttestationVerifier, CachingVerifier, ComposeHash, Fingerprint, InstanceId, Policy,
    QuoteVerifier, TcbPolicy,
};

fn measurer(id: &Identity) -> Measurer {
    let m = Measurer::new(Arc::new(SimulatedProvider::new()));
    m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())
        .unwrap();
    m.emit(names::APP_ID, id.app_id.0.to_vec()).unwrap();
    m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())
        .unwrap();
    m
}

fn identity() -> Identity {
    let compose_hash = ComposeHash::of(b"bench");
    Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: InstanceId([5; 20]),
    }
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../shared/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("vector (../shared/vectors)")
}

fn benches(c: &mut Criterion) {
    let id = identity();
    let m = measurer(&id);
    let profile =
        CertProfile::server_and_client(vec!["bench.test".into()], Duration::from_secs(3600));
    c.bench_function("ratls/issue_simulated_cert", |b| {
        b.iter(|| black_box(issue(&m, &id, &profile, None).unwrap()))
    });

    let cert = issue(&m, &id, &profile, None).unwrap();
    let mut policy = Policy::any_measurements();
    policy.allow_simulated = true;
    let verifier = AttestationVerifier::new(Arc::new(SourceChain::new()), policy);
    c.bench_function("ratls/verify_simulated_cert_full", |b| {
        b.iter(|| black_box(verifier.verify(&cert.cert_der).unwrap()))
    });

    let collateral = Collateral::from_json(&vector("dcap-qvl_tdx_quote_collateral.json")).unwrap();
    let qv = QuoteVerifier::new(
        Arc::new(FileSource::from_collateral(collateral)),
        TcbPolicy::default(),
        false,
    );
    let quote = vector("dcap-qvl_tdx_quote");
    let at = 1_750_377_600; // 2025-06-20, inside the collateral window
    c.bench_function("ratls/verify_real_quote_full", |b| {
        b.iter(|| black_box(qv.verify_bytes(&quote, at).unwrap()))
    });

    let cached = CachingVerifier::new(verifier, 1024);
    cached.verify(&cert.cert_der).unwrap();
    let fp = Fingerprint::of(&cert.cert_der);
    c.bench_function("ratls/cache_hit_by_fingerprint", |b| {
        b.iter(|| black_box(cached.lookup(&fp).unwrap()))
    });
    c.bench_function("ratls/cache_hit_from_der", |b| {
        b.iter(|| black_box(cached.verify(&cert.cert_der).unwrap()))
    });
}

/// One handshake with the front through `ratls::pins` (the client checks the attestation).
async fn handshake(addr: std::net::SocketAddr, name: &str, config: rustls::ClientConfig) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    black_box(tls);
}

fn handshakes(c: &mut Criterion) {
    use guest_sidecar::front::{self, CertSlot, Fresh, FreshLimits, FrontLimits, FrontResolver};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let id = identity();
    let m = Arc::new(measurer(&id));
    let names = vec!["*.bench.test".to_string()];
    let profile = CertProfile::server_and_client(names.clone(), Duration::from_secs(3600));
    let cert = issue(&m, &id, &profile, None).unwrap();
    let resolver = Arc::new(FrontResolver {
        routes: Arc::new(std::sync::RwLock::new(front::Routes {
            app_id: id.app_id,
            instance_id: id.instance_id,
            ports: std::collections::HashMap::from([(80, "127.0.0.1:9".parse().unwrap())]),
        })),
        cert: Arc::new(CertSlot::new(
            front::certified_key(cert.rustls_chain(), cert.rustls_key()).unwrap(),
        )),
    });
    // Bounds out of the way: this measures cost, not the limiter.
    let limits = FreshLimits {
        per_source_burst: u32::MAX,
        global_burst: u32::MAX,
        ..FreshLimits::default()
    };
    let fresh = Arc::new(Fresh::for_instance(m, id.clone(), names, None, limits));
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(front::serve_with_fresh(
            listener,
            resolver,
            Some(fresh),
            FrontLimits::default(),
            stopped,
        ));
        addr
    });
    let sni = format!("{}.bench.test", id.app_id);
    let pins = ratls::pins::Pins {
        allow_simulated: true,
        ..Default::default()
    };
    // A normal client verifies the instance certificate once and then hits its cache.
    let (mut normal, _) = ratls::pins::client_config(&pins).unwrap();
    // No session resumption on either side of the comparison: every handshake is full.
    normal.resumption = rustls::client::Resumption::disabled();
    c.bench_function("front/handshake_normal", |b| {
        b.iter(|| rt.block_on(handshake(addr, &sni, normal.clone())))
    });
    // A fresh client: a new nonce, so a new quote and certificate, verified in full.
    c.bench_function("front/handshake_fresh", |b| {
        b.iter(|| {
            let (mut cfg, _, _) = ratls::pins::fresh_client_config(&pins).unwrap();
            cfg.resumption = rustls::client::Resumption::disabled();
            rt.block_on(handshake(addr, &sni, cfg))
        })
    });
}

criterion_group! {
    name = ratls_benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches, handshakes
}
criterion_main!(ratls_benches);
