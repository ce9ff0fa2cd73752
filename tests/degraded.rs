//! States that must not lie, against the real binary: a camera whose frames are larger than a
//! pool slot is degraded (named, counted, logged a bounded number of times) while the daemon serves
//! the others, and a slow camera's snapshot is judged fresh against its own frame interval.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A valid JPEG larger than a pool slot (2 MiB): noise at quality 100 without chroma subsampling.
fn big_jpeg() -> Vec<u8> {
    let (w, h) = (1600usize, 1200usize);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let pixels: Vec<u8> = (0..w * h * 3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut c = turbojpeg::Compressor::new().unwrap();
    c.set_quality(100).unwrap();
    c.set_subsamp(turbojpeg::Subsamp::None).unwrap();
    let img = turbojpeg::Image {
        pixels: &pixels[..],
        width: w,
        pitch: w * 3,
        height: h,
        format: turbojpeg::PixelFormat::RGB,
    };
    let jpeg = c.compress_to_vec(img).unwrap();
    assert!(jpeg.len() > 2 << 20, "fixture is {} bytes", jpeg.len());
    assert_eq!(decode(&jpeg), (w, h), "fixture is a valid JPEG");
    jpeg
}

fn health(port: u16) -> (u16, serde_json::Value) {
    let (code, _, body) = get(port, "/health").expect("/health answers");
    (
        code,
        serde_json::from_slice(&body).expect("/health is JSON"),
    )
}

fn camera<'a>(health: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    health["cameras"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no camera {name} in {health}"))
}

fn metric(port: u16, line_prefix: &str) -> Option<f64> {
    let (_, _, body) = get(port, "/metrics").ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
}

#[test]
fn frames_larger_than_a_slot_make_a_named_degraded_camera_and_recover() {
    let dir = TempDir::new("oversize");
    std::fs::write(dir.0.join("big.jpg"), big_jpeg()).unwrap();
    let big = format!("big=dir:{}@5", dir.0.display());
    let d = Daemon::start_degraded(&["--source", &big, "--source", "ok=synthetic:160x120@10"]);

    // /health: degraded, naming the camera and the reason.
    let mut last = serde_json::Value::Null;
    let named = wait_for(Duration::from_secs(10), || {
        let (code, h) = health(d.port);
        let ok = code == 503
            && h["status"] == "degraded"
            && camera(&h, "big")["status"] == "degraded"
            && camera(&h, "big")["reason"]
                .as_str()
                .is_some_and(|r| r.contains("larger than a pool slot"));
        last = h;
        ok
    });
    assert!(named, "/health does not name the oversize camera: {last}");
    assert_eq!(camera(&last, "ok")["status"], "ok", "{last}");
    let stats = d.stats();
    let big_stats = camera(&stats, "big");
    assert!(
        big_stats["reason"]
            .as_str()
            .is_some_and(|r| r.contains("larger than a pool slot")),
        "/stats: {big_stats}"
    );
    assert!(
        big_stats["frames"]["oversize"].as_u64() >= Some(1),
        "{big_stats}"
    );
    let oversize = metric(d.port, r#"beltcam_frames_oversize_total{camera="big"}"#);
    assert!(oversize.is_some_and(|n| n >= 1.0), "metric: {oversize:?}");

    // The log over a few seconds of it: a bounded number of lines about the camera.
    let t0 = Instant::now();
    let window = Duration::from_secs(4);
    // A measurement window, not a synchronisation: the count over it is the figure.
    std::thread::sleep(window);
    let log = d.log_text();
    let about_big: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("big") && (l.contains("WARN") || l.contains("ERROR")))
        .collect();
    eprintln!(
        "oversize camera: {} warning lines after {:.1} s: {about_big:#?}",
        about_big.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        about_big.len() <= 4,
        "{} warnings about the oversize camera:\n{log}",
        about_big.len()
    );
    // The daemon keeps serving the other camera.
    let (code, _, jpeg) = get(d.port, "/cam/ok/snapshot").unwrap();
    assert_eq!(code, 200);
    assert_eq!(decode(&jpeg), (160, 120));

    // A file that fits again: the camera recovers.
    let good = std::fs::read(data_dir().join("good.jpg")).unwrap();
    let tmp = dir.0.join("big.jpg.tmp");
    std::fs::write(&tmp, good).unwrap();
    std::fs::rename(&tmp, dir.0.join("big.jpg")).unwrap();
    let recovered = wait_for(Duration::from_secs(15), || {
        let (code, h) = health(d.port);
        last = h;
        code == 200
    });
    assert!(recovered, "did not recover once the file fits: {last}");
}

#[test]
fn a_slow_camera_serves_snapshots_while_health_says_ok() {
    // 0.2 fps: a frame every 5 s, so the newest is up to 5 s old, past the 2 s snapshot timeout.
    let d = Daemon::start(&["--source", "slow=synthetic:160x120@0.2"]);
    let t0 = Instant::now();
    let (mut ok, mut refused) = (0, Vec::new());
    // Longer than one frame period, so every age of the newest frame (0..5 s) is asked at.
    while t0.elapsed() < Duration::from_secs(7) {
        let (hcode, _) = health(d.port);
        let (code, head, _) = get(d.port, "/snapshot").expect("/snapshot answers");
        if code == 200 {
            ok += 1;
        } else {
            refused.push((code, hcode, header(&head, "X-Timestamp").map(str::to_owned)));
        }
        assert_eq!(hcode, 200, "/health is not ok for a 0.2 fps camera");
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("slow camera: {ok} snapshots answered, refused: {refused:?}");
    assert!(
        refused.is_empty(),
        "snapshots refused while /health said ok: {refused:?}"
    );
    assert!(ok >= 5);
}
