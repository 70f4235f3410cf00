//! TCB info (TDX, v3) and QE identity ("TD_QE", v2) JSON plus their signatures, and the
//! assembled `QuoteCollateralV3`. The JSON is written by hand rather than through
//! `serde_json::json!` so its bytes (which are what gets signed) never depend on
//! serde_json feature flags such as `preserve_order`.

use dcap_qvl::QuoteCollateralV3;

use super::certs::SimCerts;
use super::keys::SimKey;
use super::platform::*;

fn svn_components(svns: &[u8]) -> String {
    let items: Vec<String> = svns.iter().map(|s| format!("{{\"svn\":{s}}}")).collect();
    items.join(",")
}

fn upper_hex(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

/// One "UpToDate" platform level matching the PCK certificate's CPUSVN/PCESVN and the
/// TD report's TEE_TCB_SVN, plus the `TDX_01` module identity dcap-qvl selects for
/// TEE_TCB_SVN[1] == 1 and checks MRSIGNER_SEAM / SEAM attributes against.
pub(super) fn tcb_info_json() -> String {
    let module_fields = format!(
        "\"mrsigner\":\"{}\",\"attributes\":\"{}\",\"attributesMask\":\"FFFFFFFFFFFFFFFF\"",
        upper_hex(&MR_SIGNER_SEAM),
        upper_hex(&SEAM_ATTRIBUTES),
    );
    format!(
        concat!(
            "{{\"id\":\"TDX\",\"version\":3,\"issueDate\":\"{from}\",\"nextUpdate\":\"{until}\",",
            "\"fmspc\":\"{fmspc}\",\"pceId\":\"{pce_id}\",\"tcbType\":0,",
            "\"tcbEvaluationDataNumber\":{eval},",
            "\"tdxModule\":{{{module}}},",
            "\"tdxModuleIdentities\":[{{\"id\":\"TDX_{version:02X}\",{module},",
            "\"tcbLevels\":[{{\"tcb\":{{\"isvsvn\":{module_svn}}},",
            "\"tcbDate\":\"{date}\",\"tcbStatus\":\"UpToDate\"}}]}}],",
            "\"tcbLevels\":[{{\"tcb\":{{\"sgxtcbcomponents\":[{sgx}],\"pcesvn\":{pcesvn},",
            "\"tdxtcbcomponents\":[{tdx}]}},\"tcbDate\":\"{date}\",\"tcbStatus\":\"UpToDate\"}}]}}"
        ),
        from = VALID_FROM_RFC3339,
        until = VALID_UNTIL_RFC3339,
        fmspc = upper_hex(&FMSPC),
        pce_id = upper_hex(&PCE_ID),
        eval = TCB_EVALUATION_DATA_NUMBER,
        module = module_fields,
        version = TEE_TCB_SVN[1],
        module_svn = TEE_TCB_SVN[0],
        date = TCB_DATE,
        sgx = svn_components(&CPU_SVN),
        pcesvn = PCE_SVN,
        tdx = svn_components(&TDX_TCB_COMPONENTS),
    )
}

/// Identity of the simulated TD quoting enclave, matching the QE report in every quote.
pub(super) fn qe_identity_json(qe_mr_signer: &[u8; 32]) -> String {
    format!(
        concat!(
            "{{\"id\":\"TD_QE\",\"version\":2,\"issueDate\":\"{from}\",\"nextUpdate\":\"{until}\",",
            "\"tcbEvaluationDataNumber\":{eval},\"miscselect\":\"{misc}\",",
            "\"miscselectMask\":\"{misc_mask}\",\"attributes\":\"{attr}\",",
            "\"attributesMask\":\"{attr_mask}\",\"mrsigner\":\"{mrsigner}\",",
            "\"isvprodid\":{prod},\"tcbLevels\":[{{\"tcb\":{{\"isvsvn\":{svn}}},",
            "\"tcbDate\":\"{date}\",\"tcbStatus\":\"UpToDate\"}}]}}"
        ),
        from = VALID_FROM_RFC3339,
        until = VALID_UNTIL_RFC3339,
        eval = TCB_EVALUATION_DATA_NUMBER,
        // dcap-qvl reads these masks as little-endian u32 from the hex bytes.
        misc = upper_hex(&QE_MISCSELECT.to_le_bytes()),
        misc_mask = upper_hex(&QE_MISCSELECT_MASK.to_le_bytes()),
        attr = upper_hex(&QE_ATTRIBUTES),
        attr_mask = upper_hex(&QE_ATTRIBUTES_MASK),
        mrsigner = upper_hex(qe_mr_signer),
        prod = QE_ISV_PROD_ID,
        svn = QE_ISV_SVN,
        date = TCB_DATE,
    )
}

pub(super) fn assemble(
    certs: &SimCerts,
    tcb_key: &SimKey,
    qe_mr_signer: &[u8; 32],
) -> QuoteCollateralV3 {
    // Intel serves each issuer chain as signer PEM followed by the root PEM.
    let tcb_chain = format!("{}{}", certs.tcb_signing.pem, certs.root.pem);
    let tcb_info = tcb_info_json();
    let qe_identity = qe_identity_json(qe_mr_signer);
    QuoteCollateralV3 {
        pck_crl_issuer_chain: format!("{}{}", certs.platform_ca.pem, certs.root.pem),
        root_ca_crl: certs.root_crl.clone(),
        pck_crl: certs.pck_crl.clone(),
        tcb_info_signature: tcb_key.sign_raw(tcb_info.as_bytes()).to_vec(),
        tcb_info,
        // Same signer as TCB info, like Intel (lets dcap-qvl reuse the verified path).
        qe_identity_issuer_chain: tcb_chain.clone(),
        qe_identity_signature: tcb_key.sign_raw(qe_identity.as_bytes()).to_vec(),
        qe_identity,
        tcb_info_issuer_chain: tcb_chain,
        // The PCK chain travels inside the quote (certification data type 5).
        pck_certificate_chain: None,
    }
}
