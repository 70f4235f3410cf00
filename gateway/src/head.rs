//! HTTP/1 heads on the fast path: a client's request head parsed and rewritten for the
//! upstream in one pass, and an upstream's response head parsed and rewritten for the client.
//!
//! Only plain requests take the fast path: HTTP/1.1, a Host header, an origin-form target,
//! no body or a Content-Length one, no Upgrade, Expect, Transfer-Encoding or TE, and a
//! Connection header (if any) of `keep-alive` or `close`. Anything else (or anything this
//! parser refuses) is [`Parsed::General`]: pingora's proxy serves it as before, so its
//! answers to odd or malformed requests stay its own.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::ops::Range;

use crate::proxy::is_forwarding_header;

/// Most headers a request or response head may carry here (pingora allows as many).
const MAX_HEADERS: usize = 256;

/// What the fast path needs of a request, and the head to send upstream.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// Where the method (as sent), the target and the Host value sit in `upstream`: read
    /// there rather than copied out per request.
    method_at: Range<usize>,
    path_at: Range<usize>,
    host_at: Range<usize>,
    /// Request body bytes that follow the head.
    pub body_len: u64,
    /// The client asked to close after this request.
    pub close: bool,
    /// Bytes of the head in the client's buffer.
    pub head_len: usize,
    /// Header names and values (+4 each) and the target, as the size limit counts them.
    pub header_bytes: usize,
    /// The head for the upstream, without the final empty line: the proxy adds the
    /// forwarding headers and the end.
    pub upstream: Vec<u8>,
}

impl Request {
    /// The parts of `upstream` a constructor wrote: method, target, Host value (UTF-8).
    pub(crate) fn new(
        method: Method,
        at: [Range<usize>; 3],
        body_len: u64,
        close: bool,
        head_len: usize,
        header_bytes: usize,
        upstream: Vec<u8>,
    ) -> Self {
        let [method_at, path_at, host_at] = at;
        Request {
            method,
            method_at,
            path_at,
            host_at,
            body_len,
            close,
            head_len,
            header_bytes,
            upstream,
        }
    }

    /// The method as sent, for the access log.
    pub fn method_name(&self) -> &str {
        self.text(&self.method_at)
    }

    pub fn path(&self) -> &str {
        self.text(&self.path_at)
    }

    /// The Host value's bytes, for routing: [`crate::names::HostMemo`] checks UTF-8 only
    /// for a name it has not seen last.
    pub fn host_bytes(&self) -> &[u8] {
        self.upstream.get(self.host_at.clone()).unwrap_or_default()
    }

    fn text(&self, at: &Range<usize>) -> &str {
        self.upstream
            .get(at.clone())
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Options,
    Put,
    Delete,
    Other,
}

impl Method {
    pub(crate) fn of(m: &str) -> Self {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }

    /// May be sent again to another instance after a failure.
    pub fn idempotent(self) -> bool {
        self != Method::Other
    }
}

pub enum Parsed {
    Fast(Request),
    General,
}

/// Hop-by-hop headers, never forwarded as received.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Parses a complete request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    // Left uninitialised: clearing 256 header slots (8 KiB) per request cost more than
    // parsing a typical head.
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Parsed::General,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::General;
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Parsed::General;
    }
    let mut host_at = None;
    let mut body_len = None;
    let mut close = false;
    let mut header_bytes = path.len();
    let mut upstream = Vec::with_capacity(head_len + 96);
    upstream.extend_from_slice(method.as_bytes());
    let method_at = 0..upstream.len();
    upstream.push(b' ');
    upstream.extend_from_slice(path.as_bytes());
    let path_at = method_at.end + 1..upstream.len();
    upstream.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        header_bytes += name.len() + h.value.len() + 4;
        let is_host = name.eq_ignore_ascii_case("host");
        if is_host {
            if host_at.is_some() || std::str::from_utf8(h.value).is_err() {
                return Parsed::General;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, body_len) {
                (Some(n), None) => body_len = Some(n),
                _ => return Parsed::General,
            }
        } else if name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !v.eq_ignore_ascii_case(b"keep-alive") {
                return Parsed::General;
            }
            continue;
        } else if name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("te")
        {
            return Parsed::General;
        }
        if hop_by_hop(name) || is_forwarding_header(name) {
            continue;
        }
        upstream.extend_from_slice(name.as_bytes());
        upstream.extend_from_slice(b": ");
        let value_at = upstream.len();
        upstream.extend_from_slice(h.value);
        if is_host {
            host_at = Some(value_at..upstream.len());
        }
        upstream.extend_from_slice(b"\r\n");
    }
    let Some(host_at) = host_at else {
        return Parsed::General;
    };
    Parsed::Fast(Request::new(
        Method::of(method),
        [method_at, path_at, host_at],
        body_len.unwrap_or(0),
        close,
        head_len,
        header_bytes,
        upstream,
    ))
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes (the client connection then closes too).
    Close,
}

