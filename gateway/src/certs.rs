//! The certificates the gateway serves, chosen by SNI at handshake time and swappable
//! without a restart: the wildcard `*.<base>` (also covering `<base>`) and per-name
//! certificates for custom domains. Also the self-signed development CA.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::seal::{self, Kind, SealKey};
use crate::store::CertRecord;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate {name}: {message}")]
    Invalid { name: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// SNI → certificate, with exact names first, then `*.<parent>` wildcards.
pub struct CertResolver {
    provider: Arc<CryptoProvider>,
    certs: RwLock<Arc<HashMap<String, Arc<CertifiedKey>>>>,
    base_domain: String,
    /// Counts installs, so the gateway's evidence re-quotes when a key is added or rotated.
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("names", &self.names())
            .finish()
    }
}

fn parse_pem_chain(name: &str, pem_text: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| CertError::Invalid {
        name: name.into(),
        message: format!("bad PEM: {e}"),
    })?;
    let chain: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if chain.is_empty() {
        return Err(CertError::Invalid {
            name: name.into(),
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(chain)
}

fn parse_pem_key(name: &str, pem_text: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| CertError::Invalid {
        name: name.into(),
        message: format!("bad key PEM: {e}"),
    })?;
    blocks
        .into_iter()
        .find_map(|b| match b.tag() {
            "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(b.into_contents().into())),
            "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(b.into_contents().into())),
            "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(b.into_contents().into())),
            _ => None,
        })
        .ok_or_else(|| CertError::Invalid {
            name: name.into(),
            message: "no private key block".into(),
        })
}

impl CertResolver {
    pub fn new(base_domain: &str, provider: Arc<CryptoProvider>) -> Self {
        Self {
            provider,
            certs: RwLock::new(Arc::new(HashMap::new())),
            base_domain: base_domain.to_ascii_lowercase(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Notified after every install (a new or rotated certificate).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Each served certificate's name and the SHA-256 of its leaf's public key (sorted by
    /// name): what the gateway's evidence binds.
    pub fn served_keys(&self) -> Vec<(String, ratls::SpkiHash)> {
        let mut keys: Vec<(String, ratls::SpkiHash)> = self
            .snapshot()
            .iter()
            .filter_map(|(name, ck)| {
                let leaf = ck.cert.first()?;
                Some((name.clone(), ratls::SpkiHash::of_certificate(leaf)?))
            })
            .collect();
        keys.sort();
        keys
    }

    fn snapshot(&self) -> Arc<HashMap<String, Arc<CertifiedKey>>> {
        self.certs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.snapshot().keys().cloned().collect();
        names.sort();
        names
    }

    /// Installs (or replaces) the certificate for `record.name`; new handshakes use it at once.
    pub fn install(&self, record: &CertRecord) -> Result<(), CertError> {
        let chain = parse_pem_chain(&record.name, &record.cert_chain_pem)?;
        let key = parse_pem_key(&record.name, &record.key_pem)?;
        let signing = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertError::Invalid {
                name: record.name.clone(),
                message: format!("unusable key: {e}"),
            })?;
        let ck = Arc::new(CertifiedKey::new(chain, signing));
        ck.keys_match().map_err(|e| CertError::Invalid {
            name: record.name.clone(),
            message: format!("key does not match certificate: {e}"),
        })?;
        let mut guard = self.certs.write().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::clone(&guard);
        next.insert(record.name.to_ascii_lowercase(), ck);
        *guard = Arc::new(next);
        drop(guard);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// The certificate for a server name, if any.
    pub fn lookup(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        let certs = self.snapshot();
        if let Some(c) = certs.get(&sni) {
            return Some(c.clone());
        }
        if sni == self.base_domain {
            return certs.get(&format!("*.{sni}")).cloned();
        }
        let (_, parent) = sni.split_once('.')?;
        certs.get(&format!("*.{parent}")).cloned()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI (clients dialling an IP) serve the wildcard: browsers will reject
        // the name mismatch, which is the honest answer.
        let name = hello
            .server_name()
            .map(str::to_string)
            .unwrap_or_else(|| self.base_domain.clone());
        self.lookup(&name)
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> CertError {
    CertError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `data` to `path` with mode 0600, through a temporary file renamed into place, so
/// a crash leaves either the old file or the new one.
fn write_private(path: &Path, data: &str) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(data.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// The development CA's key file name, also the name its sealed value is bound to.
const DEV_CA_KEY: &str = "dev-ca.key";

/// The development CA kept in the data directory (`dev-ca.pem`, and `dev-ca.key` sealed
/// under the gateway's [`SealKey`]), made once.
pub struct DevCa {
    pub cert_pem: String,
    pub cert_path: std::path::PathBuf,
    key: KeyPair,
}

impl DevCa {
    pub fn load_or_create(dir: &Path, sealing: &SealKey) -> Result<Self, CertError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let cert_path = dir.join("dev-ca.pem");
        let key_path = dir.join(DEV_CA_KEY);
        if cert_path.exists() && key_path.exists() {
            let cert_pem =
                std::fs::read_to_string(&cert_path).map_err(|e| io_err(&cert_path, e))?;
            let stored = Zeroizing::new(
                std::fs::read_to_string(&key_path).map_err(|e| io_err(&key_path, e))?,
            );
            let key_pem = if seal::is_sealed(&stored) {
                sealing
                    .open_text(Kind::File, DEV_CA_KEY, &stored)
                    .map_err(|e| io_err(&key_path, e))?
            } else {
                // Written in plaintext by an earlier version: seal it in place.
                tracing::warn!(path = %key_path.display(), "plaintext development CA key: sealing it now");
                write_private(
                    &key_path,
                    &sealing.seal(Kind::File, DEV_CA_KEY, stored.as_bytes()),
                )?;
                stored
            };
            let key = KeyPair::from_pem(&key_pem).map_err(|e| io_err(&key_path, e))?;
            return Ok(Self {
                cert_pem,
                cert_path,
                key,
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| io_err(dir, e))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| io_err(dir, e))?;
        params.distinguished_name = dn("teegate development CA (self-signed, not for production)");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(|e| io_err(dir, e))?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        write_private(
            &key_path,
            &sealing.seal(Kind::File, DEV_CA_KEY, key_pem.as_bytes()),
        )?;
        std::fs::write(&cert_path, cert.pem()).map_err(|e| io_err(&cert_path, e))?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_path,
            key,
        })
    }

    /// A certificate for `*.<base>` and `<base>`, valid 90 days, signed by this CA.
    pub fn issue_wildcard(&self, base: &str) -> Result<CertRecord, CertError> {
        let name = format!("*.{base}");
        self.issue(&name, vec![name.clone(), base.to_string()])
    }

    /// A certificate stored under `name` for the given DNS names, valid 90 days.
    pub fn issue(&self, name: &str, dns_names: Vec<String>) -> Result<CertRecord, CertError> {
        let fail = |e: rcgen::Error| CertError::Invalid {
            name: name.to_string(),
            message: e.to_string(),
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let mut params = CertificateParams::new(dns_names).map_err(fail)?;
        params.distinguished_name = dn(name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(90);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(fail)?;
        let cert = params.signed_by(&key, &issuer).map_err(fail)?;
        Ok(CertRecord {
            name: name.to_string(),
            cert_chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: Zeroizing::new(key.serialize_pem()),
            not_after: params.not_after.unix_timestamp().max(0) as u64,
        })
    }
}

/// A certificate and key from PEM files (`tls.mode = "files"`).
pub fn from_files(name: &str, cert: &Path, key: &Path) -> Result<CertRecord, CertError> {
    let cert_chain_pem = std::fs::read_to_string(cert).map_err(|e| io_err(cert, e))?;
    let key_pem = Zeroizing::new(std::fs::read_to_string(key).map_err(|e| io_err(key, e))?);
    let chain = parse_pem_chain(name, &cert_chain_pem)?;
    let not_after = x509_not_after(&chain[0]).unwrap_or(0);
    Ok(CertRecord {
        name: name.to_string(),
        cert_chain_pem,
        key_pem,
        not_after,
    })
}

pub fn x509_not_before(der: &[u8]) -> Option<u64> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    u64::try_from(cert.validity().not_before.timestamp()).ok()
}

pub fn x509_not_after(der: &[u8]) -> Option<u64> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn sealing(dir: &Path) -> SealKey {
        SealKey::load_or_create_file(&dir.join("seal.key")).unwrap()
    }

    #[test]
    fn wildcard_covers_one_label_and_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path(), &sealing(dir.path())).unwrap();
        let r = CertResolver::new("apps.test", provider());
        r.install(&ca.issue_wildcard("apps.test").unwrap()).unwrap();
        assert!(r.lookup("abc.apps.test").is_some());
        assert!(r.lookup("ABC.apps.test.").is_some());
        assert!(r.lookup("apps.test").is_some());
        assert!(r.lookup("a.b.apps.test").is_none());
        assert!(r.lookup("other.test").is_none());
    }

    #[test]
    fn exact_names_win_and_swaps_take_effect() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path(), &sealing(dir.path())).unwrap();
        let r = CertResolver::new("apps.test", provider());
        let first = ca.issue_wildcard("apps.test").unwrap();
        r.install(&first).unwrap();
        let before = r.lookup("x.apps.test").unwrap().cert[0].clone();
        r.install(&ca.issue_wildcard("apps.test").unwrap()).unwrap();
        let after = r.lookup("x.apps.test").unwrap().cert[0].clone();
        assert_ne!(before, after, "a re-install swaps the served certificate");
    }

    #[test]
    fn dev_ca_is_made_once_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = DevCa::load_or_create(dir.path(), &sealing(dir.path())).unwrap();
        let b = DevCa::load_or_create(dir.path(), &sealing(dir.path())).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem);
        let mode = std::fs::metadata(dir.path().join("dev-ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        let stored = std::fs::read_to_string(dir.path().join("dev-ca.key")).unwrap();
        assert!(
            seal::is_sealed(&stored) && !stored.contains("PRIVATE KEY"),
            "{stored}"
        );
        // Another key cannot open it, and says so.
        let other = dir.path().join("other");
        let e = DevCa::load_or_create(dir.path(), &sealing(&other))
            .err()
            .unwrap();
        assert!(e.to_string().contains("another key"), "{e}");
    }

    #[test]
    fn mismatched_key_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path(), &sealing(dir.path())).unwrap();
        let mut rec = ca.issue_wildcard("apps.test").unwrap();
        rec.key_pem = ca.issue_wildcard("apps.test").unwrap().key_pem;
        let r = CertResolver::new("apps.test", provider());
        assert!(r.install(&rec).is_err());
        rec.cert_chain_pem = "junk".into();
        assert!(r.install(&rec).is_err());
    }
}
