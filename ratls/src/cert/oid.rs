//! Object identifiers teegate certificates use. Every arc fits in 63 bits: Go's
//! crypto/x509 (and so Caddy, Kubernetes tooling, Go SDKs) refuses a certificate with a
//! larger arc, which is why the app claims live in the CCC claims buffer and not under a
//! private `2.25.<uuid>` OID.

/// TCG DICE conceptual-message-wrapper extension (CCC interoperable RA-TLS evidence).
pub const EVIDENCE_OID: &[u64] = &[2, 23, 133, 5, 4, 9];
/// TCG DICE endorsements (the quote's collateral).
pub const ENDORSEMENTS_OID: &[u64] = &[2, 23, 133, 5, 4, 2];
/// Dotted form of [`EVIDENCE_OID`].
pub const EVIDENCE_OID_STR: &str = "2.23.133.5.4.9";

/// DER content octets of an OID (no tag/length).
pub fn oid_content(arcs: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let (first, rest) = match arcs {
        [a, b, rest @ ..] => (u128::from(*a) * 40 + u128::from(*b), rest),
        _ => return out,
    };
    for arc in std::iter::once(first).chain(rest.iter().map(|&a| u128::from(a))) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut v = arc >> 7;
        while v > 0 {
            groups.push(((v & 0x7f) as u8) | 0x80);
            v >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    out
}

/// The arcs of DER OID content octets, `None` when malformed or an arc is over 128 bits.
pub fn arcs(content: &[u8]) -> Option<Vec<u128>> {
    let mut arcs: Vec<u128> = Vec::new();
    let mut acc: u128 = 0;
    for (i, b) in content.iter().enumerate() {
        acc = acc.checked_mul(128)?.checked_add(u128::from(b & 0x7f))?;
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = acc.min(80) / 40;
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        } else if i + 1 == content.len() {
            return None;
        }
    }
    (!arcs.is_empty()).then_some(arcs)
}

/// Dotted form of DER OID content octets.
pub fn dotted(content: &[u8]) -> Option<String> {
    let parts: Vec<String> = arcs(content)?.iter().map(|a| a.to_string()).collect();
    Some(parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_oid_encodes_like_der_and_reads_back() {
        // 2.23.133.5.4.9 -> 67 81 05 05 04 09
        let der = oid_content(EVIDENCE_OID);
        assert_eq!(der, vec![0x67, 0x81, 0x05, 0x05, 0x04, 0x09]);
        assert_eq!(dotted(&der).unwrap(), EVIDENCE_OID_STR);
        assert!(dotted(&[0x69, 0x81]).is_none());
    }

    #[test]
    fn arcs_read_the_128_bit_uuid_arc_the_old_extension_used() {
        // 2.25.<uuid>: what Go refused. `arcs` must see it, so tests can assert it is gone.
        let mut content = vec![0x69];
        let uuid: u128 = 0x4304a583_dcc8_4862_a3bc_f0156a665d73;
        let mut groups = vec![(uuid & 0x7f) as u8];
        let mut v = uuid >> 7;
        while v > 0 {
            groups.push(((v & 0x7f) as u8) | 0x80);
            v >>= 7;
        }
        content.extend(groups.iter().rev());
        let a = arcs(&content).unwrap();
        assert_eq!(a, vec![2, 25, uuid]);
        assert!(a[2] > u128::from(u64::MAX >> 1));
    }
}
