//! The relay camera: an upstream MJPEG stream over HTTP (ustreamer, mjpg-streamer's
//! `?action=stream`, another beltcam, an IP camera), read over one connection whatever the number of
//! viewers, its parts published into the pool like any camera's frames.
//!
//! Bounded like the rest: the response head is read into a fixed buffer, parts through one
//! `PartReader` buffer (a slot and a part head, allocated once and kept across reconnects); a part
//! larger than a slot is skipped and counted, bytes that are not a part are skipped and counted.
//! Every wait has a deadline: resolving the host (in a helper thread: `getaddrinfo` cannot be
//! cancelled), connecting, the response head, and the next frame. Failing any of them, the camera
//! goes offline (placeholder, degraded) and the capture thread reconnects with its capped backoff,
//! plus a random delay here so that many relays of one upstream do not reconnect in step.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use super::jpeg;
use super::{now_us, wait_until, Camera, FrameSource, SourceError, StreamInfo};
use crate::config::spec::HttpUrl;
use crate::http::part_reader::{self, Event, PartReader};
use crate::obs::stats::UpstreamStats;
use crate::pool::MAX_JPEG_BYTES;

/// Resolving the upstream's name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting to it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// From connected to the end of the response head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// No whole frame for this long: the upstream is stalled; reconnect.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// One blocking read at most this long, so the heartbeat keeps beating and a stop is noticed.
const READ_SLICE: Duration = Duration::from_millis(250);
/// An upstream `X-Timestamp` older than this (or in the future) is taken for clock skew between the
/// hosts, and the arrival time is used instead.
const MAX_UPSTREAM_AGE_US: u64 = 1_000_000;
/// The largest response head accepted.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// The upstream connection's counters, shared with the camera's views (`/stats`, `/metrics`).
#[derive(Default)]
pub struct UpstreamCounters {
    connected: AtomicBool,
    bytes: AtomicU64,
    connects: AtomicU64,
    garbage_bytes: AtomicU64,
    oversize_parts: AtomicU64,
    last_error: Mutex<String>,
}

impl UpstreamCounters {
    pub fn stats(&self) -> UpstreamStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let connects = l(&self.connects);
        UpstreamStats {
            connected: self.connected.load(Ordering::Relaxed),
            bytes: l(&self.bytes),
            connects,
            reconnects: connects.saturating_sub(1),
            garbage_bytes: l(&self.garbage_bytes),
            oversize_parts: l(&self.oversize_parts),
            last_error: self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        }
    }

    fn failed(&self, why: &str) {
        self.connected.store(false, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            why.clone_into(&mut e);
        }
    }
}

pub struct RelaySource {
    url: HttpUrl,
    /// The request, written once: it never changes.
    request: Vec<u8>,
    sock: Option<TcpStream>,
    reader: Option<PartReader>,
    counters: Arc<UpstreamCounters>,
    last_frame: Instant,
    /// Consecutive failed connections (for the jitter).
    failures: u32,
    size: (u32, u32),
}

impl RelaySource {
    pub fn new(url: HttpUrl) -> RelaySource {
        let mut request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: beltcam/{}\r\n\
             Accept: multipart/x-mixed-replace, image/jpeg\r\n",
            url.path,
            url.authority(),
            env!("CARGO_PKG_VERSION")
        );
        if let Some(c) = &url.credentials {
            let b64 = base64::engine::general_purpose::STANDARD.encode(c);
            request += &format!("Authorization: Basic {b64}\r\n");
        }
        request += "\r\n";
        RelaySource {
            url,
            request: request.into_bytes(),
            sock: None,
            reader: None,
            counters: Arc::default(),
            last_frame: Instant::now(),
            failures: 0,
            size: (0, 0),
        }
    }

    fn fail(&mut self, e: SourceError) -> SourceError {
        self.failures = self.failures.saturating_add(1);
        self.counters.failed(&e.to_string());
        self.sock = None;
        e
    }

    fn connect(&mut self, cam: &Camera) -> Result<TcpStream, SourceError> {
        let addr = resolve(&self.url, cam)?;
        let sock = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| SourceError::Open(format!("connect {}: {e}", self.url.authority())))?;
        let _ = sock.set_nodelay(true);
        sock.set_read_timeout(Some(READ_SLICE))
            .and_then(|()| sock.set_write_timeout(Some(CONNECT_TIMEOUT)))
            .map_err(|e| SourceError::Open(format!("socket: {e}")))?;
        Ok(sock)
    }

    /// Sends the request and reads the response head; the bytes after it go to the part reader.
    fn handshake(&mut self, cam: &Camera, mut sock: TcpStream) -> Result<(), SourceError> {
        sock.write_all(&self.request)
            .map_err(|e| SourceError::Open(format!("send request: {e}")))?;
        let mut head = [0u8; MAX_RESPONSE_HEAD];
        let mut len = 0;
        let deadline = Instant::now() + HEAD_TIMEOUT;
        let (boundary, head_len) = loop {
            cam.heartbeat.beat();
            if cam.stopping() {
                return Err(SourceError::Open("stopping".into()));
            }
            if Instant::now() >= deadline {
                return Err(SourceError::Timeout(HEAD_TIMEOUT));
            }
            match sock.read(&mut head[len..]) {
                Ok(0) => {
                    return Err(SourceError::Open(
                        "upstream closed the connection before answering".into(),
                    ))
                }
                Ok(n) => len += n,
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(SourceError::Open(format!("read response: {e}"))),
            }
            if let Some(found) = parse_head(&head[..len])? {
                break found;
            }
            if len == head.len() {
                return Err(SourceError::Open(format!(
                    "upstream's response head is larger than {MAX_RESPONSE_HEAD} bytes"
                )));
            }
        };
        let reader = match self.reader.as_mut() {
            Some(r) => {
                r.reset(&boundary);
                r
            }
            None => self
                .reader
                .insert(PartReader::new(&boundary, MAX_JPEG_BYTES)),
        };
        let rest = &head[head_len..len];
        reader.spare()[..rest.len()].copy_from_slice(rest);
        reader.filled(rest.len());
        self.counters.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.sock = Some(sock);
        Ok(())
    }
}

