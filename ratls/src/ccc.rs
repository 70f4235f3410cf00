//! Inspecting any CCC interoperable RA-TLS certificate (Gramine, Intel SGX SDK, rats-tls,
//! teegate): decode the evidence, list the claims-buffer keys (unknown ones are listed,
//! not refused), check the key binding, and say where verification stops. A teegate
//! certificate goes on to the full verification ([`crate::AttestationVerifier`]); another
//! implementation's stops at the quote, which teegate can verify only when it is TDX.
//! Nothing here trusts the quote: the key binding of an unverified quote shows that the
//! certificate is consistent, not that a TEE made it.

use serde::Serialize;

use crate::cert::evidence::{self, ClaimsBuffer};
use crate::cert::{parse_ccc_cert, ParsedCccCert};
use crate::error::{Reason, Step, VerifyError};
use crate::inspect::{CertFacts, Check, Outcome, STEPS};
use crate::quote::{QuoteHeader, TEE_TYPE_TDX};
use crate::types::{Fingerprint, ReportData};

/// The CCC evidence as decoded.
#[derive(Debug, Clone, Serialize)]
pub struct CccFacts {
    /// Every key of the claims-buffer map, in order.
    pub claim_keys: Vec<String>,
    /// Keys neither CCC nor teegate define.
    pub other_keys: Vec<String>,
    /// Whether the buffer carries teegate's app claims (`teegate-claims`).
    pub teegate_claims: bool,
    pub pubkey_hash_alg: Option<&'static str>,
    #[serde(with = "opt_hex")]
    pub pubkey_hash: Option<Vec<u8>>,
    #[serde(with = "opt_hex")]
    pub nonce: Option<Vec<u8>>,
    pub claims_buffer_len: usize,
    pub quote_len: usize,
    pub quote_header: Option<QuoteHeader>,
    /// "SGX", "TDX", …
    pub tee: Option<String>,
    /// The quote's report data as read from its bytes (unverified).
    pub report_data: Option<ReportData>,
    /// SHA-256(claims-buffer), zero padded: what the report data must be.
    pub expected_report_data: ReportData,
}

/// A CCC certificate's inspection: facts and the steps up to where it stops.
#[derive(Debug, Clone, Serialize)]
pub struct CccInspection {
    pub fingerprint: Option<Fingerprint>,
    pub certificate: Option<CertFacts>,
    pub evidence: Option<CccFacts>,
    pub checks: Vec<Check>,
    /// The first failure, in step order.
    #[serde(skip)]
    pub error: Option<VerifyError>,
}

mod opt_hex {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
}

impl CccInspection {
    fn new() -> Self {
        Self {
            fingerprint: None,
            certificate: None,
            evidence: None,
            checks: STEPS
                .iter()
                .map(|&(step, title)| Check {
                    step,
                    title,
                    outcome: Outcome::NotChecked {
                        why: "not reached".into(),
                    },
                })
                .collect(),
            error: None,
        }
    }

    fn set(&mut self, step: Step, outcome: Outcome) {
        if let Some(c) = self.checks.iter_mut().find(|c| c.step == step) {
            c.outcome = outcome;
        }
    }

    fn fail(&mut self, e: VerifyError) {
        self.set(
            e.step,
            Outcome::Failed {
                reason: e.reason.to_string(),
            },
        );
        self.error.get_or_insert(e);
    }

    fn rest_not_checked(&mut self, why: &str) {
        for c in &mut self.checks {
            if matches!(&c.outcome, Outcome::NotChecked { why } if why == "not reached") {
                c.outcome = Outcome::NotChecked { why: why.into() };
            }
        }
    }

    pub fn check(&self, step: Step) -> Option<&Check> {
        self.checks.iter().find(|c| c.step == step)
    }
}

/// Decodes and checks what can be checked of any CCC RA-TLS certificate, without trusting
/// its quote.
pub fn inspect_ccc(der: &[u8]) -> CccInspection {
    let mut ins = CccInspection::new();
    let cert = match parse_ccc_cert(der) {
        Ok(c) => c,
        Err(e) => {
            ins.fail(e);
            ins.rest_not_checked("the certificate did not decode");
            return ins;
        }
    };
    ins.fingerprint = Some(cert.fingerprint);
    ins.certificate = Some(CertFacts {
        subject: cert.subject.clone(),
        issuer: cert.issuer.clone(),
        self_issued: cert.self_issued,
        not_before: cert.not_before,
        not_after: cert.not_after,
        dns_names: cert.dns_names.clone(),
    });
    let header = QuoteHeader::peek(&cert.quote).ok();
    let report_data = header.and_then(|h| quote_report_data(&h, &cert.quote));
    let binding = ClaimsBuffer::parse(&cert.claims_buffer);
    ins.evidence = Some(facts(&cert, header, report_data, binding.as_ref().ok()));
    ins.set(
        Step::Parse,
        Outcome::Verified {
            detail: format!(
                "CCC evidence (2.23.133.5.4.9) decodes: quote {}, claims buffer{}",
                header
                    .map(|h| h.tee_name())
                    .unwrap_or_else(|| "malformed".into()),
                if cert.claims.is_some() {
                    " with teegate app claims"
                } else {
                    " without teegate app claims (another implementation's certificate)"
                }
            ),
        },
    );
    let key_binding = |r: Reason| VerifyError::new(Step::KeyBinding, r);
    match binding {
        Err(e) => ins.fail(key_binding(Reason::Evidence(e.0))),
        Ok(cb) => {
            let expected = cb.hash_alg.digest(&cert.spki_der);
            let expected_rd = evidence::report_data_for(&cert.claims_buffer);
            if expected != cb.pubkey_hash {
                ins.fail(key_binding(Reason::PubkeyHashMismatch {
                    expected: hex::encode(expected),
                    found: hex::encode(&cb.pubkey_hash),
                }));
            } else if let Some(found) = report_data.filter(|rd| *rd != expected_rd) {
                ins.fail(key_binding(Reason::ReportDataMismatch {
                    expected: expected_rd.to_hex(),
                    found: found.to_hex(),
                }));
            } else if report_data.is_none() {
                ins.set(
                    Step::KeyBinding,
                    Outcome::NotChecked {
                        why: "the quote's report data could not be read".into(),
                    },
                );
            } else {
                ins.set(
                    Step::KeyBinding,
                    Outcome::Verified {
                        detail: format!(
                            "pubkey-hash = {} of the certificate's SubjectPublicKeyInfo, and {} (the quote itself is not verified, so this shows consistency, not origin)",
                            cb.hash_alg.name(),
                            evidence::key_binding_text()
                        ),
                    },
                );
            }
        }
    }
    match header {
        Some(h) if h.tee_type != TEE_TYPE_TDX => {
            ins.fail(VerifyError::new(
                Step::QuoteSignature,
                Reason::Quote(format!(
                    "the quote is {} (tee_type {}); teegate verifies TDX quotes (tee_type 0x81) only",
                    h.tee_name(),
                    h.tee_type
                )),
            ));
            ins.rest_not_checked("the quote cannot be verified");
        }
        Some(_) => ins.rest_not_checked(
            "a TDX quote: verified by the full RA-TLS verification when the certificate is teegate's",
        ),
        None => {
            ins.fail(VerifyError::parse(Reason::Quote(
                "the quote header does not decode".into(),
            )));
            ins.rest_not_checked("the quote did not decode");
        }
    }
    ins
}

