//! Freshness per connection. A certificate's quote is as old as the certificate; a client
//! that wants proof of liveness sends its own nonce in the TLS handshake and requires the
//! server's certificate to quote over it (CCC's `nonce` claim in the claims buffer).
//!
//! The signal is an ALPN protocol id, `teegate-fresh-<hex nonce>` (1 to [`MAX_NONCE_LEN`]
//! bytes, lowercase hex), offered FIRST in the ClientHello, followed by the protocol the
//! client means to speak (`http/1.1`, `h2`). ALPN is sent in the clear before the server
//! picks a certificate, and a server that does not know the id simply negotiates the next
//! one, so plain TLS stacks (curl, browsers, Go) can ask for freshness without a new
//! extension. The server answers with a short-lived certificate whose claims buffer holds
//! the nonce; the client checks it at step `freshness`, right after `key-binding`.

use crate::cert::evidence;
use crate::error::{Reason, Step, VerifyError};

/// Prefix of the ALPN protocol id that asks for a fresh quote.
pub const ALPN_PREFIX: &[u8] = b"teegate-fresh-";
/// Longest nonce the signal carries (ALPN ids are at most 255 bytes; 32 bytes is plenty).
pub const MAX_NONCE_LEN: usize = 32;

/// Why a ClientHello's freshness request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreshRequestError {
    #[error("the teegate-fresh- protocol id must be offered first")]
    NotFirst,
    #[error("the teegate-fresh- nonce must be 1-{MAX_NONCE_LEN} bytes of lowercase hex")]
    BadNonce,
}

/// The ALPN protocol id asking for a quote over `nonce`.
pub fn alpn_id(nonce: &[u8]) -> Vec<u8> {
    let mut id = ALPN_PREFIX.to_vec();
    id.extend_from_slice(hex::encode(nonce).as_bytes());
    id
}

/// The nonce a client asks for, read from its offered ALPN ids (in offer order).
pub fn nonce_from_alpn<'a>(
    offered: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Vec<u8>>, FreshRequestError> {
    let mut nonce = None;
    for (i, id) in offered.into_iter().enumerate() {
        let Some(hex_part) = id.strip_prefix(ALPN_PREFIX) else {
            continue;
        };
        if i != 0 {
            return Err(FreshRequestError::NotFirst);
        }
        let lower = hex_part
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        let n = hex::decode(hex_part).map_err(|_| FreshRequestError::BadNonce)?;
        if !lower || n.is_empty() || n.len() > MAX_NONCE_LEN {
            return Err(FreshRequestError::BadNonce);
        }
        nonce = Some(n);
    }
    Ok(nonce)
}

/// A random nonce from the ring provider's system randomness.
pub fn random_nonce() -> Result<[u8; MAX_NONCE_LEN], rustls::Error> {
    let mut n = [0u8; MAX_NONCE_LEN];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut n)
        .map_err(|_| rustls::Error::General("no system randomness".into()))?;
    Ok(n)
}

