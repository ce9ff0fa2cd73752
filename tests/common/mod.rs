//! Shared helpers for integration tests: start the real binary on a free loopback port, talk HTTP
//! to it with plain sockets, and parse its multipart stream. Every wait has a deadline.
//!
//! The pieces the load generator needs too (free port, HTTP exchange, multipart parser) live in the
//! `beltcam-testkit` crate (`testkit/`); this module wraps them for tests.
#![allow(dead_code)]

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use beltcam_testkit::multipart::Parser;

/// Where every skip of this `cargo test` run is recorded (dev.sh clears it before the run and prints
/// it after, so skips show in CI logs although cargo hides a passing test's stderr).
pub fn skips_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-skips.txt")
}

/// Says that `test` (or a part of it) cannot run here and why: a `SKIP` line on stderr and in
/// `skips_file()`. Under `CI=true` (or `CI=1`) a skip is a failure unless `reason` starts with one of
/// `allowed_in_ci`: CI lists what it may legitimately lack (e.g. io_uring under a seccomp
/// profile); anything else CI is meant to run must run. The caller returns after this.
pub fn skip(test: &str, reason: &str, allowed_in_ci: &[&str]) {
    let line = format!("SKIP {test}: {reason}");
    eprintln!("{line}");
    let path = skips_file();
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        // One write per line: parallel tests append whole lines.
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if in_ci && !allowed_in_ci.iter().any(|a| reason.starts_with(a)) {
        panic!(
            "{line}: CI=true and this skip is not in the test's CI allow-list {allowed_in_ci:?}"
        );
    }
}

/// Tests that measure frame rates run one at a time: this machine has two cores.
static HEAVY: Mutex<()> = Mutex::new(());

pub fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn free_port() -> u16 {
    beltcam_testkit::free_port()
}

/// A fresh, empty temporary folder `beltcam-TAG-PID` for this test process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("beltcam-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A fresh, empty temporary folder (`temp_dir(tag)`), removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir(temp_dir(tag))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real `w`x`h` JPEG (quality 80) of frame `n` of the synthetic pattern, labelled `label`.
pub fn pattern_jpeg_labeled(w: usize, h: usize, n: u64, label: &str) -> Vec<u8> {
    use beltcam::capture::encode::{compressor, encode_i420, I420};
    let mut img = I420::new(w, h);
    beltcam::capture::synthetic::render(&mut img, n, label);
    let mut out = vec![0u8; 1 << 21];
    let len = encode_i420(&mut compressor(80).unwrap(), &img, &mut out).unwrap();
    out.truncate(len);
    out
}

/// A real `w`x`h` JPEG of frame `n` of the synthetic pattern, as the folder-camera tests use it.
pub fn pattern_jpeg(w: usize, h: usize, n: u64) -> Vec<u8> {
    pattern_jpeg_labeled(w, h, n, "dir")
}

/// Skip reasons CI may legitimately give: the runner chose them explicitly (the aarch64 tests run
/// under qemu-user, which has no io_uring and is too slow for frame-rate assertions).
pub const CI_MAY_SKIP: [&str; 2] = [SKIP_URING_SET, EMULATED];
const SKIP_URING_SET: &str = "BELTCAM_SKIP_URING is set";
const EMULATED: &str = "BELTCAM_EMULATED is set";

/// The io backends a test runs on; io_uring is skipped (with a SKIP line) where the runner says so
/// with BELTCAM_SKIP_URING. Where the kernel or sandbox refuses io_uring without being told, the
/// skip is visible and, under CI=true, a failure: CI is meant to test both backends.
pub fn backend_available(test: &str, backend: &str) -> bool {
    if backend != "uring" {
        return true;
    }
    if std::env::var_os("BELTCAM_SKIP_URING").is_some() {
        skip(&format!("{test} (uring)"), SKIP_URING_SET, &CI_MAY_SKIP);
        return false;
    }
    // Probed once per test process: each probe makes and drops a ring in the calling thread.
    static PROBE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    match PROBE.get_or_init(|| beltcam::net::probe_uring().map(|e| e.to_string())) {
        None => true,
        Some(e) => {
            skip(
                &format!("{test} (uring)"),
                &format!("io_uring unavailable here ({e})"),
                &CI_MAY_SKIP,
            );
            false
        }
    }
}

