//! Response heads, rendered in one place (status line, type, length, caching, CORS, connection), and
//! small complete responses (errors, JSON, HTML) rendered into one buffer and sent with one write.

use std::fmt::Write;

use super::multipart::{Timestamp, BOUNDARY};

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// `Cache-Control` for everything but streams: a frame or a figure is never worth caching.
pub const NO_STORE: &str = "no-store";

/// Renders a response head. Every response beltcam sends starts with one of these, so CORS, caching
/// and `Connection` are decided once. `extra` holds complete header lines (`Name: value\r\n`).
pub fn head(
    status: u16,
    content_type: &str,
    content_length: Option<usize>,
    extra: &str,
    cache_control: &str,
    close: bool,
) -> String {
    let mut out = String::with_capacity(256 + extra.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n",
        reason(status)
    );
    if let Some(n) = content_length {
        let _ = write!(out, "Content-Length: {n}\r\n");
    }
    let _ = write!(
        out,
        "{extra}Cache-Control: {cache_control}\r\nAccess-Control-Allow-Origin: *\r\nConnection: {}\r\n\r\n",
        if close { "close" } else { "keep-alive" }
    );
    out
}

/// A response being built: status, extra headers, body.
pub struct Response {
    pub status: u16,
    content_type: &'static str,
    extra: String,
    body: Vec<u8>,
    pub close: bool,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            extra: String::new(),
            body: body.into(),
            close: false,
        }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        let mut b = serde_json::to_vec(body).unwrap_or_default();
        b.push(b'\n');
        Self::new(status, "application/json", b)
    }

    /// A JSON error body `{"error": code, "reason": text}`.
    pub fn error(status: u16, reason_text: &str) -> Self {
        Self::json(
            status,
            &serde_json::json!({"error": reason(status), "status": status, "reason": reason_text}),
        )
    }

    pub fn header(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        let _ = write!(self.extra, "{name}: {value}\r\n");
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Head and (unless `head_only`) body, ready to write.
    pub fn render(&self, head_only: bool) -> Vec<u8> {
        let mut bytes = head(
            self.status,
            self.content_type,
            Some(self.body.len()),
            &self.extra,
            NO_STORE,
            self.close,
        )
        .into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The head of a snapshot response; the JPEG bytes follow from the lease.
pub fn snapshot_head(jpeg_len: usize, timestamp_us: u64, seq: u64, close: bool) -> Vec<u8> {
    // X-Accel-Buffering: nginx would otherwise buffer the JPEG (and spool slow clients to disk).
    let extra = format!(
        "X-Timestamp: {}\r\nX-Frame: {seq}\r\nX-Accel-Buffering: no\r\n",
        Timestamp(timestamp_us)
    );
    head(200, "image/jpeg", Some(jpeg_len), &extra, NO_STORE, close).into_bytes()
}

/// The response head of a stream; for GET (`head_only` false) followed by the first boundary
/// (body: a HEAD response carries none), without its CRLF, which the first part brings (see
/// `multipart`).
pub fn stream_head(head_only: bool) -> String {
    let mut h = head(
        200,
        &format!("multipart/x-mixed-replace;boundary={BOUNDARY}"),
        None,
        // X-Accel-Buffering: nginx's default proxy_buffering holds each part until the next
        // arrives (a frame late; a whole second for a 1 fps or NO SIGNAL stream).
        "Pragma: no-cache\r\nExpires: Mon, 3 Jan 2000 12:34:56 GMT\r\nX-Accel-Buffering: no\r\n",
        "no-store, no-cache, must-revalidate, max-age=0",
        true,
    );
    if !head_only {
        h.push_str("--");
        h.push_str(BOUNDARY);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_only_keeps_content_length() {
        let r = Response::new(200, "text/plain", "hello").header("Retry-After", 1);
        let full = String::from_utf8(r.render(false)).unwrap();
        let head = String::from_utf8(r.render(true)).unwrap();
        assert!(full.ends_with("\r\n\r\nhello"));
        assert!(head.ends_with("\r\n\r\n"));
        assert!(head.contains("Content-Length: 5\r\n"));
        assert!(head.contains("Retry-After: 1\r\n"));
    }

    #[test]
    fn error_is_json_with_reason() {
        let r = Response::error(503, "session table full").closing();
        let s = String::from_utf8(r.render(false)).unwrap();
        assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(s.contains("Connection: close"));
        let body: serde_json::Value =
            serde_json::from_str(s.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["reason"], "session table full");
    }

    #[test]
    fn frames_are_not_buffered_by_proxies() {
        assert!(stream_head(false).contains("X-Accel-Buffering: no\r\n"));
        assert!(
            stream_head(true).ends_with("\r\n\r\n"),
            "HEAD: no body bytes"
        );
        let snap = String::from_utf8(snapshot_head(10, 1, 2, false)).unwrap();
        assert!(snap.contains("X-Accel-Buffering: no\r\n"), "{snap}");
    }
}
