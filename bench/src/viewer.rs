//! The load generator: N loopback MJPEG viewers on a few threads, each thread one epoll loop over its
//! share of the sockets with one large read buffer.
//!
//! A thread per viewer would make the generator itself the bottleneck on a 2-core box (1,000 stacks,
//! 1,000 wake-ups per frame); this way a viewer is a socket, a parser and counters. Connections are
//! opened with a bounded number in flight so a 1,000-viewer run does not overflow the server's
//! accept/pending queue. Frames, bytes and latency (receive time of a part's last byte minus its
//! `X-Timestamp`) are only counted while the run's measured window is open.
//!
//! A share of the viewers may be slow (read at most `slow_bytes_per_s`, on a timer) or stalled
//! (read the response head, then never read again): the slow-client presets. Both are taken out of
//! the epoll set once their head arrived, so they cost the loop nothing while they wait.

use crate::multipart::Parser;
use crate::sys::{self, Epoll};
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PHASE_CONNECT: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_STOP: u8 = 2;
const READ_BUF: usize = 256 * 1024;
/// Connections per thread that are opening or waiting for their response head at once.
const MAX_IN_FLIGHT: usize = 32;
/// How often slow viewers get their read allowance.
const SLOW_TICK: Duration = Duration::from_millis(50);

/// How a viewer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// As fast as the loop can.
    #[default]
    Fast,
    /// At most `LoadConfig::slow_bytes_per_s`.
    Slow,
    /// The response head, then nothing.
    Stalled,
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: SocketAddrV4,
    pub path: String,
    pub viewers: usize,
    pub threads: usize,
    /// Of `viewers`, how many read slowly and how many stall after the head.
    pub slow: usize,
    pub stalled: usize,
    pub slow_bytes_per_s: u64,
}

/// What one viewer saw.
#[derive(Debug, Clone, Default)]
pub struct ViewerStats {
    pub kind: Kind,
    /// A `200` multipart response head arrived.
    pub connected: bool,
    /// Why the connection failed or ended early, if it did.
    pub error: Option<String>,
    /// Parts completed inside the measured window.
    pub frames: u64,
    /// Bytes read inside the measured window.
    pub bytes: u64,
    /// Sum of the parts' `Content-Length` inside the window (JPEG bytes alone).
    pub jpeg_bytes: u64,
    /// Sequence numbers skipped between consecutive parts (server-side frame skipping).
    pub seq_gaps: u64,
    /// Latency of each part completed in the window, in microseconds.
    pub latencies_us: Vec<i64>,
}

struct Shared {
    phase: AtomicU8,
    settled: AtomicUsize,
}

/// A running load; dropped sockets close when `finish` joins the threads.
pub struct Load {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<Result<Vec<ViewerStats>, String>>>,
}

impl Load {
    pub fn start(cfg: &LoadConfig) -> io::Result<Load> {
        if !cfg.addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing non-loopback target {}", cfg.addr),
            ));
        }
        let shared = Arc::new(Shared {
            phase: AtomicU8::new(PHASE_CONNECT),
            settled: AtomicUsize::new(0),
        });
        let threads = cfg.threads.clamp(1, cfg.viewers.max(1));
        // Slow and stalled viewers first, dealt round-robin so every thread gets its share.
        let mut per_thread: Vec<Vec<Kind>> = vec![Vec::new(); threads];
        for i in 0..cfg.viewers {
            let kind = if i < cfg.slow {
                Kind::Slow
            } else if i < cfg.slow + cfg.stalled {
                Kind::Stalled
            } else {
                Kind::Fast
            };
            per_thread[i % threads].push(kind);
        }
        let mut handles = Vec::with_capacity(threads);
        for (t, kinds) in per_thread.into_iter().enumerate() {
            let (cfg, shared) = (cfg.clone(), Arc::clone(&shared));
            let h = std::thread::Builder::new()
                .name(format!("viewers-{t}"))
                .spawn(move || run_thread(&cfg, &kinds, &shared))?;
            handles.push(h);
        }
        Ok(Load { shared, handles })
    }

    /// Viewers whose connection has either got its response head or failed.
    pub fn settled(&self) -> usize {
        self.shared.settled.load(Ordering::Relaxed)
    }

    pub fn begin_measure(&self) {
        self.shared.phase.store(PHASE_MEASURE, Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.shared.phase.store(PHASE_STOP, Ordering::SeqCst);
    }

    /// Stops (if not yet) and collects every viewer's stats.
    pub fn finish(self) -> Result<Vec<ViewerStats>, String> {
        self.stop();
        let mut all = Vec::new();
        for h in self.handles {
            match h.join() {
                Ok(Ok(v)) => all.extend(v),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("a viewer thread panicked".into()),
            }
        }
        Ok(all)
    }
}

