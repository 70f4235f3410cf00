//! The config crate's integration tests, one binary (fewer links in CI).

mod common;

#[path = "config/dns.rs"]
mod dns;
#[path = "config/env.rs"]
mod env;
#[path = "config/examples.rs"]
mod examples;
#[path = "config/gateway.rs"]
mod gateway;
#[path = "config/kms.rs"]
mod kms;
#[path = "config/load.rs"]
mod load;
#[path = "config/reference.rs"]
mod reference;
#[path = "config/sidecar.rs"]
mod sidecar;
