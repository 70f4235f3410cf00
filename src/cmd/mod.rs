pub mod dns;
pub mod env;
pub mod gateway;
pub mod kms;
pub mod quote;
pub mod ratls;
pub mod sidecar;
mod verifier;
pub mod verify;