/// An upstream response head, rewritten for the client.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head_len: usize,
    pub framing: Framing,
    /// The upstream said it will close, or spoke HTTP/1.0.
    pub upstream_close: bool,
    /// Its Content-Length, if it sent one.
    pub content_length: Option<u64>,
    /// The head for an HTTP/1 client, without the final empty line (empty for HTTP/2).
    pub client: Vec<u8>,
    /// For an HTTP/2 client: where the end-to-end fields sit in the upstream's head, so
    /// [`crate::h2head::response`] builds the HTTP/2 head without parsing it again (empty
    /// for HTTP/1).
    pub fields: Vec<FieldAt>,
    /// For an HTTP/2 client: where the upstream's Content-Length value sits, when it is
    /// the length as it goes to the client (no leading zeros, no chunked framing).
    pub length_at: Option<Range<u32>>,
}

/// Where one header field's name and value sit in an upstream response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldAt {
    pub name: Range<u32>,
    pub value: Range<u32>,
}

pub enum ParsedResponse {
    Complete(Response),
    /// An interim (1xx) response of this many bytes: skip it and read on.
    Interim(usize),
    Partial,
    Invalid(String),
}

/// Appends the `x-forwarded-for` line for the client at `ip` (an IPv4-mapped IPv6 address
/// as its IPv4 form).
pub(crate) fn push_forwarded_for(out: &mut Vec<u8>, ip: IpAddr) {
    out.extend_from_slice(b"x-forwarded-for: ");
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        // Left to core::fmt, which compresses zeros (writing to a Vec cannot fail).
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Which client a response head is parsed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientProto {
    /// [`Response::client`] holds the head to send.
    Http1,
    /// [`Response::client`] stays empty: [`crate::h2head::response`] builds the HTTP/2 head
    /// from the upstream's bytes.
    Http2,
}

/// Parses a response head at the start of `buf`, for a request of `method` from a client
/// speaking `proto`.
pub fn parse_response(buf: &[u8], method: Method, proto: ClientProto) -> ParsedResponse {
    with_response_head(buf, |parsed, res| match parsed {
        Ok(httparse::Status::Complete(n)) => rewrite_response(buf, res, n, method, proto),
        Ok(httparse::Status::Partial) => ParsedResponse::Partial,
        Err(e) => ParsedResponse::Invalid(e.to_string()),
    })
}

/// Heads with more headers than this are parsed a second time with room for all.
const FEW_HEADERS: usize = 32;

/// Parses the response head at the start of `buf` with httparse and hands `f` the outcome.
/// httparse's response parser wants its header slots cleared first (32 bytes each), so a
/// small array is tried before the full `MAX_HEADERS` one.
fn with_response_head<'b, R>(
    buf: &'b [u8],
    f: impl FnOnce(httparse::Result<usize>, &httparse::Response<'_, 'b>) -> R,
) -> R {
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    let mut all;
    let mut res = httparse::Response::new(&mut few);
    let mut parsed = res.parse(buf);
    if matches!(parsed, Err(httparse::Error::TooManyHeaders)) {
        all = [httparse::EMPTY_HEADER; MAX_HEADERS];
        res = httparse::Response::new(&mut all);
        parsed = res.parse(buf);
    }
    f(parsed, &res)
}

