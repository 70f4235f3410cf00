//! dstack's `GetTlsKey`: a new P-256 key and an RA-TLS certificate for it, issued by the
//! app CA (so the chain ends at the app CA, and from there at the KMS root CA).
//!
//! Validity as dstack takes it: `not_before`/`not_after` in seconds since the UNIX epoch,
//! `not_before < not_after`, and a `not_before` in the future gives a certificate valid from
//! then. Bounded here: neither may lie more than [`MAX_VALIDITY`] ahead (the quote inside
//! is not vouched for longer), nor `not_before` more than [`MAX_BACKDATE`] in the past (a
//! certificate claiming validity long before it existed), and `not_after` must be ahead.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use ratls::cert::{issue_with, pem_encode, CertProfile, IssueOptions};
use serde::Deserialize;
use serde_json::json;

use super::attest::internal;
use super::{err, no_kms, ApiError, DstackState};
use crate::guest_api::{reply, Reply};

/// Latest `not_after` (and `not_before`) accepted, from now; as teegate's own `/tls-key`.
pub const MAX_VALIDITY: u64 = 90 * 86_400;
/// Earliest `not_before` accepted, before now.
pub const MAX_BACKDATE: u64 = 86_400;
const DEFAULT_VALIDITY: u64 = 86_400;
const MAX_NAMES: usize = 16;
const MAX_NAME_LEN: usize = 253;

#[derive(Deserialize)]
pub(super) struct TlsKeyReq {
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub alt_names: Vec<String>,
    // `usage_ra_tls` and `with_app_info` are accepted and need no field: teegate's
    // certificates always carry the quote and the app claims (the app CA signs nothing else).
    #[serde(default = "yes")]
    pub usage_server_auth: bool,
    #[serde(default)]
    pub usage_client_auth: bool,
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
}

fn yes() -> bool {
    true
}

fn bad(message: impl std::fmt::Display) -> ApiError {
    err(StatusCode::BAD_REQUEST, message)
}

/// The certificate's validity window `(not_before, not_after)` in UNIX seconds, or why not.
/// `None` for `not_before` means "from now" (issued a little backdated, for clock skew).
pub(super) fn window(
    now: u64,
    not_before: Option<u64>,
    not_after: Option<u64>,
) -> Result<(Option<u64>, u64), ApiError> {
    let latest = now + MAX_VALIDITY;
    if let Some(nb) = not_before {
        if nb + MAX_BACKDATE < now {
            return Err(bad(format!(
                "not_before {nb} is more than {MAX_BACKDATE} s in the past"
            )));
        }
        if nb >= latest {
            return Err(bad(format!(
                "not_before {nb} is more than {MAX_VALIDITY} s in the future"
            )));
        }
    }
    let start = not_before.unwrap_or(now);
    let end = match not_after {
        None => (start + DEFAULT_VALIDITY).min(latest),
        Some(na) if na <= start => {
            return Err(bad(
                "not_before must be earlier than not_after (and not_after later than now)",
            ))
        }
        Some(na) if na <= now => return Err(bad("not_after must be in the future")),
        Some(na) if na > latest => {
            return Err(bad(format!(
                "not_after {na} is more than {MAX_VALIDITY} s in the future"
            )))
        }
        Some(na) => na,
    };
    Ok((not_before, end))
}

/// The DNS names of the certificate: the subject first, then the alternative names.
pub(super) fn dns_names(
    state: &DstackState,
    subject: &str,
    alt_names: &[String],
) -> Result<Vec<String>, ApiError> {
    let mut names: Vec<String> = Vec::new();
    for n in std::iter::once(subject).chain(alt_names.iter().map(String::as_str)) {
        if !n.is_empty() && !names.iter().any(|m| m == n) {
            names.push(n.to_string());
        }
    }
    if names.is_empty() {
        // A certificate needs a name; the app id is this app's own.
        names.push(state.guest.identity.app_id.to_hex());
    }
    let ok_name = |n: &String| {
        n.len() <= MAX_NAME_LEN
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.*".contains(&b))
    };
    if names.len() > MAX_NAMES || !names.iter().all(ok_name) {
        return Err(bad(format!(
            "subject and alt_names: at most {MAX_NAMES} DNS names"
        )));
    }
    Ok(names)
}

