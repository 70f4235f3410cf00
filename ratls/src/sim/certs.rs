//! The simulated Intel PKI: root CA, PCK Platform CA, PCK leaf (with the SGX extension),
//! TCB signing certificate, and the two CRLs dcap-qvl insists on (root CA CRL and PCK
//! CRL, both empty but properly signed). Shapes mirror Intel's real certificates.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose, SerialNumber,
};
use time::{Date, Month, OffsetDateTime};

use super::der;
use super::keys::{derive_bytes, SimKey};
use super::platform::*;
use super::SimError;

/// Intel SGX extension OID 1.2.840.113741.1.13.1; its entries are sub-arcs of it.
const SGX_EXT: [u64; 7] = [1, 2, 840, 113741, 1, 13, 1];

pub(super) struct CertDer {
    pub der: Vec<u8>,
    pub pem: String,
}

pub(super) struct SimCerts {
    pub root: CertDer,
    pub platform_ca: CertDer,
    pub pck: CertDer,
    pub tcb_signing: CertDer,
    pub root_crl: Vec<u8>,
    pub pck_crl: Vec<u8>,
}

/// The keys the certificates are issued to / by.
pub(super) struct CertKeys<'a> {
    pub root: &'a SimKey,
    pub platform_ca: &'a SimKey,
    pub pck: &'a SimKey,
    pub tcb_signing: &'a SimKey,
}

fn x509_err(e: rcgen::Error) -> SimError {
    SimError::X509(e.to_string())
}

fn utc_midnight((year, month, day): (i32, u8, u8)) -> Result<OffsetDateTime, SimError> {
    let month = Month::try_from(month).map_err(|_| SimError::Der("invalid month"))?;
    let date =
        Date::from_calendar_date(year, month, day).map_err(|_| SimError::Der("invalid date"))?;
    Ok(date.midnight().assume_utc())
}

fn to_cert(cert: rcgen::Certificate) -> CertDer {
    // rcgen emits CRLF line endings on Windows; normalise so the collateral's PEM
    // chains are byte-identical on every platform.
    CertDer {
        der: cert.der().to_vec(),
        pem: cert.pem().replace("\r\n", "\n"),
    }
}

fn params(
    seed: &[u8; 32],
    cn: &str,
    is_ca: IsCa,
    key_usages: Vec<KeyUsagePurpose>,
) -> Result<CertificateParams, SimError> {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CountryName, "US");

    // Seed-derived positive 16-byte serial (top bit clear, no leading zero byte).
    let mut serial: [u8; 16] = derive_bytes(seed, &format!("serial/{cn}"))?;
    serial[0] = (serial[0] & 0x7f) | 0x40;

    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.not_before = utc_midnight(VALID_FROM_YMD)?;
    p.not_after = utc_midnight(VALID_UNTIL_YMD)?;
    p.is_ca = is_ca;
    p.key_usages = key_usages;
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn crl(issuer: &Issuer<'_, &SimKey>) -> Result<Vec<u8>, SimError> {
    let params = CertificateRevocationListParams {
        this_update: utc_midnight(VALID_FROM_YMD)?,
        next_update: utc_midnight(VALID_UNTIL_YMD)?,
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(issuer).map_err(x509_err)?.der().to_vec())
}

fn sgx_entry(arc: u64, value: Vec<u8>) -> Result<Vec<u8>, SimError> {
    let mut arcs = SGX_EXT.to_vec();
    arcs.push(arc);
    Ok(der::sequence(&[der::oid(&arcs)?, value]))
}

