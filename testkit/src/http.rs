//! Blocking HTTP/1.1 for tests and probes: send a request, read the answer until the peer closes,
//! and split it into status, head and body. Every read and write has a timeout, and the answer is
//! bounded in size.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The most bytes of an answer kept; more is cut off (a stream asked for by mistake ends here).
pub const MAX_ANSWER: u64 = 64 << 20;

/// `GET path` with `Connection: close`, as every helper sends it.
pub fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
}

/// Connects to `addr` (within `timeout`), sends `request` and returns what came back.
pub fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    exchange_on(
        TcpStream::connect_timeout(&addr, timeout)?,
        request,
        timeout,
    )
}

/// Sends `request` on a connection the caller made and reads until the peer closes, a read fails
/// or waits `timeout` for data: what came so far is the answer (a reset after a complete response
/// still counts as the response).
pub fn exchange_on(mut s: TcpStream, request: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let _ = (&mut s).take(MAX_ANSWER).read_to_end(&mut out);
    Ok(out)
}

/// Splits a response into status code, head (without the blank line) and body.
pub fn parse_response(out: &[u8]) -> io::Result<(u16, String, Vec<u8>)> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no response head in {} bytes", out.len())))?;
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other("no status code"))?;
    Ok((code, head, out[split + 4..].to_vec()))
}

/// `GET path` on `addr`: status, head, body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String, Vec<u8>)> {
    parse_response(&exchange(addr, get_request(path).as_bytes(), timeout)?)
}

/// The value of header `name` (any case) in a response or request head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_status_head_and_body() {
        let (code, head, body) =
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\n\r\n{}")
                .unwrap();
        assert_eq!(code, 503);
        assert_eq!(header(&head, "retry-after"), Some("2"));
        assert_eq!(body, b"{}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
