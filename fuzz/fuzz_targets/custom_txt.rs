//! The custom-domain TXT value: `_teegate-app.<host>` records, each a list of DNS
//! character strings as they come off the wire (a length byte, then that many bytes), to
//! the route they name (`custom::route_from_txt`, then `parse_txt` on the joined text).
#![no_main]
use libfuzzer_sys::fuzz_target;

/// Input: records separated by 0xff; each record is TXT RDATA (length-prefixed strings).
fn records(data: &[u8]) -> Vec<Vec<&[u8]>> {
    data.split(|&b| b == 0xff)
        .map(|mut rdata| {
            let mut parts = Vec::new();
            while let Some((&len, rest)) = rdata.split_first() {
                let len = usize::from(len).min(rest.len());
                parts.push(&rest[..len]);
                rdata = &rest[len..];
            }
            parts
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let recs = records(data);
    if let Ok(t) = gateway::custom::route_from_txt("shop.example.com", &recs) {
        // A route always names a 20-byte app id, a port above 0, and terminates TLS.
        assert!(t.port > 0);
        assert_eq!(t.mode, gateway::names::Mode::Terminate);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gateway::custom::parse_txt(text);
    }
});
