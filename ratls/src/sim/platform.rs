//! The fixed identity of the simulated platform. The PCK certificate, the TCB info /
//! QE identity collateral and every quote are built from these same values, which is
//! what makes dcap-qvl's TCB matching land on the single "UpToDate" level.

/// RFC 3339 and calendar forms of the validity window shared by all certificates,
/// CRLs, TCB info and QE identity: long enough that "now" verifies for decades.
pub(super) const VALID_FROM_RFC3339: &str = "2024-01-01T00:00:00Z";
pub(super) const VALID_UNTIL_RFC3339: &str = "2099-12-31T00:00:00Z";
pub(super) const VALID_FROM_YMD: (i32, u8, u8) = (2024, 1, 1);
pub(super) const VALID_UNTIL_YMD: (i32, u8, u8) = (2099, 12, 31);

/// Platform family (FMSPC) carried by the PCK certificate and the TCB info.
pub(super) const FMSPC: [u8; 6] = [0x00, 0x90, 0x6E, 0xD5, 0x00, 0x00];
pub(super) const PCE_ID: [u8; 2] = [0x00, 0x00];
/// SGX type 1 = "Scalable", what TDX-capable Xeon platforms report.
pub(super) const SGX_TYPE_SCALABLE: u8 = 1;

/// Platform CPUSVN (PCK certificate) = the TCB level's 16 sgxtcbcomponents.
pub(super) const CPU_SVN: [u8; 16] = [3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0];
pub(super) const PCE_SVN: u16 = 11;

/// TEE_TCB_SVN in the TD report: [module ISVSVN, module major version, late microcode, 0..].
/// A non-zero major version makes dcap-qvl judge bytes 0-1 via the `TDX_01` module
/// identity instead of tdxtcbcomponents.
pub(super) const TEE_TCB_SVN: [u8; 16] = [6, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// tdxtcbcomponents of the TCB level (components 0 and 1 are skipped, see above).
pub(super) const TDX_TCB_COMPONENTS: [u8; 16] = [6, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// Intel-signed TDX modules have an all-zero MRSIGNER_SEAM and SEAM attributes.
pub(super) const MR_SIGNER_SEAM: [u8; 48] = [0; 48];
pub(super) const SEAM_ATTRIBUTES: [u8; 8] = [0; 8];

pub(super) const TCB_EVALUATION_DATA_NUMBER: u32 = 17;
pub(super) const TCB_DATE: &str = "2024-01-01T00:00:00Z";

/// TD quoting enclave identity (QE report fields == QE identity "TD_QE" values).
pub(super) const QE_ISV_PROD_ID: u16 = 2;
pub(super) const QE_ISV_SVN: u16 = 4;
pub(super) const QE_MISCSELECT: u32 = 0;
pub(super) const QE_MISCSELECT_MASK: u32 = 0xFFFF_FFFF;
/// INIT | MODE64BIT, no DEBUG (bit 1) - dcap-qvl rejects a debug QE.
pub(super) const QE_ATTRIBUTES: [u8; 16] = [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub(super) const QE_ATTRIBUTES_MASK: [u8; 16] = [
    0xFB, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0,
];
/// QE authentication data; dcap-qvl requires exactly 32 bytes. Intel's QE uses 0..=31.
pub(super) const QE_AUTH_DATA: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
];

/// Quote header constants (Intel DCAP quote v4 for TDX).
pub(super) const QUOTE_VERSION: u16 = 4;
pub(super) const ATTESTATION_KEY_TYPE_ECDSA_P256: u16 = 2;
pub(super) const TEE_TYPE_TDX: u32 = 0x81;
pub(super) const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9A, 0x72, 0x33, 0xF7, 0x9C, 0x4C, 0xA9, 0x94, 0x0A, 0x0D, 0xB3, 0x95, 0x7F, 0x06, 0x07,
];
/// Certification data types: 6 = QE report certification data, wrapping 5 = PEM PCK chain.
pub(super) const CERT_TYPE_QE_REPORT: u16 = 6;
pub(super) const CERT_TYPE_PCK_CHAIN: u16 = 5;

/// Subject common names: unmistakably not Intel's.
pub(super) const ROOT_CN: &str = "teegate SIMULATED Intel SGX Root CA";
/// Must contain "Platform": dcap-qvl classifies the PCK CA by the issuer DN.
pub(super) const PLATFORM_CA_CN: &str = "teegate SIMULATED Intel SGX PCK Platform CA";
pub(super) const PCK_CN: &str = "teegate SIMULATED Intel SGX PCK Certificate";
pub(super) const TCB_SIGNING_CN: &str = "teegate SIMULATED Intel SGX TCB Signing";
pub(super) const ORGANIZATION: &str = "teegate simulation (NOT Intel Corporation)";
