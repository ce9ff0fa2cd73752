//! Tools of the adversarial suite (`tests/hostile.rs`): sockets from chosen loopback addresses with
//! hostile options, classification of what a refused client actually reads (a status, a reset, a
//! silent close), noisy JPEGs of a chosen size, the `wmem_max` guard, and the one-line figures the
//! bench script (`scripts/hostile-bench.sh`) turns into a table.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::{parse_response, temp_dir, Daemon};

/// `HOSTILE_BENCH=1` (set by the bench script) lengthens windows and repeats trials: the figures
/// then go in a table; the assertions stay the same.
pub fn bench() -> bool {
    std::env::var_os("HOSTILE_BENCH").is_some()
}

/// A measurement window: short in the test suite, longer for the bench script (but ending well
/// inside the daemon's 10 s send timeout counted from the first attacker, so an attack on today's
/// daemon is measured while it holds, not as its sessions time out).
pub fn window() -> Duration {
    if bench() {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(3)
    }
}

/// 127.0.0.`n`: each is its own client to the daemon's per-address limits.
pub fn lo(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// Options a hostile client sets before it connects.
#[derive(Clone, Copy, Default)]
pub struct Dial {
    /// SO_RCVBUF (the kernel doubles it and enforces a floor): a tiny one is a peer that cannot
    /// take a frame.
    pub rcvbuf: Option<usize>,
    /// TCP_MAXSEG: small segments make every byte the daemon sends cost more.
    pub mss: Option<u32>,
}

/// A TCP connection to the daemon from `src`, with `opts` applied before `connect`.
pub fn dial(src: Ipv4Addr, port: u16, opts: Dial) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(r) = opts.rcvbuf {
        sock.set_recv_buffer_size(r)?;
    }
    if let Some(m) = opts.mss {
        sock.set_mss(m)?;
    }
    sock.bind(&SocketAddr::from((src, 0)).into())?;
    sock.connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)).into(),
        Duration::from_secs(3),
    )?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// A plain request head.
pub fn request(path: &str, keep_alive: bool) -> Vec<u8> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: {conn}\r\n\r\n").into_bytes()
}

/// What a client read after its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A whole response head arrived (and the body, when it has a Content-Length).
    Status(u16, String),
    /// ECONNRESET (or EPIPE) before a whole response head: the refusal was destroyed in flight.
    Reset,
    /// The daemon closed without a word.
    Closed,
    /// Nothing within the read timeout.
    TimedOut,
    Other(String),
}

impl Outcome {
    pub fn code(&self) -> Option<u16> {
        match self {
            Outcome::Status(c, _) => Some(*c),
            _ => None,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Outcome::Status(c, _) => c.to_string(),
            Outcome::Reset => "reset".into(),
            Outcome::Closed => "closed".into(),
            Outcome::TimedOut => "timeout".into(),
            Outcome::Other(e) => format!("error:{}", e.replace(' ', "_")),
        }
    }
}

/// Reads one response from `s` within `limit`: the head and, if it says Content-Length, the body,
/// so a keep-alive connection can be used again.
pub fn read_outcome(s: &mut TcpStream, limit: Duration) -> Outcome {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_string();
            let body_len: usize = crate::common::header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + body_len {
                return match parse_response(&out) {
                    Ok((code, head, _)) => Outcome::Status(code, head),
                    Err(e) => Outcome::Other(e.to_string()),
                };
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::TimedOut;
        }
        s.set_read_timeout(Some(left)).ok();
        match s.read(&mut chunk) {
            Ok(0) if out.is_empty() => return Outcome::Closed,
            // A head that stops short, then EOF.
            Ok(0) => return Outcome::Other(format!("truncated after {} bytes", out.len())),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return match e.kind() {
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Outcome::Reset,
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::TimedOut,
                    _ => Outcome::Other(e.to_string()),
                }
            }
        }
    }
}

/// Connects from `src`, sends `req` in full, reads the answer. A failing connect or write counts
/// as what it is (a reset is a reset).
pub fn exchange(src: Ipv4Addr, port: u16, req: &[u8], limit: Duration) -> Outcome {
    exchange_split(src, port, req, req.len(), Duration::ZERO, limit)
}

/// Like `exchange`, but the request goes out in two writes, `pause` apart: the first `split`
/// bytes, then the rest. Many clients write a request in pieces (headers, then the blank line or
/// a body); a daemon that answers and closes in between must not turn its answer into a reset.
pub fn exchange_split(
    src: Ipv4Addr,
    port: u16,
    req: &[u8],
    split: usize,
    pause: Duration,
    limit: Duration,
) -> Outcome {
    let mut s = match dial(src, port, Dial::default()) {
        Ok(s) => s,
        Err(e) => return Outcome::Other(format!("connect: {e}")),
    };
    let (first, rest) = req.split_at(split.min(req.len()));
    for (i, part) in [first, rest].into_iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        if i == 1 {
            std::thread::sleep(pause); // the client's own pace, not a wait for the daemon
        }
        if let Err(e) = s.write_all(part) {
            return match e.kind() {
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Outcome::Reset,
                _ => Outcome::Other(format!("write: {e}")),
            };
        }
    }
    read_outcome(&mut s, limit)
}

