//! GatewayConfig: defaults, and errors that name the bad key.

use crate::common::{assert_contains, error, parse, MEASUREMENT};
use teegate_config::*;

const MIN: &str = "base_domain = \"apps.example.com\"\n";

fn with(extra: &str) -> String {
    format!("{MIN}{extra}")
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let cfg: GatewayConfig = parse(MIN).unwrap();
    assert_eq!(cfg.listen_https, "0.0.0.0:443".parse().unwrap());
    assert_eq!(cfg.listen_http, "0.0.0.0:80".parse().unwrap());
    assert_eq!(cfg.listen_registration, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(cfg.listen_admin, "127.0.0.1:9443".parse().unwrap());
    assert_eq!(
        cfg.data_dir,
        std::path::Path::new("/var/lib/teegate/gateway")
    );
    assert_eq!(cfg.workers, 1);
    assert_eq!(cfg.grace_period_secs, 10);
    assert!(cfg.admin_token.is_none());
    assert!(cfg.access_log);
    assert_eq!(cfg.tls.mode, TlsMode::Acme);
    assert_eq!(cfg.tls.acme.directory_url.as_str(), LETS_ENCRYPT_DIRECTORY);
    assert_eq!(cfg.tls.acme.renew_at_fraction, 0.666);
    assert_eq!(cfg.limits, LimitsConfig::default());
    assert_eq!(cfg.limits.max_header_bytes, 16384);
    assert_eq!(cfg.upstream.balance, Balance::RoundRobin);
    assert_eq!(cfg.upstream.retries, 1);
    assert_eq!(cfg.registration.lease_secs, 60);
    assert!(!cfg.custom_domains.enabled);
    assert_eq!(cfg.store, StoreConfig::Embedded);
}

#[test]
fn verifier_defaults_deny_everything_and_accept_only_up_to_date() {
    let cfg: GatewayConfig = parse(MIN).unwrap();
    let v = &cfg.verifier;
    assert!(!v.allow_simulated);
    assert_eq!(v.tcb_statuses, [TcbStatusName::UpToDate]);
    assert!(v.mrtd.denies_all() && v.rtmr0.denies_all() && v.rtmr1.denies_all());
    assert!(v.rtmr2.denies_all() && v.compose_hashes.denies_all() && v.app_ids.denies_all());
    assert!(!v.mrtd.allows(&Measurement::parse(MEASUREMENT).unwrap()));
}

#[test]
fn rejects_unknown_key_naming_it() {
    let e = error::<GatewayConfig>(&with("listen_htps = \"0.0.0.0:443\""));
    assert_contains(&e, &["unknown key gateway.listen_htps", "listen_https"]);
}

#[test]
fn rejects_unknown_nested_key_naming_its_full_path() {
    let e = error::<GatewayConfig>(&with("[limits]\nmax_header_bytez = 1"));
    assert_contains(&e, &["unknown key gateway.limits.max_header_bytez"]);
    let e = error::<GatewayConfig>(&with("[store.etcd]\nendpoints = []\nprefixx = \"/x\""));
    assert_contains(&e, &["unknown key gateway.store.etcd.prefixx"]);
}

#[test]
fn web_pages_are_on_by_default_and_kms_roots_must_be_paths() {
    let cfg: GatewayConfig = parse(&with("")).unwrap();
    assert!(cfg.web.enabled && cfg.web.kms_root_ca.is_empty());
    let cfg: GatewayConfig = parse(&with(
        "[web]\nenabled = false\nkms_root_ca = [\"/etc/root.pem\"]",
    ))
    .unwrap();
    assert!(!cfg.web.enabled);
    assert_eq!(
        cfg.web.kms_root_ca,
        [std::path::PathBuf::from("/etc/root.pem")]
    );
    let e = error::<GatewayConfig>(&with("[web]\nkms_root_ca = [\"\"]"));
    assert_contains(&e, &["gateway.web.kms_root_ca"]);
    let e = error::<GatewayConfig>(&with("[web]\nkms_roots = []"));
    assert_contains(&e, &["kms_roots"]);
}

#[test]
fn rejects_missing_base_domain() {
    let e = error::<GatewayConfig>("");
    assert_eq!(e, "missing required key gateway.base_domain");
}

#[test]
fn rejects_invalid_base_domain_saying_why() {
    let e = error::<GatewayConfig>("base_domain = \"Example..com\"");
    assert_contains(
        &e,
        &["invalid config: gateway.base_domain: \"Example..com\" is not a valid DNS name"],
    );
    let e = error::<GatewayConfig>("base_domain = \"Apps.example.com\"");
    assert_contains(&e, &["gateway.base_domain", "lowercase"]);
}

#[test]
fn rejects_port_out_of_range() {
    let e = error::<GatewayConfig>(&with("listen_https = \"0.0.0.0:70000\""));
    assert_contains(
        &e,
        &["gateway.listen_https", "0.0.0.0:70000", "socket address"],
    );
}

#[test]
fn rejects_wrong_type_naming_the_key() {
    let e = error::<GatewayConfig>(&with("[limits]\nmax_header_bytes = \"big\""));
    assert_contains(&e, &["gateway.limits.max_header_bytes", "invalid type"]);
}

#[test]
fn rejects_out_of_range_limits() {
    let e = error::<GatewayConfig>(&with("[limits]\nmax_header_bytes = 100"));
    assert_contains(
        &e,
        &[
            "gateway.limits.max_header_bytes",
            "between 1024 and 1048576",
            "100",
        ],
    );
    let e = error::<GatewayConfig>(&with("workers = 0"));
    assert_contains(&e, &["gateway.workers", "between 1 and 256"]);
    let e = error::<GatewayConfig>(&with("[limits]\nidle_timeout_secs = 0"));
    assert_contains(&e, &["gateway.limits.idle_timeout_secs"]);
    let e = error::<GatewayConfig>(&with("[upstream]\nretries = 6"));
    assert_contains(&e, &["gateway.upstream.retries", "between 0 and 5"]);
    let e = error::<GatewayConfig>(&with(
        "[limits]\nmax_connections = 10\nmax_connections_per_app = 11",
    ));
    assert_contains(&e, &["gateway.limits.max_connections_per_app"]);
}

#[test]
fn front_door_limits_default_and_refuse_out_of_range_naming_the_key() {
    let cfg: GatewayConfig = parse(&with("")).unwrap();
    assert_eq!(cfg.limits.header_timeout_secs, 15);
    assert_eq!(cfg.limits.max_connections_per_ip, 256);
    assert_eq!(cfg.limits.max_h2_streams, 100);
    let cfg: GatewayConfig = parse(&with("[limits]\nheader_timeout_secs = 1")).unwrap();
    assert_eq!(
        cfg.limits.header_timeout_secs, 1,
        "1 s is allowed (tests use it)"
    );
    let e = error::<GatewayConfig>(&with("[limits]\nheader_timeout_secs = 0"));
    assert_contains(
        &e,
        &["gateway.limits.header_timeout_secs", "between 1 and 3600"],
    );
    let e = error::<GatewayConfig>(&with(
        "[limits]\nmax_connections = 100\nmax_connections_per_app = 100\nmax_connections_per_ip = 101",
    ));
    assert_contains(
        &e,
        &["gateway.limits.max_connections_per_ip", "between 1 and 100"],
    );
    let e = error::<GatewayConfig>(&with("[limits]\nmax_h2_streams = 0"));
    assert_contains(&e, &["gateway.limits.max_h2_streams", "between 1 and 1000"]);
}

#[test]
fn rejects_two_listeners_on_one_address() {
    let e = error::<GatewayConfig>(&with("listen_admin = \"0.0.0.0:443\""));
    assert_contains(
        &e,
        &[
            "gateway.listen_admin",
            "already used by gateway.listen_https",
        ],
    );
    // Port 0 ("any free port") may repeat.
    parse::<GatewayConfig>(&with(
        "listen_https = \"127.0.0.1:0\"\nlisten_http = \"127.0.0.1:0\"",
    ))
    .unwrap();
}

#[test]
fn rejects_unacceptable_tcb_status_naming_the_key() {
    let e = error::<GatewayConfig>(&with("[verifier]\ntcb_statuses = [\"Revoked\"]"));
    assert_contains(
        &e,
        &[
            "gateway.verifier.tcb_statuses[0]",
            "\"Revoked\" is not an acceptable TCB status",
        ],
    );
    let e = error::<GatewayConfig>(&with(
        "[verifier]\ntcb_statuses = [\"UpToDate\", \"OutOfDate\"]",
    ));
    assert_contains(&e, &["gateway.verifier.tcb_statuses[1]", "OutOfDate"]);
    let e = error::<GatewayConfig>(&with("[verifier]\ntcb_statuses = []"));
    assert_contains(&e, &["gateway.verifier.tcb_statuses", "at least one"]);
}

#[test]
fn rejects_invalid_hex_in_allowlist() {
    let bad = format!("{}zz", &MEASUREMENT[..94]);
    let e = error::<GatewayConfig>(&with(&format!("[verifier]\nrtmr1 = [\"{bad}\"]")));
    assert_contains(&e, &["gateway.verifier.rtmr1[0]", "not hex"]);
    let e = error::<GatewayConfig>(&with("[verifier]\nmrtd = \"all\""));
    assert_contains(&e, &["gateway.verifier.mrtd", "\"any\" or a list"]);
}

#[test]
fn app_id_allowlist_accepts_0x_and_uppercase() {
    let cfg: GatewayConfig = parse(&with(
        "[verifier]\napp_ids = [\"0xE7EBC629EDC2FD03A11694F92C7BA45DC80B47B3\"]",
    ))
    .unwrap();
    let id = AppId::parse(crate::common::APP_ID).unwrap();
    assert!(cfg.verifier.app_ids.allows(&id));
    assert_eq!(id.to_string(), crate::common::APP_ID);
}

#[test]
fn rejects_plain_http_pccs_except_to_loopback() {
    let e = error::<GatewayConfig>(&with(
        "[verifier.collateral]\npccs_url = \"http://pccs.example.com/\"",
    ));
    assert_contains(&e, &["gateway.verifier.collateral.pccs_url", "https://"]);
    parse::<GatewayConfig>(&with(
        "[verifier.collateral]\npccs_url = \"http://127.0.0.1:8081/\"",
    ))
    .unwrap();
}

#[test]
fn files_mode_requires_cert_and_key() {
    let e = error::<GatewayConfig>(&with("[tls]\nmode = \"files\"\ncert_file = \"/c.pem\""));
    assert_contains(
        &e,
        &["gateway.tls.key_file", "required when tls.mode = \"files\""],
    );
    let e = error::<GatewayConfig>(&with("[tls]\ncert_file = \"/c.pem\""));
    assert_contains(&e, &["gateway.tls.cert_file", "only used"]);
    let cfg: GatewayConfig = parse(&with(
        "[tls]\nmode = \"files\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"",
    ))
    .unwrap();
    assert_eq!(cfg.tls.mode, TlsMode::Files);
    let e = error::<GatewayConfig>(&with("[tls]\nmode = \"manual\""));
    assert_contains(&e, &["gateway.tls.mode", "manual"]);
}

#[test]
fn rejects_bad_acme_settings() {
    let e = error::<GatewayConfig>(&with("[tls.acme]\nrenew_at_fraction = 1.0"));
    assert_contains(&e, &["gateway.tls.acme.renew_at_fraction"]);
    let e = error::<GatewayConfig>(&with("[tls.acme]\ncontact = [\"ops@example.com\"]"));
    assert_contains(&e, &["gateway.tls.acme.contact[0]", "mailto:"]);
}

#[test]
fn admin_token_must_be_long_enough() {
    let e = error::<GatewayConfig>(&with("admin_token = \"short\""));
    assert_contains(&e, &["gateway.admin_token", "at least 16"]);
    assert!(!e.contains("short"), "the token leaked into the error: {e}");
}

#[test]
fn secrets_are_hidden_in_debug_output() {
    let cfg: GatewayConfig = parse(&with(
        "admin_token = \"admin-token-0123456789\"\n[store.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nusername = \"u\"\npassword = \"etcd-password-xyz\"",
    ))
    .unwrap();
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("admin-token-0123456789"), "{debug}");
    assert!(!debug.contains("etcd-password-xyz"), "{debug}");
    assert!(debug.contains("***"));
    assert_eq!(
        cfg.admin_token.as_ref().map(Secret::expose),
        Some("admin-token-0123456789")
    );
}

