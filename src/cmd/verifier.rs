//! Building a collateral source from the CLI's flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ratls::collateral::{CollateralSource, FileSource, PccsClient, SourceChain};

#[derive(clap::Args, Debug, Clone)]
pub struct CollateralArgs {
    /// Collateral JSON (dcap-qvl QuoteCollateralV3 layout); repeat for several platforms.
    #[arg(long = "collateral", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Fetch collateral from this PCCS (used only when given).
    #[arg(long, value_name = "URL")]
    pub pccs: Option<String>,
}

impl CollateralArgs {
    pub fn source(&self) -> Result<Arc<dyn CollateralSource>> {
        let mut chain = SourceChain::new();
        if !self.files.is_empty() {
            chain = chain.with(Arc::new(
                FileSource::load(&self.files).context("loading collateral")?,
            ));
        }
        if let Some(url) = &self.pccs {
            chain = chain.with(Arc::new(PccsClient::new(url, Duration::from_secs(20))?));
        }
        Ok(Arc::new(chain))
    }
}