enum State {
    Idle,
    Connecting,
    Streaming,
    Closed,
}

struct Conn {
    state: State,
    sock: Option<TcpStream>,
    parser: Parser,
    stats: ViewerStats,
    last_seq: Option<u64>,
    settled: bool,
    /// Bytes a slow viewer may still read.
    allowance: f64,
}

fn run_thread(
    cfg: &LoadConfig,
    kinds: &[Kind],
    shared: &Shared,
) -> Result<Vec<ViewerStats>, String> {
    let count = kinds.len();
    let mut ep = Epoll::new(count.min(1024)).map_err(|e| format!("epoll_create: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: beltcam-bench\r\nAccept: */*\r\n\r\n",
        cfg.path, cfg.addr
    );
    let mut conns: Vec<Conn> = kinds
        .iter()
        .map(|&kind| Conn {
            state: State::Idle,
            sock: None,
            parser: Parser::new(false),
            stats: ViewerStats {
                kind,
                ..ViewerStats::default()
            },
            last_seq: None,
            settled: false,
            allowance: 0.0,
        })
        .collect();
    let slow_rate = cfg.slow_bytes_per_s as f64;
    // At most 200 ms worth of reading in one go, and at least one byte so a tiny rate still moves.
    let slow_burst = (slow_rate * 0.2).max(1.0);
    let mut last_tick = Instant::now();
    let mut buf = vec![0u8; READ_BUF];
    let mut next_open = 0;
    let mut in_flight = 0;
    loop {
        let phase = shared.phase.load(Ordering::Relaxed);
        if phase == PHASE_STOP {
            break;
        }
        while phase == PHASE_CONNECT && in_flight < MAX_IN_FLIGHT && next_open < count {
            let c = &mut conns[next_open];
            match open(cfg.addr, &ep, next_open as u64) {
                Ok(s) => {
                    c.sock = Some(s);
                    c.state = State::Connecting;
                    in_flight += 1;
                }
                Err(e) => fail(c, format!("connect: {e}"), shared, &mut in_flight),
            }
            next_open += 1;
        }
        let events = ep
            .wait(Duration::from_millis(20))
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for (token, ev) in events {
            let Some(c) = conns.get_mut(token as usize) else {
                continue;
            };
            if let State::Connecting = c.state {
                if let Err(e) = finish_connect(c, &ep, token, &request) {
                    fail(c, e, shared, &mut in_flight);
                }
                continue;
            }
            if !matches!(c.state, State::Streaming) {
                continue;
            }
            let measuring = shared.phase.load(Ordering::Relaxed) == PHASE_MEASURE;
            if let Err(e) = on_readable(c, &mut buf, measuring, ev) {
                if !c.settled {
                    fail(c, e, shared, &mut in_flight);
                } else {
                    close_with(c, e);
                }
            } else if !c.settled && c.parser.head_ok() {
                c.settled = true;
                c.stats.connected = true;
                in_flight -= 1;
                shared.settled.fetch_add(1, Ordering::Relaxed);
                if c.stats.kind != Kind::Fast {
                    // From now on read on the timer (slow) or never (stalled).
                    use std::os::fd::AsRawFd;
                    if let Some(s) = c.sock.as_ref() {
                        if let Err(e) = ep.delete(s.as_raw_fd()) {
                            close_with(c, format!("epoll_ctl: {e}"));
                        }
                    }
                }
            }
        }
        if slow_rate > 0.0 && last_tick.elapsed() >= SLOW_TICK {
            let dt = last_tick.elapsed().as_secs_f64();
            last_tick = Instant::now();
            let measuring = shared.phase.load(Ordering::Relaxed) == PHASE_MEASURE;
            for c in conns.iter_mut() {
                if c.stats.kind == Kind::Slow && c.settled && matches!(c.state, State::Streaming) {
                    read_slowly(c, &mut buf, measuring, slow_rate * dt, slow_burst);
                }
            }
        }
    }
    for c in conns.iter_mut() {
        if c.stats.kind == Kind::Stalled && matches!(c.state, State::Streaming) {
            drain_stalled(c, &mut buf);
        }
    }
    Ok(conns.into_iter().map(|c| c.stats).collect())
}

/// After the run, reads what a stalled viewer left queued (bounded) to learn whether the server
/// dropped it: an end of stream or a reset behind the queued bytes is recorded as its error.
fn drain_stalled(c: &mut Conn, buf: &mut [u8]) {
    const MAX_READS: usize = 256; // 64 MiB at most, far above any socket buffer
    for _ in 0..MAX_READS {
        let Some(s) = c.sock.as_mut() else { return };
        match s.read(buf) {
            Ok(0) => return close_with(c, "server closed the connection".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => return close_with(c, format!("read: {e}")),
        }
    }
}

fn open(addr: SocketAddrV4, ep: &Epoll, token: u64) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM.nonblocking().cloexec(), None)?;
    match s.connect(&SocketAddr::V4(addr).into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let s: TcpStream = s.into();
    use std::os::fd::AsRawFd;
    ep.add(s.as_raw_fd(), sys::OUT | sys::IN | sys::RDHUP, token)?;
    Ok(s)
}

fn finish_connect(c: &mut Conn, ep: &Epoll, token: u64, request: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let Some(s) = c.sock.as_mut() else {
        return Err("socket missing".into());
    };
    if let Some(e) = s.take_error().map_err(|e| format!("SO_ERROR: {e}"))? {
        return Err(format!("connect: {e}"));
    }
    match s.peer_addr() {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()), // spurious wake-up
        Err(e) => return Err(format!("connect: {e}")),
    }
    // A fresh socket's send buffer takes a ~100-byte request whole.
    let n = s
        .write(request.as_bytes())
        .map_err(|e| format!("send request: {e}"))?;
    if n != request.len() {
        return Err("request only partly sent".into());
    }
    ep.modify(s.as_raw_fd(), sys::IN | sys::RDHUP, token)
        .map_err(|e| format!("epoll_ctl: {e}"))?;
    c.state = State::Streaming;
    Ok(())
}

