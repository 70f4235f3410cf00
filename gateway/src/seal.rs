//! Sealing: private keys leave the gateway's memory only AEAD-encrypted.
//!
//! ```text
//!  attested:   GuestApi::derive_key(attestation.key_path, "seal") ─┐  (KMS-derived per gateway app:
//!  unattested: seal_key_file (32 random bytes, hex, mode 0600) ────┴─▶ SealKey   every replica alike)
//!  SealKey::seal(kind, name, plaintext) ─▶ "teegate-sealed-v1:<key id>:<nonce>:<ciphertext>"
//!  SealKey::open(kind, name, text) ─▶ plaintext (zeroized on drop) | Open::{NotOurs, Tampered, …}
//! ```
//!
//! The envelope (one line of ASCII): `teegate-sealed-v1:` then, `:`-separated and in
//! lowercase hex, the key id (8 bytes: the first bytes of SHA-256("teegate-seal-key-id" ‖
//! key), so a reader can tell *which* key sealed a record without being able to open it),
//! the 12-byte random nonce, and the ChaCha20-Poly1305 ciphertext with its 16-byte tag.
//! The associated data is `teegate-sealed-v1 ‖ 0 ‖ kind ‖ 0 ‖ name ‖ 0 ‖ key id`, so a
//! sealed value cannot be moved to another record name or kind and still open.

use std::fmt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The envelope's prefix, which is also its version.
pub const PREFIX: &str = "teegate-sealed-v1:";
/// The derivation purpose asked of the guest API for the store key.
pub const PURPOSE: &str = "seal";
/// Largest sealed text opened (a key PEM or ACME credentials are a few KiB).
const MAX_ENVELOPE: usize = 256 * 1024;

/// What a sealed value is, bound into its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The private key of a served certificate (`CertRecord.key_pem`), named by the record.
    CertKey,
    /// A small named store value (the ACME account credentials).
    Value,
    /// A private-key file in the data directory (the development CA's), named by file name.
    File,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::CertKey => "cert-key",
            Kind::Value => "value",
            Kind::File => "file",
        }
    }
}

/// Where the sealing key came from; shown in logs and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum KeySource {
    /// Derived by the KMS for the gateway app, through the guest API.
    Attested { app_id: String, key_path: String },
    /// A key file on the gateway's host: readers of the store cannot open the records, the
    /// gateway's operator can.
    UnattestedKeyFile { path: PathBuf },
}

/// The 8-byte key id, hex in envelopes and messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a stored text did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed under another key (key id {found}; this gateway's is {ours}): written by a gateway of another app or key file")]
    NotOurs { found: KeyId, ours: KeyId },
    #[error("sealed under this gateway's key (id {0}) but does not authenticate: altered, or moved from another record")]
    Tampered(KeyId),
    #[error("not a sealed value: {0}")]
    Malformed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("seal_key_file {path}: {message}")]
    KeyFile { path: String, message: String },
}

/// The key that seals the gateway's private keys in the store. Zeroized on drop.
pub struct SealKey {
    key: Zeroizing<[u8; 32]>,
    id: KeyId,
    source: KeySource,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKey")
            .field("id", &self.id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn key_id(key: &[u8; 32]) -> KeyId {
    let mut h = Sha256::new();
    h.update(b"teegate-seal-key-id");
    h.update(key);
    let digest = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    KeyId(id)
}

impl SealKey {
    pub fn new(key: Zeroizing<[u8; 32]>, source: KeySource) -> Self {
        let id = key_id(&key);
        Self { key, id, source }
    }

    /// The key of an unattested gateway: read from `path`, or made (32 random bytes, hex,
    /// mode 0600) when the file does not exist. A file others can read is refused.
    /// Replicas starting together may race to make it: the file appears whole (written
    /// aside, then linked into place) and the loser reads the winner's.
    pub fn load_or_create_file(path: &Path) -> Result<Self, SealError> {
        let fail = |message: String| SealError::KeyFile {
            path: path.display().to_string(),
            message,
        };
        match Self::read_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => return other.map_err(|e| fail(e.to_string())),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let tmp = path.with_extension(format!("new.{}", std::process::id()));
        let key = Zeroizing::new(rand::random::<[u8; 32]>());
        let written = write_new_private(&tmp, &Zeroizing::new(format!("{}\n", hex::encode(*key))));
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "made a new store-sealing key file (unattested gateway)");
                Ok(Self::new(
                    key,
                    KeySource::UnattestedKeyFile {
                        path: path.to_path_buf(),
                    },
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::read_file(path).map_err(|e| fail(e.to_string()))
            }
            Err(e) => Err(fail(e.to_string())),
        }
    }

    fn read_file(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let meta = std::fs::metadata(path)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(invalid(
                "is readable or writable by others: chmod 600 it (it opens every private key in the store)",
            ));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path)?);
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), key.as_mut_slice())
            .map_err(|_| invalid("must hold 32 bytes as 64 hex characters"))?;
        Ok(Self::new(
            key,
            KeySource::UnattestedKeyFile {
                path: path.to_path_buf(),
            },
        ))
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    fn aad(&self, kind: Kind, name: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + name.len());
        aad.extend_from_slice(PREFIX.trim_end_matches(':').as_bytes());
        aad.push(0);
        aad.extend_from_slice(kind.label().as_bytes());
        aad.push(0);
        aad.extend_from_slice(name.as_bytes());
        aad.push(0);
        aad.extend_from_slice(&self.id.0);
        aad
    }

    /// Seals `plaintext` as the value of record `name` of kind `kind`.
    pub fn seal(&self, kind: Kind, name: &str, plaintext: &[u8]) -> String {
        let cipher = ChaCha20Poly1305::new(&Key::from(*self.key));
        // Random 96-bit nonces: a key seals at most a few thousand records in its life,
        // far below where collisions matter.
        let nonce: [u8; 12] = rand::random();
        let aad = self.aad(kind, name);
        // Encrypting into a Vec cannot fail for these sizes (only on overflow of the
        // 2^38-byte limit); an empty ciphertext would then fail to open, never leak.
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        format!(
            "{PREFIX}{}:{}:{}",
            self.id,
            hex::encode(nonce),
            hex::encode(ciphertext)
        )
    }

    /// Opens what [`Self::seal`] made for the same `kind` and `name`.
    pub fn open(
        &self,
        kind: Kind,
        name: &str,
        sealed: &str,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let (found, nonce, ciphertext) = parse(sealed)?;
        if found != self.id {
            return Err(OpenError::NotOurs {
                found,
                ours: self.id,
            });
        }
        let cipher = ChaCha20Poly1305::new(&Key::from(*self.key));
        let aad = self.aad(kind, name);
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Tampered(self.id))
    }

    /// Opens a sealed text that must be UTF-8 (PEM, JSON).
    pub fn open_text(
        &self,
        kind: Kind,
        name: &str,
        sealed: &str,
    ) -> Result<Zeroizing<String>, OpenError> {
        let bytes = self.open(kind, name, sealed)?;
        std::str::from_utf8(&bytes)
            .map(|s| Zeroizing::new(s.to_string()))
            .map_err(|_| OpenError::Malformed("the opened value is not UTF-8".into()))
    }
}

