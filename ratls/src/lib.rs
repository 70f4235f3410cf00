//! # ratls: TDX quotes and RA-TLS certificates
//!
//! Formats and checks, no services. Data enters as quote bytes (from a [`provider`] or a
//! file), collateral (from [`collateral`] sources) and DER certificates; it leaves as
//! issued certificates ([`cert::issue`]) and typed verdicts ([`VerifiedQuote`],
//! [`VerifiedAttestation`]) or a [`VerifyError`] naming the failed step.
//!
//! ```text
//!  QuoteProvider (tsm | simulated) ─▶ Measurer (RTMR3 + EventLog) ─▶ cert::issue ─▶ RaTlsCert
//!
//!  DER cert ─▶ parse ─▶ QuoteVerifier (dcap-qvl + CollateralSource) ─▶ key binding
//!           ─▶ event-log replay ─▶ app authorisation (AppAuthority) ─▶ Policy
//!           ─▶ VerifiedAttestation ─▶ VerifiedCache
//!                                                  ▲
//!  rustls handshake ─▶ tls::RaTls{Server,Client}Verifier (chain checks, then the above)
//!
//!  gateway_evidence (quote + claims buffer listing the gateway's keys + event log)
//!           ─▶ the same steps after parse ─▶ VerifiedGateway ─▶ key binding of a received cert
//!  site: TLS to <app>.<base> (web PKI) ─▶ evidence ─▶ VerifiedGateway ─▶ app page
//!           ─▶ each instance certificate through the steps above
//! ```
//!
//! Simulated quotes (from [`sim`], a deterministic mock of Intel's PKI) go through the
//! same dcap-qvl path with the mock root as anchor, are labelled SIMULATED, and are
//! rejected unless the policy sets `allow_simulated`.

pub mod authorise;
pub mod cache;
pub mod ccc;
pub mod cert;
pub mod chain;
pub mod collateral;
pub mod error;
pub mod eventlog;
pub mod fresh;
pub mod gateway_evidence;
mod hexser;
pub mod inspect;
pub mod pins;
pub mod policy;
pub mod provider;
pub mod quote;
pub mod quote_verify;
pub mod sim;
pub mod site;
pub mod tcb;
pub mod tls;
pub mod types;
pub mod verifier;

pub use authorise::AppAuthority;
pub use cache::{CachingVerifier, VerifiedCache};
pub use error::{Reason, Step, VerifyError};
pub use gateway_evidence::{GatewayError, GatewayStep, VerifiedGateway};
pub use inspect::{Inspection, Outcome};
pub use policy::{Allowlist, Policy};
pub use quote::Quote;
pub use quote_verify::{QuoteVerifier, VerifiedQuote};
pub use tcb::{TcbPolicy, TcbStatus};
pub use types::{AppId, ComposeHash, Fingerprint, InstanceId, Measurement, ReportData, SpkiHash};
pub use verifier::{AttestationVerifier, VerifiedAttestation};
