//! HTTP/2 on the fast path: a client's HTTP/2 request as the HTTP/1.1 head the upstream
//! gets, and the upstream's HTTP/1.1 response head as the HTTP/2 response the client gets.
//!
//! The same requests as on HTTP/1 take the fast path (see [`crate::head`]), and only those
//! without a body; anything else is [`Parsed::General`] and pingora's proxy serves it as
//! before. HTTP/2 has no hop-by-hop headers (the h2 crate refuses them); `te: trailers` is
//! dropped, and `cookie` fields, which HTTP/2 may split, are joined again (RFC 9113 8.2.3).

use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

use crate::head::{Framing, Method, Parsed, Request, Response};
use crate::proxy::is_forwarding_header;

/// The HTTP/1.1 head for the upstream of a bodiless HTTP/2 request, or `General`.
pub fn request(req: &RequestHeader) -> Parsed {
    let method = req.method.as_str();
    let Some(path) = req.uri.path_and_query().map(|p| p.as_str()) else {
        return Parsed::General;
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Parsed::General;
    }
    // The name routed by is the one pingora's proxy would route by: Host, else :authority;
    // when both are sent they must agree.
    let authority = req.uri.authority().map(|a| a.as_str());
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next(), authority) {
        (Some(_), Some(_), _) => return Parsed::General,
        (Some(h), None, a) => match h.to_str() {
            Ok(h) if a.is_none_or(|a| a.eq_ignore_ascii_case(h)) => h,
            _ => return Parsed::General,
        },
        (None, _, Some(a)) => a,
        (None, _, None) => return Parsed::General,
    };
    // Counted as pingora's proxy counts it (the URI as a string), without formatting it.
    let mut header_bytes = req.uri.scheme_str().map_or(0, |s| s.len() + 3)
        + authority.map_or(0, str::len)
        + path.len();
    let mut upstream = Vec::with_capacity(128 + path.len() + 32 * req.headers.len());
    upstream.extend_from_slice(method.as_bytes());
    let method_at = 0..upstream.len();
    upstream.push(b' ');
    upstream.extend_from_slice(path.as_bytes());
    let path_at = method_at.end + 1..upstream.len();
    upstream.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    let host_start = upstream.len();
    upstream.extend_from_slice(host.as_bytes());
    let host_at = host_start..upstream.len();
    upstream.extend_from_slice(b"\r\n");
    let mut cookies = 0usize;
    for (name, value) in req.headers.iter() {
        header_bytes += name.as_str().len() + value.len() + 4;
        let n = name.as_str();
        // A field value is bytes; the ones that would end or split an HTTP/1 line never go
        // upstream (the h2 crate should refuse them already).
        if value
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b'\r' | b'\n' | 0))
        {
            return Parsed::General;
        }
        match n {
            "host" | "content-length" => continue,
            "te" if value.as_bytes().eq_ignore_ascii_case(b"trailers") => continue,
            "te" | "expect" | "upgrade" | "connection" | "keep-alive" | "proxy-connection"
            | "transfer-encoding" => return Parsed::General,
            "cookie" => {
                cookies += 1;
                continue;
            }
            _ if is_forwarding_header(n) => continue,
            _ => {}
        }
        upstream.extend_from_slice(n.as_bytes());
        upstream.extend_from_slice(b": ");
        upstream.extend_from_slice(value.as_bytes());
        upstream.extend_from_slice(b"\r\n");
    }
    if cookies > 0 {
        upstream.extend_from_slice(b"cookie: ");
        for (i, c) in req.headers.get_all(http::header::COOKIE).iter().enumerate() {
            if i > 0 {
                upstream.extend_from_slice(b"; ");
            }
            upstream.extend_from_slice(c.as_bytes());
        }
        upstream.extend_from_slice(b"\r\n");
    }
    Parsed::Fast(Request::new(
        Method::of(method),
        [method_at, path_at, host_at],
        0,
        false,
        0,
        header_bytes,
        upstream,
    ))
}

