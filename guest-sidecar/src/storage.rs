//! App volumes encrypted with the KMS disk key: each named volume of the compose is a
//! gocryptfs filesystem (FUSE), its ciphertext in `<data_dir>/volumes/<name>.enc` and its
//! plaintext mounted at `<data_dir>/volumes/<name>` (with `-allow_other`, so Docker can
//! bind it into the containers). The host sees only ciphertext and encrypted file names.
//! The same app on any host derives the same disk key through the KMS, so a moved data
//! directory opens there; another app (another key) is refused naming the volume, and
//! nothing is ever initialised over existing data.
//!
//! ```text
//!  disk key ──SHA-256("teegate-volume" ‖ key ‖ name)──▶ volume password (stdin, never on disk)
//!  <name>.enc/ absent or empty ─▶ gocryptfs -init ─▶ mount
//!  <name>.enc/gocryptfs.conf    ─▶ mount (wrong key: refused, data untouched)
//!  <name>/ already mounted (sidecar restart, containers adopted) ─▶ key checked by a
//!                                 read-only test mount, the live mount kept
//! ```
//!
//! Where dm-crypt exists (real CVMs), LUKS2 would fit the same place; these machines have
//! no device-mapper, so only gocryptfs is built and tested.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::Digest;

/// How the app's data is stored, as the RTMR3 `storage` event records it.
pub const KIND_GOCRYPTFS: &str = "gocryptfs (key: KMS disk key)";
pub const KIND_NONE: &str = "none: no key provider, volumes are not encrypted";

/// Bound on one gocryptfs or fusermount run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("volume {volume}: {message}")]
    Volume { volume: String, message: String },
    #[error("gocryptfs is not installed (apt-get install gocryptfs): {0}")]
    Missing(String),
}

fn fail(volume: &str, message: impl Into<String>) -> StorageError {
    StorageError::Volume {
        volume: volume.to_string(),
        message: message.into(),
    }
}

/// The root holding every volume's ciphertext and mount point.
pub fn volumes_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("volumes")
}

/// A volume's password: derived from the disk key and the volume's name, hex.
fn password(disk_key: &[u8], volume: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"teegate-volume\0");
    h.update(disk_key);
    h.update(volume.as_bytes());
    hex::encode(h.finalize())
}

/// Mount points currently mounted (from `/proc/self/mountinfo`).
fn mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}

