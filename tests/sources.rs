//! Cameras and configuration against the real binary: the folder camera (passthrough, broken files
//! skipped with one warning, offline placeholder) and start-up errors that name the bad key.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn copy_fixture(name: &str, to: &Path) {
    std::fs::copy(data_dir().join(name), to.join(name)).unwrap();
}

#[test]
fn dir_camera_passes_files_through_and_skips_broken_ones() {
    let _g = heavy();
    let dir = temp_dir("dir");
    let files: Vec<Vec<u8>> = (1..=3).map(|n| pattern_jpeg(320, 240, n)).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("frame{i}.jpg")), f).unwrap();
    }
    copy_fixture("good.jpg", &dir);
    copy_fixture("broken.jpg", &dir);
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let spec = format!("belt=dir:{}@30", dir.display());
    let d = Daemon::start(&["--source", &spec]);
    let mut v = Viewer::open(d.port, "/cam/belt/stream");
    let parts = v.read_for(Duration::from_millis(1500));
    assert!(parts.len() >= 10, "{} parts", parts.len());
    let good = std::fs::read(data_dir().join("good.jpg")).unwrap();
    let mut seen = [false; 4];
    for p in &parts {
        let i = files
            .iter()
            .chain(std::iter::once(&good))
            .position(|f| *f == p.jpeg)
            .expect("every part is byte-for-byte one of the valid files");
        seen[i] = true;
    }
    assert_eq!(seen, [true; 4], "all valid files are looped over");
    let s = d.stats();
    assert_eq!(s["cameras"][0]["frames"]["invalid"], 1, "{s}");
    assert_eq!(s["cameras"][0]["passthrough"], true);
    let log = d.log_text();
    assert_eq!(
        log.matches("broken.jpg").count(),
        1,
        "one warning naming the file: {log}"
    );
    assert_eq!(get(d.port, "/health").unwrap().0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dir_of_only_broken_files_is_degraded_with_placeholder() {
    let dir = temp_dir("broken");
    copy_fixture("broken.jpg", &dir);
    let spec = format!("dir:{}@10", dir.display());
    let d = Daemon::start_degraded(&["--source", &spec]);
    let (code, _, body) = get(d.port, "/health").unwrap();
    assert_eq!(code, 503);
    let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(h["status"], "degraded");
    assert!(
        h["cameras"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("valid JPEG"),
        "{h}"
    );
    // Viewers get the "NO SIGNAL" frame, about once a second.
    let mut v = Viewer::open(d.port, "/stream");
    let p = v.next_part().expect("placeholder part");
    assert_eq!(decode(&p.jpeg), (640, 480));
    // Snapshots say there is no picture instead of returning the placeholder.
    let (code, head, body) = get(d.port, "/snapshot").unwrap();
    assert_eq!(code, 503, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("no frame newer than"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn start_error(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_beltcam"))
        .args(args)
        .output()
        .expect("run beltcam");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn config_errors_name_the_key_in_one_line() {
    let (code, err) = start_error(&["--listen", "127.0.0.1:0", "--source", "webcam"]);
    assert_eq!(code, 2);
    assert!(err.contains("camera[0].source"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let dir = temp_dir("cfg");
    let cfg = dir.join("beltcam.toml");
    std::fs::write(&cfg, "[server]\nlisten = [\"127.0.0.1:0\"]\nthreds = 2\n").unwrap();
    let (code, err) = start_error(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("threds") && err.contains("line 3"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let (code, err) = start_error(&["--listen", "localhost", "--source", "synthetic"]);
    assert_eq!(code, 2);
    assert!(err.contains("server.listen[0]"), "{err}");

    let (code, err) = start_error(&["--config", "/nonexistent/beltcam.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/beltcam.toml"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_file_cameras_are_served() {
    let dir = temp_dir("cfg2");
    let cfg = dir.join("beltcam.toml");
    std::fs::write(
        &cfg,
        "[[camera]]\nname = \"left\"\nsource = \"synthetic:160x120@10\"\nquality = 50\n\
         [[camera]]\nname = \"right\"\nsource = \"synthetic:176x144@10\"\n",
    )
    .unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let (code, _, body) = get(d.port, "/cam/right/snapshot").unwrap();
    assert_eq!(code, 200);
    assert_eq!(decode(&body), (176, 144));
    let (code, _, body) = get(d.port, "/snapshot").unwrap();
    assert_eq!(code, 200);
    assert_eq!(decode(&body), (160, 120));
    let _ = std::fs::remove_dir_all(&dir);
}
