//! The folder camera against the real binary, as a broken disk or a careless operator leaves it:
//! a file replaced by a FIFO must not block capture, a folder with nothing usable must stay
//! quietly offline instead of flapping, and a transient read error (EMFILE, forced by lowering the
//! daemon's RLIMIT_NOFILE) must not blacklist good files once it passes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn cam(d: &Daemon) -> serde_json::Value {
    d.stats()["cameras"][0].clone()
}

fn published(d: &Daemon) -> u64 {
    cam(d)["frames"]["published"].as_u64().unwrap_or(0)
}

#[test]
fn a_file_replaced_by_a_fifo_does_not_block_capture() {
    let dir = temp_dir("fifo");
    for i in 0..3 {
        std::fs::write(dir.join(format!("f{i}.jpg")), pattern_jpeg(160, 120, i)).unwrap();
    }
    let spec = format!("dir:{}@20", dir.display());
    let d = Daemon::start(&["--source", &spec]);
    assert!(wait_for(Duration::from_secs(10), || published(&d) >= 5));
    std::fs::remove_file(dir.join("f1.jpg")).unwrap();
    mkfifo(&dir.join("f1.jpg"));
    let after = published(&d);
    // Before the fix the capture thread hung in open() on the FIFO: no frame ever again.
    let kept_going = wait_for(Duration::from_secs(10), || {
        get(d.port, "/health").is_ok_and(|r| r.0 == 200) && published(&d) >= after + 20
    });
    assert!(
        kept_going,
        "published {} -> {}: {}",
        after,
        published(&d),
        d.log_text()
    );
    assert_eq!(cam(&d)["state"], "online");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_folder_with_one_empty_file_stays_offline_without_flapping() {
    let dir = temp_dir("empty");
    std::fs::write(dir.join("empty.jpg"), b"").unwrap();
    let spec = format!("dir:{}@10", dir.display());
    let d = Daemon::start_degraded(&["--source", &spec]);
    // About five seconds of it: the placeholder goes out about once a second while offline.
    assert!(wait_for(Duration::from_secs(15), || {
        cam(&d)["frames"]["placeholders"].as_u64().unwrap_or(0) >= 5
    }));
    let c = cam(&d);
    assert_eq!(c["state"], "offline", "{c}");
    let log = d.log_text();
    let noisy = log
        .lines()
        .filter(|l| {
            l.contains("camera online") || l.contains("camera offline") || l.contains("skipping")
        })
        .count();
    // One "skipping" naming the file, one "offline"; before: ~20 lines a second.
    assert!(noisy <= 3, "{noisy} lines in ~5 s: {log}");
    assert!(!log.contains("camera online"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_transient_read_error_does_not_blacklist_the_file() {
    let dir = temp_dir("emfile");
    std::fs::write(dir.join("a.jpg"), pattern_jpeg(160, 120, 1)).unwrap();
    let spec = format!("dir:{}@10", dir.display());
    let d = Daemon::start(&["--source", &spec]);
    assert!(wait_for(Duration::from_secs(10), || published(&d) >= 3));
    // Soft limit 3: fds 0, 1, 2 are taken, so every open() in the daemon fails with EMFILE.
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) on our own child, reading only, into a valid struct.
    let rc = unsafe { libc::prlimit(d.pid(), libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "read the daemon's RLIMIT_NOFILE");
    let low = libc::rlimit {
        rlim_cur: 3,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, with a valid new limit (lowering the soft limit needs no privilege).
    let rc = unsafe { libc::prlimit(d.pid(), libc::RLIMIT_NOFILE, &low, std::ptr::null_mut()) };
    if rc != 0 {
        skip(
            "a_transient_read_error_does_not_blacklist_the_file",
            &format!(
                "prlimit(2) on the child failed: {}",
                std::io::Error::last_os_error()
            ),
            &[],
        );
        return;
    }
    // Wait for the capture thread itself to have failed on the file (other threads may log
    // EMFILE first), then lift the limit again.
    let hit = wait_for(Duration::from_secs(10), || {
        d.log_text()
            .lines()
            .any(|l| l.contains("a.jpg") && l.contains("Too many open files"))
    });
    // SAFETY: as above; the old limits.
    unsafe { libc::prlimit(d.pid(), libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) };
    assert!(hit, "no EMFILE seen: {}", d.log_text());
    let before = published(&d);
    let back = wait_for(Duration::from_secs(15), || {
        published(&d) >= before + 5 && cam(&d)["state"] == "online"
    });
    assert!(
        back,
        "published {before} -> {}: {}",
        published(&d),
        d.log_text()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
