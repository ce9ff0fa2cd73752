//! Real-device test: beltcam from this tree inside a small qemu VM, against the kernel's own V4L2
//! drivers — `vivid` (raw YUYV webcam, unplugged for real by unbinding its platform device) and an
//! MJPEG-only camera made with v4l2loopback. Driven from the host over forwarded ports.
//!
//! Skips, with the reason printed, where qemu or the VM image cannot be had (no qemu, no Debian
//! package access). The image and its downloads are cached in `target/vmh`; see `tests/vm/`.
//!
//! `BELTCAM_VM_ARCH=arm64 BELTCAM_VM_BIN=target/aarch64-unknown-linux-gnu/release/beltcam` runs the
//! vivid run in the arm64 VM (qemu-system-aarch64, TCG) with the aarch64 build instead
//! (`BELTCAM_VM_ARM64=1 scripts/cross-aarch64.sh` does that); the MJPEG camera is amd64-only.

mod common;
mod vm;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{decode, record, Viewer};
use vm::{get_json, health_status, Vm};

const FPS: f64 = 25.0;

#[test]
fn real_cameras_in_a_vm() {
    let img = match vm::prepare() {
        Ok(img) => img,
        Err(why) => {
            common::skip("real_cameras_in_a_vm", &why, &vm_skips_allowed_in_ci());
            return;
        }
    };
    let t0 = Instant::now();
    eprintln!("vm: {} guest, beltcam {}", img.arch, img.bin.display());
    vivid_run(&img);
    if img.loopback {
        mjpeg_run(&img);
    } else if img.arch != "amd64" {
        let why = "the MJPEG run: v4l2loopback is built for amd64 guests only";
        common::skip("real_cameras_in_a_vm", why, &[why]);
    } else {
        // On amd64 the MJPEG camera is part of what CI runs: a missing module is a failure there.
        let why = "the MJPEG run: the image has no v4l2loopback (gcc-12/make missing?)";
        common::skip("real_cameras_in_a_vm", why, &[]);
    }
    eprintln!("vm: both runs took {:.1} s", t0.elapsed().as_secs_f64());
}

/// The reasons `vm::prepare` may give that are fine under `CI=true`: an explicit opt-out and a
/// host that is not x86_64. Anything else on an amd64 host (missing qemu, an image that cannot be
/// built) fails under CI, as does every reason when the arm64 run was asked for
/// (scripts/cross-aarch64.sh).
fn vm_skips_allowed_in_ci() -> Vec<&'static str> {
    if std::env::var("BELTCAM_VM_ARCH").is_ok_and(|a| a == "arm64") {
        return Vec::new();
    }
    vec![
        "BELTCAM_SKIP_VM is set",
        "the VM test runs on x86_64 Linux hosts",
    ]
}

fn fps_of(parts: &[common::Part]) -> f64 {
    let span = parts[parts.len() - 1].received - parts[0].received;
    (parts.len() - 1) as f64 / span.as_secs_f64()
}

