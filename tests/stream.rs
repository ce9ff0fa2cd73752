//! Streaming end to end against the real binary: many viewers, multiple cameras, a viewer that
//! never reads, the full session table, and the ustreamer / mjpg-streamer URLs. Every test runs on
//! both io backends.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

const FPS: f64 = 30.0;

/// Checks a viewer's parts: every part decodes at `size`, frame numbers increase, timestamps are
/// sane, and the rate over the window is at least 80% of the source's.
fn check_parts(parts: &[Part], size: (usize, usize), window: Duration, who: &str) {
    assert!(parts.len() > 2, "{who}: only {} parts", parts.len());
    for w in parts.windows(2) {
        assert!(
            w[1].seq > w[0].seq,
            "{who}: frame numbers must increase ({} then {})",
            w[0].seq,
            w[1].seq
        );
        assert!(
            w[1].timestamp >= w[0].timestamp,
            "{who}: timestamps go backwards"
        );
    }
    for p in parts {
        assert_eq!(
            decode(&p.jpeg),
            size,
            "{who}: frame {} has the wrong size",
            p.seq
        );
    }
    let fps = (parts.len() - 1) as f64 / window.as_secs_f64();
    assert!(fps >= 0.8 * FPS, "{who}: {fps:.1} fps < 80% of {FPS}");
}

fn twenty_viewers_on_every_url(backend: &str) {
    if !backend_available("twenty_viewers_on_every_url", backend)
        || emulated_skip("twenty_viewers_on_every_url")
    {
        return;
    }
    let _g = heavy();
    let d = Daemon::start(&[
        "--io-backend",
        backend,
        "--source",
        "front=synthetic:320x240@30",
        "--source",
        "back=synthetic:352x288@30",
    ]);
    let urls = [
        ("/stream", (320, 240)),
        ("/?action=stream", (320, 240)),
        ("/cam/front/stream", (320, 240)),
        ("/cam/back/stream", (352, 288)),
    ];
    let window = Duration::from_secs(3);
    let viewers: Vec<_> = (0..20)
        .map(|i| {
            let (url, size) = urls[i % urls.len()];
            let port = d.port;
            std::thread::spawn(move || {
                let mut v = Viewer::open(port, url);
                (url, size, v.read_for(window))
            })
        })
        .collect();
    let results: Vec<_> = viewers
        .into_iter()
        .map(|t| t.join().expect("viewer thread"))
        .collect();
    // Decode after all viewers are done, so checking does not compete with receiving.
    for (url, size, parts) in &results {
        check_parts(parts, *size, window, url);
    }
    let stats = d.stats();
    assert_eq!(
        stats["io_backend"],
        if backend == "uring" {
            "io_uring"
        } else {
            "epoll"
        }
    );
    assert_eq!(stats["cameras"][1]["name"], "back");
}

fn snapshot_and_head(backend: &str) {
    if !backend_available("snapshot_and_head", backend) {
        return;
    }
    let d = Daemon::start(&["--io-backend", backend, "--source", "synthetic:320x240@15"]);
    for url in ["/snapshot", "/?action=snapshot", "/cam/cam0/snapshot"] {
        let (code, head, body) = get(d.port, url).unwrap();
        assert_eq!(code, 200, "{url}");
        assert_eq!(header(&head, "content-type"), Some("image/jpeg"));
        assert_eq!(
            header(&head, "content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            body.len()
        );
        assert!(header(&head, "x-timestamp").is_some());
        assert_eq!(decode(&body), (320, 240));
    }
    let (code, head, body) = raw(
        d.port,
        b"HEAD /snapshot HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(body.is_empty(), "HEAD has no body");
    assert!(
        header(&head, "content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 100
    );
    let (code, head, _) = raw(d.port, b"HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(code, 200);
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("multipart/x-mixed-replace"));
    // Keep-alive: two requests on one connection, both answered.
    let mut s = connect(d.port);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let (code, _, body) = get(d.port, "/").unwrap();
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("/cam/cam0/stream"));
}

fn stalled_viewer_does_not_slow_others(backend: &str) {
    if !backend_available("stalled_viewer_does_not_slow_others", backend)
        || emulated_skip("stalled_viewer_does_not_slow_others")
    {
        return;
    }
    let _g = heavy();
    let d = Daemon::start(&[
        "--io-backend",
        backend,
        "--source",
        "synthetic:1280x720@30",
        "--send-timeout-ms",
        "2500",
    ]);
    // Warm up so the baseline includes the frames already encoded.
    Viewer::open(d.port, "/stream").read_for(Duration::from_millis(300));
    assert!(wait_for(Duration::from_secs(5), || d.stats()["sessions"]
        ["active"]
        == 0));
    let (rss0, fds0) = (d.rss_bytes(), d.open_fds());
    // A viewer that requests the stream and never reads: a tiny receive buffer fills at once.
    let stalled = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stalled.set_recv_buffer_size(4096).unwrap();
    stalled.connect(&d.addr().into()).unwrap();
    let mut stalled: std::net::TcpStream = stalled.into();
    stalled
        .write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || d.stats()["sessions"]
        ["active"]
        == 1));
    let mut v = Viewer::open(d.port, "/stream");
    let window = Duration::from_secs(3);
    let parts = v.read_for(window);
    let fps = (parts.len() - 1) as f64 / window.as_secs_f64();
    assert!(
        fps >= 0.8 * FPS,
        "normal viewer beside a stalled one: {fps:.1} fps"
    );
    for p in parts.iter().step_by(10) {
        assert_eq!(decode(&p.jpeg), (1280, 720));
    }
    let (rss1, fds1) = (d.rss_bytes(), d.open_fds());
    assert!(
        rss1 < rss0 + 16 * 1024 * 1024,
        "RSS grew from {rss0} to {rss1}"
    );
    assert!(fds1 <= fds0 + 2, "fds grew from {fds0} to {fds1}");
    // The stalled send times out and that session ends; the normal one is unaffected.
    assert!(
        wait_for(Duration::from_secs(8), || d.stats()["requests"]
            ["send_timeouts"]
            == 1),
        "stalled session not ended by the send timeout: {}",
        d.stats()
    );
    assert!(v.next_part().is_some(), "normal viewer still served");
    drop(v);
    assert!(wait_for(Duration::from_secs(5), || d.stats()["sessions"]
        ["active"]
        == 0));
    assert!(
        wait_for(Duration::from_secs(5), || d.open_fds() <= fds0),
        "fds back to {fds0}"
    );
    drop(stalled);
}

