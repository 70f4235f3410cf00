//! Collateral: the signed TCB info, QE identity, CRLs and issuer chains a quote is judged
//! against. Sources are tried in order (embedded in the certificate, on-disk cache, files,
//! a PCCS); every byte of collateral is checked by dcap-qvl, so where it came from only
//! matters for freshness, not for trust.

mod cache;
mod file;
mod pccs;

pub use cache::CachedSource;
pub use file::FileSource;
pub use pccs::PccsClient;

use std::fmt;
use std::sync::Arc;

use dcap_qvl::QuoteCollateralV3;
use serde::Deserialize;

use crate::quote::Quote;

/// Largest collateral document accepted from a file, a cache or a server.
pub const MAX_COLLATERAL_LEN: usize = 1024 * 1024;

/// Collateral for one platform (FMSPC) and PCK CA.
#[derive(Clone, PartialEq, Eq)]
pub struct Collateral(pub(crate) QuoteCollateralV3);

impl fmt::Debug for Collateral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.window().ok();
        f.debug_struct("Collateral")
            .field("fmspc", &self.fmspc().ok())
            .field("window", &w)
            .finish()
    }
}

/// Why no usable collateral was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollateralError {
    #[error("collateral is malformed: {0}")]
    Malformed(String),
    #[error("no collateral for FMSPC {fmspc} ({tried})")]
    NotFound { fmspc: String, tried: String },
    #[error("collateral I/O: {0}")]
    Io(String),
    #[error("PCCS request failed: {0}")]
    Pccs(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dated {
    issue_date: String,
    next_update: String,
    #[serde(default)]
    fmspc: Option<String>,
}

fn unix(rfc3339: &str) -> Result<u64, CollateralError> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map_err(|e| CollateralError::Malformed(format!("bad date {rfc3339:?}: {e}")))?;
    u64::try_from(t.unix_timestamp())
        .map_err(|_| CollateralError::Malformed(format!("date before 1970: {rfc3339}")))
}

impl Collateral {
    pub fn from_json(bytes: &[u8]) -> Result<Self, CollateralError> {
        if bytes.len() > MAX_COLLATERAL_LEN {
            return Err(CollateralError::Malformed(format!(
                "{} bytes exceeds the {MAX_COLLATERAL_LEN}-byte limit",
                bytes.len()
            )));
        }
        let c: QuoteCollateralV3 =
            serde_json::from_slice(bytes).map_err(|e| CollateralError::Malformed(e.to_string()))?;
        let c = Self(c);
        c.window()?;
        Ok(c)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and byte vectors cannot fail.
        serde_json::to_vec(&self.0).unwrap_or_default()
    }

    pub fn as_dcap(&self) -> &QuoteCollateralV3 {
        &self.0
    }

    pub fn from_dcap(c: QuoteCollateralV3) -> Self {
        Self(c)
    }

    fn dated(json: &str, what: &str) -> Result<Dated, CollateralError> {
        serde_json::from_str(json).map_err(|e| CollateralError::Malformed(format!("{what}: {e}")))
    }

    /// The FMSPC the TCB info is for (upper-case hex).
    pub fn fmspc(&self) -> Result<String, CollateralError> {
        Self::dated(&self.0.tcb_info, "tcbInfo")?
            .fmspc
            .map(|f| f.to_ascii_uppercase())
            .ok_or_else(|| CollateralError::Malformed("tcbInfo has no fmspc".into()))
    }

    /// The window (unix seconds) in which both TCB info and QE identity are current.
    pub fn window(&self) -> Result<(u64, u64), CollateralError> {
        let t = Self::dated(&self.0.tcb_info, "tcbInfo")?;
        let q = Self::dated(&self.0.qe_identity, "qeIdentity")?;
        let start = unix(&t.issue_date)?.max(unix(&q.issue_date)?);
        let end = unix(&t.next_update)?.min(unix(&q.next_update)?);
        Ok((start, end))
    }

    /// Whether the collateral is still current at `now` (unix seconds).
    pub fn is_current(&self, now: u64) -> bool {
        self.window()
            .map(|(start, end)| start <= now && now < end)
            .unwrap_or(false)
    }
}

/// Somewhere collateral for a quote can come from.
pub trait CollateralSource: Send + Sync {
    /// Collateral for the quote's platform, current at `now` (unix seconds) if the source
    /// can tell; dcap-qvl makes the final freshness check.
    fn collateral_for(&self, quote: &Quote, now: u64) -> Result<Collateral, CollateralError>;

    /// A short label for error messages and logs.
    fn describe(&self) -> String;
}

/// Tries each source in order; the first that answers wins.
#[derive(Clone, Default)]
pub struct SourceChain {
    sources: Vec<Arc<dyn CollateralSource>>,
}

impl SourceChain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, source: Arc<dyn CollateralSource>) -> Self {
        self.sources.push(source);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

impl CollateralSource for SourceChain {
    fn collateral_for(&self, quote: &Quote, now: u64) -> Result<Collateral, CollateralError> {
        let mut errors = Vec::new();
        for s in &self.sources {
            match s.collateral_for(quote, now) {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(format!("{}: {e}", s.describe())),
            }
        }
        let fmspc = quote
            .fmspc()
            .map(hex::encode_upper)
            .unwrap_or_else(|_| "?".into());
        Err(CollateralError::NotFound {
            fmspc,
            tried: if errors.is_empty() {
                "no collateral source configured".into()
            } else {
                errors.join("; ")
            },
        })
    }

    fn describe(&self) -> String {
        let names: Vec<_> = self.sources.iter().map(|s| s.describe()).collect();
        format!("[{}]", names.join(", "))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn vector(name: &str) -> Vec<u8> {
        let path = format!("{}/../../shared/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    #[test]
    fn reads_window_and_fmspc_of_vector_collateral() {
        let c = Collateral::from_json(&vector("dcap-qvl_tdx_quote_collateral.json")).unwrap();
        assert_eq!(c.fmspc().unwrap(), "B0C06F000000");
        let (start, end) = c.window().unwrap();
        assert!(start < end);
        assert!(c.is_current(1_750_377_600)); // 2025-06-20
        assert!(!c.is_current(1_755_648_000)); // 2025-08-20
    }

    #[test]
    fn garbage_collateral_is_malformed() {
        assert!(matches!(
            Collateral::from_json(b"{\"nope\":1}"),
            Err(CollateralError::Malformed(_))
        ));
    }
}
