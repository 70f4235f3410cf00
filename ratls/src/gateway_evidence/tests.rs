//! Gateway evidence: one good evidence verifies, and every kind of tampering or pin
//! mismatch fails at the step that names it.

use std::sync::Arc;

use super::*;
use crate::cert::Identity;
use crate::collateral::SourceChain;
use crate::eventlog::{names, Event};
use crate::pins::Pins;
use crate::provider::{Measurer, SimulatedProvider};
use crate::{AttestationVerifier, Measurement, Policy, Reason, Step};

fn booted(compose: &[u8], app: Option<AppId>) -> (Measurer, Identity) {
    let compose_hash = ComposeHash::of(compose);
    let id = Identity {
        app_id: app.unwrap_or_else(|| compose_hash.default_app_id()),
        compose_hash,
        instance_id: InstanceId([5; 20]),
    };
    let m = Measurer::new(Arc::new(SimulatedProvider::new()));
    m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())
        .unwrap();
    m.emit(names::APP_ID, id.app_id.0.to_vec()).unwrap();
    m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())
        .unwrap();
    m.emit(
        names::KEY_PROVIDER,
        names::key_provider_payload("kms", "00"),
    )
    .unwrap();
    (m, id)
}

/// A served certificate: its DER and the key hash the evidence binds.
fn served_cert(name: &str) -> (Vec<u8>, BoundKey) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let spki = SpkiHash::of_certificate(cert.der()).unwrap();
    (
        cert.der().to_vec(),
        BoundKey {
            role: KeyRole::Certificate,
            name: name.into(),
            spki_sha256: spki,
        },
    )
}

struct Fixture {
    evidence: GatewayEvidence,
    served: Vec<u8>,
    id: Identity,
}

fn fixture() -> Fixture {
    let (m, id) = booted(b"{\"name\":\"gateway\"}", None);
    let (served, bound) = served_cert("*.apps.test");
    let claims = GatewayClaims {
        keys: vec![
            bound,
            BoundKey {
                role: KeyRole::AcmeAccount,
                name: "https://acme.test/acct/1".into(),
                spki_sha256: SpkiHash([3; 32]),
            },
        ],
        issued_at: 1_800_000_000,
        nonce: None,
    };
    let evidence = quote_in_process(&m, &id, &claims).unwrap();
    Fixture {
        evidence,
        served,
        id,
    }
}

fn verifier(pins: &Pins) -> AttestationVerifier {
    pins.verifier()
}

fn dev() -> Pins {
    Pins {
        allow_simulated: true,
        ..Pins::default()
    }
}

fn refused(v: &AttestationVerifier, ev: &GatewayEvidence) -> GatewayError {
    v.verify_gateway(ev).unwrap_err()
}

fn inner(e: &GatewayError) -> Step {
    match &e.reason {
        GatewayReason::Verify(v) => v.step,
        other => panic!("not a verification failure: {other}"),
    }
}

#[test]
fn good_evidence_verifies_and_binds_the_served_certificate() {
    let f = fixture();
    let v = verifier(&dev()).verify_gateway(&f.evidence).unwrap();
    assert_eq!(v.app_id(), &f.id.app_id);
    assert_eq!(v.compose_hash(), &f.id.compose_hash);
    assert!(v.is_simulated());
    assert_eq!(v.claims().keys.len(), 2);
    let bound = v.binding_of_certificate(&f.served).unwrap();
    assert_eq!(bound.name, "*.apps.test");
    // Survives the JSON document it is published in.
    let doc = GatewayDocument::attested(f.evidence.clone(), v.claims().clone());
    let json = serde_json::to_vec(&doc).unwrap();
    let back = GatewayDocument::from_json(&json)
        .unwrap()
        .into_evidence()
        .unwrap();
    assert_eq!(back, f.evidence);
    let ins = verifier(&dev()).inspect_gateway(&back);
    assert!(ins.passed());
    assert!(
        ins.checks.iter().all(|c| c.outcome.is_verified()),
        "{:?}",
        ins.checks
    );
    assert!(ins
        .check(Step::KeyBinding)
        .unwrap()
        .title
        .contains("claims buffer"));
}

#[test]
fn a_certificate_the_evidence_does_not_bind_fails_at_gateway_key_binding() {
    let f = fixture();
    let v = verifier(&dev()).verify_gateway(&f.evidence).unwrap();
    let (other, _) = served_cert("*.apps.test");
    let e = v.binding_of_certificate(&other).unwrap_err();
    assert_eq!(e.step, GatewayStep::GatewayKeyBinding);
    assert!(e.to_string().contains("gateway-key-binding"), "{e}");
    assert!(e.to_string().contains("*.apps.test"), "{e}");
    // The ACME account key is bound, but not as a certificate a client may receive.
    let e = v.binding_of(&SpkiHash([3; 32])).unwrap_err();
    assert_eq!(e.step, GatewayStep::GatewayKeyBinding);
    let e = v.binding_of_certificate(b"junk").unwrap_err();
    assert_eq!(e.step, GatewayStep::GatewayKeyBinding);
}

