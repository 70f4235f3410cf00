//! The front door's ClientHello peek (`frontdoor::peek_sni`, record by record as the
//! listener peeks a TCP stream, bounded by `hello_max`) and the routing of the SNI it finds.
#![no_main]
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use libfuzzer_sys::fuzz_target;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

impl AsyncRead for Sent {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.0.len());
        buf.put_slice(&self.0[..n]);
        self.0.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Sent {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Sent {
    async fn shutdown(&mut self) {}
}
impl UniqueID for Sent {
    fn id(&self) -> UniqueIDType {
        0
    }
}
impl Ssl for Sent {}
impl GetTimingDigest for Sent {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}
impl GetProxyDigest for Sent {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}
impl GetSocketDigest for Sent {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
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
    let mut stream: pingora_core::protocols::Stream = Box::new(Sent(data.to_vec()));
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
