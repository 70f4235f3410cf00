//! The root of trust: a 32-byte root secret and a P-256 root CA (self-signed, path length
//! 1), made once inside the KMS and kept in `data_dir`:
//!
//! - `root.json` (mode 0600): the secret, the root CA key and certificate. The KMS refuses
//!   to start if group or others can read it (or the directory is not ours to read).
//! - `root-ca.pem` (public): the root CA certificate, to publish and pin.
//!
//! ## Sealing, honestly
//! - **Simulated provider**: `root.json` holds the secrets in plain hex (`"sealing":
//!   "plain"`) and the KMS says so at start. Anyone who can read the file has every key.
//! - **Real TDX provider**: the secrets are encrypted (ChaCha20-Poly1305) with
//!   `HKDF-SHA256(ikm = MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2, salt = "teegate-kms-seal-v1")`,
//!   the measurements read from the KMS's own quote at start (`"sealing": "measurements"`).
//!   TDX has no hardware sealing key, and measurements are public (every quote shows
//!   them), so this key is **not secret**: it does *not* protect the root from a host or
//!   operator who can read the disk. What it does: the state only opens under the same
//!   OS image and firmware (another image, or a KMS image that was changed, fails to
//!   start instead of silently using the keys), and it catches corruption. Real
//!   confidentiality at rest needs the data directory on storage encrypted with a key
//!   the host never sees (for example a disk key obtained from another KMS replica after
//!   attestation), or no persistence at all (replicas re-onboard on every boot).
//!   A plain file is never accepted by a real-TDX KMS, and a sealed one never by a
//!   simulated KMS.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use p256::pkcs8::DecodePrivateKey;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::api::OnboardSecrets;
use crate::derive::RootSecret;
use crate::secret::SecretBytes;

