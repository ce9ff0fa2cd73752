//! The operator's console at `/`, in real headless Chromium driven over the DevTools protocol
//! (`--remote-debugging-pipe`: JSON messages on fds 3 and 4, no WebSocket needed). Seven cameras,
//! one more than a browser's six connections per host: every tile loads (snapshots, one in flight
//! at a time), the numbers update from `/events`, the health banner shows, and the close button of a
//! session ends that viewer's stream. A screenshot is saved as `target/console.png`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{chromium_for, get, wait_for, Daemon, Viewer};
use serde_json::{json, Value};

/// A headless Chromium and its DevTools pipe.
struct Cdp {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    next: u64,
    profile: std::path::PathBuf,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are fresh, open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Cdp {
    fn start(browser: &str) -> Cdp {
        let profile = std::env::temp_dir().join(format!("beltcam-console-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let (r, w) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        let mut c = Command::new(browser);
        c.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                // Out of the way first (either may already be 3 or 4), then into place; dup2's
                // copies do not close on exec.
                let (r2, w2) = (
                    libc::fcntl(r, libc::F_DUPFD, 10),
                    libc::fcntl(w, libc::F_DUPFD, 10),
                );
                if r2 < 0 || w2 < 0 || libc::dup2(r2, 3) < 0 || libc::dup2(w2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().expect("start chromium");
        drop((cmd_read, out_write));
        let (tx, rx) = mpsc::channel();
        let mut reader = BufReader::new(std::fs::File::from(out_read));
        std::thread::spawn(move || loop {
            let mut msg = Vec::new();
            match reader.read_until(0, &mut msg) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    msg.pop();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Cdp {
            child,
            to: std::fs::File::from(cmd_write),
            from: rx,
            next: 1,
            profile,
        }
    }

    /// Sends a command and waits (bounded) for its answer.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method} within 20 s"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, session: &str, js: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        r["result"]["value"].clone()
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// What the page shows, as the test reads it.
const READ_PAGE: &str = r#"(() => ({
  tiles: [...document.querySelectorAll('.tile')].map(t => ({
    cam: t.dataset.cam, loaded: +(t.dataset.loaded || 0),
    fps: t.querySelector('.fps').textContent, state: t.querySelector('.state').textContent,
    img: (t.querySelector('.img img') || {}).naturalWidth || 0})),
  counters: window.beltcam, health: document.querySelector('#health').className,
  live: document.querySelector('#live').naturalWidth,
  sessions: [...document.querySelectorAll('#sessions tr[data-id]')].map(r => r.children[1].textContent),
}))()"#;

#[test]
fn the_console_shows_every_camera_updates_live_and_closes_sessions() {
    let test = "the_console_shows_every_camera_updates_live_and_closes_sessions";
    let Some(browser) = chromium_for(test) else {
        return;
    };
    let _heavy = common::heavy();
    let mut args = Vec::new();
    for i in 0..7 {
        args.push("--source".to_string());
        args.push(format!("cam{i}=synthetic:320x240@10"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start(&args);
    let mut cdp = Cdp::start(browser);
    let target = cdp.call(
        None,
        "Target.createTarget",
        json!({"url": format!("http://127.0.0.1:{}/", d.port)}),
    )["targetId"]
        .clone();
    let session = cdp.call(
        None,
        "Target.attachToTarget",
        json!({"targetId": target, "flatten": true}),
    )["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();

    // Every tile loads its snapshots (seven cameras: more than six connections' worth), each
    // shows its state and fps, the live stream plays, the banner says ok.
    let mut page = Value::Null;
    let all_up = wait_for(Duration::from_secs(30), || {
        page = cdp.eval(&session, READ_PAGE);
        let tiles = page["tiles"].as_array().cloned().unwrap_or_default();
        tiles.len() == 7
            && tiles.iter().all(|t| {
                t["loaded"].as_u64() >= Some(2)
                    && t["img"].as_u64() == Some(320)
                    && t["state"] == "online"
                    && t["fps"].as_str().is_some_and(|f| f.ends_with("fps"))
            })
            && page["live"].as_u64() == Some(320)
            && page["health"] == "ok"
    });
    assert!(all_up, "the console did not come up: {page:#}");
    // The numbers update: stats events keep arriving, snapshots keep refreshing.
    let (stats0, snaps0) = (
        page["counters"]["stats"].as_u64().unwrap(),
        page["counters"]["snapshots"].as_u64().unwrap(),
    );
    assert!(
        wait_for(Duration::from_secs(10), || {
            page = cdp.eval(&session, READ_PAGE);
            page["counters"]["stats"].as_u64() >= Some(stats0 + 14)
                && page["counters"]["snapshots"].as_u64() >= Some(snaps0 + 7)
        }),
        "no updates: {page:#}"
    );

    // Closing a session: a viewer of the test's, closed from the console's button.
    let mut viewer = Viewer::open(d.port, "/cam/cam3/stream");
    assert!(viewer.next_part().is_some());
    let (_, _, body) = get(d.port, "/sessions").unwrap();
    let listed: Value = serde_json::from_slice(&body).unwrap();
    let ours = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["camera"] == "cam3")
        .expect("the test's session is listed")["id"]
        .as_u64()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || {
            cdp.eval(
                &session,
                &format!(
                    "!!document.querySelector('#sessions tr[data-id=\"{ours}\"] button.close')"
                ),
            ) == true
        }),
        "the console does not list session {ours}"
    );
    let clicked = cdp.eval(
        &session,
        &format!(
            "document.querySelector('#sessions tr[data-id=\"{ours}\"] button.close').click(); true"
        ),
    );
    assert_eq!(clicked, true);
    let t0 = Instant::now();
    let mut ended = false;
    for _ in 0..200 {
        if viewer.next_part().is_none() {
            ended = true;
            break;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert!(ended, "the closed session's stream did not end");
    let (_, _, body) = get(d.port, "/sessions").unwrap();
    assert!(!String::from_utf8_lossy(&body).contains(&format!("\"id\":{ours},")));

    // The picture, for people.
    let shot = cdp.call(
        Some(&session),
        "Page.captureScreenshot",
        json!({"format": "png"}),
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!(
        "console screenshot: {} ({} bytes)",
        out.display(),
        png.len()
    );
}
