//! The client's side of a fast-path exchange: an HTTP/1 connection, which gets the upstream's
//! bytes as they are (the head rewritten by [`crate::head`], a chunked body passed through),
//! or one HTTP/2 stream, which gets the head as an HTTP/2 response ([`crate::h2head`]) and the
//! body's data in DATA frames (a chunked body unwrapped, since HTTP/2 frames data itself).
//! Also where a response body ends ([`Relay`]) and the gateway's own error answers.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use h2::SendStream;
use pingora_core::protocols::http::v2::server::HttpSession as H2Session;
use pingora_core::protocols::Stream;
use pingora_http::ResponseHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chunked::Chunked;
use crate::head::{ClientProto, Framing};
use crate::pages;

/// The client went away, or sent less than it announced.
pub struct ClientGone;

/// The response body ended malformed; the upstream connection is not reused.
pub struct BadBody;

pub enum Downstream<'a> {
    H1 {
        stream: &'a mut Stream,
        /// What was read past the request head: its body's first bytes (and, when
        /// `pipelined`, more).
        buf: &'a mut BytesMut,
        buffered_body: usize,
        /// Bytes past the body arrived: the connection closes after this exchange.
        pipelined: bool,
    },
    H2 {
        session: &'a mut H2Session,
        /// The stream's DATA side once the head is sent, taken from pingora's session so the
        /// body goes to h2 directly ([`send_h2`]).
        out: Option<SendStream<Bytes>>,
        /// The end of the stream was sent.
        ended: bool,
    },
}

impl<'a> Downstream<'a> {
    /// An HTTP/2 stream's client side, nothing sent yet.
    pub fn h2(session: &'a mut H2Session) -> Self {
        Downstream::H2 {
            session,
            out: None,
            ended: false,
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Downstream::H2 { .. })
    }

    pub fn proto(&self) -> ClientProto {
        match self {
            Downstream::H1 { .. } => ClientProto::Http1,
            Downstream::H2 { .. } => ClientProto::Http2,
        }
    }

    /// The request body bytes that arrived with the head.
    pub fn buffered_body(&self) -> &[u8] {
        match self {
            Downstream::H1 {
                buf, buffered_body, ..
            } => &buf[..*buffered_body],
            Downstream::H2 { .. } => &[],
        }
    }

    /// Whether the client connection must close after this exchange (HTTP/1).
    pub fn must_close(&self) -> bool {
        matches!(
            self,
            Downstream::H1 {
                pipelined: true,
                ..
            }
        )
    }

    /// Forgets the bytes read past the head once they went upstream.
    pub fn consumed(&mut self) {
        if let Downstream::H1 { buf, .. } = self {
            buf.clear();
        }
    }

    /// Reads up to `want` more request body bytes into `chunk` (HTTP/1; an HTTP/2 request
    /// on the fast path has no body).
    pub async fn read_body(&mut self, chunk: &mut BytesMut, want: usize) -> Result<(), ClientGone> {
        let Downstream::H1 { stream, .. } = self else {
            return Err(ClientGone);
        };
        match (&mut **stream).take(want as u64).read_buf(chunk).await {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(ClientGone),
        }
    }

    /// Sends the response head with the body bytes that came with it. `h1_head` is the
    /// head for an HTTP/1 client without its final empty line, `h2_head` the one for an
    /// HTTP/2 client; `body` holds the bytes `pieces` point at; `end` says the body is done.
    pub async fn start(
        &mut self,
        h1_head: Vec<u8>,
        h2_head: Option<Box<ResponseHeader>>,
        close: bool,
        body: &mut BytesMut,
        pieces: &[Range<usize>],
        end: bool,
    ) -> Result<(), ClientGone> {
        match self {
            Downstream::H1 { stream, .. } => {
                let mut out = h1_head;
                if close {
                    out.extend_from_slice(b"connection: close\r\n");
                }
                out.extend_from_slice(b"\r\n");
                for r in pieces {
                    out.extend_from_slice(&body[r.clone()]);
                }
                stream.write_all(&out).await.map_err(|_| ClientGone)
            }
            Downstream::H2 {
                session,
                out,
                ended,
            } => {
                let head = h2_head.ok_or(ClientGone)?;
                let bodiless = end && pieces.is_empty();
                session
                    .write_response_header(head, bodiless)
                    .map_err(|_| ClientGone)?;
                *ended = bodiless;
                if bodiless {
                    return Ok(());
                }
                *out = session.take_response_body_writer();
                let out = out.as_mut().ok_or(ClientGone)?;
                send_h2(out, body, pieces, end, true).await?;
                *ended = end;
                Ok(())
            }
        }
    }

    /// Relays more of the body: the `pieces` of `body`; `end` says it is done.
    pub async fn body(
        &mut self,
        body: &mut BytesMut,
        pieces: &[Range<usize>],
        end: bool,
    ) -> Result<(), ClientGone> {
        match self {
            Downstream::H1 { stream, .. } => {
                for r in pieces {
                    stream
                        .write_all(&body[r.clone()])
                        .await
                        .map_err(|_| ClientGone)?;
                }
                Ok(())
            }
            Downstream::H2 { out, ended, .. } => {
                send_h2(out.as_mut().ok_or(ClientGone)?, body, pieces, end, false).await?;
                *ended = end;
                Ok(())
            }
        }
    }

