//! `/state` against the real binary, read the way a ustreamer client (kvmd, dashboards) reads it:
//! `d["ok"]`, then `d["result"]["source"]...` and `d["result"]["stream"]["clients_stat"]`. `/stats`
//! stays beltcam's own document; a `dir:` camera reports its JPEG files' real size in both.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn json(port: u16, path: &str) -> Value {
    let (code, head, body) = get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(code, 200, "GET {path}: {head}");
    assert!(
        header(&head, "content-type").is_some_and(|v| v.starts_with("application/json")),
        "{head}"
    );
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON: {e}"))
}

/// The fields a ustreamer reader takes, with ustreamer's types, checked for one camera.
fn check_shape(d: &Value) {
    assert_eq!(d["ok"], true, "{d}");
    let r = &d["result"];
    assert!(r["instance_id"].is_string(), "{d}");
    assert!(r["encoder"]["type"].is_string(), "{d}");
    assert!(r["encoder"]["quality"].is_u64(), "{d}");
    let src = &r["source"];
    assert!(src["resolution"]["width"].is_u64(), "{d}");
    assert!(src["resolution"]["height"].is_u64(), "{d}");
    assert!(src["online"].is_boolean(), "{d}");
    assert!(src["desired_fps"].is_u64(), "{d}");
    assert!(src["captured_fps"].is_u64(), "{d}");
    let st = &r["stream"];
    assert!(st["queued_fps"].is_u64(), "{d}");
    let stat = st["clients_stat"].as_object().expect("clients_stat object");
    assert_eq!(st["clients"].as_u64(), Some(stat.len() as u64), "{d}");
    for c in stat.values() {
        assert!(c["fps"].is_u64(), "{d}");
        for flag in [
            "extra_headers",
            "advance_headers",
            "dual_final_frames",
            "zero_data",
        ] {
            // beltcam does not implement these stream options: never claimed.
            assert_eq!(c[flag], false, "{flag}: {d}");
        }
        assert_eq!(c["key"], "0", "{d}");
    }
}

fn clients_stat(d: &Value) -> serde_json::Map<String, Value> {
    d["result"]["stream"]["clients_stat"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn state_is_ustreamers_shape_per_camera_with_live_clients() {
    let dir = temp_dir("two");
    for i in 0..3 {
        std::fs::write(dir.join(format!("f{i}.jpg")), pattern_jpeg(160, 120, i)).unwrap();
    }
    let belt = format!("belt=dir:{}@10", dir.display());
    let d = Daemon::start(&["--source", "front=synthetic:320x240@15", "--source", &belt]);

    // The first camera at ustreamer's URL and at its own.
    let s = json(d.port, "/state");
    check_shape(&s);
    let r = &s["result"];
    assert_eq!(r["instance_id"], "front");
    assert_eq!(r["source"]["resolution"]["width"], 320);
    assert_eq!(r["source"]["resolution"]["height"], 240);
    assert_eq!(r["source"]["online"], true);
    assert_eq!(r["source"]["desired_fps"], 15);
    assert_eq!(
        r["encoder"]["type"], "CPU",
        "beltcam encodes synthetic frames"
    );
    assert_eq!(r["encoder"]["quality"], 80, "the default quality");
    assert_eq!(r["stream"]["clients"], 0);
    let own = json(d.port, "/cam/front/state");
    check_shape(&own);
    assert_eq!(own["result"]["instance_id"], "front");

    // `/stats` is still beltcam's document, not ustreamer's.
    let stats = d.stats();
    assert!(
        stats.get("ok").is_none() && stats["cameras"].is_array(),
        "{stats}"
    );

    // One viewer: one entry in clients_stat, keyed by its session id, with its frame rate.
    let mut viewer = Viewer::open(d.port, "/stream");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = Value::Null;
    let mut seen = false;
    while Instant::now() < deadline {
        assert!(viewer.next_part().is_some(), "stream ended");
        last = json(d.port, "/state");
        let stat = clients_stat(&last);
        if stat.len() == 1 && stat.values().all(|c| c["fps"].as_u64().unwrap_or(0) >= 1) {
            seen = true;
            break;
        }
    }
    assert!(seen, "no live client with a frame rate within 10 s: {last}");
    check_shape(&last);
    assert_eq!(last["result"]["stream"]["clients"], 1);
    assert!(
        last["result"]["stream"]["queued_fps"].as_u64().unwrap() >= 1,
        "{last}"
    );
    let (code, _, body) = get(d.port, "/sessions").expect("/sessions");
    assert_eq!(code, 200, "loopback reads /sessions without a token");
    let sessions: Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<String> = sessions
        .as_array()
        .or_else(|| sessions["sessions"].as_array())
        .expect("session list")
        .iter()
        .map(|s| s["id"].to_string())
        .collect();
    let key = clients_stat(&last).keys().next().cloned().unwrap();
    assert!(
        ids.contains(&key),
        "clients_stat key {key} not in /sessions {ids:?}"
    );

    // The other camera: its own figures, none of the first camera's viewers.
    let b = json(d.port, "/cam/belt/state");
    check_shape(&b);
    assert_eq!(b["result"]["instance_id"], "belt");
    assert_eq!(b["result"]["encoder"]["type"], "HW", "files go out as read");
    assert_eq!(b["result"]["encoder"]["quality"], 0);
    assert_eq!(b["result"]["source"]["desired_fps"], 10);
    assert!(clients_stat(&b).is_empty(), "{b}");

    // The viewer leaves: its entry goes.
    drop(viewer);
    assert!(
        wait_for(Duration::from_secs(10), || clients_stat(&json(
            d.port, "/state"
        ))
        .is_empty()),
        "clients_stat kept a closed viewer: {}",
        json(d.port, "/state")
    );

    let (code, _, _) = get(d.port, "/cam/nope/state").unwrap();
    assert_eq!(code, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dir_camera_reports_its_jpegs_size() {
    let dir = temp_dir("size");
    for i in 0..2 {
        std::fs::write(dir.join(format!("f{i}.jpg")), pattern_jpeg(160, 120, i)).unwrap();
    }
    let spec = format!("belt=dir:{}@20", dir.display());
    let d = Daemon::start(&["--source", &spec]);
    // The size is learnt from the first frame read, so poll for it.
    let sized = wait_for(Duration::from_secs(10), || {
        let cam = &d.stats()["cameras"][0];
        cam["width"] == 160 && cam["height"] == 120
    });
    assert!(sized, "/stats: {}: {}", d.stats(), d.log_text());
    let s = json(d.port, "/state");
    check_shape(&s);
    assert_eq!(s["result"]["source"]["resolution"]["width"], 160, "{s}");
    assert_eq!(s["result"]["source"]["resolution"]["height"], 120, "{s}");
    assert_eq!(s["result"]["source"]["online"], true, "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}
