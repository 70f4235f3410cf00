//! App volumes on real gocryptfs (FUSE): another key is refused naming the volume and
//! leaves the data untouched, nothing is initialised over existing data, and the right
//! key opens what was written.

use std::path::Path;

use teegate_guest_sidecar::storage::{mount_all, unmount_all, volumes_dir};

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        unmount_all(self.0);
    }
}

/// Every file's path and bytes under `dir`, to show nothing changed.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn another_key_is_refused_naming_the_volume_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let _unmount = Unmount(dir.path());
    let volumes = vec!["data".to_string()];
    let app_key = [7u8; 32];
    let other_app_key = [8u8; 32];

    let mounted = mount_all(dir.path(), &volumes, &app_key).expect("mount");
    let plain = &mounted.dirs["data"];
    std::fs::write(plain.join("ledger"), b"balance=42").unwrap();
    unmount_all(dir.path());
    assert!(
        !plain.join("ledger").exists(),
        "unmounted: the plaintext is gone"
    );
    let cipher = volumes_dir(dir.path()).join("data.enc");
    let before = snapshot(&cipher);

    let err = mount_all(dir.path(), &volumes, &other_app_key).expect_err("another key");
    let msg = err.to_string();
    assert!(msg.contains("volume data"), "{msg}");
    assert!(msg.contains("another key"), "{msg}");
    assert_eq!(snapshot(&cipher), before, "the ciphertext is untouched");
    assert!(!plain.join("ledger").exists(), "nothing was mounted");

    // The app's own key opens it again, byte for byte.
    let again = mount_all(dir.path(), &volumes, &app_key).expect("remount");
    assert_eq!(
        std::fs::read(again.dirs["data"].join("ledger")).unwrap(),
        b"balance=42"
    );
    // Mounted already (a restarted sidecar): the key is checked, the mount kept.
    mount_all(dir.path(), &volumes, &app_key).expect("already mounted, same key");
    let e = mount_all(dir.path(), &volumes, &other_app_key).expect_err("mounted, other key");
    assert!(e.to_string().contains("another key"), "{e}");
}

#[test]
fn data_without_a_gocryptfs_config_is_never_initialised_over() {
    let dir = tempfile::tempdir().unwrap();
    let _unmount = Unmount(dir.path());
    let cipher = volumes_dir(dir.path()).join("db.enc");
    std::fs::create_dir_all(&cipher).unwrap();
    std::fs::write(cipher.join("precious"), b"not ours").unwrap();
    let err = mount_all(dir.path(), &["db".to_string()], &[1; 32]).expect_err("refused");
    assert!(
        err.to_string().contains("volume db") && err.to_string().contains("refusing to initialise"),
        "{err}"
    );
    assert_eq!(std::fs::read(cipher.join("precious")).unwrap(), b"not ours");
    assert!(!cipher.join("gocryptfs.conf").exists());
}