#[test]
fn etcd_store_is_checked() {
    let e = error::<GatewayConfig>(&with("[store.etcd]\nendpoints = []"));
    assert_contains(&e, &["gateway.store.etcd.endpoints", "at least one"]);
    let e = error::<GatewayConfig>(&with("[store.etcd]\nprefix = \"/x\""));
    assert_eq!(e, "missing required key gateway.store.etcd.endpoints");
    let e = error::<GatewayConfig>(&with("[store.etcd]\nendpoints = [\"etcd:2379\"]"));
    assert_contains(&e, &["gateway.store.etcd.endpoints[0]", "not a valid URL"]);
    let e = error::<GatewayConfig>(&with(
        "[store.etcd]\nendpoints = [\"http://e:2379\"]\nprefix = \"teegate\"",
    ));
    assert_contains(&e, &["gateway.store.etcd.prefix"]);
    let e = error::<GatewayConfig>(&with(
        "[store.etcd]\nendpoints = [\"http://e:2379\"]\nusername = \"u\"",
    ));
    assert_contains(&e, &["gateway.store.etcd.password", "required"]);
    let e = error::<GatewayConfig>(&with(
        "[store.etcd]\nendpoints = [\"http://e:2379\"]\n[store.etcd.tls]\ncert_file = \"/c\"",
    ));
    assert_contains(&e, &["gateway.store.etcd.tls.key_file"]);
    let e = error::<GatewayConfig>(&with("store = \"etcdd\""));
    assert_contains(&e, &["gateway.store", "etcdd"]);
    let cfg: GatewayConfig = parse(&with("store = \"embedded\"")).unwrap();
    assert_eq!(cfg.store, StoreConfig::Embedded);
}

