//! One key release end to end over loopback, and its parts.
//!
//! - `release/keep-alive`: `POST /v1/app-keys` on a kept-alive mutual RA-TLS connection
//!   (attestation answered from the verified-certificate cache, derivation, app CA
//!   signing, JSON).
//! - `release/new-connection`: the same with a fresh TLS handshake per release (client
//!   certificate, KMS RA-TLS server certificate; both verdicts cached).
//! - `derive/app-keys`: derivation and app CA certificate alone.
//! - `verify/uncached` / `verify/cached`: full RA-TLS verification of a client
//!   certificate (quote signature, TCB, key binding, replay) vs a cache hit.
//!
//! Run: `cargo bench -p teegate-kms --bench release`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use kms::api::AppKeysRequest;
use kms::client::{pinned_root, ClientIdentity, KmsClient};
use kms::derive::{app_ca_key, disk_key, env_secret, RootSecret};
use ratls::cert::{issue, CertProfile, Identity};
use ratls::eventlog::names;
use ratls::provider::{Measurer, SimulatedProvider};
use ratls::{AttestationVerifier, CachingVerifier, ComposeHash, InstanceId, Policy};
use teegate_kms as kms;

const COMPOSE: &[u8] = b"{\"name\":\"bench\"}";

fn dev_verifier() -> AttestationVerifier {
    let mut p = Policy::any_measurements();
    p.allow_simulated = true;
    AttestationVerifier::new(Arc::new(ratls::collateral::SourceChain::new()), p)
}

fn instance_cert() -> ratls::cert::RaTlsCert {
    let compose_hash = ComposeHash::of(COMPOSE);
    let id = Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: InstanceId([1; 20]),
    };
    let m = Measurer::new(Arc::new(SimulatedProvider::new()));
    m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())
        .unwrap();
    m.emit(names::APP_ID, id.app_id.0.to_vec()).unwrap();
    m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())
        .unwrap();
    m.emit(names::KEY_PROVIDER, b"kms".to_vec()).unwrap();
    let profile =
        CertProfile::server_and_client(vec!["bench.test".into()], Duration::from_secs(3600));
    issue(&m, &id, &profile, None).unwrap()
}

struct Running {
    url: String,
    root_der: Vec<u8>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_kms() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let app = ComposeHash::of(COMPOSE);
    let cfg_path = dir.path().join("kms.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nquote_provider = \"simulated\"\n\
             [verifier]\nallow_simulated = true\n\
             [policy.os]\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"\n\
             [policy.apps.{}]\ncompose_hashes = [\"{}\"]\nallow_simulated = true\n",
            dir.path().join("data").display(),
            app.default_app_id(),
            app
        ),
    )
    .unwrap();
    let cfg: config::KmsConfig = config::load(&cfg_path).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        kms::run(
            cfg,
            kms::RunOptions::default(),
            async {
                let _ = stop_rx.await;
            },
            move |r| {
                let _ = ready_tx.send(r.clone());
            },
        )
        .await
        .unwrap();
    });
    let ready = ready_rx.await.unwrap();
    let root_pem = std::fs::read(&ready.root_ca_pem).unwrap();
    Running {
        url: format!("https://{}", ready.addr),
        root_der: pem::parse(root_pem).unwrap().into_contents(),
        _dir: dir,
        _stop: stop_tx,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kms = rt.block_on(start_kms());
    let cert = instance_cert();
    let ident = || -> Option<ClientIdentity> { Some((cert.rustls_chain(), cert.rustls_key())) };
    let server_check = Arc::new(CachingVerifier::new(dev_verifier(), 16));
    let make_client = || {
        KmsClient::new(
            &kms.url,
            pinned_root(&kms.root_der, server_check.clone()).unwrap(),
            ident(),
            Duration::from_secs(10),
        )
        .unwrap()
    };
    let req = AppKeysRequest::default();

    let mut g = c.benchmark_group("release");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    let kept = make_client();
    rt.block_on(kept.app_keys(&req)).unwrap();
    g.bench_function("keep-alive", |b| {
        b.to_async(&rt)
            .iter(|| async { kept.app_keys(&req).await.unwrap() })
    });
    g.bench_function("new-connection", |b| {
        b.to_async(&rt)
            .iter(|| async { make_client().app_keys(&req).await.unwrap() })
    });
    g.finish();

    let mut g = c.benchmark_group("derive");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    let root = kms::root::RootOfTrust::generate().unwrap();
    let secret = RootSecret::from_bytes([1; 32]);
    let app = ComposeHash::of(COMPOSE).default_app_id();
    g.bench_function("app-keys", |b| {
        b.iter(|| {
            let key = app_ca_key(&secret, app.as_bytes());
            let cert = kms::appca::issue_app_ca(
                app.as_bytes(),
                &key.public_key(),
                root.ca_cert_der(),
                root.ca_key(),
            )
            .unwrap();
            (
                cert,
                disk_key(&secret, app.as_bytes()),
                env_secret(&secret, app.as_bytes()).to_bytes(),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("verify");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    let v = dev_verifier();
    g.bench_function("uncached", |b| b.iter(|| v.verify(&cert.cert_der).unwrap()));
    let cached = CachingVerifier::new(dev_verifier(), 16);
    cached.verify(&cert.cert_der).unwrap();
    g.bench_function("cached", |b| {
        b.iter(|| cached.verify(&cert.cert_der).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
