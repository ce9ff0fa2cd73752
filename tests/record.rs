//! `[camera.record]` (issue 13, part 3) against the real binary: the rate, the dated layout and
//! atomic files, retention by size and of what is already on disk (old files named days back),
//! counting what a restart finds, and a nearly full file system (a small tmpfs) that pauses
//! recording with `/health` degraded "disk low" and resumes by itself; `quality` re-encodes
//! (smaller files that decode), checked at parse time; a slow disk (an ext4 on a loop device whose
//! writes the kernel throttles for the daemon's cgroup) leaves capture at its rate while the
//! recorder skips and counts.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{decode, get, wait_for, Daemon};

struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("beltcam-record-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &Path, record: &str) -> PathBuf {
    let cfg = dir.join("beltcam.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[camera]]\nname = \"belt\"\nsource = \"synthetic:160x120@15\"\n\
             [camera.record]\ndir = \"{}\"\n{record}",
            dir.join("rec").display()
        ),
    )
    .unwrap();
    cfg
}

fn recording(d: &Daemon) -> serde_json::Value {
    let (code, _, body) = get(d.port, "/cam/belt/recordings").unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["recording"].clone()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn records_at_its_rate_into_dated_folders_atomically() {
    let t = TempDir::new("rate");
    let d = Daemon::start(&["--config", config(&t.0, "fps = 4\n").to_str().unwrap()]);
    assert!(wait_for(Duration::from_secs(10), || recording(&d)
        ["written"]
        .as_u64()
        >= Some(2)));
    let (w0, t0) = (recording(&d)["written"].as_u64().unwrap(), Instant::now());
    assert!(wait_for(Duration::from_secs(10), || recording(&d)
        ["written"]
        .as_u64()
        >= Some(w0 + 8)));
    let (w1, dt) = (recording(&d)["written"].as_u64().unwrap(), t0.elapsed());
    let rate = (w1 - w0) as f64 / dt.as_secs_f64();
    assert!(
        (3.0..=5.0).contains(&rate),
        "recorded {rate:.2} frames/s, configured 4"
    );

    let r = recording(&d);
    let all = files(&t.0.join("rec/belt"));
    assert!(all.len() as u64 >= w1, "{} files, {w1} written", all.len());
    // The counters match the disk (a write may land between the two looks).
    let counted = r["files"].as_u64().unwrap();
    assert!(
        counted.abs_diff(all.len() as u64) <= 2,
        "{counted} counted, {} on disk",
        all.len()
    );
    for p in &all {
        let rel = p
            .strip_prefix(t.0.join("rec/belt"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // YYYY-MM-DD/HH/YYYYMMDD-HHMMSS.mmm-SEQ.jpg, never a temporary.
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 3, "{rel}");
        assert_eq!(parts[0].len(), 10, "{rel}");
        assert_eq!(parts[1].len(), 2, "{rel}");
        assert!(
            parts[2].ends_with(".jpg") && !parts[2].starts_with('.'),
            "{rel}"
        );
        assert_eq!(decode(&std::fs::read(p).unwrap()), (160, 120), "{rel}");
    }
    let (_, _, m) = get(d.port, "/metrics").unwrap();
    let m = String::from_utf8_lossy(&m);
    assert!(m.contains("beltcam_recorded_frames_total{camera=\"belt\"}"));
    // /metrics shows what /stats shows (files may grow between the two looks).
    let sample = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{camera=\"belt\"}} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{m}"))
            .parse()
            .unwrap()
    };
    assert_eq!(sample("beltcam_recording_removed_total"), 0);
    assert!(sample("beltcam_recording_files") >= counted);
    // A camera that does not record says so.
    assert_eq!(get(d.port, "/cam/nope/recordings").unwrap().0, 404);
}

