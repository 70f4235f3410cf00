pub mod quote;
pub mod ratls;
mod verifier;
