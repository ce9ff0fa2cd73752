//! Request-head parsing: pure, I/O-free and bounded, so it can be fuzzed and tested without sockets.
//!
//! The connection code appends bytes to a fixed buffer and calls [`parse`] after every read; the
//! answer is "need more", a parsed request, or the error response to send before closing.

use crate::limits::{MAX_HEADERS, MAX_REQUEST_HEAD};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Other,
}

/// What the server needs from a request head, owned (the read buffer is reused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Path without the query string, percent-decoded (an encoded `/` or NUL is refused, so the
    /// segments a route sees are the segments the client sent). Absolute-form targets
    /// (`http://host/path`) are reduced to their path.
    pub path: String,
    /// The raw query string after `?`, if any.
    pub query: Option<String>,
    /// HTTP/1.1 without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The `Authorization` header's value.
    pub authorization: Option<String>,
    /// The `User-Agent` says `Mozilla/` (every browser does): a stream gets the next part's
    /// headers in advance (see `multipart`).
    pub browser: bool,
    /// `Forwarded` and `X-Forwarded-For`, each header's lines joined with `, ` (believed only from
    /// a trusted proxy: `admit::forwarded`).
    pub forwarded: Option<String>,
    pub x_forwarded_for: Option<String>,
    /// Bytes of the head, so a pipelined next request can be found after it.
    pub head_len: usize,
    /// Declared body length (bodies are not used; a body is skipped or refused).
    pub content_length: usize,
}

impl Request {
    /// The value of query parameter `key` (first occurrence), if present.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("request head larger than {MAX_REQUEST_HEAD} bytes")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl ParseError {
    /// The status code answered for this error.
    pub fn status(self) -> u16 {
        match self {
            ParseError::HeadTooLarge | ParseError::TooManyHeaders => 431,
            ParseError::Malformed(_) => 400,
        }
    }
}

/// Parses the request head at the start of `buf`. `Ok(None)` means the head is incomplete and more
/// bytes may come; a buffer already at `MAX_REQUEST_HEAD` without a complete head is an error.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders),
        Err(e) => return Err(ParseError::Malformed(malformed_reason(e))),
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() >= MAX_REQUEST_HEAD => {
            return Err(ParseError::HeadTooLarge)
        }
        httparse::Status::Partial => return Ok(None),
    };
    if head_len > MAX_REQUEST_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let method = match req.method.unwrap_or_default() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let target = origin_form(req.path.unwrap_or_default())?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (percent_decode_path(p)?, Some(q.to_owned())),
        None => (percent_decode_path(target)?, None),
    };
    let version = req.version.unwrap_or(0);
    let mut keep_alive = version == 1;
    let mut authorization = None;
    let mut browser = false;
    let mut forwarded: Option<String> = None;
    let mut x_forwarded_for: Option<String> = None;
    let mut content_length = None;
    let mut hosts = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            let v = std::str::from_utf8(h.value).unwrap_or("");
            if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                keep_alive = false;
            } else if v
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
            {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = std::str::from_utf8(h.value).ok().map(str::to_owned);
        } else if h.name.eq_ignore_ascii_case("forwarded") {
            append_list(&mut forwarded, h.value);
        } else if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            append_list(&mut x_forwarded_for, h.value);
        } else if h.name.eq_ignore_ascii_case("user-agent") {
            browser = h.value.starts_with(b"Mozilla/");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(ParseError::Malformed("bad Content-Length"))?;
            // Two different lengths are how requests are smuggled past a proxy that reads the
            // other one (RFC 9112 §6.3); repeating the same value is harmless.
            if content_length.is_some_and(|c| c != n) {
                return Err(ParseError::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::Malformed("request bodies are not accepted"));
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without exactly one Host.
    if version == 1 && hosts != 1 {
        return Err(ParseError::Malformed(if hosts == 0 {
            "HTTP/1.1 request without Host"
        } else {
            "more than one Host header"
        }));
    }
    let content_length = content_length.unwrap_or(0);
    Ok(Some(Request {
        method,
        path,
        query,
        keep_alive,
        authorization,
        browser,
        forwarded,
        x_forwarded_for,
        head_len,
        content_length,
    }))
}

/// Appends one line of a list-valued header (RFC 9110 §5.3: lines combine with commas).
fn append_list(list: &mut Option<String>, value: &[u8]) {
    let v = String::from_utf8_lossy(value);
    match list {
        Some(l) => {
            l.push_str(", ");
            l.push_str(v.trim());
        }
        None => *list = Some(v.trim().to_owned()),
    }
}

/// The origin-form part (`/path?query`) of a request target. Absolute-form (`http://host/path`)
/// must be accepted by servers (RFC 9112 §3.2.2) although only proxies are sent it; the authority
/// is dropped (this server has one name).
fn origin_form(target: &str) -> Result<&str, ParseError> {
    if target.starts_with('/') {
        return Ok(target);
    }
    let scheme_end = target.find("://").filter(|&i| {
        let scheme = &target[..i];
        scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
    });
    let Some(i) = scheme_end else {
        return Err(ParseError::Malformed(
            "request target must be a path or an http:// URL",
        ));
    };
    let rest = &target[i + 3..];
    let path_at = rest.find(['/', '?']).unwrap_or(rest.len());
    if path_at == 0 {
        return Err(ParseError::Malformed("absolute URL without a host"));
    }
    match &rest[path_at..] {
        // `http://host` and `http://host?q` mean the root (RFC 9112 §3.2.2: an empty path is "/").
        "" => Ok("/"),
        p if p.starts_with('?') => Err(ParseError::Malformed(
            "absolute URL with a query but no path",
        )),
        p => Ok(p),
    }
}

/// Decodes `%XX` escapes in a path. An escape that is not two hex digits, one that decodes to `/`
/// (it would move a segment boundary: `/cam/a%2Fb/stream`) or to NUL, and a result that is not
/// UTF-8 are refused.
fn percent_decode_path(path: &str) -> Result<String, ParseError> {
    if !path.contains('%') {
        return Ok(path.to_owned());
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(ParseError::Malformed("bad %-escape in path"));
        };
        match hi << 4 | lo {
            b'/' => return Err(ParseError::Malformed("encoded '/' in a path segment")),
            0 => return Err(ParseError::Malformed("encoded NUL in path")),
            b => out.push(b),
        }
        i += 3;
    }
    String::from_utf8(out).map_err(|_| ParseError::Malformed("path is not UTF-8"))
}