/// Step `freshness`: the claims buffer carries exactly `expected` as its CCC nonce. Run it
/// only after `key-binding` held, so the nonce is the one the quote covers.
pub fn check_freshness(claims_buffer: &[u8], expected: &[u8]) -> Result<(), VerifyError> {
    let fail = |r: Reason| VerifyError::new(Step::Freshness, r);
    // Only the nonce is read: evidence that binds several keys (the gateway's) has no
    // single `pubkey-hash`.
    let nonce = evidence::claims_entries(claims_buffer)
        .and_then(|entries| evidence::nonce_of(&entries))
        .map_err(|e| fail(Reason::Evidence(e.0)))?;
    match nonce {
        None => Err(fail(Reason::NoNonce {
            expected: hex::encode(expected),
        })),
        Some(n) if n != expected => Err(fail(Reason::NonceMismatch {
            expected: hex::encode(expected),
            found: hex::encode(n),
        })),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::evidence::claims_buffer;

    #[test]
    fn the_alpn_signal_roundtrips_and_must_come_first() {
        let id = alpn_id(&[0xab, 0x01]);
        assert_eq!(id, b"teegate-fresh-ab01");
        let offered: [&[u8]; 2] = [&id, b"http/1.1"];
        assert_eq!(nonce_from_alpn(offered).unwrap(), Some(vec![0xab, 0x01]));
        assert_eq!(nonce_from_alpn([&b"http/1.1"[..]]).unwrap(), None);
        let late: [&[u8]; 2] = [b"http/1.1", &id];
        assert_eq!(nonce_from_alpn(late), Err(FreshRequestError::NotFirst));
        for bad in [
            &b"teegate-fresh-"[..],
            b"teegate-fresh-AB",
            b"teegate-fresh-abc",
        ] {
            assert_eq!(nonce_from_alpn([bad]), Err(FreshRequestError::BadNonce));
        }
        let long = alpn_id(&[1; MAX_NONCE_LEN + 1]);
        assert_eq!(
            nonce_from_alpn([&long[..]]),
            Err(FreshRequestError::BadNonce)
        );
        assert!(alpn_id(&[1; MAX_NONCE_LEN]).len() <= 255);
    }

    fn sim_cert(nonce: Option<&[u8]>) -> Vec<u8> {
        use crate::cert::{issue, CertProfile, Identity};
        use crate::eventlog::names;
        use crate::provider::{Measurer, SimulatedProvider};
        let compose_hash = crate::ComposeHash::of(b"fresh");
        let id = Identity {
            app_id: compose_hash.default_app_id(),
            compose_hash,
            instance_id: crate::InstanceId([3; 20]),
        };
        let m = Measurer::new(std::sync::Arc::new(SimulatedProvider::new()));
        m.emit(names::COMPOSE_HASH, id.compose_hash.0.to_vec())
            .unwrap();
        m.emit(names::APP_ID, id.app_id.0.to_vec()).unwrap();
        m.emit(names::INSTANCE_ID, id.instance_id.0.to_vec())
            .unwrap();
        let mut p = CertProfile::server_and_client(
            vec!["x.test".into()],
            std::time::Duration::from_secs(60),
        );
        p.nonce = nonce.map(<[u8]>::to_vec);
        issue(&m, &id, &p, None).unwrap().cert_der
    }

    #[test]
    fn the_verifier_checks_freshness_after_key_binding_only_when_asked() {
        let mut policy = crate::Policy::any_measurements();
        policy.allow_simulated = true;
        let v = crate::AttestationVerifier::new(
            std::sync::Arc::new(crate::collateral::SourceChain::new()),
            policy,
        );
        let fresh = sim_cert(Some(b"n1"));
        // Without a nonce expected the step is not listed: pages stay as they were.
        let ins = v.inspect(&fresh);
        assert!(ins.passed());
        assert!(ins.check(Step::Freshness).is_none());
        let v1 = v.clone().expect_nonce(b"n1".to_vec());
        let ins = v1.inspect(&fresh);
        assert!(ins.passed(), "{:?}", ins.verdict().err());
        let steps: Vec<Step> = ins.checks.iter().map(|c| c.step).collect();
        let kb = steps.iter().position(|s| *s == Step::KeyBinding).unwrap();
        assert_eq!(steps[kb + 1], Step::Freshness);
        // Replayed to a client that sent n2, or a certificate without any nonce.
        let e = v
            .clone()
            .expect_nonce(b"n2".to_vec())
            .verify(&fresh)
            .unwrap_err();
        assert_eq!(e.step, Step::Freshness);
        assert!(matches!(e.reason, Reason::NonceMismatch { .. }), "{e}");
        let e = v1.verify(&sim_cert(None)).unwrap_err();
        assert!(matches!(e.reason, Reason::NoNonce { .. }), "{e}");
        // Issuing refuses a nonce longer than CCC allows.
        assert!(std::panic::catch_unwind(|| sim_cert(Some(&[0; 65]))).is_err());
    }

    #[test]
    fn freshness_needs_the_very_nonce_sent() {
        let with = claims_buffer(b"spki", Some(b"mine"), None);
        check_freshness(&with, b"mine").unwrap();
        let e = check_freshness(&with, b"other").unwrap_err();
        assert_eq!(e.step, Step::Freshness);
        assert!(matches!(e.reason, Reason::NonceMismatch { .. }), "{e}");
        let without = claims_buffer(b"spki", None, None);
        let e = check_freshness(&without, b"mine").unwrap_err();
        assert!(matches!(e.reason, Reason::NoNonce { .. }), "{e}");
        assert_eq!(Step::Freshness.as_str(), "freshness");
    }
}
