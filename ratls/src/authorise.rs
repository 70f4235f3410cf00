//! App authorisation: may this compose hash use the app id it claims?
//!
//! A verified quote proves what code runs; it does not make that code an app's. An app id
//! X is authorised for compose hash H when
//! - X is H's own content-addressed id (its first 20 bytes), or
//! - the certificate chains to X's app CA, signed by a KMS root the verifier pins: the KMS
//!   certifies X's app CA (and releases its key) only to CVMs whose compose hash its
//!   policy allows for X, so holding a leaf signed by that CA is the KMS's decision, or
//! - the verifier is the KMS itself, whose per-app policy makes that decision next.
//!
//! Anything else fails at [`Step::AppAuthorisation`].

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Reason, Step, VerifyError};
use crate::types::{AppId, ComposeHash, Fingerprint};

/// The subject common name of an app's CA certificate, as the KMS issues it.
pub fn app_ca_common_name(app: &AppId) -> String {
    format!("teegate app {} CA", app.to_hex())
}

/// The app an app CA certificate is for: its subject's organisational unit (hex app id),
/// which must agree with its common name.
pub fn app_of_app_ca(cert: &X509Certificate<'_>) -> Option<AppId> {
    let subject = cert.subject();
    let ou = subject.iter_organizational_unit().next()?.as_str().ok()?;
    let app: AppId = ou.parse().ok()?;
    let cn = subject.iter_common_name().next()?.as_str().ok()?;
    (cn == app_ca_common_name(&app)).then_some(app)
}

/// Who may vouch that a named (not content-addressed) app id belongs to a compose hash.
#[derive(Debug, Clone, Default)]
pub struct AppAuthority {
    /// KMS root CA certificates (DER) whose app CAs are believed.
    kms_roots: Vec<Vec<u8>>,
    /// This verifier is the KMS: named app ids are decided by its own per-app policy.
    by_kms_policy: bool,
}

/// How an app id came to be authorised.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Authorised {
    ContentAddressed,
    KmsAppCa { root: Fingerprint },
    KmsPolicy,
}

impl Authorised {
    pub fn describe(&self, app: &AppId) -> String {
        match self {
            Authorised::ContentAddressed => {
                format!("content-addressed: app id {app} is the compose hash's first 20 bytes")
            }
            Authorised::KmsAppCa { root } => format!(
                "the certificate chains to app {app}'s CA, signed by the pinned KMS root {root}"
            ),
            Authorised::KmsPolicy => {
                "named app id: this KMS authorises it by its per-app policy (next step)".into()
            }
        }
    }
}

impl AppAuthority {
    /// Only content-addressed app ids (no KMS pinned).
    pub fn content_addressed_only() -> Self {
        Self::default()
    }

    /// Content-addressed app ids, and named ones certified by one of these KMS roots.
    pub fn kms_roots(roots: Vec<Vec<u8>>) -> Self {
        Self {
            kms_roots: roots,
            by_kms_policy: false,
        }
    }

    /// For the KMS's own verifier: named app ids are its policy's to decide.
    pub fn kms_policy() -> Self {
        Self {
            kms_roots: Vec::new(),
            by_kms_policy: true,
        }
    }

    pub fn pinned_roots(&self) -> &[Vec<u8>] {
        &self.kms_roots
    }

    /// Checks `app` against `compose` for the certificate `leaf` with the issuers it was
    /// presented with (`issuers[0]` its app CA, when CA-signed).
    pub fn check(
        &self,
        app: &AppId,
        compose: &ComposeHash,
        leaf: &X509Certificate<'_>,
        issuers: &[&[u8]],
        now: i64,
    ) -> Result<Authorised, VerifyError> {
        if compose.default_app_id() == *app {
            return Ok(Authorised::ContentAddressed);
        }
        if self.by_kms_policy {
            return Ok(Authorised::KmsPolicy);
        }
        let refuse = |why: String| {
            VerifyError::new(
                Step::AppAuthorisation,
                Reason::AppNotAuthorised {
                    app: app.to_hex(),
                    compose: compose.to_hex(),
                    why,
                },
            )
        };
        if self.kms_roots.is_empty() {
            return Err(refuse(
                "it is not the compose hash's own id and no KMS root is pinned to vouch for named app ids ([verifier] kms_roots)".into(),
            ));
        }
        let Some(ca_der) = issuers.first() else {
            return Err(refuse(
                "it is not the compose hash's own id and the certificate was presented without an app CA".into(),
            ));
        };
        let ca = X509Certificate::from_der(ca_der)
            .map(|(_, c)| c)
            .map_err(|e| refuse(format!("the presented app CA does not decode: {e}")))?;
        match app_of_app_ca(&ca) {
            Some(ca_app) if ca_app == *app => {}
            Some(other) => {
                return Err(refuse(format!(
                    "the certificate's issuer is app {other}'s CA, not app {app}'s"
                )))
            }
            None => {
                return Err(refuse(format!(
                    "the certificate's issuer ({}) is not a teegate app CA",
                    ca.subject()
                )))
            }
        }
        if !ca.is_ca() {
            return Err(refuse(
                "the presented app CA is not a CA certificate".into(),
            ));
        }
        if leaf.issuer() != ca.subject() || leaf.verify_signature(Some(ca.public_key())).is_err() {
            return Err(refuse(format!(
                "the certificate is not signed by app {app}'s CA"
            )));
        }
        let in_validity = |c: &X509Certificate<'_>| {
            c.validity().not_before.timestamp() <= now && now <= c.validity().not_after.timestamp()
        };
        if !in_validity(&ca) {
            return Err(refuse(format!("app {app}'s CA is not valid now")));
        }
        for root_der in &self.kms_roots {
            let Ok((_, root)) = X509Certificate::from_der(root_der) else {
                continue;
            };
            if ca.issuer() == root.subject()
                && in_validity(&root)
                && ca.verify_signature(Some(root.public_key())).is_ok()
            {
                return Ok(Authorised::KmsAppCa {
                    root: Fingerprint::of(root_der),
                });
            }
        }
        Err(refuse(format!(
            "app {app}'s CA ({}) is not signed by a pinned KMS root",
            ca.issuer()
        )))
    }
}

/// A KMS root CA from a file's bytes (PEM with a CERTIFICATE block, or DER), checked to
/// decode as a CA certificate.
pub fn read_kms_root(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let der = match pem::parse_many(bytes) {
        Ok(blocks) if !blocks.is_empty() => blocks
            .into_iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .map(pem::Pem::into_contents)
            .ok_or("no CERTIFICATE in the file")?,
        _ => bytes.to_vec(),
    };
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| format!("not a certificate: {e}"))?;
    if !cert.is_ca() {
        return Err("not a CA certificate".into());
    }
    Ok(der)
}
