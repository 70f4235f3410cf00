//! HTTP/2 on a terminated TLS connection: one task drives the connection and every stream
//! on it, with no task spawned per stream. Each accepted stream goes to the fast path
//! ([`crate::fast::FastPath::serve_h2`]) or, when it declines, to pingora's proxy phases,
//! as a future polled beside the accept loop. Every stream that can finish does so before
//! the connection is polled again, so the answers of a burst leave in one TLS record and
//! one write.
//!
//! ```text
//!  handshake (pingora's, our H2Options) ─▶ accept ─┬─ stream ─▶ fast path (≤ request_timeout: 504)
//!    ▲ idle_timeout with no stream open: close      │    └─ declined ─▶ pingora's phases
//!    │ shutdown: GOAWAY, drain the open streams     └─ … up to max_h2_streams at once
//! ```
//!
//! pingora checks each accepted stream (forbidden bytes in the path, conflicting lengths,
//! a bad authority) and answers or resets the bad ones; more than
//! [`MAX_MALFORMED_STREAMS`] of those end the connection, as in pingora's own loop.

use std::future::Future;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::v2::server::{self as h2s, H2Accept, H2Options};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Digest;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;

use crate::fast::{FastPath, Progress};
use crate::head::ClientProto;
use crate::names::HostMemo;
use crate::proxy::GatewayProxy;
use crate::stream_deadlines::{Fired, StreamDeadlines, StreamTimer};

/// Streams pingora refused as malformed before the connection is closed.
const MAX_MALFORMED_STREAMS: usize = 32;
/// Longest the 504 answer may take to write to a client that does not read.
const ANSWER_WRITE: Duration = Duration::from_secs(2);

/// What the connection needs besides its stream.
pub struct Conn<'a> {
    pub proxy: &'a Arc<HttpProxy<GatewayProxy>>,
    pub fast: &'a FastPath,
    pub options: H2Options,
    pub idle: Duration,
    pub request_timeout: Duration,
    pub client_ip: Option<IpAddr>,
    /// The host the connection's streams named last (see [`HostMemo`]).
    pub hosts: HostMemo,
}

/// Serves HTTP/2 streams on `stream` until the client closes, the connection idles out or
/// the server shuts down (after the open streams finish).
pub async fn serve(c: Conn<'_>, stream: Stream, shutdown: &ShutdownWatch) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut conn = match h2s::handshake(stream, Some(c.options.clone())).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    let c = &c;
    // The streams' futures themselves, not boxed: FuturesUnordered allocates each its task
    // anyway, so a box would be a second allocation and a second copy per stream.
    let mut streams = FuturesUnordered::new();
    let mut watch = shutdown.clone();
    let mut draining = *shutdown.borrow();
    if draining {
        conn.graceful_shutdown();
    }
    let mut malformed = 0usize;
    // Each stream's request timeout and the connection's idle timeout, on one timer.
    let mut deadlines = StreamDeadlines::new(c.request_timeout, c.idle);
    loop {
        let accepted = tokio::select! {
            // Streams first: every stream that can finish does so before the connection is
            // polled again, so the answers they queued go out in one TLS record and one
            // write instead of one each. Bounded: each stream finishes once, and new ones
            // come only from the connection.
            biased;
            Some(()) = streams.next(), if !streams.is_empty() => {
                deadlines.closed();
                continue;
            }
            // Before the accept, which a client opening stream after stream keeps ready.
            _ = watch.changed(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
            // The accept future drives the whole connection (every stream's frames), so it
            // is polled whenever no stream is ready; it is cancel-safe.
            a = h2s::HttpSession::from_h2_conn(&mut conn, digest.clone()) => a,
            fired = deadlines.fired() => {
                if fired == Fired::Idle && streams.is_empty() {
                    return;
                }
                continue;
            }
        };
        match accepted {
            Ok(Some(H2Accept::Session(session))) => {
                let timer = deadlines.open();
                streams.push(serve_stream(c, session, timer, shutdown));
            }
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed > MAX_MALFORMED_STREAMS {
                    tracing::debug!("too many malformed HTTP/2 streams; closing the connection");
                    return;
                }
            }
            // Closed (after the last stream) or broken: nothing more can be served.
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 connection ended");
                return;
            }
        }
    }
    // The client closed cleanly; finish what is still in flight, within its deadline.
    loop {
        tokio::select! {
            biased;
            s = streams.next() => match s {
                Some(()) => deadlines.closed(),
                None => return,
            },
            _ = deadlines.fired() => {}
        }
    }
}

/// One stream's life: the fast path within the stream's deadline, else pingora's phases.
///
/// An async block rather than an async fn, which would hold `session` twice (its argument
/// and the local it is moved into): the future is allocated and copied once per stream, at
/// the size of its largest state.
fn serve_stream<'a>(
    c: &'a Conn<'_>,
    mut session: h2s::HttpSession,
    timer: Arc<StreamTimer>,
    shutdown: &'a ShutdownWatch,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        let progress = Progress::default();
        let served = {
            let work = pin!(c
                .fast
                .serve_h2(&mut session, c.client_ip, &c.hosts, &progress));
            timer.run(work).await
        };
        // The request deadline covers the fast path's exchange, as the HTTP/1 one does; from
        // here the 504 answer has its own bound and pingora's phases their own timeouts. With
        // the timer dropped, the connection's queue holds the only reference: ended.
        drop(timer);
        match served {
            Some(true) => return,
            Some(false) => {}
            None => {
                c.fast.timed_out(ClientProto::Http2, c.client_ip, &progress);
                if !progress.started() {
                    let page = crate::downstream::h2_page(
                        &mut session,
                        504,
                        "Gateway Timeout",
                        "The app did not answer in time.",
                    );
                    // Bounded: a client that opens no flow-control window must not hold it.
                    let _ = tokio::time::timeout(ANSWER_WRITE, page).await;
                }
                // Otherwise the stream is reset when the session drops unfinished.
                return;
            }
        }
        // Boxed apart: pingora's proxy future is many times the fast path's, and every stream's
        // future is allocated at the size of its largest state.
        Box::pin(
            c.proxy
                .process_new_http(ServerSession::new_http2(session), shutdown),
        )
        .await;
    }
}
