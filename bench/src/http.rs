//! Small blocking HTTP helpers with deadlines: readiness probes (`/health`, `/stats`) and fetching
//! one JPEG so the raw baseline sends the same frame bytes the daemon does.
//!
//! Every call is bounded in time and size; these run a handful of times per configuration, so
//! simplicity beats speed here.

use crate::multipart::Parser;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

/// `GET path` with `Connection: close`; returns the status and body.
pub fn get(addr: SocketAddrV4, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    beltcam_testkit::http::get(SocketAddr::V4(addr), path, timeout)
        .map(|(status, _, body)| (status, body))
        .map_err(|e| format!("GET {path}: {e}"))
}

fn connect(addr: SocketAddrV4, path: &str, timeout: Duration) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let per_op = Some(timeout.max(Duration::from_millis(10)));
    s.set_read_timeout(per_op)
        .and_then(|_| s.set_write_timeout(per_op))
        .map_err(|e| format!("socket timeout: {e}"))?;
    s.write_all(beltcam_testkit::http::get_request(path).as_bytes())
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok(s)
}

/// Polls `/health` (then `/stats`) until one answers 200, or the deadline passes. `alive` is asked
/// between attempts so a daemon that exited is reported at once instead of at the deadline.
pub fn wait_ready(
    addr: SocketAddrV4,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        alive()?;
        for path in ["/health", "/stats"] {
            match get(addr, path, Duration::from_millis(500)) {
                Ok((200, _)) => return Ok(()),
                Ok((code, _)) => last = format!("{path} answered {code}"),
                Err(e) => last = e,
            }
        }
        std::thread::sleep(Duration::from_millis(50)); // poll interval, not synchronisation
    }
    Err(format!(
        "server at {addr} not ready after {timeout:?} ({last})"
    ))
}

/// One JPEG from the server: `/snapshot`, or else the first part of `stream_path`.
pub fn fetch_frame(addr: SocketAddrV4, stream_path: &str) -> Result<Vec<u8>, String> {
    if let Ok((200, body)) = get(addr, "/snapshot", Duration::from_secs(3)) {
        if body.starts_with(&[0xff, 0xd8]) {
            return Ok(body);
        }
    }
    let timeout = Duration::from_secs(5);
    let deadline = Instant::now() + timeout;
    let mut s = connect(addr, stream_path, timeout)?;
    let mut parser = Parser::new(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut frame = None;
    while frame.is_none() {
        if Instant::now() > deadline {
            return Err(format!("no frame from {stream_path} within {timeout:?}"));
        }
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("{stream_path}: {e}"))?;
        if n == 0 {
            return Err(format!("{stream_path}: closed before the first frame"));
        }
        parser.feed(&buf[..n], |p| {
            if frame.is_none() {
                frame = Some(p.body);
            }
        })?;
    }
    frame.ok_or_else(|| "no frame".to_string())
}

/// A JPEG of `w`x`h` with enough texture to compress like a camera image (quality 80), for runs
/// without a daemon to copy a frame from.
pub fn synthetic_jpeg(w: u16, h: u16) -> Result<Vec<u8>, String> {
    let mut rgb = Vec::with_capacity(usize::from(w) * usize::from(h) * 3);
    let mut seed: u32 = 0x9e37_79b9;
    for y in 0..u32::from(h) {
        for x in 0..u32::from(w) {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let noise = (seed & 0x1f) as u8;
            let bar = ((x / 40 + y / 40) % 2) as u8 * 60;
            rgb.push((x * 255 / u32::from(w)) as u8 / 2 + bar + noise);
            rgb.push((y * 255 / u32::from(h)) as u8 / 2 + noise);
            rgb.push(90 + bar / 2 + noise);
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 80)
        .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| format!("encode synthetic JPEG: {e}"))?;
    Ok(out)
}
