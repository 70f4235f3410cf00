//! A socket under rustls that sends one queued record with `send(2)` instead of `writev(2)`.
//!
//! tokio-rustls hands rustls' queued TLS records to the socket's `poll_write_vectored`
//! whatever their number, and a TCP stream turns that into `writev(2)`, which goes through
//! the VFS layer (file position lock, iovec import, `sock_write_iter`) before it reaches
//! TCP. A proxied request or answer is one record, so almost every write has a single
//! buffer; `send(2)` (what `poll_write` makes) goes to the socket directly, as HAProxy's
//! writes do. Keep-alive load, same hour, two A/B pairs: 15.3 → 14.7 µs of CPU per request
//! (docs/performance.md, ninth session). Several records still go out in one `writev`.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `S` with single-buffer vectored writes sent as plain writes; everything else passes
/// through.
#[derive(Debug)]
pub struct SingleSend<S>(pub S);

impl<S> SingleSend<S> {
    pub fn get_ref(&self) -> &S {
        &self.0
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SingleSend<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SingleSend<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        match (filled.next(), filled.next()) {
            (Some(one), None) => Pin::new(&mut self.0).poll_write(cx, one),
            // Nothing to send: what `writev` of empty buffers returns.
            (None, _) => Poll::Ready(Ok(0)),
            _ => Pin::new(&mut self.0).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One buffer, several, and only empty ones: the peer reads exactly what was written.
    #[tokio::test]
    async fn vectored_writes_arrive_whole_and_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tcp, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let mut w = SingleSend(tcp.unwrap());
        let (mut r, _) = accepted.unwrap();
        let empty: &[u8] = &[];
        let n = w
            .write_vectored(&[IoSlice::new(empty), IoSlice::new(b"one")])
            .await
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(w.write_vectored(&[IoSlice::new(empty)]).await.unwrap(), 0);
        let mut rest: &[u8] = b"two,three";
        while !rest.is_empty() {
            let cut = rest.len().min(3);
            let n = w
                .write_vectored(&[IoSlice::new(&rest[..cut]), IoSlice::new(&rest[cut..])])
                .await
                .unwrap();
            rest = &rest[n..];
        }
        w.shutdown().await.unwrap();
        let mut got = String::new();
        r.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "onetwo,three");
    }
}
