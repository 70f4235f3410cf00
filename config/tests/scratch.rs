use config::*;
fn show<T: Component + std::fmt::Debug>(t: &str, env: &[(&str,&str)]) {
    let env: Vec<(String,String)> = env.iter().map(|(a,b)| (a.to_string(), b.to_string())).collect();
    match from_toml_str_with_env::<T>(t, env) { Ok(v) => println!("OK {v:?}"), Err(e) => println!("ERR {e}  // {e:?}") }
}
#[test]
fn scratch() {
    show::<GatewayConfig>("base_domain = \"Example..com\"", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"\nlisten_htps = \"0.0.0.0:1\"", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"\n[limits]\nmax_header_bytz = 1", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"\n[limits]\nmax_header_bytes = \"x\"", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"\nlisten_https = \"0.0.0.0:70000\"", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"\n[verifier]\ntcb_statuses = [\"UpToDate\", \"Revoked\"]", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"\n[verifier]\nmrtd = [\"abcd\"]", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"\n[verifier]\nmrtd = \"all\"", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"\n[store.etcd]\nendpoints = [\"ftp://x\"]", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"\n[store.etcd]\nendpointz = [\"ftp://x\"]", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"\nstore = \"etcdd\"", &[]);
    show::<GatewayConfig>("", &[]);
    show::<GatewayConfig>("base_domain = ", &[]);
    show::<GatewayConfig>("base_domain = \"a.com\"", &[("TEEGATE_GATEWAY__LISTEN_HTPS", "1")]);
    show::<GatewayConfig>("base_domain = \"a.com\"", &[("TEEGATE_GATEWAY__WORKERS", "1000")]);
    show::<GatewayConfig>("base_domain = \"a.com\"", &[("TEEGATE_GATEWAY__ADMIN_TOKEN", "abcdefghijklmnopqrstu"), ("TEEGATE_GATEWAY__STORE__ETCD__ENDPOINTS", "[\"http://127.0.0.1:2379\"]")]);
    show::<SidecarConfig>("compose_file = \"/a\"\nkms_url = \"https://k\"\nquote_provider = { tdx = { tsm_pat = \"x\" } }", &[]);
    show::<SidecarConfig>("compose_file = \"/a\"\nkms_url = \"https://k\"\nquote_provider = { tdx = { tsm_path = \"x\" } }", &[]);
    show::<KmsConfig>("data_dir = \"/a\"\n[policy.apps.0xABCDEF0123456789ABCDEF0123456789ABCDEF01]\ncompose_hashes = [\"zz\"]", &[]);
    show::<KmsConfig>("data_dir = \"/a\"\n[policy.apps.abcd]\ncompose_hashes = []", &[]);
    show::<KmsConfig>("data_dir = \"/a\"\n[policy.apps.0xABCDEF0123456789ABCDEF0123456789ABCDEF01]\nmin_tcb_status = \"OutOfDate\"", &[]);
    show::<DnsConfig>("base_domain = \"a.com\"", &[]);
}