fn malformed_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_with_query() {
        let r = parse(b"GET /?action=stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/");
        assert_eq!(r.query_param("action"), Some("stream"));
        assert!(r.keep_alive);
        assert_eq!(r.head_len, 41);
    }

    #[test]
    fn partial_then_complete() {
        assert_eq!(parse(b"GET /stream HTTP/1.1\r\nHo").unwrap(), None);
        assert!(parse(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .is_some());
        assert!(parse(b"GET /stream HTTP/1.0\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let r = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        let r = parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
    }

    #[test]
    fn oversized_head_is_431() {
        let mut big = b"GET / HTTP/1.1\r\nX-Fill: ".to_vec();
        big.resize(MAX_REQUEST_HEAD, b'a');
        assert_eq!(parse(&big).unwrap_err().status(), 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert_eq!(parse(&req).unwrap_err(), ParseError::TooManyHeaders);
    }

    #[test]
    fn garbage_is_400() {
        for g in [
            &b"\x00\x01\x02garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(parse(g).unwrap_err().status(), 400, "{g:?}");
        }
    }

    #[test]
    fn unknown_method_parses_as_other() {
        let r = parse(b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.method, Method::Other);
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        for bad in [
            &b"GET /stream HTTP/1.1\r\n\r\n"[..],
            b"GET /stream HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert_eq!(parse(bad).unwrap_err().status(), 400, "{bad:?}");
        }
        // HTTP/1.0 predates Host; an empty Host value is allowed (RFC 9112 §3.2).
        assert!(parse(b"GET /stream HTTP/1.0\r\n\r\n").unwrap().is_some());
        assert!(parse(b"GET /stream HTTP/1.1\r\nHost:\r\n\r\n")
            .unwrap()
            .is_some());
    }

    #[test]
    fn conflicting_content_lengths_are_400() {
        let e =
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(e.unwrap_err().status(), 400);
        let r =
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().content_length, 5);
    }

    #[test]
    fn absolute_form_targets_are_reduced_to_their_path() {
        for (target, path, query) in [
            ("http://cam.local/stream", "/stream", None),
            (
                "HTTP://cam.local:8080/cam/front/snapshot",
                "/cam/front/snapshot",
                None,
            ),
            ("https://h/?action=stream", "/", Some("action=stream")),
            ("http://h", "/", None),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
            let r = parse(raw.as_bytes()).unwrap().unwrap();
            assert_eq!(
                (r.path.as_str(), r.query.as_deref()),
                (path, query),
                "{target}"
            );
        }
        for bad in ["http:///stream", "http://h?x=1", "mailto://x/"] {
            let raw = format!("GET {bad} HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(parse(raw.as_bytes()).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[test]
    fn paths_are_percent_decoded_segment_by_segment() {
        let p = |t: &str| {
            let raw = format!("GET {t} HTTP/1.1\r\nHost: h\r\n\r\n");
            parse(raw.as_bytes()).map(|r| r.unwrap().path)
        };
        assert_eq!(p("/cam/f%72ont/stream").unwrap(), "/cam/front/stream");
        assert_eq!(p("/cam/k%C3%BCche/stream").unwrap(), "/cam/küche/stream");
        assert_eq!(p("/a%3Fb?x=%2F").unwrap(), "/a?b");
        for bad in [
            "/cam/a%2Fb/stream",
            "/cam/a%2fb/stream",
            "/str%00eam",
            "/%zz",
            "/%4",
            "/%C3",
        ] {
            assert_eq!(p(bad).unwrap_err().status(), 400, "{bad}");
        }
    }
}
