//! SidecarConfig: defaults, and errors that name the bad key.

use std::path::Path;

use crate::common::{assert_contains, error, parse};
use teegate_config::*;

const MIN: &str = "compose_file = \"/etc/teegate/app-compose.json\"\nkms_url = \"https://kms.example.com:8000\"\n";

fn with(extra: &str) -> String {
    format!("{MIN}{extra}")
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let cfg: SidecarConfig = parse(MIN).unwrap();
    assert_eq!(cfg.socket_path, Path::new("/var/run/teegate/teegate.sock"));
    assert_eq!(cfg.dstack_socket_path, Path::new("/var/run/dstack.sock"));
    assert_eq!(cfg.listen_front, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(cfg.front_addr(), cfg.listen_front);
    assert!(cfg.gateways.is_empty());
    assert_eq!(
        cfg.quote_provider,
        QuoteProviderConfig::Tdx {
            tsm_path: DEFAULT_TSM_PATH.into()
        }
    );
    assert_eq!(cfg.docker_socket, Path::new("/var/run/docker.sock"));
    assert_eq!(cfg.heartbeat_secs, 20);
    assert_eq!(cfg.cert_validity_secs, 86400);
    assert!(cfg.encrypted_env_file.is_none());
    assert_eq!(cfg.data_dir, Path::new("/var/lib/teegate/sidecar"));
    assert_eq!(cfg.verifier, VerifierConfig::default());
}

#[test]
fn rejects_unknown_key_naming_it() {
    let e = error::<SidecarConfig>(&with("heartbeat = 5"));
    assert_contains(&e, &["unknown key sidecar.heartbeat"]);
}

#[test]
fn rejects_missing_compose_file_and_kms_url() {
    let e = error::<SidecarConfig>("kms_url = \"https://kms.example.com\"");
    assert_eq!(e, "missing required key sidecar.compose_file");
    let e = error::<SidecarConfig>("compose_file = \"/c.json\"");
    assert_eq!(e, "missing required key sidecar.kms_url");
}

#[test]
fn rejects_one_socket_for_both_guest_apis() {
    let e = error::<SidecarConfig>(&with(
        "socket_path = \"/run/x.sock\"\ndstack_socket_path = \"/run/x.sock\"\n",
    ));
    assert_contains(
        &e,
        &["sidecar.dstack_socket_path", "must differ from socket_path"],
    );
}

#[test]
fn rejects_plain_http_kms_and_gateways() {
    let e =
        error::<SidecarConfig>("compose_file = \"/c.json\"\nkms_url = \"http://kms.example.com\"");
    assert_contains(&e, &["sidecar.kms_url", "https://"]);
    let e = error::<SidecarConfig>(&with(
        "gateways = [\"https://gw1.example.com:8443\", \"http://gw2.example.com:8443\"]",
    ));
    assert_contains(&e, &["sidecar.gateways[1]", "https://"]);
}

#[test]
fn rejects_wrong_type_and_range() {
    let e = error::<SidecarConfig>(&with("heartbeat_secs = \"20s\""));
    assert_contains(&e, &["sidecar.heartbeat_secs", "invalid type"]);
    let e = error::<SidecarConfig>(&with("heartbeat_secs = 0"));
    assert_contains(&e, &["sidecar.heartbeat_secs", "between 1 and 3600"]);
    let e = error::<SidecarConfig>(&with("cert_validity_secs = 10"));
    assert_contains(&e, &["sidecar.cert_validity_secs"]);
}

#[test]
fn rejects_unspecified_advertise_addr() {
    let e = error::<SidecarConfig>(&with("advertise_addr = \"0.0.0.0:8443\""));
    assert_contains(&e, &["sidecar.advertise_addr", "concrete"]);
    let e = error::<SidecarConfig>(&with("advertise_addr = \"10.0.0.1\""));
    assert_contains(&e, &["sidecar.advertise_addr", "socket address"]);
    let cfg: SidecarConfig = parse(&with("advertise_addr = \"10.0.0.1:9000\"")).unwrap();
    assert_eq!(cfg.front_addr(), "10.0.0.1:9000".parse().unwrap());
}

#[test]
fn quote_provider_accepts_string_or_table() {
    let cfg: SidecarConfig = parse(&with("quote_provider = \"simulated\"")).unwrap();
    assert!(cfg.quote_provider.is_simulated());
    let cfg: SidecarConfig = parse(&with("[quote_provider.tdx]\ntsm_path = \"/tmp/tsm\"")).unwrap();
    assert_eq!(
        cfg.quote_provider,
        QuoteProviderConfig::Tdx {
            tsm_path: "/tmp/tsm".into()
        }
    );
    let e = error::<SidecarConfig>(&with("quote_provider = \"sgx\""));
    assert_contains(&e, &["sidecar.quote_provider", "sgx"]);
    let e = error::<SidecarConfig>(&with("[quote_provider.tdx]\npath = \"/x\""));
    assert_contains(&e, &["unknown key sidecar.quote_provider.tdx.path"]);
}

#[test]
fn verifier_allowlist_any_is_accepted() {
    let cfg: SidecarConfig = parse(&with("[verifier]\nmrtd = \"any\"")).unwrap();
    assert!(cfg.verifier.mrtd.is_any());
}
