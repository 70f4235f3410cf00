//! The certificate chain behind an RA-TLS certificate, link by link, for display: the
//! instance's certificate, the app CA that signed it and the KMS root CA that signed the
//! app CA. Each signature is checked against the next certificate up; the root is trusted
//! only when the caller pins it. Handshakes check chains with webpki (`tls.rs`); this
//! explains the same chain to a person, including where it breaks.

use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::inspect::Outcome;
use crate::types::Fingerprint;

/// Most certificates in a chain this explains (instance, app CA, KMS root, one spare).
pub const MAX_CHAIN: usize = 4;

/// One certificate of the chain and whether its link upwards holds.
#[derive(Debug, Clone, Serialize)]
pub struct ChainLink {
    pub role: &'static str,
    pub subject: String,
    pub issuer: String,
    pub fingerprint: Fingerprint,
    pub not_before: i64,
    pub not_after: i64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

fn role(index: usize, len: usize, self_signed: bool) -> &'static str {
    match (index, self_signed) {
        (0, _) => "instance RA-TLS certificate",
        (i, true) if i + 1 == len => "KMS root CA",
        (1, false) => "app CA",
        _ => "intermediate CA",
    }
}

/// Explains `chain` (leaf first, as presented in a handshake). `pinned_roots` are the DER
/// root certificates the caller trusts; empty means no root is pinned. Returned root
/// first, the order a reader follows trust in.
pub fn explain(chain: &[Vec<u8>], pinned_roots: &[Vec<u8>], now: u64) -> Vec<ChainLink> {
    let parsed: Vec<Option<X509Certificate<'_>>> = chain
        .iter()
        .take(MAX_CHAIN)
        .map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .collect();
    let pinned: Vec<Fingerprint> = pinned_roots.iter().map(|d| Fingerprint::of(d)).collect();
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    let mut links = Vec::with_capacity(parsed.len());
    for (i, cert) in parsed.iter().enumerate() {
        let fingerprint = Fingerprint::of(&chain[i]);
        let Some(cert) = cert else {
            links.push(ChainLink {
                role: role(i, parsed.len(), false),
                subject: String::new(),
                issuer: String::new(),
                fingerprint,
                not_before: 0,
                not_after: 0,
                outcome: Outcome::Failed {
                    reason: "not a decodable X.509 certificate".into(),
                },
            });
            continue;
        };
        let self_signed = cert.subject() == cert.issuer();
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let outcome = if now_i < not_before || now_i > not_after {
            Outcome::Failed {
                reason: format!("not valid now: valid from {not_before} to {not_after}"),
            }
        } else {
            match parsed.get(i + 1) {
                Some(Some(up)) => signed_by(cert, up),
                Some(None) => Outcome::NotChecked {
                    why: "its issuer's certificate does not decode".into(),
                },
                None if self_signed && i == 0 => match cert.verify_signature(None) {
                    Ok(()) => Outcome::Verified {
                        detail:
                            "self-signed: its key is trusted only through the quote that binds it"
                                .into(),
                    },
                    Err(e) => Outcome::Failed {
                        reason: format!("self-signature does not verify: {e}"),
                    },
                },
                None if self_signed => root_outcome(cert, &fingerprint, &pinned),
                None => Outcome::NotChecked {
                    why: format!(
                        "issued by {} whose certificate was not presented",
                        cert.issuer()
                    ),
                },
            }
        };
        links.push(ChainLink {
            role: role(i, parsed.len(), self_signed),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            fingerprint,
            not_before,
            not_after,
            outcome,
        });
    }
    links.reverse();
    links
}

fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Outcome {
    if cert.issuer() != issuer.subject() {
        return Outcome::Failed {
            reason: format!(
                "issuer {} is not the next certificate ({})",
                cert.issuer(),
                issuer.subject()
            ),
        };
    }
    if !issuer.is_ca() {
        return Outcome::Failed {
            reason: format!("{} is not a CA certificate", issuer.subject()),
        };
    }
    match cert.verify_signature(Some(issuer.public_key())) {
        Ok(()) => Outcome::Verified {
            detail: format!("signed by {}", issuer.subject()),
        },
        Err(e) => Outcome::Failed {
            reason: format!("signature by {} does not verify: {e}", issuer.subject()),
        },
    }
}

fn root_outcome(cert: &X509Certificate<'_>, fp: &Fingerprint, pinned: &[Fingerprint]) -> Outcome {
    if let Err(e) = cert.verify_signature(None) {
        return Outcome::Failed {
            reason: format!("self-signature does not verify: {e}"),
        };
    }
    if pinned.is_empty() {
        Outcome::NotChecked {
            why: "no KMS root CA is pinned here, so this root is only what the instance presented"
                .into(),
        }
    } else if pinned.contains(fp) {
        Outcome::Verified {
            detail: "a pinned KMS root CA".into(),
        }
    } else {
        Outcome::Failed {
            reason: "not one of the pinned KMS root CAs".into(),
        }
    }
}
