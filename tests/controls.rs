//! `/cam/NAME/controls` against the real binary, without a camera: the answers that do not need a
//! device (a camera that is not V4L2, a V4L2 camera whose device is missing, bad values, bodies,
//! methods). Real controls are tested in the VM against vivid (`vm_controls.rs`).

mod common;

use common::{raw, Daemon};

fn put(port: u16, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (code, _, body) = raw(port, req.as_bytes()).expect("PUT");
    (code, String::from_utf8_lossy(&body).into_owned())
}

fn get(port: u16, path: &str) -> (u16, String, String) {
    let (code, head, body) = common::get(port, path).expect("GET");
    (code, head, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn controls_without_a_device() {
    let d = Daemon::start_degraded(&[
        "--source",
        "synth=synthetic:160x120@5",
        "--source",
        "gone=v4l2:/dev/beltcam-test-no-such-video",
    ]);
    let port = d.port;

    // A camera that is not V4L2: 404 that says so, for the list and for a set.
    let (code, _, body) = get(port, "/cam/synth/controls");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no V4L2 controls"), "{body}");
    let (code, body) = put(port, "/cam/synth/controls/brightness?value=1", "");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no V4L2 controls"), "{body}");

    // A V4L2 camera whose device is not there: 503 naming the device.
    let (code, _, body) = get(port, "/cam/gone/controls");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("/dev/beltcam-test-no-such-video"), "{body}");
    // Admin on loopback with no token configured: allowed, and the device is still missing.
    let (code, body) = put(port, "/cam/gone/controls/brightness?value=1", "");
    assert_eq!(code, 503, "{body}");
    let (code, body) = put(port, "/cam/gone/controls/brightness", "{\"value\": 7}");
    assert_eq!(code, 503, "a JSON body is a value: {body}");

    // Values and bodies are checked before the device is touched.
    for bad in ["", "abc", "{\"v\": 1}", "1.5"] {
        let (code, body) = put(port, "/cam/gone/controls/brightness", bad);
        assert_eq!(code, 400, "{bad:?}: {body}");
        assert!(body.contains("?value=N"), "{body}");
    }
    let (code, body) = put(port, "/cam/gone/controls/brightness?value=x", "");
    assert_eq!(code, 400, "{body}");
    let (code, body) = put(port, "/cam/gone/controls/brightness", &"1".repeat(65));
    assert_eq!(code, 413, "{body}");

    // Routes and methods.
    let (code, head, _) = get(port, "/cam/gone/controls/brightness");
    assert_eq!(code, 405);
    assert!(head.contains("Allow: PUT"), "{head}");
    let (code, body) = put(port, "/cam/gone/controls", "1");
    assert_eq!(code, 405, "{body}");
    let (code, body) = put(port, "/cam/nope/controls/brightness?value=1", "");
    assert_eq!(code, 404, "{body}");

    // Still serving, and the sets the device could not take are counted, in /stats and /metrics
    // alike (a malformed request is not: it never reached the device). Only v4l2 cameras have them.
    let stats = d.stats();
    let gone = &stats["cameras"][1]["controls"];
    assert_eq!(
        gone["set_failed"], 2,
        "the two PUTs that reached the device: {stats}"
    );
    assert_eq!(gone["set"], 0, "{stats}");
    assert!(stats["cameras"][0].get("controls").is_none(), "{stats}");
    let (code, _, m) = get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(
        m.lines()
            .any(|l| l == "beltcam_control_set_errors_total{camera=\"gone\"} 2"),
        "{m}"
    );
    assert!(m
        .lines()
        .any(|l| l == "beltcam_control_sets_total{camera=\"gone\"} 0"));
    assert!(!m.contains("beltcam_control_sets_total{camera=\"synth\"}"));
}

#[test]
fn controls_table_is_refused_on_a_camera_that_is_not_v4l2() {
    let dir = std::env::temp_dir().join(format!("beltcam-controls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "[[camera]]\nname = \"a\"\nsource = \"synthetic\"\n[camera.controls]\nbrightness = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beltcam"))
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("camera[0].controls"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
