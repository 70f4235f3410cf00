//! Byte layout of an Intel DCAP quote v4 for TDX:
//!
//! ```text
//! header (48) || TD report 1.0 (584) || u32 auth_data_len || auth_data
//! auth_data = ISV signature (64) || attestation key X||Y (64)
//!           || u16 type 6 || u32 len || [ QE report (384) || QE report sig (64)
//!              || u16 len || QE auth data || u16 type 5 || u32 len || PEM PCK chain ]
//! ```
//!
//! Everything after the ISV signature only depends on the PKI, so it is built once in
//! [`auth_data_tail`]; per quote only the header, TD report and ISV signature are new.

use sha2::{Digest, Sha256};

use super::platform::*;
use super::{SimError, SimTdReport};

pub(super) const HEADER_LEN: usize = 48;
pub(super) const TD_REPORT10_LEN: usize = 584;
pub(super) const ENCLAVE_REPORT_LEN: usize = 384;
/// Offset of the ISV (attestation key) signature inside a quote.
pub(super) const ISV_SIGNATURE_OFFSET: usize = HEADER_LEN + TD_REPORT10_LEN + 4;

fn len_u16(len: usize) -> Result<[u8; 2], SimError> {
    u16::try_from(len)
        .map(u16::to_le_bytes)
        .map_err(|_| SimError::Der("field longer than u16"))
}

pub(super) fn len_u32(len: usize) -> Result<[u8; 4], SimError> {
    u32::try_from(len)
        .map(u32::to_le_bytes)
        .map_err(|_| SimError::Der("field longer than u32"))
}

/// Identity of the simulated TD quoting enclave (SGX REPORT body layout).
pub(super) struct QeMeasurements {
    pub mr_enclave: [u8; 32],
    pub mr_signer: [u8; 32],
}

/// QE report whose report_data binds the attestation key: SHA-256(key || QE auth data).
pub(super) fn qe_report(
    qe: &QeMeasurements,
    attestation_key: &[u8; 64],
) -> [u8; ENCLAVE_REPORT_LEN] {
    let mut r = [0u8; ENCLAVE_REPORT_LEN];
    r[0..16].copy_from_slice(&CPU_SVN);
    r[16..20].copy_from_slice(&QE_MISCSELECT.to_le_bytes());
    r[48..64].copy_from_slice(&QE_ATTRIBUTES);
    r[64..96].copy_from_slice(&qe.mr_enclave);
    r[128..160].copy_from_slice(&qe.mr_signer);
    r[256..258].copy_from_slice(&QE_ISV_PROD_ID.to_le_bytes());
    r[258..260].copy_from_slice(&QE_ISV_SVN.to_le_bytes());
    let binding = Sha256::new()
        .chain_update(attestation_key)
        .chain_update(QE_AUTH_DATA)
        .finalize();
    r[320..352].copy_from_slice(&binding);
    r
}

/// The auth data after the ISV signature: attestation key and type-6 certification data.
pub(super) fn auth_data_tail(
    attestation_key: &[u8; 64],
    qe_report: &[u8; ENCLAVE_REPORT_LEN],
    qe_report_signature: &[u8; 64],
    pck_chain_pem: &[u8],
) -> Result<Vec<u8>, SimError> {
    let mut qe_cert_data = Vec::with_capacity(ENCLAVE_REPORT_LEN + 128 + pck_chain_pem.len());
    qe_cert_data.extend_from_slice(qe_report);
    qe_cert_data.extend_from_slice(qe_report_signature);
    qe_cert_data.extend_from_slice(&len_u16(QE_AUTH_DATA.len())?);
    qe_cert_data.extend_from_slice(&QE_AUTH_DATA);
    qe_cert_data.extend_from_slice(&CERT_TYPE_PCK_CHAIN.to_le_bytes());
    qe_cert_data.extend_from_slice(&len_u32(pck_chain_pem.len())?);
    qe_cert_data.extend_from_slice(pck_chain_pem);

    let mut tail = Vec::with_capacity(64 + 6 + qe_cert_data.len());
    tail.extend_from_slice(attestation_key);
    tail.extend_from_slice(&CERT_TYPE_QE_REPORT.to_le_bytes());
    tail.extend_from_slice(&len_u32(qe_cert_data.len())?);
    tail.extend_from_slice(&qe_cert_data);
    Ok(tail)
}

pub(super) fn header(qe_id: &[u8; 16]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&QUOTE_VERSION.to_le_bytes());
    h[2..4].copy_from_slice(&ATTESTATION_KEY_TYPE_ECDSA_P256.to_le_bytes());
    h[4..8].copy_from_slice(&TEE_TYPE_TDX.to_le_bytes());
    // Bytes 8..12 (QE SVN / PCE SVN) are reserved and zero in TDX v4 quotes.
    h[12..28].copy_from_slice(&INTEL_QE_VENDOR_ID);
    // user_data: 16-byte QE ID followed by 4 zero bytes.
    h[28..44].copy_from_slice(qe_id);
    h
}

/// TD report 1.0 body; the SEAM fields come from the simulated platform so that the TCB
/// info's tdxModule identity and TCB levels match.
pub(super) fn td_report(td: &SimTdReport, mr_seam: &[u8; 48]) -> [u8; TD_REPORT10_LEN] {
    let fields: [&[u8]; 15] = [
        &TEE_TCB_SVN,
        mr_seam,
        &MR_SIGNER_SEAM,
        &SEAM_ATTRIBUTES,
        &td.td_attributes,
        &td.xfam,
        &td.mr_td,
        &td.mr_config_id,
        &td.mr_owner,
        &td.mr_owner_config,
        &td.rt_mr[0],
        &td.rt_mr[1],
        &td.rt_mr[2],
        &td.rt_mr[3],
        &td.report_data,
    ];
    let mut body = [0u8; TD_REPORT10_LEN];
    let mut offset = 0;
    for field in fields {
        body[offset..offset + field.len()].copy_from_slice(field);
        offset += field.len();
    }
    body
}
