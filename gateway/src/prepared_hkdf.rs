//! TLS 1.3's key schedule on HMAC keys prepared once: aws-lc-rs's TLS 1.3 cipher suites
//! with their HKDF replaced by rustls' [`HkdfUsingHmac`] over RustCrypto's HMAC and SHA-2.
//!
//! rustls' aws-lc-rs suites run each HKDF-Expand through aws-lc's one-shot `HKDF_expand`,
//! which sets up the HMAC key (hashing its inner and outer pads) again on every call, and a
//! secret made by HKDF-Extract is kept unextracted, so every Expand from it runs the Extract
//! again as well. A TLS 1.3 handshake expands some thirty labels: under callgrind, with a
//! SHA-384 suite, that was 39% of the gateway's instructions per resumed connection
//! (`LOAD=resumed benches/profile.sh`), more than the X25519 exchange. Here Extract runs
//! once, and each secret becomes an HMAC key whose two pads are hashed once: an Expand then
//! costs the compressions of its own data. The server's part of a resumed handshake
//! (`cargo bench --bench tls13_hkdf`, three runs on a noisy machine) takes 7-12% less time
//! with TLS_AES_256_GCM_SHA384 (e.g. 116.8 → 102.7 µs) and 9-17% less with
//! TLS_AES_128_GCM_SHA256 (e.g. 63.9 → 57.3 µs, SHA-256 in hardware, SHA-NI). aws-lc-rs's
//! own HMAC on prepared keys was tried first: it helps SHA-384 but costs SHA-256 8%, as
//! copying and cleaning its HMAC context per tag outweighs two compressions done in hardware.
//!
//! The results are RFC 5869's, bit for bit: the tests check them against aws-lc-rs's own HKDF
//! and against handshakes with rustls' stock suites. The AEADs, the transcript hash and the
//! key exchange stay aws-lc-rs's. rustls' ring provider builds its HKDF the same way.

use std::marker::PhantomData;
use std::sync::LazyLock;

use hmac::digest::KeyInit;
use hmac::Mac;
use rustls::crypto::hash::HashAlgorithm;
use rustls::crypto::tls13::{Hkdf, HkdfUsingHmac};
use rustls::crypto::{hmac as rustls_hmac, CryptoProvider};
use rustls::{CipherSuiteCommon, SupportedCipherSuite, Tls13CipherSuite};

/// An HMAC with a public instance to overwrite a secret one with: keyed by the empty key,
/// made once.
trait Blank: Mac + KeyInit + Clone + Send + Sync + 'static {
    fn blank() -> &'static Self;
}

static BLANK_SHA256: LazyLock<hmac::Hmac<sha2::Sha256>> = LazyLock::new(|| keyed(&[]));
static BLANK_SHA384: LazyLock<hmac::Hmac<sha2::Sha384>> = LazyLock::new(|| keyed(&[]));

fn keyed<M: KeyInit>(key: &[u8]) -> M {
    <M as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

impl Blank for hmac::Hmac<sha2::Sha256> {
    fn blank() -> &'static Self {
        &BLANK_SHA256
    }
}

impl Blank for hmac::Hmac<sha2::Sha384> {
    fn blank() -> &'static Self {
        &BLANK_SHA384
    }
}

/// The HMAC `M` as rustls' [`rustls_hmac::Hmac`].
struct PreparedHmac<M>(PhantomData<M>);

impl<M: Blank> rustls_hmac::Hmac for PreparedHmac<M> {
    fn with_key(&self, key: &[u8]) -> Box<dyn rustls_hmac::Key> {
        Box::new(PreparedKey(keyed::<M>(key)))
    }

    fn hash_output_len(&self) -> usize {
        M::output_size()
    }
}

/// An HMAC key whose inner and outer pads were hashed when it was made; each tag starts
/// from a copy of those two states.
struct PreparedKey<M: Blank>(M);

impl<M: Blank> Drop for PreparedKey<M> {
    fn drop(&mut self) {
        // The hashed pads stand for the secret, and RustCrypto's HMAC does not wipe them:
        // overwrite them in place with the public blank, so the secret does not stay behind
        // in freed memory.
        self.0.clone_from(M::blank());
        std::hint::black_box(&self.0);
    }
}

impl<M: Blank> rustls_hmac::Key for PreparedKey<M> {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> rustls_hmac::Tag {
        let mut mac = self.0.clone();
        mac.update(first);
        for part in middle {
            mac.update(part);
        }
        mac.update(last);
        rustls_hmac::Tag::new(&mac.finalize().into_bytes())
    }

    fn tag_len(&self) -> usize {
        M::output_size()
    }
}

static HMAC_SHA256: PreparedHmac<hmac::Hmac<sha2::Sha256>> = PreparedHmac(PhantomData);
static HMAC_SHA384: PreparedHmac<hmac::Hmac<sha2::Sha384>> = PreparedHmac(PhantomData);
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
