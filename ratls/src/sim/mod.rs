//! TEMPORARY stub until the simulated PKI lands.
#![allow(dead_code, unused_variables)]
pub const SIMULATION_SEED: [u8; 32] = *b"teegate-simulated-tdx-pki-seed-1";
#[derive(Debug, thiserror::Error)]
#[error("sim: {0}")]
pub struct SimError(String);
pub struct SimulatedPki {
    root: Vec<u8>,
    collateral: dcap_qvl::QuoteCollateralV3,
}
#[derive(Clone, Debug)]
pub struct SimTdReport {
    pub mr_td: [u8; 48],
    pub mr_config_id: [u8; 48],
    pub mr_owner: [u8; 48],
    pub mr_owner_config: [u8; 48],
    pub rt_mr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
}
impl SimulatedPki {
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, SimError> {
        Err(SimError("stub".into()))
    }
    pub fn well_known() -> &'static SimulatedPki {
        unimplemented!()
    }
    pub fn root_ca_der(&self) -> &[u8] {
        &self.root
    }
    pub fn collateral(&self) -> &dcap_qvl::QuoteCollateralV3 {
        &self.collateral
    }
    pub fn quote(&self, td: &SimTdReport) -> Vec<u8> {
        vec![]
    }
}
impl Default for SimTdReport {
    fn default() -> Self {
        Self {
            mr_td: [0; 48],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rt_mr: [[0; 48]; 4],
            report_data: [0; 64],
            td_attributes: [0; 8],
            xfam: [0; 8],
        }
    }
}