/// The HTTP/2 response for an upstream response head `raw` that [`crate::head::parse_response`]
/// accepted as `resp` for an HTTP/2 client: its status and end-to-end headers, and the
/// length when it is known.
///
/// Built from where the parse found each field, without parsing the head again. The header
/// values are slices of `raw`, not copies, so neither building the head nor pingora's copy
/// of it when it is sent allocates per value; the map is built directly, as pingora's
/// header setters would parse each name twice. The upstream's `date` is left out: pingora
/// sets its own on every HTTP/2 response head it writes, replacing any other.
pub fn response(raw: &Bytes, resp: &Response) -> Result<Box<ResponseHeader>, String> {
    let within = |at: &Range<u32>| {
        let at = at.start as usize..at.end as usize;
        match raw.get(at.clone()) {
            Some(_) => Ok(at),
            None => Err("field outside the response head".to_string()),
        }
    };
    let mut headers = HeaderMap::with_capacity(resp.fields.len() + 1);
    for f in &resp.fields {
        let name = &raw[within(&f.name)?];
        if name.eq_ignore_ascii_case(b"date") {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_maybe_shared(raw.slice(within(&f.value)?))
            .map_err(|e| e.to_string())?;
        headers.try_append(name, value).map_err(|e| e.to_string())?;
    }
    if let (Some(n), false) = (resp.content_length, resp.framing == Framing::Chunked) {
        let value = match &resp.length_at {
            Some(at) => {
                HeaderValue::from_maybe_shared(raw.slice(within(at)?)).map_err(|e| e.to_string())?
            }
            None => HeaderValue::from(n),
        };
        headers.insert(http::header::CONTENT_LENGTH, value);
    }
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = http::StatusCode::from_u16(resp.status).map_err(|e| e.to_string())?;
    parts.headers = headers;
    Ok(Box::new(ResponseHeader::from(parts)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{parse_response, ClientProto, ParsedResponse};

    fn req(authority: Option<&str>, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/p?q=1", Some(4)).unwrap();
        if let Some(a) = authority {
            // As the h2 crate hands a request over: scheme and authority in the URI.
            r.set_uri(format!("https://{a}/p?q=1").parse().unwrap());
        }
        r.set_version(http::Version::HTTP_2);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn fast(r: &RequestHeader) -> Request {
        match request(r) {
            Parsed::Fast(r) => r,
            Parsed::General => panic!("general path"),
        }
    }

    #[test]
    fn a_request_becomes_an_http1_head_with_joined_cookies_and_no_forwarding_headers() {
        let h = req(
            Some("abc.apps.test"),
            &[
                ("cookie", "a=1"),
                ("accept", "text/html"),
                ("x-forwarded-for", "6.6.6.6"),
                ("cookie", "b=2"),
                ("te", "trailers"),
            ],
        );
        let r = fast(&h);
        // The size limit counts what pingora's proxy counts for the same request.
        let counted = h.uri.to_string().len()
            + h.headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>();
        assert_eq!(r.header_bytes, counted);
        assert_eq!(r.host_bytes(), b"abc.apps.test");
        assert_eq!(r.path(), "/p?q=1");
        assert_eq!(r.method_name(), "GET");
        assert_eq!(r.method, Method::Get);
        assert_eq!(
            String::from_utf8(r.upstream).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: abc.apps.test\r\naccept: text/html\r\ncookie: a=1; b=2\r\n"
        );
    }

    #[test]
    fn host_and_authority_must_agree_and_one_must_be_there() {
        assert_eq!(
            fast(&req(None, &[("host", "x.test")])).host_bytes(),
            b"x.test"
        );
        assert_eq!(
            fast(&req(Some("X.test"), &[("host", "x.test")])).host_bytes(),
            b"x.test"
        );
        for r in [
            req(Some("a.test"), &[("host", "b.test")]),
            req(None, &[]),
            req(None, &[("host", "a.test"), ("host", "a.test")]),
            req(Some("a.test"), &[("expect", "100-continue")]),
            req(Some("a.test"), &[("te", "gzip")]),
        ] {
            assert!(matches!(request(&r), Parsed::General));
        }
    }

    fn h2_response(raw: &'static [u8]) -> Box<ResponseHeader> {
        let ParsedResponse::Complete(resp) = parse_response(raw, Method::Get, ClientProto::Http2)
        else {
            panic!("not complete")
        };
        // Only the HTTP/1 client's head is built by parse_response.
        assert!(resp.client.is_empty());
        response(&Bytes::from_static(&raw[..resp.head_len]), &resp).unwrap()
    }

    #[test]
    fn responses_lose_http1_framing_and_keep_a_known_length() {
        let raw: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-App: 1\r\nDate: Thu, 03 Dec 2026 10:00:00 GMT\r\n\r\n";
        let h = h2_response(raw);
        assert_eq!(h.status, 200);
        // pingora writes its own date over any the head has; the upstream's is not copied.
        assert!(h.headers.get("date").is_none());
        assert_eq!(h.headers.get("content-length").unwrap(), "5");
        assert_eq!(h.headers.get("x-app").unwrap(), "1");
        assert!(h.headers.get("connection").is_none());
        // The values are the upstream's bytes, not copies of them.
        let within = |v: &http::HeaderValue| raw.as_ptr_range().contains(&v.as_bytes().as_ptr());
        assert!(within(h.headers.get("x-app").unwrap()));
        assert!(within(h.headers.get("content-length").unwrap()));

        let h = h2_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
        );
        assert!(h.headers.get("content-length").is_none());
        assert!(h.headers.get("transfer-encoding").is_none());

        // A length with leading zeros goes to the client in its plain form.
        let h = h2_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 007\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n");
        assert_eq!(h.status, 404);
        assert_eq!(h.headers.get("content-length").unwrap(), "7");
        let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn the_http2_head_is_built_from_where_the_one_parse_found_each_field() {
        let raw: &[u8] =
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nKeep-Alive: t=5\r\n\r\n";
        let ParsedResponse::Complete(resp) = parse_response(raw, Method::Get, ClientProto::Http2)
        else {
            panic!("not complete")
        };
        let text = |at: &Range<u32>| &raw[at.start as usize..at.end as usize];
        let found: Vec<_> = resp
            .fields
            .iter()
            .map(|f| (text(&f.name), text(&f.value)))
            .collect();
        assert_eq!(found, [(&b"X-A"[..], &b"1"[..])]);
        assert_eq!(text(resp.length_at.as_ref().unwrap()), b"2");
        // An HTTP/1 client's parse records none of it.
        let ParsedResponse::Complete(h1) = parse_response(raw, Method::Get, ClientProto::Http1)
        else {
            panic!("not complete")
        };
        assert!(h1.fields.is_empty() && h1.length_at.is_none());
        // A head shorter than the places recorded is refused, not read past.
        let short = Bytes::from_static(&raw[..20]);
        assert!(response(&short, &resp).is_err());
    }
}
