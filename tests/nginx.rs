//! The README's nginx recipe and client snippets, run with the real programs (issue 14, parts 3
//! and 5): Debian's nginx, configured from the README's text between its `nginx-recipe` markers,
//! in front of the real beltcam configured from the README's `trusted_proxies` block. 20 viewers
//! through it are all admitted (each counted as its own address) and get every frame; the page
//! works under the `/webcam/` prefix; a slow viewer keeps a bounded latency thanks to the recipe's
//! `sndbuf` (measured with and without it). The Frigate ffmpeg command line from the README decodes
//! beltcam's stream, and the Home Assistant and Moonraker URLs answer. Skips visibly where nginx or
//! ffmpeg is missing; CI installs them (dev.sh TEST_PKGS), so there a skip fails.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced block that follows `<!-- marker -->` in README.md.
fn readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = format!("<!-- {marker} -->\n");
    let after = readme
        .split(&start)
        .nth(1)
        .unwrap_or_else(|| panic!("README.md has no `{start}` marker"));
    let body = after
        .strip_prefix("```")
        .and_then(|b| b.split_once('\n'))
        .unwrap_or_else(|| panic!("a fenced block follows `{start}`"))
        .1;
    body.split("\n```").next().unwrap().to_string() + "\n"
}

/// beltcam configured with the README's `[limits]` block for nginx (and nothing else: the default
/// per-address limits, so a proxy that is not trusted would get the 9th viewer refused).
fn beltcam_behind_nginx(source: &str, dir: &std::path::Path) -> Daemon {
    let cfg = dir.join("beltcam.toml");
    let toml = readme_block("nginx-beltcam-config");
    assert!(toml.contains("trusted_proxies"), "{toml}");
    std::fs::write(&cfg, toml).unwrap();
    Daemon::start_exact(&[
        "--config",
        cfg.to_str().unwrap(),
        "--source",
        source,
        "--log-level",
        "info",
    ])
}

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "beltcam-nginx-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A real nginx (not a daemon, its own prefix, pid, logs and temp dirs in `dir`), killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    /// Runs the README's server block with its `listen 80` on a free loopback port and its upstream
    /// at `beltcam`; `edit` may change the block further (e.g. drop the sndbuf to compare).
    fn start(dir: &std::path::Path, beltcam: u16, edit: impl Fn(String) -> String) -> Nginx {
        let recipe = readme_block("nginx-recipe");
        let port = free_port();
        assert!(
            recipe.contains("listen 80 ") && recipe.contains("http://127.0.0.1:8080/"),
            "the recipe listens on 80 and proxies to 127.0.0.1:8080:\n{recipe}"
        );
        let server = edit(
            recipe
                .replace("listen 80 ", &format!("listen 127.0.0.1:{port} "))
                .replace("127.0.0.1:8080", &format!("127.0.0.1:{beltcam}")),
        );
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/client_body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
             scgi_temp_path {d}/scgi;\n{server}}}\n"
        );
        let path = dir.join(format!("nginx-{port}.conf"));
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &format!("{d}/"), "-e", &format!("{d}/error.log")])
            .args(["-c", path.to_str().unwrap(), "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut n = Nginx {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let up = wait_for(Duration::from_secs(10), || {
            if let Ok(Some(s)) = n.child.try_wait() {
                panic!("nginx exited ({s}): {}", n.log());
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "nginx does not listen within 10 s: {}", n.log());
        n
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; SIGTERM is nginx's fast stop; SIGKILL after 5 s.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if wait_exit(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP/1.1 response body as nginx sends it to an HTTP/1.1 client: chunked (beltcam's stream
/// has no length), or plain. Reads through `pace` (bytes a second; 0: as fast as it comes).
struct Body {
    sock: BufReader<Paced>,
    chunked: bool,
    left: usize,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.chunked {
            return self.sock.read(buf);
        }
        if self.left == 0 {
            let mut line = String::new();
            // The CRLF ending the previous chunk, then the size line.
            while line.trim().is_empty() {
                line.clear();
                if self.sock.read_line(&mut line)? == 0 {
                    return Ok(0);
                }
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if self.left == 0 {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.sock.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}

/// A socket read at most `rate` bytes a second (a viewer on a slow link), in small reads.
struct Paced {
    s: TcpStream,
    rate: usize,
    start: Instant,
    total: usize,
}

impl Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rate == 0 {
            return self.s.read(buf);
        }
        // Pacing, not synchronisation: this is how slowly the viewer consumes.
        let due = self.start + Duration::from_secs_f64(self.total as f64 / self.rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let n = buf.len().min(2048);
        let n = self.s.read(&mut buf[..n])?;
        self.total += n;
        Ok(n)
    }
}

struct ProxiedPart {
    seq: u64,
    /// Capture time (X-Timestamp) to the moment its last byte was read, in seconds.
    age: f64,
    jpeg: Vec<u8>,
}

/// A viewer of a multipart stream through nginx, from a chosen loopback source address.
struct ProxiedViewer {
    body: BufReader<Body>,
}

/// Sends `GET path` from `src` to `port` with `extra` header lines; returns the status, the head
/// and the connection positioned at the body.
fn request(
    src: &str,
    port: u16,
    path: &str,
    extra: &str,
    rate: usize,
) -> (u16, String, BufReader<Paced>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if rate > 0 {
        // On a real slow link the bytes wait in nginx's socket (and the link) and the viewer reads
        // what arrives at once; a slow reader on loopback would instead hold them in its own
        // receive buffer and add its size to the latency measured: keep that one small.
        sock.set_recv_buffer_size(SLOW_RCVBUF).unwrap();
    }
    let src_addr: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&src_addr.into()).unwrap();
    sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: box\r\n{extra}\r\n").unwrap();
    let paced = Paced {
        s,
        rate,
        start: Instant::now(),
        total: 0,
    };
    let mut r = BufReader::with_capacity(2048, paced);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status for {path} from {src}: {head:?}"));
    (code, head, r)
}

/// A whole response through nginx (`Connection: close`; the body de-chunked when it is chunked).
fn fetch(port: u16, path: &str) -> (u16, String, Vec<u8>) {
    let (code, head, sock) = request("127.0.0.1", port, path, "Connection: close\r\n", 0);
    let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let mut body = Vec::new();
    Body {
        sock,
        chunked,
        left: 0,
    }
    .read_to_end(&mut body)
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    (code, head, body)
}

impl ProxiedViewer {
    fn open(src: &str, port: u16, path: &str, extra: &str, rate: usize) -> ProxiedViewer {
        let (code, head, sock) = request(src, port, path, extra, rate);
        assert_eq!(code, 200, "{path} from {src} through nginx: {head}");
        assert!(
            header(&head, "content-type")
                .is_some_and(|v| v.starts_with("multipart/x-mixed-replace")),
            "{head}"
        );
        let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        ProxiedViewer {
            body: BufReader::with_capacity(
                2048,
                Body {
                    sock,
                    chunked,
                    left: 0,
                },
            ),
        }
    }

    /// The next part: skips to the boundary line, reads the part head and the JPEG.
    fn next_part(&mut self) -> Option<ProxiedPart> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.body.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.trim_end() == "--boundarydonotcross" {
                break;
            }
        }
        let (mut len, mut seq, mut ts) = (None, 0, 0.0);
        loop {
            line.clear();
            if self.body.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("part header line");
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().ok(),
                "x-frame" => seq = v.trim().parse().expect("X-Frame"),
                "x-timestamp" => ts = v.trim().parse().expect("X-Timestamp"),
                _ => {}
            }
        }
        let mut jpeg = vec![0; len.expect("Content-Length")];
        self.body.read_exact(&mut jpeg).ok()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        Some(ProxiedPart {
            seq,
            age: now - ts,
            jpeg,
        })
    }
}

