//! The small pages the gateway answers itself: unknown app, app down, bad name. Plain
//! HTML with the reason spelled out, and nothing about the gateway's internals.

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn page(status: u16, title: &str, detail: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{status} {t}</title></head>\n<body style=\"font-family:sans-serif;max-width:40em;margin:3em auto;padding:0 1em\">\
<h1>{status} {t}</h1>\n<p>{d}</p>\n<p><small>teegate gateway</small></p></body></html>\n",
        t = escape(title),
        d = escape(detail)
    )
}

/// A whole HTTP/1.1 answer carrying [`page`]: head and body in one buffer, so it leaves in
/// one write, and the connection closes after it.
pub fn http1_answer(status: u16, title: &str, detail: &str) -> Vec<u8> {
    let body = page(status, title, detail);
    let mut out = format!(
        "HTTP/1.1 {status} {title}\r\ncontent-type: text/html; charset=utf-8\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http1_answer_frames_its_page_and_closes() {
        let a = String::from_utf8(http1_answer(502, "Bad Gateway", "down")).unwrap();
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(head.ends_with("connection: close"));
        assert_eq!(body, page(502, "Bad Gateway", "down"));
    }

    #[test]
    fn escapes_markup() {
        let p = page(404, "Not <found>", "app \"<script>\" & co");
        assert!(p.contains("Not &lt;found&gt;"));
        assert!(p.contains("&quot;&lt;script&gt;&quot; &amp; co"));
        assert!(!p.contains("<script>"));
    }
}
