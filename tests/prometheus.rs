//! The fleet's monitoring, tested with Debian's real `prometheus` and `promtool` (issue 14, part 5):
//! the shipped alerting rules pass `promtool check rules` and their unit tests, and a real
//! Prometheus, configured from the README's scrape config (file-based service discovery), scrapes a
//! real beltcam and sees the target up with frames flowing. Skips visibly where the programs are
//! missing; CI installs them (dev.sh TEST_PKGS), so there a skip fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, have, parse_response, Daemon};
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const RULES: &str = "deploy/prometheus/beltcam-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/beltcam-alerts.test.yml";

/// The alerts the rules file defines (each has its firing and not-firing cases in RULE_TESTS).
const ALERTS: [&str; 7] = [
    "BeltcamTargetDown",
    "BeltcamCameraOffline",
    "BeltcamCameraFpsLow",
    "BeltcamSessionsNearCapacity",
    "BeltcamFramesNoFreeSlot",
    "BeltcamPoolLeasesReclaimed",
    "BeltcamRecordingDiskLow",
];

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let test = "promtool_checks_and_unit_tests_the_alert_rules";
    if !have(test, "promtool", &["--version"], "prometheus") {
        return;
    }
    let (ok, text) = promtool(&["check", "rules", RULES]);
    assert!(ok, "promtool check rules {RULES}:\n{text}");
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "{text}"
    );

    let (ok, text) = promtool(&["test", "rules", RULE_TESTS]);
    assert!(ok, "promtool test rules {RULE_TESTS}:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");

    // Every alert is unit-tested both ways: an eval with expected alerts and one with none.
    let tests: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo().join(RULE_TESTS)).unwrap())
            .unwrap();
    let evals: Vec<&Value> = tests["tests"]
        .as_sequence()
        .expect("tests:")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
        .collect();
    for alert in ALERTS {
        let of_alert = || {
            evals
                .iter()
                .filter(move |e| e["alertname"].as_str() == Some(alert))
        };
        let fired = |e: &&&Value| e["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty());
        assert!(of_alert().any(|e| fired(&e)), "{alert}: no firing case");
        assert!(of_alert().any(|e| !fired(&e)), "{alert}: no quiet case");
    }
}

/// The README's Monitoring section: its `prometheus.yml` (the block with `scrape_configs`) and its
/// file_sd target file (the block starting with `- targets:`).
fn readme_configs() -> (Value, Value) {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("\n## Monitoring\n")
        .nth(1)
        .expect("README has a `## Monitoring` section");
    let section = section.split("\n## ").next().unwrap();
    let blocks: Vec<&str> = section
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    let find = |pred: &dyn Fn(&str) -> bool, what: &str| -> Value {
        let b = blocks
            .iter()
            .find(|b| pred(b))
            .unwrap_or_else(|| panic!("no {what} yaml block in README's Monitoring section"));
        serde_yaml_ng::from_str(b).unwrap_or_else(|e| panic!("README {what}: {e}\n{b}"))
    };
    (
        find(&|b| b.contains("scrape_configs:"), "prometheus.yml"),
        find(
            &|b| {
                b.lines()
                    .find(|l| !l.starts_with('#'))
                    .is_some_and(|l| l.starts_with("- targets:"))
            },
            "file_sd targets",
        ),
    )
}

/// The README's config with the paths pointed into `dir` and the repo, scraping every second.
fn test_config(dir: &Path, beltcam: u16) -> String {
    let (mut config, mut targets) = readme_configs();
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    let rules = config["rule_files"].as_sequence_mut().expect("rule_files:");
    assert!(
        rules.iter().any(|r| r
            .as_str()
            .is_some_and(|r| r.ends_with("beltcam-alerts.yml"))),
        "README's rule_files loads beltcam-alerts.yml: {rules:?}"
    );
    *rules = vec![repo().join(RULES).to_str().unwrap().into()];
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    let job = jobs
        .iter_mut()
        .find(|j| j["job_name"].as_str() == Some("beltcam"))
        .expect("README has a scrape job named beltcam (the rules match job=\"beltcam\")");
    if job.get("scrape_timeout").is_some() {
        // Prometheus refuses a timeout longer than the interval.
        job["scrape_timeout"] = "1s".into();
    }
    let sd = job["file_sd_configs"]
        .as_sequence_mut()
        .expect("the beltcam job uses file_sd_configs");
    assert_eq!(sd.len(), 1, "{sd:?}");
    let files = sd[0]["files"].as_sequence_mut().expect("files:");
    assert!(!files.is_empty());
    *files = vec![dir.join("targets/*.yml").to_str().unwrap().into()];

    // The README's target file, its addresses replaced by this test's beltcam.
    let groups = targets.as_sequence_mut().unwrap();
    assert!(!groups.is_empty());
    groups.truncate(1);
    groups[0]["targets"] = vec![Value::from(format!("127.0.0.1:{beltcam}"))].into();
    std::fs::create_dir_all(dir.join("targets")).unwrap();
    std::fs::write(
        dir.join("targets/belts.yml"),
        serde_yaml_ng::to_string(&targets).unwrap(),
    )
    .unwrap();
    serde_yaml_ng::to_string(&config).unwrap()
}