/// Frame-rate assertions mean nothing under CPU emulation (qemu-user runs the aarch64 test build
/// several times slower than a Pi): such tests skip, saying so, when BELTCAM_EMULATED is set.
pub fn emulated_skip(test: &str) -> bool {
    if std::env::var_os("BELTCAM_EMULATED").is_some() {
        skip(
            test,
            &format!("{EMULATED}: frame-rate assertions are not meaningful under emulation"),
            &CI_MAY_SKIP,
        );
        return true;
    }
    false
}

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts beltcam with `args` plus `--listen 127.0.0.1:PORT` and waits until `/health` answers.
    pub fn start(args: &[&str]) -> Daemon {
        Self::spawn(args, true)
    }

    /// Like `start`, but only waits for `/health` to answer at all (a degraded daemon says 503).
    pub fn start_degraded(args: &[&str]) -> Daemon {
        Self::spawn(args, false)
    }

    /// Starts beltcam with exactly `args` plus `--listen 127.0.0.1:PORT`: no lifted per-IP limits
    /// and no `--log-level`, for tests whose configuration file sets them.
    pub fn start_exact(args: &[&str]) -> Daemon {
        Self::spawn_with(args, true, false)
    }

    fn spawn(args: &[&str], healthy: bool) -> Daemon {
        Self::spawn_with(args, healthy, true)
    }

    fn spawn_with(args: &[&str], healthy: bool, lift_limits: bool) -> Daemon {
        Self::try_start_with(
            free_port(),
            args,
            healthy,
            lift_limits,
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("beltcam {e}"))
    }

    /// Starts beltcam on `port` (e.g. again after a restart) and waits up to `limit` until
    /// `/health` answers 200 (or, unless `healthy`, 503 with a camera offline). `Err` (with the
    /// log) when it exits first, e.g. "Address already in use", or is not up in time; the caller
    /// decides whether that fails the test. The per-address limits are lifted unless `args` set them.
    pub fn try_start_on(
        port: u16,
        args: &[&str],
        healthy: bool,
        limit: Duration,
    ) -> Result<Daemon, String> {
        Self::try_start_with(port, args, healthy, true, limit)
    }

    fn try_start_with(
        port: u16,
        args: &[&str],
        healthy: bool,
        lift_limits: bool,
        limit: Duration,
    ) -> Result<Daemon, String> {
        // Unique per start: a restart on the same port must not share (and, on drop, delete) the
        // log of the daemon before it.
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!(
            "beltcam-test-{port}-{}-{n}.log",
            std::process::id()
        ));
        let logf = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let listen = format!("127.0.0.1:{port}");
        let mut defaults = vec![];
        for (flag, value) in beltcam_testkit::LOOPBACK_LIMIT_FLAGS {
            if lift_limits && !args.contains(&flag) {
                defaults.extend([flag, value]);
            }
        }
        let child = Command::new(env!("CARGO_BIN_EXE_beltcam"))
            .args(["--listen", &listen])
            .args(if lift_limits {
                &["--log-level", "info"][..]
            } else {
                &[]
            })
            .args(&defaults)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("cannot start: {e}"))?;
        let mut d = Daemon { child, port, log };
        d.wait_ready(healthy, limit)?;
        Ok(d)
    }

    fn wait_ready(&mut self, healthy: bool, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "exited at start-up ({status}): {}",
                    self.log_text()
                ));
            }
            match get(self.port, "/health") {
                Ok((200, _, _)) => return Ok(()),
                Ok((503, _, body))
                    if !healthy && String::from_utf8_lossy(&body).contains("offline") =>
                {
                    return Ok(())
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "not healthy within {} s: {}",
            limit.as_secs(),
            self.log_text()
        ))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stats(&self) -> serde_json::Value {
        let (code, _, body) = get(self.port, "/stats").expect("/stats answers");
        assert_eq!(code, 200);
        serde_json::from_slice(&body).expect("/stats is JSON")
    }

    /// Sends a signal and waits up to `limit` for the exit status.
    pub fn signal_and_wait(
        &mut self,
        sig: i32,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
        wait_exit(&mut self.child, limit)
    }

    /// Resident set size of the daemon, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        proc_status_kb(self.pid(), "VmRSS:") * 1024
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn proc_status_kb(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    s
}

