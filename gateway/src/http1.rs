//! HTTP/1 on a terminated TLS connection: the keep-alive loop, with one deadline per
//! connection that moves from state to state, and the choice between the fast path and
//! pingora's proxy for each request.
//!
//! pingora reads a request head with a timeout per read, so a head sent one line at a
//! time never times out. So the front door reads each head itself: waiting for its first
//! byte is bounded by the idle timeout (nothing of a request has arrived: the connection
//! just closes), and from that byte to the end of the head by `header_timeout` (past it:
//! 408 and close). The head then goes to the fast path ([`crate::fast`]), bounded by the
//! request timeout (past it: 504, or a close once the answer has started), or, when the
//! fast path declines it, to pingora as a pipelined prefix, which it parses without reading
//! the socket again. While idle, the connection holds no read buffer of its own.
//!
//! ```text
//!  idle ──first byte──▶ head (≤ header_timeout) ──end of head──▶ fast path (≤ request_timeout)
//!   ▲ idle_timeout: close        └─ late: 408 + close              └─ declined: pingora's phases
//!   └──────────────────────── keep-alive reuse ◀──────────────────────┘
//! ```

use std::future::Future;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::deadline::Deadline;
use crate::fast::{FastPath, Outcome, Progress};
use crate::head::ClientProto;
use crate::metrics::Metrics;
use crate::names::HostMemo;
use crate::pages;
use crate::proxy::GatewayProxy;

/// pingora refuses (400) a head longer than its 1 MiB limit; reading stops just past it
/// and hands the head over, so that refusal stays pingora's.
const HEAD_MAX: usize = 1 << 20;
const READ_CHUNK: usize = 4096;
/// The first read of a request takes up to this much (a whole TLS record's plaintext).
const FIRST_READ: usize = 16 * 1024;
/// Longest the 408 answer may take to write to a client that does not read.
const REFUSAL_WRITE: Duration = Duration::from_secs(2);

/// Finds the end of a request head as bytes arrive, looking at each byte once.
#[derive(Default)]
struct HeadScan {
    /// Where the request line starts: the parser skips empty lines before it.
    start: Option<usize>,
    scanned: usize,
}

impl HeadScan {
    /// Whether `buf` (the same buffer as before, grown) holds a whole head: a line end
    /// followed by an empty line (`\n\n` or `\n\r\n`; the parser accepts bare LF).
    fn complete(&mut self, buf: &[u8]) -> bool {
        let start = match self.start {
            Some(s) => s,
            None => match buf[self.scanned..]
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
            {
                Some(p) => {
                    let s = self.scanned + p;
                    self.start = Some(s);
                    self.scanned = s;
                    s
                }
                None => {
                    self.scanned = buf.len();
                    return false;
                }
            },
        };
        // Step back over a terminator that may have been split across reads.
        let from = self.scanned.saturating_sub(2).max(start);
        self.scanned = buf.len();
        let b = &buf[from..];
        memchr::memchr_iter(b'\n', b)
            .any(|i| matches!(b.get(i + 1..), Some([b'\n', ..] | [b'\r', b'\n', ..])))
    }
}

enum Head {
    /// A whole head (and whatever followed it in the same reads).
    Ready(BytesMut),
    /// Closed, idle too long, or shutting down, before a request started or mid-head.
    Gone,
    /// The head started but did not end within the header timeout.
    Late,
}

async fn read_head<S: Future>(
    stream: &mut Stream,
    deadline: &mut Deadline,
    idle: Duration,
    header_timeout: Duration,
    mut stopping: Pin<&mut S>,
) -> Head {
    deadline.set(idle);
    let first = tokio::select! {
        r = first_read(stream) => r,
        _ = deadline.reached() => return Head::Gone,
        _ = stopping.as_mut() => return Head::Gone,
    };
    let mut buf = match first {
        Ok(buf) if !buf.is_empty() => buf,
        _ => return Head::Gone,
    };
    let mut scan = HeadScan::default();
    if scan.complete(&buf) {
        return Head::Ready(buf);
    }
    deadline.set(header_timeout);
    loop {
        if buf.len() > HEAD_MAX {
            return Head::Ready(buf);
        }
        buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            r = stream.read_buf(&mut buf) => r,
            _ = deadline.reached() => return Head::Late,
        };
        match read {
            Ok(0) | Err(_) => return Head::Gone,
            Ok(_) if scan.complete(&buf) => return Head::Ready(buf),
            Ok(_) => {}
        }
    }
}

/// Waits for the first bytes of a request and returns them in a buffer of their size.
///
/// While idle the connection holds no buffer: each poll reads into one on the stack, so a
/// connection that waits keeps nothing, and the bytes that arrive (usually a whole head)
/// are copied once into an allocation that fits them. (Reading into an empty `BytesMut`
/// would take at most 64 bytes, then grow the buffer to read the rest: a reallocation and
/// a second pass through both TLS layers for every request.)
async fn first_read(stream: &mut Stream) -> std::io::Result<BytesMut> {
    std::future::poll_fn(|cx| {
        let mut space = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut space);
        ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        Poll::Ready(Ok(BytesMut::from(read.filled())))
    })
    .await
}