/// True once the daemon has closed `s` (EOF or reset); reads and discards what it sent first.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).ok();
    let mut buf = [0u8; 4096];
    let gone = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).ok();
    gone
}

/// A JPEG of `w`x`h` noise about `target` bytes long (within 10%): noise compresses badly, so
/// the size is real. The noise amplitude is searched for; the seed is fixed.
pub fn noisy_jpeg(w: usize, h: usize, target: usize) -> Vec<u8> {
    let make = |amp: u32| -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut px = vec![0u8; w * h * 3];
        for (i, p) in px.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = ((i / 3) % w * 255 / w) as u32; // a horizontal gradient
            let noise = (x >> 32) as u32 % (2 * amp + 1);
            *p = (base + noise).saturating_sub(amp).min(255) as u8;
        }
        let img = turbojpeg::Image {
            pixels: px.as_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        };
        turbojpeg::compress(img, 90, turbojpeg::Subsamp::Sub2x2)
            .expect("turbojpeg compresses")
            .to_vec()
    };
    let (mut lo, mut hi) = (0u32, 255u32);
    let mut best = make(128);
    for _ in 0..12 {
        let amp = (lo + hi) / 2;
        let j = make(amp);
        let len = j.len();
        best = j;
        if len * 10 < target * 9 {
            lo = amp + 1;
        } else if len * 10 > target * 11 {
            hi = amp.saturating_sub(1);
        } else {
            return best;
        }
        if lo > hi {
            break;
        }
    }
    panic!(
        "no noise amplitude gives a {w}x{h} JPEG of {target} bytes (last {})",
        best.len()
    );
}

/// A config file holding `toml`.
pub fn config_file(tag: &str, toml: &str) -> PathBuf {
    let p = temp_dir(tag).join("beltcam.toml");
    std::fs::write(&p, toml).expect("config file");
    p
}

const WMEM_MAX: &str = "/proc/sys/net/core/wmem_max";

/// Sets the global `net.core.wmem_max` and puts the old value back when dropped (also when the
/// test panics). The sysctl is machine-wide: hold `heavy()` while it is changed.
pub struct WmemMax {
    old: String,
}

impl WmemMax {
    pub fn set(value: u64) -> Result<WmemMax, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot set net.core.wmem_max".into());
        }
        let old = std::fs::read_to_string(WMEM_MAX).map_err(|e| format!("{WMEM_MAX}: {e}"))?;
        std::fs::write(WMEM_MAX, value.to_string()).map_err(|e| format!("{WMEM_MAX}: {e}"))?;
        Ok(WmemMax {
            old: old.trim().to_string(),
        })
    }
}

impl Drop for WmemMax {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(WMEM_MAX, &self.old) {
            eprintln!("could not restore {WMEM_MAX} to {}: {e}", self.old);
        }
    }
}

/// Starts beltcam on a given port (for restarts) and waits until `/health` answers 200. `Err`
/// with the log when it exits first (e.g. "Address already in use") or is not up within 10 s.
/// The test itself never retries: any retry is the daemon's.
pub fn start_on(port: u16, args: &[&str]) -> Result<Daemon, String> {
    Daemon::try_start_on(port, args, true, Duration::from_secs(10))
}

/// `/stats` fetched from a chosen source address (so per-address limits on 127.0.0.1 do not get
/// in the way); `None` when it does not answer 200.
pub fn try_stats_from(src: Ipv4Addr, port: u16) -> Option<serde_json::Value> {
    match crate::common::get_from(&src.to_string(), port, "/stats") {
        Ok((200, _, body)) => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

/// Collects the checks of one scenario, prints its figures as one `HOSTILE` line (parsed by
/// `scripts/hostile-bench.sh`), then fails with every broken contract at once.
pub struct Verdict {
    item: u8,
    test: String,
    backend: String,
    figures: Vec<(String, String)>,
    failures: Vec<String>,
}

impl Verdict {
    pub fn new(item: u8, test: &str, backend: &str) -> Verdict {
        Verdict {
            item,
            test: test.into(),
            backend: backend.into(),
            figures: Vec::new(),
            failures: Vec::new(),
        }
    }

    pub fn figure(&mut self, name: &str, value: impl std::fmt::Display) {
        self.figures.push((name.into(), value.to_string()));
    }

    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    pub fn finish(self) {
        let figures: Vec<String> = self
            .figures
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        eprintln!(
            "HOSTILE\t{}\t{}\t{}\t{}\t{}",
            self.item,
            self.test,
            self.backend,
            if self.failures.is_empty() {
                "PASS"
            } else {
                "FAIL"
            },
            figures.join(" ")
        );
        assert!(
            self.failures.is_empty(),
            "{} ({}): {}",
            self.test,
            self.backend,
            self.failures.join("; ")
        );
    }
}
