//! The audit log: one JSON line per key release, onboarding and denial. The record type
//! has no field that could hold key material.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::api::BootInfo;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    AppKeys,
    Onboard,
}

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    pub action: Action,
    /// `release` or `deny`.
    pub decision: &'static str,
    pub app_id: Option<String>,
    pub instance_id: Option<String>,
    pub compose_hash: Option<String>,
    pub simulated: Option<bool>,
    pub cert_fingerprint: Option<String>,
    pub peer: String,
    pub reason: Option<String>,
}

impl Record {
    pub fn new(
        action: Action,
        peer: String,
        boot: Option<&BootInfo>,
        denial: Option<&str>,
    ) -> Self {
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            time,
            action,
            decision: if denial.is_some() { "deny" } else { "release" },
            app_id: boot.map(|b| b.app_id.clone()),
            instance_id: boot.map(|b| b.instance_id.clone()),
            compose_hash: boot.map(|b| b.compose_hash.clone()),
            simulated: boot.map(|b| b.simulated),
            cert_fingerprint: boot.map(|b| b.cert_fingerprint.clone()),
            peer,
            reason: denial.map(str::to_string),
        }
    }
}

/// An append-only JSON-lines file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line; a failure is logged, not fatal (the decision stands either way).
    pub fn record(&self, r: &Record) {
        let Ok(mut line) = serde_json::to_vec(r) else {
            return;
        };
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!(path = %self.path.display(), error = %e, "audit log write failed");
        }
    }
}
