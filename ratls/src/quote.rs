//! TDX quotes: parsing (v4 and v5; TD report 1.0, 1.5 and 1.5-extended) into a typed view.
//! The byte-level decoding is dcap-qvl's; this module exposes the fields teegate uses as
//! [`Measurement`]s and refuses anything that is not a TDX quote.

use std::fmt;

use dcap_qvl::quote::{Quote as DcapQuote, Report, TDReport10};
use serde::Serialize;

use crate::types::{Measurement, ReportData};

/// `tee_type` in a DCAP quote header.
pub const TEE_TYPE_TDX: u32 = 0x81;
pub const TEE_TYPE_SGX: u32 = 0x00;
const HEADER_LEN: usize = 48;
/// An SGX enclave report body follows the header; its report data sits at offset 320.
const SGX_REPORT_DATA_AT: usize = HEADER_LEN + 320;
/// Largest quote we accept; real ones are about 5 KB, the rest is margin for longer chains.
pub const MAX_QUOTE_LEN: usize = 64 * 1024;

/// Why bytes are not a TDX quote we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("quote is empty")]
    Empty,
    #[error("quote is {0} bytes, more than the {MAX_QUOTE_LEN}-byte limit")]
    TooLarge(usize),
    #[error("malformed quote: {0}")]
    Malformed(String),
    #[error("not a TDX quote (tee_type {0:#x}; teegate verifies TDX quotes, tee_type 0x81)")]
    NotTdx(u32),
    #[error("quote carries no PCK certificate chain: {0}")]
    NoPckChain(String),
}

/// The fields of a DCAP quote header (common to SGX and TDX), read without parsing the
/// rest, so a quote of another TEE is named as such rather than called malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QuoteHeader {
    pub version: u16,
    pub att_key_type: u16,
    pub tee_type: u32,
}

impl QuoteHeader {
    pub fn peek(bytes: &[u8]) -> Result<Self, QuoteError> {
        if bytes.is_empty() {
            return Err(QuoteError::Empty);
        }
        let h = bytes.get(..HEADER_LEN).ok_or_else(|| {
            QuoteError::Malformed(format!(
                "{} bytes is shorter than a quote header",
                bytes.len()
            ))
        })?;
        Ok(Self {
            version: u16::from_le_bytes([h[0], h[1]]),
            att_key_type: u16::from_le_bytes([h[2], h[3]]),
            tee_type: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        })
    }

    /// "SGX", "TDX" or the number, for people.
    pub fn tee_name(&self) -> String {
        match self.tee_type {
            TEE_TYPE_SGX => "SGX".into(),
            TEE_TYPE_TDX => "TDX".into(),
            other => format!("tee_type {other:#x}"),
        }
    }

    /// The report data of an SGX quote (v3 and v4 share the layout), unverified.
    pub fn sgx_report_data(&self, bytes: &[u8]) -> Option<ReportData> {
        if self.tee_type != TEE_TYPE_SGX {
            return None;
        }
        let rd = bytes.get(SGX_REPORT_DATA_AT..SGX_REPORT_DATA_AT + 64)?;
        let mut out = [0u8; 64];
        out.copy_from_slice(rd);
        Some(ReportData(out))
    }
}

/// The TD report layout inside the quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TdReportVersion {
    #[serde(rename = "1.0")]
    V1_0,
    #[serde(rename = "1.5")]
    V1_5,
    #[serde(rename = "1.5-ex")]
    V1_5Ex,
}

impl fmt::Display for TdReportVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TdReportVersion::V1_0 => "1.0",
            TdReportVersion::V1_5 => "1.5",
            TdReportVersion::V1_5Ex => "1.5-ex",
        })
    }
}

/// A parsed TDX quote. Holds the raw bytes, which are what gets verified.
#[derive(Clone)]
pub struct Quote {
    raw: Vec<u8>,
    parsed: DcapQuote,
}

impl fmt::Debug for Quote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quote")
            .field("version", &self.version())
            .field("td_report", &self.td_report_version())
            .field("mrtd", &self.mrtd())
            .finish_non_exhaustive()
    }
}