pub(super) fn now_secs() -> Result<u64, ApiError> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(internal)?
        .as_secs())
}

impl DstackState {
    /// Issues an app-CA-signed RA-TLS certificate; answers `{key, certificate_chain}`.
    pub(super) fn issue_tls(
        &self,
        names: Vec<String>,
        server_auth: bool,
        client_auth: bool,
        (not_before, not_after): (Option<u64>, u64),
        key_pkcs8: Option<&[u8]>,
    ) -> Result<Reply, ApiError> {
        // No extended key usage at all would make the certificate good for any purpose:
        // more than was asked, so one usage is required.
        if !server_auth && !client_auth {
            return Err(bad("usage_server_auth or usage_client_auth must be true"));
        }
        let ca = self.guest.app_ca.as_ref().ok_or_else(no_kms)?;
        let start = not_before.unwrap_or(now_secs()?);
        let profile = CertProfile {
            names,
            validity: Duration::from_secs(not_after.saturating_sub(start)),
            server_auth,
            client_auth,
            nonce: None,
        };
        let options = IssueOptions {
            not_before: not_before.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            key_pkcs8,
        };
        let cert = issue_with(
            &self.guest.measurer,
            &self.guest.identity,
            &profile,
            Some(ca),
            &options,
        )
        .map_err(internal)?;
        let chain: Vec<String> = cert
            .rustls_chain()
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect();
        Ok(reply(
            StatusCode::OK,
            json!({
                "key": pem_encode("PRIVATE KEY", &cert.key_pkcs8_der()),
                "certificate_chain": chain,
            }),
        ))
    }

    pub(super) fn get_tls_key(&self, r: TlsKeyReq) -> Result<Reply, ApiError> {
        let names = dns_names(self, &r.subject, &r.alt_names)?;
        let window = window(now_secs()?, r.not_before, r.not_after)?;
        self.issue_tls(
            names,
            r.usage_server_auth,
            r.usage_client_auth,
            window,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn msg(r: Result<(Option<u64>, u64), ApiError>) -> String {
        match r {
            Ok(w) => panic!("accepted {w:?}"),
            Err(e) => e.message,
        }
    }

    #[test]
    fn a_future_not_before_is_honoured_within_bounds() {
        assert_eq!(
            window(NOW, None, None).unwrap(),
            (None, NOW + DEFAULT_VALIDITY)
        );
        let day = 86_400;
        assert_eq!(
            window(NOW, Some(NOW + day), None).unwrap(),
            (Some(NOW + day), NOW + 2 * day)
        );
        assert_eq!(
            window(NOW, Some(NOW + day), Some(NOW + 3 * day)).unwrap(),
            (Some(NOW + day), NOW + 3 * day)
        );
        // The default end never passes the bound.
        assert_eq!(
            window(NOW, Some(NOW + MAX_VALIDITY - 10), None).unwrap().1,
            NOW + MAX_VALIDITY
        );
        assert_eq!(
            window(NOW, Some(NOW - 3600), Some(NOW + 60)).unwrap(),
            (Some(NOW - 3600), NOW + 60)
        );
    }

    #[test]
    fn refuses_windows_out_of_bounds_naming_the_field() {
        for (nb, na, want) in [
            (
                Some(NOW + 10),
                Some(NOW + 10),
                "not_before must be earlier than not_after",
            ),
            (
                Some(NOW + 20),
                Some(NOW + 10),
                "not_before must be earlier than not_after",
            ),
            (None, Some(NOW), "not_before must be earlier than not_after"),
            (
                Some(NOW - 100),
                Some(NOW - 10),
                "not_after must be in the future",
            ),
            (Some(NOW + MAX_VALIDITY), None, "not_before"),
            (Some(NOW - MAX_BACKDATE - 1), None, "in the past"),
            (None, Some(NOW + MAX_VALIDITY + 1), "not_after"),
        ] {
            let m = msg(window(NOW, nb, na));
            assert!(m.contains(want), "{nb:?} {na:?}: {m}");
        }
    }
}
