pub mod gateway;
pub mod quote;
pub mod ratls;
mod verifier;