const FPS: u64 = 15;
/// The slow viewer's receive buffer (see `request`).
const SLOW_RCVBUF: usize = 16 * 1024;
const VIEWERS: usize = 20;

#[test]
fn twenty_viewers_through_the_recipe_are_admitted_at_full_rate() {
    let test = "twenty_viewers_through_the_recipe_are_admitted_at_full_rate";
    if !have(test, "nginx", &["-v"], "nginx") || emulated_skip(test) {
        return;
    }
    let _heavy = heavy();
    let dir = test_dir("viewers");
    let d = beltcam_behind_nginx(&format!("synthetic:320x240@{FPS}"), &dir);
    let nginx = Nginx::start(&dir, d.port, |s| s);

    // 20 viewers from 20 addresses: beltcam's default limit is 8 per address, so each must be
    // counted as its own client (X-Forwarded-For from the trusted proxy).
    let window = Duration::from_secs(4);
    let handles: Vec<_> = (0..VIEWERS)
        .map(|i| {
            let port = nginx.port;
            let src = format!("127.0.0.{}", 10 + i);
            std::thread::spawn(move || {
                let mut v = ProxiedViewer::open(&src, port, "/webcam/stream", "", 0);
                let first = v.next_part().expect("a first part");
                let end = Instant::now() + window;
                let mut seqs = vec![first.seq];
                let mut ages = vec![first.age];
                while Instant::now() < end {
                    let p = v.next_part().expect("parts keep coming");
                    decode(&p.jpeg);
                    seqs.push(p.seq);
                    ages.push(p.age);
                }
                (src, seqs, ages, v)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let mut peers = session_peers(d.port);
    peers.sort();
    let mut want: Vec<String> = results.iter().map(|r| format!("{}:0", r.0)).collect();
    want.sort();
    assert_eq!(peers, want, "/sessions shows each viewer's own address");

    let mut worst = 1.0f64;
    let mut worst_fps = f64::MAX;
    let mut max_age = 0.0f64;
    for (src, seqs, ages, _) in &results {
        let span = seqs.last().unwrap() - seqs[0] + 1;
        let share = seqs.len() as f64 / span as f64;
        let fps = (seqs.len() - 1) as f64 / window.as_secs_f64();
        worst = worst.min(share);
        worst_fps = worst_fps.min(fps);
        max_age = ages.iter().copied().fold(max_age, f64::max);
        assert!(
            share >= 0.9,
            "viewer {src} got {} of {span} frames ({:.0} %)",
            seqs.len(),
            share * 100.0
        );
        assert!(
            fps >= 0.9 * FPS as f64,
            "viewer {src}: {fps:.1} fps of the camera's {FPS}"
        );
    }
    eprintln!(
        "nginx: {VIEWERS} viewers through the recipe, all admitted; worst viewer {:.0} % of frames, \
         {worst_fps:.1} fps (camera {FPS} fps); max frame age {:.0} ms",
        worst * 100.0,
        max_age * 1000.0
    );
    assert!(
        max_age < 1.0,
        "frames through nginx at most 1 s old: {max_age:.3} s"
    );
    drop(results);
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `href` and `src` values of an HTML page.
fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "src=\""] {
        for piece in html.split(attr).skip(1) {
            out.push(piece.split('"').next().unwrap().to_string());
        }
    }
    out
}

#[test]
fn the_page_and_the_crowsnest_urls_work_under_the_prefix() {
    let test = "the_page_and_the_crowsnest_urls_work_under_the_prefix";
    if !have(test, "nginx", &["-v"], "nginx") {
        return;
    }
    let dir = test_dir("page");
    let d = beltcam_behind_nginx("synthetic:160x120@10", &dir);
    let nginx = Nginx::start(&dir, d.port, |s| s);

    let (code, head, body) = fetch(nginx.port, "/webcam/");
    assert_eq!(code, 200, "{head}");
    let page = String::from_utf8_lossy(&body).to_string();
    let links = links(&page);
    assert!(links.len() >= 4, "the page links the endpoints: {page}");
    for link in &links {
        assert!(
            !link.starts_with('/') && !link.contains("://"),
            "a link that would leave the /webcam/ prefix: {link}"
        );
        let path = format!("/webcam/{link}");
        let (code, head, _) = request("127.0.0.1", nginx.port, &path, "", 0);
        assert_eq!(code, 200, "{path} (linked from /webcam/): {head}");
    }
    // nginx redirects the bare prefix to the page.
    let (code, head, _) = fetch(nginx.port, "/webcam");
    assert_eq!(code, 301, "{head}");
    assert!(
        header(&head, "location").is_some_and(|l| l.ends_with("/webcam/")),
        "{head}"
    );

    // The Moonraker / crowsnest URLs from the README, through the recipe.
    let moonraker = readme_block("snippet-moonraker");
    for key in ["stream_url:", "snapshot_url:"] {
        let url = moonraker
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the README's moonraker.conf"))
            .trim();
        assert!(url.starts_with("/webcam/"), "{url}");
        if key == "stream_url:" {
            let mut v = ProxiedViewer::open("127.0.0.1", nginx.port, url, "", 0);
            decode(&v.next_part().expect("a part").jpeg);
        } else {
            let (code, head, body) = fetch(nginx.port, url);
            assert_eq!(code, 200, "{url}: {head}");
            assert_eq!(header(&head, "content-type"), Some("image/jpeg"), "{head}");
            decode(&body);
        }
    }

    // A client cannot pass itself off as another address through the recipe, with either header.
    let _v = ProxiedViewer::open(
        "127.0.0.77",
        nginx.port,
        "/webcam/stream",
        "X-Forwarded-For: 203.0.113.66\r\nForwarded: for=203.0.113.67\r\n",
        0,
    );
    let mut peers = Vec::new();
    let seen = wait_for(Duration::from_secs(5), || {
        peers = session_peers(d.port);
        peers.iter().any(|p| p == "127.0.0.77:0")
    });
    assert!(seen, "the viewer is shown as its own address: {peers:?}");
    assert!(
        !peers.iter().any(|p| p.starts_with("203.0.113.")),
        "{peers:?}"
    );
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_the_trusted_proxy_the_ninth_viewer_is_refused() {
    // What the README's `[limits]` block is for: the same nginx in front of a beltcam that does not
    // trust it counts every viewer as nginx, and its default 8 streams per address run out.
    let test = "without_the_trusted_proxy_the_ninth_viewer_is_refused";
    if !have(test, "nginx", &["-v"], "nginx") {
        return;
    }
    let dir = test_dir("untrusted");
    let cfg = dir.join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    let d = Daemon::start_exact(&[
        "--config",
        cfg.to_str().unwrap(),
        "--source",
        "synthetic:160x120@5",
    ]);
    let nginx = Nginx::start(&dir, d.port, |s| s);
    let mut held = Vec::new();
    for i in 0..8 {
        held.push(ProxiedViewer::open(
            &format!("127.0.0.{}", 40 + i),
            nginx.port,
            "/webcam/stream",
            "",
            0,
        ));
    }
    let (code, head, _) = request("127.0.0.48", nginx.port, "/webcam/stream", "", 0);
    assert_eq!(
        code, 429,
        "the 9th viewer through an untrusted proxy: {head}"
    );
    let peers = session_peers(d.port);
    assert!(
        peers.iter().all(|p| p.starts_with("127.0.0.1:")),
        "{peers:?}"
    );
    drop(held);
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn beltcam_headers_keep_a_buffering_nginx_from_holding_frames() {
    // nginx's default `proxy_buffering on` holds each part until the next arrives (a whole frame
    // interval: 1 s at 1 fps, or on a NO SIGNAL stream) unless the response says
    // `X-Accel-Buffering: no`. beltcam says it on /stream and /snapshot, so even a config without
    // the recipe's `proxy_buffering off` delivers each frame at once.
    let test = "beltcam_headers_keep_a_buffering_nginx_from_holding_frames";
    if !have(test, "nginx", &["-v"], "nginx") {
        return;
    }
    let dir = test_dir("buffering");
    let d = beltcam_behind_nginx("synthetic:160x120@1", &dir);
    let nginx = Nginx::start(&dir, d.port, |s| {
        assert!(s.contains("proxy_buffering off;"), "{s}");
        s.replace("proxy_buffering off;", "proxy_buffering on;")
    });
    let mut v = ProxiedViewer::open("127.0.0.1", nginx.port, "/webcam/stream", "", 0);
    let ages: Vec<f64> = (0..3).map(|_| v.next_part().expect("a part").age).collect();
    eprintln!("nginx with proxy_buffering on, 1 fps: frame ages {ages:.3?} s");
    // The first part may be the frame captured up to 1 s before the request.
    assert!(
        ages[1..].iter().all(|&a| a < 0.5),
        "frames through a buffering nginx arrive late: {ages:.3?} s"
    );
    let (code, head, body) = fetch(nginx.port, "/webcam/snapshot");
    assert_eq!(code, 200, "{head}");
    decode(&body);
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
}

/// How old the frames are that a viewer reading `rate` bytes a second gets through `port`, after
/// `settle`: the ages of the parts it reads in the following `measure`.
fn slow_viewer_ages(
    port: u16,
    src: &str,
    rate: usize,
    settle: Duration,
    measure: Duration,
) -> Vec<f64> {
    let mut v = ProxiedViewer::open(src, port, "/webcam/stream", "", rate);
    let start = Instant::now();
    let mut ages = Vec::new();
    while start.elapsed() < settle + measure {
        let Some(p) = v.next_part() else { break };
        if start.elapsed() >= settle {
            ages.push(p.age);
        }
    }
    ages
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[test]
fn a_slow_viewer_behind_the_recipe_keeps_a_bounded_latency() {
    let test = "a_slow_viewer_behind_the_recipe_keeps_a_bounded_latency";
    if !have(test, "nginx", &["-v"], "nginx") || emulated_skip(test) {
        return;
    }
    let _heavy = heavy();
    let dir = test_dir("slow");
    let d = beltcam_behind_nginx(&format!("synthetic:640x480@{FPS}"), &dir);
    let frame = get(d.port, "/snapshot").unwrap().2.len();
    let with = Nginx::start(&dir, d.port, |s| s);
    let recipe = readme_block("nginx-recipe");
    let sndbuf = recipe
        .split("sndbuf=")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .expect("the recipe's listen line sets sndbuf")
        .to_string();
    let without = Nginx::start(&dir, d.port, |s| {
        s.replace(&format!(" sndbuf={sndbuf}"), "")
    });

    // A viewer that reads 2 frames' worth a second of a 15 fps stream (a phone on a weak link):
    // beltcam must skip frames for it, and how old its frames get depends on how much waits in
    // the sockets between beltcam and it. Both at once, so the test takes the time once.
    let rate = 2 * frame;
    let (settle, measure) = (Duration::from_secs(20), Duration::from_secs(5));
    let (p1, p2) = (with.port, without.port);
    let a = std::thread::spawn(move || slow_viewer_ages(p1, "127.0.0.21", rate, settle, measure));
    let b = std::thread::spawn(move || slow_viewer_ages(p2, "127.0.0.22", rate, settle, measure));
    let (mut a, mut b) = (a.join().unwrap(), b.join().unwrap());
    let (age_with, age_without) = (median(&mut a), median(&mut b));
    eprintln!(
        "nginx: slow viewer ({rate} B/s, frames of {frame} B at {FPS} fps), frame age after {}s: \
         {age_with:.2} s with the recipe's sndbuf={sndbuf} ({} parts), {age_without:.2} s without ({} parts)",
        settle.as_secs(),
        a.len(),
        b.len()
    );
    assert!(!a.is_empty(), "the slow viewer with the recipe got frames");
    assert!(
        age_with < 6.0,
        "a slow viewer behind the recipe gets frames {age_with:.2} s old (bound 6 s)"
    );
    // beltcam itself is still fine for everyone else.
    let mut v = ProxiedViewer::open("127.0.0.23", with.port, "/webcam/stream", "", 0);
    let p = v.next_part().expect("a part");
    let p = if p.age > 0.5 {
        v.next_part().expect("a part")
    } else {
        p
    };
    assert!(p.age < 1.0, "a fast viewer's frame is {:.3} s old", p.age);
    drop((with, without));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's Frigate ffmpeg command line as arguments (its `\` continuations joined, quotes
/// honoured), `box:8080` replaced by `addr`.
fn frigate_args(addr: &str) -> Vec<String> {
    let text = readme_block("snippet-frigate-ffmpeg").replace("\\\n", " ");
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.trim().chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    args.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        args.push(cur);
    }
    assert_eq!(args.first().map(String::as_str), Some("ffmpeg"), "{text}");
    args.into_iter()
        .skip(1)
        .map(|a| a.replace("box:8080", addr))
        .collect()
}

#[test]
fn frigate_ffmpeg_arguments_decode_the_stream() {
    let test = "frigate_ffmpeg_arguments_decode_the_stream";
    if !have(test, "ffmpeg", &["-version"], "ffmpeg") {
        return;
    }
    let d = Daemon::start(&["--source", "synthetic:320x240@15"]);
    let mut args = frigate_args(&format!("127.0.0.1:{}", d.port));
    let url = format!("http://127.0.0.1:{}/stream", d.port);
    assert!(args.contains(&url), "the snippet reads /stream: {args:?}");
    assert_eq!(args.last().map(String::as_str), Some("pipe:"), "{args:?}");
    // Bounded: 30 frames, and a wall-clock limit on the input.
    let frames = 30;
    args.pop();
    args.extend(["-frames:v".into(), frames.to_string(), "pipe:".into()]);
    let i = args.iter().position(|a| a == "-i").unwrap();
    args.splice(i..i, ["-t".to_string(), "20".to_string()]);
    let start = Instant::now();
    let out = Command::new("timeout")
        .arg("30")
        .arg("ffmpeg")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run ffmpeg");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffmpeg {args:?} failed: {stderr}");
    let frame_bytes = 320 * 240 * 3 / 2;
    assert_eq!(
        out.stdout.len(),
        frames * frame_bytes,
        "{frames} raw 320x240 yuv420p frames; stderr: {stderr}"
    );
    // The one line allowed: swscale's note on converting the JPEG's full-range yuvj420p to the
    // yuv420p Frigate asks for (any MJPEG source gives it; Frigate runs with it too).
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("deprecated pixel format used"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(warnings.is_empty(), "ffmpeg warned: {stderr}");
    // Frames differ (a live pattern, not one frame repeated).
    let first = &out.stdout[..frame_bytes];
    let last = &out.stdout[(frames - 1) * frame_bytes..];
    assert_ne!(first, last, "the decoded frames change");
    eprintln!(
        "frigate ffmpeg: {frames} frames decoded in {:.2} s, no warning but swscale's range note",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn home_assistant_urls_answer_a_stream_and_a_still_image() {
    let ha: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&readme_block("snippet-home-assistant")).unwrap();
    let cam = &ha["camera"][0];
    assert_eq!(cam["platform"].as_str(), Some("mjpeg"), "{ha:?}");
    let d = Daemon::start(&["--source", "synthetic:160x120@10"]);
    let path = |key: &str| {
        let url = cam[key].as_str().unwrap_or_else(|| panic!("no {key}"));
        url.strip_prefix("http://box:8080")
            .unwrap_or_else(|| panic!("{key} is on http://box:8080: {url}"))
            .to_string()
    };
    // What Home Assistant's MJPEG camera does for a still image: GET still_image_url.
    let (code, head, body) = get(d.port, &path("still_image_url")).unwrap();
    assert_eq!(code, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("image/jpeg"), "{head}");
    assert_eq!(decode(&body), (160, 120));
    // And for the live view it streams mjpeg_url.
    let mut v = Viewer::open(d.port, &path("mjpeg_url"));
    let p = v.next_part().expect("a part");
    assert_eq!(decode(&p.jpeg), (160, 120));
}
