//! Simulated Intel DCAP PKI and TDX quotes, for running teegate without TDX hardware.
//!
//! A 32-byte seed deterministically yields a mock Intel SGX root CA, PCK Platform CA,
//! PCK certificate, TCB signing certificate, CRLs, TDX TCB info / TD_QE identity
//! collateral, and a quoting-enclave attestation key. [`SimulatedPki::quote`] emits
//! quotes in the real TDX quote v4 layout that the unmodified `dcap-qvl` verifier
//! accepts when given [`SimulatedPki::root_ca_der`] as its trust anchor. They are
//! rejected against Intel's real root, so a simulated quote can never pass as real.

mod certs;
mod collateral;
mod der;
mod keys;
mod pki;
mod platform;
mod quote_builder;
#[cfg(test)]
mod tests;

pub use pki::SimulatedPki;

/// The well-known seed every teegate component uses for the simulated PKI.
pub const SIMULATION_SEED: [u8; 32] = *b"teegate-simulated-tdx-pki-seed-1";

/// TD attribute bit 0 (byte 0): TD debug mode. dcap-qvl rejects it unless `allow_debug`.
pub const TD_ATTRIBUTES_DEBUG: [u8; 8] = [0x01, 0, 0, 0, 0, 0, 0, 0];
/// TD attribute bit 28: SEPT_VE_DISABLE. dcap-qvl rejects TD 1.0 reports without it,
/// so it is part of [`SimTdReport::default`].
pub const TD_ATTRIBUTES_SEPT_VE_DISABLE: [u8; 8] = [0, 0, 0, 0x10, 0, 0, 0, 0];
/// A typical XFAM (x87, SSE, AVX, AVX-512, PK, AMX state) as seen on real TDs.
pub const TYPICAL_XFAM: [u8; 8] = [0xe7, 0x02, 0x06, 0, 0, 0, 0, 0];

/// The guest-controlled fields of a TD report. Fields the PKI must control so the
/// TCB info matches (tee_tcb_svn, mr_seam, mr_signer_seam, seam_attributes) are
/// filled in by [`SimulatedPki::quote`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimTdReport {
    pub mr_td: [u8; 48],
    pub mr_config_id: [u8; 48],
    pub mr_owner: [u8; 48],
    pub mr_owner_config: [u8; 48],
    pub rt_mr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    /// Default: only SEPT_VE_DISABLE set (not debug), which dcap-qvl requires.
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
}

// Arrays longer than 32 have no `Default`, so derive cannot be used.
impl Default for SimTdReport {
    fn default() -> Self {
        Self {
            mr_td: [0; 48],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rt_mr: [[0; 48]; 4],
            report_data: [0; 64],
            td_attributes: TD_ATTRIBUTES_SEPT_VE_DISABLE,
            xfam: TYPICAL_XFAM,
        }
    }
}

/// Failure to build the simulated PKI (all inputs are constants or the seed, so these
/// indicate a bug rather than a run-time condition).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("key derivation failed for label {0:?}")]
    KeyDerivation(String),
    #[error("X.509 generation failed: {0}")]
    X509(String),
    #[error("encoding failed: {0}")]
    Der(&'static str),
}
