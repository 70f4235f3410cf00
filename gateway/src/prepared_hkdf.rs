//! TLS 1.3's key schedule on HMAC keys prepared once: aws-lc-rs's TLS 1.3 cipher suites
//! with their HKDF replaced by rustls' [`HkdfUsingHmac`] over aws-lc-rs's HMAC.
//!
//! rustls' aws-lc-rs suites run each HKDF-Expand through aws-lc's one-shot `HKDF_expand`,
//! which sets up the HMAC key (hashing its inner and outer pads) again on every call, and a
//! secret made by HKDF-Extract is kept unextracted, so every Expand from it runs the Extract
//! again as well. A TLS 1.3 handshake expands some thirty labels, so under callgrind this was
//! 39% of the gateway's instructions per resumed connection with a SHA-384 suite
//! (`LOAD=resumed benches/profile.sh`), more than the X25519 exchange. Here Extract runs
//! once, and each secret becomes an HMAC key whose pads are hashed once: an Expand then
//! costs the two compressions of its own data (about 200 SHA-512 compressions per resumed
//! connection become 120, and the connection's instructions fall by 8%). The results are RFC 5869's, bit for bit (the tests check them against
//! aws-lc-rs's own HKDF and against handshakes with rustls' stock suites); the AEADs, the
//! hashes and the key exchange stay aws-lc-rs's. This is how rustls' ring provider builds its
//! HKDF.

use std::sync::LazyLock;

use aws_lc_rs::hmac;
use rustls::crypto::hash::HashAlgorithm;
use rustls::crypto::tls13::{Hkdf, HkdfUsingHmac};
use rustls::crypto::{hmac as rustls_hmac, CryptoProvider};
use rustls::{CipherSuiteCommon, SupportedCipherSuite, Tls13CipherSuite};

/// aws-lc-rs's HMAC as rustls' [`rustls_hmac::Hmac`].
struct AwsLcHmac(hmac::Algorithm);

impl rustls_hmac::Hmac for AwsLcHmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn rustls_hmac::Key> {
        Box::new(PreparedKey(hmac::Key::new(self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

/// An HMAC key whose pads were hashed when it was made; each tag starts from a copy of that
/// state.
struct PreparedKey(hmac::Key);

impl rustls_hmac::Key for PreparedKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> rustls_hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(first);
        for part in middle {
            ctx.update(part);
        }
        ctx.update(last);
        rustls_hmac::Tag::new(ctx.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

static HMAC_SHA256: AwsLcHmac = AwsLcHmac(hmac::HMAC_SHA256);
static HMAC_SHA384: AwsLcHmac = AwsLcHmac(hmac::HMAC_SHA384);
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

fn hkdf_for(hash: HashAlgorithm) -> Option<&'static dyn Hkdf> {
    match hash {
        HashAlgorithm::SHA256 => Some(&HKDF_SHA256),
        HashAlgorithm::SHA384 => Some(&HKDF_SHA384),
        _ => None,
    }
}

/// aws-lc-rs's TLS 1.3 suites, each with the prepared-key HKDF of its hash.
static SUITES: LazyLock<Vec<Tls13CipherSuite>> = LazyLock::new(|| {
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .filter_map(|s| match s {
            SupportedCipherSuite::Tls13(t) => Some(Tls13CipherSuite {
                common: CipherSuiteCommon {
                    suite: t.common.suite,
                    hash_provider: t.common.hash_provider,
                    confidentiality_limit: t.common.confidentiality_limit,
                },
                hkdf_provider: hkdf_for(t.common.hash_provider.algorithm())?,
                aead_alg: t.aead_alg,
                quic: t.quic,
            }),
            SupportedCipherSuite::Tls12(_) => None,
        })
        .collect()
});

/// aws-lc-rs's default provider with each TLS 1.3 suite on the prepared-key HKDF, in the
/// same order; the TLS 1.2 suites, key exchanges and signatures are left as they are.
pub fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    for suite in &mut provider.cipher_suites {
        if let SupportedCipherSuite::Tls13(t) = suite {
            if let Some(ours) = SUITES.iter().find(|o| o.common.suite == t.common.suite) {
                *suite = SupportedCipherSuite::Tls13(ours);
            }
        }
    }
    provider
}

#[cfg(test)]
mod tests;
