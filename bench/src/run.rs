//! Drives a whole bench run: for every configuration, start each server (beltcam per backend, then
//! the raw baseline with the same frame bytes), connect the viewers, measure one window, stop.
//!
//! The measured window opens only after every viewer has connected (or the connect deadline passed)
//! and a warm-up, so connection set-up is not counted in fps, bytes, latency or CPU. All waits are
//! bounded; a server that dies or fails to start is reported and the run goes on with the next one.

use crate::procstat::Window;
use crate::report::{self, Measured, Row};
use crate::server::{DaemonSpec, ServerProc};
use crate::viewer::{Load, LoadConfig};
use crate::{http, sys, Args, Config};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Runs every configuration; prints the table. Returns whether every server delivered frames.
pub fn run(
    args: &Args,
    configs: &[Config],
    attach: Option<(SocketAddrV4, Option<String>)>,
) -> Result<bool, String> {
    let max_viewers = configs.iter().map(|c| c.viewers).max().unwrap_or(1);
    // One fd per viewer here; the baseline child (which inherits the limit) needs as many again.
    let want = max_viewers as u64 + 256;
    let nofile = sys::raise_nofile(max_viewers as u64 * 2 + 512)
        .map_err(|e| format!("raise RLIMIT_NOFILE: {e}"))?;
    if nofile < want {
        return Err(format!(
            "RLIMIT_NOFILE hard limit allows {nofile} open files, {max_viewers} viewers need {want}: \
             raise it (e.g. `ulimit -Hn {}` as root, or LimitNOFILE=) or use fewer viewers",
            max_viewers * 2 + 512
        ));
    }
    let work = std::env::temp_dir().join(format!("beltcam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;

    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for c in configs {
        let mut frame: Option<Vec<u8>> = None;
        // A `dir:{DIR}` source: the daemon loops the very JPEG the baseline sends, with no encoding.
        let frames_dir = work.join(format!("frames-{}x{}", c.width, c.height));
        if args.source.contains("{DIR}") {
            let jpeg = match &args.frame {
                Some(p) => std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?,
                None => http::synthetic_jpeg(c.width, c.height)?,
            };
            std::fs::create_dir_all(&frames_dir)
                .and_then(|()| std::fs::write(frames_dir.join("frame.jpg"), &jpeg))
                .map_err(|e| format!("write {}: {e}", frames_dir.display()))?;
            frame = Some(jpeg);
        }
        let daemons: Vec<String> = if attach.is_some() {
            vec!["attached".into()]
        } else {
            args.backend
                .iter()
                .filter(|b| *b != "none")
                .cloned()
                .collect()
        };
        for backend in &daemons {
            let label = if backend == "attached" {
                "beltcam".to_string()
            } else {
                format!("beltcam-{backend}")
            };
            eprintln!(
                "== {label}: {} viewers {}x{}@{}",
                c.viewers, c.width, c.height, c.fps
            );
            let started = match &attach {
                Some((addr, _)) => Ok(ServerProc::attach(*addr, args.pid.unwrap_or(0))),
                None => ServerProc::spawn_daemon(&DaemonSpec {
                    bin: &args.daemon,
                    backend,
                    source: source_arg(&args.source, c, &frames_dir),
                    extra_args: &args.daemon_args,
                    log: work.join(format!(
                        "{label}-{}-{}x{}.log",
                        c.viewers, c.width, c.height
                    )),
                    ready_timeout: secs(args.ready_timeout),
                }),
            };
            let mut srv = match started {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{label} ({} viewers): {e}", c.viewers));
                    eprintln!("error: {e}");
                    continue;
                }
            };
            let path = attach
                .as_ref()
                .and_then(|a| a.1.clone())
                .unwrap_or_else(|| args.path.clone());
            if frame.is_none() && args.frame.is_none() {
                match http::fetch_frame(srv.addr, &path) {
                    Ok(f) => frame = Some(f),
                    Err(e) => eprintln!("warning: could not copy a frame for the baseline: {e}"),
                }
            }
            match measure(args, c, &mut srv, &label, &path) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    failures.push(format!("{label} ({} viewers): {e}", c.viewers));
                    eprintln!("error: {e}");
                }
            }
            if let Err(e) = srv.stop() {
                failures.push(format!("{label}: {e}"));
            }
        }
        if args.no_baseline {
            continue;
        }
        eprintln!(
            "== baseline: {} viewers {}x{}@{}",
            c.viewers, c.width, c.height, c.fps
        );
        match baseline_frame(args, c, frame, &work).and_then(|f| run_baseline(args, c, &f)) {
            Ok(r) => rows.push(r),
            Err(e) => {
                failures.push(format!("baseline ({} viewers): {e}", c.viewers));
                eprintln!("error: {e}");
            }
        }
    }
    report::fill_ratios(&mut rows);
    let table = render(args, &rows, &failures);
    print!("{table}");
    if let Some(p) = &args.out {
        std::fs::write(p, &table).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    if let Some(p) = &args.json {
        let json = serde_json::to_string_pretty(&rows).map_err(|e| format!("json: {e}"))?;
        std::fs::write(p, json).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("logs kept in {}", work.display());
    }
    Ok(verdict(args, &rows, &failures))
}

