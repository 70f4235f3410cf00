//! Other stacks read teegate's RA-TLS certificates: Go's crypto/x509 (what Caddy, Kubernetes
//! tooling and Go SDKs use, and which refuses OID arcs over 63 bits), OpenSSL and Python
//! `cryptography` each parse a freshly issued certificate and find the CCC evidence
//! extension 2.23.133.5.4.9 with the same length teegate wrote.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use ratls::cert::oid;
use x509_parser::prelude::{FromDer, X509Certificate};

const EVIDENCE: &str = "2.23.133.5.4.9";

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors")
}

/// The evidence extension's value length as x509-parser sees it.
fn evidence_len(der: &[u8]) -> usize {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let want = oid::oid_content(oid::EVIDENCE_OID);
    let mut it = cert
        .extensions()
        .iter()
        .filter(|e| e.oid.as_bytes() == want.as_slice());
    let ext = it.next().expect("evidence extension");
    assert!(it.next().is_none());
    ext.value.len()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the Go program with Debian's toolchain, offline, caches in `dir`.
fn build_go(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/go/main.go");
    let bin = dir.join("interop-go");
    run(Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("HOME", dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GO111MODULE", "off"));
    bin
}

fn go_len(bin: &Path, pem: &Path) -> usize {
    let out = run(Command::new(bin).arg(pem));
    out.trim()
        .strip_prefix("evidence-len ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("go printed {out:?}"))
}

/// Reads the extension's length from OpenSSL's hex dump (`-certopt ext_dump`): the last
/// line's offset plus the bytes on it.
fn openssl_len(pem: &Path) -> usize {
    let text = run(Command::new("openssl")
        .args(["x509", "-text", "-noout", "-certopt", "ext_dump", "-in"])
        .arg(pem));
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != format!("{EVIDENCE}:"));
    assert!(
        lines.next().is_some(),
        "openssl shows no {EVIDENCE}:\n{text}"
    );
    let mut len = None;
    for line in lines {
        let Some((off, rest)) = line.trim().split_once(" - ") else {
            break;
        };
        let Ok(off) = usize::from_str_radix(off, 16) else {
            break;
        };
        let hex = rest.get(..38.min(rest.len())).unwrap_or(rest);
        let bytes = hex
            .split([' ', '-'])
            .filter(|t| t.len() == 2 && t.chars().all(|c| c.is_ascii_hexdigit()))
            .count();
        len = Some(off + bytes);
    }
    len.unwrap_or_else(|| panic!("no hex dump after {EVIDENCE}:\n{text}"))
}

fn python_len(pem: &Path) -> usize {
    // Debian's interpreter, which has python3-cryptography (scripts/test installs it).
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let code = "import sys\n\
        from cryptography import x509\n\
        c = x509.load_pem_x509_certificate(open(sys.argv[1], 'rb').read())\n\
        e = c.extensions.get_extension_for_oid(x509.ObjectIdentifier('2.23.133.5.4.9'))\n\
        print(len(e.value.value))\n";
    run(Command::new(python).args(["-c", code]).arg(pem))
        .trim()
        .parse()
        .expect("python printed a length")
}

#[test]
fn go_openssl_and_python_parse_a_fresh_teegate_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = support::ratls_cert(&support::identity(b"{\"name\":\"interop\"}", 3));
    let pem = dir.path().join("teegate.pem");
    std::fs::write(&pem, cert.cert_pem()).unwrap();
    let want = evidence_len(&cert.cert_der);

    let go = build_go(dir.path());
    assert_eq!(go_len(&go, &pem), want, "Go crypto/x509");
    assert_eq!(openssl_len(&pem), want, "openssl x509 -text");
    assert_eq!(python_len(&pem), want, "Python cryptography");

    // The same three tools agree on another implementation's CCC certificate, so the
    // length readers above measure what they claim to.
    let gramine = vectors().join("ccc-gramine-cert.pem");
    let der = pem::parse(std::fs::read(&gramine).unwrap())
        .unwrap()
        .into_contents();
    let g = evidence_len(&der);
    assert_eq!(go_len(&go, &gramine), g);
    assert_eq!(openssl_len(&gramine), g);
    assert_eq!(python_len(&gramine), g);
}

#[test]
fn no_oid_in_a_teegate_certificate_has_an_arc_over_63_bits() {
    // The old layout's app-claims extension sat under 2.25.<128-bit uuid>, which Go refuses
    // ("x509: malformed extension OID field").
    let cert = support::ratls_cert(&support::identity(b"{\"name\":\"oids\"}", 4));
    let (_, x509) = X509Certificate::from_der(&cert.cert_der).unwrap();
    let mut oids: Vec<&[u8]> = x509.extensions().iter().map(|e| e.oid.as_bytes()).collect();
    oids.push(x509.signature_algorithm.algorithm.as_bytes());
    oids.push(x509.public_key().algorithm.algorithm.as_bytes());
    for rdn in x509.subject().iter().chain(x509.issuer().iter()) {
        oids.extend(rdn.iter().map(|a| a.attr_type().as_bytes()));
    }
    assert!(oids.len() >= 5, "{oids:?}");
    for content in oids {
        let arcs = oid::arcs(content).expect("a well-formed OID");
        assert!(
            arcs.iter().all(|&a| a < 1 << 63),
            "OID {} has an arc over 63 bits",
            oid::dotted(content).unwrap_or_default()
        );
    }
    // Exactly one extension outside the standard ones: the CCC evidence.
    let private: Vec<String> = x509
        .extensions()
        .iter()
        .filter_map(|e| oid::dotted(e.oid.as_bytes()))
        .filter(|d| !d.starts_with("2.5.29."))
        .collect();
    assert_eq!(private, [EVIDENCE]);
}