impl FrameSource for RelaySource {
    fn open(&mut self, cam: &Camera) -> Result<StreamInfo, SourceError> {
        cam.attach_upstream(Arc::clone(&self.counters));
        if self.failures > 0 {
            // Jitter on top of the capture thread's backoff: up to 250 ms per failure, 2 s at most.
            let span = (250 * u64::from(self.failures)).min(2000);
            let wait = Duration::from_millis(jitter(span));
            if !wait_until(cam, Instant::now() + wait) {
                return Err(SourceError::Open("stopping".into()));
            }
        }
        let sock = self.connect(cam).map_err(|e| self.fail(e))?;
        self.handshake(cam, sock).map_err(|e| self.fail(e))?;
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        self.counters.connected.store(true, Ordering::Relaxed);
        self.last_frame = Instant::now();
        Ok(StreamInfo {
            format: "MJPG relay".into(),
            width: self.size.0,
            height: self.size.1,
            fps: 0.0,
            passthrough: true,
        })
    }

    fn capture(&mut self, cam: &Camera) -> Result<(), SourceError> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Err(SourceError::Open("capture before open".into()));
            };
            let mut published = None;
            let mut ready = None;
            let mut ended = false;
            // Everything already buffered first: a whole part is published at once.
            while let Some(ev) = reader.next_event() {
                match ev {
                    Event::Part(body) => {
                        cam.count_captured();
                        let Some(mut slot) = cam.claim() else {
                            published = Some(None);
                            break;
                        };
                        let buf = slot.jpeg_buf();
                        buf[..body.len()].copy_from_slice(body);
                        match jpeg::check(&buf[..body.len()]) {
                            Ok(info) => ready = Some((slot, info)),
                            Err(e) => {
                                cam.count_invalid();
                                tracing::debug!(camera = %cam.name, %e, "invalid part from upstream");
                                published = Some(None);
                            }
                        }
                        break;
                    }
                    Event::Oversize(_) => {
                        cam.count_captured();
                        cam.count_oversize();
                        self.counters.oversize_parts.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Garbage(n) => {
                        self.counters
                            .garbage_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Event::End => ended = true,
                }
            }
            if let Some((slot, info)) = ready {
                // The upstream's capture time when it gives one that this clock agrees with (so
                // latency through relays adds up end to end), else the time it arrived.
                let now = now_us();
                let captured = reader
                    .part_timestamp_us()
                    .filter(|&t| t <= now && now - t <= MAX_UPSTREAM_AGE_US)
                    .unwrap_or(now);
                let size = (u32::from(info.width), u32::from(info.height));
                cam.publish(slot, info.len, captured, size.0, size.1);
                published = Some(Some(size));
            }
            if ended {
                let e = SourceError::Gone("upstream ended the stream".into());
                return Err(self.fail(e));
            }
            if let Some(p) = published {
                self.last_frame = Instant::now();
                self.failures = 0;
                if let Some(size) = p {
                    if size != self.size {
                        self.size = size;
                        cam.set_size(size.0, size.1);
                    }
                }
                return Ok(());
            }
            cam.heartbeat.beat();
            if cam.stopping() {
                return Ok(());
            }
            if self.last_frame.elapsed() >= FRAME_TIMEOUT {
                return Err(self.fail(SourceError::Timeout(FRAME_TIMEOUT)));
            }
            let (Some(sock), Some(reader)) = (self.sock.as_mut(), self.reader.as_mut()) else {
                return Err(SourceError::Open("capture before open".into()));
            };
            match sock.read(reader.spare()) {
                Ok(0) => {
                    let e = SourceError::Gone("upstream closed the connection".into());
                    return Err(self.fail(e));
                }
                Ok(n) => {
                    reader.filled(n);
                    self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(self.fail(SourceError::Gone(format!("read: {e}")))),
            }
        }
    }

    fn close(&mut self) {
        self.sock = None;
        self.counters.connected.store(false, Ordering::Relaxed);
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// The upstream's address: an IP literal at once, a name through the resolver in a helper thread,
/// waited for at most `RESOLVE_TIMEOUT` (the thread is left to finish on its own after that).
fn resolve(url: &HttpUrl, cam: &Camera) -> Result<SocketAddr, SourceError> {
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, url.port));
    }
    let (tx, rx) = mpsc::channel();
    let target = (url.host.clone(), url.port);
    std::thread::Builder::new()
        .name("relay-resolve".into())
        .spawn(move || {
            let _ = tx.send(target.to_socket_addrs().map(|mut a| a.next()));
        })
        .map_err(|e| SourceError::Open(format!("resolve: {e}")))?;
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    loop {
        cam.heartbeat.beat();
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Some(a))) => return Ok(a),
            Ok(Ok(None)) => return Err(SourceError::Open(format!("{}: no address", url.host))),
            Ok(Err(e)) => return Err(SourceError::Open(format!("resolve {}: {e}", url.host))),
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => {
                return Err(SourceError::Open(format!(
                    "resolve {}: no answer within {RESOLVE_TIMEOUT:?}",
                    url.host
                )))
            }
        }
    }
}