impl Quote {
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        if bytes.is_empty() {
            return Err(QuoteError::Empty);
        }
        if bytes.len() > MAX_QUOTE_LEN {
            return Err(QuoteError::TooLarge(bytes.len()));
        }
        // The header says which TEE made the quote; only TDX is parsed further.
        let header = QuoteHeader::peek(bytes)?;
        if header.tee_type != TEE_TYPE_TDX {
            return Err(QuoteError::NotTdx(header.tee_type));
        }
        let parsed =
            DcapQuote::parse(bytes).map_err(|e| QuoteError::Malformed(format!("{e:#}")))?;
        if parsed.report.as_td10().is_none() {
            return Err(QuoteError::Malformed("no TD report body".into()));
        }
        Ok(Self {
            raw: bytes.to_vec(),
            parsed,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    pub fn version(&self) -> u16 {
        self.parsed.header.version
    }

    pub fn td_report_version(&self) -> TdReportVersion {
        match &self.parsed.report {
            Report::TD15(_) => TdReportVersion::V1_5,
            Report::TD15Ex(_) => TdReportVersion::V1_5Ex,
            _ => TdReportVersion::V1_0,
        }
    }

    fn td10(&self) -> &TDReport10 {
        match &self.parsed.report {
            Report::TD10(r) => r,
            Report::TD15(r) => &r.base,
            Report::TD15Ex(r) => &r.base.base,
            // `parse` refuses quotes without a TD report.
            Report::SgxEnclave(_) => unreachable!("parse() only admits TD reports"),
        }
    }

    pub fn mrtd(&self) -> Measurement {
        Measurement(self.td10().mr_td)
    }

    pub fn rtmrs(&self) -> [Measurement; 4] {
        let r = self.td10();
        [
            Measurement(r.rt_mr0),
            Measurement(r.rt_mr1),
            Measurement(r.rt_mr2),
            Measurement(r.rt_mr3),
        ]
    }

    pub fn rtmr3(&self) -> Measurement {
        Measurement(self.td10().rt_mr3)
    }

    pub fn report_data(&self) -> ReportData {
        ReportData(self.td10().report_data)
    }

    pub fn td_attributes(&self) -> [u8; 8] {
        self.td10().td_attributes
    }

    /// Bit 0 of TD attributes: the TD's memory and state are open to the host.
    pub fn is_debug(&self) -> bool {
        self.td10().td_attributes[0] & 1 == 1
    }

    pub fn xfam(&self) -> [u8; 8] {
        self.td10().xfam
    }

    pub fn mr_config_id(&self) -> Measurement {
        Measurement(self.td10().mr_config_id)
    }

    pub fn mr_owner(&self) -> Measurement {
        Measurement(self.td10().mr_owner)
    }

    pub fn mr_owner_config(&self) -> Measurement {
        Measurement(self.td10().mr_owner_config)
    }

    pub fn mr_seam(&self) -> Measurement {
        Measurement(self.td10().mr_seam)
    }

    pub fn tee_tcb_svn(&self) -> [u8; 16] {
        self.td10().tee_tcb_svn
    }

    /// The certificates the quote carries (PCK leaf first, root last), DER.
    pub fn pck_chain(&self) -> Result<Vec<Vec<u8>>, QuoteError> {
        dcap_qvl::intel::extract_cert_chain(&self.parsed)
            .map_err(|e| QuoteError::NoPckChain(format!("{e:#}")))
    }

    /// The root certificate the quote's PCK chain ends in (DER).
    pub fn chain_root(&self) -> Result<Vec<u8>, QuoteError> {
        self.pck_chain()?
            .pop()
            .ok_or_else(|| QuoteError::NoPckChain("empty chain".into()))
    }

    /// The platform's FMSPC (family-model-stepping-platform-custom SKU), from the PCK leaf.
    pub fn fmspc(&self) -> Result<[u8; 6], QuoteError> {
        dcap_qvl::intel::quote_fmspc(&self.parsed)
            .map_err(|e| QuoteError::NoPckChain(format!("{e:#}")))
    }

    /// `"platform"` or `"processor"`: which Intel PCK CA issued the leaf (PCCS wants it).
    pub fn pck_ca(&self) -> Result<&'static str, QuoteError> {
        let ca = dcap_qvl::intel::quote_ca(&self.parsed)
            .map_err(|e| QuoteError::NoPckChain(format!("{e:#}")))?;
        Ok(match ca {
            dcap_qvl::config::PckCa::Platform => "platform",
            _ => "processor",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Vec<u8> {
        let path = format!("{}/../../shared/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    #[test]
    fn parses_v4_td10_vector() {
        let q = Quote::parse(&vector("dcap-qvl_tdx_quote")).unwrap();
        assert_eq!(q.version(), 4);
        assert_eq!(q.td_report_version(), TdReportVersion::V1_0);
        assert_eq!(q.report_data().to_hex(), "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20");
        assert_eq!(hex::encode_upper(q.fmspc().unwrap()), "B0C06F000000");
        assert!(!q.is_debug());
    }

    #[test]
    fn parses_v5_td15_and_td15ex_vectors() {
        let q = Quote::parse(&vector("dcap-qvl_tdx_quote_outdated")).unwrap();
        assert_eq!(
            (q.version(), q.td_report_version()),
            (5, TdReportVersion::V1_5)
        );
        assert_eq!(hex::encode_upper(q.fmspc().unwrap()), "90C06F000000");
        let q = Quote::parse(&vector("dcap-qvl_tdx_quote_td15ex")).unwrap();
        assert_eq!(
            (q.version(), q.td_report_version()),
            (5, TdReportVersion::V1_5Ex)
        );
    }

    #[test]
    fn the_header_names_the_tee_before_tdx_parsing() {
        let q = vector("dcap-qvl_tdx_quote");
        let h = QuoteHeader::peek(&q).unwrap();
        assert_eq!(
            (h.version, h.tee_type, h.tee_name().as_str()),
            (4, 0x81, "TDX")
        );
        assert_eq!(h.sgx_report_data(&q), None);
        // An SGX header with a body dcap-qvl's TDX parser would not read.
        let mut sgx = q[..HEADER_LEN].to_vec();
        sgx[4..8].copy_from_slice(&0u32.to_le_bytes());
        sgx.extend_from_slice(&[7u8; 400]);
        assert_eq!(Quote::parse(&sgx).unwrap_err(), QuoteError::NotTdx(0));
        let h = QuoteHeader::peek(&sgx).unwrap();
        assert_eq!(h.tee_name(), "SGX");
        assert_eq!(h.sgx_report_data(&sgx), Some(ReportData([7; 64])));
        assert!(QuoteHeader::peek(&q[..47]).is_err());
    }

    #[test]
    fn truncated_and_empty_quotes_are_errors() {
        let bytes = vector("dcap-qvl_tdx_quote");
        // Real quotes may carry trailing padding, so cut well inside the certificate data.
        for len in [0, 10, 48, 600, 1100, bytes.len() - 200] {
            assert!(Quote::parse(&bytes[..len]).is_err(), "len {len}");
        }
        assert_eq!(Quote::parse(&[]).unwrap_err(), QuoteError::Empty);
        assert!(matches!(
            Quote::parse(&vec![0u8; MAX_QUOTE_LEN + 1]),
            Err(QuoteError::TooLarge(_))
        ));
    }
}
