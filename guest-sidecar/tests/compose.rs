//! `app-compose.json` refusals through the public API, from a file as the sidecar reads it.

use teegate_guest_sidecar::compose::{ComposeError, LoadedAppCompose};

fn read(json: &str) -> Result<LoadedAppCompose, ComposeError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app-compose.json");
    std::fs::write(&path, json).unwrap();
    LoadedAppCompose::read(&path)
}

fn compose(yaml: &str, exposed: &str) -> String {
    format!(
        r#"{{"name":"t","key_provider":"none","exposed_ports":{exposed},"docker_compose":{}}}"#,
        serde_json::to_string(yaml).unwrap()
    )
}

const WEB: &str = "services:\n  web:\n    image: x\n    ports: [\"80\"]\n";

#[test]
fn reads_file_and_derives_identity() {
    let json = compose(WEB, "[80]");
    let a = read(&json).unwrap();
    assert_eq!(
        a.compose_hash,
        teegate_guest_sidecar::compose::ComposeHash::of(json.as_bytes())
    );
    assert_eq!(a.app_id.to_hex(), a.compose_hash.to_hex()[..40]);
}

#[test]
fn malformed_app_compose_names_the_field() {
    let e = read(r#"{"name":"t","docker_compose":"services: {}"}"#).unwrap_err();
    assert!(
        e.to_string().contains("missing field `key_provider`"),
        "{e}"
    );
    let e = read(&compose(WEB, "[80, 70000]")).unwrap_err();
    assert_eq!(e.field(), Some("exposed_ports[1]"));
    assert!(e.to_string().contains("port 70000 out of range"), "{e}");
    let e = read(&compose(WEB, "[80]").replacen('{', r#"{"extra":1,"#, 1)).unwrap_err();
    assert!(e.to_string().contains("unknown field `extra`"), "{e}");
}

#[test]
fn privileged_service_is_refused() {
    let e = read(&compose(&format!("{WEB}    privileged: true\n"), "[80]")).unwrap_err();
    assert_eq!(e.field(), Some("services.web.privileged"));
    assert!(e.to_string().contains("refused"), "{e}");
}

#[test]
fn dependency_cycle_is_refused() {
    let yaml = "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n";
    let e = read(&compose(yaml, "[]")).unwrap_err();
    assert!(
        e.to_string().contains("dependency cycle: a -> b -> a"),
        "{e}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let e =
        LoadedAppCompose::read(std::path::Path::new("/nonexistent/app-compose.json")).unwrap_err();
    assert!(
        e.to_string().contains("/nonexistent/app-compose.json"),
        "{e}"
    );
}
