//! Repeated warnings are rate-limited: a daemon out of file descriptors fails `accept` on every
//! serving thread ten times a second, and its log must show the first failure and then a count,
//! not a line per retry. The daemon runs as the real binary; its fd limit is lowered from here
//! with prlimit(2) after start-up, and raised again to show it serves once fds are back.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Sets the soft RLIMIT_NOFILE of process `pid`, keeping its hard limit (raising a hard limit
/// again needs privileges); returns the old soft limit.
fn set_nofile(pid: i32, soft: u64) -> u64 {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64(2) reading our own child's limits into a live struct.
    let rc = unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, setting from a live struct.
    let rc = unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

fn accept_failures(log: &str) -> usize {
    log.lines().filter(|l| l.contains("accept failed")).count()
}

#[test]
fn accept_failures_from_fd_exhaustion_are_logged_once_then_counted() {
    let _heavy = heavy();
    let d = Daemon::start(&[
        "--source",
        "synthetic:160x120@5",
        "--threads",
        "2",
        "--io-backend",
        "epoll",
    ]);
    let fds = d.open_fds() as u64;
    let soft = set_nofile(d.pid(), fds + 2);
    // Connections beyond the limit wait in the listen backlog; the listener stays readable and
    // every serving thread's accept fails with EMFILE, retried every 100 ms.
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..16 {
        if let Ok(s) = TcpStream::connect_timeout(&d.addr(), Duration::from_secs(1)) {
            held.push(s);
        }
    }
    assert!(
        wait_for(Duration::from_secs(5), || accept_failures(&d.log_text())
            >= 1),
        "no accept failure logged although the daemon is out of fds: {}",
        d.log_text()
    );
    // Watch the log for three seconds of EMFILE: 2 threads x 10 retries/s would be ~60 lines.
    // A measurement window, not a synchronisation: the count over it is the figure.
    std::thread::sleep(Duration::from_secs(3));
    let log = d.log_text();
    let lines = accept_failures(&log);
    eprintln!("accept-failed lines over ~3 s of EMFILE on 2 threads: {lines}");
    assert!(
        lines <= 2,
        "{lines} 'accept failed' lines in ~3 s (want the first, then a count every 10 s):\n{log}"
    );
    // Fds back: the daemon accepts and answers again.
    drop(held);
    set_nofile(d.pid(), soft);
    assert!(
        wait_for(Duration::from_secs(10), || matches!(
            get(d.port, "/health"),
            Ok((200, _, _))
        )),
        "the daemon did not serve again once fds were back"
    );
}
