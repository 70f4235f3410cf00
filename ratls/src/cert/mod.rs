//! RA-TLS certificates: the evidence and claims formats, issuing, and verifying.

pub mod claims;
pub mod evidence;
mod issue;
pub mod oid;
mod verify;

pub use claims::AppClaims;
pub use issue::pem_encode;
pub use issue::{
    issue, issue_with, CertAuthority, CertProfile, Identity, IssueError, IssueOptions, RaTlsCert,
};
pub use verify::{parse_ccc_cert, parse_ratls_cert, ParsedCccCert, ParsedRaTlsCert, MAX_CERT_LEN};