#[test]
fn custom_domain_patterns_are_checked() {
    let e = error::<GatewayConfig>(&with("[custom_domains]\nallow = [\"exa mple.com\"]"));
    assert_contains(
        &e,
        &["gateway.custom_domains.allow[0]", "bad domain pattern"],
    );
    let e = error::<GatewayConfig>(&with(
        "[custom_domains]\nask_url = \"http://ask.example.com/\"",
    ));
    assert_contains(&e, &["gateway.custom_domains.ask_url"]);
}

#[test]
fn syntax_errors_give_line_and_column() {
    let e = error::<GatewayConfig>("base_domain = \"a.com\"\nworkers = = 2");
    assert_contains(&e, &["TOML syntax error at line 2"]);
}

#[test]
fn dns_api_url_needs_a_token_and_reads_it_from_a_file() {
    let acme = "[tls.acme]\ndns_api_url = \"http://127.0.0.1:8053\"\n";
    let e = error::<GatewayConfig>(&with(acme));
    assert_contains(&e, &["gateway.tls.acme.dns_api_token_file", "required"]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dns-api-token");
    std::fs::write(&file, "dns-api-token-from-a-file-0123\n").unwrap();
    let cfg: GatewayConfig = parse(&with(&format!(
        "{acme}dns_api_token_file = \"{}\"\n",
        file.display()
    )))
    .unwrap();
    assert_eq!(
        cfg.tls.acme.dns_api_token.as_ref().unwrap().expose(),
        "dns-api-token-from-a-file-0123"
    );
    assert!(!format!("{cfg:?}").contains("from-a-file"));
    let e = error::<GatewayConfig>(&with(&format!(
        "{acme}dns_api_token_file = \"{}\"\n",
        dir.path().join("missing").display()
    )));
    assert_contains(&e, &["gateway.tls.acme.dns_api_token_file", "missing"]);
    // Without dns_api_url no token is asked for.
    assert!(parse::<GatewayConfig>(MIN).is_ok());
}

#[test]
fn attestation_is_off_by_default_and_names_its_bad_keys() {
    let cfg: GatewayConfig = parse(MIN).unwrap();
    assert!(cfg.attestation.is_none() && cfg.seal_key_file.is_none());
    let cfg: GatewayConfig =
        parse(&with("[attestation]\nguest_api = \"/run/teegate.sock\"")).unwrap();
    let att = cfg.attestation.unwrap();
    assert_eq!(att.guest_api, std::path::Path::new("/run/teegate.sock"));
    assert_eq!(att.key_path, DEFAULT_SEAL_KEY_PATH);
    let e = error::<GatewayConfig>(&with("[attestation]\nkey_path = \"gateway/store\""));
    assert_contains(&e, &["guest_api"]);
    let e = error::<GatewayConfig>(&with(
        "[attestation]\nguest_api = \"/run/s\"\nkey_path = \"has space\"",
    ));
    assert_contains(&e, &["gateway.attestation.key_path"]);
    // An attested gateway's key comes from its guest API: a key file beside it is an error.
    let e = error::<GatewayConfig>(&with(
        "seal_key_file = \"/k\"\n[attestation]\nguest_api = \"/run/s\"",
    ));
    assert_contains(&e, &["gateway.seal_key_file", "[attestation]"]);
    let cfg: GatewayConfig = parse(&with("seal_key_file = \"/etc/teegate/seal.key\"")).unwrap();
    assert_eq!(
        cfg.seal_key_file.as_deref(),
        Some(std::path::Path::new("/etc/teegate/seal.key"))
    );
}