#[test]
fn retention_removes_old_files_found_at_start_and_keeps_the_size_limit() {
    let t = TempDir::new("retention");
    // Files from an earlier run, named three days back: 20 of 50 kB.
    let old_day = t.0.join("rec/belt/2020-01-01/00");
    std::fs::create_dir_all(&old_day).unwrap();
    let jpeg = std::fs::read(common::data_dir().join("good.jpg")).unwrap();
    for i in 0..20 {
        let mut body = jpeg.clone();
        body.resize(50_000, 0);
        std::fs::write(
            old_day.join(format!("20200101-0000{i:02}.000-{i:08}.jpg")),
            body,
        )
        .unwrap();
    }
    let cfg = config(&t.0, "fps = 15\nkeep_hours = 24\nkeep_mb = 0.1\n");
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    // The old files are older than keep_hours: gone at start.
    assert!(
        wait_for(Duration::from_secs(10), || !old_day.exists()),
        "old files kept"
    );
    assert!(recording(&d)["removed"].as_u64() >= Some(20));
    // Recording at 15 fps against a 100 KiB limit: the oldest go, the total stays near the limit.
    assert!(wait_for(Duration::from_secs(15), || recording(&d)
        ["written"]
        .as_u64()
        >= Some(60)));
    let on_disk: u64 = files(&t.0.join("rec/belt"))
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(
        on_disk <= 100 * 1024 + 10_000,
        "{on_disk} bytes kept, limit 100 KiB"
    );
    let r = recording(&d);
    assert!(r["removed"].as_u64() > Some(20), "{r}");
    assert!(r["bytes"].as_u64() <= Some(100 * 1024 + 10_000), "{r}");
}

#[test]
fn a_restart_counts_what_is_on_disk() {
    let t = TempDir::new("restart");
    let cfg = config(&t.0, "fps = 10\n");
    let mut d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    assert!(wait_for(Duration::from_secs(10), || recording(&d)
        ["written"]
        .as_u64()
        >= Some(10)));
    let status = d.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let kept = files(&t.0.join("rec/belt"));
    assert!(
        kept.iter()
            .all(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')),
        "a temporary file was left: {kept:?}"
    );
    let bytes: u64 = kept.iter().map(|p| p.metadata().unwrap().len()).sum();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let r = recording(&d);
    assert!(
        r["files"].as_u64() >= Some(kept.len() as u64),
        "{r} vs {} on disk",
        kept.len()
    );
    assert!(r["bytes"].as_u64() >= Some(bytes), "{r} vs {bytes} on disk");
    assert!(r["oldest_unix_s"].as_u64().is_some());
}

#[test]
fn a_nearly_full_disk_pauses_recording_and_it_resumes() {
    let t = TempDir::new("full");
    let mnt = t.0.join("rec");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        common::skip(
            "record::a_nearly_full_disk",
            "cannot mount a tmpfs (needs root)",
            &[],
        );
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(mnt.clone());
    let cfg = config(&t.0, "fps = 5\nmin_free_mb = 2\nkeep_mb = 0\n");
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    assert!(wait_for(Duration::from_secs(10), || recording(&d)
        ["written"]
        .as_u64()
        >= Some(2)));
    let mut events = common::Sse::open(d.port, "/events?camera=belt");
    // Leave about 1 MiB free.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 3 << 20]).unwrap();
    let health = |d: &Daemon| {
        let (_, _, b) = get(d.port, "/health").unwrap();
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(15), || recording(&d)["disk_low"]
            == true),
        "{}",
        recording(&d)
    );
    let paused_event = events
        .find("recording", "\"paused\"", Duration::from_secs(5))
        .expect("a recording paused event");
    assert!(paused_event.contains("\"disk low\""), "{paused_event}");
    let h = health(&d);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["cameras"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("disk low")),
        "{h}"
    );
    let paused = recording(&d)["written"].as_u64().unwrap();
    assert_eq!(
        d.log_text().matches("recording paused: disk low").count(),
        1,
        "one warning"
    );
    // Still paused a moment later (nothing written), while the camera streams on.
    let (code, _, _) = get(d.port, "/snapshot").unwrap();
    assert_eq!(code, 200);
    assert!(recording(&d)["written"].as_u64().unwrap() <= paused + 1);
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || recording(&d)["written"]
            .as_u64()
            > Some(paused + 2)),
        "recording did not resume: {}",
        recording(&d)
    );
    assert_eq!(health(&d)["status"], "ok");
    assert!(d.log_text().contains("recording resumed"));
    events
        .find(
            "recording",
            "\"state\":\"recording\"",
            Duration::from_secs(5),
        )
        .expect("a recording resumed event");
}

