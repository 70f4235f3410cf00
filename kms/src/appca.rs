//! App CA certificates: the app's `app-ca` key, certified by the root CA (path length 0,
//! app id in the subject). Signing is RFC 6979 deterministic and the serial and validity
//! are fixed, so every replica issues byte-identical app CA certificates.

use p256::ecdsa::signature::Signer;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    PublicKeyData, SerialNumber, SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};

/// A P-256 key as rcgen sees it: its public point, and (when signing) the private key.
pub struct P256Key {
    public: Vec<u8>,
    signing: Option<p256::ecdsa::SigningKey>,
}

impl std::fmt::Debug for P256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("P256Key([redacted])")
    }
}

impl P256Key {
    pub fn signer(secret: &p256::SecretKey) -> Self {
        Self {
            public: secret
                .public_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
            signing: Some(p256::ecdsa::SigningKey::from(secret)),
        }
    }

    pub fn public(key: &p256::PublicKey) -> Self {
        Self {
            public: key.to_encoded_point(false).as_bytes().to_vec(),
            signing: None,
        }
    }

    /// A deterministic (RFC 6979) ECDSA P-256 / SHA-256 signature, DER.
    pub fn sign_der(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let key = self.signing.as_ref()?;
        let sig: p256::ecdsa::Signature = key.sign(msg);
        Some(sig.to_der().as_bytes().to_vec())
    }
}

impl PublicKeyData for P256Key {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for P256Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.sign_der(msg).ok_or(rcgen::Error::RemoteKeyError)
    }
}

/// The subject common name of an app's CA certificate: `ratls`' convention, which its
/// app-authorisation check reads back (with the app id as the organisational unit).
pub fn app_ca_common_name(app_id: &[u8; 20]) -> String {
    ratls::authorise::app_ca_common_name(&ratls::AppId(*app_id))
}

/// Issues the app CA certificate (DER) for `app_key`, signed by the root CA.
pub fn issue_app_ca(
    app_id: &[u8; 20],
    app_key: &p256::PublicKey,
    root_cert_der: &[u8],
    root_key: &p256::SecretKey,
) -> Result<Vec<u8>, rcgen::Error> {
    let subject = P256Key::public(app_key);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, app_ca_common_name(app_id));
    dn.push(DnType::OrganizationalUnitName, hex::encode(app_id));
    dn.push(DnType::OrganizationName, "teegate KMS");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut h = Sha256::new();
    h.update(b"teegate app CA serial");
    h.update(app_id);
    h.update(&subject.public);
    let mut serial = h.finalize()[..16].to_vec();
    serial[0] &= 0x7f;
    serial[0] |= 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    // Fixed validity: the certificate must be the same bytes on every replica and every
    // day. It lives as long as the app; the root CA's own validity bounds it in practice.
    params.not_before = time::macros::datetime!(2025-01-01 0:00 UTC);
    params.not_after = time::macros::datetime!(9999-12-31 23:59:59 UTC);
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_ca_cert_der(&root_cert_der.into(), P256Key::signer(root_key))?;
    Ok(params.signed_by(&subject, &issuer)?.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derive::{app_ca_key, RootSecret};
    use crate::root::RootOfTrust;

    #[test]
    fn app_ca_is_deterministic_path_len_0_and_signed_by_root() {
        let root = RootOfTrust::generate().unwrap();
        let app = [0x5a; 20];
        let key = app_ca_key(&RootSecret::from_bytes([3; 32]), &app);
        let a = issue_app_ca(&app, &key.public_key(), root.ca_cert_der(), root.ca_key()).unwrap();
        let b = issue_app_ca(&app, &key.public_key(), root.ca_cert_der(), root.ca_key()).unwrap();
        assert_eq!(a, b, "app CA certificates must be byte-identical");

        let (_, cert) = x509_parser::parse_x509_certificate(&a).unwrap();
        let (_, root_cert) = x509_parser::parse_x509_certificate(root.ca_cert_der()).unwrap();
        cert.verify_signature(Some(root_cert.public_key())).unwrap();
        assert_eq!(cert.issuer(), root_cert.subject());
        assert!(cert.subject().to_string().contains(&hex::encode(app)));
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let rbc = root_cert.basic_constraints().unwrap().unwrap().value;
        assert_eq!(rbc.path_len_constraint, Some(1));
        assert_eq!(
            crate::envelope::cert_public_key(&a).unwrap(),
            key.public_key()
        );
    }
}
