//! The simulated quote provider: real TDX v4 quote layout, signed through teegate's
//! simulated Intel PKI. Verifiers reject its quotes unless `allow_simulated` is set.

use std::sync::Mutex;

use sha2::{Digest, Sha384};

use super::{ProviderError, ProviderKind, QuoteProvider};
use crate::eventlog::extend;
use crate::sim::{SimTdReport, SimulatedPki, TD_ATTRIBUTES_DEBUG};
use crate::types::{Measurement, ReportData};

/// Keeps RTMRs in memory and signs quotes with the simulated attestation key.
pub struct SimulatedProvider {
    mrtd: Measurement,
    rtmrs: Mutex<[Measurement; 4]>,
    debug: bool,
}

fn label(text: &str) -> Measurement {
    Measurement(Sha384::digest(text.as_bytes()).into())
}

impl SimulatedProvider {
    /// A simulated TD with fixed, recognisable MRTD and RTMR0-2.
    pub fn new() -> Self {
        Self::with_measurements(
            label("teegate SIMULATED MRTD"),
            [
                label("teegate SIMULATED RTMR0"),
                label("teegate SIMULATED RTMR1"),
                label("teegate SIMULATED RTMR2"),
            ],
        )
    }

    /// A simulated TD with chosen boot measurements (RTMR3 starts at zero).
    pub fn with_measurements(mrtd: Measurement, rtmr0_2: [Measurement; 3]) -> Self {
        Self {
            mrtd,
            rtmrs: Mutex::new([rtmr0_2[0], rtmr0_2[1], rtmr0_2[2], Measurement::ZERO]),
            debug: false,
        }
    }

    /// Marks the simulated TD as a debug TD, which every verifier must refuse.
    pub fn debug_td(mut self) -> Self {
        self.debug = true;
        self
    }

    pub fn mrtd(&self) -> Measurement {
        self.mrtd
    }

    pub fn rtmrs(&self) -> [Measurement; 4] {
        *self.rtmrs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for SimulatedProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl QuoteProvider for SimulatedProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Simulated
    }

    fn quote(&self, report_data: &ReportData) -> Result<Vec<u8>, ProviderError> {
        let rtmrs = self.rtmrs();
        let mut td = SimTdReport {
            mr_td: self.mrtd.0,
            rt_mr: [rtmrs[0].0, rtmrs[1].0, rtmrs[2].0, rtmrs[3].0],
            report_data: report_data.0,
            ..SimTdReport::default()
        };
        if self.debug {
            td.td_attributes[0] |= TD_ATTRIBUTES_DEBUG[0];
        }
        Ok(SimulatedPki::well_known().quote(&td))
    }

    fn extend_rtmr3(&self, digest: &Measurement) -> Result<(), ProviderError> {
        let mut rtmrs = self.rtmrs.lock().unwrap_or_else(|p| p.into_inner());
        rtmrs[3] = extend(&rtmrs[3], digest);
        Ok(())
    }
}
