//! Live reload (SIGHUP, what `systemctl reload beltcam` sends): against the real binary. A valid new
//! file is applied without a restart (unchanged cameras keep their viewers, removed and changed ones
//! end theirs cleanly, added ones start; limits, credentials and the log level apply to new
//! connections); an invalid one is refused with the one-line error and the running configuration
//! stays; the other signals that would kill by default are ignored and logged once.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{get, raw, wait_for, Daemon, Viewer};

/// A config file in a fresh temporary directory (removed on drop).
struct ConfigFile {
    dir: PathBuf,
}

impl ConfigFile {
    fn new(test: &str) -> ConfigFile {
        let dir =
            std::env::temp_dir().join(format!("beltcam-reload-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ConfigFile { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("beltcam.toml")
    }

    fn path_str(&self) -> String {
        self.path().to_string_lossy().into_owned()
    }

    /// Replaces the file in one step (as an editor or config management does).
    fn write(&self, body: &str) {
        let tmp = self.dir.join("beltcam.toml.new");
        std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(body.as_bytes()))
            .unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }

    fn file(&self, name: &str, body: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `[[camera]]` tables for `(name, source)` pairs, after `head`.
fn config(head: &str, cams: &[(&str, &str)]) -> String {
    let mut s = String::from(head);
    for (name, source) in cams {
        s += &format!("\n[[camera]]\nname = \"{name}\"\nsource = \"{source}\"\n");
    }
    s
}

/// Sends SIGHUP and waits for the daemon to log `outcome` one more time than before.
fn sighup(d: &Daemon, outcome: &str) {
    let before = d.log_text().matches(outcome).count();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    let done = wait_for(Duration::from_secs(10), || {
        d.log_text().matches(outcome).count() > before
    });
    assert!(done, "no {outcome:?} after SIGHUP: {}", d.log_text());
    assert!(
        d.child_alive(),
        "the daemon died on SIGHUP: {}",
        d.log_text()
    );
}

trait Alive {
    fn child_alive(&self) -> bool;
}

impl Alive for Daemon {
    fn child_alive(&self) -> bool {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    }
}

fn camera_names(d: &Daemon) -> Vec<String> {
    d.stats()["cameras"]
        .as_array()
        .expect("cameras")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn camera<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["cameras"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("camera {name} in /stats: {stats}"))
}

/// Reads parts until the stream ends; the time it took, or None if it did not end within `limit`.
fn ends_within(v: &mut Viewer, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    for _ in 0..1000 {
        if v.next_part().is_none() {
            return Some(t0.elapsed()).filter(|e| *e < limit);
        }
        if t0.elapsed() > limit {
            return None;
        }
    }
    None
}

const HEAD: &str = "[log]\nlevel = \"info\"\n";

#[test]
fn reload_keeps_unchanged_cameras_and_their_viewers_stops_removed_and_starts_added() {
    let cfg = ConfigFile::new("cameras");
    let fast = "synthetic:160x120@15";
    cfg.write(&config(
        HEAD,
        &[("keep", fast), ("gone", fast), ("changed", fast)],
    ));
    let d = Daemon::start(&["--config", &cfg.path_str()]);
    assert_eq!(camera_names(&d), ["keep", "gone", "changed"]);

    let mut keep = Viewer::open(d.port, "/cam/keep/stream");
    let mut gone = Viewer::open(d.port, "/cam/gone/stream");
    let mut changed = Viewer::open(d.port, "/cam/changed/stream");
    for v in [&mut keep, &mut gone, &mut changed] {
        assert!(v.next_part().is_some(), "a first frame");
    }
    let published_before = camera(&d.stats(), "keep")["frames"]["published"]
        .as_u64()
        .expect("published");

    cfg.write(&config(
        HEAD,
        &[
            ("added", "synthetic:320x240@10"),
            ("keep", fast),
            ("changed", "synthetic:320x240@5"),
        ],
    ));
    sighup(&d, "reload applied");
    let reloaded = Instant::now();

    // The unchanged camera's viewer never noticed: same connection, frames keep coming at the
    // camera's rate, sequence numbers go on (the camera was not restarted).
    let parts = keep.read_for(Duration::from_secs(2));
    assert!(
        parts.len() >= 20,
        "keep: {} frames in 2 s after reload",
        parts.len()
    );
    let max_gap = parts
        .windows(2)
        .map(|w| w[1].received - w[0].received)
        .max()
        .unwrap_or_default();
    assert!(
        max_gap < Duration::from_millis(500),
        "keep: a {max_gap:?} gap"
    );
    assert!(parts.windows(2).all(|w| w[1].seq > w[0].seq));
    let published_after = camera(&d.stats(), "keep")["frames"]["published"]
        .as_u64()
        .unwrap();
    assert!(
        published_after > published_before + 20,
        "keep's counters went on ({published_before} -> {published_after}): not restarted"
    );

    // The removed and the changed camera's viewers got a clean end (EOF after a whole part).
    for (name, v) in [("gone", &mut gone), ("changed", &mut changed)] {
        let ended = ends_within(v, Duration::from_secs(3));
        assert!(ended.is_some(), "{name}: the viewer's stream did not end");
    }

    // The list is the new one, in the new order: `/stream` is now the added camera.
    assert_eq!(camera_names(&d), ["added", "keep", "changed"]);
    assert_eq!(get(d.port, "/cam/gone/stream").unwrap().0, 404);
    assert!(
        wait_for(Duration::from_secs(5), || get(
            d.port,
            "/cam/added/snapshot"
        )
        .is_ok_and(|r| r.0 == 200)),
        "the added camera serves snapshots"
    );
    let (code, _, jpeg) = get(d.port, "/snapshot").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        common::decode(&jpeg),
        (320, 240),
        "/snapshot is the first camera"
    );
    let stats = d.stats();
    assert_eq!(camera(&stats, "changed")["source"], "synthetic:320x240@5");
    let mut changed = Viewer::open(d.port, "/cam/changed/stream");
    let p = changed.next_part().expect("the changed camera streams");
    assert_eq!(common::decode(&p.jpeg), (320, 240));
    // The removed camera's capture thread is gone, and nothing reports it.
    let threads = |d: &Daemon| {
        std::fs::read_dir(format!("/proc/{}/task", d.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        wait_for(Duration::from_secs(5), || !threads(&d)
            .iter()
            .any(|c| c == "capture-gone")),
        "capture-gone still runs: {:?}",
        threads(&d)
    );
    // The removed camera's silent heartbeat is not taken for a wedged thread: /health stays ok
    // past the wedge threshold (5 s) after the reload.
    let mut polls = 0;
    while reloaded.elapsed() < Duration::from_secs(7) && polls < 100 {
        let (code, _, body) = get(d.port, "/health").unwrap();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 200, "{body}");
        assert!(!body.contains("gone"), "{body}");
        polls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!d.log_text().contains("wedged"), "{}", d.log_text());
}

#[test]
fn reload_applies_credentials_and_limits_to_new_connections() {
    let cfg = ConfigFile::new("auth");
    let head = "[limits]\nmax_clients_per_ip = 8\nconnects_per_minute = 1000000\n";
    cfg.write(&config(head, &[("cam", "synthetic:160x120@15")]));
    let d = Daemon::start_exact(&["--config", &cfg.path_str()]);
    let mut first = Viewer::open(d.port, "/stream");
    let mut second = Viewer::open(d.port, "/stream");
    assert!(first.next_part().is_some() && second.next_part().is_some());

    let viewers = cfg.file("viewers", "op:s3cret\n");
    let head = format!(
        "[limits]\nmax_clients_per_ip = 1\nconnects_per_minute = 1000000\n\
         [auth]\nviewers_file = \"{}\"\n",
        viewers.display()
    );
    cfg.write(&config(&head, &[("cam", "synthetic:160x120@15")]));
    sighup(&d, "reload applied");

    // Connections already streaming keep going (the camera did not change).
    for v in [&mut first, &mut second] {
        let parts = v.read_for(Duration::from_secs(1));
        assert!(parts.len() >= 10, "{} frames after reload", parts.len());
    }
    // New requests need the credentials...
    let (code, head, _) = get(d.port, "/snapshot").unwrap();
    assert_eq!(code, 401, "{head}");
    // ("op:s3cret" in base64)
    let authz = "Authorization: Basic b3A6czNjcmV0\r\n";
    let req =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: t\r\n{authz}Connection: close\r\n\r\n");
    let (code, _, _) = raw(d.port, req("/snapshot").as_bytes()).unwrap();
    assert_eq!(code, 200);
    // ... and the new per-address limit: this address already holds two streams.
    let (code, head, _) = raw(d.port, req("/stream").as_bytes()).unwrap();
    assert_eq!(code, 429, "{head}");
}

#[test]
fn invalid_reload_is_refused_and_the_running_configuration_stays() {
    let cfg = ConfigFile::new("invalid");
    cfg.write(&config(HEAD, &[("cam", "synthetic:160x120@15")]));
    let d = Daemon::start_exact(&["--config", &cfg.path_str()]);
    let mut v = Viewer::open(d.port, "/stream");
    assert!(v.next_part().is_some());

    for (bad, error) in [
        ("[log]\nlevel = \"warnn\"\n", "log.level"),
        ("[log\nlevel = ", "TOML"),
        (
            "[[camera]]\nname = \"cam\"\nsource = \"synthetic:640x480@1e-300\"\n",
            "fps",
        ),
        (
            "[[camera]]\nname = \"cam\"\nsorce = \"synthetic\"\n",
            "sorce",
        ),
    ] {
        cfg.write(bad);
        sighup(&d, "reload refused");
        let log = d.log_text();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("reload refused"))
            .unwrap();
        assert!(
            line.to_lowercase().contains(&error.to_lowercase()),
            "the refusal names the problem ({error}): {line}"
        );
        assert_eq!(camera_names(&d), ["cam"]);
        let parts = v.read_for(Duration::from_millis(500));
        assert!(
            parts.len() >= 4,
            "the viewer kept streaming: {}",
            parts.len()
        );
    }

    // A valid file again applies, log level included: debug lines appear from now on.
    assert!(!d.log_text().contains("session opened"));
    cfg.write(&config(
        "[log]\nlevel = \"debug\"\n",
        &[("cam", "synthetic:160x120@15")],
    ));
    sighup(&d, "reload applied");
    drop(Viewer::open(d.port, "/stream"));
    assert!(
        wait_for(Duration::from_secs(5), || d
            .log_text()
            .contains("session opened")),
        "log.level = debug applied: {}",
        d.log_text()
    );
}

#[test]
fn reload_names_settings_that_need_a_restart_and_keeps_serving() {
    let cfg = ConfigFile::new("restart");
    cfg.write(&config(
        "[server]\nthreads = 1\n",
        &[("cam", "synthetic:160x120@15")],
    ));
    let d = Daemon::start(&["--config", &cfg.path_str()]);
    cfg.write(&config(
        "[server]\nthreads = 2\nmax_sessions = 64\n",
        &[("cam", "synthetic:160x120@15")],
    ));
    sighup(&d, "reload applied");
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("need a restart"))
        .unwrap_or_else(|| panic!("no restart warning: {log}"));
    assert!(
        line.contains("threads") && line.contains("max_sessions"),
        "{line}"
    );
    assert_eq!(get(d.port, "/health").unwrap().0, 200);
    // The running value stays (the session table keeps its size).
    let capacity = d.stats()["sessions"]["capacity"].as_u64();
    assert_ne!(capacity, Some(64), "max_sessions cannot change live");
}

#[test]
fn other_deadly_signals_are_ignored_and_logged_once() {
    let d = Daemon::start(&["--source", "synthetic:160x120@15"]);
    for sig in [
        libc::SIGUSR1,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGUSR2,
    ] {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(d.pid(), sig) };
    }
    let logged = |name: &str| {
        d.log_text()
            .lines()
            .filter(|l| l.contains(name) && l.contains("ignored"))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(5), || ["SIGUSR1", "SIGUSR2", "SIGALRM"]
            .iter()
            .all(|s| logged(s) >= 1)),
        "{}",
        d.log_text()
    );
    for sig in ["SIGUSR1", "SIGUSR2", "SIGALRM"] {
        assert_eq!(logged(sig), 1, "{sig} logged once: {}", d.log_text());
    }
    assert!(d.child_alive());
    assert_eq!(get(d.port, "/health").unwrap().0, 200);
}
