//! `http://` sources (issue 13, part 1): beltcam relaying an upstream MJPEG stream, against the real
//! binary. The upstream is another real beltcam, or a small scripted server in this test for the
//! framings and failures a real beltcam never produces (no Content-Length, LF-only lines, a stall
//! mid-part, endless garbage, a part larger than a slot).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{data_dir, decode, free_port, get, wait_for, Daemon, Viewer};

fn json(port: u16, path: &str) -> serde_json::Value {
    let (code, _, body) = get(port, path).expect("answers");
    assert!(code == 200 || code == 503, "{path}: {code}");
    serde_json::from_slice(&body).expect("JSON")
}

fn upstream_stats(d: &Daemon) -> serde_json::Value {
    d.stats()["cameras"][0]["upstream"].clone()
}

fn relay_of(url: &str) -> Daemon {
    Daemon::start_degraded(&["--source", url])
}

/// Waits until the relay's first camera serves real frames.
fn wait_online(d: &Daemon, limit: Duration) -> bool {
    wait_for(limit, || {
        let s = d.stats();
        s["cameras"][0]["state"] == "online"
            && s["cameras"][0]["frames"]["published"].as_u64() > Some(0)
    })
}

#[test]
fn relays_a_beltcam_upstream_over_one_connection_for_every_viewer() {
    let up = Daemon::start(&["--source", "synthetic:320x240@15"]);
    let relay = relay_of(&format!("http://127.0.0.1:{}/stream", up.port));
    assert!(
        wait_online(&relay, Duration::from_secs(10)),
        "{}",
        relay.log_text()
    );
    let mut viewers: Vec<Viewer> = (0..5)
        .map(|_| Viewer::open(relay.port, "/stream"))
        .collect();
    for v in &mut viewers {
        let parts = v.read_for(Duration::from_secs(1));
        assert!(
            parts.len() >= 8,
            "{} frames in 1 s through the relay",
            parts.len()
        );
        assert_eq!(decode(&parts[0].jpeg), (320, 240));
    }
    // One upstream connection whatever the number of viewers.
    let up_sessions = up.stats()["sessions"]["active"].as_u64();
    assert_eq!(
        up_sessions,
        Some(1),
        "upstream sessions with 5 relay viewers"
    );
    // Relayed frames keep the upstream's capture time (X-Timestamp), so latency adds up end to end.
    let mut direct = Viewer::open(up.port, "/stream");
    let mut fresh = Viewer::open(relay.port, "/stream");
    let upstream: Vec<String> = direct
        .read_for(Duration::from_secs(1))
        .iter()
        .map(|p| format!("{:.6}", p.timestamp))
        .collect();
    let relayed: Vec<String> = fresh
        .read_for(Duration::from_millis(500))
        .iter()
        .map(|p| format!("{:.6}", p.timestamp))
        .collect();
    let shared = relayed.iter().filter(|t| upstream.contains(t)).count();
    assert!(
        shared + 2 >= relayed.len().min(upstream.len()) && shared >= 3,
        "relayed timestamps {relayed:?} vs upstream {upstream:?}"
    );
    drop(direct);
    let u = upstream_stats(&relay);
    assert_eq!(u["connected"], true, "{u}");
    assert_eq!(u["connects"], 1, "{u}");
    assert!(u["bytes"].as_u64() > Some(10_000), "{u}");
    let stats = relay.stats();
    assert_eq!(stats["cameras"][0]["width"], 320);
    assert_eq!(stats["cameras"][0]["passthrough"], true);
    // The snapshot and the metrics.
    let (code, _, jpeg) = get(relay.port, "/snapshot").unwrap();
    assert_eq!((code, decode(&jpeg)), (200, (320, 240)));
    let (_, _, m) = get(relay.port, "/metrics").unwrap();
    let m = String::from_utf8_lossy(&m);
    assert!(
        m.contains("beltcam_upstream_connected{camera=\"cam0\"} 1"),
        "{m}"
    );
    // The password of an upstream URL never shows.
    let secret = relay_of(&format!("http://op:hunter2@127.0.0.1:{}/stream", up.port));
    let s = serde_json::to_string(&secret.stats()).unwrap();
    assert!(!s.contains("hunter2") && s.contains("op:***@"), "{s}");
}

