//! Guard and observe, against the real binary: admin API with a token, Prometheus metrics read by a
//! real parser, the event stream (rooms and overflow), a connection flood from one address beside a
//! viewer on another, and a 20,000-connection churn soak that must leak no fd and little memory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("beltcam-{}-{name}", std::process::id()));
    std::fs::write(&p, contents).unwrap();
    p
}

fn request(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n");
    let (code, _, body) = raw(port, req.as_bytes()).unwrap();
    (
        code,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Reads parts until the stream ends; true if it ended within `limit`.
fn ends_within(v: &mut Viewer, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if v.next_part().is_none() {
            return true;
        }
    }
    false
}

#[test]
fn admin_lists_and_closes_sessions_with_a_token() {
    const TOKEN: &str = "test-token-0123456789abcdef";
    let token_file = temp_file("token", TOKEN);
    let d = Daemon::start(&[
        "--source",
        "synthetic:160x120@30",
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ]);
    let mut a = Viewer::open(d.port, "/stream");
    a.next_part().unwrap();
    let mut b = Viewer::open(d.port, "/cam/cam0/stream");
    b.next_part().unwrap();

    assert_eq!(request(d.port, "GET", "/sessions", None).0, 401);
    assert_eq!(
        request(d.port, "GET", "/sessions", Some("wrong-token-0123456789")).0,
        401
    );
    assert_eq!(request(d.port, "DELETE", "/sessions/1", None).0, 401);
    let (code, list) = request(d.port, "GET", "/sessions", Some(TOKEN));
    assert_eq!(code, 200);
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{list}");
    for s in sessions {
        for key in [
            "id",
            "peer",
            "endpoint",
            "started_unix_ms",
            "age_s",
            "bytes_sent",
            "frames_sent",
            "frames_skipped",
        ] {
            assert!(!s[key].is_null(), "missing {key}: {s}");
        }
        assert_eq!(s["camera"], "cam0");
        assert_eq!(s["endpoint"], "stream");
        assert!(s["frames_sent"].as_u64().unwrap() >= 1);
    }
    let first = sessions[0]["id"].as_u64().unwrap();
    let mut events = Sse::open(d.port, "/events");
    let (code, _) = request(d.port, "DELETE", &format!("/sessions/{first}"), Some(TOKEN));
    assert_eq!(code, 200);
    assert!(
        ends_within(&mut a, Duration::from_secs(3)),
        "closed session's stream ends"
    );
    // The session says why it ended (its stop signal tells an admin close from a shutdown).
    let closed = events
        .find("session", "closed by admin", Duration::from_secs(5))
        .expect("a session-closed event with the admin reason");
    assert!(closed.contains(&format!("\"id\":{first}")), "{closed}");
    assert_eq!(
        request(d.port, "DELETE", &format!("/sessions/{first}"), Some(TOKEN)).0,
        404
    );
    assert!(wait_for(Duration::from_secs(3), || {
        request(d.port, "GET", "/sessions", Some(TOKEN)).1["active"] == 1
    }));
    // Close by age: nothing is a day old, everything is older than zero seconds.
    let (code, r) = request(
        d.port,
        "POST",
        "/sessions/close?older_than=86400",
        Some(TOKEN),
    );
    assert_eq!((code, r["closed"].as_u64()), (200, Some(0)));
    assert_eq!(
        request(
            d.port,
            "POST",
            "/sessions/close?older_than=soon",
            Some(TOKEN)
        )
        .0,
        400
    );
    let (code, r) = request(d.port, "POST", "/sessions/close?older_than=0", Some(TOKEN));
    assert_eq!((code, r["closed"].as_u64()), (200, Some(1)));
    assert!(ends_within(&mut b, Duration::from_secs(3)));
    let _ = std::fs::remove_file(token_file);
}

#[test]
fn admin_without_token_answers_loopback() {
    let d = Daemon::start(&["--source", "synthetic:160x120@15"]);
    let (code, list) = request(d.port, "GET", "/sessions", None);
    assert_eq!(
        code, 200,
        "loopback may administer when no token is configured"
    );
    assert_eq!(list["active"], 0);
}

#[test]
fn viewer_basic_auth_when_configured() {
    let creds = temp_file("viewers", "op:belt-2026\n");
    let d = Daemon::start(&[
        "--source",
        "synthetic:160x120@15",
        "--viewers-file",
        creds.to_str().unwrap(),
    ]);
    let (code, head, _) = get(d.port, "/snapshot").unwrap();
    assert_eq!(code, 401);
    assert!(header(&head, "www-authenticate")
        .unwrap()
        .starts_with("Basic"));
    // base64("op:belt-2026")
    let ok = raw(d.port, b"GET /snapshot HTTP/1.1\r\nHost: t\r\nAuthorization: Basic b3A6YmVsdC0yMDI2\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(ok.0, 200);
    assert_eq!(
        get(d.port, "/health").unwrap().0,
        200,
        "health stays open for monitoring"
    );
    let _ = std::fs::remove_file(creds);
}

#[test]
fn metrics_parse_with_a_real_prometheus_parser() {
    let d = Daemon::start(&[
        "--source",
        "front=synthetic:160x120@30",
        "--source",
        "back=synthetic:160x120@30",
    ]);
    let mut v = Viewer::open(d.port, "/cam/back/stream");
    v.next_part().unwrap();
    get(d.port, "/nope").unwrap();
    let (code, head, body) = get(d.port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    let sample = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no sample {name} {label:?} in\n{text}"))
            .value
            .clone()
    };
    use prometheus_parse::Value::*;
    for cam in ["front", "back"] {
        match sample("beltcam_frames_published_total", Some(("camera", cam))) {
            Counter(n) => assert!(n > 0.0),
            other => panic!("published is not a counter: {other:?}"),
        }
    }
    assert!(
        matches!(sample("beltcam_camera_clients", Some(("camera", "back"))), Gauge(n) if n == 1.0)
    );
    assert!(matches!(
        sample("beltcam_sessions_rejected_total", Some(("reason", "rate"))),
        Counter(_)
    ));
    assert!(
        matches!(sample("beltcam_http_errors_total", Some(("code", "404"))), Counter(n) if n >= 1.0)
    );
    assert!(matches!(sample("beltcam_process_resident_memory_bytes", None), Gauge(n) if n > 1e6));
    assert!(matches!(sample("beltcam_process_open_fds", None), Gauge(n) if n > 3.0));
    match sample("beltcam_http_request_duration_seconds", None) {
        Histogram(buckets) => {
            assert!(buckets.len() >= 10);
            assert!(
                buckets.windows(2).all(|w| w[0].count <= w[1].count),
                "cumulative"
            );
            assert!(buckets.last().unwrap().count >= 1.0);
        }
        other => panic!("latency is not a histogram: {other:?}"),
    }
    for name in [
        "beltcam_frames_published_total",
        "beltcam_http_request_duration_seconds",
        "beltcam_uptime_seconds",
    ] {
        assert!(scrape.docs.contains_key(name), "HELP for {name}");
    }
    assert!(
        text.lines()
            .all(|l| l.starts_with('#') || l.starts_with("beltcam_")),
        "prefix"
    );
}

#[test]
fn events_report_sessions_stats_rooms_and_overflow() {
    let _g = heavy();
    let d = Daemon::start(&[
        "--source",
        "front=synthetic:160x120@30",
        "--source",
        "back=synthetic:160x120@30",
    ]);
    let mut all = Sse::open(d.port, "/events");
    let mut back_room = Sse::open(d.port, "/events?camera=back");
    let stats = all
        .find("stats", "\"fps\"", Duration::from_secs(4))
        .expect("stats event every second");
    assert!(stats.contains("\"clients\""));
    let mut v = Viewer::open(d.port, "/cam/front/stream");
    v.next_part().unwrap();
    all.find("session", "\"opened\"", Duration::from_secs(3))
        .expect("session opened");
    drop(v);
    let closed = all
        .find("session", "\"closed\"", Duration::from_secs(3))
        .expect("session closed");
    assert!(closed.contains("\"reason\""), "{closed}");
    // The back room hears about back, never about front.
    let mut w = Viewer::open(d.port, "/cam/back/stream");
    w.next_part().unwrap();
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut saw_back_session = false;
    while Instant::now() < deadline && !saw_back_session {
        let (e, data) = back_room.next().unwrap();
        assert!(
            !data.contains("\"front\""),
            "front event in the back room: {e} {data}"
        );
        saw_back_session = e == "session";
    }
    assert!(saw_back_session);
    assert_eq!(get(d.port, "/events?camera=side").unwrap().0, 404);

    // A subscriber that stops reading falls behind and is told how many events it lost.
    let slow = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    slow.set_recv_buffer_size(4096).unwrap();
    slow.connect(&d.addr().into()).unwrap();
    let mut slow: TcpStream = slow.into();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(wait_for(Duration::from_secs(3), || {
        get(d.port, "/metrics")
            .map(|(_, _, b)| String::from_utf8_lossy(&b).contains("beltcam_sessions_active 0"))
            .unwrap_or(false)
    }));
    for _round in 0..4 {
        // 100 sessions opened and closed: 200 events a round.
        let viewers: Vec<Viewer> = (0..100).map(|_| Viewer::open(d.port, "/stream")).collect();
        drop(viewers);
        assert!(wait_for(Duration::from_secs(5), || d.stats()["sessions"]
            ["active"]
            == 0));
    }
    let mut text = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !String::from_utf8_lossy(&text).contains("event: overflow") {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&text);
    let at = text
        .find("event: overflow\ndata: {\"lost\":")
        .expect("an overflow event");
    let lost: u64 = text[at + 30..].split('}').next().unwrap().parse().unwrap();
    assert!(lost > 0);
    // The fast subscriber was not slowed: it still gets stats events.
    all.find("stats", "\"fps\"", Duration::from_secs(4))
        .expect("fast subscriber still served");
}

#[test]
fn flood_from_one_address_does_not_starve_a_viewer_on_another() {
    if emulated_skip("flood_from_one_address_does_not_starve_a_viewer_on_another") {
        return;
    }
    let _g = heavy();
    let d = Daemon::start(&[
        "--source",
        "synthetic:320x240@30",
        "--connects-per-minute",
        "120",
        "--max-clients-per-ip",
        "8",
    ]);
    // The viewer connects from 127.0.0.2.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(&d.addr().into()).unwrap();
    let viewer_conn: TcpStream = sock.into();
    let flood_for = Duration::from_secs(5);
    let port = d.port;
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut limited, mut other) = (0u32, 0u32, 0u32);
                let end = Instant::now() + flood_for;
                let mut n = 0;
                while Instant::now() < end && n < 200_000 {
                    n += 1;
                    match raw(
                        port,
                        b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    ) {
                        Ok((200, _, _)) => ok += 1,
                        Ok((429, head, _)) => {
                            assert!(header(&head, "retry-after").is_some());
                            limited += 1
                        }
                        _ => other += 1,
                    }
                }
                (ok, limited, other)
            })
        })
        .collect();
    let mut v = Viewer::from_stream(viewer_conn, "/stream");
    let parts = v.read_for(flood_for - Duration::from_millis(500));
    let fps = (parts.len() - 1) as f64 / (flood_for - Duration::from_millis(500)).as_secs_f64();
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for f in flooders {
        let (a, b, c) = f.join().unwrap();
        ok += a;
        limited += b;
        other += c;
    }
    eprintln!("flood: {ok} served, {limited} refused with 429, {other} other; viewer {fps:.1} fps");
    assert!(
        ok <= 120,
        "the flooder got {ok} connections in a minute's window of 120"
    );
    assert!(limited > 100, "the flooder was limited ({limited} x 429)");
    assert!(
        fps >= 0.8 * 30.0,
        "viewer on 127.0.0.2 got {fps:.1} fps during the flood"
    );
    // 127.0.0.1 is over its rate now; ask from another address.
    let (code, _, body) = get_from("127.0.0.3", d.port, "/stats").unwrap();
    assert_eq!(code, 200);
    let s: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        s["guard"]["rejected_rate"].as_u64().unwrap() >= limited as u64,
        "{s}"
    );
}

