//! Loading from files and the process environment.

use std::io::Write;

use teegate_config::*;

#[test]
fn load_reads_a_file_and_validates() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "data_dir = \"/srv/kms\"\nlisten = \"127.0.0.1:0\"").unwrap();
    let cfg: KmsConfig = load_with_env(file.path(), Vec::new()).unwrap();
    assert_eq!(cfg.listen.port(), 0);
}

#[test]
fn load_of_a_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let e = load::<KmsConfig>(&path).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().contains("nope.toml"), "{e}");
}

#[test]
fn load_of_an_invalid_file_returns_an_error_not_a_partial_config() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "data_dir = \"/srv/kms\"\n[webhook]\nurl = \"ftp://x\""
    )
    .unwrap();
    let e = load_with_env::<KmsConfig>(file.path(), Vec::new()).unwrap_err();
    assert_eq!(e.key(), Some("kms.webhook.url"));
}

#[test]
fn from_toml_str_reads_the_process_environment() {
    // Only this test sets a variable, and the DNS one it sets is ignored by
    // the KMS loads in the other tests of this binary.
    // SAFETY: std serialises its own environment accesses, and nothing in
    // this test binary reads the environment through libc directly.
    unsafe { std::env::set_var("TEEGATE_DNS__TTL_SECS", "120") };
    let cfg: DnsConfig = from_toml_str(
        "base_domain = \"apps.example.com\"\napi.token = \"dns-api-token-0123456789\"",
    )
    .unwrap();
    unsafe { std::env::remove_var("TEEGATE_DNS__TTL_SECS") };
    assert_eq!(cfg.ttl_secs, 120);
}