/// DER content of the SGX extension, laid out exactly like Intel's PCK certificates
/// (dcap-qvl reads PPID, TCB{comp01..16, PCESVN, CPUSVN}, PCE-ID, FMSPC, SGX type,
/// platform instance ID and configuration flags from it).
fn sgx_extension(ppid: &[u8; 16], platform_instance_id: &[u8; 16]) -> Result<Vec<u8>, SimError> {
    let mut tcb = Vec::with_capacity(18);
    for (i, svn) in (1u64..).zip(CPU_SVN) {
        tcb.push(der::sequence(&[
            der::oid(&[&SGX_EXT[..], &[2, i]].concat())?,
            der::unsigned_integer(u64::from(svn)),
        ]));
    }
    tcb.push(der::sequence(&[
        der::oid(&[&SGX_EXT[..], &[2, 17]].concat())?,
        der::unsigned_integer(u64::from(PCE_SVN)),
    ]));
    tcb.push(der::sequence(&[
        der::oid(&[&SGX_EXT[..], &[2, 18]].concat())?,
        der::octet_string(&CPU_SVN),
    ]));

    // Configuration flags all false so strict dcap-qvl policies (no dynamic platform,
    // no cached keys, no SMT) accept simulated quotes.
    let mut config = Vec::with_capacity(3);
    for arc in 1u64..=3 {
        config.push(der::sequence(&[
            der::oid(&[&SGX_EXT[..], &[7, arc]].concat())?,
            der::boolean(false),
        ]));
    }

    Ok(der::sequence(&[
        sgx_entry(1, der::octet_string(ppid))?,
        sgx_entry(2, der::sequence(&tcb))?,
        sgx_entry(3, der::octet_string(&PCE_ID))?,
        sgx_entry(4, der::octet_string(&FMSPC))?,
        sgx_entry(5, der::enumerated(SGX_TYPE_SCALABLE))?,
        sgx_entry(6, der::octet_string(platform_instance_id))?,
        sgx_entry(7, der::sequence(&config))?,
    ]))
}

pub(super) fn build(seed: &[u8; 32], keys: &CertKeys<'_>) -> Result<SimCerts, SimError> {
    use KeyUsagePurpose::{ContentCommitment, CrlSign, DigitalSignature, KeyCertSign};

    let root_params = params(
        seed,
        ROOT_CN,
        IsCa::Ca(BasicConstraints::Constrained(1)),
        vec![KeyCertSign, CrlSign],
    )?;
    let root = to_cert(root_params.self_signed(keys.root).map_err(x509_err)?);
    let root_issuer = Issuer::from_params(&root_params, keys.root);

    let ca_params = params(
        seed,
        PLATFORM_CA_CN,
        IsCa::Ca(BasicConstraints::Constrained(0)),
        vec![KeyCertSign, CrlSign],
    )?;
    let platform_ca = to_cert(
        ca_params
            .signed_by(keys.platform_ca, &root_issuer)
            .map_err(x509_err)?,
    );
    let ca_issuer = Issuer::from_params(&ca_params, keys.platform_ca);

    let ppid: [u8; 16] = derive_bytes(seed, "pck/ppid")?;
    let instance_id: [u8; 16] = derive_bytes(seed, "pck/platform-instance-id")?;
    let mut pck_params = params(
        seed,
        PCK_CN,
        IsCa::ExplicitNoCa,
        vec![DigitalSignature, ContentCommitment],
    )?;
    pck_params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &SGX_EXT,
            sgx_extension(&ppid, &instance_id)?,
        ));
    let pck = to_cert(
        pck_params
            .signed_by(keys.pck, &ca_issuer)
            .map_err(x509_err)?,
    );

    // dcap-qvl requires the TCB info / QE identity signer to be issued directly by the root.
    let tcb_params = params(
        seed,
        TCB_SIGNING_CN,
        IsCa::ExplicitNoCa,
        vec![DigitalSignature, ContentCommitment],
    )?;
    let tcb_signing = to_cert(
        tcb_params
            .signed_by(keys.tcb_signing, &root_issuer)
            .map_err(x509_err)?,
    );

    Ok(SimCerts {
        root,
        platform_ca,
        pck,
        tcb_signing,
        root_crl: crl(&root_issuer)?,
        pck_crl: crl(&ca_issuer)?,
    })
}