async fn refuse(stream: &mut Stream, status: u16, title: &str, detail: &str) {
    let answer = pages::http1_answer(status, title, detail);
    let write = async {
        stream.write_all(&answer).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(REFUSAL_WRITE, write).await {
        tracing::debug!(error = %e, status, "could not send refusal");
    }
}

/// What the connection needs besides its stream.
pub struct Conn<'a> {
    pub proxy: &'a Arc<HttpProxy<GatewayProxy>>,
    pub fast: &'a FastPath,
    pub idle: Duration,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub metrics: &'a Metrics,
    pub client_ip: Option<IpAddr>,
}

/// Serves HTTP/1 requests on `stream` until the client or the proxy ends the connection.
pub async fn serve(c: Conn<'_>, mut stream: Stream, shutdown: &ShutdownWatch) {
    let mut watch = shutdown.clone();
    // The wait for shutdown is made once for the connection's life, not once per request
    // (each new one registers with the watch afresh). Once it has fired the connection
    // ends, so it is never polled again.
    let stopping = watch.changed();
    tokio::pin!(stopping);
    let mut persisted: Option<HttpPersistentSettings> = None;
    // The connection's one deadline, moved as it goes from state to state (idle, head,
    // request) instead of a timer per read or write.
    let mut deadline = Deadline::after(c.idle);
    let hosts = HostMemo::default();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut head = match read_head(
            &mut stream,
            &mut deadline,
            c.idle,
            c.header_timeout,
            stopping.as_mut(),
        )
        .await
        {
            Head::Ready(head) => head,
            Head::Gone => return,
            Head::Late => {
                c.metrics.requests.with_label_values(&["-", "408"]).inc();
                tracing::debug!("request head not complete within the header timeout");
                refuse(
                    &mut stream,
                    408,
                    "Request Timeout",
                    "The request headers did not arrive in time.",
                )
                .await;
                return;
            }
        };
        // The fast path takes plain requests to app names; the request deadline bounds
        // the whole exchange.
        deadline.set(c.request_timeout);
        let progress = Progress::default();
        // The request's futures are boxed, so an idle connection's task keeps only the
        // small state of this loop, not the largest request state it ever reached.
        let outcome = tokio::select! {
            o = Box::pin(c.fast.serve(&mut stream, &mut head, c.client_ip, &hosts, &progress)) => o,
            _ = deadline.reached() => {
                c.fast.timed_out(ClientProto::Http1, c.client_ip, &progress);
                if !progress.started() {
                    refuse(
                        &mut stream,
                        504,
                        "Gateway Timeout",
                        "The app did not answer in time.",
                    )
                    .await;
                }
                return;
            }
        };
        match outcome {
            Outcome::KeepAlive => continue,
            Outcome::Close => {
                let _ = tokio::time::timeout(REFUSAL_WRITE, stream.shutdown()).await;
                return;
            }
            Outcome::General => {}
        }
        let mut session = ServerSession::new_http1(stream);
        match persisted.take() {
            Some(p) => p.apply_to_session(&mut session),
            None => {
                session.set_keepalive(Some(c.idle.as_secs()));
                session.set_keepalive_reuses_remaining(
                    c.proxy
                        .server_options()
                        .and_then(|o| o.keepalive_request_limit),
                );
            }
        }
        // Pipelining stays off, so pingora hands back no bytes of its own to prepend.
        session.set_pipelined_prefix(head);
        let Some(reused) = Box::pin(c.proxy.process_new_http(session, shutdown)).await else {
            return;
        };
        (stream, persisted) = reused.consume();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed_in(parts: &[&[u8]]) -> Vec<bool> {
        let mut scan = HeadScan::default();
        let mut buf = Vec::new();
        parts
            .iter()
            .map(|p| {
                buf.extend_from_slice(p);
                scan.complete(&buf)
            })
            .collect()
    }

    #[test]
    fn finds_the_end_of_a_head_split_anywhere() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 1..head.len() {
            let r = fed_in(&[&head[..cut], &head[cut..]]);
            assert_eq!(r, vec![false, true], "cut at {cut}");
        }
        assert_eq!(fed_in(&[b"GET / HTTP/1.1\nHost: a\n\n"]), vec![true]);
        // One byte at a time, as a slow client sends it.
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        let r = fed_in(&bytes);
        assert_eq!(r.iter().filter(|d| **d).count(), 1);
        assert!(r[head.len() - 1]);
    }

    #[test]
    fn empty_lines_before_the_request_line_do_not_end_a_head() {
        assert_eq!(
            fed_in(&[
                b"\r\n\r\n\n",
                b"GET / HTTP/1.1\r\n",
                b"Host: a\r\n",
                b"\r\n"
            ]),
            vec![false, false, false, true]
        );
        assert_eq!(fed_in(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), vec![false]);
    }
}
