//! # kms: attested key release
//!
//! Holds a root secret and a root CA; releases each app's deterministic keys
//! (`HKDF-SHA256(root secret, app id, purpose)`) only to callers whose RA-TLS client
//! certificate carries a verified quote that its policy allows. Built in its own issue;
//! this crate holds its place in the workspace until then.
