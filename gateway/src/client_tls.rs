//! A client's TLS connection as pingora's `Stream`: rustls' server side over the accepted
//! TCP stream, and nothing else.
//!
//! pingora's own TLS stream keeps room for a client handshake, a server handshake and the
//! established stream side by side (4.7 KB) plus a digest allocated per connection; this
//! one is the established stream alone (1.6 KB), which is most of what an idle connection
//! costs. What pingora's HTTP sessions ask of a stream (ALPN, socket and timing digests,
//! an id, shutdown) is answered from rustls and the TCP stream; the TLS digest, which
//! pingora only logs, is not kept.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::single_send::SingleSend;

/// Completes the server handshake on `tcp` with `acceptor`'s configuration.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: L4Stream,
) -> std::io::Result<ClientTls> {
    let tls = acceptor.accept(SingleSend(tcp)).await?;
    Ok(ClientTls { tls })
}

pub struct ClientTls {
    tls: TlsStream<SingleSend<L4Stream>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("alpn", &self.selected_alpn_proto())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for ClientTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for ClientTls {
    async fn shutdown(&mut self) {
        // close_notify, then the TCP write side.
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.tls).await {
            tracing::debug!(error = %e, "TLS shutdown failed");
        }
    }
}

impl UniqueID for ClientTls {
    fn id(&self) -> UniqueIDType {
        self.tls.get_ref().0.get_ref().id()
    }
}

impl Ssl for ClientTls {
    /// The gateway offers only these two.
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        match self.tls.get_ref().1.alpn_protocol()? {
            b"h2" => Some(ALPN::H2),
            b"http/1.1" => Some(ALPN::H1),
            _ => None,
        }
    }
}

impl GetTimingDigest for ClientTls {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.tls.get_ref().0.get_ref().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.tls.get_ref().0.get_ref().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.tls.get_ref().0.get_ref().get_write_pending_time()
    }
}

impl GetProxyDigest for ClientTls {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.tls.get_ref().0.get_ref().get_proxy_digest()
    }
}

impl GetSocketDigest for ClientTls {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.tls.get_ref().0.get_ref().get_socket_digest()
    }
}

/// Peeking is for the cleartext before TLS; an established stream offers none.
impl Peek for ClientTls {}
