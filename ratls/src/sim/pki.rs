//! [`SimulatedPki`]: everything derived from one seed (keys, certificates, CRLs,
//! collateral, the pre-signed QE part of every quote) plus the quote signer.

use std::sync::OnceLock;

use dcap_qvl::QuoteCollateralV3;
use sha2::{Digest, Sha256, Sha384};

use super::certs::{self, CertKeys};
use super::keys::{derive_bytes, SimKey};
use super::quote_builder::{self, QeMeasurements};
use super::{collateral, SimError, SimTdReport, SIMULATION_SEED};

/// A deterministic stand-in for Intel's DCAP PKI and a TDX platform's quoting enclave.
pub struct SimulatedPki {
    root_ca_der: Vec<u8>,
    collateral: QuoteCollateralV3,
    attestation_key: SimKey,
    qe_id: [u8; 16],
    mr_seam: [u8; 48],
    /// Auth data after the ISV signature (attestation key, QE report, PCK chain).
    auth_data_tail: Vec<u8>,
    /// Little-endian u32 length of the full auth data (ISV signature + tail).
    auth_data_len: [u8; 4],
}

impl std::fmt::Debug for SimulatedPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of debug output; the root fingerprint identifies the instance.
        f.debug_struct("SimulatedPki")
            .field(
                "root_ca_sha256",
                &hex::encode(Sha256::digest(&self.root_ca_der)),
            )
            .finish_non_exhaustive()
    }
}

/// Fixed measurement values named by a label (not seed-dependent: they describe the
/// simulated software, not the simulated machine).
fn measurement32(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

impl SimulatedPki {
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, SimError> {
        let root = SimKey::derive(seed, "key/root-ca")?;
        let platform_ca = SimKey::derive(seed, "key/pck-platform-ca")?;
        let pck = SimKey::derive(seed, "key/pck-leaf")?;
        let tcb_signing = SimKey::derive(seed, "key/tcb-signing")?;
        let attestation_key = SimKey::derive(seed, "key/qe-attestation")?;

        let certs = certs::build(
            seed,
            &CertKeys {
                root: &root,
                platform_ca: &platform_ca,
                pck: &pck,
                tcb_signing: &tcb_signing,
            },
        )?;

        let qe = QeMeasurements {
            mr_enclave: measurement32("teegate simulated TD quoting enclave MRENCLAVE"),
            mr_signer: measurement32("teegate simulated TD quoting enclave MRSIGNER"),
        };
        let collateral = collateral::assemble(&certs, &tcb_signing, &qe.mr_signer);

        // The QE report is the same for every quote: sign it with the PCK key once.
        let att_pub = attestation_key.public_raw()?;
        let qe_report = quote_builder::qe_report(&qe, &att_pub);
        let qe_report_signature = pck.sign_raw(&qe_report);
        let pck_chain = format!(
            "{}{}{}",
            certs.pck.pem, certs.platform_ca.pem, certs.root.pem
        );
        let auth_data_tail = quote_builder::auth_data_tail(
            &att_pub,
            &qe_report,
            &qe_report_signature,
            pck_chain.as_bytes(),
        )?;
        let auth_data_len = quote_builder::len_u32(64 + auth_data_tail.len())?;

        Ok(Self {
            root_ca_der: certs.root.der,
            collateral,
            attestation_key,
            qe_id: derive_bytes(seed, "qe/id")?,
            mr_seam: Sha384::digest(b"teegate simulated TDX module MRSEAM").into(),
            auth_data_tail,
            auth_data_len,
        })
    }

    /// Cached instance for [`SIMULATION_SEED`], built once per process.
    pub fn try_well_known() -> Result<&'static SimulatedPki, SimError> {
        static WELL_KNOWN: OnceLock<Result<SimulatedPki, SimError>> = OnceLock::new();
        WELL_KNOWN
            .get_or_init(|| SimulatedPki::from_seed(&SIMULATION_SEED))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Cached instance for [`SIMULATION_SEED`], built once per process.
    ///
    /// # Panics
    /// Only if building from the constant seed fails, which is a bug in this module
    /// (covered by the tests); use [`Self::try_well_known`] to get the error instead.
    pub fn well_known() -> &'static SimulatedPki {
        match Self::try_well_known() {
            Ok(pki) => pki,
            Err(e) => panic!("simulated PKI from the well-known seed failed: {e}"),
        }
    }

    /// DER of the simulated root CA: the trust anchor to give `QuoteVerifier::new`.
    pub fn root_ca_der(&self) -> &[u8] {
        &self.root_ca_der
    }

    /// TCB info, QE identity, their issuer chains and signatures, and both CRLs.
    pub fn collateral(&self) -> &QuoteCollateralV3 {
        &self.collateral
    }

    /// Build and sign a complete TDX v4 quote for `td`.
    pub fn quote(&self, td: &SimTdReport) -> Vec<u8> {
        let header = quote_builder::header(&self.qe_id);
        let body = quote_builder::td_report(td, &self.mr_seam);
        let mut quote = Vec::with_capacity(
            quote_builder::ISV_SIGNATURE_OFFSET + 64 + self.auth_data_tail.len(),
        );
        quote.extend_from_slice(&header);
        quote.extend_from_slice(&body);
        // The attestation key signs header || TD report.
        let isv_signature = self.attestation_key.sign_raw(&quote);
        quote.extend_from_slice(&self.auth_data_len);
        quote.extend_from_slice(&isv_signature);
        quote.extend_from_slice(&self.auth_data_tail);
        quote
    }
}
