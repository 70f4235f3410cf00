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
    pub fn new(
        collateral: Arc<dyn CollateralSource>,
        tcb: TcbPolicy,
        allow_simulated: bool,
    ) -> Self {
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
        let quote =
            Quote::parse(bytes).map_err(|e| VerifyError::parse(Reason::Quote(e.to_string())))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collateral::FileSource;

    fn vector(name: &str) -> Vec<u8> {
        let path = format!("{}/../../shared/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    fn verifier_for(collateral: &str) -> QuoteVerifier {
        let c = Collateral::from_json(&vector(collateral)).unwrap();
        QuoteVerifier::new(
            Arc::new(FileSource::from_collateral(c)),
            TcbPolicy::default(),
            false,
        )
    }

    fn at(rfc3339: &str) -> u64 {
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp() as u64
    }

    #[test]
    fn real_v4_quote_is_up_to_date_inside_collateral_window() {
        let v = verifier_for("dcap-qvl_tdx_quote_collateral.json")
            .verify_bytes(&vector("dcap-qvl_tdx_quote"), at("2025-06-20T00:00:00Z"))
            .unwrap();
        assert_eq!(v.tcb_status, TcbStatus::UpToDate);
        assert!(v.advisory_ids.is_empty());
        assert!(!v.simulated);
        assert!(v.collateral_expires > at("2025-06-20T00:00:00Z"));
    }

    #[test]
    fn real_v5_td15ex_quote_is_up_to_date() {
        let v = verifier_for("dcap-qvl_tdx_quote_td15ex_collateral.json")
            .verify_bytes(
                &vector("dcap-qvl_tdx_quote_td15ex"),
                at("2026-10-10T00:00:00Z"),
            )
            .unwrap();
        assert_eq!(v.tcb_status, TcbStatus::UpToDate);
    }

    #[test]
    fn expired_tcb_info_is_a_signature_step_error() {
        let err = verifier_for("dcap-qvl_tdx_quote_collateral.json")
            .verify_bytes(&vector("dcap-qvl_tdx_quote"), at("2025-08-20T00:00:00Z"))
            .unwrap_err();
        assert_eq!(err.step, Step::QuoteSignature);
        assert!(err.to_string().contains("TCBInfo expired"), "{err}");
    }

    #[test]
    fn tampered_report_data_breaks_the_signature() {
        let mut q = vector("dcap-qvl_tdx_quote");
        let rd = Quote::parse(&q).unwrap().report_data();
        let pos = q.windows(64).position(|w| w == rd.0).unwrap();
        q[pos] ^= 1;
        let err = verifier_for("dcap-qvl_tdx_quote_collateral.json")
            .verify_bytes(&q, at("2025-06-20T00:00:00Z"))
            .unwrap_err();
        assert_eq!(err.step, Step::QuoteSignature);
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn flipped_signature_byte_is_rejected() {
        let mut q = vector("dcap-qvl_tdx_quote");
        // The ISV signature starts right after the 4-byte auth-data length that follows
        // the 48-byte header and 584-byte TD report.
        q[48 + 584 + 4 + 5] ^= 0x40;
        let err = verifier_for("dcap-qvl_tdx_quote_collateral.json")
            .verify_bytes(&q, at("2025-06-20T00:00:00Z"))
            .unwrap_err();
        assert_eq!(err.step, Step::QuoteSignature, "{err}");
    }

    #[test]
    fn outdated_platform_has_no_matching_tcb_level() {
        let err = verifier_for("dcap-qvl_tdx_quote_outdated_collateral.json")
            .verify_bytes(
                &vector("dcap-qvl_tdx_quote_outdated"),
                at("2026-02-20T00:00:00Z"),
            )
            .unwrap_err();
        assert_eq!(err.step, Step::TcbStatus);
        assert!(
            err.to_string().contains("No matching TCB level found"),
            "{err}"
        );
    }

    #[test]
    fn go_tdx_guest_quote_checks_chains_then_fails_tcb_match() {
        let v = verifier_for("go-tdx-guest_SPR_E4_collateral_assembled.json");
        let q = vector("go-tdx-guest_tdx_prod_quote_SPR_E4.dat");
        let err = v.verify_bytes(&q, at("2023-06-20T00:00:00Z")).unwrap_err();
        assert_eq!(err.step, Step::TcbStatus, "{err}");
        assert!(
            err.to_string().contains("No matching TCB level found"),
            "{err}"
        );
        let err = v.verify_bytes(&q, at("2023-07-20T00:00:00Z")).unwrap_err();
        assert!(err.to_string().contains("TCBInfo expired"), "{err}");
    }

    #[test]
    fn wrong_collateral_is_rejected() {
        // Collateral for another FMSPC, handed in directly.
        let other =
            Collateral::from_json(&vector("dcap-qvl_tdx_quote_outdated_collateral.json")).unwrap();
        let q = Quote::parse(&vector("dcap-qvl_tdx_quote")).unwrap();
        let err = verifier_for("dcap-qvl_tdx_quote_collateral.json")
            .verify(q, Some(&other), at("2026-02-20T00:00:00Z"))
            .unwrap_err();
        assert_eq!(err.step, Step::QuoteSignature, "{err}");
    }

    #[test]
    fn missing_collateral_is_reported_not_skipped() {
        let v = QuoteVerifier::simulated_only(TcbPolicy::default(), false);
        let err = v
            .verify_bytes(&vector("dcap-qvl_tdx_quote"), at("2025-06-20T00:00:00Z"))
            .unwrap_err();
        assert_eq!(err.step, Step::QuoteSignature);
        assert!(matches!(err.reason, Reason::Collateral(_)), "{err}");
    }

    #[test]
    fn truncated_quote_is_a_parse_error() {
        let q = vector("dcap-qvl_tdx_quote");
        let err = verifier_for("dcap-qvl_tdx_quote_collateral.json")
            .verify_bytes(&q[..1000], at("2025-06-20T00:00:00Z"))
            .unwrap_err();
        assert_eq!(err.step, Step::Parse);
    }
}