fn full_table_is_503(backend: &str) {
    if !backend_available("full_table_is_503", backend) {
        return;
    }
    let d = Daemon::start(&[
        "--io-backend",
        backend,
        "--source",
        "synthetic:160x120@15",
        "--max-sessions",
        "2",
    ]);
    let a = Viewer::open(d.port, "/stream");
    let mut b = Viewer::open(d.port, "/cam/cam0/stream");
    let (code, head, body) = get(d.port, "/stream").unwrap();
    assert_eq!(code, 503, "{head}");
    assert!(header(&head, "retry-after").is_some());
    assert!(String::from_utf8_lossy(&body).contains("full"));
    assert_eq!(d.stats()["sessions"]["rejected_full"], 1);
    assert_eq!(d.stats()["sessions"]["capacity"], 2);
    drop(a);
    assert!(wait_for(Duration::from_secs(5), || d.stats()["sessions"]
        ["active"]
        == 1));
    let mut c = Viewer::open(d.port, "/stream");
    assert!(c.next_part().is_some());
    assert!(b.next_part().is_some());
}

fn bad_requests_get_clean_errors(backend: &str) {
    if !backend_available("bad_requests_get_clean_errors", backend) {
        return;
    }
    let d = Daemon::start(&[
        "--io-backend",
        backend,
        "--source",
        "synthetic:160x120@15",
        "--request-timeout-ms",
        "700",
    ]);
    let mut big = b"GET /stream HTTP/1.1\r\nX-Fill: ".to_vec();
    big.resize(9 * 1024, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    let mut many = b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    // Larger than a connection's first head buffer (1 KiB), inside the limit: it grows once.
    let mut mid = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Fill: ".to_vec();
    mid.resize(6 * 1024, b'a');
    mid.extend_from_slice(b"\r\n\r\n");
    let cases: [(&[u8], u16); 8] = [
        (&mid, 200),
        (&big, 431),
        (&many, 431),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
            400,
        ),
        (b"BREW /stream HTTP/1.1\r\nHost: t\r\n\r\n", 405),
        (b"DELETE /snapshot HTTP/1.1\r\nHost: t\r\n\r\n", 405),
        (b"GET /etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n", 404),
        (b"GET /cam/nope/stream HTTP/1.1\r\nHost: t\r\n\r\n", 404),
    ];
    for (req, want) in cases {
        let (code, head, _) = raw(d.port, req).unwrap();
        assert_eq!(
            code,
            want,
            "{:?} -> {head}",
            String::from_utf8_lossy(&req[..req.len().min(40)])
        );
    }
    // Slowloris: half a head, then silence -> 408 after the request timeout.
    let (code, _, _) = raw(d.port, b"GET /stream HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert_eq!(code, 408);
    let s = d.stats();
    assert_eq!(s["requests"]["too_large"], 2);
    assert_eq!(s["requests"]["bad_request"], 1);
    assert_eq!(s["requests"]["not_found"], 2);
    assert_eq!(s["requests"]["method_not_allowed"], 2);
    assert_eq!(s["requests"]["request_timeouts"], 1);
    // Still serving.
    assert!(Viewer::open(d.port, "/stream").next_part().is_some());
    assert_eq!(get(d.port, "/health").unwrap().0, 200);
}

fn sigterm_with_viewers_exits_within_a_second(backend: &str) {
    if !backend_available("sigterm_with_viewers_exits_within_a_second", backend) {
        return;
    }
    let mut d = Daemon::start(&["--io-backend", backend, "--source", "synthetic:320x240@30"]);
    let mut viewers: Vec<Viewer> = (0..5).map(|_| Viewer::open(d.port, "/stream")).collect();
    for v in &mut viewers {
        assert!(v.next_part().is_some());
    }
    let t = std::time::Instant::now();
    let status = d.signal_and_wait(libc::SIGTERM, Duration::from_secs(1));
    let status =
        status.unwrap_or_else(|| panic!("still running 1 s after SIGTERM: {}", d.log_text()));
    assert!(status.success(), "exit status {status}");
    eprintln!(
        "{backend}: exited {:?} after SIGTERM with 5 viewers",
        t.elapsed()
    );
    // Viewers see the end of the stream, not a hang.
    for v in &mut viewers {
        let mut n = 0;
        while v.next_part().is_some() {
            n += 1;
            assert!(n < 100, "stream did not end");
        }
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { super::$name("uring") })*
        }
        mod epoll {
            $(#[test] fn $name() { super::$name("epoll") })*
        }
    };
}

on_both_backends!(
    twenty_viewers_on_every_url,
    snapshot_and_head,
    stalled_viewer_does_not_slow_others,
    full_table_is_503,
    bad_requests_get_clean_errors,
    sigterm_with_viewers_exits_within_a_second,
);
