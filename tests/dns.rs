//! `teegate dns` end to end: a real process on loopback, queried with `dig` (Debian
//! `bind9-dnsutils`), records changed through the record API from another process.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use dns::api::{challenge_record_name, AcmeDnsClient, HttpAcmeDnsClient};
use support::*;

const TOKEN: &str = "dns-e2e-token-0123456789abcdef";

struct Dns {
    proc: Proc,
    dns: SocketAddr,
    api: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Starts `teegate dns` with every listener on 127.0.0.1 port 0 and reads the bound
/// addresses from its output.
fn start_dns() -> Dns {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dns.toml");
    std::fs::write(
        &path,
        format!(
            "base_domain = \"{BASE}\"\n\
             listen_udp = \"127.0.0.1:0\"\n\
             listen_tcp = \"127.0.0.1:0\"\n\
             gateway_addrs = [\"192.0.2.10\", \"2001:db8::10\"]\n\
             ns_names = [\"ns1.{BASE}\", \"ns2.{BASE}\"]\n\
             ns_addrs = [\"198.51.100.53\"]\n\
             ttl_secs = 30\n\
             [api]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
        ),
    )
    .unwrap();
    let proc = spawn_teegate(
        &["dns", "--config", path.to_str().unwrap()],
        "ready",
        Duration::from_secs(20),
    );
    let log = proc.log();
    let addr = |label: &str| -> SocketAddr {
        log.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.trim().trim_start_matches("http://"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {label} line in:\n{log}"))
    };
    let (udp, tcp, api) = (addr("udp "), addr("tcp "), addr("api "));
    assert_eq!(udp, tcp, "UDP and TCP share a port");
    Dns {
        proc,
        dns: udp,
        api,
        _dir: dir,
    }
}

/// `dig @127.0.0.1 -p PORT +norec +time=2 +tries=2 <args>`; the whole output.
fn dig(at: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", at.ip()))
        .args([
            "-p",
            &at.port().to_string(),
            "+norec",
            "+time=2",
            "+tries=2",
        ])
        .args(args)
        .output()
        .expect("run dig (Debian package bind9-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dig {args:?} failed:\n{text}");
    text
}

fn short(at: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut full = vec!["+short"];
    full.extend_from_slice(args);
    let mut lines: Vec<String> = dig(at, &full).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

fn assert_status(out: &str, status: &str) {
    assert!(
        out.contains(&format!("status: {status}")),
        "expected status {status}:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_sees_the_zone_served_by_teegate_dns() {
    let mut d = start_dns();
    let at = d.dns;
    let app = format!("0123456789abcdef0123456789abcdef01234567.{BASE}");

    // Wildcard and apex addresses, authoritative, no recursion.
    assert_eq!(short(at, &[&app, "A"]), ["192.0.2.10"]);
    assert_eq!(short(at, &["+tcp", &app, "AAAA"]), ["2001:db8::10"]);
    assert_eq!(short(at, &[BASE, "A"]), ["192.0.2.10"]);
    let full = dig(at, &[&app, "A"]);
    assert_status(&full, "NOERROR");
    assert!(full.contains(" aa"), "AA flag:\n{full}");
    assert!(!full.contains(" ra"), "no RA flag:\n{full}");

    // SOA and NS.
    let soa = short(at, &[BASE, "SOA"]);
    assert_eq!(soa.len(), 1);
    assert!(
        soa[0].starts_with(&format!("ns1.{BASE}. hostmaster.{BASE}. ")),
        "{soa:?}"
    );
    assert_eq!(
        short(at, &[BASE, "NS"]),
        [format!("ns1.{BASE}."), format!("ns2.{BASE}.")]
    );
    // The zone's own name servers resolve to ns_addrs (the glue), not to the gateways.
    assert_eq!(short(at, &[&format!("ns2.{BASE}"), "A"]), ["198.51.100.53"]);

    // TXT set and cleared through the API, from this process.
    let api = HttpAcmeDnsClient::new(&format!("http://{}", d.api), Some(TOKEN.into())).unwrap();
    let challenge = challenge_record_name(&format!("*.{BASE}"));
    api.set_txt(&challenge, vec!["dGVzdC1kaWdlc3Q".into()])
        .await
        .unwrap();
    assert_eq!(short(at, &[&challenge, "TXT"]), ["\"dGVzdC1kaWdlc3Q\""]);
    api.clear_txt(&challenge).await.unwrap();
    let nodata = dig(at, &[&challenge, "TXT"]);
    assert_status(&nodata, "NOERROR");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");

    // CAA once the account is set.
    assert!(short(at, &[BASE, "CAA"]).is_empty());
    api.set_caa_account("https://acme.example/acme/acct/1234")
        .await
        .unwrap();
    let caa = short(at, &[BASE, "CAA"]);
    let value =
        "letsencrypt.org; accounturi=https://acme.example/acme/acct/1234; validationmethods=dns-01";
    assert_eq!(
        caa,
        [
            format!("0 issue \"{value}\""),
            format!("0 issuewild \"{value}\"")
        ]
    );

    // A name outside the zone is refused; a non-host underscore name does not exist.
    assert_status(&dig(at, &["www.example.com", "A"]), "REFUSED");
    assert_status(&dig(at, &["+tcp", "example.org", "SOA"]), "REFUSED");
    assert_status(&dig(at, &[&format!("_dmarc.{BASE}"), "TXT"]), "NXDOMAIN");

    // A wrong token changes nothing.
    let wrong = HttpAcmeDnsClient::new(&format!("http://{}", d.api), Some("nope".into())).unwrap();
    assert!(wrong.set_txt(&challenge, vec!["x".into()]).await.is_err());
    assert_eq!(dig(at, &["+short", &challenge, "TXT"]).trim(), "");

    // SIGTERM: a clean, prompt exit.
    let status = d
        .proc
        .stop(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", d.proc.log());
}
