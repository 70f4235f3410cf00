//! # guest-sidecar: teegate's agent inside each Confidential VM
//!
//! Measures the app into RTMR3, fetches its keys from the KMS over mutual RA-TLS, runs
//! its containers through the Docker Engine API, serves the guest API on a Unix socket
//! and the RA-TLS front, and registers with the gateways. Built in its own issue; this
//! crate holds its place in the workspace until then.

pub mod front;
pub mod register;
