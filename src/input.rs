//! Reading what users hand the CLI: quotes in binary or hex, PEM or DER certificates,
//! RFC 3339 times.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Quote files come as raw bytes or as hex text (as many tools print them).
pub fn read_quote(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = std::str::from_utf8(&bytes).ok().map(str::trim);
    if let Some(t) = text {
        let t = t.strip_prefix("0x").unwrap_or(t);
        if !t.is_empty() && t.len() % 2 == 0 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return hex::decode(t).context("decoding hex quote");
        }
    }
    Ok(bytes)
}

/// The first certificate of a PEM file, or a DER file as is.
pub fn read_cert(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") || bytes.iter().take(64).all(|b| b.is_ascii()) {
        let pems = pem::parse_many(&bytes).context("parsing PEM")?;
        match pems.into_iter().find(|p| p.tag() == "CERTIFICATE") {
            Some(p) => return Ok(p.into_contents()),
            None => bail!("{} holds no CERTIFICATE PEM block", path.display()),
        }
    }
    Ok(bytes)
}

/// Unix seconds from an RFC 3339 timestamp such as `2025-06-20T00:00:00Z`.
pub fn parse_time(s: &str) -> Result<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("--at {s:?} is not an RFC 3339 time (e.g. 2025-06-20T00:00:00Z)")
        })?;
    u64::try_from(t.unix_timestamp()).context("time before 1970")
}

pub fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