fn check_config(cfg: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_beltcam"))
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn quality_reencodes_into_smaller_files_that_decode() {
    let t = TempDir::new("quality");
    let cfg = config(&t.0, "fps = 5\nquality = 10\n");
    // check-config shows the key in the effective TOML.
    let out = check_config(&cfg);
    assert!(out.status.success(), "{out:?}");
    let v: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(v["camera"][0]["record"]["quality"].as_integer(), Some(10));

    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    assert!(wait_for(Duration::from_secs(10), || recording(&d)
        ["written"]
        .as_u64()
        >= Some(6)));
    let r = recording(&d);
    assert_eq!(r["quality"], 10, "{r}");
    assert_eq!(r["reencode_failed"], 0, "{r}");
    // The camera's own frames (quality 80) as viewers get them.
    let camera: Vec<usize> = (0..5)
        .map(|_| {
            let (code, _, body) = get(d.port, "/snapshot").unwrap();
            assert_eq!(code, 200);
            assert_eq!(decode(&body), (160, 120));
            body.len()
        })
        .collect();
    let all = files(&t.0.join("rec/belt"));
    assert!(all.len() >= 6, "{all:?}");
    let mut kept = Vec::new();
    for p in &all {
        let jpeg = std::fs::read(p).unwrap();
        assert_eq!(decode(&jpeg), (160, 120), "{}", p.display());
        kept.push(jpeg.len());
    }
    let avg = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
    let (camera_avg, kept_avg) = (avg(&camera), avg(&kept));
    eprintln!(
        "camera frames {camera_avg:.0} bytes on average, recorded at quality 10: {kept_avg:.0}"
    );
    assert!(
        kept_avg * 1.5 < camera_avg,
        "recorded {kept_avg:.0} bytes on average, the camera's frames {camera_avg:.0}"
    );
    assert!(
        kept.iter().max() < camera.iter().min(),
        "{kept:?} vs {camera:?}"
    );
    // The bytes counted are the re-encoded ones.
    let counted = r["bytes"].as_u64().unwrap() as f64 / r["files"].as_u64().unwrap() as f64;
    assert!(counted < camera_avg, "{r}");
    let (_, _, m) = get(d.port, "/metrics").unwrap();
    assert!(String::from_utf8_lossy(&m)
        .contains("beltcam_recording_reencode_failed_total{camera=\"belt\"} 0"));
}

#[test]
fn quality_out_of_range_is_a_one_line_config_error() {
    let t = TempDir::new("quality-bad");
    for q in ["0", "101"] {
        let out = check_config(&config(&t.0, &format!("quality = {q}\n")));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "quality {q}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("camera[0].record.quality") && err.contains("1..=100"),
            "{err}"
        );
    }
    // An unknown key in the table is refused too (deny_unknown_fields).
    let out = check_config(&config(&t.0, "qualty = 50\n"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Runs a command; its stdout when it succeeded.
fn sh(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A slow disk: an ext4 file system on a loop device, mounted at `mnt`, and a cgroup (v1 blkio)
/// that lets its members write to that device `iops` times a second. Undone on drop.
struct SlowDisk {
    mnt: PathBuf,
    loop_dev: String,
    cgroup: PathBuf,
}

const BLKIO: &str = "/sys/fs/cgroup/blkio";

impl SlowDisk {
    fn new(dir: &Path, iops: u32) -> Result<SlowDisk, String> {
        if !Path::new(BLKIO)
            .join("blkio.throttle.write_iops_device")
            .exists()
        {
            return Err(format!("no cgroup v1 blkio throttling ({BLKIO})"));
        }
        let img = dir.join("disk.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(64 << 20))
            .map_err(|e| e.to_string())?;
        sh("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]).ok_or("mkfs.ext4 failed")?;
        let loop_dev = sh("losetup", &["-f", "--show", img.to_str().unwrap()])
            .ok_or("losetup failed (needs root and loop devices)")?;
        let cgroup = Path::new(BLKIO).join(format!("beltcam-test-slow-{}", std::process::id()));
        let mnt = dir.join("rec");
        let disk = SlowDisk {
            mnt: mnt.clone(),
            loop_dev: loop_dev.clone(),
            cgroup: cgroup.clone(),
        };
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        sh("mount", &[&loop_dev, mnt.to_str().unwrap()]).ok_or("mount failed")?;
        let minor = loop_dev
            .strip_prefix("/dev/loop")
            .ok_or(format!("unexpected loop device {loop_dev}"))?;
        std::fs::create_dir_all(&cgroup).map_err(|e| format!("cgroup: {e}"))?;
        std::fs::write(
            cgroup.join("blkio.throttle.write_iops_device"),
            format!("7:{minor} {iops}"),
        )
        .map_err(|e| format!("throttle: {e}"))?;
        Ok(disk)
    }

    /// Moves a process (all its threads) into the throttled cgroup.
    fn slow_down(&self, pid: i32) {
        std::fs::write(self.cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        // The daemon is gone, though a throttled write may still hold the mount for a moment.
        let mnt = self.mnt.to_str().unwrap();
        if !wait_for(Duration::from_secs(10), || sh("umount", &[mnt]).is_some()) {
            let _ = sh("umount", &["-l", mnt]);
        }
        let _ = sh("losetup", &["-d", &self.loop_dev]);
        let _ = wait_for(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.cgroup).is_ok()
        });
    }
}

#[test]
fn a_slow_disk_does_not_slow_capture() {
    let _heavy = common::heavy();
    let t = TempDir::new("slow");
    let disk = match SlowDisk::new(&t.0, 1) {
        Ok(d) => d,
        Err(why) => {
            // CI runs as root on a machine like this one: it must run this.
            common::skip("record::a_slow_disk", &why, &[]);
            return;
        }
    };
    let cfg = config(&t.0, "fps = 10\nmin_free_mb = 1\nkeep_mb = 0\n");
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    assert!(wait_for(Duration::from_secs(10), || recording(&d)
        ["written"]
        .as_u64()
        >= Some(2)));
    // From here every write of the daemon to that disk waits for its turn: one a second.
    disk.slow_down(d.pid());
    let published = |d: &Daemon| {
        d.stats()["cameras"][0]["frames"]["published"]
            .as_u64()
            .unwrap()
    };
    let skipped = |d: &Daemon| recording(d)["skipped"].as_u64().unwrap();
    let (s0, w0) = (skipped(&d), recording(&d)["written"].as_u64().unwrap());
    let (p0, t0) = (published(&d), Instant::now());
    assert!(
        wait_for(Duration::from_secs(20), || skipped(&d) >= s0 + 20),
        "the recorder skipped nothing on a slow disk: {}",
        recording(&d)
    );
    let (p1, dt) = (published(&d), t0.elapsed().as_secs_f64());
    let r = recording(&d);
    let written = (r["written"].as_u64().unwrap() - w0) as f64 / dt;
    let fps = (p1 - p0) as f64 / dt;
    eprintln!(
        "slow disk: over {dt:.1} s capture published {fps:.1} frames/s (configured 15), the \
         recorder wrote {written:.2}/s (configured 10) and skipped {}",
        r["skipped"]
    );
    // The disk was slow (else this tested nothing), and capture did not notice.
    assert!(
        written <= 3.0,
        "the disk was not slow: {written:.2} writes/s"
    );
    assert!(
        (13.5..=16.5).contains(&fps),
        "capture at {fps:.1} frames/s, configured 15"
    );
    let stats = d.stats();
    let cam = &stats["cameras"][0];
    assert_eq!(cam["state"], "online", "{cam}");
    assert_eq!(cam["frames"]["dropped"], 0, "{cam}");
    assert!(
        cam["recording"]["skipped"].as_u64() >= Some(s0 + 20),
        "/stats shows the skips: {cam}"
    );
    let (code, _, body) = get(d.port, "/health").unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    // A viewer is served at the camera's rate meanwhile.
    let mut v = common::Viewer::open(d.port, "/stream");
    let parts = v.read_for(Duration::from_secs(2));
    assert!(
        parts.len() >= 20,
        "{} frames in 2 s from /stream",
        parts.len()
    );
    let (_, _, m) = get(d.port, "/metrics").unwrap();
    let m = String::from_utf8_lossy(&m);
    let line = m
        .lines()
        .find(|l| l.starts_with("beltcam_recording_skipped_total{camera=\"belt\"} "))
        .unwrap_or_else(|| panic!("no skipped counter in\n{m}"));
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= s0 + 20, "{line}");
    drop(v);
    drop(d);
    drop(disk);
}
