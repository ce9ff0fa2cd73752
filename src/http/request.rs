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
    Delete,
    Other,
}

/// What the server needs from a request head, owned (the read buffer is reused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Path without the query string, percent-decoding not applied (none of our paths need it).
    pub path: String,
    /// The raw query string after `?`, if any.
    pub query: Option<String>,
    /// HTTP/1.1 without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The `Authorization` header's value.
    pub authorization: Option<String>,
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
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or_default();
    if !target.starts_with('/') {
        return Err(ParseError::Malformed("request target must start with '/'"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let version = req.version.unwrap_or(0);
    let mut keep_alive = version == 1;
    let mut authorization = None;
    let mut content_length = 0usize;
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
        } else if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(ParseError::Malformed("bad Content-Length"))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::Malformed("request bodies are not accepted"));
        }
    }
    Ok(Some(Request {
        method,
        path,
        query,
        keep_alive,
        authorization,
        head_len,
        content_length,
    }))
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
        let r = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
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
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(parse(g).unwrap_err().status(), 400, "{g:?}");
        }
    }

    #[test]
    fn unknown_method_parses_as_other() {
        let r = parse(b"BREW /pot HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.method, Method::Other);
    }
}
