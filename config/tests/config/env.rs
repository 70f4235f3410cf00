//! `TEEGATE_*` environment overrides.

use crate::common::{assert_contains, parse_env};
use teegate_config::*;

const GW: &str = "base_domain = \"apps.example.com\"\n";

#[test]
fn override_sets_a_top_level_key() {
    let cfg: GatewayConfig = parse_env(GW, &[("TEEGATE_GATEWAY__WORKERS", "8")]).unwrap();
    assert_eq!(cfg.workers, 8);
}

#[test]
fn override_replaces_a_file_value() {
    let cfg: GatewayConfig = parse_env(
        "base_domain = \"apps.example.com\"\nworkers = 2",
        &[("TEEGATE_GATEWAY__WORKERS", "3")],
    )
    .unwrap();
    assert_eq!(cfg.workers, 3);
}

#[test]
fn override_sets_a_nested_key() {
    let cfg: GatewayConfig = parse_env(
        GW,
        &[
            ("TEEGATE_GATEWAY__LIMITS__MAX_HEADER_BYTES", "32768"),
            ("TEEGATE_GATEWAY__TLS__ACME__RENEW_AT_FRACTION", "0.5"),
            ("TEEGATE_GATEWAY__REGISTRATION__ALLOW_LOOPBACK", "true"),
            ("TEEGATE_GATEWAY__UPSTREAM__BALANCE", "least_connections"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.limits.max_header_bytes, 32768);
    assert_eq!(cfg.tls.acme.renew_at_fraction, 0.5);
    assert!(cfg.registration.allow_loopback);
    assert_eq!(cfg.upstream.balance, Balance::LeastConnections);
}

#[test]
fn override_can_supply_a_required_key() {
    let cfg: KmsConfig = parse_env("", &[("TEEGATE_KMS__DATA_DIR", "/srv/kms")]).unwrap();
    assert_eq!(cfg.data_dir, std::path::Path::new("/srv/kms"));
}

#[test]
fn override_parses_arrays_and_switches_enums() {
    let cfg: GatewayConfig = parse_env(
        GW,
        &[
            (
                "TEEGATE_GATEWAY__STORE__ETCD__ENDPOINTS",
                "[\"http://127.0.0.1:2379\"]",
            ),
            ("TEEGATE_GATEWAY__VERIFIER__MRTD", "any"),
            (
                "TEEGATE_GATEWAY__VERIFIER__TCB_STATUSES",
                "[\"UpToDate\", \"SWHardeningNeeded\"]",
            ),
        ],
    )
    .unwrap();
    match cfg.store {
        StoreConfig::Etcd(etcd) => assert_eq!(etcd.endpoints[0].port(), Some(2379)),
        other => panic!("expected etcd, got {other:?}"),
    }
    assert!(cfg.verifier.mrtd.is_any());
    assert_eq!(cfg.verifier.tcb_statuses.len(), 2);
    let cfg: SidecarConfig = parse_env(
        "compose_file = \"/c.json\"\nkms_url = \"https://kms.example.com\"",
        &[("TEEGATE_SIDECAR__QUOTE_PROVIDER", "simulated")],
    )
    .unwrap();
    assert!(cfg.quote_provider.is_simulated());
}

#[test]
fn secret_override_is_set_and_hidden_in_debug() {
    let cfg: GatewayConfig = parse_env(
        GW,
        &[("TEEGATE_GATEWAY__ADMIN_TOKEN", "s3cret-admin-token-value")],
    )
    .unwrap();
    assert_eq!(
        cfg.admin_token.as_ref().unwrap().expose(),
        "s3cret-admin-token-value"
    );
    assert!(!format!("{cfg:?}").contains("s3cret"));
    // A numeric-looking token stays the same text.
    let cfg: DnsConfig = parse_env(
        "base_domain = \"apps.example.com\"",
        &[("TEEGATE_DNS__API__TOKEN", "12345678901234567")],
    )
    .unwrap();
    assert_eq!(cfg.api.token.unwrap().expose(), "12345678901234567");
}

#[test]
fn override_keeps_raw_text_where_the_file_has_a_string() {
    let cfg: GatewayConfig = parse_env(
        "base_domain = \"apps.example.com\"\nadmin_token = \"from-the-file-0123456\"",
        &[("TEEGATE_GATEWAY__ADMIN_TOKEN", "[not-an-array-0123456]")],
    )
    .unwrap();
    assert_eq!(cfg.admin_token.unwrap().expose(), "[not-an-array-0123456]");
}

#[test]
fn unknown_override_key_is_an_error_naming_the_variable() {
    let e = parse_env::<GatewayConfig>(GW, &[("TEEGATE_GATEWAY__LISTEN_HTPS", "0.0.0.0:1")])
        .unwrap_err();
    assert!(matches!(e, ConfigError::Env { ref var, .. } if var == "TEEGATE_GATEWAY__LISTEN_HTPS"));
    assert_contains(
        &e.to_string(),
        &[
            "TEEGATE_GATEWAY__LISTEN_HTPS",
            "unknown key gateway.listen_htps",
        ],
    );
    let e = parse_env::<GatewayConfig>(GW, &[("TEEGATE_GATEWAY__LIMITS__NOPE__DEEPER", "1")])
        .unwrap_err();
    assert_contains(
        &e.to_string(),
        &[
            "TEEGATE_GATEWAY__LIMITS__NOPE__DEEPER",
            "gateway.limits.nope",
        ],
    );
}

#[test]
fn bad_override_value_names_the_variable_and_key() {
    let e = parse_env::<GatewayConfig>(GW, &[("TEEGATE_GATEWAY__WORKERS", "1000")]).unwrap_err();
    assert_contains(
        &e.to_string(),
        &[
            "TEEGATE_GATEWAY__WORKERS",
            "gateway.workers",
            "between 1 and 256",
        ],
    );
    let e = parse_env::<GatewayConfig>(GW, &[("TEEGATE_GATEWAY__WORKERS", "many")]).unwrap_err();
    assert_contains(
        &e.to_string(),
        &["TEEGATE_GATEWAY__WORKERS", "invalid type"],
    );
    let e = parse_env::<GatewayConfig>(GW, &[("TEEGATE_GATEWAY__LIMITS", "5")]).unwrap_err();
    assert_contains(
        &e.to_string(),
        &["TEEGATE_GATEWAY__LIMITS", "gateway.limits"],
    );
}

#[test]
fn malformed_variable_name_is_an_error() {
    let e = parse_env::<GatewayConfig>(GW, &[("TEEGATE_GATEWAY__LIMITS____X", "1")]).unwrap_err();
    assert_contains(
        &e.to_string(),
        &["TEEGATE_GATEWAY__LIMITS____X", "empty key segment"],
    );
}

#[test]
fn other_components_and_unrelated_variables_are_ignored() {
    let cfg: GatewayConfig = parse_env(
        GW,
        &[
            ("TEEGATE_KMS__WORKERS", "x"),
            ("TEEGATE_LOG", "debug"),
            ("TEEGATE_GATEWAYX__WORKERS", "x"),
            ("PATH", "/bin"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.workers, 1);
}

#[test]
fn errors_in_the_file_are_not_blamed_on_unrelated_overrides() {
    let e = parse_env::<GatewayConfig>(
        "base_domain = \"apps.example.com\"\nworkers = 0",
        &[("TEEGATE_GATEWAY__ACCESS_LOG", "false")],
    )
    .unwrap_err();
    assert!(
        matches!(e, ConfigError::Invalid { ref key, .. } if key == "gateway.workers"),
        "{e:?}"
    );
}

#[test]
fn env_var_name_builds_the_override_name() {
    assert_eq!(env_var_name("dns", "api.token"), "TEEGATE_DNS__API__TOKEN");
}
