//! HTTP/1 on a terminated TLS connection: the keep-alive loop, with a total deadline on
//! every request head.
//!
//! pingora reads a request head with a timeout per read, so a head sent one line at a
//! time never times out, and the proxy's own phases run only once the head is parsed. So
//! the front door reads each head itself: waiting for its first byte is bounded by the idle
//! timeout (nothing of a request has arrived: the connection just closes), and from that
//! byte to the end of the head by `header_timeout` (past it: 408 and close). The bytes are
//! then handed to pingora as a pipelined prefix, which it parses without reading the
//! socket again. Two timers per request, none per read.
//!
//! ```text
//!  idle ──first byte──▶ head (≤ header_timeout) ──end of head──▶ pingora: proxy phases
//!   ▲ idle_timeout: close        └─ late: 408 + close                 │
//!   └──────────────────────── keep-alive reuse ◀──────────────────────┘
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::Metrics;
use crate::pages;
use crate::proxy::GatewayProxy;

/// pingora refuses (400) a head longer than its 1 MiB limit; reading stops just past it
/// and hands the head over, so that refusal stays pingora's.
const HEAD_MAX: usize = 1 << 20;
const READ_CHUNK: usize = 4096;
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
        (0..b.len()).any(|i| {
            b[i] == b'\n'
                && (b.get(i + 1) == Some(&b'\n')
                    || (b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n')))
        })
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

async fn read_head(
    stream: &mut Stream,
    idle: Duration,
    header_timeout: Duration,
    shutdown: &mut ShutdownWatch,
) -> Head {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let first = tokio::select! {
        r = tokio::time::timeout(idle, stream.read_buf(&mut buf)) => r,
        _ = shutdown.changed() => return Head::Gone,
    };
    match first {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Head::Gone,
    }
    let mut scan = HeadScan::default();
    if scan.complete(&buf) {
        return Head::Ready(buf);
    }
    let rest = async {
        loop {
            if buf.len() > HEAD_MAX {
                return true;
            }
            buf.reserve(READ_CHUNK);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) if scan.complete(&buf) => return true,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(header_timeout, rest).await {
        Ok(true) => Head::Ready(buf),
        Ok(false) => Head::Gone,
        Err(_) => Head::Late,
    }
}

async fn refuse_late(stream: &mut Stream) {
    let body = pages::page(
        408,
        "Request Timeout",
        "The request headers did not arrive in time.",
    );
    let head = format!(
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(REFUSAL_WRITE, write).await {
        tracing::debug!(error = %e, "could not send 408");
    }
}

/// Serves HTTP/1 requests on `stream` until the client or the proxy ends the connection.
pub async fn serve(
    proxy: &Arc<HttpProxy<GatewayProxy>>,
    mut stream: Stream,
    idle: Duration,
    header_timeout: Duration,
    metrics: &Metrics,
    shutdown: &ShutdownWatch,
) {
    let mut watch = shutdown.clone();
    let mut persisted: Option<HttpPersistentSettings> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let head = match read_head(&mut stream, idle, header_timeout, &mut watch).await {
            Head::Ready(head) => head,
            Head::Gone => return,
            Head::Late => {
                metrics.requests.with_label_values(&["-", "408"]).inc();
                tracing::debug!("request head not complete within the header timeout");
                refuse_late(&mut stream).await;
                return;
            }
        };
        let mut session = ServerSession::new_http1(stream);
        match persisted.take() {
            Some(p) => p.apply_to_session(&mut session),
            None => {
                session.set_keepalive(Some(idle.as_secs()));
                session.set_keepalive_reuses_remaining(
                    proxy
                        .server_options()
                        .and_then(|o| o.keepalive_request_limit),
                );
            }
        }
        // Pipelining stays off, so pingora hands back no bytes of its own to prepend.
        session.set_pipelined_prefix(head);
        let Some(reused) = proxy.process_new_http(session, shutdown).await else {
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