fn encode_ms(vm: &Vm, log: &str) -> String {
    let (_, out) = vm.ctl(&format!("grep 'encode time' /tmp/{log}.log | tail -n 3"));
    out.lines()
        .filter_map(|l| l.split("encode_ms=").nth(1)?.split_whitespace().next())
        .map(|v| {
            v.parse::<f64>()
                .map_or(v.to_string(), |f| format!("{f:.1}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn vivid_run(img: &vm::Image) {
    let vm = Vm::boot(img, "vivid.sh", &[8080, 8081], &[]);
    let port = vm.ports[0];
    let booted = Instant::now();
    assert!(
        vm.wait_http(0, "/health", 200, Duration::from_secs(60)),
        "beltcam in the VM never became healthy:\n{}\n{}",
        vm.ctl("cat /tmp/vivid.log").1,
        vm.console_text()
    );
    eprintln!(
        "vm: healthy {:.1} s after boot started",
        booted.elapsed().as_secs_f64()
    );

    // `beltcam devices` lists vivid's formats, sizes and rates.
    let (_, text) = vm.ctl("cat /tmp/devices.txt");
    for want in [
        "'YUYV'",
        "'UYVY'",
        "'NV12'",
        "'GREY'",
        "640x480 @ 25",
        "1280x720 @ 12.5",
    ] {
        assert!(text.contains(want), "devices lacks {want}:\n{text}");
    }
    let (_, json) = vm.ctl("cat /tmp/devices.json");
    let devs: serde_json::Value = serde_json::from_str(&json).expect("devices --json is JSON");
    assert_eq!(devs[0]["driver"], "vivid", "{json}");

    // 640x480 YUYV at 25 fps: rate and every frame decodes.
    let stats = get_json(port, "/stats").expect("/stats");
    let cam = &stats["cameras"][0];
    assert_eq!(cam["format"], "YUYV", "{cam}");
    assert_eq!(
        (cam["width"].as_u64(), cam["height"].as_u64()),
        (Some(640), Some(480))
    );
    assert_eq!(cam["negotiated_fps"].as_f64(), Some(FPS));
    assert_eq!(cam["passthrough"], false);
    let mut viewer = Viewer::open(port, "/stream");
    let parts = viewer.read_for(Duration::from_secs(8));
    for p in &parts {
        assert_eq!(decode(&p.jpeg), (640, 480));
    }
    let fps = fps_of(&parts);
    let enc = encode_ms(&vm, "vivid");
    eprintln!(
        "vm: {}: 640x480 YUYV: {fps:.1} fps delivered ({} frames), encode ms per frame: {enc}",
        img.arch,
        parts.len()
    );
    // The bar is the 90 % of the camera's rate, where the VM can encode that fast. Under
    // TCG the guest runs at whatever speed the host has to spare: the same amd64 guest encodes a
    // frame in 25-35 ms on a quiet host and took 83 ms on a busy CI host, where its 2 vCPUs can
    // encode only ~24 fps in all. So the bar is 90 % of what the guest can encode (frames per
    // second its CPUs can turn out at the logged encode time, the camera's rate at most), and 80 %
    // when the encoder is the limit (the capture thread and the server share those CPUs). An arm64
    // guest on an x86_64 host is emulated instruction by instruction (70-120 ms a frame): there
    // the rate measures qemu, and the bar (20 % of the camera's rate) only catches a stalled
    // pipeline. BELTCAM_VM_FPS_RATIO overrides the ratio.
    let cpus: f64 = vm.ctl("nproc").1.trim().parse().unwrap_or(1.0);
    let enc_mean = {
        let v: Vec<f64> = enc.split(", ").filter_map(|v| v.parse().ok()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let can_encode = enc_mean.map_or(FPS, |ms| cpus * 1000.0 / ms);
    let (ratio, of) = match std::env::var("BELTCAM_VM_FPS_RATIO")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
    {
        Some(r) => (r, FPS),
        None if img.arch != "amd64" => (0.2, FPS),
        None if can_encode < FPS => {
            eprintln!(
                "vm: the guest encodes at most {can_encode:.1} fps here ({cpus} CPUs, {enc} ms a \
                 frame): the bar follows it"
            );
            (0.8, can_encode)
        }
        None => (0.9, FPS),
    };
    assert!(
        fps >= ratio * of,
        "{fps:.1} fps delivered, want >= {:.1} (encode ms per frame: {enc})",
        ratio * of
    );

    // Unplug while the viewer stays connected.
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, reader) = record(viewer, Arc::clone(&stop));
    let unplug = Instant::now();
    let (rc, out) = vm.ctl("echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind");
    assert_eq!(rc, 0, "unbind: {out}");
    let degraded = common::wait_for(Duration::from_secs(2), || health_status(port) == "degraded");
    let to_degraded = unplug.elapsed();
    assert!(degraded, "/health not degraded 2 s after unplug");
    let health = get_json(port, "/health").unwrap_or_default();
    assert_eq!(health["cameras"][0]["state"], "offline", "{health}");
    // Placeholder frames (all the same bytes) keep coming, about one a second.
    let placeholders = |since: Instant| -> usize {
        let s = seen.lock().unwrap();
        let after: Vec<&Vec<u8>> = s
            .iter()
            .filter(|(t, _)| *t > since)
            .map(|(_, j)| j)
            .collect();
        after
            .last()
            .map_or(0, |last| after.iter().filter(|j| *j == last).count())
    };
    let marker = Instant::now();
    assert!(
        common::wait_for(Duration::from_secs(4), || placeholders(marker) >= 2),
        "no placeholder frames while unplugged"
    );
    let placeholder = seen.lock().unwrap().last().map(|(_, j)| j.clone()).unwrap();
    assert_eq!(decode(&placeholder), (640, 480));

    // Plug back in: real frames on the same connection within 2 s.
    let replug = Instant::now();
    let (rc, out) = vm.ctl("echo vivid.0 > /sys/bus/platform/drivers/vivid/bind");
    assert_eq!(rc, 0, "bind: {out}");
    let real_again = || {
        let s = seen.lock().unwrap();
        s.iter().any(|(t, j)| *t > replug && *j != placeholder)
    };
    let resumed = common::wait_for(Duration::from_secs(2), real_again);
    let to_frames = replug.elapsed();
    assert!(resumed, "no real frames 2 s after re-plug");
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap(), "the viewer's connection ended");
    assert!(common::wait_for(Duration::from_secs(2), || health_status(
        port
    ) == "ok"));
    eprintln!(
        "vm: {}: unplug -> degraded {:.2} s, re-plug -> frames {:.2} s",
        img.arch,
        to_degraded.as_secs_f64(),
        to_frames.as_secs_f64()
    );

    // 1280x720 (vivid's webcam tops out at 12.5 fps there): rate and encode time, for the report.
    vm.ctl("kill $(cat /tmp/vivid.pid); beltcam-start hd 8081 v4l2:/dev/video0:1280x720@12.5:YUYV");
    assert!(
        vm.wait_http(1, "/health", 200, Duration::from_secs(20)),
        "720p run not healthy"
    );
    let parts = Viewer::open(vm.ports[1], "/stream").read_for(Duration::from_secs(8));
    for p in &parts {
        assert_eq!(decode(&p.jpeg), (1280, 720));
    }
    eprintln!(
        "vm: {}: 1280x720 YUYV: {:.1} fps delivered of 12.5, encode ms per frame: {}",
        img.arch,
        fps_of(&parts),
        encode_ms(&vm, "hd")
    );
}

/// Frames for the MJPEG camera: even ones as encoded (with tables), odd ones stripped of their
/// DHT the way many UVC cameras send them.
fn mjpeg_frames(dir: &std::path::Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    use beltcam::capture::dht;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let (mut sent, mut served) = (Vec::new(), Vec::new());
    for n in 0..16 {
        let full = common::pattern_jpeg_labeled(640, 480, n, "mjpeg");
        let frame = if n % 2 == 1 {
            dht::strip_dht(&full).unwrap()
        } else {
            full
        };
        let mut fixed = vec![0u8; frame.len() + dht::DHT_SEGMENT_LEN];
        let (k, _) = dht::copy_frame(&frame, &mut fixed).unwrap();
        fixed.truncate(k);
        std::fs::write(dir.join(format!("f{n:02}.jpg")), &frame).unwrap();
        sent.push(frame);
        served.push(fixed);
    }
    (sent, served)
}

fn mjpeg_run(img: &vm::Image) {
    let frames_dir = img.dir.join(format!("frames-{}", std::process::id()));
    let (sent, expected) = mjpeg_frames(&frames_dir);
    let vm = Vm::boot(
        img,
        "mjpeg.sh",
        &[8080],
        &[(frames_dir.clone(), "/vmh/frames")],
    );
    let port = vm.ports[0];
    assert!(
        vm.wait_http(0, "/health", 200, Duration::from_secs(60)),
        "MJPEG camera run never healthy:\n{}\n{}",
        vm.ctl("cat /tmp/cam.log /tmp/mjpeg.log").1,
        vm.console_text()
    );
    let stats = get_json(port, "/stats").expect("/stats");
    let cam = &stats["cameras"][0];
    assert_eq!(cam["format"], "MJPG", "{cam}");
    assert_eq!(cam["passthrough"], true, "{cam}");
    let parts = Viewer::open(port, "/stream").read_for(Duration::from_secs(5));
    assert!(
        parts.len() >= 10,
        "only {} frames from the MJPEG camera",
        parts.len()
    );
    let (mut verbatim, mut tables_added) = (0, 0);
    for p in &parts {
        let i = expected
            .iter()
            .position(|e| *e == p.jpeg)
            .unwrap_or_else(|| {
                panic!(
                    "a served frame ({} bytes) is not one the camera sent",
                    p.jpeg.len()
                )
            });
        assert_eq!(decode(&p.jpeg), (640, 480));
        if expected[i] == sent[i] {
            verbatim += 1;
        } else {
            tables_added += 1;
        }
    }
    assert!(
        verbatim > 0 && tables_added > 0,
        "{verbatim} verbatim, {tables_added} with tables added"
    );
    let invalid = get_json(port, "/stats").map(|s| s["cameras"][0]["frames"]["invalid"].clone());
    eprintln!(
        "vm: MJPEG passthrough: {} frames ({:.1} fps), {verbatim} byte-identical to the camera's, \
         {tables_added} identical after DHT insertion; invalid: {invalid:?}",
        parts.len(),
        fps_of(&parts)
    );
    drop(vm);
    let _ = std::fs::remove_dir_all(&frames_dir);
}