/// Writes a new file with mode 0600 (failing if it exists) and syncs it.
fn write_new_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Whether a stored text is a sealed envelope (as opposed to a plaintext left by an
/// earlier version, which is re-sealed on load).
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// The key id of a sealed text, without opening it.
pub fn sealed_by(text: &str) -> Option<KeyId> {
    parse(text).ok().map(|(id, _, _)| id)
}

fn parse(sealed: &str) -> Result<(KeyId, [u8; 12], Vec<u8>), OpenError> {
    if sealed.len() > MAX_ENVELOPE {
        return Err(OpenError::Malformed(format!(
            "{} bytes, over {MAX_ENVELOPE}",
            sealed.len()
        )));
    }
    let rest = sealed
        .trim_end()
        .strip_prefix(PREFIX)
        .ok_or_else(|| OpenError::Malformed(format!("does not start with {PREFIX}")))?;
    let mut parts = rest.split(':');
    let (Some(id), Some(nonce), Some(ct), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OpenError::Malformed(
            "expected key id, nonce and ciphertext".into(),
        ));
    };
    let mut key_id = [0u8; 8];
    hex::decode_to_slice(id, &mut key_id).map_err(|_| OpenError::Malformed("bad key id".into()))?;
    let mut n = [0u8; 12];
    hex::decode_to_slice(nonce, &mut n).map_err(|_| OpenError::Malformed("bad nonce".into()))?;
    let ct = hex::decode(ct).map_err(|_| OpenError::Malformed("bad ciphertext".into()))?;
    if ct.len() < 16 {
        return Err(OpenError::Malformed(
            "ciphertext shorter than its tag".into(),
        ));
    }
    Ok((KeyId(key_id), n, ct))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SealKey {
        SealKey::new(
            Zeroizing::new([b; 32]),
            KeySource::UnattestedKeyFile {
                path: "/dev/null".into(),
            },
        )
    }

    #[test]
    fn seals_and_opens_under_the_same_name_only() {
        let k = key(1);
        let sealed = k.seal(Kind::CertKey, "*.apps.test", b"-----BEGIN PRIVATE KEY-----");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("BEGIN"), "{sealed}");
        assert_eq!(
            k.open_text(Kind::CertKey, "*.apps.test", &sealed)
                .unwrap()
                .as_str(),
            "-----BEGIN PRIVATE KEY-----"
        );
        // Moved to another record, or read as another kind: refused.
        assert_eq!(
            k.open(Kind::CertKey, "other.test", &sealed).unwrap_err(),
            OpenError::Tampered(k.id())
        );
        assert!(k.open(Kind::Value, "*.apps.test", &sealed).is_err());
        // Two seals of the same value differ (random nonce).
        assert_ne!(
            sealed,
            k.seal(Kind::CertKey, "*.apps.test", b"-----BEGIN PRIVATE KEY-----")
        );
    }

    #[test]
    fn another_key_is_named_not_tried() {
        let (a, b) = (key(1), key(2));
        let sealed = a.seal(Kind::Value, "acme", b"{}");
        assert_eq!(sealed_by(&sealed), Some(a.id()));
        assert_eq!(
            b.open(Kind::Value, "acme", &sealed).unwrap_err(),
            OpenError::NotOurs {
                found: a.id(),
                ours: b.id()
            }
        );
    }

    #[test]
    fn a_flipped_byte_does_not_open() {
        let k = key(3);
        let sealed = k.seal(Kind::Value, "v", b"secret");
        let last = sealed.chars().last().unwrap();
        let flipped = format!(
            "{}{}",
            &sealed[..sealed.len() - 1],
            if last == '0' { '1' } else { '0' }
        );
        assert_eq!(
            k.open(Kind::Value, "v", &flipped).unwrap_err(),
            OpenError::Tampered(k.id())
        );
        assert!(matches!(
            k.open(Kind::Value, "v", "-----BEGIN PRIVATE KEY-----")
                .unwrap_err(),
            OpenError::Malformed(_)
        ));
    }

    #[test]
    fn key_file_is_made_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        let a = SealKey::load_or_create_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
        let b = SealKey::load_or_create_file(&path).unwrap();
        assert_eq!(a.id(), b.id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SealKey::load_or_create_file(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