/// Sends raw bytes and reads the whole response (until close or 5 s). Returns status, head, body.
pub fn raw(port: u16, request: &[u8]) -> std::io::Result<(u16, String, Vec<u8>)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    parse_response(&beltcam_testkit::http::exchange(
        addr,
        request,
        Duration::from_secs(5),
    )?)
}

/// `GET path` from a chosen loopback source address (each 127.0.0.x is its own client to limits).
pub fn get_from(src: &str, port: u16, path: &str) -> std::io::Result<(u16, String, Vec<u8>)> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let src: SocketAddr = format!("{src}:0").parse().map_err(std::io::Error::other)?;
    sock.bind(&src.into())?;
    sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    let request = beltcam_testkit::http::get_request(path);
    parse_response(&beltcam_testkit::http::exchange_on(
        sock.into(),
        request.as_bytes(),
        Duration::from_secs(5),
    )?)
}

pub fn parse_response(out: &[u8]) -> std::io::Result<(u16, String, Vec<u8>)> {
    beltcam_testkit::http::parse_response(out)
}

/// `GET path` with `Connection: close`.
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String, Vec<u8>)> {
    raw(port, beltcam_testkit::http::get_request(path).as_bytes())
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    beltcam_testkit::http::header(head, name)
}

/// Kills a child process when dropped, also when the test ends in a failed assertion.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One multipart part.
pub struct Part {
    pub seq: u64,
    pub timestamp: f64,
    pub jpeg: Vec<u8>,
    pub received: Instant,
}

/// A viewer reading a multipart stream part by part (with the shared strict parser: framing
/// errors are failures, not skipped parts).
pub struct Viewer {
    stream: TcpStream,
    parser: Parser,
    ready: std::collections::VecDeque<beltcam_testkit::multipart::Part>,
    buf: Vec<u8>,
}

impl Viewer {
    /// Connects, requests `path`, and checks the response head.
    pub fn open(port: u16, path: &str) -> Viewer {
        Self::from_stream(connect(port), path)
    }

    /// Like `open`, on a connection the caller made (e.g. from another source address).
    pub fn from_stream(mut s: TcpStream, path: &str) -> Viewer {
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("send request");
        let mut v = Viewer {
            stream: s,
            parser: Parser::strict(),
            ready: Default::default(),
            buf: vec![0; 1 << 16],
        };
        while !v.parser.head_ok() {
            let n = match v.stream.read(&mut v.buf) {
                // A read with SO_RCVTIMEO returns EINTR, not a restart, when the thread has
                // io_uring task work pending (the ring `backend_available` probed in this thread
                // being torn down): seen once in CI on `full_table_is_503 (uring)`.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.expect("response head"),
            };
            let fed = match n {
                0 => Err("closed before the response head".to_string()),
                n => v.parser.feed(&v.buf[..n], |p| v.ready.push_back(p)),
            };
            if let Err(e) = fed {
                panic!("stream refused: {} ({e})", v.parser.head());
            }
        }
        let head = v.parser.head().to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "stream refused: {head}");
        assert!(
            header(&head, "content-type").is_some_and(
                |v| v.starts_with("multipart/x-mixed-replace;boundary=boundarydonotcross")
            ),
            "{head}"
        );
        v
    }

    /// Reads the next part; panics on a framing error, `None` on EOF.
    pub fn next_part(&mut self) -> Option<Part> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                // Received when the test takes it (as a blocking reader would have read it then),
                // not when it happened to arrive in a read with an earlier part.
                return Some(Part::of(p));
            }
            if self.parser.ended() {
                return None;
            }
            let n = match self.stream.read(&mut self.buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            let ready = &mut self.ready;
            if let Err(e) = self.parser.feed(&self.buf[..n], |p| ready.push_back(p)) {
                panic!("multipart framing: {e}");
            }
        }
    }

    /// Reads parts for `dur` measured from the first part; returns them.
    pub fn read_for(&mut self, dur: Duration) -> Vec<Part> {
        let mut parts = Vec::new();
        let Some(first) = self.next_part() else {
            return parts;
        };
        let end = first.received + dur;
        parts.push(first);
        while Instant::now() < end {
            match self.next_part() {
                Some(p) => parts.push(p),
                None => break,
            }
        }
        parts
    }
}