/// A complete response head: the boundary of its multipart body and the head's length; `None` while
/// incomplete; an error for any answer that is not an MJPEG stream.
fn parse_head(buf: &[u8]) -> Result<Option<(String, usize)>, SourceError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(SourceError::Open(format!("upstream's response: {e}"))),
    };
    let code = resp.code.unwrap_or(0);
    if code != 200 {
        let hint = match code {
            401 | 403 => " (check the user:password in the URL)",
            404 => " (check the path: /stream for ustreamer and beltcam, /?action=stream for mjpg-streamer)",
            _ => "",
        };
        return Err(SourceError::Open(format!(
            "upstream answered {code} {}{hint}",
            resp.reason.unwrap_or("")
        )));
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if header("transfer-encoding").is_some_and(|v| !v.eq_ignore_ascii_case("identity")) {
        return Err(SourceError::Open(
            "upstream sent a chunked body to an HTTP/1.0 request".into(),
        ));
    }
    let ct = header("content-type").unwrap_or("");
    match part_reader::boundary(ct) {
        Some(b) => Ok(Some((b, head_len))),
        None => Err(SourceError::Open(format!(
            "upstream is not an MJPEG stream (Content-Type: {ct:?})"
        ))),
    }
}

/// A random number in `0..span` (no crate needed for jitter: the clock's nanoseconds, hashed).
fn jitter(span: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now_us() as u128);
    h.finish() % span.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=boundarydonotcross\r\n\r\n--b";
        assert_eq!(
            parse_head(ok).unwrap(),
            Some(("boundarydonotcross".into(), ok.len() - 3))
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Ty").unwrap(), None);
        let e = |b: &[u8]| parse_head(b).unwrap_err().to_string();
        assert!(e(b"HTTP/1.1 401 Unauthorized\r\n\r\n").contains("user:password"));
        assert!(e(b"HTTP/1.1 404 Not Found\r\n\r\n").contains("?action=stream"));
        assert!(e(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n\r\n").contains("not an MJPEG"));
        assert!(e(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: multipart/x-mixed-replace;boundary=b\r\n\r\n").contains("chunked"));
        assert!(e(b"garbage\r\n\r\n").contains("response"));
    }

    #[test]
    fn request_carries_host_and_basic_auth_never_twice() {
        let r = RelaySource::new(HttpUrl::parse("http://op:s3cret@[::1]:5001/stream").unwrap());
        let req = String::from_utf8(r.request.clone()).unwrap();
        assert!(
            req.starts_with("GET /stream HTTP/1.0\r\nHost: [::1]:5001\r\n"),
            "{req}"
        );
        assert!(
            req.contains("Authorization: Basic b3A6czNjcmV0\r\n"),
            "{req}"
        );
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn jitter_stays_in_range() {
        for span in [1, 7, 250, 2000] {
            for _ in 0..100 {
                assert!(jitter(span) < span);
            }
        }
    }
}
