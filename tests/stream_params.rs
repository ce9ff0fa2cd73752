//! `/stream`'s and `/snapshot`'s query parameters against the real binary (issue 14): ustreamer's
//! stream options (`extra_headers`, `advance_headers`, `dual_final_frames`, `zero_data`, `key`) as
//! parts on the wire and as `/state`'s `clients_stat`, the per-viewer rate `fps=N`, and
//! camera-streamer's `/snapshot?max_delay=MS`.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

const DELIM: &[u8] = b"\r\n--boundarydonotcross";

/// One part as read off the wire: its header lines and body.
struct RawPart {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawPart {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Opens `/stream...` with `user_agent` and reads until `parts` complete parts arrived (or 10 s).
/// Parts are split at the delimiter, so this also reads parts without `Content-Length`. Returns the
/// response head and the parts; the connection stays open while `hold` runs.
fn read_parts(
    port: u16,
    path: &str,
    user_agent: &str,
    parts: usize,
    hold: impl FnOnce(),
) -> (String, Vec<RawPart>) {
    let mut s = connect(port);
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: {user_agent}\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = |b: &[u8]| b.windows(DELIM.len()).filter(|w| *w == DELIM).count();
    // The head, the first boundary, then `parts` delimiters after it, plus the CRLF of the last
    // one so a part's headers are complete.
    while Instant::now() < deadline && count(&buf) < parts + 1 {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    hold();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let body = &buf[split + 4..];
    assert!(
        body.starts_with(b"--boundarydonotcross"),
        "body starts with the boundary"
    );
    let body = &body[b"--boundarydonotcross".len()..];
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(end) = rest.windows(DELIM.len()).position(|w| w == DELIM) {
        let seg = &rest[..end];
        rest = &rest[end + DELIM.len()..];
        let seg = seg.strip_prefix(b"\r\n").expect("a part starts with CRLF");
        let hend = seg
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part headers end");
        let headers = String::from_utf8_lossy(&seg[..hend])
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line");
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        out.push(RawPart {
            headers,
            body: seg[hend + 4..].to_vec(),
        });
    }
    (head, out)
}

fn state(port: u16) -> Value {
    let (code, _, body) = get(port, "/state").unwrap();
    assert_eq!(code, 200);
    serde_json::from_slice(&body).unwrap()
}

/// The single client in `/state`'s `clients_stat`, once there is exactly one.
fn only_client(port: u16) -> Value {
    let mut last = Value::Null;
    let ok = wait_for(Duration::from_secs(5), || {
        last = state(port);
        last["result"]["stream"]["clients_stat"]
            .as_object()
            .is_some_and(|m| m.len() == 1)
    });
    assert!(ok, "one client in clients_stat: {last}");
    let m = last["result"]["stream"]["clients_stat"]
        .as_object()
        .unwrap();
    m.values().next().unwrap().clone()
}

#[test]
fn extra_headers_dual_final_frames_and_key_as_ustreamer_reports_them() {
    let d = Daemon::start(&["--source", "synthetic:160x120@15"]);
    let mut stat = Value::Null;
    let (_, parts) = read_parts(
        d.port,
        "/stream?extra_headers=1&dual_final_frames=1&key=belt-7",
        "kvmd/3.0",
        3,
        || stat = only_client(d.port),
    );
    assert_eq!(stat["extra_headers"], true, "{stat}");
    assert_eq!(stat["dual_final_frames"], true, "{stat}");
    assert_eq!(stat["advance_headers"], false, "{stat}");
    assert_eq!(stat["zero_data"], false, "{stat}");
    assert_eq!(stat["key"], "belt-7", "{stat}");
    assert!(parts.len() >= 3);
    for p in &parts {
        let len: usize = p.get("Content-Length").unwrap().parse().unwrap();
        // The body read up to the delimiter is exactly Content-Length bytes: the headers are right.
        assert_eq!(p.body.len(), len);
        assert_eq!(decode(&p.body), (160, 120));
        assert_eq!(p.get("X-UStreamer-Online"), Some("true"));
        assert_eq!(p.get("X-UStreamer-Width"), Some("160"));
        assert_eq!(p.get("X-UStreamer-Height"), Some("120"));
        for h in [
            "X-UStreamer-Dropped",
            "X-UStreamer-Client-FPS",
            "X-UStreamer-Grab-Begin-Time",
            "X-UStreamer-Grab-End-Time",
            "X-UStreamer-Encode-Begin-Time",
            "X-UStreamer-Encode-End-Time",
            "X-UStreamer-Expose-Begin-Time",
            "X-UStreamer-Expose-Cmp-Time",
            "X-UStreamer-Expose-End-Time",
            "X-UStreamer-Send-Time",
            "X-UStreamer-Latency",
        ] {
            let v: f64 = p
                .get(h)
                .unwrap_or_else(|| panic!("{h} missing"))
                .parse()
                .unwrap_or_else(|_| panic!("{h} not a number"));
            assert!(v >= 0.0);
        }
        let latency: f64 = p.get("X-UStreamer-Latency").unwrap().parse().unwrap();
        assert!(latency < 5.0, "latency {latency} s");
    }
    // Without options a part carries no X-UStreamer headers, and /state says so.
    let mut plain = Value::Null;
    let (_, parts) = read_parts(d.port, "/stream", "kvmd/3.0", 2, || {
        plain = only_client(d.port)
    });
    assert!(parts.iter().all(|p| p.get("X-UStreamer-Online").is_none()));
    assert_eq!(plain["extra_headers"], false, "{plain}");
    assert_eq!(plain["key"], "0", "{plain}");
}

#[test]
fn zero_data_sends_empty_parts() {
    let d = Daemon::start(&["--source", "synthetic:160x120@15"]);
    let mut stat = Value::Null;
    let (_, parts) = read_parts(d.port, "/stream?zero_data=1", "kvmd/3.0", 3, || {
        stat = only_client(d.port)
    });
    assert_eq!(stat["zero_data"], true, "{stat}");
    assert!(parts.len() >= 3);
    for p in &parts {
        assert_eq!(p.get("Content-Length"), Some("0"));
        assert!(p.body.is_empty());
        assert!(p.get("X-Frame").is_some());
    }
}

#[test]
fn browsers_get_the_next_headers_in_advance_unless_they_opt_out() {
    let d = Daemon::start(&["--source", "synthetic:160x120@15"]);
    let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
    for (path, ua, advance) in [
        ("/stream", chrome, true),
        ("/stream?advance_headers=0", chrome, false),
        ("/stream?advance_headers=1", "curl/8.0", true),
        ("/stream", "curl/8.0", false),
        // ustreamer drops the X-UStreamer headers when headers go in advance; so does beltcam.
        ("/stream?extra_headers=1", chrome, true),
    ] {
        let mut stat = Value::Null;
        let (_, parts) = read_parts(d.port, path, ua, 3, || stat = only_client(d.port));
        assert_eq!(stat["advance_headers"], advance, "{path} {ua}: {stat}");
        assert_eq!(stat["extra_headers"], false, "{path} {ua}: {stat}");
        assert!(parts.len() >= 3, "{path} {ua}");
        for p in &parts {
            assert_eq!(p.get("Content-Type"), Some("image/jpeg"));
            assert_eq!(
                p.get("Content-Length").is_none(),
                advance,
                "{path} {ua}: Content-Length only when headers are not sent ahead"
            );
            assert_eq!(decode(&p.body), (160, 120), "{path} {ua}");
        }
        // Wait for the session to leave before the next one, so clients_stat has one entry.
        assert!(wait_for(Duration::from_secs(5), || state(d.port)["result"]
            ["stream"]["clients"]
            == 0));
    }
}

#[test]
fn fps_paces_a_viewer_evenly_with_the_newest_frames() {
    if emulated_skip("fps_paces_a_viewer_evenly_with_the_newest_frames") {
        return;
    }
    let _heavy = heavy();
    let d = Daemon::start(&["--source", "synthetic:160x120@30"]);
    let mut v = Viewer::open(d.port, "/stream?fps=5");
    let parts = v.read_for(Duration::from_secs(3));
    // 3 s at 5 fps after the first part: 15 more (the window closes on the 16th).
    let n = parts.len();
    assert!((13..=17).contains(&n), "{n} parts in 3 s at fps=5");
    let gaps: Vec<f64> = parts
        .windows(2)
        .map(|w| (w[1].received - w[0].received).as_secs_f64())
        .collect();
    let min = gaps.iter().cloned().fold(f64::MAX, f64::min);
    // Evenly spaced: never two frames much closer than 1/5 s (slack for a busy machine).
    assert!(min >= 0.12, "gaps {gaps:?}");
    // Always the newest: frames are skipped between parts (30 fps camera, 5 fps viewer).
    for w in parts.windows(2) {
        assert!(w[1].seq >= w[0].seq + 3, "seqs {} {}", w[0].seq, w[1].seq);
    }
    // A viewer without fps gets the camera's rate beside it.
    let mut full = Viewer::open(d.port, "/stream");
    let n_full = full.read_for(Duration::from_secs(2)).len();
    assert!(n_full >= 45, "{n_full} parts in 2 s without fps");
    for bad in ["0", "x", "121", "-3", "2.5"] {
        let (code, _, body) = get(d.port, &format!("/stream?fps={bad}")).unwrap();
        assert_eq!(code, 400, "fps={bad}: {}", String::from_utf8_lossy(&body));
    }
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn snapshot_max_delay_chooses_freshness() {
    let d = Daemon::start(&["--source", "synthetic:160x120@2"]);
    assert!(wait_for(Duration::from_secs(5), || matches!(
        get(d.port, "/snapshot"),
        Ok((200, _, _))
    )));
    for _ in 0..3 {
        // 0: whatever is newest now, at once (the camera's frames are up to 500 ms old).
        let t = Instant::now();
        let (code, head, body) = get(d.port, "/snapshot?max_delay=0").unwrap();
        assert_eq!(code, 200, "{head}");
        assert_eq!(decode(&body), (160, 120));
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "max_delay=0 took {:?}",
            t.elapsed()
        );
        // 50 ms: a frame at most 50 ms old when it was chosen, so usually the next one is awaited.
        let asked = now_s();
        let (code, head, _) = get(d.port, "/snapshot?max_delay=50").unwrap();
        assert_eq!(code, 200, "{head}");
        let ts: f64 = header(&head, "x-timestamp").unwrap().parse().unwrap();
        assert!(
            ts >= asked - 0.05 - 0.02,
            "frame taken {:.3} s before the request",
            asked - ts
        );
    }
    for bad in ["-1", "x", "3600001", "0.5"] {
        let (code, _, _) = get(d.port, &format!("/snapshot?max_delay={bad}")).unwrap();
        assert_eq!(code, 400, "max_delay={bad}");
    }
}
