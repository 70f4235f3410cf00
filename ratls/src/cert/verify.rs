//! Decoding an RA-TLS certificate into its parts, without judging them: the public key,
//! validity, evidence (quote + claims buffer) and app claims. Judging is `verifier.rs`.
//! [`parse_ccc_cert`] reads any CCC interoperable RA-TLS certificate (Gramine, Intel SGX
//! SDK, rats-tls, …); [`parse_ratls_cert`] additionally requires teegate's app claims.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::claims::{AppClaims, CLAIMS_KEY};
use super::{evidence, oid};
use crate::error::{Reason, VerifyError};
use crate::types::Fingerprint;

/// Largest certificate accepted for RA-TLS verification.
pub const MAX_CERT_LEN: usize = 320 * 1024;

/// The parts of a teegate RA-TLS certificate.
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

/// The parts of any CCC RA-TLS certificate; `claims` is set when it is teegate's.
#[derive(Debug, Clone)]
pub struct ParsedCccCert {
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
    pub claims: Option<AppClaims>,
    /// Claims-buffer keys neither CCC nor teegate define (listed, not refused).
    pub other_keys: Vec<String>,
}

/// Parses a DER CCC certificate; any failure is a `parse` step error.
pub fn parse_ccc_cert(der: &[u8]) -> Result<ParsedCccCert, VerifyError> {
    let bad = |m: String| VerifyError::parse(Reason::Certificate(m));
    let evidence_err = |e: String| VerifyError::parse(Reason::Evidence(e));
    if der.len() > MAX_CERT_LEN {
        return Err(bad(format!("{} bytes is over the limit", der.len())));
    }
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate".into()));
    }
    let evidence_oid = oid::oid_content(oid::EVIDENCE_OID);
    let mut evidence_ext = None;
    for ext in cert.extensions() {
        if ext.oid.as_bytes() == evidence_oid.as_slice()
            && evidence_ext.replace(ext.value).is_some()
        {
            return Err(bad("duplicate evidence extension".into()));
        }
    }
    let evidence_ext = evidence_ext.ok_or(VerifyError::parse(Reason::MissingExtension(
        "RA-TLS evidence (2.23.133.5.4.9)",
    )))?;
    // `decode` refuses an oversized extension value before decoding it.
    let (quote, claims_buffer) =
        evidence::decode(evidence_ext).map_err(|e| evidence_err(e.to_string()))?;
    let entries = evidence::claims_entries(&claims_buffer).map_err(|e| evidence_err(e.0))?;
    let claims = evidence::entry(&entries, CLAIMS_KEY)
        .map(AppClaims::from_value)
        .transpose()
        .map_err(|e| evidence_err(e.to_string()))?;
    let other_keys = evidence::other_keys(&entries);
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
    Ok(ParsedCccCert {
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
        other_keys,
    })
}

/// Parses a DER teegate RA-TLS certificate; any failure is a `parse` step error, and a
/// CCC certificate without teegate's claims is [`Reason::NoAppClaims`].
pub fn parse_ratls_cert(der: &[u8]) -> Result<ParsedRaTlsCert, VerifyError> {
    let c = parse_ccc_cert(der)?;
    let claims = c.claims.ok_or(VerifyError::parse(Reason::NoAppClaims))?;
    Ok(ParsedRaTlsCert {
        fingerprint: c.fingerprint,
        spki_der: c.spki_der,
        subject: c.subject,
        issuer: c.issuer,
        self_issued: c.self_issued,
        not_before: c.not_before,
        not_after: c.not_after,
        dns_names: c.dns_names,
        quote: c.quote,
        claims_buffer: c.claims_buffer,
        claims,
    })
}