#[test]
fn a_flipped_quote_byte_fails_at_gateway_quote() {
    let f = fixture();
    let mut ev = f.evidence.clone();
    // A byte of MRTD, inside the signed TD report body.
    ev.quote[200] ^= 1;
    let e = refused(&verifier(&dev()), &ev);
    assert_eq!(e.step, GatewayStep::GatewayQuote, "{e}");
    assert_eq!(inner(&e), Step::QuoteSignature, "{e}");
    let mut ev = f.evidence.clone();
    ev.quote.truncate(100);
    let e = refused(&verifier(&dev()), &ev);
    assert_eq!(
        (e.step, inner(&e)),
        (GatewayStep::GatewayQuote, Step::Parse),
        "{e}"
    );
}

#[test]
fn changed_claims_fail_at_gateway_quote_key_binding() {
    let f = fixture();
    // Another key listed: the buffer decodes but its hash is not the quoted report data.
    let mut claims = GatewayClaims::from_claims_buffer(&f.evidence.claims_buffer).unwrap();
    claims.keys.push(served_cert("evil.test").1);
    let mut ev = f.evidence.clone();
    ev.claims_buffer = claims.to_claims_buffer().unwrap();
    let e = refused(&verifier(&dev()), &ev);
    assert_eq!(
        (e.step, inner(&e)),
        (GatewayStep::GatewayQuote, Step::KeyBinding),
        "{e}"
    );
    assert!(matches!(
        &e.reason,
        GatewayReason::Verify(v) if matches!(v.reason, Reason::ReportDataMismatch { .. })
    ));
    // A flipped byte: whatever it breaks, it is the evidence that fails.
    for i in [
        0,
        f.evidence.claims_buffer.len() / 2,
        f.evidence.claims_buffer.len() - 1,
    ] {
        let mut ev = f.evidence.clone();
        ev.claims_buffer[i] ^= 0x01;
        let e = refused(&verifier(&dev()), &ev);
        assert_eq!(e.step, GatewayStep::GatewayQuote, "byte {i}: {e}");
    }
}

