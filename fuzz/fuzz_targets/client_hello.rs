//! The front door's ClientHello peek (`frontdoor::peek_sni`, record by record as the
//! listener peeks a TCP stream, bounded by `hello_max`) and the routing of the SNI it finds.
#![no_main]
use std::time::Duration;

use async_trait::async_trait;
use libfuzzer_sys::fuzz_target;
use pingora_core::protocols::Peek;

/// What a client sent, as a stream that peeks like pingora's TCP stream: a peek fills the
/// whole buffer or fails with end of file.
#[derive(Debug)]
struct Sent(Vec<u8>);

#[async_trait]
impl Peek for Sent {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        match self.0.get(..buf.len()) {
            Some(head) => {
                buf.copy_from_slice(head);
                Ok(true)
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
}

fuzz_target!(|data: &[u8]| {
    // The gateway's default `limits.client_hello_max_bytes` is 16 KiB; the fuzzer's inputs
    // reach 64 KiB, so the size bound is exercised too.
    let mut stream = Sent(data.to_vec());
    let sni = RT.with(|rt| {
        rt.block_on(gateway::frontdoor::peek_sni(
            &mut stream,
            Duration::from_secs(10),
            16 * 1024,
        ))
    });
    if let Ok(Some(name)) = sni {
        let _ = gateway::names::parse(&name, "apps.example.com");
        if let Ok(norm) = gateway::names::normalize_host(&name) {
            let _ = gateway::names::parse(&norm, "apps.example.com");
        }
    }
});
