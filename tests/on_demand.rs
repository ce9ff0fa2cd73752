//! Capture on demand (`idle_stop_s`, issue 13 part 2) against the real binary: a camera nothing
//! wants stops capturing and says `idle` (healthy); the next stream or snapshot starts it and gets a
//! real frame within 500 ms; concurrent arrivals start one capture; a relay's upstream connection
//! closes while idle; a recording camera never idles; the watchdog's heartbeat keeps beating.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{decode, get, wait_for, Daemon, Viewer};

fn config(test: &str, cams: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("beltcam-ondemand-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("beltcam.toml");
    std::fs::write(&p, cams).unwrap();
    p
}

fn cam(d: &Daemon) -> serde_json::Value {
    d.stats()["cameras"][0].clone()
}

fn state(d: &Daemon) -> String {
    cam(d)["state"].as_str().unwrap_or_default().to_owned()
}

const ONE: &str =
    "[[camera]]\nname = \"belt\"\nsource = \"synthetic:320x240@15\"\nidle_stop_s = 1\n";

#[test]
fn an_idle_camera_stops_and_the_next_viewer_starts_it_within_500_ms() {
    let cfg = config("viewer", ONE);
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    assert!(
        wait_for(Duration::from_secs(5), || state(&d) == "idle"),
        "{}",
        cam(&d)
    );
    // Idle means stopped: nothing is published, and it is healthy.
    let published = cam(&d)["frames"]["published"].as_u64();
    let idle_since = Instant::now();
    let mut polls = 0;
    // ... for longer than the wedge threshold (5 s): the heartbeat does not depend on capture.
    while idle_since.elapsed() < Duration::from_secs(6) && polls < 100 {
        let (code, _, body) = get(d.port, "/health").unwrap();
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        polls += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        cam(&d)["frames"]["published"].as_u64(),
        published,
        "frames while idle"
    );
    assert_eq!(cam(&d)["frames"]["fps"], 0.0);
    let (_, _, m) = get(d.port, "/metrics").unwrap();
    assert!(String::from_utf8_lossy(&m).contains("beltcam_camera_idle{camera=\"belt\"} 1"));

    // Pool sequence numbers count every published frame, placeholders included: the newest
    // before the wake is stale.
    let frames = &cam(&d)["frames"];
    let stale = frames["published"].as_u64().unwrap() + frames["placeholders"].as_u64().unwrap();
    let t0 = Instant::now();
    let mut v = Viewer::open(d.port, "/stream");
    let first = v.next_part().expect("a frame");
    let waited = t0.elapsed();
    assert!(
        first.seq > stale,
        "the first frame after the wake is #{}, captured before the camera went idle (#{stale})",
        first.seq
    );
    assert_eq!(
        decode(&first.jpeg),
        (320, 240),
        "a real frame, not the placeholder"
    );
    assert!(
        waited < Duration::from_millis(500),
        "first frame after {waited:?}"
    );
    // It keeps capturing while the viewer stays, past idle_stop_s.
    let parts = v.read_for(Duration::from_secs(2));
    assert!(parts.len() >= 20, "{} frames in 2 s", parts.len());
    assert_eq!(state(&d), "online");
    drop(v);
    assert!(
        wait_for(Duration::from_secs(5), || state(&d) == "idle"),
        "{}",
        cam(&d)
    );
    eprintln!("on demand: first frame {waited:?} after an idle camera's viewer connected");
}

#[test]
fn a_snapshot_of_an_idle_camera_is_fresh() {
    let cfg = config("snapshot", ONE);
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    assert!(wait_for(Duration::from_secs(5), || state(&d) == "idle"));
    // Until the last frame from before the idle is too old to serve (snapshot_timeout, 2 s).
    assert!(wait_for(Duration::from_secs(5), || cam(&d)
        ["last_frame_age_s"]
        .as_f64()
        .is_some_and(|a| a > 2.2)));
    let before = cam(&d)["frames"]["published"].as_u64().unwrap();
    let t0 = Instant::now();
    let (code, head, jpeg) = get(d.port, "/snapshot").unwrap();
    let waited = t0.elapsed();
    assert_eq!(code, 200, "{head}");
    assert_eq!(decode(&jpeg), (320, 240));
    assert!(
        waited < Duration::from_millis(500),
        "snapshot after {waited:?}"
    );
    // A frame captured for it, not the last one from before the idle.
    let frame: u64 = common::header(&head, "x-frame")
        .and_then(|v| v.parse().ok())
        .expect("X-Frame");
    assert!(frame > before, "frame {frame}, {before} published before");
    assert!(wait_for(Duration::from_secs(5), || state(&d) == "idle"));
    eprintln!("on demand: snapshot of an idle camera in {waited:?}");
}

#[test]
fn concurrent_arrivals_start_one_capture_and_all_get_frames() {
    let cfg = config("concurrent", ONE);
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let captures = |d: &Daemon| {
        std::fs::read_dir(format!("/proc/{}/task", d.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim() == "capture-belt")
            .count()
    };
    for round in 0..3 {
        assert!(
            wait_for(Duration::from_secs(5), || state(&d) == "idle"),
            "round {round}"
        );
        let port = d.port;
        let streams: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut v = Viewer::open(port, "/stream");
                    let p = v.next_part().expect("a frame");
                    let more = v.read_for(Duration::from_millis(500)).len();
                    (decode(&p.jpeg), more)
                })
            })
            .collect();
        let snaps: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || get(port, "/snapshot").map(|r| (r.0, decode(&r.2))))
            })
            .collect();
        for s in streams {
            let (size, more) = s.join().unwrap();
            assert_eq!(size, (320, 240), "round {round}");
            assert!(more >= 4, "round {round}: {more} frames in 0.5 s");
        }
        for s in snaps {
            assert_eq!(
                s.join().unwrap().unwrap(),
                (200, (320, 240)),
                "round {round}"
            );
        }
        assert_eq!(captures(&d), 1, "one capture thread");
    }
    let log = d.log_text();
    assert!(log.matches("camera idle").count() >= 3, "{log}");
}

