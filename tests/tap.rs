//! The local frame tap (`[tap]`, docs/tap.md, issue 13 part 4) against the real binary, with the
//! shipped stdlib-only Python client: 300 frames read from shared memory each decode; a per-consumer
//! rate; a subscriber that never reads neither blocks capture nor another subscriber; `/stats` lists
//! subscribers; bad subscriptions get `ERR`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{decode, skip, wait_for, Daemon};

fn python() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn setup(test: &str, fps: u32) -> (Daemon, PathBuf, PathBuf) {
    let dir = common::temp_dir(&format!("tap-{test}"));
    let sock = dir.join("tap.sock");
    let cfg = dir.join("beltcam.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tap]\nsocket = \"{}\"\n[[camera]]\nname = \"belt\"\nsource = \"synthetic:320x240@{fps}\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    assert!(
        wait_for(Duration::from_secs(5), || sock.exists()),
        "{}",
        d.log_text()
    );
    (d, dir, sock)
}

fn client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/beltcam_tap.py")
}

/// Runs the Python client; its JSON summary.
fn run_client(sock: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new("timeout")
        .arg("60")
        .arg("python3")
        .arg(client())
        .arg(sock)
        .arg("belt")
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client prints JSON")
}

#[test]
fn the_python_client_reads_300_frames_that_decode() {
    if !python() {
        skip("tap::300_frames", "python3 not installed", &[]);
        return;
    }
    let (d, dir, sock) = setup("300", 60);
    let out = dir.join("frames");
    std::fs::create_dir_all(&out).unwrap();
    let summary = run_client(&sock, &["--count", "300", "--out", out.to_str().unwrap()]);
    assert_eq!(summary["frames"], 300, "{summary}");
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 300);
    for f in &files {
        assert_eq!(
            decode(&std::fs::read(f).unwrap()),
            (320, 240),
            "{}",
            f.display()
        );
    }
    // Sequence numbers increase (the client names files by them).
    let first: u64 = summary["first_seq"].as_u64().unwrap();
    let last: u64 = summary["last_seq"].as_u64().unwrap();
    assert!(last >= first + 299, "{summary}");
    eprintln!("tap: {summary}");
    drop(d);
}

#[test]
fn a_consumer_gets_its_own_rate() {
    if !python() {
        skip("tap::rate", "python3 not installed", &[]);
        return;
    }
    let (_d, _dir, sock) = setup("rate", 30);
    let t0 = Instant::now();
    let summary = run_client(&sock, &["--fps", "5", "--count", "10"]);
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(summary["frames"], 10);
    // 10 frames at 5 a second: about 2 s (the first comes at once).
    assert!(
        (1.5..4.0).contains(&took),
        "10 frames at fps=5 took {took:.2} s"
    );
    let gap = (summary["last_seq"].as_u64().unwrap() - summary["first_seq"].as_u64().unwrap())
        as f64
        / 9.0;
    assert!(
        gap >= 5.0,
        "{gap:.1} camera frames between announcements at fps=5 of 30"
    );
}

