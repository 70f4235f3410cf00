//! Collateral read from JSON files (dcap-qvl `QuoteCollateralV3` layout), matched to a
//! quote by FMSPC.

use std::path::{Path, PathBuf};

use super::{Collateral, CollateralError, CollateralSource};
use crate::quote::Quote;

/// Collateral documents loaded once from files.
#[derive(Debug, Clone)]
pub struct FileSource {
    paths: Vec<PathBuf>,
    entries: Vec<Collateral>,
}

impl FileSource {
    pub fn load(paths: &[PathBuf]) -> Result<Self, CollateralError> {
        let mut entries = Vec::with_capacity(paths.len());
        for p in paths {
            entries.push(Self::read(p)?);
        }
        Ok(Self {
            paths: paths.to_vec(),
            entries,
        })
    }

    pub fn from_collateral(c: Collateral) -> Self {
        Self {
            paths: Vec::new(),
            entries: vec![c],
        }
    }

    fn read(path: &Path) -> Result<Collateral, CollateralError> {
        let bytes = std::fs::read(path)
            .map_err(|e| CollateralError::Io(format!("{}: {e}", path.display())))?;
        Collateral::from_json(&bytes).map_err(|e| match e {
            CollateralError::Malformed(m) => {
                CollateralError::Malformed(format!("{}: {m}", path.display()))
            }
            other => other,
        })
    }
}

impl CollateralSource for FileSource {
    fn collateral_for(&self, quote: &Quote, now: u64) -> Result<Collateral, CollateralError> {
        let fmspc = quote
            .fmspc()
            .map(hex::encode_upper)
            .map_err(|e| CollateralError::Malformed(e.to_string()))?;
        let mut matching = self
            .entries
            .iter()
            .filter(|c| c.fmspc().is_ok_and(|f| f == fmspc));
        let first = matching.next().cloned();
        // Prefer a document current at `now`; otherwise hand back one so dcap-qvl reports
        // precisely what is stale.
        self.entries
            .iter()
            .find(|c| c.fmspc().is_ok_and(|f| f == fmspc) && c.is_current(now))
            .cloned()
            .or(first)
            .ok_or_else(|| CollateralError::NotFound {
                fmspc,
                tried: self.describe(),
            })
    }

    fn describe(&self) -> String {
        if self.paths.is_empty() {
            "in-memory collateral".into()
        } else {
            let names: Vec<_> = self.paths.iter().map(|p| p.display().to_string()).collect();
            format!("files {}", names.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::vector;
    use super::*;

    fn vector_path(name: &str) -> PathBuf {
        PathBuf::from(format!(
            "{}/../../shared/vectors/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    #[test]
    fn picks_collateral_by_fmspc() {
        let src = FileSource::load(&[
            vector_path("dcap-qvl_tdx_quote_outdated_collateral.json"),
            vector_path("dcap-qvl_tdx_quote_collateral.json"),
        ])
        .unwrap();
        let q = Quote::parse(&vector("dcap-qvl_tdx_quote")).unwrap();
        let c = src.collateral_for(&q, 1_750_377_600).unwrap();
        assert_eq!(c.fmspc().unwrap(), "B0C06F000000");
    }

    #[test]
    fn unknown_fmspc_is_not_found() {
        let src = FileSource::load(&[vector_path("dcap-qvl_tdx_quote_outdated_collateral.json")])
            .unwrap();
        let q = Quote::parse(&vector("dcap-qvl_tdx_quote")).unwrap();
        let err = src.collateral_for(&q, 0).unwrap_err();
        assert!(err.to_string().contains("B0C06F000000"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = FileSource::load(&[PathBuf::from("/nonexistent/c.json")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.json"));
    }
}
