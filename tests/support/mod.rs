//! Shared helpers for the end-to-end tests: start real processes on loopback ports, make
//! simulated CVM instances (RA-TLS front + registration), and clients that trust the
//! gateway's development CA. Every wait is bounded.

#![allow(dead_code)]

use std::sync::Arc;

pub mod acme_dns;
pub mod chromium;
pub mod cvm;
pub mod etcd;
pub mod gateway_proc;
pub mod hostile;
pub mod identities;
pub mod keys;
pub mod lab;
pub mod lab_client;
pub mod lab_hosts;
pub mod lab_image;
pub mod procs;
pub mod registration;

// Every test binary uses a subset of these, so a glob may go unused in one of them.
#[allow(unused_imports)]
pub use acme_dns::*;
#[allow(unused_imports)]
pub use gateway_proc::*;
#[allow(unused_imports)]
pub use identities::*;
#[allow(unused_imports)]
pub use keys::*;
#[allow(unused_imports)]
pub use procs::*;
#[allow(unused_imports)]
pub use registration::*;

pub const BASE: &str = "apps.teegate.test";

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
