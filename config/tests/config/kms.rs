//! KmsConfig: defaults, policy parsing, and errors that name the bad key.

use std::path::Path;

use crate::common::{assert_contains, error, parse, APP_ID, COMPOSE_HASH, MEASUREMENT};
use teegate_config::*;

const MIN: &str = "data_dir = \"/var/lib/teegate/kms\"\n";

fn with(extra: &str) -> String {
    format!("{MIN}{extra}")
}

#[test]
fn minimal_config_gets_defaults_and_denies_everything() {
    let cfg: KmsConfig = parse(MIN).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8000".parse().unwrap());
    assert_eq!(cfg.quote_provider, QuoteProviderConfig::default());
    assert!(cfg.webhook.is_none());
    assert!(cfg.onboard_from.is_none());
    assert_eq!(
        cfg.audit_log_path(),
        Path::new("/var/lib/teegate/kms/audit.jsonl")
    );
    assert!(cfg.policy.os.mrtd.denies_all());
    assert!(cfg.policy.kms_measurements.rtmr2.denies_all());
    assert!(cfg.policy.apps.is_empty());
}

#[test]
fn rejects_missing_data_dir() {
    assert_eq!(error::<KmsConfig>(""), "missing required key kms.data_dir");
}

#[test]
fn rejects_unknown_key_naming_it() {
    let e = error::<KmsConfig>(&with("[policy]\nos_measurements = {}"));
    assert_contains(&e, &["unknown key kms.policy.os_measurements"]);
    let e = error::<KmsConfig>(&with(&format!("[policy.apps.{APP_ID}]\ncompose_hash = []")));
    assert_contains(
        &e,
        &[
            &format!("unknown key kms.policy.apps.{APP_ID}.compose_hash"),
            "compose_hashes",
        ],
    );
}

#[test]
fn app_policy_parses_with_defaults() {
    let cfg: KmsConfig = parse(&with(&format!(
        "[policy.apps.{APP_ID}]\ncompose_hashes = [\"{COMPOSE_HASH}\"]"
    )))
    .unwrap();
    let app = cfg.policy.apps.get(&AppId::parse(APP_ID).unwrap()).unwrap();
    assert!(app
        .compose_hashes
        .allows(&ComposeHash::parse(COMPOSE_HASH).unwrap()));
    assert!(!app.allow_simulated);
    assert_eq!(app.min_tcb_status, TcbStatusName::UpToDate);
    assert!(app.min_tcb_status.admits(TcbStatusName::UpToDate));
    assert!(!app.min_tcb_status.admits(TcbStatusName::SWHardeningNeeded));
}

#[test]
fn rejects_invalid_hex_in_policy() {
    let e = error::<KmsConfig>(&with(&format!(
        "[policy.apps.{APP_ID}]\ncompose_hashes = [\"{}\"]",
        &COMPOSE_HASH[..63]
    )));
    assert_contains(
        &e,
        &[
            &format!("kms.policy.apps.{APP_ID}.compose_hashes[0]"),
            "expected 64 hex characters",
        ],
    );
    let e = error::<KmsConfig>(&with(&format!(
        "[policy.os]\nmrtd = [\"{}\"]",
        &MEASUREMENT[..64]
    )));
    assert_contains(&e, &["kms.policy.os.mrtd[0]", "expected 96 hex characters"]);
    let e = error::<KmsConfig>(&with(
        "[policy.apps.not-an-app-id]\ncompose_hashes = \"any\"",
    ));
    assert_contains(
        &e,
        &["kms.policy.apps", "\"not-an-app-id\" is not a valid app id"],
    );
}

#[test]
fn rejects_the_same_app_twice_after_normalising() {
    let upper = APP_ID.to_uppercase();
    let e = error::<KmsConfig>(&with(&format!(
        "[policy.apps.{APP_ID}]\n[policy.apps.0x{upper}]"
    )));
    assert_contains(&e, &["kms.policy.apps", "listed twice"]);
}

#[test]
fn rejects_unacceptable_min_tcb_status() {
    let e = error::<KmsConfig>(&with(&format!(
        "[policy.apps.{APP_ID}]\nmin_tcb_status = \"OutOfDate\""
    )));
    assert_contains(
        &e,
        &[
            &format!("kms.policy.apps.{APP_ID}.min_tcb_status"),
            "OutOfDate",
        ],
    );
}

#[test]
fn webhook_and_onboarding_urls_are_checked() {
    let e = error::<KmsConfig>(&with("[webhook]\nurl = \"http://hook.example.com/\""));
    assert_contains(&e, &["kms.webhook.url", "https://"]);
    let e = error::<KmsConfig>(&with("[webhook]\nurl = \"https://h/\"\ntimeout_ms = 0"));
    assert_contains(&e, &["kms.webhook.timeout_ms"]);
    let e = error::<KmsConfig>(&with("[webhook]\ntimeout_ms = 10"));
    assert_eq!(e, "missing required key kms.webhook.url");
    let e = error::<KmsConfig>(&with("onboard_from = \"http://kms-1.example.com:8000\""));
    assert_contains(&e, &["kms.onboard_from", "https://"]);
    let cfg: KmsConfig = parse(&with(
        "audit_log = \"/var/log/audit.jsonl\"\n[webhook]\nurl = \"http://127.0.0.1:9000/hook\"",
    ))
    .unwrap();
    assert_eq!(cfg.audit_log_path(), Path::new("/var/log/audit.jsonl"));
    assert_eq!(cfg.webhook.unwrap().timeout_ms, 2000);
}

#[test]
fn rejects_bad_listen_address() {
    let e = error::<KmsConfig>(&with("listen = 8000"));
    assert_contains(&e, &["kms.listen"]);
}

#[test]
fn listener_limits_default_and_are_bounded() {
    let cfg: KmsConfig = parse(MIN).unwrap();
    assert_eq!(cfg.limits.max_connections, 1024);
    assert_eq!(cfg.limits.handshake_timeout_secs, 10);
    let cfg: KmsConfig = parse(&with(
        "[limits]\nmax_connections = 8\nhandshake_timeout_secs = 2",
    ))
    .unwrap();
    assert_eq!(cfg.limits.max_connections, 8);
    assert_eq!(cfg.limits.handshake_timeout_secs, 2);
    let e = error::<KmsConfig>(&with("[limits]\nmax_connections = 0"));
    assert_contains(&e, &["kms.limits.max_connections"]);
    let e = error::<KmsConfig>(&with("[limits]\nhandshake_timeout_secs = 0"));
    assert_contains(&e, &["kms.limits.handshake_timeout_secs"]);
}
