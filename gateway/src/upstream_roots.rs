//! The root store handed to pingora's upstream connector: one throwaway anchor, never the
//! system's trust store.
//!
//! Upstream certificates are not judged by roots at all: the proxy asks pingora to skip
//! WebPki verification and checks the presented certificate against the fingerprints
//! verified at registration (`GatewayProxy::connected_to_upstream`). Yet pingora 0.9's
//! rustls connector builds a WebPki verifier for every upstream handshake, verification off
//! or not, and that fails on an empty root store. So a gateway on a host without a CA
//! bundle (a minimal container image) reached no instance at all: every request ended in
//! 502 "Failed to build WebPkiServerVerifier: no root trust anchors were provided".
//! Instead of depending on the host's bundle, the connector gets a self-signed certificate
//! made at each start whose key is dropped at once: nothing can chain to it.

use std::path::{Path, PathBuf};

/// The anchor's file name in the data directory (public; rewritten at each start).
pub const FILE: &str = "upstream-anchor.pem";

/// Writes a fresh anchor to `<data_dir>/upstream-anchor.pem` and returns its path, for
/// pingora's `ServerConf::ca_file`.
pub fn write_anchor(data_dir: &Path) -> Result<PathBuf, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("upstream anchor key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("upstream anchor: {e}"))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "teegate upstream placeholder anchor (key discarded; never trusted)",
    );
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("upstream anchor: {e}"))?;
    drop(key);
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("upstream anchor: {}: {e}", data_dir.display()))?;
    let path = data_dir.join(FILE);
    std::fs::write(&path, cert.pem())
        .map_err(|e| format!("upstream anchor: {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use rustls::RootCertStore;

    use super::*;

    fn verifier(roots: RootCertStore) -> Result<(), rustls::client::VerifierBuilderError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map(drop)
    }

    #[test]
    fn the_anchor_file_makes_a_root_store_a_webpki_verifier_builds_from() {
        // What pingora does without a CA bundle on the host: an empty store, no verifier.
        assert!(verifier(RootCertStore::empty()).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = write_anchor(&dir.path().join("data")).unwrap();
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(&path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), 1);
        let mut roots = RootCertStore::empty();
        roots.add(certs[0].clone()).unwrap();
        verifier(roots).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "no key is written");
        // A new anchor each start.
        assert_ne!(
            write_anchor(&dir.path().join("data"))
                .map(|p| std::fs::read_to_string(p).unwrap())
                .unwrap(),
            text
        );
    }
}
