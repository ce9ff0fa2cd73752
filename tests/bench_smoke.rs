//! End-to-end check that the benchmark instrument (`bench/`, binary `beltcam-bench`) works against
//! this build of the daemon: `beltcam-bench --smoke` starts beltcam and the raw baseline, connects
//! three loopback viewers to each, and exits 0 only if both delivered frames.
//!
//! It asserts nothing about speed: the numbers belong in the bench's report, not in a pass/fail.
//! The bench binary is another workspace package, so cargo does not build it for this test; the
//! test builds it with the same cargo, profile and target directory as the daemon it was given.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whole smoke run: two daemon starts and a baseline, 2.5 s of streaming each, plus start-up.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// Builds (or finds up to date) `beltcam-bench` next to the daemon binary and returns its path.
fn bench_binary() -> PathBuf {
    let daemon = Path::new(env!("CARGO_BIN_EXE_beltcam"));
    let profile_dir = daemon.parent().expect("daemon binary has a directory");
    let target_dir = profile_dir
        .parent()
        .expect("profile directory has a parent");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "beltcam-bench",
        "--bin",
        "beltcam-bench",
    ])
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo to build beltcam-bench");
    assert!(status.success(), "building beltcam-bench failed: {status}");
    let bin = profile_dir.join("beltcam-bench");
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

#[test]
fn bench_smoke_measures_daemon_and_baseline() {
    let bench = bench_binary();
    // `auto` is io_uring where the kernel and seccomp allow it, else epoll; epoll is always there.
    let mut child = Command::new(&bench)
        .args(["--smoke", "--backend", "auto,epoll", "--daemon"])
        .arg(env!("CARGO_BIN_EXE_beltcam"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start beltcam-bench");
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });

    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        match child.try_wait().expect("wait for beltcam-bench") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    let status = status.unwrap_or_else(|| {
        panic!("beltcam-bench --smoke still running after {RUN_DEADLINE:?}\n{stdout}\n{stderr}")
    });
    assert!(
        status.success(),
        "beltcam-bench --smoke failed ({status})\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    for server in ["beltcam-auto", "beltcam-epoll", "baseline"] {
        assert!(
            rows.iter().any(|r| r.starts_with(&format!("| {server} |"))),
            "no {server} row in the table:\n{stdout}"
        );
    }
}
