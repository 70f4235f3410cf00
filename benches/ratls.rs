//! RA-TLS costs: issuing a certificate, verifying a simulated certificate in full,
//! verifying the real vector quote in full, and a verified-certificate cache hit.
//! Run with `cargo bench --bench ratls`.

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

criterion_group! {
    name = ratls_benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(ratls_benches);