/// A running Prometheus, killed (and its data directory removed) on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid. SIGTERM first: a clean shutdown, bounded.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if common::wait_exit(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` over HTTP/1.0 (Go answers it unchunked and closes): status and body.
fn get10(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let out = beltcam_testkit::http::exchange(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )?;
    let (code, _, body) = parse_response(&out)?;
    Ok((code, body))
}

/// An instant query's result vector (`/api/v1/query`), or None while Prometheus cannot answer.
fn query(port: u16, promql: &str) -> Option<Vec<serde_json::Value>> {
    let mut q = String::new();
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    let (code, body) = get10(port, &format!("/api/v1/query?query={q}")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    (code == 200 && v["status"] == "success").then(|| v["data"]["result"].as_array().cloned())?
}

fn sample(r: &serde_json::Value) -> f64 {
    r["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn prometheus_scrapes_beltcam_with_the_readme_config() {
    let test = "prometheus_scrapes_beltcam_with_the_readme_config";
    if !have(test, "prometheus", &["--version"], "prometheus") {
        return;
    }
    let mut beltcam = Some(Daemon::start(&[]));
    let beltcam_port = beltcam.as_ref().unwrap().port;
    let dir = std::env::temp_dir().join(format!(
        "beltcam-prometheus-{}-{}",
        std::process::id(),
        beltcam_port
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = test_config(&dir, beltcam_port);
    std::fs::write(dir.join("prometheus.yml"), &config).unwrap();

    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let mut prom = Prometheus { child, port, dir };

    // Ready: the config (with the rules) loaded and the TSDB open.
    let ready = common::wait_for(Duration::from_secs(60), || {
        if let Ok(Some(status)) = prom.child.try_wait() {
            panic!("prometheus exited ({status}):\n{config}\n{}", prom.log());
        }
        matches!(get10(prom.port, "/-/ready"), Ok((200, _)))
    });
    assert!(ready, "prometheus not ready in 60 s:\n{}", prom.log());

    // The target, found through file_sd, is scraped and up, with the labels of the README's target
    // group; beltcam's frames arrive as a non-zero fps. Polled, bounded (scrape interval 1 s).
    let instance = format!("127.0.0.1:{beltcam_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut up, mut fps, mut negotiated) = (vec![], vec![], vec![]);
    while Instant::now() < deadline {
        up = query(prom.port, "up{job=\"beltcam\"}").unwrap_or_default();
        fps = query(prom.port, "beltcam_camera_fps").unwrap_or_default();
        negotiated = query(prom.port, "beltcam_camera_negotiated_fps").unwrap_or_default();
        let up_ok = up.len() == 1 && sample(&up[0]) == 1.0;
        let fps_ok = !fps.is_empty() && fps.iter().all(|r| sample(r) > 0.0);
        if up_ok && fps_ok && !negotiated.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        up.len() == 1 && sample(&up[0]) == 1.0,
        "up{{job=\"beltcam\"}} not 1 within 60 s: {up:?}\n{}",
        prom.log()
    );
    assert_eq!(up[0]["metric"]["instance"], instance.as_str(), "{up:?}");
    let (_, readme_targets) = readme_configs();
    if let Some(labels) = readme_targets[0]["labels"].as_mapping() {
        for (k, v) in labels {
            let (k, v) = (k.as_str().unwrap(), v.as_str().unwrap());
            assert_eq!(up[0]["metric"][k], v, "file_sd label {k} on {up:?}");
        }
    }
    assert!(
        !fps.is_empty() && fps.iter().all(|r| sample(r) > 0.0),
        "beltcam_camera_fps not > 0 within 60 s: {fps:?}"
    );
    for r in &fps {
        assert_eq!(r["metric"]["job"], "beltcam", "{r}");
        assert_eq!(r["metric"]["instance"], instance.as_str(), "{r}");
        assert!(r["metric"]["camera"].is_string(), "{r}");
    }
    // The rules' fps alert compares against the negotiated rate: it is scraped too, > 0 online.
    assert_eq!(negotiated.len(), fps.len(), "{negotiated:?}");
    assert!(negotiated.iter().all(|r| sample(r) > 0.0), "{negotiated:?}");

    // The shipped rules are loaded by the README's rule_files; a healthy box fires none of them.
    let (code, body) = get10(prom.port, "/api/v1/rules").expect("/api/v1/rules");
    assert_eq!(code, 200);
    let rules: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let loaded: Vec<&str> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["name"].as_str())
        .collect();
    for alert in ALERTS {
        assert!(loaded.contains(&alert), "{alert} not loaded: {loaded:?}");
    }
    let firing = query(prom.port, "ALERTS{alertstate=\"firing\"}").expect("ALERTS query");
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy box: {firing:?}"
    );

    // beltcam stops: the next scrapes fail and BeltcamTargetDown goes pending for this instance
    // (it fires after its 2 minutes, which the promtool unit tests cover).
    drop(beltcam.take());
    let pending = "ALERTS{alertname=\"BeltcamTargetDown\",alertstate=\"pending\"}";
    let mut got = vec![];
    let seen = common::wait_for(Duration::from_secs(30), || {
        got = query(prom.port, pending).unwrap_or_default();
        got.iter()
            .any(|r| r["metric"]["instance"] == instance.as_str())
    });
    assert!(
        seen,
        "no pending BeltcamTargetDown within 30 s: {got:?}\n{}",
        prom.log()
    );
}