#[test]
fn an_idle_relay_closes_its_upstream_connection() {
    let up = Daemon::start(&["--source", "synthetic:320x240@15"]);
    let cfg = config(
        "relay",
        &format!(
            "[[camera]]\nname = \"belt\"\nsource = \"http://127.0.0.1:{}/stream\"\nidle_stop_s = 1\n",
            up.port
        ),
    );
    let relay = Daemon::start_degraded(&["--config", cfg.to_str().unwrap()]);
    let upstream_sessions = |up: &Daemon| up.stats()["sessions"]["active"].as_u64();
    assert!(
        wait_for(Duration::from_secs(8), || state(&relay) == "idle"),
        "{}",
        cam(&relay)
    );
    assert!(wait_for(Duration::from_secs(3), || upstream_sessions(&up) == Some(0)));
    let t0 = Instant::now();
    let mut v = Viewer::open(relay.port, "/stream");
    let p = v.next_part().expect("a frame");
    let waited = t0.elapsed();
    assert_eq!(decode(&p.jpeg), (320, 240));
    assert!(
        waited < Duration::from_millis(500),
        "first relayed frame after {waited:?}"
    );
    assert_eq!(upstream_sessions(&up), Some(1));
    drop(v);
    assert!(wait_for(Duration::from_secs(5), || upstream_sessions(&up) == Some(0)));
    eprintln!("on demand: relay's first frame {waited:?} after waking");
}

#[test]
fn a_recording_camera_never_idles() {
    let dir = std::env::temp_dir().join(format!("beltcam-ondemand-rec-{}", std::process::id()));
    let cfg = config(
        "record",
        &format!(
            "{ONE}[camera.record]\nfps = 2\ndir = \"{}\"\n",
            dir.display()
        ),
    );
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        assert_eq!(state(&d), "online");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