/// Success: no failures, every row delivered frames, and (for --smoke) both a beltcam and a
/// baseline row exist.
fn verdict(args: &Args, rows: &[Row], failures: &[String]) -> bool {
    let all_delivered = !rows.is_empty() && rows.iter().all(|r| r.frames > 0);
    let has = |p: &str| rows.iter().any(|r| r.server.starts_with(p) && r.frames > 0);
    let smoke_ok = !args.smoke || (has("beltcam") && has("baseline"));
    failures.is_empty() && all_delivered && smoke_ok
}

fn render(args: &Args, rows: &[Row], failures: &[String]) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut s = format!(
        "### beltcam-bench{}: {:.0} s measured per configuration (after {:.1} s warm-up), {} load-generator thread(s), {} cores\n\n",
        if args.smoke { " --smoke" } else { "" },
        args.seconds,
        args.warmup,
        args.threads,
        cores
    );
    s.push_str(&report::markdown(rows));
    for f in failures {
        s.push_str(&format!("\n- FAILED: {}\n", f.lines().next().unwrap_or("")));
    }
    s
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn source_arg(template: &str, c: &Config, frames_dir: &Path) -> String {
    template
        .replace("{DIR}", &frames_dir.display().to_string())
        .replace("{W}", &c.width.to_string())
        .replace("{H}", &c.height.to_string())
        .replace("{FPS}", &c.fps.to_string())
}

fn baseline_frame(
    args: &Args,
    c: &Config,
    fetched: Option<Vec<u8>>,
    work: &Path,
) -> Result<PathBuf, String> {
    if let (Some(p), None) = (&args.frame, &fetched) {
        return Ok(p.clone());
    }
    let jpeg = match fetched {
        Some(f) => f,
        None => http::synthetic_jpeg(c.width, c.height)?,
    };
    let p = work.join(format!("frame-{}x{}.jpg", c.width, c.height));
    std::fs::write(&p, jpeg).map_err(|e| format!("write {}: {e}", p.display()))?;
    Ok(p)
}

fn run_baseline(args: &Args, c: &Config, frame: &Path) -> Result<Row, String> {
    // Lives a little longer than the window needs, then exits on its own.
    let life = args.connect_timeout + args.warmup + args.seconds + 30.0;
    let mut srv = ServerProc::spawn_baseline(frame, c.fps, life.ceil() as u64)?;
    let r = measure(args, c, &mut srv, "baseline", "/stream");
    srv.stop()?;
    r
}

/// Connects the viewers to `srv`, waits for them and the warm-up, measures one window.
fn measure(
    args: &Args,
    c: &Config,
    srv: &mut ServerProc,
    label: &str,
    path: &str,
) -> Result<Row, String> {
    let load = Load::start(&LoadConfig {
        addr: srv.addr,
        path: path.to_string(),
        viewers: c.viewers,
        threads: args.threads,
        slow: crate::share_of(c.viewers, args.slow_share),
        stalled: crate::share_of(c.viewers, args.stalled_share)
            .min(c.viewers - crate::share_of(c.viewers, args.slow_share)),
        slow_bytes_per_s: args.slow_kbps * 1000 / 8,
    })
    .map_err(|e| format!("start viewers: {e}"))?;
    let deadline = Instant::now() + secs(args.connect_timeout);
    while load.settled() < c.viewers && Instant::now() < deadline {
        srv.check_alive()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    if load.settled() < c.viewers {
        eprintln!(
            "warning: {} of {} viewers unsettled after {:.0} s",
            c.viewers - load.settled(),
            c.viewers,
            args.connect_timeout
        );
    }
    std::thread::sleep(secs(args.warmup));
    srv.check_alive()?;
    let pid = srv.pid;
    let mut win = if pid > 0 {
        Some(Window::begin(pid).map_err(|e| format!("/proc/{pid}: {e}"))?)
    } else {
        None
    };
    let lg0 = sys::self_cpu_seconds();
    let t0 = Instant::now();
    load.begin_measure();
    let window = secs(args.seconds);
    let mut died = None;
    while t0.elapsed() < window {
        std::thread::sleep((window - t0.elapsed().min(window)).min(Duration::from_millis(200)));
        if let Some(w) = win.as_mut() {
            if let Err(e) = w.update(pid) {
                died = Some(format!("server pid {pid} gone during the run: {e}"));
                break;
            }
        }
    }
    load.stop();
    let elapsed = t0.elapsed().as_secs_f64();
    let loadgen_cpu = sys::self_cpu_seconds() - lg0;
    if let Some(w) = win.as_mut() {
        let _ = w.update(pid);
    }
    let viewers = load.finish()?;
    if let Some(e) = died {
        return Err(e);
    }
    Ok(report::row(&Measured {
        server: label,
        width: c.width,
        height: c.height,
        fps: c.fps,
        seconds: elapsed,
        viewers: &viewers,
        server_cpu_s: win.map_or(0.0, |w| w.cpu_seconds()),
        peak_rss_kib: win.map_or(0, |w| w.peak_rss_kib),
        loadgen_cpu_s: loadgen_cpu,
    }))
}
