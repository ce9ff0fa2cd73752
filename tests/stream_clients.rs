//! The stream's framing with the real clients (issue 14): ffmpeg's `-reconnect_at_eof` across a
//! beltcam restart on the same port, and ffmpeg and GStreamer decoding at the camera's full rate,
//! with the default framing and with the next part's headers in advance (what browsers get).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn installed(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts beltcam on a given port (a restart must reuse it) and waits for `/health`.
fn start_on(port: u16, source: &str, backend: &str, log: &PathBuf) -> Child {
    let logf = std::fs::File::create(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_beltcam"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--source", source])
        .args(["--io-backend", backend])
        .args([
            "--max-clients-per-ip",
            "1024",
            "--connects-per-minute",
            "1000000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .expect("start beltcam");
    let ok = wait_for(Duration::from_secs(20), || {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("beltcam exited at start-up ({s})");
        }
        matches!(get(port, "/health"), Ok((200, _, _)))
    });
    assert!(ok, "beltcam not healthy within 20 s on port {port}");
    child
}

/// The last `frame=N` ffmpeg's `-progress` file reports.
fn progress_frames(path: &PathBuf) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("frame="))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ffmpeg_reconnects_across_a_restart_and_keeps_decoding() {
    let test = "ffmpeg_reconnects_across_a_restart_and_keeps_decoding";
    if !installed("ffmpeg", "-version") {
        skip(test, "ffmpeg not installed (apt-get install ffmpeg)", &[]);
        return;
    }
    let _heavy = heavy();
    for backend in ["epoll", "uring"] {
        if backend_available(test, backend) {
            ffmpeg_reconnect(backend);
        }
    }
}

fn ffmpeg_reconnect(backend: &str) {
    let port = free_port();
    let tmp = std::env::temp_dir().join(format!("beltcam-ffrc-{backend}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (log1, log2, progress, ff_err) = (
        tmp.join("a.log"),
        tmp.join("b.log"),
        tmp.join("progress"),
        tmp.join("ffmpeg.err"),
    );
    let source = "synthetic:320x240@15";
    let mut first = Reaper(start_on(port, source, backend, &log1));
    let ff = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error"])
        .args([
            "-reconnect",
            "1",
            "-reconnect_streamed",
            "1",
            "-reconnect_at_eof",
            "1",
        ])
        .args(["-reconnect_delay_max", "2"])
        .args(["-i", &format!("http://127.0.0.1:{port}/stream")])
        .args(["-f", "null", "-", "-progress"])
        .arg(&progress)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&ff_err).unwrap())
        .spawn()
        .expect("start ffmpeg");
    let mut ff = Reaper(ff);
    assert!(
        wait_for(Duration::from_secs(15), || progress_frames(&progress) >= 15),
        "ffmpeg decoded {} frames before the restart",
        progress_frames(&progress)
    );
    // A graceful restart on the same port, as systemd does it.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(first.0.id() as i32, libc::SIGTERM) };
    assert!(
        wait_exit(&mut first.0, Duration::from_secs(10)).is_some(),
        "beltcam did not stop within 10 s"
    );
    let before = progress_frames(&progress);
    let _second = Reaper(start_on(port, source, backend, &log2));
    // ffmpeg reconnects (its delay doubles from 0 s up to 2 s) and must go on decoding: 30 more
    // frames is two seconds of the new process's stream.
    let resumed = wait_for(Duration::from_secs(20), || {
        progress_frames(&progress) >= before + 30 || !matches!(ff.0.try_wait(), Ok(None))
    });
    let after = progress_frames(&progress);
    let still_running = matches!(ff.0.try_wait(), Ok(None));
    let err = std::fs::read_to_string(&ff_err).unwrap_or_default();
    assert!(
        resumed && still_running && after >= before + 30,
        "{backend}: ffmpeg after the restart: {before} -> {after} frames, running {still_running}; stderr:\n{err}"
    );
    assert!(
        !err.contains("Invalid data"),
        "{backend}: ffmpeg stderr:\n{err}"
    );
    eprintln!("{backend}: ffmpeg decoded {before} frames, then {after} after the restart");
    drop(ff);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Frames ffmpeg decodes from `url` in `secs` seconds (timestamps from the wall clock: the mjpeg
/// demuxer would otherwise assume 25 fps).
fn ffmpeg_frames(url: &str, secs: u32) -> (u64, String) {
    let out = Command::new("timeout")
        .args(["20", "ffmpeg", "-nostdin", "-loglevel", "warning"])
        .args(["-use_wallclock_as_timestamps", "1", "-i", url])
        .args([
            "-t",
            &secs.to_string(),
            "-f",
            "null",
            "-",
            "-progress",
            "pipe:1",
        ])
        .output()
        .expect("run ffmpeg");
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("frame="))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0);
    (frames, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Buffers GStreamer's `multipartdemux ! jpegdec` decodes from `url` in about `secs` seconds.
fn gstreamer_frames(url: &str, secs: u64) -> u64 {
    let mut child = Command::new("gst-launch-1.0")
        .args(["souphttpsrc", &format!("location={url}")])
        .args(["!", "multipartdemux", "!", "jpegdec", "!", "fakesink"])
        .args(["sync=false", "silent=false", "-v"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run gst-launch-1.0");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("fakesink") && l.contains("chain"))
            .count() as u64
    });
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap()
}

#[test]
fn ffmpeg_and_gstreamer_decode_at_full_rate_with_either_framing() {
    let test = "ffmpeg_and_gstreamer_decode_at_full_rate_with_either_framing";
    if emulated_skip(test) {
        return;
    }
    let _heavy = heavy();
    let d = Daemon::start(&["--source", "synthetic:320x240@30"]);
    let base = format!("http://127.0.0.1:{}/stream", d.port);
    if installed("ffmpeg", "-version") {
        for url in [base.clone(), format!("{base}?advance_headers=1")] {
            let (frames, err) = ffmpeg_frames(&url, 3);
            eprintln!("ffmpeg {url}: {frames} frames in 3 s");
            // 3 s of a 30 fps stream is 90 frames; slack for a busy two-core machine.
            assert!(
                frames >= 80,
                "ffmpeg decoded {frames} frames from {url}: {err}"
            );
            assert!(!err.contains("Invalid data"), "{url}: {err}");
        }
    } else {
        skip(test, "ffmpeg not installed (apt-get install ffmpeg)", &[]);
    }
    if installed("gst-launch-1.0", "--version") {
        for url in [base.clone(), format!("{base}?advance_headers=1")] {
            let frames = gstreamer_frames(&url, 3);
            eprintln!("gstreamer {url}: {frames} frames in 3 s wall time");
            // Wall time includes GStreamer's start-up; a shared two-core machine gets slack.
            assert!(
                frames >= 45,
                "GStreamer decoded {frames} frames in 3 s from {url}"
            );
        }
    } else {
        skip(
            test,
            "gst-launch-1.0 not installed (apt-get install gstreamer1.0-tools gstreamer1.0-plugins-good)",
            &[],
        );
    }
}
