//! Headless Chromium against a gateway: the page's DOM as the browser built it, and
//! screenshots kept under `target/test-artifacts` (bounded; the dev CA is pinned by SPKI,
//! so the browser checks the gateway's chain to it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use sha2::Digest;

use super::{Gateway, BASE};

/// Chromium's `--ignore-certificate-errors-spki-list` entry for a PEM certificate: the
/// dev CA is pinned this way, so the browser checks the gateway's chain to it.
pub fn spki_pin(ca_pem: &str) -> String {
    let der = ::pem::parse(ca_pem).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    base64::engine::general_purpose::STANDARD.encode(digest)
}

pub fn artifact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium against the gateway with `extra` arguments; returns stdout.
pub fn chromium(gw: &Gateway, profile: &Path, url: &str, extra: &[&str]) -> String {
    let rules = format!("MAP {BASE} 127.0.0.1, MAP *.{BASE} 127.0.0.1");
    let pin = spki_pin(&gw.dev_ca_pem());
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--host-resolver-rules={rules}"))
    .arg(format!("--ignore-certificate-errors-spki-list={pin}"))
    .args(extra)
    .arg(url);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn run_bounded(mut cmd: Command, within: Duration) -> std::process::Output {
    use std::process::Stdio;
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium is installed (Debian package `chromium`; ./scripts/test installs it)");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("chromium did not finish within {within:?}");
        }
    }
}

/// Saves a screenshot of `url` at `size` ("W,H") under `target/test-artifacts/name`,
/// never passing on a stale file from an earlier run.
pub fn screenshot(gw: &Gateway, profile: &Path, url: &str, name: &str, size: &str) {
    let shot = artifact_dir().join(name);
    let _ = std::fs::remove_file(&shot);
    tokio::task::block_in_place(|| {
        chromium(
            gw,
            profile,
            url,
            &[
                &format!("--screenshot={}", shot.display()),
                &format!("--window-size={size}"),
            ],
        )
    });
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{name}: {} bytes",
        png.len()
    );
}
