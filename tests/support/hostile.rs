//! Hostile RA-TLS certificates for the dstack #566/#567 class (compressed or oversized
//! evidence, length fields that claim more than is there): each keeps a genuine
//! certificate's key and names and replaces only its evidence extension, so a verifier that
//! decompressed, trusted a length field, or skipped a size bound would be the one to fail.

use std::io::Write;

use ciborium::value::Value;
use ratls::cert::evidence::{self, MAX_EVIDENCE_LEN};
use ratls::cert::{oid, parse_ratls_cert, RaTlsCert};
use rcgen::{CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, KeyPair};

use super::BASE;

/// A self-signed certificate with `base`'s key and names and `evidence` as its evidence
/// extension (DER).
pub fn with_evidence(base: &RaTlsCert, evidence: Vec<u8>) -> Vec<u8> {
    let key = KeyPair::try_from(base.key_pkcs8_der().as_slice()).unwrap();
    let mut params = CertificateParams::new(vec![format!("*.{BASE}")]).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        oid::EVIDENCE_OID,
        evidence,
    )];
    params.self_signed(&key).unwrap().der().to_vec()
}

/// CBOR text string.
fn tstr(s: &str) -> Vec<u8> {
    assert!(s.len() < 24);
    let mut out = vec![0x60 | s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// Hostile certificates small enough for a TLS client certificate (under 64 KiB), by name:
/// - `gzip-bomb`: the genuine evidence gzip-compressed, followed by 32 MiB of zeros in the
///   same stream (about 32 KiB on the wire); a verifier must not inflate it;
/// - `bstr-length-2^63`: evidence whose quote byte string claims 2^63 - 1 bytes;
/// - `map-length-2^64`: a genuine quote with a claims buffer claiming 2^64 - 1 entries;
/// - `event-log-length-2^32`: app claims whose event log claims 2^32 events;
/// - `event-log-over-max-events`: an event log of `MAX_EVENTS + 100` real entries.
pub fn small_hostile_certs(base: &RaTlsCert) -> Vec<(&'static str, Vec<u8>)> {
    let parsed = parse_ratls_cert(&base.cert_der).unwrap();
    let genuine = evidence::encode(&parsed.quote, &parsed.claims_buffer);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&genuine).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..32 {
        gz.write_all(&zeros).unwrap();
    }
    let gzip_bomb = gz.finish().unwrap();

    // Tag 60000, [bstr of 2^63 - 1 bytes (16 present), …].
    let mut bstr_bomb = vec![0xd9, 0xea, 0x60, 0x82, 0x5b];
    bstr_bomb.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    bstr_bomb.extend_from_slice(&[0xaa; 16]);

    let map_bomb = {
        let mut cb = vec![0xbb];
        cb.extend_from_slice(&u64::MAX.to_be_bytes());
        cb.extend(tstr("nonce"));
        cb.push(0x40);
        evidence::encode(&parsed.quote, &cb)
    };

    let array_bomb = {
        // {"teegate-claims": {"event-log": [2^32 entries…]}}
        let mut cb = vec![0xa1];
        cb.extend(tstr("teegate-claims"));
        cb.push(0xa1);
        cb.extend(tstr("event-log"));
        cb.push(0x9b);
        cb.extend_from_slice(&(1u64 << 32).to_be_bytes());
        cb.extend(tstr("x"));
        evidence::encode(&parsed.quote, &cb)
    };

    let too_many_events = {
        let entries = evidence::claims_entries(&parsed.claims_buffer).unwrap();
        let forged: Vec<(Value, Value)> = entries
            .into_iter()
            .map(|(k, v)| {
                if k.as_text() != Some(evidence::CLAIMS_KEY) {
                    return (k, v);
                }
                let Value::Map(fields) = v else {
                    panic!("app claims are a map")
                };
                let fields = fields
                    .into_iter()
                    .map(|(fk, fv)| match (fk.as_text(), &fv) {
                        (Some("event-log"), Value::Array(_)) => {
                            let one = Value::Map(vec![
                                (Value::Text("name".into()), Value::Text("a".into())),
                                (Value::Text("payload".into()), Value::Text(String::new())),
                            ]);
                            let many = vec![one; ratls::eventlog::MAX_EVENTS + 100];
                            (fk, Value::Array(many))
                        }
                        _ => (fk, fv),
                    })
                    .collect();
                (k, Value::Map(fields))
            })
            .collect();
        let mut cb = Vec::new();
        ciborium::into_writer(&Value::Map(forged), &mut cb).unwrap();
        evidence::encode(&parsed.quote, &cb)
    };

    let certs = vec![
        ("gzip-bomb", with_evidence(base, gzip_bomb)),
        ("bstr-length-2^63", with_evidence(base, bstr_bomb)),
        ("map-length-2^64", with_evidence(base, map_bomb)),
        ("event-log-length-2^32", with_evidence(base, array_bomb)),
        (
            "event-log-over-max-events",
            with_evidence(base, too_many_events),
        ),
    ];
    for (name, der) in &certs {
        assert!(der.len() < 60 * 1024, "{name} is {} bytes", der.len());
    }
    certs
}

/// A certificate whose evidence extension is one byte over [`MAX_EVIDENCE_LEN`]: the
/// genuine quote and a claims buffer padded with a long byte string. Too large for a TLS
/// handshake message, so it is checked where certificates arrive as files or bodies.
pub fn oversized_evidence_cert(base: &RaTlsCert) -> Vec<u8> {
    let parsed = parse_ratls_cert(&base.cert_der).unwrap();
    let mut cb = Vec::new();
    let pad = MAX_EVIDENCE_LEN + 1 - parsed.quote.len();
    ciborium::into_writer(&Value::Bytes(vec![0x55; pad]), &mut cb).unwrap();
    let evidence = evidence::encode(&parsed.quote, &cb);
    assert!(evidence.len() > MAX_EVIDENCE_LEN);
    assert!(evidence.len() < ratls::cert::MAX_CERT_LEN - 4096);
    with_evidence(base, evidence)
}