    /// Flushes an HTTP/1 response; ends an HTTP/2 stream whose end was not sent yet.
    pub async fn finish(&mut self) -> Result<(), ClientGone> {
        match self {
            Downstream::H1 { stream, .. } => stream.flush().await.map_err(|_| ClientGone),
            Downstream::H2 {
                out: Some(out),
                ended,
                ..
            } => {
                if !*ended {
                    out.send_data(Bytes::new(), true).map_err(|_| ClientGone)?;
                    *ended = true;
                }
                Ok(())
            }
            // No head went out: dropping the stream unanswered resets it.
            Downstream::H2 { out: None, .. } => Ok(()),
        }
    }

    /// Answers with one of the gateway's own error pages (nothing was sent yet).
    pub async fn error_page(&mut self, status: u16, title: &str, detail: &str) {
        match self {
            Downstream::H1 { stream, .. } => {
                let answer = pages::http1_answer(status, title, detail);
                let write = async {
                    stream.write_all(&answer).await?;
                    stream.flush().await
                };
                let _ = write.await;
            }
            Downstream::H2 { session, .. } => {
                let _ = h2_page(session, status, title, detail).await;
            }
        }
    }
}

/// One of the gateway's own error pages as the answer on an HTTP/2 stream.
pub(crate) async fn h2_page(
    s: &mut H2Session,
    status: u16,
    title: &str,
    detail: &str,
) -> pingora_core::Result<()> {
    let body = pages::page(status, title, detail);
    let mut head = ResponseHeader::build_no_case(status, Some(3))?;
    head.insert_header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    head.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    head.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    s.write_response_header(Box::new(head), false)?;
    s.write_body(Bytes::from(body), true).await
}

/// Sends the `pieces` of `body` as DATA frames without copying them (`body` is handed over
/// and left empty); `end` goes with the last one, or alone when there is none.
///
/// The `first` piece of a response (what came with its head) is queued at once: its bytes
/// are held already, and h2 sends them as the window allows. Every later piece waits for h2
/// to grant the stream window for it, so the relay reads no further ahead of a client that
/// does not read than one piece: the same bound as pingora's own body writer, which reserves
/// before every piece, without that round through h2's flow control for the common
/// response that arrives in one read.
async fn send_h2(
    out: &mut SendStream<Bytes>,
    body: &mut BytesMut,
    pieces: &[Range<usize>],
    end: bool,
    first: bool,
) -> Result<(), ClientGone> {
    let data = body.split().freeze();
    for (i, r) in pieces.iter().enumerate() {
        let last = end && i + 1 == pieces.len();
        let piece = data.slice(r.clone());
        if first && i == 0 {
            out.send_data(piece, last).map_err(|_| ClientGone)?;
        } else {
            send_granted(out, piece, last).await?;
        }
    }
    if end && pieces.is_empty() {
        out.send_data(Bytes::new(), true).map_err(|_| ClientGone)?;
    }
    Ok(())
}

/// Sends `data` as the stream's window is granted for it, in as many frames as grants.
async fn send_granted(
    out: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), ClientGone> {
    while !data.is_empty() {
        out.reserve_capacity(data.len());
        // Capacity already assigned (left over from an earlier grant, or given at once by
        // the reservation) is used as it is: h2's `poll_capacity` wakes only when capacity
        // grows, so waiting on it with capacity in hand can wait for a window update the
        // client will not send before it gets more data.
        let mut granted = out.capacity();
        if granted == 0 {
            granted = match std::future::poll_fn(|cx| out.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                // The stream was reset or the connection ended.
                _ => return Err(ClientGone),
            };
        }
        if granted == 0 {
            continue;
        }
        let now = data.split_to(granted.min(data.len()));
        out.send_data(now, end && data.is_empty())
            .map_err(|_| ClientGone)?;
    }
    Ok(())
}

/// The ranges of a read buffer to relay. Most reads hold one piece (or a few chunks), so
/// they live inline: no allocation per request.
pub type Pieces = smallvec::SmallVec<[Range<usize>; 4]>;

/// Where a response body ends, as its bytes pass.
pub struct Relay {
    pub framing: Framing,
    chunked: Chunked,
    left: u64,
    /// Bytes came past the end of the response: the upstream cannot be trusted again.
    pub tainted: bool,
    /// Unwrap chunked data (for HTTP/2) instead of passing the framing through.
    unwrap: bool,
}

impl Relay {
    pub fn new(framing: Framing, unwrap_chunks: bool) -> Self {
        Relay {
            framing,
            chunked: Chunked::default(),
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            tainted: false,
            unwrap: unwrap_chunks,
        }
    }

    pub fn finished(&self) -> bool {
        match self.framing {
            Framing::None => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunked.done(),
            Framing::Close => false,
        }
    }

    /// Puts in `pieces` the ranges of `buf` to relay; returns how many bytes of `buf`
    /// belong to the body (the rest came past its end).
    pub fn take(&mut self, buf: &[u8], pieces: &mut Pieces) -> Result<usize, BadBody> {
        pieces.clear();
        let n = match self.framing {
            Framing::None => 0,
            Framing::Length(_) => {
                let n = buf
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                n
            }
            Framing::Chunked if self.unwrap => self
                .chunked
                .feed_data(buf, |r| pieces.push(r))
                .map_err(|_| BadBody)?,
            Framing::Chunked => self.chunked.feed(buf).map_err(|_| BadBody)?,
            Framing::Close => buf.len(),
        };
        if n < buf.len() {
            self.tainted = true;
        }
        if n > 0 && !(self.unwrap && self.framing == Framing::Chunked) {
            pieces.push(0..n);
        }
        Ok(n)
    }
}
