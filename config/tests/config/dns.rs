//! DnsConfig: computed defaults, and errors that name the bad key.

use crate::common::{assert_contains, error, parse};
use teegate_config::*;

const MIN: &str = "base_domain = \"apps.example.com\"\napi.token = \"dns-api-token-0123456789\"\n";

fn with(extra: &str) -> String {
    format!("{MIN}{extra}")
}

#[test]
fn defaults_are_computed_from_base_domain() {
    let cfg: DnsConfig = parse(MIN).unwrap();
    assert_eq!(cfg.listen_udp, "0.0.0.0:53".parse().unwrap());
    assert_eq!(cfg.listen_tcp, "0.0.0.0:53".parse().unwrap());
    let ns: Vec<&str> = cfg.ns_names.iter().map(DnsName::as_str).collect();
    assert_eq!(ns, ["ns1.apps.example.com"]);
    assert_eq!(
        cfg.soa.mname.as_ref().unwrap().as_str(),
        "ns1.apps.example.com"
    );
    assert_eq!(
        cfg.soa.rname.as_ref().unwrap().as_str(),
        "hostmaster.apps.example.com"
    );
    assert_eq!(cfg.soa.serial, 1);
    assert_eq!(cfg.ttl_secs, 60);
    assert_eq!(cfg.api.listen, "127.0.0.1:8053".parse().unwrap());
    assert!(cfg.api.token_file.is_none());
    assert!(cfg.api.allowed_hosts.is_empty());
    assert!(cfg.caa_account_uri.is_none());
    assert_eq!(cfg.caa_issuer.as_str(), "letsencrypt.org");
}

#[test]
fn caa_issuer_is_configurable_and_checked() {
    let cfg: DnsConfig = parse(&with("caa_issuer = \"pebble.example\"")).unwrap();
    assert_eq!(cfg.caa_issuer.as_str(), "pebble.example");
    let e = error::<DnsConfig>(&with("caa_issuer = \"localhost\""));
    assert_contains(&e, &["dns.caa_issuer", "not an issuer domain"]);
    let e = error::<DnsConfig>(&with("caa_issuer = \"Lets Encrypt\""));
    assert_contains(&e, &["dns.caa_issuer"]);
}

#[test]
fn soa_mname_follows_first_ns_name() {
    let cfg: DnsConfig = parse(&with(
        "ns_names = [\"a.ns.example.net\", \"b.ns.example.net\"]",
    ))
    .unwrap();
    assert_eq!(cfg.soa.mname.unwrap().as_str(), "a.ns.example.net");
}

#[test]
fn rejects_missing_base_domain() {
    assert_eq!(
        error::<DnsConfig>(""),
        "missing required key dns.base_domain"
    );
}

#[test]
fn rejects_unknown_key_naming_it() {
    let e = error::<DnsConfig>(&with("[soa]\nserail = 3"));
    assert_contains(&e, &["unknown key dns.soa.serail", "serial"]);
}

#[test]
fn rejects_bad_values_naming_the_key() {
    let e = error::<DnsConfig>(&with(
        "gateway_addrs = [\"203.0.113.1\", \"gw.example.com\"]",
    ));
    assert_contains(&e, &["dns.gateway_addrs[1]"]);
    let e = error::<DnsConfig>(&with("gateway_addrs = [\"0.0.0.0\"]"));
    assert_contains(&e, &["dns.gateway_addrs[0]", "not a usable"]);
    let e = error::<DnsConfig>(&with("ttl_secs = 0"));
    assert_contains(&e, &["dns.ttl_secs", "between 1 and 86400"]);
    let e = error::<DnsConfig>(&with("ns_names = [\"ns1..example.com\"]"));
    assert_contains(&e, &["dns.ns_names[0]", "not a valid DNS name"]);
    let e = error::<DnsConfig>(&with("listen_udp = \"0.0.0.0:65536\""));
    assert_contains(&e, &["dns.listen_udp"]);
    let e = error::<DnsConfig>(&with("[soa]\nrefresh = 100\nexpire = 50"));
    assert_contains(&e, &["dns.soa.expire", "greater than refresh"]);
    let e = error::<DnsConfig>(&with("[soa]\nserial = -1"));
    assert_contains(&e, &["dns.soa.serial"]);
    let e = error::<DnsConfig>(&with("caa_account_uri = \"http://acme.example/acct/1\""));
    assert_contains(&e, &["dns.caa_account_uri", "https://"]);
    let e = error::<DnsConfig>(&with("ns_addrs = [\"::\"]"));
    assert_contains(&e, &["dns.ns_addrs[0]", "not a usable"]);
    let many = (1..=17)
        .map(|i| format!("\"198.51.100.{i}\""))
        .collect::<Vec<_>>();
    let e = error::<DnsConfig>(&with(&format!("ns_addrs = [{}]", many.join(", "))));
    assert_contains(&e, &["dns.ns_addrs", "at most 16"]);
}

#[test]
fn api_requires_a_token_even_on_loopback_naming_the_key() {
    let base = "base_domain = \"apps.example.com\"\n";
    for api in [
        "",
        "[api]\nlisten = \"127.0.0.1:8053\"",
        "[api]\nlisten = \"0.0.0.0:8053\"",
    ] {
        let e = error::<DnsConfig>(&format!("{base}{api}"));
        assert_contains(&e, &["dns.api.token_file", "required"]);
    }
    let cfg: DnsConfig = parse(&format!(
        "{base}[api]\nlisten = \"0.0.0.0:8053\"\ntoken = \"dns-api-token-0123456789\"\nallowed_hosts = [\"dns-api.internal\"]"
    ))
    .unwrap();
    assert!(!format!("{cfg:?}").contains("dns-api-token-0123456789"));
    assert_eq!(cfg.api.allowed_hosts[0].as_str(), "dns-api.internal");
}

#[test]
fn api_token_file_is_read_at_load_and_checked_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "dns-api-token-from-a-file-0123\n").unwrap();
    let base = "base_domain = \"apps.example.com\"\n";
    let with_file =
        |path: &std::path::Path| format!("{base}[api]\ntoken_file = \"{}\"\n", path.display());
    let cfg: DnsConfig = parse(&with_file(&file)).unwrap();
    assert_eq!(
        cfg.api.token.as_ref().unwrap().expose(),
        "dns-api-token-from-a-file-0123",
        "the trailing newline is dropped"
    );
    assert!(!format!("{cfg:?}").contains("from-a-file"));

    let e = error::<DnsConfig>(&with_file(&dir.path().join("absent")));
    assert_contains(&e, &["dns.api.token_file", "absent"]);
    std::fs::write(&file, "short\n").unwrap();
    let e = error::<DnsConfig>(&with_file(&file));
    assert_contains(&e, &["dns.api.token_file", "at least 16"]);
    assert!(!e.contains("short"), "{e}");
    std::fs::write(&file, "\n").unwrap();
    assert_contains(
        &error::<DnsConfig>(&with_file(&file)),
        &["dns.api.token_file", "empty"],
    );
    std::fs::write(&file, "dns-api-token-from-a-file-0123\n").unwrap();
    let e = error::<DnsConfig>(&format!(
        "{}token = \"dns-api-token-0123456789\"\n",
        with_file(&file)
    ));
    assert_contains(&e, &["dns.api.token_file", "not both"]);
}