/// Runs a tool with `input` on stdin, bounded; returns (success, exit code, stderr).
/// Its stderr goes to a file, not a pipe: gocryptfs forks a daemon that may keep the
/// parent's descriptors, and a pipe would then never reach end-of-file.
fn run(mut cmd: Command, input: Option<&str>) -> Result<(bool, Option<i32>, String), String> {
    let err_path = std::env::temp_dir().join(format!(
        "teegate-storage-{}-{}.err",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let err_file = std::fs::File::create(&err_path).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err_file));
    let spawned = cmd.spawn();
    let result = (|| {
        let mut child = spawned.map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            if let Some(text) = input {
                // gocryptfs reads the password from stdin when it is not a terminal.
                let _ = writeln!(stdin, "{text}");
            }
        }
        let deadline = std::time::Instant::now() + TOOL_TIMEOUT;
        loop {
            match child.try_wait().map_err(|e| e.to_string())? {
                Some(status) => {
                    let mut err = std::fs::read_to_string(&err_path).unwrap_or_default();
                    err.truncate(16 * 1024);
                    return Ok((status.success(), status.code(), err.trim().to_string()));
                }
                None if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("no answer within {TOOL_TIMEOUT:?}"));
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })();
    let _ = std::fs::remove_file(&err_path);
    result
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn gocryptfs() -> Command {
    Command::new("gocryptfs")
}

/// The app's encrypted volumes, mounted.
#[derive(Debug, Default)]
pub struct EncryptedVolumes {
    /// Volume name → plaintext directory (bind-mounted into containers).
    pub dirs: BTreeMap<String, PathBuf>,
}

/// Mounts (initialising only empty ones) every volume in `volumes` under `data_dir`.
pub fn mount_all(
    data_dir: &Path,
    volumes: &[String],
    disk_key: &[u8],
) -> Result<EncryptedVolumes, StorageError> {
    if volumes.is_empty() {
        return Ok(EncryptedVolumes::default());
    }
    match run(
        {
            let mut c = gocryptfs();
            c.arg("-version");
            c
        },
        None,
    ) {
        Ok((true, _, _)) => {}
        Ok((false, _, e)) | Err(e) => return Err(StorageError::Missing(e)),
    }
    let root = volumes_dir(data_dir);
    let mut out = EncryptedVolumes::default();
    for volume in volumes {
        let cipher = root.join(format!("{volume}.enc"));
        let plain = root.join(volume);
        mount_one(volume, &cipher, &plain, &password(disk_key, volume))?;
        out.dirs.insert(volume.clone(), plain);
    }
    Ok(out)
}

fn mount_one(volume: &str, cipher: &Path, plain: &Path, pw: &str) -> Result<(), StorageError> {
    let io = |what: &str, e: std::io::Error| fail(volume, format!("{what}: {e}"));
    std::fs::create_dir_all(cipher).map_err(|e| io(&cipher.display().to_string(), e))?;
    let conf = cipher.join("gocryptfs.conf");
    if !conf.exists() {
        let has_data = std::fs::read_dir(cipher)
            .map_err(|e| io(&cipher.display().to_string(), e))?
            .next()
            .is_some();
        if has_data {
            return Err(fail(
                volume,
                format!(
                    "{} holds data but no gocryptfs.conf; refusing to initialise over it",
                    cipher.display()
                ),
            ));
        }
        // The password is a 256-bit derived key, not a passphrase: scrypt's cost buys
        // nothing, so the cheapest setting keeps mounts fast.
        let mut c = gocryptfs();
        c.args(["-init", "-q", "-scryptn", "10"]).arg(cipher);
        match run(c, Some(pw)) {
            Ok((true, _, _)) => tracing::info!(volume, "encrypted volume initialised"),
            Ok((false, _, e)) => return Err(fail(volume, format!("gocryptfs -init: {e}"))),
            Err(e) => return Err(fail(volume, format!("gocryptfs -init: {e}"))),
        }
    }
    if mounted(plain) {
        // A restarted sidecar: the containers it adopts use this mount. Check the key
        // with a read-only test mount before believing it.
        let probe = cipher.with_extension("probe");
        std::fs::create_dir_all(&probe).map_err(|e| io("probe dir", e))?;
        let r = mount_at(volume, cipher, &probe, pw, true);
        unmount(&probe);
        let _ = std::fs::remove_dir(&probe);
        r?;
        tracing::info!(
            volume,
            "encrypted volume already mounted (key checked); kept"
        );
        return Ok(());
    }
    std::fs::create_dir_all(plain).map_err(|e| io(&plain.display().to_string(), e))?;
    mount_at(volume, cipher, plain, pw, false)?;
    tracing::info!(volume, mount = %plain.display(), "encrypted volume mounted");
    Ok(())
}

fn mount_at(
    volume: &str,
    cipher: &Path,
    at: &Path,
    pw: &str,
    read_only: bool,
) -> Result<(), StorageError> {
    let mut c = gocryptfs();
    c.args(["-q", "-allow_other"]);
    if read_only {
        c.arg("-ro");
    }
    c.arg(cipher).arg(at);
    match run(c, Some(pw)) {
        Ok((true, _, _)) => Ok(()),
        // gocryptfs' exit code for a wrong password.
        Ok((false, Some(12), _)) => Err(fail(
            volume,
            "the encrypted data was made with another key (another app id, or another KMS); it is left untouched and not mounted",
        )),
        Ok((false, code, e)) => Err(fail(
            volume,
            format!("gocryptfs mount failed (exit {code:?}): {e}"),
        )),
        Err(e) => Err(fail(volume, format!("gocryptfs mount: {e}"))),
    }
}

fn unmount(at: &Path) {
    let mut c = Command::new("fusermount3");
    c.arg("-u").arg(at);
    if !matches!(run(c, None), Ok((true, _, _))) {
        let mut c = Command::new("fusermount");
        c.arg("-u").arg(at);
        let _ = run(c, None);
    }
}

/// Unmounts every volume under `data_dir` (when the app is taken down for good).
pub fn unmount_all(data_dir: &Path) {
    let root = volumes_dir(data_dir);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if mounted(&p) {
            unmount(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_differ_per_key_and_volume_and_never_equal_the_key() {
        let a = password(&[1; 32], "db");
        assert_eq!(a, password(&[1; 32], "db"));
        assert_ne!(a, password(&[2; 32], "db"));
        assert_ne!(a, password(&[1; 32], "cache"));
        assert!(!a.contains(&hex::encode([1u8; 32])));
    }
}