#[test]
fn upstream_killed_and_restarted_goes_offline_then_back() {
    let port = free_port();
    let args = |p: u16| {
        vec![
            "--listen".to_string(),
            format!("127.0.0.1:{p}"),
            "--source".into(),
            "synthetic:320x240@15".into(),
        ]
    };
    let spawn = |p: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_beltcam"))
            .args(args(p))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut up = spawn(port);
    let relay = relay_of(&format!("http://127.0.0.1:{port}/stream"));
    assert!(
        wait_online(&relay, Duration::from_secs(10)),
        "{}",
        relay.log_text()
    );
    let mut viewer = Viewer::open(relay.port, "/stream");
    assert!(viewer.next_part().is_some());

    up.kill().unwrap();
    up.wait().unwrap();
    let t0 = Instant::now();
    assert!(
        wait_for(Duration::from_secs(8), || json(relay.port, "/health")
            ["status"]
            == "degraded"),
        "relay not degraded after the upstream died: {}",
        relay.log_text()
    );
    let offline_after = t0.elapsed();
    // The viewer stays connected and gets the placeholder.
    let parts = viewer.read_for(Duration::from_millis(1500));
    assert!(
        !parts.is_empty(),
        "the viewer still gets parts while offline"
    );
    let reason = relay.stats()["cameras"][0]["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(!reason.is_empty());

    let mut up = spawn(port);
    let t1 = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || json(relay.port, "/health")
            ["status"]
            == "ok"),
        "relay not back after the upstream returned: {}",
        relay.log_text()
    );
    let back_after = t1.elapsed();
    let real = viewer
        .read_for(Duration::from_secs(1))
        .iter()
        .filter(|p| decode(&p.jpeg) == (320, 240))
        .count();
    assert!(real >= 5, "{real} real frames after the upstream returned");
    let u = upstream_stats(&relay);
    assert!(u["reconnects"].as_u64() >= Some(1), "{u}");
    assert!(!u["last_error"].as_str().unwrap_or("").is_empty(), "{u}");
    eprintln!("relay: offline {offline_after:?} after the upstream died, back {back_after:?} after it returned");
    let _ = up.kill();
    let _ = up.wait();
}

