//! Decoding an RA-TLS certificate into its parts, without judging them: the public key,
//! validity, evidence (quote + claims buffer) and app claims. Judging is `verifier.rs`.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::claims::AppClaims;
use super::{evidence, oid};
use crate::error::{Reason, VerifyError};
use crate::types::Fingerprint;

/// Largest certificate accepted for RA-TLS verification.
pub const MAX_CERT_LEN: usize = 256 * 1024;

/// The parts of an RA-TLS certificate.
#[derive(Debug, Clone)]
pub struct ParsedRaTlsCert {
    pub fingerprint: Fingerprint,
    pub spki_der: Vec<u8>,
    pub subject: String,
    pub issuer: String,
    pub self_issued: bool,
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
    pub quote: Vec<u8>,
    pub claims_buffer: Vec<u8>,
    pub claims: AppClaims,
}

/// Parses a DER certificate; any failure is a `parse` step error.
pub fn parse_ratls_cert(der: &[u8]) -> Result<ParsedRaTlsCert, VerifyError> {
    let bad = |m: String| VerifyError::parse(Reason::Certificate(m));
    if der.len() > MAX_CERT_LEN {
        return Err(bad(format!("{} bytes is over the limit", der.len())));
    }
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate".into()));
    }
    let claims_oid = oid::claims_oid_content();
    let evidence_oid = oid::oid_content(
        &oid::EVIDENCE_OID
            .iter()
            .map(|&a| u128::from(a))
            .collect::<Vec<_>>(),
    );
    let mut evidence_ext = None;
    let mut claims_ext = None;
    for ext in cert.extensions() {
        let id = ext.oid.as_bytes();
        if id == evidence_oid.as_slice() {
            if evidence_ext.replace(ext.value).is_some() {
                return Err(bad("duplicate evidence extension".into()));
            }
        } else if id == claims_oid.as_slice() && claims_ext.replace(ext.value).is_some() {
            return Err(bad("duplicate teegate claims extension".into()));
        }
    }
    let evidence_ext = evidence_ext.ok_or(VerifyError::parse(Reason::MissingExtension(
        "RA-TLS evidence (2.23.133.5.4.9)",
    )))?;
    let claims_ext = claims_ext.ok_or(VerifyError::parse(Reason::MissingExtension(
        "teegate app claims (2.25.89082401949826223843902466965778095475)",
    )))?;
    let (quote, claims_buffer) = evidence::decode(evidence_ext)
        .map_err(|e| VerifyError::parse(Reason::Evidence(e.to_string())))?;
    let claims = AppClaims::from_cbor(claims_ext)
        .map_err(|e| VerifyError::parse(Reason::Evidence(e.to_string())))?;
    let dns_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ParsedRaTlsCert {
        fingerprint: Fingerprint::of(der),
        spki_der: cert.public_key().raw.to_vec(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        self_issued: cert.subject() == cert.issuer(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        dns_names,
        quote,
        claims_buffer,
        claims,
    })
}
