//! The raw baseline: the smallest server that does beltcam's job for one camera — one thread, one
//! epoll loop, nonblocking `writev` of part header + JPEG + trailer to every viewer at the frame rate.
//!
//! It runs as a separate process (`beltcam-bench __baseline`, spawned by the bench) so its CPU and
//! RSS are read from `/proc` exactly like the daemon's, and the daemon's "CPU-seconds per delivered
//! GB" can be given as a ratio to it. It uses the same multipart framing and a real `X-Timestamp`
//! per frame, and the same slow-client policy as beltcam: a viewer still sending the previous frame
//! skips the new one. It serves every request path as the stream and exits after `max_seconds`.

use crate::sys::{self, Epoll};
use std::io::{self, IoSlice, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const LISTENER: u64 = u64::MAX;
const BOUNDARY: &str = "boundarydonotcross";
const TRAILER: &[u8] = b"\r\n--boundarydonotcross\r\n";

struct Client {
    sock: TcpStream,
    streaming: bool,
    /// Header bytes of what is being sent (response head or part header).
    hdr: Vec<u8>,
    /// Whether JPEG + trailer follow `hdr`.
    with_frame: bool,
    /// Bytes of hdr (+ JPEG + trailer) already written; `None` when idle.
    off: Option<usize>,
    /// EPOLLOUT is armed (a write is blocked on a full socket buffer).
    armed: bool,
}

/// Runs the baseline server until `max_seconds` pass or it is killed. Prints the bound port on
/// stdout (one line) once listening, which is how the parent knows it is ready.
pub fn serve(jpeg: &[u8], fps: u32, max_seconds: u64) -> Result<(), String> {
    let _ = sys::die_with_parent();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?
        .port();
    let mut out = io::stdout();
    writeln!(out, "{port}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("stdout: {e}"))?;

    let mut ep = Epoll::new(1024).map_err(|e| format!("epoll: {e}"))?;
    ep.add(listener.as_raw_fd(), sys::IN, LISTENER)
        .map_err(|e| format!("epoll add: {e}"))?;
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let period = Duration::from_secs_f64(1.0 / f64::from(fps.max(1)));
    let deadline = Instant::now() + Duration::from_secs(max_seconds);
    let mut next_tick = Instant::now();
    let mut seq: u64 = 0;
    let mut part_hdr = Vec::with_capacity(160);
    let mut buf = vec![0u8; 4096];

    while Instant::now() < deadline {
        let now = Instant::now();
        if now >= next_tick {
            seq += 1;
            part_hdr.clear();
            let ts = sys::realtime_us();
            let _ = write!(
                part_hdr,
                "Content-Type: image/jpeg\r\nContent-Length: {}\r\nX-Timestamp: {}.{:06}\r\nX-Frame: {seq}\r\n\r\n",
                jpeg.len(),
                ts / 1_000_000,
                ts % 1_000_000
            );
            for (i, slot) in clients.iter_mut().enumerate() {
                let Some(c) = slot else { continue };
                if !c.streaming || c.off.is_some() {
                    continue; // still sending the previous frame: skip this one
                }
                c.hdr.clear();
                c.hdr.extend_from_slice(&part_hdr);
                c.with_frame = true;
                c.off = Some(0);
                if !push(c, jpeg, &ep, i as u64) {
                    *slot = None;
                    free.push(i);
                }
            }
            next_tick += period;
            if next_tick < now {
                next_tick = now + period; // fell behind: do not burst to catch up
            }
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        let events = ep.wait(wait).map_err(|e| format!("epoll_wait: {e}"))?;
        for (token, ev) in events {
            if token == LISTENER {
                accept_all(&listener, &ep, &mut clients, &mut free);
                continue;
            }
            let i = token as usize;
            let Some(Some(c)) = clients.get_mut(i) else {
                continue;
            };
            let mut alive = ev & sys::ERR_HUP == 0;
            if alive && ev & (sys::IN | sys::RDHUP) != 0 {
                match c.sock.read(&mut buf) {
                    Ok(0) => alive = false,
                    Ok(_) if !c.streaming => {
                        // Any request gets the stream; the head ends with the first boundary.
                        c.streaming = true;
                        c.hdr.clear();
                        let _ = write!(
                            c.hdr,
                            "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary={BOUNDARY}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n--{BOUNDARY}\r\n"
                        );
                        c.with_frame = false;
                        c.off = Some(0);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => alive = false,
                }
            }
            if alive && c.off.is_some() {
                alive = push(c, jpeg, &ep, token);
            }
            if !alive {
                clients[i] = None;
                free.push(i);
            }
        }
    }
    Ok(())
}

fn accept_all(
    listener: &TcpListener,
    ep: &Epoll,
    clients: &mut Vec<Option<Client>>,
    free: &mut Vec<usize>,
) {
    // Bounded: at most a few thousand per wake-up, the rest come with the next one.
    for _ in 0..4096 {
        let sock = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => return, // WouldBlock, or EMFILE and friends: try again next wake-up
        };
        if sock.set_nonblocking(true).is_err() {
            continue;
        }
        let i = free.pop().unwrap_or(clients.len());
        if ep
            .add(sock.as_raw_fd(), sys::IN | sys::RDHUP, i as u64)
            .is_err()
        {
            continue;
        }
        let c = Client {
            sock,
            streaming: false,
            hdr: Vec::with_capacity(256),
            with_frame: false,
            off: None,
            armed: false,
        };
        if i == clients.len() {
            clients.push(Some(c));
        } else {
            clients[i] = Some(c);
        }
    }
}

/// Writes as much of the client's pending bytes as the socket takes. Returns false if the
/// connection is dead. Arms EPOLLOUT while bytes remain, disarms it when done.
fn push(c: &mut Client, jpeg: &[u8], ep: &Epoll, token: u64) -> bool {
    let Some(mut off) = c.off else { return true };
    let parts: [&[u8]; 3] = if c.with_frame {
        [&c.hdr, jpeg, TRAILER]
    } else {
        [&c.hdr, &[], &[]]
    };
    let total: usize = parts.iter().map(|p| p.len()).sum();
    while off < total {
        let mut skip = off;
        let mut iov = [IoSlice::new(&[]); 3];
        let mut k = 0;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
            } else {
                iov[k] = IoSlice::new(&p[skip..]);
                k += 1;
                skip = 0;
            }
        }
        match c.sock.write_vectored(&iov[..k]) {
            Ok(0) => return false,
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.off = Some(off);
                if c.armed {
                    return true;
                }
                c.armed = true;
                return ep
                    .modify(c.sock.as_raw_fd(), sys::IN | sys::RDHUP | sys::OUT, token)
                    .is_ok();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    c.off = None;
    if c.armed {
        c.armed = false;
        return ep
            .modify(c.sock.as_raw_fd(), sys::IN | sys::RDHUP, token)
            .is_ok();
    }
    true
}