#[test]
fn upstream_basic_auth() {
    let dir = std::env::temp_dir().join(format!("beltcam-relay-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let viewers = dir.join("viewers");
    std::fs::write(&viewers, "op:s3cret\n").unwrap();
    let cfg = dir.join("up.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nviewers_file = \"{}\"\n[[camera]]\nname = \"up\"\nsource = \"synthetic:320x240@10\"\n",
            viewers.display()
        ),
    )
    .unwrap();
    let up = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let good = relay_of(&format!("http://op:s3cret@127.0.0.1:{}/stream", up.port));
    assert!(
        wait_online(&good, Duration::from_secs(10)),
        "{}",
        good.log_text()
    );
    let bad = relay_of(&format!("http://op:wrong@127.0.0.1:{}/stream", up.port));
    assert!(
        wait_for(Duration::from_secs(10), || bad.stats()["cameras"][0]
            ["reason"]
            .as_str()
            .is_some_and(|r| r.contains("401"))),
        "{}",
        bad.stats()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scripted upstream: accepts connections one after another and runs `script` on each.
struct Fake {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Connections accepted.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Fake {
    fn start(script: fn(&mut TcpStream, &AtomicBool)) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut c, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        c.set_nonblocking(false).unwrap();
                        c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut req = [0u8; 2048];
                        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let _ = c.read(&mut req);
                        script(&mut c, &s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Fake {
            port,
            stop,
            thread: Some(thread),
            accepted,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/stream", self.port)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn jpeg() -> Vec<u8> {
    std::fs::read(data_dir().join("good.jpg")).unwrap()
}

/// Sends parts for at most 20 s or until told to stop, at ~20 fps.
fn frames(
    c: &mut TcpStream,
    stop: &AtomicBool,
    write_part: impl Fn(&mut TcpStream, &[u8]) -> std::io::Result<()>,
) {
    let j = jpeg();
    let t0 = Instant::now();
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(20) {
        if write_part(c, &j).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn other_framing_no_length_lf_only_quoted_boundary() {
    let fake = Fake::start(|c, stop| {
        let head = "HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=\"--frame\"\r\n\r\n";
        if c.write_all(head.as_bytes()).is_err() {
            return;
        }
        frames(c, stop, |c, j| {
            // ustreamer-like: delimiter before each part; but no Content-Length and LF only.
            c.write_all(b"----frame\nContent-Type: image/jpeg\n\n")?;
            c.write_all(j)?;
            c.write_all(b"\n")
        });
    });
    let relay = relay_of(&fake.url());
    assert!(
        wait_online(&relay, Duration::from_secs(10)),
        "{}",
        relay.log_text()
    );
    let mut v = Viewer::open(relay.port, "/stream");
    let parts = v.read_for(Duration::from_secs(1));
    assert!(parts.len() >= 5, "{} frames", parts.len());
    for p in &parts {
        assert_eq!(p.jpeg, jpeg(), "the part goes out byte for byte");
    }
    assert_eq!(relay.stats()["cameras"][0]["frames"]["invalid"], 0);
}

#[test]
fn stalled_upstream_goes_offline_and_reconnects() {
    let fake = Fake::start(|c, stop| {
        let head = "HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=b\r\n\r\n";
        let j = jpeg();
        let _ = c.write_all(head.as_bytes());
        let _ = c.write_all(format!("--b\r\nContent-Length: {}\r\n\r\n", j.len()).as_bytes());
        let _ = c.write_all(&j);
        let _ = c.write_all(b"\r\n--b\r\nContent-Length: 9086\r\n\r\n");
        let _ = c.write_all(&j[..100]);
        // ... and nothing more, with the connection open, until the relay gives up on it.
        let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(20) {
            if matches!(c.read(&mut [0u8; 64]), Ok(0)) {
                return;
            }
        }
    });
    let relay = relay_of(&fake.url());
    assert!(
        wait_online(&relay, Duration::from_secs(10)),
        "{}",
        relay.log_text()
    );
    let t0 = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || relay.stats()["cameras"][0]
            ["state"]
            == "offline"),
        "a stalled upstream never took the camera offline"
    );
    let stalled_after = t0.elapsed();
    assert!(
        wait_for(Duration::from_secs(10), || fake
            .accepted
            .load(Ordering::Relaxed)
            >= 2),
        "no reconnect after the stall"
    );
    // (the camera may be online again on the new connection: the upstream's last error says why)
    let u = upstream_stats(&relay);
    assert!(
        u["last_error"]
            .as_str()
            .is_some_and(|r| r.contains("no frame")),
        "{u}"
    );
    eprintln!("relay: stalled upstream detected after {stalled_after:?}");
}

#[test]
fn endless_garbage_keeps_memory_flat_and_is_counted() {
    let fake = Fake::start(|c, stop| {
        let head = "HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=b\r\n\r\n";
        let _ = c.write_all(head.as_bytes());
        let junk: Vec<u8> = (0..64 * 1024).map(|i| b"-bx\r\nyz"[i % 7]).collect();
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(8) {
            if c.write_all(&junk).is_err() {
                return;
            }
        }
    });
    let relay = relay_of(&fake.url());
    assert!(
        wait_for(Duration::from_secs(10), || upstream_stats(&relay)
            ["garbage_bytes"]
            .as_u64()
            > Some(20 << 20)),
        "{}",
        upstream_stats(&relay)
    );
    let rss0 = relay.rss_bytes();
    assert!(
        wait_for(Duration::from_secs(10), || upstream_stats(&relay)
            ["garbage_bytes"]
            .as_u64()
            > Some(100 << 20)),
        "{}",
        upstream_stats(&relay)
    );
    let rss1 = relay.rss_bytes();
    assert!(
        rss1 < rss0 + (2 << 20),
        "RSS grew {} KiB while 80 MiB of garbage went by",
        (rss1.saturating_sub(rss0)) >> 10
    );
    let s = relay.stats();
    assert_eq!(s["cameras"][0]["frames"]["published"], 0);
    assert_eq!(json(relay.port, "/health")["status"], "degraded");
}

#[test]
fn a_part_larger_than_a_slot_is_skipped_and_counted() {
    let fake = Fake::start(|c, stop| {
        let head = "HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=b\r\n\r\n";
        let _ = c.write_all(head.as_bytes());
        let big = vec![0xAB; 3 << 20];
        let _ = c.write_all(format!("--b\r\nContent-Length: {}\r\n\r\n", big.len()).as_bytes());
        let _ = c.write_all(&big);
        let _ = c.write_all(b"\r\n");
        frames(c, stop, |c, j| {
            c.write_all(format!("--b\r\nContent-Length: {}\r\n\r\n", j.len()).as_bytes())?;
            c.write_all(j)?;
            c.write_all(b"\r\n")
        });
    });
    let relay = relay_of(&fake.url());
    assert!(
        wait_online(&relay, Duration::from_secs(10)),
        "{}",
        relay.log_text()
    );
    let s = relay.stats();
    assert_eq!(s["cameras"][0]["frames"]["oversize"], 1, "{s}");
    assert_eq!(s["cameras"][0]["upstream"]["oversize_parts"], 1, "{s}");
    assert!(relay.log_text().contains("larger than a pool slot"));
}