#[test]
fn churn_of_20000_connections_leaks_no_fd_and_little_memory() {
    let _g = heavy();
    let d = Daemon::start(&["--source", "synthetic:160x120@60"]);
    let port = d.port;
    let churn = move |count: usize, threads: usize| {
        let per = count / threads;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..per {
                        match (t + i) % 5 {
                            0 => {
                                let mut v = Viewer::open(port, "/stream");
                                v.next_part().expect("a frame");
                            }
                            1 => assert_eq!(get(port, "/snapshot").unwrap().0, 200),
                            2 => assert_eq!(get(port, "/health").unwrap().0, 200),
                            3 => {
                                // Aborted mid-request.
                                let mut s = connect(port);
                                let _ = s.write_all(b"GET /stre");
                            }
                            _ => {
                                // Aborted mid-frame: the head and a little of the first part.
                                let mut s = connect(port);
                                s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
                                    .unwrap();
                                let mut b = [0u8; 600];
                                let _ = s.read_exact(&mut b);
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("churn thread");
        }
    };
    let settle = |d: &Daemon| {
        assert!(
            wait_for(Duration::from_secs(10), || {
                let s = d.stats();
                s["sessions"]["active"] == 0 && s["connections"]["pending"] == 1
            }),
            "sessions and pending connections drain: {}",
            d.stats()
        );
    };
    churn(4000, 8); // warm-up: allocator arenas and runtime internals reach their working size
    settle(&d);
    let (fds0, rss0) = (d.open_fds(), d.rss_bytes());
    let t = Instant::now();
    churn(20_000, 8);
    let took = t.elapsed();
    settle(&d);
    assert!(
        wait_for(Duration::from_secs(5), || d.open_fds() <= fds0),
        "fds {} > baseline {fds0}",
        d.open_fds()
    );
    let rss1 = d.rss_bytes();
    eprintln!(
        "churn: 20000 connections in {took:?}; fds {fds0} -> {}; RSS {} KiB -> {} KiB",
        d.open_fds(),
        rss0 / 1024,
        rss1 / 1024
    );
    assert!(
        rss1 < rss0 + 2 * 1024 * 1024,
        "RSS grew {} KiB",
        (rss1 - rss0) / 1024
    );
    assert!(d.stats()["connections"]["accepted"].as_u64().unwrap() >= 21_000);
}
