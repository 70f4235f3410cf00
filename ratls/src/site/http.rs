//! A small blocking HTTP/1.1 client over one verified TLS connection: GET with keep-alive,
//! bodies by Content-Length, chunked, or to end of stream, every part bounded and under one
//! deadline. Enough to fetch JSON from a gateway over the connection whose certificate the
//! caller checks; not a general HTTP client.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Largest response head read.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 64;

/// A failure to connect, shake hands or fetch.
#[derive(Debug)]
pub struct HttpError {
    pub message: String,
}

fn fail(message: impl Into<String>) -> HttpError {
    HttpError {
        message: message.into(),
    }
}

/// One TLS connection to a server, kept alive across requests.
pub struct Conn {
    stream: StreamOwned<ClientConnection, TcpStream>,
    deadline: Instant,
    closed: bool,
}

impl Conn {
    /// Connects to `addr` and completes a TLS handshake for `name` under `config`, all
    /// before `deadline`.
    pub fn connect(
        addr: &str,
        name: &str,
        config: Arc<ClientConfig>,
        deadline: Instant,
    ) -> Result<Self, HttpError> {
        let remaining = remaining(deadline)?;
        let mut last = None;
        let mut tcp = None;
        let addrs = addr
            .to_socket_addrs()
            .map_err(|e| fail(format!("resolving {addr}: {e}")))?;
        for a in addrs.take(8) {
            match TcpStream::connect_timeout(&a, remaining) {
                Ok(t) => {
                    tcp = Some(t);
                    break;
                }
                Err(e) => last = Some(format!("connecting to {a}: {e}")),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            fail(last.unwrap_or_else(|| format!("{addr} resolves to no address")))
        })?;
        let _ = tcp.set_nodelay(true);
        let server = ServerName::try_from(name.to_string())
            .map_err(|_| fail(format!("{name} is not a server name")))?;
        let conn = ClientConnection::new(config, server).map_err(|e| fail(e.to_string()))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            set_timeouts(&stream.sock, deadline)?;
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| fail(format!("TLS handshake with {addr}: {e}")))?;
        }
        Ok(Self {
            stream,
            deadline,
            closed: false,
        })
    }

    /// The certificate chain the server presented (leaf first).
    pub fn peer_chain(&self) -> Vec<CertificateDer<'static>> {
        self.stream
            .conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default()
    }

    /// Whether the server said it closes the connection after its last answer.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// `GET path` with `Host: host`; the body of a 200 answer, at most `max_body` bytes.
    pub fn get(&mut self, host: &str, path: &str, max_body: usize) -> Result<Vec<u8>, HttpError> {
        if self.closed {
            return Err(fail("the server closed the connection"));
        }
        set_timeouts(&self.stream.sock, self.deadline)?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nUser-Agent: teegate-verify\r\n\r\n"
        );
        self.stream
            .write_all(req.as_bytes())
            .and_then(|()| self.stream.flush())
            .map_err(|e| fail(format!("sending GET {path}: {e}")))?;
        let (status, head_len, framing, mut buf) = self.read_head(path)?;
        let body = match framing {
            Framing::Length(n) if n > max_body => {
                return Err(fail(format!(
                    "GET {path}: the body is {n} bytes, over the {max_body}-byte limit"
                )))
            }
            Framing::Length(n) => {
                buf.drain(..head_len);
                self.read_exact_into(&mut buf, n, path)?;
                buf.truncate(n);
                buf
            }
            Framing::Chunked => {
                buf.drain(..head_len);
                self.read_chunked(buf, max_body, path)?
            }
            Framing::ToEnd => {
                buf.drain(..head_len);
                self.closed = true;
                self.read_to_end(buf, max_body, path)?
            }
        };
        if status != 200 {
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(fail(format!("GET {path}: HTTP {status}: {text}")));
        }
        Ok(body)
    }

    fn fill(&mut self, buf: &mut Vec<u8>, path: &str) -> Result<(), HttpError> {
        remaining(self.deadline)?;
        set_timeouts(&self.stream.sock, self.deadline)?;
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(fail(format!(
                "GET {path}: the connection closed mid-answer"
            ))),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(fail(format!("GET {path}: reading: {e}"))),
        }
    }

    fn read_head(&mut self, path: &str) -> Result<(u16, usize, Framing, Vec<u8>), HttpError> {
        let mut buf = Vec::new();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let header = |name: &str| {
                        resp.headers
                            .iter()
                            .filter(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                            .collect::<Vec<_>>()
                    };
                    if header("connection").iter().any(|v| v.contains("close")) {
                        self.closed = true;
                    }
                    let chunked = header("transfer-encoding")
                        .iter()
                        .any(|v| v.ends_with("chunked"));
                    let lengths = header("content-length");
                    let framing = if chunked {
                        Framing::Chunked
                    } else {
                        match lengths.as_slice() {
                            [] => Framing::ToEnd,
                            [one] => Framing::Length(one.parse().map_err(|_| {
                                fail(format!("GET {path}: bad Content-Length {one:?}"))
                            })?),
                            _ => {
                                return Err(fail(format!(
                                    "GET {path}: several Content-Length headers"
                                )))
                            }
                        }
                    };
                    return Ok((status, len, framing, buf));
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                    self.fill(&mut buf, path)?
                }
                Ok(httparse::Status::Partial) => {
                    return Err(fail(format!(
                        "GET {path}: the response head is over {MAX_HEAD} bytes"
                    )))
                }
                Err(e) => return Err(fail(format!("GET {path}: not an HTTP response: {e}"))),
            }
        }
    }

    fn read_exact_into(
        &mut self,
        buf: &mut Vec<u8>,
        n: usize,
        path: &str,
    ) -> Result<(), HttpError> {
        while buf.len() < n {
            self.fill(buf, path)?;
        }
        if buf.len() > n {
            // Bytes past this answer: we never pipeline, so the server sent junk.
            self.closed = true;
        }
        Ok(())
    }

    fn read_to_end(
        &mut self,
        mut buf: Vec<u8>,
        max: usize,
        path: &str,
    ) -> Result<Vec<u8>, HttpError> {
        loop {
            if buf.len() > max {
                return Err(fail(format!(
                    "GET {path}: the body is over the {max}-byte limit"
                )));
            }
            remaining(self.deadline)?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(buf),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A server that closes without close_notify still ended the body.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(buf),
                Err(e) => return Err(fail(format!("GET {path}: reading: {e}"))),
            }
        }
    }

    fn read_chunked(
        &mut self,
        mut raw: Vec<u8>,
        max: usize,
        path: &str,
    ) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = loop {
                if let Some(i) = find_crlf(&raw[pos..]) {
                    break pos + i;
                }
                if raw.len() - pos > MAX_CHUNK_LINE {
                    return Err(fail(format!("GET {path}: bad chunk size line")));
                }
                self.fill(&mut raw, path)?;
            };
            let line = std::str::from_utf8(&raw[pos..line_end]).unwrap_or("");
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| fail(format!("GET {path}: bad chunk size {size_text:?}")))?;
            pos = line_end + 2;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    if let Some(i) = find_crlf(&raw[pos..]) {
                        if i == 0 {
                            return Ok(body);
                        }
                        pos += i + 2;
                    } else if raw.len() - pos > MAX_HEAD {
                        return Err(fail(format!("GET {path}: trailers over {MAX_HEAD} bytes")));
                    } else {
                        self.fill(&mut raw, path)?;
                    }
                }
            }
            if body.len() + size > max {
                return Err(fail(format!(
                    "GET {path}: the body is over the {max}-byte limit"
                )));
            }
            while raw.len() < pos + size + 2 {
                self.fill(&mut raw, path)?;
            }
            body.extend_from_slice(&raw[pos..pos + size]);
            if &raw[pos + size..pos + size + 2] != b"\r\n" {
                return Err(fail(format!("GET {path}: a chunk does not end with CRLF")));
            }
            pos += size + 2;
            raw.drain(..pos);
            pos = 0;
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
    ToEnd,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn remaining(deadline: Instant) -> Result<Duration, HttpError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| fail("timed out"))
}

fn set_timeouts(sock: &TcpStream, deadline: Instant) -> Result<(), HttpError> {
    let left = remaining(deadline)?;
    sock.set_read_timeout(Some(left))
        .and_then(|()| sock.set_write_timeout(Some(left)))
        .map_err(|e| fail(e.to_string()))
}
