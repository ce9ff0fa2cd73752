//! systemd integration for real: the binary runs with NOTIFY_SOCKET and WATCHDOG_USEC pointing at a
//! datagram socket this test reads, and with a listening socket passed the way systemd passes it
//! (fd 3, LISTEN_FDS, LISTEN_PID).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Notify {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    start: Instant,
    /// (time since start, message)
    seen: Vec<(Duration, String)>,
}

impl Notify {
    fn new(tag: &str) -> Notify {
        let path =
            std::env::temp_dir().join(format!("beltcam-notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notify {
            sock,
            path,
            start: Instant::now(),
            seen: Vec::new(),
        }
    }

    /// Collects datagrams until `until` says stop or `limit` passes.
    fn collect(&mut self, limit: Duration, mut until: impl FnMut(&[(Duration, String)]) -> bool) {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline && !until(&self.seen) {
            if let Ok(n) = self.sock.recv(&mut buf) {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    self.seen.push((self.start.elapsed(), line.to_string()));
                }
            }
        }
    }

    fn count(&self, msg: &str) -> usize {
        self.seen.iter().filter(|(_, m)| m == msg).count()
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn spawn(notify: &Notify, port: u16, extra_env: &[(&str, &str)], args: &[&str]) -> KillOnDrop {
    let listen = format!("127.0.0.1:{port}");
    Command::new(env!("CARGO_BIN_EXE_beltcam"))
        .args(["--listen", &listen, "--source", "synthetic:160x120@15"])
        .args(args)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("start beltcam")
}

#[test]
fn notifies_ready_status_watchdog_and_stopping() {
    let mut n = Notify::new("ready");
    let port = free_port();
    let mut guard = spawn(&n, port, &[], &[]);
    let child = &mut guard.0;
    n.collect(Duration::from_secs(20), |s| {
        s.iter().any(|(_, m)| m == "READY=1")
    });
    assert_eq!(n.count("READY=1"), 1, "READY=1 once: {:?}", n.seen);
    // READY means the listener is bound: a connection succeeds right away.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "listening when READY"
    );
    n.collect(Duration::from_secs(5), |s| {
        s.iter().filter(|(_, m)| m == "WATCHDOG=1").count() >= 4
            && s.iter()
                .any(|(_, m)| m.starts_with("STATUS=") && m.contains("fps"))
    });
    assert!(
        n.count("WATCHDOG=1") >= 4,
        "watchdog fed every half interval: {:?}",
        n.seen
    );
    let status = n
        .seen
        .iter()
        .rev()
        .find(|(_, m)| m.starts_with("STATUS="))
        .unwrap()
        .1
        .clone();
    assert!(
        status.contains("cam0") && status.contains("clients"),
        "{status}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    n.collect(Duration::from_secs(3), |s| {
        s.iter().any(|(_, m)| m == "STOPPING=1")
    });
    assert_eq!(n.count("STOPPING=1"), 1);
    let status = wait_exit(child, Duration::from_secs(2)).expect("exits");
    assert!(status.success());
}

#[test]
fn watchdog_stops_when_a_thread_wedges() {
    // The binary under test is built with the same profile as this test.
    if !cfg!(debug_assertions) {
        // The release-profile test run (the aarch64 one under qemu) cannot have it; the debug
        // run on the host covers it.
        skip(
            "watchdog_stops_when_a_thread_wedges",
            "release build: the wedge hook (BELTCAM_DEBUG_WEDGE) is compiled into debug builds only",
            &["release build"],
        );
        return;
    }
    let mut n = Notify::new("wedge");
    let port = free_port();
    let wedge_at = Duration::from_millis(2500);
    let _child = spawn(
        &n,
        port,
        &[
            ("BELTCAM_DEBUG_WEDGE", "serve-0"),
            ("BELTCAM_DEBUG_WEDGE_AFTER_MS", "2500"),
        ],
        &["--io-backend", "epoll", "--threads", "2"],
    );
    // Pings before the wedge; then none once the heartbeat is older than 5 s.
    n.collect(Duration::from_secs(14), |_| false);
    let pings: Vec<Duration> = n
        .seen
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.iter().filter(|t| **t < wedge_at).count() >= 2,
        "fed before the wedge: {pings:?}"
    );
    let last = *pings.last().expect("some pings");
    assert!(
        last < wedge_at + Duration::from_secs(7),
        "still fed at {last:?} after a wedge at {wedge_at:?}"
    );
    assert!(
        n.start.elapsed() - last > Duration::from_secs(3),
        "pings stopped: last at {last:?}"
    );
    // The other serving thread still answers, and says the daemon is down and why.
    let mut verdict = None;
    for _ in 0..10 {
        if let Ok((code, _, body)) = get(port, "/health") {
            verdict = Some((code, String::from_utf8_lossy(&body).to_string()));
            break;
        }
    }
    let (code, body) = verdict.expect("/health answered by the healthy thread");
    assert_eq!(code, 503);
    assert!(
        body.contains("\"down\"") && body.contains("serve-0"),
        "{body}"
    );
}

#[test]
fn socket_activation_serves_on_the_passed_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fd = listener.as_raw_fd();
    // As systemd does: the socket at fd 3, LISTEN_FDS=1, LISTEN_PID = the daemon's own pid (the
    // shell's $$ survives its exec). --listen names an address that cannot be bound here (TEST-NET),
    // so start-up only succeeds if the passed socket is used instead.
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_beltcam"),
        "--listen",
        "192.0.2.1:80",
        "--source",
        "synthetic:160x120@15",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: dup2 and fcntl are async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps FD_CLOEXEC, so clear it explicitly.
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut guard = KillOnDrop(cmd.spawn().expect("start beltcam"));
    let child = &mut guard.0;
    drop(listener); // the daemon holds the socket now
    assert!(
        wait_for(Duration::from_secs(20), || matches!(
            get(port, "/health"),
            Ok((200, _, _))
        )),
        "serving on the passed socket"
    );
    let (code, _, body) = get(port, "/snapshot").unwrap();
    assert_eq!(code, 200);
    assert_eq!(decode(&body), (160, 120));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(child, Duration::from_secs(2))
        .expect("exits")
        .success());
}
