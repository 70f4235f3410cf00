//! Every shipped example parses and holds what its comments say.

use std::path::{Path, PathBuf};

use crate::common::{parse, parse_env, APP_ID, COMPOSE_HASH, MEASUREMENT};
use teegate_config::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(example(name)).expect("example file is readable")
}

#[test]
fn gateway_example_parses_with_its_values() {
    let cfg: GatewayConfig = parse_env(
        &read("gateway.toml"),
        &[("TEEGATE_GATEWAY__STORE__ETCD__PASSWORD", "etcd-password")],
    )
    .unwrap();
    assert_eq!(cfg.base_domain.as_str(), "apps.example.com");
    assert_eq!(cfg.listen_admin, "127.0.0.1:9443".parse().unwrap());
    assert_eq!(cfg.workers, 4);
    assert_eq!(cfg.tls.mode, TlsMode::Acme);
    assert_eq!(cfg.tls.acme.contact, ["mailto:ops@example.com"]);
    assert_eq!(cfg.upstream.balance, Balance::LeastConnections);
    assert!(cfg.custom_domains.enabled);
    assert!(cfg.custom_domains.allow[1].matches("a.customers.example.net"));
    assert_eq!(
        cfg.verifier.tcb_statuses,
        [TcbStatusName::UpToDate, TcbStatusName::SWHardeningNeeded]
    );
    assert!(cfg
        .verifier
        .mrtd
        .allows(&Measurement::parse(MEASUREMENT).unwrap()));
    assert!(cfg.verifier.app_ids.is_any());
    assert!(cfg.admin_token.is_none());
    match &cfg.store {
        StoreConfig::Etcd(etcd) => {
            assert_eq!(etcd.endpoints.len(), 2);
            assert_eq!(etcd.username.as_deref(), Some("teegate"));
            assert!(etcd.tls.as_ref().unwrap().ca_file.is_some());
        }
        other => panic!("expected etcd, got {other:?}"),
    }
}

#[test]
fn sidecar_example_parses_with_its_values() {
    let cfg: SidecarConfig = parse(&read("sidecar.toml")).unwrap();
    assert_eq!(cfg.compose_file, Path::new("/etc/teegate/app-compose.json"));
    assert_eq!(cfg.kms_url.host(), "kms.example.com");
    assert_eq!(cfg.gateways.len(), 2);
    assert_eq!(cfg.front_addr(), "203.0.113.10:8443".parse().unwrap());
    assert_eq!(cfg.quote_provider, QuoteProviderConfig::default());
    assert_eq!(cfg.heartbeat_secs, 20);
    assert!(cfg.verifier.rtmr0.is_any());
    assert_eq!(cfg.verifier.collateral.files.len(), 1);
}

#[test]
fn kms_example_parses_with_its_values() {
    let cfg: KmsConfig = parse(&read("kms.toml")).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8000".parse().unwrap());
    assert_eq!(
        cfg.audit_log_path(),
        Path::new("/var/lib/teegate/kms/audit.jsonl")
    );
    assert_eq!(cfg.policy.apps.len(), 2);
    let app = cfg.policy.apps.get(&AppId::parse(APP_ID).unwrap()).unwrap();
    assert!(app
        .compose_hashes
        .allows(&ComposeHash::parse(COMPOSE_HASH).unwrap()));
    assert_eq!(app.min_tcb_status, TcbStatusName::SWHardeningNeeded);
    assert!(!app.allow_simulated);
    // The 0x-prefixed uppercase key was normalised.
    let other = AppId::parse("d9298a10d1b0735837dc4bd85dac641b0f3cef27").unwrap();
    assert!(cfg.policy.apps.get(&other).unwrap().allow_simulated);
    assert!(cfg.policy.kms_measurements.rtmr0.is_any());
    assert_eq!(cfg.webhook.as_ref().unwrap().timeout_ms, 2000);
}

#[test]
fn dns_example_parses_with_its_values() {
    let cfg: DnsConfig = parse_env(
        &read("dns.toml"),
        &[("TEEGATE_DNS__API__TOKEN", "dns-api-token-0123456789")],
    )
    .unwrap();
    assert_eq!(cfg.base_domain.as_str(), "apps.example.com");
    assert_eq!(cfg.ns_names.len(), 2);
    assert_eq!(
        cfg.soa.mname.as_ref().unwrap().as_str(),
        "ns1.apps.example.com"
    );
    assert_eq!(cfg.soa.serial, 2024060101);
    assert_eq!(cfg.gateway_addrs.len(), 3);
    assert!(cfg.api.token_file.is_none());
}

#[test]
fn examples_load_from_files() {
    let env = [(
        "TEEGATE_GATEWAY__STORE__ETCD__PASSWORD".to_string(),
        "etcd-password".to_string(),
    )];
    let cfg: GatewayConfig = load_with_env(&example("gateway.toml"), env).unwrap();
    assert_eq!(cfg.limits.max_header_bytes, 16384);
    let cfg: KmsConfig = load_with_env(&example("kms.toml"), Vec::new()).unwrap();
    assert_eq!(cfg.policy.apps.len(), 2);
}

#[test]
fn gateway_example_asks_for_the_etcd_password_from_the_environment() {
    let e = parse::<GatewayConfig>(&read("gateway.toml")).unwrap_err();
    assert_eq!(e.key(), Some("gateway.store.etcd.password"));
    assert!(
        e.to_string()
            .contains("TEEGATE_GATEWAY__STORE__ETCD__PASSWORD"),
        "{e}"
    );
}