/// Gives a slow viewer `earned` more bytes (up to `burst` banked) and reads at most that much.
/// Bounded: each read takes at least one byte of the allowance or ends the loop.
fn read_slowly(c: &mut Conn, buf: &mut [u8], measuring: bool, earned: f64, burst: f64) {
    c.allowance = (c.allowance + earned).min(burst);
    while c.allowance >= 1.0 {
        let want = (c.allowance as usize).min(buf.len());
        match on_readable(c, &mut buf[..want], measuring, 0) {
            Ok(0) => break,
            Ok(n) => c.allowance -= n as f64,
            Err(e) => {
                close_with(c, e);
                break;
            }
        }
    }
}

/// Reads once into `buf`; returns the bytes read (0: nothing there yet).
fn on_readable(c: &mut Conn, buf: &mut [u8], measuring: bool, ev: u32) -> Result<usize, String> {
    let Some(s) = c.sock.as_mut() else {
        return Ok(0);
    };
    let n = match s.read(buf) {
        Ok(0) => {
            return Err(if c.parser.ended() {
                "server ended the stream".into()
            } else if ev & sys::ERR_HUP != 0 {
                "connection reset".into()
            } else {
                "server closed the connection".into()
            })
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
        Err(e) => return Err(format!("read: {e}")),
    };
    let now_us = sys::realtime_us();
    let Conn {
        parser,
        stats,
        last_seq,
        ..
    } = c;
    if measuring {
        stats.bytes += n as u64;
    }
    let fed = parser.feed(&buf[..n], |part| {
        if let (Some(prev), Some(seq)) = (*last_seq, part.seq) {
            if measuring && seq > prev + 1 {
                stats.seq_gaps += seq - prev - 1;
            }
        }
        *last_seq = part.seq.or(*last_seq);
        if measuring {
            stats.frames += 1;
            stats.jpeg_bytes += part.len as u64;
            if let Some(ts) = part.timestamp_us {
                stats.latencies_us.push(now_us - ts);
            }
        }
    });
    fed.map(|()| n)
}

fn fail(c: &mut Conn, e: String, shared: &Shared, in_flight: &mut usize) {
    if !c.settled {
        c.settled = true;
        if !matches!(c.state, State::Idle) {
            *in_flight -= 1;
        }
        shared.settled.fetch_add(1, Ordering::Relaxed);
    }
    close_with(c, e);
}

fn close_with(c: &mut Conn, e: String) {
    c.sock = None; // closing the fd also removes it from the epoll set
    c.state = State::Closed;
    c.stats.error.get_or_insert(e);
}
