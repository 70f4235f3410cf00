//! RA-TLS issue and verification end to end with the simulated provider: every failure
//! names its step, and rustls handshakes succeed only when attestation verifies.

use std::sync::Arc;

use std::time::Duration;
use teegate_ratls as ratls;

use ratls::cert::{issue, CertAuthority, CertProfile, Identity, RaTlsCert};
use ratls::collateral::SourceChain;
use ratls::eventlog::names;
use ratls::provider::{Measurer, ProviderError, ProviderKind, QuoteProvider, SimulatedProvider};
use ratls::tls::{ChainTrust, RaTlsCheck, RaTlsClientVerifier, RaTlsServerVerifier};
use ratls::{
    Allowlist, AppId, AttestationVerifier, CachingVerifier, ComposeHash, InstanceId, Measurement,
    Policy, Reason, ReportData, Step,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn identity() -> Identity {
    let compose_hash = ComposeHash::of(b"{\"name\":\"demo\"}");
    Identity {
        app_id: compose_hash.default_app_id(),
        compose_hash,
        instance_id: InstanceId([0x11; 20]),
    }
}

/// Boots a measurer the way the sidecar does: the four boot events, in order.
fn booted(provider: Arc<dyn QuoteProvider>, id: &Identity) -> Measurer {
    let m = Measurer::new(provider);
    m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())
        .unwrap();
    m.emit(names::APP_ID, id.app_id.0.to_vec()).unwrap();
    m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())
        .unwrap();
    m.emit(names::KEY_PROVIDER, b"kms".to_vec()).unwrap();
    m
}

fn profile() -> CertProfile {
    CertProfile::server_and_client(vec!["app.teegate.test".into()], Duration::from_secs(3600))
}

fn sim_cert(issuer: Option<&CertAuthority>) -> RaTlsCert {
    let id = identity();
    issue(
        &booted(Arc::new(SimulatedProvider::new()), &id),
        &id,
        &profile(),
        issuer,
    )
    .unwrap()
}

fn dev_policy() -> Policy {
    let mut p = Policy::any_measurements();
    p.allow_simulated = true;
    p
}

fn verifier(policy: Policy) -> AttestationVerifier {
    AttestationVerifier::new(Arc::new(SourceChain::new()), policy)
}

/// A provider that lets a test break one thing about an otherwise good simulated TD.
struct Faulty {
    inner: SimulatedProvider,
    flip_quote_byte: Option<usize>,
    report_data: Option<ReportData>,
    drop_extensions: bool,
}

impl Faulty {
    fn new() -> Self {
        Self {
            inner: SimulatedProvider::new(),
            flip_quote_byte: None,
            report_data: None,
            drop_extensions: false,
        }
    }
}

impl QuoteProvider for Faulty {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Simulated
    }
    fn quote(&self, rd: &ReportData) -> Result<Vec<u8>, ProviderError> {
        let mut q = self.inner.quote(self.report_data.as_ref().unwrap_or(rd))?;
        if let Some(i) = self.flip_quote_byte {
            q[i] ^= 0x01;
        }
        Ok(q)
    }
    fn extend_rtmr3(&self, d: &Measurement) -> Result<(), ProviderError> {
        if self.drop_extensions {
            return Ok(());
        }
        self.inner.extend_rtmr3(d)
    }
}

fn faulty_cert(f: Faulty, id: &Identity) -> RaTlsCert {
    issue(&booted(Arc::new(f), id), id, &profile(), None).unwrap()
}

#[test]
fn good_simulated_cert_verifies_with_its_claims() {
    let cert = sim_cert(None);
    let v = verifier(dev_policy()).verify(&cert.cert_der).unwrap();
    let id = identity();
    assert_eq!(v.app_id(), &id.app_id);
    assert_eq!(v.compose_hash(), &id.compose_hash);
    assert_eq!(v.instance_id(), &id.instance_id);
    assert!(v.is_simulated());
    assert_eq!(v.event_log().len(), 4);
    assert_eq!(v.event_log().replay(), v.rtmrs()[3]);
    assert_eq!(v.dns_names(), ["app.teegate.test"]);
}

