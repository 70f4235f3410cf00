//! Quote verification: trust anchor choice (Intel's root, or the simulated root only when
//! allowed), collateral lookup, dcap-qvl's signature/TCB checks, then TCB policy.

use std::sync::Arc;

use dcap_qvl::verify::QuoteVerifier as DcapVerifier;

use crate::collateral::{Collateral, CollateralSource, SourceChain};
use crate::error::{Reason, Step, VerifyError};
use crate::quote::Quote;
use crate::sim::SimulatedPki;
use crate::tcb::{TcbPolicy, TcbStatus};

/// A quote that passed signature, collateral and TCB checks.
#[derive(Debug, Clone)]
pub struct VerifiedQuote {
    pub quote: Quote,
    pub tcb_status: TcbStatus,
    pub advisory_ids: Vec<String>,
    pub simulated: bool,
    /// When the collateral used stops being current (unix seconds).
    pub collateral_expires: u64,
}

/// Verifies quotes against Intel's root (and the simulated root when allowed).
#[derive(Clone)]
pub struct QuoteVerifier {
    collateral: Arc<dyn CollateralSource>,
    tcb: TcbPolicy,
    allow_simulated: bool,
}

impl QuoteVerifier {
    pub fn new(collateral: Arc<dyn CollateralSource>, tcb: TcbPolicy, allow_simulated: bool) -> Self {
        Self {
            collateral,
            tcb,
            allow_simulated,
        }
    }

    /// A verifier with no collateral source: only simulated quotes (if allowed) verify.
    pub fn simulated_only(tcb: TcbPolicy, allow_simulated: bool) -> Self {
        Self::new(Arc::new(SourceChain::new()), tcb, allow_simulated)
    }

    pub fn collateral_source(&self) -> Arc<dyn CollateralSource> {
        self.collateral.clone()
    }

    pub fn allows_simulated(&self) -> bool {
        self.allow_simulated
    }

    pub fn tcb_policy(&self) -> &TcbPolicy {
        &self.tcb
    }

    /// Parses and verifies raw quote bytes at `now` (unix seconds).
    pub fn verify_bytes(&self, bytes: &[u8], now: u64) -> Result<VerifiedQuote, VerifyError> {
        let quote = Quote::parse(bytes).map_err(|e| VerifyError::parse(Reason::Quote(e.to_string())))?;
        self.verify(quote, None, now)
    }

    /// Verifies a parsed quote; `collateral` overrides the configured sources.
    pub fn verify(
        &self,
        quote: Quote,
        collateral: Option<&Collateral>,
        now: u64,
    ) -> Result<VerifiedQuote, VerifyError> {
        let sig = |r: Reason| VerifyError::new(Step::QuoteSignature, r);
        let root = quote
            .chain_root()
            .map_err(|e| VerifyError::parse(Reason::Quote(e.to_string())))?;
        let sim = SimulatedPki::well_known();
        let simulated = root == sim.root_ca_der();
        if simulated && !self.allow_simulated {
            return Err(sig(Reason::SimulatedNotAllowed));
        }
        if quote.is_debug() {
            return Err(VerifyError::new(Step::TcbStatus, Reason::DebugTd));
        }
        let fetched;
        let collateral = match (simulated, collateral) {
            (true, _) => {
                fetched = Collateral::from_dcap(sim.collateral().clone());
                &fetched
            }
            (false, Some(c)) => c,
            (false, None) => {
                fetched = self
                    .collateral
                    .collateral_for(&quote, now)
                    .map_err(|e| sig(Reason::Collateral(e.to_string())))?;
                &fetched
            }
        };
        let dcap = if simulated {
            DcapVerifier::new(sim.root_ca_der().to_vec())
        } else {
            DcapVerifier::new_prod()
        };
        let report = dcap
            .verify(quote.as_bytes(), collateral.as_dcap(), now)
            .map_err(|e| {
                let msg = format!("{e:#}");
                let step = if msg.contains("TCB level") || msg.contains("TCB status") {
                    Step::TcbStatus
                } else {
                    Step::QuoteSignature
                };
                VerifyError::new(step, Reason::Dcap(msg))
            })?;
        let status: TcbStatus = report
            .status
            .parse()
            .map_err(|e| sig(Reason::Dcap(format!("{e}"))))?;
        if !self.tcb.allows(status) {
            return Err(VerifyError::new(
                Step::TcbStatus,
                Reason::TcbNotAllowed {
                    status,
                    allowed: self.tcb.describe(),
                    advisories: report.advisory_ids.join(", "),
                },
            ));
        }
        let collateral_expires = collateral.window().map(|(_, end)| end).unwrap_or(now);
        Ok(VerifiedQuote {
            quote,
            tcb_status: status,
            advisory_ids: report.advisory_ids,
            simulated,
            collateral_expires,
        })
    }
}
