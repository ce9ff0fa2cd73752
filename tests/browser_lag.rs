//! Chromium's display lag on a 1 fps stream, measured in real headless Chromium (issue 14).
//!
//! Chromium draws a multipart part only once it has parsed the next part's headers, so a server
//! that sends them only with the next frame shows every frame one frame late (a whole second at
//! 1 fps). beltcam sends a browser the next part's headers right after each frame
//! (`advance_headers`, on by default for a `Mozilla/` user agent).
//!
//! How: a `dir:` camera at 1 fps cycles six solid grey JPEGs, each a different level. A page holds
//! two `<img>` of the stream (the default, and `?advance_headers=0`, which must show the lag: it
//! proves the measurement can see it), draws each into a canvas every 10 ms and logs the time the
//! level changes (`Date.now()`). Meanwhile the test reads the stream itself and logs when each
//! file's bytes arrived (same clock). Lag of a change = its time minus the arrival of the same file
//! last before it. The page posts its log to a listener of the test's; every wait has a deadline.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// Grey levels of the six frames (far apart, so JPEG rounding cannot confuse them).
const LEVELS: [u8; 6] = [16, 56, 96, 136, 176, 216];
/// How long the page watches the streams, in ms.
const WATCH_MS: u64 = 7_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn grey_jpeg(level: u8) -> Vec<u8> {
    use beltcam::capture::encode::{compressor, encode_i420, I420};
    let mut img = I420::new(64, 64);
    let (y, u, v) = img.planes_mut();
    y.fill(level);
    u.fill(128);
    v.fill(128);
    let mut out = vec![0u8; 1 << 16];
    let len = encode_i420(&mut compressor(90).unwrap(), &img, &mut out).unwrap();
    out.truncate(len);
    out
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("beltcam-lag-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Reads `/stream` as a non-browser client and logs (arrival ms, file index) for each frame, until
/// `stop` is set or `until`.
fn reference_reader(
    port: u16,
    files: Vec<Vec<u8>>,
    stop: &AtomicBool,
    until: Instant,
) -> Vec<(u64, usize)> {
    let mut s = connect(port);
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        let t = now_ms();
        loop {
            let found = files
                .iter()
                .enumerate()
                .filter_map(|(i, f)| find(&buf, f).map(|at| (at, i, f.len())))
                .min();
            let Some((at, i, len)) = found else { break };
            out.push((t, i));
            buf.drain(..at + len);
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Accepts the page's one POST and returns its body (the JSON log), within `limit`.
fn receive_log(listener: TcpListener, limit: Duration) -> Option<String> {
    listener.set_nonblocking(true).ok()?;
    let deadline = Instant::now() + limit;
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    };
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&req);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = header(head, "content-length")?.parse().ok()?;
            if body.len() >= len {
                let _ = conn.write_all(
                    b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n",
                );
                return Some(body[..len].to_string());
            }
        }
    }
    None
}

/// Median lag (ms) of the page's changes for one `<img>`, against the reference arrivals.
fn lags(changes: &[serde_json::Value], arrivals: &[(u64, usize)]) -> Vec<i64> {
    let mut out = Vec::new();
    for c in changes {
        let (t, level) = (c[0].as_u64().unwrap(), c[1].as_i64().unwrap());
        let Some(idx) = LEVELS
            .iter()
            .position(|&l| (i64::from(l) - level).abs() <= 12)
        else {
            continue; // not yet a frame (blank image)
        };
        if let Some(&(a, _)) = arrivals
            .iter()
            .rev()
            .find(|&&(a, i)| i == idx && a <= t + 50)
        {
            out.push(t as i64 - a as i64);
        }
    }
    out
}

fn median(v: &mut [i64]) -> i64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn chromium_shows_each_frame_without_a_frame_of_lag() {
    let test = "chromium_shows_each_frame_without_a_frame_of_lag";
    let Some(browser) = chromium_for(test) else {
        return;
    };
    let _heavy = heavy();
    let dir = temp_dir("frames");
    let files: Vec<Vec<u8>> = LEVELS.iter().map(|&l| grey_jpeg(l)).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("{i}.jpg")), f).unwrap();
    }
    let d = Daemon::start(&["--source", &format!("dir:{}@1", dir.display())]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let log_port = listener.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{}/stream", d.port);
    let page = format!(
        r#"<!doctype html><html><body>
<img id=a crossorigin=anonymous src="{base}"><img id=b crossorigin=anonymous src="{base}?advance_headers=0">
<script>
const log = {{a: [], b: []}}, last = {{}};
const c = document.createElement('canvas'); c.width = c.height = 8;
const ctx = c.getContext('2d', {{willReadFrequently: true}});
setInterval(() => {{
  for (const id of ['a', 'b']) {{
    try {{
      ctx.clearRect(0, 0, 8, 8);
      ctx.drawImage(document.getElementById(id), 0, 0, 8, 8);
      const v = ctx.getImageData(4, 4, 1, 1).data[0];
      if (v !== last[id]) {{ last[id] = v; log[id].push([Date.now(), v]); }}
    }} catch (e) {{}}
  }}
}}, 10);
setTimeout(() => fetch('http://127.0.0.1:{log_port}/log', {{method: 'POST', body: JSON.stringify(log)}}), {WATCH_MS});
</script></body></html>"#
    );
    let page_path = dir.join("page.html");
    std::fs::write(&page_path, page).unwrap();
    let profile = temp_dir("profile");

    // The reader runs until the page's log is in (bounded by the same deadline as the log).
    let log_limit = Duration::from_millis(WATCH_MS + 20_000);
    let until = Instant::now() + log_limit + Duration::from_secs(1);
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (arrivals, files, port) = (Arc::clone(&arrivals), files.clone(), d.port);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            *arrivals.lock().unwrap() = reference_reader(port, files, &stop, until)
        })
    };
    let mut chrome = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--allow-file-access-from-files",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page_path.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let log = receive_log(listener, log_limit);
    let _ = chrome.kill();
    let _ = chrome.wait();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let log = log.expect("the page posted its log within the deadline");
    let log: serde_json::Value = serde_json::from_str(&log).unwrap();
    let arrivals = arrivals.lock().unwrap().clone();
    assert!(arrivals.len() >= 5, "reference reader saw {arrivals:?}");

    let mut fixed = lags(log["a"].as_array().unwrap(), &arrivals);
    let mut old = lags(log["b"].as_array().unwrap(), &arrivals);
    eprintln!("lag ms, default (advance headers): {fixed:?}");
    eprintln!("lag ms, advance_headers=0: {old:?}");
    assert!(
        fixed.len() >= 4 && old.len() >= 4,
        "too few frames shown: {log}"
    );
    let (fixed_med, old_med) = (median(&mut fixed), median(&mut old));
    // At 1 fps a frame late is ~1000 ms; on time is a few ms plus the 10 ms polling (and noise
    // from a busy machine).
    assert!(
        old_med >= 700,
        "the control (advance_headers=0) should lag a frame: {old_med} ms"
    );
    assert!(
        fixed_med <= 300,
        "a browser sees each frame {fixed_med} ms after it arrived (a frame late is ~1000)"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&profile);
}
