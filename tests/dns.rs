//! `teegate dns` end to end: a real process on loopback, queried with `dig` (Debian
//! `bind9-dnsutils`), records changed through the record API from another process; calls
//! without the token, with a wrong one, or with a rebinding `Host` change nothing.

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

/// `TOKEN` in a 0600 file, as `teegate dev` writes it.
fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("dns-api-token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
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
             [api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token_file(dir.path()).display()
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

/// One raw HTTP/1.1 request to the record API (`headers` end with `\r\n`); the status.
fn api_call(api: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(api).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_api_refuses_no_token_a_wrong_token_and_a_rebinding_host() {
    let mut d = start_dns();
    let at = d.dns;
    let api = d.api;
    let app = format!("0123456789abcdef0123456789abcdef01234567.{BASE}");
    let challenge = challenge_record_name(&format!("*.{BASE}"));
    let good_host = format!("Host: {api}\r\n");
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    // What an attacker would write: its own challenge value, its CA account, its address.
    let writes = [
        (
            "PUT",
            format!("/v1/acme-challenge/{challenge}"),
            r#"{"values":["YXR0YWNrZXItY2hhbGxlbmdl"]}"#,
        ),
        (
            "PUT",
            "/v1/caa-account".to_owned(),
            r#"{"account_uri":"https://evil-ca.example/acct/666"}"#,
        ),
        (
            "PUT",
            "/v1/gateway-addrs".to_owned(),
            r#"{"addrs":["203.0.113.66"]}"#,
        ),
    ];
    let attempts = [
        ("no token", good_host.clone(), 401),
        (
            "wrong token",
            format!("{good_host}Authorization: Bearer wrong-token-wrong-token-0123\r\n"),
            401,
        ),
        (
            "token as Basic",
            format!("{good_host}Authorization: Basic {TOKEN}\r\n"),
            401,
        ),
        (
            "right token, rebinding Host",
            format!("Host: attacker.example\r\n{bearer}"),
            421,
        ),
        (
            "right token, rebinding Host with the API's port",
            format!("Host: attacker.example:{}\r\n{bearer}", api.port()),
            421,
        ),
    ];
    for (what, headers, want) in &attempts {
        for (method, path, body) in &writes {
            let got = api_call(api, method, path, headers, body);
            assert_eq!(got, *want, "{what}: {method} {path}");
        }
        assert_eq!(
            api_call(api, "GET", "/v1/zone", headers, ""),
            *want,
            "{what}: the zone view is not readable either"
        );
        // The zone is unchanged, as DNS answers it.
        assert_eq!(dig(at, &["+short", &challenge, "TXT"]).trim(), "", "{what}");
        assert!(short(at, &[BASE, "CAA"]).is_empty(), "{what}");
        assert_eq!(short(at, &[&app, "A"]), ["192.0.2.10"], "{what}");
    }

    // The right token and Host still work, and DNS serves what they set.
    for (method, path, body) in &writes[..2] {
        let headers = format!("{good_host}{bearer}");
        assert_eq!(api_call(api, method, path, &headers, body), 204, "{path}");
    }
    let localhost = format!("Host: localhost:{}\r\n{bearer}", api.port());
    assert_eq!(api_call(api, "GET", "/v1/zone", &localhost, ""), 200);
    assert_eq!(
        short(at, &[&challenge, "TXT"]),
        ["\"YXR0YWNrZXItY2hhbGxlbmdl\""]
    );
    assert_eq!(short(at, &[BASE, "CAA"]).len(), 2);
    assert!(
        !d.proc.log().contains(TOKEN),
        "the token never appears in the log"
    );
    assert!(d.proc.stop(Duration::from_secs(10)).is_some());
}

#[test]
fn teegate_dns_does_not_start_without_a_token_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dns.toml");
    std::fs::write(
        &path,
        format!(
            "base_domain = \"{BASE}\"\nlisten_udp = \"127.0.0.1:0\"\nlisten_tcp = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_teegate"))
        .args(["dns", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("dns.api.token_file"), "{err}");
    assert!(!err.contains("ready"), "{err}");
}