/// Where `part`, a slice of `buf` (a head of at most `RESPONSE_HEAD_MAX` bytes), sits in it.
fn offsets(buf: &[u8], part: &[u8]) -> Range<u32> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    // A head is far shorter than 4 GiB; the fallback only keeps this free of panics.
    let start = u32::try_from(start).unwrap_or(u32::MAX);
    start..start.saturating_add(u32::try_from(part.len()).unwrap_or(u32::MAX))
}

/// The client's head for a complete upstream response head of `head_len` bytes at the
/// start of `buf`.
fn rewrite_response(
    buf: &[u8],
    res: &httparse::Response<'_, '_>,
    head_len: usize,
    method: Method,
    proto: ClientProto,
) -> ParsedResponse {
    let (Some(status), Some(version)) = (res.code, res.version) else {
        return ParsedResponse::Invalid("no status".into());
    };
    if (100..200).contains(&status) {
        if status == 101 {
            return ParsedResponse::Invalid("101 to a request without Upgrade".into());
        }
        return ParsedResponse::Interim(head_len);
    }
    let mut length = None;
    let mut chunked = false;
    let mut upstream_close = version == 0;
    let h1 = proto == ClientProto::Http1;
    let mut client = Vec::new();
    let mut fields = Vec::new();
    let mut length_at = None;
    if h1 {
        client.reserve_exact(head_len + 32);
        client.extend_from_slice(b"HTTP/1.1 ");
        client.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        client.push(b' ');
        client.extend_from_slice(res.reason.unwrap_or("").as_bytes());
        client.extend_from_slice(b"\r\n");
    }
    for h in res.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            // Written once, after the other headers.
            match (n, length) {
                (Some(n), None) => {
                    length = Some(n);
                    // An HTTP/2 head keeps the upstream's value unless it has leading
                    // zeros; then, as for HTTP/1, the length is written afresh.
                    let plain = h.value.first() != Some(&b'0') || h.value.len() == 1;
                    if !h1 && plain {
                        length_at = Some(offsets(buf, h.value));
                    }
                }
                (Some(n), Some(m)) if n == m => {}
                _ => return ParsedResponse::Invalid("bad Content-Length".into()),
            }
            continue;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value.eq_ignore_ascii_case(b"chunked") && !chunked {
                chunked = true;
                // Passed through as sent: the body is relayed chunk by chunk.
                if h1 {
                    client.extend_from_slice(b"transfer-encoding: chunked\r\n");
                }
                continue;
            }
            return ParsedResponse::Invalid("unsupported Transfer-Encoding".into());
        } else if name.eq_ignore_ascii_case("connection") {
            if h.value.windows(5).any(|w| w.eq_ignore_ascii_case(b"close")) {
                upstream_close = true;
            }
            continue;
        }
        if hop_by_hop(name) {
            continue;
        }
        if !h1 {
            fields.push(FieldAt {
                name: offsets(buf, name.as_bytes()),
                value: offsets(buf, h.value),
            });
            continue;
        }
        client.extend_from_slice(name.as_bytes());
        client.extend_from_slice(b": ");
        client.extend_from_slice(h.value);
        client.extend_from_slice(b"\r\n");
    }
    let bodiless = method == Method::Head || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::None
    } else if chunked {
        // A length beside chunked is ignored (RFC 9112 6.3), and not passed on.
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    if let (Some(n), false, true) = (length, chunked, h1) {
        client.extend_from_slice(b"content-length: ");
        client.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        client.extend_from_slice(b"\r\n");
    }
    ParsedResponse::Complete(Response {
        status,
        head_len,
        framing,
        upstream_close,
        content_length: length,
        client,
        fields,
        length_at: length_at.filter(|_| !chunked),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(raw: &str) -> Request {
        match parse_request(raw.as_bytes()) {
            Parsed::Fast(r) => r,
            Parsed::General => panic!("general path for {raw:?}"),
        }
    }

    #[test]
    fn forwarded_for_names_the_client_in_its_plain_form() {
        let line = |ip: &str| {
            let mut out = Vec::new();
            push_forwarded_for(&mut out, ip.parse().unwrap());
            String::from_utf8(out).unwrap()
        };
        assert_eq!(line("10.0.255.7"), "x-forwarded-for: 10.0.255.7\r\n");
        assert_eq!(line("::ffff:192.0.2.1"), "x-forwarded-for: 192.0.2.1\r\n");
        assert_eq!(
            line("2001:db8:0:0:0:0:0:1"),
            "x-forwarded-for: 2001:db8::1\r\n"
        );
    }

    #[test]
    fn plain_requests_are_rewritten_without_hop_by_hop_or_forwarding_headers() {
        let r = fast(
            "GET /a?b HTTP/1.1\r\nHost: x.test\r\nConnection: keep-alive\r\nX_Forwarded_For: 6.6.6.6\r\n\
             Keep-Alive: 5\r\nAccept: text/html\r\nx-real-ip: 1\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(r.host_bytes(), b"x.test");
        assert_eq!(r.path(), "/a?b");
        assert_eq!(r.method_name(), "GET");
        assert_eq!(r.body_len, 3);
        assert!(!r.close);
        let up = String::from_utf8(r.upstream).unwrap();
        assert_eq!(
            up,
            "GET /a?b HTTP/1.1\r\nHost: x.test\r\nAccept: text/html\r\nContent-Length: 3\r\n"
        );
    }

    #[test]
    fn anything_unusual_goes_to_the_general_path() {
        for raw in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Forwarded-For\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(raw.as_bytes()), Parsed::General),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn responses_with_many_headers_parse_whole_and_too_many_are_refused() {
        let head = |n: usize| {
            let mut h = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
            for i in 0..n {
                h.push_str(&format!("x-h{i}: v{i}\r\n"));
            }
            h + "\r\n"
        };
        // Past the small first array: parsed again with room for all, none lost.
        match parse_response(
            head(FEW_HEADERS + 8).as_bytes(),
            Method::Get,
            ClientProto::Http1,
        ) {
            ParsedResponse::Complete(r) => {
                let client = String::from_utf8(r.client).unwrap();
                for i in 0..FEW_HEADERS + 8 {
                    assert!(client.contains(&format!("x-h{i}: v{i}\r\n")), "x-h{i} lost");
                }
            }
            _ => panic!("a head with {} headers was not parsed", FEW_HEADERS + 8),
        }
        match parse_response(
            head(MAX_HEADERS).as_bytes(),
            Method::Get,
            ClientProto::Http1,
        ) {
            ParsedResponse::Invalid(e) => assert!(e.contains("too many headers"), "{e}"),
            _ => panic!("more than MAX_HEADERS headers accepted"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let parse = |raw: &str, m| match parse_response(raw.as_bytes(), m, ClientProto::Http1) {
            ParsedResponse::Complete(r) => r,
            _ => panic!("{raw:?}"),
        };
        let r = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
            Method::Get,
        );
        assert_eq!(r.framing, Framing::Length(5));
        assert!(!r.upstream_close);
        assert_eq!(
            String::from_utf8(r.client).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n"
        );
        let r = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nContent-Length: 5\r\n\r\n",
            Method::Get,
        );
        assert_eq!(
            String::from_utf8(r.client).unwrap(),
            "HTTP/1.1 200 OK\r\nX-A: b\r\ncontent-length: 5\r\n"
        );
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            Method::Get,
        );
        assert_eq!(r.framing, Framing::Chunked);
        assert!(!String::from_utf8(r.client)
            .unwrap()
            .contains("content-length"));
        assert_eq!(
            parse("HTTP/1.0 200 OK\r\n\r\n", Method::Get).framing,
            Framing::Close
        );
        assert!(parse("HTTP/1.0 200 OK\r\n\r\n", Method::Get).upstream_close);
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::Head).framing,
            Framing::None
        );
        assert_eq!(
            parse("HTTP/1.1 304 Not Modified\r\n\r\n", Method::Get).framing,
            Framing::None
        );
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n",
                Method::Get,
                ClientProto::Http1
            ),
            ParsedResponse::Interim(37)
        ));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_response(bad.as_bytes(), Method::Get, ClientProto::Http1),
                    ParsedResponse::Invalid(_)
                ),
                "{bad:?}"
            );
        }
    }
}
