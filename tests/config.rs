//! Configuration errors against the real binary: each one is a one-line `config error:` and exit 2
//! (the unit's "don't restart" status), from `check-config` and from a normal start alike, before
//! anything is bound or any camera runs. `check-config` prints the effective settings as TOML.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{free_port, wait_exit};

/// Runs beltcam with `args` (bounded: killed after 10 s) and returns its output.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_beltcam"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start beltcam");
    if wait_exit(&mut child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
    }
    child.wait_with_output().expect("output")
}

/// Asserts `args` are refused as a configuration error naming `key`, on both paths.
fn refused(args: &[&str], key: &str) {
    let listen = format!("127.0.0.1:{}", free_port());
    for sub in [&["check-config"][..], &["run", "--listen", &listen][..]] {
        let all: Vec<&str> = sub.iter().chain(args).copied().collect();
        let out = run(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {err}");
        let line = err.trim_end();
        assert!(!line.contains('\n'), "{all:?}: more than one line: {err}");
        assert!(
            line.starts_with(&format!("beltcam: config error: {key}")),
            "{all:?}: {line}"
        );
    }
}

#[test]
fn log_level_typos_are_config_errors() {
    for level in ["warnn", "loud", ""] {
        refused(&["--log-level", level], "log.level");
    }
    // Real filter directives still work.
    let out = run(&["check-config", "--log-level", "beltcam=debug,info"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn tiny_and_huge_numbers_are_config_errors() {
    for spec in [
        "synthetic:640x480@1e-300",
        "synthetic:640x480@1e-19",
        "synthetic:640x480@NaN",
        "synthetic:640x480@inf",
        "dir:/tmp@1e-300",
    ] {
        refused(&["--source", spec], "camera[0].source");
    }
    refused(&["--connects-per-minute", "4000000000"], "limits.connects");
    refused(&["--send-timeout-ms", "0"], "server.send_timeout_ms");
}

#[test]
fn frames_larger_than_a_slot_are_refused_with_the_reason() {
    refused(&["--source", "synthetic:8192x8192"], "camera[0].source");
    let out = run(&["check-config", "--source", "synthetic:8192x8192"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool slot"), "{err}");
}

#[test]
fn configuration_above_the_memory_budget_is_refused() {
    let mut args = vec![];
    let specs: Vec<String> = (0..8)
        .map(|i| format!("c{i}=v4l2:/dev/video{i}:1920x1080@30:YUYV"))
        .collect();
    for s in &specs {
        args.extend(["--source", s.as_str()]);
    }
    // Raw 1080p cameras with the default two encode workers: eight need ~260 MiB, over 200.
    refused(&args, "limits.memory_budget_mb");
    // With a raised budget in a config file the same cameras pass the check.
    let dir = std::env::temp_dir().join(format!("beltcam-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.toml");
    std::fs::write(&file, "[limits]\nmemory_budget_mb = 512\n").unwrap();
    let mut with = vec!["check-config", "--config", file.to_str().unwrap()];
    with.extend(&args);
    let out = run(&with);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn duplicate_listen_addresses_exit_2() {
    let a = format!("127.0.0.1:{}", free_port());
    let out = run(&["--listen", &a, "--listen", &a, "--source", "synthetic"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("server.listen[1]"), "{err}");
}

#[test]
fn check_config_prints_toml_that_is_itself_a_valid_config() {
    let out = run(&[
        "check-config",
        "--source",
        "front=synthetic:640x480@10",
        "--max-sessions",
        "77",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let v: toml::Value = toml::from_str(&text).expect("check-config prints TOML");
    assert_eq!(v["server"]["max_sessions"].as_integer(), Some(77));
    assert_eq!(
        v["camera"][0]["source"].as_str(),
        Some("synthetic:640x480@10")
    );
    assert_eq!(v["limits"]["memory_budget_mb"].as_integer(), Some(200));
    assert!(text.contains("# worst-case memory:"), "{text}");
    assert!(text.contains("frame pool"), "{text}");
    // Fed back as a config file, it is accepted and prints the same settings.
    let dir = std::env::temp_dir().join(format!("beltcam-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("effective.toml");
    std::fs::write(&file, &text).unwrap();
    let again = run(&["check-config", "--config", file.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(String::from_utf8_lossy(&again.stdout), text);
}

#[test]
fn start_logs_the_worst_case_memory() {
    let d = common::Daemon::start(&["--source", "synthetic:320x240@5"]);
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("worst_case_mib"))
        .unwrap_or_else(|| panic!("no memory line at start: {log}"));
    assert!(line.contains("budget_mib=200"), "{line}");
}
