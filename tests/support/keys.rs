//! Keys at rest: test KMS app CAs, a data dir's sealed store and dev CA, key-leak checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Certificates for `names` (custom domains), issued by the development CA in the gateway
/// data dir `dir` and put in its embedded store, so a gateway started there serves them.
pub async fn store_dev_certs(dir: &Path, names: &[&str]) {
    use gateway::store::Store;
    let ca = dev_ca_in(dir);
    let store = sealed_store_in(dir);
    for name in names {
        store
            .put_cert(&ca.issue(name, vec![name.to_string()]).unwrap())
            .await
            .unwrap();
    }
}

// ---------------------------------------------------------------- KMS-issued app CAs

/// A KMS's root of trust, made by the KMS's own code, for certifying app CAs in tests that
/// need a named app id authorised (or not) without running a KMS process.
pub struct TestKms {
    pub root: kms::root::RootOfTrust,
}

impl TestKms {
    pub fn new() -> Self {
        Self {
            root: kms::root::RootOfTrust::generate().expect("KMS root"),
        }
    }

    /// Writes the root CA (PEM) to `path`, as a gateway's `verifier.kms_roots` reads it.
    pub fn write_root(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.root.ca_cert_pem()).expect("write KMS root");
        path.to_path_buf()
    }

    /// App `app`'s CA as the KMS releases it: derived key, certificate signed by the root.
    pub fn app_ca(&self, app: &ratls::AppId) -> ratls::cert::CertAuthority {
        use p256::pkcs8::EncodePrivateKey;
        let key = kms::derive::app_ca_key(self.root.secret(), &app.0);
        let cert = kms::appca::issue_app_ca(
            &app.0,
            &key.public_key(),
            self.root.ca_cert_der(),
            self.root.ca_key(),
        )
        .expect("app CA");
        let pkcs8 = key.to_pkcs8_der().expect("pkcs8");
        ratls::cert::CertAuthority::from_der(cert, pkcs8.as_bytes()).expect("app CA authority")
    }
}

// ---------------------------------------------------------------- sealed store

/// The sealing key an unattested gateway with `data_dir = dir` uses (its default
/// `seal_key_file`, made when missing).
pub fn seal_key_in(dir: &Path) -> Arc<gateway::seal::SealKey> {
    Arc::new(gateway::seal::SealKey::load_or_create_file(&dir.join("seal.key")).expect("seal key"))
}

/// The development CA of an unattested gateway in `dir`, as the gateway itself opens it.
pub fn dev_ca_in(dir: &Path) -> gateway::certs::DevCa {
    gateway::certs::DevCa::load_or_create(dir, &seal_key_in(dir)).expect("dev CA")
}

/// The embedded store of an unattested gateway in `dir`, behind its sealing layer, for
/// putting records in before the gateway starts.
pub fn sealed_store_in(dir: &Path) -> gateway::store::SealedStore {
    let backend = gateway::store::EmbeddedStore::open(dir).expect("embedded store");
    gateway::store::SealedStore::new(
        Arc::new(backend),
        seal_key_in(dir),
        Arc::new(gateway::store::SealReport::new(None)),
    )
}

/// Every encoding of a private key a careless store could hold: the PEM text and its
/// base64 body, the DER raw, in hex, and in standard and URL-safe base64.
pub fn key_encodings(key_pem: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine;
    let der = pem::parse(key_pem).expect("key PEM").into_contents();
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    vec![
        ("PEM".into(), key_pem.trim().as_bytes().to_vec()),
        ("PEM body".into(), body.into_bytes()),
        ("DER".into(), der.clone()),
        ("hex DER".into(), hex::encode(&der).into_bytes()),
        (
            "base64 DER".into(),
            base64::engine::general_purpose::STANDARD
                .encode(&der)
                .into_bytes(),
        ),
        (
            "base64url DER".into(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(&der)
                .into_bytes(),
        ),
    ]
}

/// Fails naming `what` and the encoding when `haystack` holds any encoding of the key.
pub fn assert_no_key_in(haystack: &[u8], key_pem: &str, what: &str) {
    for (encoding, needle) in key_encodings(key_pem) {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "{what} holds the private key ({encoding})"
        );
    }
    assert!(
        !haystack.windows(11).any(|w| w == b"PRIVATE KEY"),
        "{what} holds a PEM private key"
    );
}

/// All files under `dir` (recursively), concatenated, for searching.
pub fn all_file_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.extend_from_slice(&bytes);
            }
        }
    }
    out
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
pub fn cert_spki(cert_der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).expect("certificate");
    cert.public_key().raw.to_vec()
}

/// The SubjectPublicKeyInfo (DER) of a PEM private key.
pub fn key_spki(key_pem: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::from_pem(key_pem).expect("key PEM");
    rcgen::PublicKeyData::subject_public_key_info(&key)
}