impl Part {
    /// A part the parser completed, handed to the test now.
    fn of(p: beltcam_testkit::multipart::Part) -> Part {
        Part {
            seq: p.seq.unwrap_or(0),
            timestamp: p.timestamp_us.map_or(0.0, |us| us as f64 / 1e6),
            jpeg: p.body,
            received: Instant::now(),
        }
    }
}

/// Frames a viewer received, with when.
pub type Seen = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// Reads the stream on its own thread until `stop`, recording every part; the thread returns
/// false if the connection ended first.
pub fn record(mut v: Viewer, stop: Arc<AtomicBool>) -> (Seen, std::thread::JoinHandle<bool>) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let h = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match v.next_part() {
                Some(p) => s.lock().unwrap().push((p.received, p.jpeg)),
                None => return false, // the connection ended
            }
        }
        true
    });
    (seen, h)
}

/// Decodes a JPEG fully and returns its size.
pub fn decode(jpeg: &[u8]) -> (usize, usize) {
    let img =
        turbojpeg::decompress(jpeg, turbojpeg::PixelFormat::GRAY).expect("part decodes as JPEG");
    (img.width, img.height)
}

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Whether `program` runs (`args`: a harmless version query); when not, skips `test` (a failure
/// under CI=true) naming the Debian package to install.
pub fn have(test: &str, program: &str, args: &[&str], package: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            test,
            &format!("{program} not installed (apt-get install {package})"),
            &[],
        );
    }
    ok
}

/// The installed Chromium for `test`; when there is none, skips it (a failure under CI=true).
pub fn chromium_for(test: &str) -> Option<&'static str> {
    let browser = chromium();
    if browser.is_none() {
        skip(
            test,
            "chromium not installed (apt-get install chromium)",
            &[],
        );
    }
    browser
}

/// The installed Chromium (or Chrome), if any.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// The peer address of every session `/sessions` lists (asked from loopback).
pub fn session_peers(port: u16) -> Vec<String> {
    let (code, _, body) = get(port, "/sessions").expect("/sessions answers");
    assert_eq!(code, 200, "/sessions from loopback");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("/sessions is JSON");
    v["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| s["peer"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// An SSE reader: yields (event, data) pairs.
pub struct Sse(std::io::BufReader<TcpStream>);

impl Sse {
    pub fn open(port: u16, path: &str) -> Sse {
        let mut s = connect(port);
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if line.to_ascii_lowercase().starts_with("content-type") {
                assert!(line.contains("text/event-stream"));
            }
        }
        Sse(r)
    }

    pub fn next(&mut self) -> Option<(String, String)> {
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if !event.is_empty() {
                    return Some((event, data));
                }
                continue;
            }
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = d.to_string();
            }
        }
    }

    /// The first event of `kind` whose data contains `needle`, within `limit`.
    pub fn find(&mut self, kind: &str, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let (e, d) = self.next()?;
            if e == kind && d.contains(needle) {
                return Some(d);
            }
        }
        None
    }
}
