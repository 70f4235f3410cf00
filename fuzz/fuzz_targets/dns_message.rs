//! The DNS server's request path from wire bytes to answer bytes: the header check,
//! hickory's decoding, the zone handler's rules (opcode, one question, EDNS) and the answer
//! encoding, on a zone with gateway addresses, glue, an ACME TXT record and CAA.
#![no_main]
use libfuzzer_sys::fuzz_target;

const ZONE: &str = r#"
base_domain = "apps.example.com"
ns_names = ["ns1.apps.example.com", "ns2.elsewhere.example.net"]
ns_addrs = ["198.51.100.53", "2001:db8::53"]
gateway_addrs = ["203.0.113.10", "203.0.113.11", "2001:db8::10"]
caa_account_uri = "https://acme.example.net/acct/1"
"#;

struct Server {
    rt: tokio::runtime::Runtime,
    handler: dns::ZoneRequestHandler,
}

fn server() -> Server {
    let env = [(
        "TEEGATE_DNS__API__TOKEN".to_string(),
        "fuzz-token-0123456789abcdef".to_string(),
    )];
    let cfg = config::from_toml_str_with_env::<config::DnsConfig>(ZONE, env)
        .expect("the fuzz zone's config is valid");
    let zone = dns::ZoneHandle::from_config(&cfg).expect("the fuzz zone builds");
    zone.set_acme_txt(
        "_acme-challenge.apps.example.com",
        vec!["token-value".into()],
    )
    .expect("ACME TXT");
    zone.set_acme_txt(
        "_acme-challenge.shop.apps.example.com",
        vec!["a".into(), "b".into()],
    )
    .expect("ACME TXT");
    Server {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime"),
        handler: dns::ZoneRequestHandler::new(zone),
    }
}

thread_local! {
    static SERVER: Server = server();
}

fuzz_target!(|data: &[u8]| {
    SERVER.with(|s| {
        if let Some(answer) = s.rt.block_on(dns::answer_wire(&s.handler, data.to_vec())) {
            // An answer always fits the TCP length prefix and echoes the query's id.
            assert!(answer.len() <= usize::from(u16::MAX));
            assert!(answer.len() >= 12 && data.len() >= 2 && answer[..2] == data[..2]);
        }
    });
});