pub const ROOT_FILE: &str = "root.json";
pub const ROOT_CA_PEM: &str = "root-ca.pem";
const FORMAT: &str = "teegate-kms-root-v1";
const SEAL_AAD: &[u8] = b"teegate-kms-root-v1";

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` after checking nobody copied it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path} was written {found}, but this KMS {expected}; refusing to use it")]
    SealingMismatch {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
    },
    #[error("{path}: cannot unseal (different measurements than the KMS that sealed it, or the file was altered)")]
    Unseal { path: PathBuf },
    #[error("root CA: {0}")]
    Ca(String),
}

/// How `root.json` is protected (see the module docs).
#[derive(Clone)]
pub enum Sealing {
    /// Simulated provider: stored plainly.
    Plain,
    /// Real provider: encrypted with a key derived from the KMS's boot measurements.
    Measurements(Zeroizing<[u8; 32]>),
}

impl fmt::Debug for Sealing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Sealing {
    /// The sealing key for a KMS with these boot measurements (MRTD, RTMR0-2).
    pub fn from_measurements(mrtd: &[u8; 48], rtmr0_2: [&[u8; 48]; 3]) -> Self {
        let mut ikm = Zeroizing::new(Vec::with_capacity(4 * 48));
        ikm.extend_from_slice(mrtd);
        for r in rtmr0_2 {
            ikm.extend_from_slice(r);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        let _ = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"teegate-kms-seal-v1"), &ikm)
            .expand(b"root.json", key.as_mut());
        Sealing::Measurements(key)
    }

    fn name(&self) -> &'static str {
        match self {
            Sealing::Plain => "plain",
            Sealing::Measurements(_) => "measurements",
        }
    }

    fn describe(name: &str) -> &'static str {
        match name {
            "plain" => "in plain text by a simulated KMS",
            _ => "sealed to TDX measurements",
        }
    }
}

/// The root secret and root CA.
pub struct RootOfTrust {
    secret: RootSecret,
    ca_key: p256::SecretKey,
    ca_key_pkcs8: Zeroizing<Vec<u8>>,
    ca_cert_der: Vec<u8>,
}

impl fmt::Debug for RootOfTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootOfTrust")
            .field(
                "ca_cert_fingerprint",
                &hex::encode(sha2_256(&self.ca_cert_der)),
            )
            .finish_non_exhaustive()
    }
}

fn sha2_256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

impl RootOfTrust {
    /// A new root secret and root CA.
    pub fn generate() -> Result<Self, RootError> {
        let ca = ratls::cert::CertAuthority::generate("teegate KMS root CA", Some(1))
            .map_err(|e| RootError::Ca(e.to_string()))?;
        Self::from_parts(
            RootSecret::generate(),
            Zeroizing::new(ca.key_pkcs8_der()),
            ca.cert_der().to_vec(),
        )
    }

    /// From stored or received parts; the certificate must carry the key's public half.
    pub fn from_parts(
        secret: RootSecret,
        ca_key_pkcs8: Zeroizing<Vec<u8>>,
        ca_cert_der: Vec<u8>,
    ) -> Result<Self, RootError> {
        let ca_key = p256::SecretKey::from_pkcs8_der(&ca_key_pkcs8)
            .map_err(|e| RootError::Ca(format!("root CA key: {e}")))?;
        let cert_key = crate::envelope::cert_public_key(&ca_cert_der)
            .map_err(|e| RootError::Ca(e.to_string()))?;
        if cert_key != ca_key.public_key() {
            return Err(RootError::Ca(
                "root CA certificate does not match the root CA key".into(),
            ));
        }
        Ok(Self {
            secret,
            ca_key,
            ca_key_pkcs8,
            ca_cert_der,
        })
    }

    pub fn from_onboard(s: &OnboardSecrets) -> Result<Self, RootError> {
        let secret = s
            .root_secret
            .to_array32()
            .ok_or_else(|| RootError::Ca("root secret must be 32 bytes".into()))?;
        let cert = hex::decode(&s.root_ca_cert).map_err(|e| RootError::Ca(e.to_string()))?;
        Self::from_parts(
            RootSecret::from_bytes(secret),
            Zeroizing::new(s.root_ca_key_pkcs8.expose().to_vec()),
            cert,
        )
    }

    pub fn to_onboard(&self) -> OnboardSecrets {
        OnboardSecrets {
            root_secret: SecretBytes::from(*self.secret.expose()),
            root_ca_key_pkcs8: SecretBytes::new(self.ca_key_pkcs8.to_vec()),
            root_ca_cert: hex::encode(&self.ca_cert_der),
        }
    }

    pub fn secret(&self) -> &RootSecret {
        &self.secret
    }

    pub fn ca_key(&self) -> &p256::SecretKey {
        &self.ca_key
    }

    pub fn ca_key_pkcs8(&self) -> &[u8] {
        &self.ca_key_pkcs8
    }

    pub fn ca_cert_der(&self) -> &[u8] {
        &self.ca_cert_der
    }

    pub fn ca_cert_pem(&self) -> String {
        ratls::cert::pem_encode("CERTIFICATE", &self.ca_cert_der)
    }
}

#[derive(Serialize, Deserialize)]
struct StoredFile {
    format: String,
    sealing: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    /// Plain: the JSON of [`OnboardSecrets`]; sealed: its ciphertext (hex).
    data: serde_json::Value,
}

/// `data_dir` on disk.
#[derive(Debug, Clone)]
pub struct RootStore {
    dir: PathBuf,
    sealing: Sealing,
}

impl RootStore {
    pub fn new(dir: impl Into<PathBuf>, sealing: Sealing) -> Self {
        Self {
            dir: dir.into(),
            sealing,
        }
    }

    pub fn root_path(&self) -> PathBuf {
        self.dir.join(ROOT_FILE)
    }

    pub fn root_ca_pem_path(&self) -> PathBuf {
        self.dir.join(ROOT_CA_PEM)
    }

    pub fn exists(&self) -> bool {
        self.root_path().exists()
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootError + '_ {
        move |source| RootError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Loads the stored root, or `None` when there is none yet.
    pub fn load(&self) -> Result<Option<RootOfTrust>, RootError> {
        let path = self.root_path();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(RootError::Permissions { path, mode });
        }
        let bytes = Zeroizing::new(fs::read(&path).map_err(Self::io(&path))?);
        let corrupt = |message: String| RootError::Corrupt {
            path: path.clone(),
            message,
        };
        let stored: StoredFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if stored.format != FORMAT {
            return Err(corrupt(format!("unknown format {:?}", stored.format)));
        }
        if stored.sealing != self.sealing.name() {
            return Err(RootError::SealingMismatch {
                path,
                found: Sealing::describe(&stored.sealing),
                expected: match self.sealing {
                    Sealing::Plain => "is simulated",
                    Sealing::Measurements(_) => "runs on real TDX",
                },
            });
        }
        let secrets: OnboardSecrets = match &self.sealing {
            Sealing::Plain => {
                serde_json::from_value(stored.data).map_err(|e| corrupt(e.to_string()))?
            }
            Sealing::Measurements(key) => {
                let nonce_hex = stored.nonce.ok_or_else(|| corrupt("no nonce".into()))?;
                let mut nonce = [0u8; 12];
                hex::decode_to_slice(&nonce_hex, &mut nonce)
                    .map_err(|e| corrupt(format!("nonce: {e}")))?;
                let ct = stored
                    .data
                    .as_str()
                    .and_then(|t| hex::decode(t).ok())
                    .ok_or_else(|| corrupt("data is not hex".into()))?;
                let plain = Zeroizing::new(
                    ChaCha20Poly1305::new(&Key::from(**key))
                        .decrypt(
                            &Nonce::from(nonce),
                            Payload {
                                msg: &ct,
                                aad: SEAL_AAD,
                            },
                        )
                        .map_err(|_| RootError::Unseal { path: path.clone() })?,
                );
                serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))?
            }
        };
        RootOfTrust::from_onboard(&secrets).map(Some)
    }

    /// Writes the root (0600, atomically: a temporary file renamed into place) and the
    /// public root CA certificate.
    pub fn save(&self, root: &RootOfTrust) -> Result<(), RootError> {
        fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        let secrets = Zeroizing::new(
            serde_json::to_vec(&root.to_onboard()).map_err(|e| RootError::Ca(e.to_string()))?,
        );
        let stored = match &self.sealing {
            Sealing::Plain => StoredFile {
                format: FORMAT.into(),
                sealing: "plain".into(),
                nonce: None,
                data: serde_json::from_slice(&secrets).map_err(|e| RootError::Ca(e.to_string()))?,
            },
            Sealing::Measurements(key) => {
                let mut nonce = [0u8; 12];
                OsRng.fill_bytes(&mut nonce);
                let ct = ChaCha20Poly1305::new(&Key::from(**key))
                    .encrypt(
                        &Nonce::from(nonce),
                        Payload {
                            msg: &secrets,
                            aad: SEAL_AAD,
                        },
                    )
                    .map_err(|_| RootError::Ca("sealing failed".into()))?;
                StoredFile {
                    format: FORMAT.into(),
                    sealing: "measurements".into(),
                    nonce: Some(hex::encode(nonce)),
                    data: serde_json::Value::String(hex::encode(ct)),
                }
            }
        };
        let text = Zeroizing::new(
            serde_json::to_vec_pretty(&stored).map_err(|e| RootError::Ca(e.to_string()))?,
        );
        let path = self.root_path();
        let tmp = self.dir.join(format!(".{ROOT_FILE}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Self::io(&tmp))?;
        f.write_all(&text).map_err(Self::io(&tmp))?;
        f.sync_all().map_err(Self::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(Self::io(&path))?;
        let pem_path = self.root_ca_pem_path();
        fs::write(&pem_path, root.ca_cert_pem()).map_err(Self::io(&pem_path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_plain_and_sealed_and_refuse_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootOfTrust::generate().unwrap();
        let plain = RootStore::new(dir.path(), Sealing::Plain);
        assert!(plain.load().unwrap().is_none());
        plain.save(&root).unwrap();
        let back = plain.load().unwrap().unwrap();
        assert_eq!(back.secret().expose(), root.secret().expose());
        assert_eq!(back.ca_cert_der(), root.ca_cert_der());
        let text = fs::read_to_string(plain.root_path()).unwrap();
        assert!(text.contains("\"plain\""));

        let sealed = RootStore::new(
            dir.path(),
            Sealing::from_measurements(&[1; 48], [&[2; 48], &[3; 48], &[4; 48]]),
        );
        let err = sealed.load().unwrap_err();
        assert!(matches!(err, RootError::SealingMismatch { .. }), "{err}");

        let dir2 = tempfile::tempdir().unwrap();
        let sealed = RootStore::new(
            dir2.path(),
            Sealing::from_measurements(&[1; 48], [&[2; 48], &[3; 48], &[4; 48]]),
        );
        sealed.save(&root).unwrap();
        let text = fs::read_to_string(sealed.root_path()).unwrap();
        assert!(!text.contains(&hex::encode(root.secret().expose())));
        let back = sealed.load().unwrap().unwrap();
        assert_eq!(back.secret().expose(), root.secret().expose());
        let other = RootStore::new(
            dir2.path(),
            Sealing::from_measurements(&[9; 48], [&[2; 48], &[3; 48], &[4; 48]]),
        );
        assert!(matches!(
            other.load().unwrap_err(),
            RootError::Unseal { .. }
        ));
    }

    #[test]
    fn refuses_group_or_world_readable_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = RootStore::new(dir.path(), Sealing::Plain);
        store.save(&RootOfTrust::generate().unwrap()).unwrap();
        let mode = fs::metadata(store.root_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        fs::set_permissions(store.root_path(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = store.load().unwrap_err();
        assert!(
            err.to_string().contains("readable by group or others"),
            "{err}"
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let root = RootOfTrust::generate().unwrap();
        let text = format!("{root:?}");
        assert!(!text.contains(&hex::encode(root.secret().expose())));
    }
}
