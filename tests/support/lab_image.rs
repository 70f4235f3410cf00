//! The lab's image, built from this build alone: the `teegate` binary the tests were built
//! with (`CARGO_BIN_EXE_teegate`, without its debug sections), the shared libraries `ldd`
//! lists for it and for Debian's `etcd`, and busybox-static with a few applets. No CA
//! bundle on purpose: the gateway must not need the host's trust store.

use std::path::{Path, PathBuf};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "httpd", "mkdir", "echo", "cat", "ls", "sleep", "timeout", "ip", "ps",
];
/// The binaries in the image besides `teegate`: Debian's etcd (package etcd-server).
const ETCD: &str = "/usr/bin/etcd";

/// The root filesystem for `docker import`, as a tar archive.
pub fn rootfs_of_this_build() -> Vec<u8> {
    // Without its debug sections (symbols stay, for backtraces) the binary is a quarter of
    // the size, and the import four times faster.
    let stripped = tempfile::NamedTempFile::new().expect("a temporary file");
    let out = std::process::Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(stripped.path())
        .arg(env!("CARGO_BIN_EXE_teegate"))
        .output()
        .expect("strip (Debian binutils) is installed");
    assert!(out.status.success(), "strip: {out:?}");
    rootfs(stripped.path())
}

/// The absolute paths `ldd` lists for `bin` (shared libraries and the loader).
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .expect("ldd (Debian libc-bin) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    // "statically linked" is fine: nothing to add.
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=>").map_or(l, |(_, p)| p.trim());
            path.split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

fn tar_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_size(0);
    h.set_mtime(0);
    b.append_data(&mut h, path, std::io::empty())
        .expect("tar dir");
}

/// The image's root filesystem: `/teegate`, `/usr/bin/etcd`, their libraries at the paths
/// `ldd` names, busybox with a few applets, and the directories the hosts write to.
fn rootfs(teegate: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (d, mode) in [
        ("bin", 0o755),
        ("tmp", 0o1777),
        ("data", 0o700),
        ("run", 0o755),
        ("www", 0o755),
        ("cfg", 0o755),
        ("etc", 0o755),
    ] {
        tar_dir(&mut b, &format!("{d}/"), mode);
        dirs.insert(d.to_string());
    }
    let mut files = vec![
        (teegate.to_path_buf(), "teegate".to_string()),
        (PathBuf::from(ETCD), "usr/bin/etcd".to_string()),
        (PathBuf::from(BUSYBOX), "bin/busybox".to_string()),
    ];
    let mut libs = shared_libraries(teegate);
    libs.extend(shared_libraries(Path::new(ETCD)));
    libs.sort();
    libs.dedup();
    files.extend(libs.into_iter().map(|lib| {
        let dst = lib.to_string_lossy().trim_start_matches('/').to_string();
        (lib, dst)
    }));
    for (src, dst) in files {
        let parents: Vec<String> = Path::new(&dst)
            .ancestors()
            .skip(1)
            .map(|p| p.to_string_lossy().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        for p in parents.into_iter().rev() {
            if dirs.insert(p.clone()) {
                tar_dir(&mut b, &format!("{p}/"), 0o755);
            }
        }
        let bytes = std::fs::read(&src).unwrap_or_else(|e| {
            panic!(
                "{} is needed in the test image ({e}); scripts/test installs it",
                src.display()
            )
        });
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, &dst, bytes.as_slice())
            .expect("tar file");
    }
    for a in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .expect("tar link");
    }
    b.into_inner().expect("tar finish")
}