#[test]
fn a_tampered_event_or_identity_fails_at_gateway_quote_replay() {
    let f = fixture();
    // The key-provider event's payload rewritten (its digest recomputed, so it decodes).
    let mut log = EventLog::new();
    for e in f.evidence.event_log.events() {
        let payload = if e.name == names::KEY_PROVIDER {
            names::key_provider_payload("none", "")
        } else {
            e.payload.clone()
        };
        log.push(Event::new(&e.name, payload).unwrap()).unwrap();
    }
    let mut ev = f.evidence.clone();
    ev.event_log = log;
    let e = refused(&verifier(&dev()), &ev);
    assert_eq!(
        (e.step, inner(&e)),
        (GatewayStep::GatewayQuote, Step::EventLogReplay),
        "{e}"
    );
    // A claimed compose hash the log does not record.
    let mut ev = f.evidence.clone();
    ev.compose_hash = ComposeHash([9; 32]);
    let e = refused(&verifier(&dev()), &ev);
    assert_eq!(
        (e.step, inner(&e)),
        (GatewayStep::GatewayQuote, Step::EventLogReplay),
        "{e}"
    );
    // A flipped event byte in the published JSON: the digest no longer matches.
    let mut json = serde_json::to_value(&f.evidence).unwrap();
    let payload = json["event_log"][0]["event_payload"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = format!(
        "{}{}",
        if &payload[..1] == "0" { "1" } else { "0" },
        &payload[1..]
    );
    json["event_log"][0]["event_payload"] = flipped.into();
    let doc = serde_json::json!({ "attested": true, "evidence": json });
    let e = GatewayDocument::from_json(doc.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.step, GatewayStep::GatewayQuote);
    assert!(e.to_string().contains("digest"), "{e}");
}

#[test]
fn wrong_pins_fail_at_gateway_pin() {
    let f = fixture();
    let right = Pins {
        compose_hash: Some(f.id.compose_hash),
        app_id: Some(f.id.app_id),
        mrtd: Some(SimulatedProvider::new().mrtd()),
        ..dev()
    };
    verifier(&right).verify_gateway(&f.evidence).unwrap();
    for (pins, what) in [
        (
            Pins {
                compose_hash: Some(ComposeHash([1; 32])),
                ..right.clone()
            },
            "compose hash",
        ),
        (
            Pins {
                app_id: Some(AppId([1; 20])),
                ..right.clone()
            },
            "app id",
        ),
        (
            Pins {
                mrtd: Some(Measurement([1; 48])),
                ..right.clone()
            },
            "MRTD",
        ),
    ] {
        let e = refused(&verifier(&pins), &f.evidence);
        assert_eq!(e.step, GatewayStep::GatewayPin, "{what}: {e}");
        assert!(e.to_string().contains(what), "{e}");
        assert!(e
            .to_string()
            .starts_with("gateway verification failed at gateway-pin"));
    }
}

#[test]
fn simulated_quotes_need_allow_simulated() {
    let f = fixture();
    let e = refused(&verifier(&Pins::default()), &f.evidence);
    assert_eq!(e.step, GatewayStep::GatewayQuote);
    assert!(matches!(
        &e.reason,
        GatewayReason::Verify(v) if v.reason == Reason::SimulatedNotAllowed
    ));
    let mut p = Policy::any_measurements();
    p.allow_simulated = true;
    AttestationVerifier::new(Arc::new(SourceChain::new()), p)
        .verify_gateway(&f.evidence)
        .unwrap();
}

#[test]
fn a_named_gateway_app_id_is_not_believed() {
    let (m, id) = booted(b"{\"name\":\"named gateway\"}", Some(AppId([0xab; 20])));
    let claims = GatewayClaims {
        keys: vec![served_cert("*.apps.test").1],
        issued_at: 1,
        nonce: None,
    };
    let ev = quote_in_process(&m, &id, &claims).unwrap();
    let e = refused(&verifier(&dev()), &ev);
    assert_eq!(
        (e.step, inner(&e)),
        (GatewayStep::GatewayQuote, Step::AppAuthorisation),
        "{e}"
    );
    assert!(e.to_string().contains("content-addressed"), "{e}");
}

#[test]
fn a_nonce_is_checked_when_expected() {
    let (m, id) = booted(b"{\"name\":\"gateway\"}", None);
    let claims = GatewayClaims {
        keys: vec![served_cert("*.apps.test").1],
        issued_at: 1,
        nonce: Some(vec![0x42; 16]),
    };
    let ev = quote_in_process(&m, &id, &claims).unwrap();
    verifier(&dev())
        .expect_nonce(vec![0x42; 16])
        .verify_gateway(&ev)
        .unwrap();
    let e = verifier(&dev())
        .expect_nonce(vec![0x43; 16])
        .verify_gateway(&ev)
        .unwrap_err();
    assert_eq!(
        (e.step, inner(&e)),
        (GatewayStep::GatewayQuote, Step::Freshness),
        "{e}"
    );
}

#[test]
fn oversize_and_unattested_documents_are_refused_before_decoding() {
    let f = fixture();
    let e = GatewayDocument::from_json(&vec![b' '; MAX_DOCUMENT_LEN + 1]).unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
    let mut ev = f.evidence.clone();
    ev.quote = vec![0; crate::quote::MAX_QUOTE_LEN + 1];
    let doc = serde_json::json!({ "attested": true, "evidence": ev });
    let e = GatewayDocument::from_json(doc.to_string().as_bytes()).unwrap_err();
    assert!(e.to_string().contains("quote is"), "{e}");
    let e = verifier(&dev()).verify_gateway(&ev).unwrap_err();
    assert_eq!(
        (e.step, inner(&e)),
        (GatewayStep::GatewayQuote, Step::Parse),
        "{e}"
    );
    let mut ev = f.evidence.clone();
    ev.claims_buffer = vec![0xa0; MAX_CLAIMS_LEN + 1];
    assert_eq!(
        refused(&verifier(&dev()), &ev).step,
        GatewayStep::GatewayQuote
    );

    let json = serde_json::to_vec(&GatewayDocument::unattested()).unwrap();
    let e = GatewayDocument::from_json(&json)
        .unwrap()
        .into_evidence()
        .unwrap_err();
    assert_eq!(e.step, GatewayStep::GatewayQuote);
    assert!(e.to_string().contains(NOT_ATTESTED), "{e}");
    let e = GatewayDocument::from_json(br#"{"attested":true}"#)
        .unwrap()
        .into_evidence()
        .unwrap_err();
    assert!(e.to_string().contains("no evidence"), "{e}");
    assert!(GatewayDocument::from_json(b"[1,2").is_err());
}
