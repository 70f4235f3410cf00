//! # dns: authoritative DNS for the base domain
//!
//! Answers `*.<base>` with the live gateway replicas, `_acme-challenge.<base>` TXT for
//! DNS-01, and CAA pinning the gateway's ACME account, on hickory-server. Built in its
//! own issue; this crate holds its place in the workspace until then.