/// Subscribes over a raw socket (the protocol, without the client).
fn subscribe(sock: &Path, line: &str) -> (UnixDatagram, String) {
    // SEQPACKET through std: connect with libc, then wrap (std has no SEQPACKET type).
    // SAFETY: plain syscalls; the fd is owned by the UnixDatagram wrapper (same recv/send API).
    let s = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, b) in addr
            .sun_path
            .iter_mut()
            .zip(sock.as_os_str().as_encoded_bytes())
        {
            *d = *b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(
            libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len),
            0
        );
        <UnixDatagram as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send(line.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf).unwrap_or(0);
    (s, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn a_consumer_that_stops_reading_blocks_nothing() {
    if !python() {
        skip("tap::stalled", "python3 not installed", &[]);
        return;
    }
    let (d, _dir, sock) = setup("stalled", 30);
    // Subscribes and never reads again.
    let (_stalled, ok) = subscribe(&sock, "SUBSCRIBE belt\n");
    assert!(ok.starts_with("OK belt slots="), "{ok}");
    let published = |d: &Daemon| {
        d.stats()["cameras"][0]["frames"]["published"]
            .as_u64()
            .unwrap()
    };
    let p0 = published(&d);
    // Long enough to fill its socket (announcements are ~50 bytes: thousands of them).
    let filled = wait_for(Duration::from_secs(20), || {
        d.stats()["tap"]["consumers"][0]["dropped"].as_u64() > Some(0)
    });
    assert!(
        filled,
        "the stalled consumer never missed an announcement: {}",
        d.stats()
    );
    // Capture went on at full rate all along, and another subscriber is served.
    let p1 = published(&d);
    assert!(p1 > p0 + 20, "capture stalled: {p0} -> {p1}");
    let summary = run_client(&sock, &["--count", "30"]);
    assert_eq!(summary["frames"], 30);
    let stats = d.stats();
    let consumers = stats["tap"]["consumers"].as_array().unwrap();
    assert_eq!(consumers[0]["camera"], "belt");
    assert_eq!(stats["cameras"][0]["frames"]["no_free_slot"], 0, "{stats}");
}

#[test]
fn bad_subscriptions_get_an_error() {
    let (_d, _dir, sock) = setup("errors", 15);
    for (line, why) in [
        ("SUBSCRIBE nope\n", "no camera"),
        ("HELLO\n", "expected"),
        ("SUBSCRIBE belt fps=0\n", "fps"),
    ] {
        let (_s, answer) = subscribe(&sock, line);
        assert!(
            answer.starts_with("ERR") && answer.contains(why),
            "{line:?}: {answer:?}"
        );
    }
}

/// A sample of `/metrics`, by its full name and labels.
fn metric(d: &Daemon, series: &str) -> Option<u64> {
    let (_, _, m) = common::get(d.port, "/metrics").unwrap();
    let m = String::from_utf8_lossy(&m).into_owned();
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Subscribers coming and going are `tap` events and in `/metrics` (consistent with `/stats`); a
/// live reload that removes the camera ends its subscriber with `END`, and a camera it adds is
/// served at once.
#[test]
fn the_tap_is_observable_and_follows_reloads() {
    let (d, dir, sock) = setup("reload", 30);
    let mut events = common::Sse::open(d.port, "/events");
    assert_eq!(
        metric(&d, "beltcam_tap_consumers{camera=\"belt\"}"),
        Some(0)
    );
    let (s, ok) = subscribe(&sock, "SUBSCRIBE belt fps=10\n");
    assert!(ok.starts_with("OK belt"), "{ok}");
    let connected = events
        .find("tap", "\"connected\"", Duration::from_secs(5))
        .expect("a tap connected event");
    assert!(
        connected.contains("\"camera\":\"belt\"") && connected.contains("\"fps\":10"),
        "{connected}"
    );
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"FRAME "),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(
        metric(&d, "beltcam_tap_consumers{camera=\"belt\"}"),
        Some(1)
    );
    assert_eq!(
        metric(&d, "beltcam_tap_subscriptions_total{result=\"accepted\"}"),
        Some(1)
    );
    let (_bad, err) = subscribe(&sock, "SUBSCRIBE nope\n");
    assert!(err.starts_with("ERR"), "{err}");
    assert!(wait_for(Duration::from_secs(3), || metric(
        &d,
        "beltcam_tap_subscriptions_total{result=\"refused\"}"
    ) == Some(1)));
    // Closing is noticed at once (not at the next announcement), with what it got.
    drop(s);
    let gone = events
        .find("tap", "\"disconnected\"", Duration::from_secs(5))
        .expect("a tap disconnected event");
    assert!(gone.contains("\"reason\":\"closed\""), "{gone}");
    assert!(wait_for(Duration::from_secs(3), || metric(
        &d,
        "beltcam_tap_consumers{camera=\"belt\"}"
    ) == Some(0)));
    let announced = metric(&d, "beltcam_tap_frames_announced_total{camera=\"belt\"}").unwrap();
    assert!(announced >= 1);
    let stats = d.stats();
    assert_eq!(
        stats["tap"]["cameras"][0]["announced"], announced,
        "{stats}"
    );
    assert_eq!(stats["tap"]["subscribed"], 1);
    assert_eq!(stats["tap"]["refused"], 1);

    // A reload replaces belt with side.
    let (belt_sub, ok) = subscribe(&sock, "SUBSCRIBE belt\n");
    assert!(ok.starts_with("OK belt"), "{ok}");
    std::fs::write(
        dir.join("beltcam.toml"),
        format!(
            "[tap]\nsocket = \"{}\"\n[[camera]]\nname = \"side\"\nsource = \"synthetic:160x120@15\"\n",
            sock.display()
        ),
    )
    .unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    // belt's subscriber reads its announcements up to `END camera removed`, then the socket closes.
    let mut ended = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let n = belt_sub
            .recv(&mut buf)
            .expect("the socket ends, it does not hang");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if n == 0 {
            break;
        }
        if msg.starts_with("END") {
            ended = Some(msg);
        } else {
            assert!(msg.starts_with("FRAME "), "{msg}");
        }
    }
    assert_eq!(ended.as_deref(), Some("END camera removed\n"));
    let removed = events
        .find("tap", "\"camera removed\"", Duration::from_secs(5))
        .expect("a disconnected event for the removed camera");
    assert!(removed.contains("\"camera\":\"belt\""), "{removed}");
    // The added camera is served, and the removed one refused.
    let (side, ok) = subscribe(&sock, "SUBSCRIBE side\n");
    assert!(ok.starts_with("OK side"), "{ok}: {}", d.log_text());
    let n = side.recv(&mut buf).unwrap();
    let frame = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        frame.starts_with("FRAME ") && frame.trim_end().ends_with(" 160 120"),
        "{frame}"
    );
    let (_s, err) = subscribe(&sock, "SUBSCRIBE belt\n");
    assert!(err.starts_with("ERR") && err.contains("no camera"), "{err}");
    let stats = d.stats();
    let cams = stats["tap"]["cameras"].as_array().unwrap();
    assert_eq!(cams.len(), 1, "{stats}");
    assert_eq!(cams[0]["camera"], "side");
    assert_eq!(cams[0]["consumers"], 1);
    assert_eq!(
        metric(&d, "beltcam_tap_consumers{camera=\"side\"}"),
        Some(1)
    );
    assert_eq!(metric(&d, "beltcam_tap_consumers{camera=\"belt\"}"), None);
}