#[test]
fn simulated_quote_is_rejected_unless_allowed() {
    let cert = sim_cert(None);
    let err = verifier(Policy::any_measurements())
        .verify(&cert.cert_der)
        .unwrap_err();
    assert_eq!(err.step, Step::QuoteSignature);
    assert_eq!(err.reason, Reason::SimulatedNotAllowed);
    assert!(err.to_string().contains("SIMULATED"));
}

#[test]
fn tampered_quote_fails_quote_signature() {
    let id = identity();
    let mut f = Faulty::new();
    f.flip_quote_byte = Some(48 + 200); // inside the TD report (MRTD region)
    let err = verifier(dev_policy())
        .verify(&faulty_cert(f, &id).cert_der)
        .unwrap_err();
    assert_eq!(err.step, Step::QuoteSignature, "{err}");
}

#[test]
fn quote_bound_to_other_key_fails_key_binding() {
    let id = identity();
    let mut f = Faulty::new();
    f.report_data = Some(ReportData([0x42; 64]));
    let err = verifier(dev_policy())
        .verify(&faulty_cert(f, &id).cert_der)
        .unwrap_err();
    assert_eq!(err.step, Step::KeyBinding, "{err}");
    assert!(
        matches!(err.reason, Reason::ReportDataMismatch { .. }),
        "{err}"
    );
}