fn quote_report_data(h: &QuoteHeader, quote: &[u8]) -> Option<ReportData> {
    if h.tee_type == TEE_TYPE_TDX {
        crate::Quote::parse(quote).ok().map(|q| q.report_data())
    } else {
        h.sgx_report_data(quote)
    }
}

fn facts(
    cert: &ParsedCccCert,
    header: Option<QuoteHeader>,
    report_data: Option<ReportData>,
    cb: Option<&ClaimsBuffer>,
) -> CccFacts {
    let claim_keys = evidence::claims_entries(&cert.claims_buffer)
        .map(|entries| entries.iter().map(|(k, _)| evidence::key_name(k)).collect())
        .unwrap_or_default();
    CccFacts {
        claim_keys,
        other_keys: cert.other_keys.clone(),
        teegate_claims: cert.claims.is_some(),
        pubkey_hash_alg: cb.map(|c| c.hash_alg.name()),
        pubkey_hash: cb.map(|c| c.pubkey_hash.clone()),
        nonce: cb.and_then(|c| c.nonce.clone()),
        claims_buffer_len: cert.claims_buffer.len(),
        quote_len: cert.quote.len(),
        quote_header: header,
        tee: header.map(|h| h.tee_name()),
        report_data,
        expected_report_data: evidence::report_data_for(&cert.claims_buffer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Vec<u8> {
        let path = format!("{}/../../shared/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        pem::parse(pem).unwrap().into_contents()
    }

    #[test]
    fn gramine_and_sgx_sdk_certificates_bind_their_key_and_stop_at_the_sgx_quote() {
        for name in ["ccc-gramine-cert.pem", "ccc-intel-sgxsdk-cert.pem"] {
            let der = vector(name);
            // Not teegate's: the strict parser says so by name, not as garbage.
            let e = crate::cert::parse_ratls_cert(&der).unwrap_err();
            assert_eq!(e.reason, Reason::NoAppClaims, "{name}");
            let ins = inspect_ccc(&der);
            let ev = ins.evidence.as_ref().unwrap();
            assert!(!ev.teegate_claims, "{name}");
            assert_eq!(ev.claim_keys, ["pubkey-hash"], "{name}");
            assert_eq!(ev.tee.as_deref(), Some("SGX"));
            assert_eq!(ev.report_data, Some(ev.expected_report_data), "{name}");
            assert!(ins.check(Step::Parse).unwrap().outcome.is_verified());
            assert!(
                ins.check(Step::KeyBinding).unwrap().outcome.is_verified(),
                "{name}: {:?}",
                ins.check(Step::KeyBinding)
            );
            let q = ins.check(Step::QuoteSignature).unwrap();
            assert!(q.outcome.text().contains("SGX (tee_type 0)"), "{q:?}");
            assert!(q.outcome.text().contains("TDX"), "{q:?}");
            assert_eq!(ins.error.as_ref().unwrap().step, Step::QuoteSignature);
            assert!(matches!(
                ins.check(Step::Policy).unwrap().outcome,
                Outcome::NotChecked { .. }
            ));
        }
    }

    #[test]
    fn a_certificate_whose_key_is_not_the_hashed_one_fails_key_binding() {
        // Gramine's evidence grafted onto a certificate with another key.
        let der = vector("ccc-gramine-cert.pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "2.23.133.5.4.9")
            .unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x.test".into()]).unwrap();
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            crate::cert::oid::EVIDENCE_OID,
            ext.value.to_vec(),
        )];
        let key = rcgen::KeyPair::generate().unwrap();
        let forged = params.self_signed(&key).unwrap();
        let ins = inspect_ccc(forged.der());
        let kb = ins.check(Step::KeyBinding).unwrap();
        assert!(matches!(kb.outcome, Outcome::Failed { .. }), "{kb:?}");
        assert!(kb.outcome.text().contains("pubkey-hash"), "{kb:?}");
        assert_eq!(ins.error.unwrap().step, Step::KeyBinding);
    }
}