#[test]
fn event_log_that_does_not_replay_is_rejected() {
    let id = identity();
    let mut f = Faulty::new();
    f.drop_extensions = true;
    let err = verifier(dev_policy())
        .verify(&faulty_cert(f, &id).cert_der)
        .unwrap_err();
    assert_eq!(err.step, Step::EventLogReplay, "{err}");
    match err.reason {
        Reason::Rtmr3Mismatch { replayed, quoted } => {
            assert_eq!(quoted, Measurement::ZERO);
            assert_ne!(replayed, quoted);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn claims_that_disagree_with_the_log_are_rejected() {
    let id = identity();
    let m = booted(Arc::new(SimulatedProvider::new()), &id);
    let mut lying = id.clone();
    lying.app_id = AppId([0xee; 20]);
    let cert = issue(&m, &lying, &profile(), None).unwrap();
    let err = verifier(dev_policy()).verify(&cert.cert_der).unwrap_err();
    assert_eq!(err.step, Step::EventLogReplay);
    assert!(
        matches!(
            err.reason,
            Reason::ClaimMismatch {
                claim: "app-id",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn debug_td_is_always_rejected() {
    let id = identity();
    let m = booted(Arc::new(SimulatedProvider::new().debug_td()), &id);
    let cert = issue(&m, &id, &profile(), None).unwrap();
    let err = verifier(dev_policy()).verify(&cert.cert_der).unwrap_err();
    assert_eq!(err.step, Step::TcbStatus);
    assert_eq!(err.reason, Reason::DebugTd);
}

#[test]
fn policy_allowlists_are_enforced() {
    let cert = sim_cert(None);
    let mut p = dev_policy();
    p.compose_hashes = Allowlist::only([ComposeHash([9; 32])]);
    let err = verifier(p.clone()).verify(&cert.cert_der).unwrap_err();
    assert_eq!(err.step, Step::Policy);
    assert!(err.to_string().contains("compose hash"));

    p.compose_hashes = Allowlist::only([identity().compose_hash]);
    p.mrtd = Allowlist::only([Measurement([1; 48])]);
    let err = verifier(p.clone()).verify(&cert.cert_der).unwrap_err();
    assert!(err.to_string().contains("MRTD"), "{err}");

    p.mrtd = Allowlist::only([SimulatedProvider::new().mrtd()]);
    verifier(p).verify(&cert.cert_der).unwrap();
}

#[test]
fn garbage_and_plain_certificates_fail_to_parse() {
    let err = verifier(dev_policy())
        .verify(b"not a certificate")
        .unwrap_err();
    assert_eq!(err.step, Step::Parse);
    let plain = rcgen::generate_simple_self_signed(vec!["x.test".into()]).unwrap();
    let err = verifier(dev_policy()).verify(plain.cert.der()).unwrap_err();
    assert_eq!(err.step, Step::Parse);
    assert!(matches!(err.reason, Reason::MissingExtension(_)), "{err}");
}

#[test]
fn cache_answers_second_verification_and_keeps_failures_out() {
    let cert = sim_cert(None);
    let cv = CachingVerifier::new(verifier(dev_policy()), 16);
    let first = cv.verify(&cert.cert_der).unwrap();
    let second = cv.verify(&cert.cert_der).unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(cv.cache().len(), 1);
    assert!(cv.lookup(first.fingerprint()).is_some());
    assert!(cv.verify(b"junk").is_err());
    assert_eq!(cv.cache().len(), 1);
}

#[test]
fn cache_stays_within_its_bound() {
    let cv = CachingVerifier::new(verifier(dev_policy()), 4);
    for _ in 0..7 {
        cv.verify(&sim_cert(None).cert_der).unwrap();
    }
    assert!(cv.cache().len() <= 4, "{}", cv.cache().len());
}

// ---- rustls handshakes on loopback ----

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn check(policy: Policy, trust: ChainTrust) -> RaTlsCheck {
    RaTlsCheck::new(
        Arc::new(CachingVerifier::new(verifier(policy), 64)),
        trust,
        provider(),
    )
}

fn plain_cert() -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let c = rcgen::generate_simple_self_signed(vec!["app.teegate.test".into()]).unwrap();
    (
        vec![c.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into()),
    )
}

type Chain = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

fn ratls_chain(c: &RaTlsCert) -> Chain {
    (c.rustls_chain(), c.rustls_key())
}

/// Runs one handshake plus an echo; returns whether both sides succeeded.
async fn handshake(
    server_cert: Chain,
    client_verifier: Option<RaTlsClientVerifier>,
    client_cert: Option<Chain>,
    server_check: RaTlsServerVerifier,
) -> Result<(), String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let server_cfg = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(Arc::new(v)),
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(server_cert.0, server_cert.1)
    .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(server_check));
    let client_cfg = match client_cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("app.teegate.test").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        if &buf != b"ping" {
            return Err("echo mismatch".into());
        }
        Ok::<_, String>(())
    };
    let client_result = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .map_err(|_| "client timed out".to_string())?;
    let server_result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .map_err(|_| "server timed out".to_string())?
        .map_err(|e| e.to_string())?;
    client_result.and(server_result)
}

#[tokio::test]
async fn client_accepts_verified_ratls_server() {
    let cert = sim_cert(None);
    let v = RaTlsServerVerifier(check(dev_policy(), ChainTrust::SelfSigned));
    handshake(ratls_chain(&cert), None, None, v).await.unwrap();
}

#[tokio::test]
async fn client_refuses_plain_and_unverifiable_servers() {
    let v = RaTlsServerVerifier(check(dev_policy(), ChainTrust::SelfSigned));
    let err = handshake(plain_cert(), None, None, v).await.unwrap_err();
    assert!(err.contains("client"), "{err}");

    let strict = RaTlsServerVerifier(check(Policy::any_measurements(), ChainTrust::SelfSigned));
    let err = handshake(ratls_chain(&sim_cert(None)), None, None, strict)
        .await
        .unwrap_err();
    assert!(err.contains("client"), "{err}");
}

#[tokio::test]
async fn client_pins_app_id() {
    let wrong =
        RaTlsServerVerifier(check(dev_policy(), ChainTrust::SelfSigned).expect_app(AppId([1; 20])));
    assert!(handshake(ratls_chain(&sim_cert(None)), None, None, wrong)
        .await
        .is_err());
    let right = RaTlsServerVerifier(
        check(dev_policy(), ChainTrust::SelfSigned).expect_app(identity().app_id),
    );
    handshake(ratls_chain(&sim_cert(None)), None, None, right)
        .await
        .unwrap();
}

#[tokio::test]
async fn ca_signed_chain_must_reach_the_configured_root() {
    let ca = CertAuthority::generate("test app CA", Some(0)).unwrap();
    let other = CertAuthority::generate("other CA", Some(0)).unwrap();
    let cert = sim_cert(Some(&ca));
    let trusted = RaTlsServerVerifier(check(
        dev_policy(),
        ChainTrust::roots(&[ca.cert_der().to_vec()]).unwrap(),
    ));
    handshake(ratls_chain(&cert), None, None, trusted)
        .await
        .unwrap();
    let untrusted = RaTlsServerVerifier(check(
        dev_policy(),
        ChainTrust::roots(&[other.cert_der().to_vec()]).unwrap(),
    ));
    let err = handshake(ratls_chain(&cert), None, None, untrusted)
        .await
        .unwrap_err();
    assert!(err.contains("client"), "{err}");
}

#[tokio::test]
async fn mutual_ratls_requires_an_attested_client() {
    let server_cert = sim_cert(None);
    let server_check = || RaTlsServerVerifier(check(dev_policy(), ChainTrust::SelfSigned));
    let client_verifier = || {
        Some(RaTlsClientVerifier(check(
            dev_policy(),
            ChainTrust::SelfSigned,
        )))
    };

    handshake(
        ratls_chain(&server_cert),
        client_verifier(),
        Some(ratls_chain(&sim_cert(None))),
        server_check(),
    )
    .await
    .unwrap();
    let err = handshake(
        ratls_chain(&server_cert),
        client_verifier(),
        None,
        server_check(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("server") || err.contains("read"), "{err}");
    let err = handshake(
        ratls_chain(&server_cert),
        client_verifier(),
        Some(plain_cert()),
        server_check(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("server") || err.contains("read"), "{err}");
    let strict_server = Some(RaTlsClientVerifier(check(
        Policy::any_measurements(),
        ChainTrust::SelfSigned,
    )));
    assert!(handshake(
        ratls_chain(&server_cert),
        strict_server,
        Some(ratls_chain(&sim_cert(None))),
        server_check()
    )
    .await
    .is_err());
}

#[test]
fn inspection_of_a_good_cert_verifies_every_step_and_shows_the_replay() {
    let cert = sim_cert(None);
    let v = verifier(dev_policy());
    let ins = v.inspect(&cert.cert_der);
    for c in &ins.checks {
        assert!(c.outcome.is_verified(), "{:?}: {:?}", c.step, c.outcome);
    }
    assert!(ins.passed());
    let verdict = ins.verdict().unwrap();
    assert_eq!(
        verdict.fingerprint(),
        &ratls::Fingerprint::of(&cert.cert_der)
    );
    assert_eq!(ins.replay.len(), 4);
    assert_eq!(ins.replay[0].name, names::COMPOSE_HASH);
    let q = ins.quote.as_ref().unwrap();
    assert_eq!(ins.replay.last().unwrap().rtmr3_after, q.rtmrs[3]);
    assert_eq!(ins.replayed_rtmr3, Some(q.rtmrs[3]));
    assert_eq!(ins.expected_report_data, Some(q.report_data));
    assert_eq!(ins.simulated, Some(true));
    assert!(ins
        .check(Step::QuoteSignature)
        .unwrap()
        .outcome
        .text()
        .contains("SIMULATED"));
}

#[test]
fn inspection_names_the_failing_link_and_agrees_with_verify() {
    let id = identity();
    let mut f = Faulty::new();
    f.drop_extensions = true;
    let cert = faulty_cert(f, &id);
    let v = verifier(dev_policy());
    let ins = v.inspect(&cert.cert_der);
    let replay = ins.check(Step::EventLogReplay).unwrap();
    assert_eq!(replay.outcome.label(), "failed");
    assert!(
        replay.outcome.text().contains("replays to RTMR3"),
        "{:?}",
        replay.outcome
    );
    // The links before it still verified; the verdict is what `verify` says.
    for step in [
        Step::Parse,
        Step::QuoteSignature,
        Step::TcbStatus,
        Step::KeyBinding,
    ] {
        assert!(ins.check(step).unwrap().outcome.is_verified(), "{step:?}");
    }
    assert!(!ins.passed());
    assert_eq!(
        ins.verdict().unwrap_err(),
        &v.verify(&cert.cert_der).unwrap_err()
    );
    assert_ne!(ins.replayed_rtmr3, ins.quote.as_ref().map(|q| q.rtmrs[3]));
}

#[test]
fn inspection_of_a_forged_quote_does_not_vouch_for_later_links() {
    let id = identity();
    let mut f = Faulty::new();
    f.flip_quote_byte = Some(48 + 200);
    let cert = faulty_cert(f, &id);
    let ins = verifier(dev_policy()).inspect(&cert.cert_der);
    assert_eq!(
        ins.check(Step::QuoteSignature).unwrap().outcome.label(),
        "failed"
    );
    for step in [Step::TcbStatus, Step::KeyBinding, Step::EventLogReplay] {
        assert_eq!(
            ins.check(step).unwrap().outcome.label(),
            "not checked",
            "{step:?}"
        );
    }
    assert_eq!(ins.verdict().unwrap_err().step, Step::QuoteSignature);
}

#[test]
fn inspection_of_garbage_reports_a_parse_failure() {
    let ins = verifier(dev_policy()).inspect(b"not a certificate");
    assert_eq!(ins.check(Step::Parse).unwrap().outcome.label(), "failed");
    assert!(ins.certificate.is_none());
    assert_eq!(ins.verdict().unwrap_err().step, Step::Parse);
}

/// A root CA and an app CA it signed, the way the KMS makes them.
fn root_and_app_ca() -> (Vec<u8>, CertAuthority) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test KMS root");
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = rcgen::Issuer::new(root_params, root_key);
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test app CA");
    let ca = ca_params.signed_by(&ca_key, &issuer).unwrap();
    let app_ca = CertAuthority::from_der(ca.der().to_vec(), &ca_key.serialize_der()).unwrap();
    (root.der().to_vec(), app_ca)
}

#[test]
fn chain_explained_from_pinned_root_to_instance() {
    use ratls::chain::explain;
    let (root, app_ca) = root_and_app_ca();
    let leaf = sim_cert(Some(&app_ca));
    let chain = vec![
        leaf.cert_der.clone(),
        app_ca.cert_der().to_vec(),
        root.clone(),
    ];
    let now = ratls::verifier::unix_now();

    let links = explain(&chain, std::slice::from_ref(&root), now);
    let roles: Vec<_> = links.iter().map(|l| l.role).collect();
    assert_eq!(
        roles,
        ["KMS root CA", "app CA", "instance RA-TLS certificate"]
    );
    for l in &links {
        assert!(l.outcome.is_verified(), "{}: {:?}", l.role, l.outcome);
    }

    // Another root pinned: the root link fails, the signatures below still hold.
    let (other_root, _) = root_and_app_ca();
    let links = explain(&chain, &[other_root], now);
    assert_eq!(links[0].outcome.label(), "failed");
    assert!(links[1].outcome.is_verified() && links[2].outcome.is_verified());

    // Nothing pinned: the root is shown but not vouched for.
    let links = explain(&chain, &[], now);
    assert_eq!(links[0].outcome.label(), "not checked");

    // The root missing: the app CA's link cannot be checked.
    let links = explain(&chain[..2], std::slice::from_ref(&root), now);
    assert_eq!(links[0].role, "app CA");
    assert_eq!(links[0].outcome.label(), "not checked");

    // A leaf from another app CA presented with this one: its signature link fails.
    let (_, stranger_ca) = root_and_app_ca();
    let foreign = sim_cert(Some(&stranger_ca));
    let mixed = vec![
        foreign.cert_der.clone(),
        app_ca.cert_der().to_vec(),
        root.clone(),
    ];
    let links = explain(&mixed, std::slice::from_ref(&root), now);
    assert_eq!(links[2].outcome.label(), "failed", "{:?}", links[2].outcome);

    // A self-signed RA-TLS certificate stands alone.
    let alone = sim_cert(None);
    let links = explain(std::slice::from_ref(&alone.cert_der), &[], now);
    assert_eq!(links.len(), 1);
    assert!(links[0].outcome.is_verified(), "{:?}", links[0].outcome);
}
