//! `beltcam-bench`: measures beltcam against a raw baseline server under N loopback MJPEG viewers.
//!
//! This file holds the command line and turns it into a list of configurations; `run` drives them.
//! See `--help`. The hidden `__baseline` subcommand is the raw server process the bench spawns.

mod baseline;
mod http;
mod procstat;
mod report;
mod run;
mod server;
mod sys;
mod viewer;

/// The multipart parser the viewers and `http::fetch_frame` use, shared with the tests.
use beltcam_testkit::multipart;

use clap::{Parser, Subcommand};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "beltcam-bench",
    about = "Load generator and raw baseline for beltcam: N loopback MJPEG viewers per configuration,\n\
             server CPU/RSS from /proc, latency from X-Timestamp, CPU per GB vs. a raw baseline"
)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Viewer counts, comma-separated (each 1..=10000). Beltcam's session table holds 1024 (its
    /// compiled capacity); beyond that its extra viewers are refused with 503.
    #[arg(long, value_delimiter = ',', default_value = "5,100")]
    viewers: Vec<usize>,
    /// Frame sizes WxH, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1280x720", value_parser = parse_size)]
    size: Vec<(u16, u16)>,
    /// Frame rates, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "30")]
    fps: Vec<u32>,
    /// Daemon I/O backends to run: uring, epoll, auto; `none` runs only the baseline.
    #[arg(long, value_delimiter = ',', default_value = "uring,epoll")]
    backend: Vec<String>,
    /// Measured seconds per configuration.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of streaming after all viewers connected, before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// A named set of configurations: `issue6` (100 viewers 1280x720@30, 5 viewers 1280x720@30,
    /// 1000 viewers 640x480@30; both backends and the baseline each).
    #[arg(long)]
    preset: Option<String>,
    /// Quick end-to-end check: 2 s, 3 viewers, 320x240@15; exit 0 only if both the daemon and the
    /// baseline delivered frames.
    #[arg(long)]
    smoke: bool,
    /// The beltcam binary to start.
    #[arg(long, default_value = "target/release/beltcam")]
    daemon: PathBuf,
    /// Extra argument for the daemon (repeatable), e.g. --daemon-arg=--threads=2.
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Source given to the daemon, with {W} {H} {FPS} replaced. `dir:{DIR}@{FPS}` makes the daemon
    /// loop the same JPEG the baseline sends ({DIR} gets --frame, else a synthetic WxH JPEG), so no
    /// encoding is counted in its CPU.
    #[arg(long, default_value = "synthetic:{W}x{H}@{FPS}")]
    source: String,
    /// Attach to a running daemon instead of starting one (loopback only), e.g. http://127.0.0.1:8080.
    #[arg(long, requires = "pid")]
    url: Option<String>,
    /// PID of the daemon given by --url, for its CPU and RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Stream path the viewers request.
    #[arg(long, default_value = "/stream")]
    path: String,
    /// Percentage of each configuration's viewers that read slowly (at --slow-kbps), on every server.
    #[arg(long, default_value_t = 0.0)]
    slow_share: f64,
    /// Read rate of the slow viewers, in kbit/s.
    #[arg(long, default_value_t = 64)]
    slow_kbps: u64,
    /// Percentage of the viewers that read the response head and then never read again.
    #[arg(long, default_value_t = 0.0)]
    stalled_share: f64,
    /// Load-generator threads (each one epoll loop).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Skip the raw baseline.
    #[arg(long)]
    no_baseline: bool,
    /// JPEG the baseline sends (default: fetched from the daemon, else a synthetic one).
    #[arg(long)]
    frame: Option<PathBuf>,
    /// Seconds to wait for all viewers to connect.
    #[arg(long, default_value_t = 15.0)]
    connect_timeout: f64,
    /// Seconds to wait for the daemon's /health.
    #[arg(long, default_value_t = 15.0)]
    ready_timeout: f64,
    /// Also write the markdown table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The raw baseline server process (spawned by the bench itself).
    #[command(name = "__baseline", hide = true)]
    Baseline {
        #[arg(long)]
        frame: PathBuf,
        #[arg(long)]
        fps: u32,
        #[arg(long, default_value_t = 600)]
        max_seconds: u64,
    },
}

/// One point of the matrix; every server in `servers` is measured on it.
#[derive(Debug, Clone)]
pub struct Config {
    pub viewers: usize,
    pub width: u16,
    pub height: u16,
    pub fps: u32,
}

/// Most viewers in one configuration.
const MAX_VIEWERS: usize = 10_000;

/// How many of `viewers` a share of `pct` percent is (rounded, at most `viewers`).
pub fn share_of(viewers: usize, pct: f64) -> usize {
    ((viewers as f64 * pct / 100.0).round() as usize).min(viewers)
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or(format!("size {s:?} is not WxH"))?;
    let w: u16 = w.parse().map_err(|_| format!("bad width in {s:?}"))?;
    let h: u16 = h.parse().map_err(|_| format!("bad height in {s:?}"))?;
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        return Err(format!("size {s:?} out of range (1..=8192)"));
    }
    Ok((w, h))
}

/// `http://127.0.0.1:PORT[/path]` -> address and optional path; loopback only.
fn parse_url(url: &str) -> Result<(SocketAddrV4, Option<String>), String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    };
    let host = host.replace("localhost", "127.0.0.1");
    let addr: SocketAddrV4 = host
        .parse()
        .map_err(|_| format!("--url {url:?}: expected http://127.x.y.z:PORT"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--url {url:?}: only loopback (127.0.0.0/8) targets are allowed"
        ));
    }
    Ok((addr, path.filter(|p| p != "/")))
}

/// Applies --preset / --smoke and validates; returns the configurations and backends.
fn plan(args: &mut Args) -> Result<Vec<Config>, String> {
    if args.smoke {
        args.viewers = vec![3];
        args.size = vec![(320, 240)];
        args.fps = vec![15];
        args.seconds = 2.0;
        args.warmup = 0.5;
    } else if let Some(p) = &args.preset {
        if p != "issue6" {
            return Err(format!("unknown --preset {p:?} (known: issue6)"));
        }
        return Ok(vec![
            cfg(100, 1280, 720, 30),
            cfg(5, 1280, 720, 30),
            cfg(1000, 640, 480, 30),
        ]);
    }
    let mut out = Vec::new();
    for &(w, h) in &args.size {
        for &fps in &args.fps {
            for &n in &args.viewers {
                out.push(cfg(n, w, h, fps));
            }
        }
    }
    Ok(out)
}

fn cfg(viewers: usize, width: u16, height: u16, fps: u32) -> Config {
    Config {
        viewers,
        width,
        height,
        fps,
    }
}

fn validate(args: &Args, configs: &[Config]) -> Result<(), String> {
    for c in configs {
        if c.viewers == 0 || c.viewers > MAX_VIEWERS {
            return Err(format!(
                "viewers {} out of range (1..={MAX_VIEWERS})",
                c.viewers
            ));
        }
        if c.fps == 0 || c.fps > 240 {
            return Err(format!("fps {} out of range (1..=240)", c.fps));
        }
    }
    for b in &args.backend {
        if !matches!(b.as_str(), "uring" | "epoll" | "auto" | "none") {
            return Err(format!(
                "--backend {b:?}: expected uring, epoll, auto or none"
            ));
        }
    }
    if !(0.1..=3600.0).contains(&args.seconds) {
        return Err("--seconds must be within 0.1..=3600".into());
    }
    if !(0.0..=60.0).contains(&args.warmup) || !(0.1..=600.0).contains(&args.connect_timeout) {
        return Err("--warmup must be within 0..=60 and --connect-timeout within 0.1..=600".into());
    }
    let share_ok = |p: f64| (0.0..=100.0).contains(&p);
    if !share_ok(args.slow_share)
        || !share_ok(args.stalled_share)
        || args.slow_share + args.stalled_share > 100.0
    {
        return Err(
            "--slow-share and --stalled-share must be percentages summing to <= 100".into(),
        );
    }
    if args.slow_kbps == 0 || args.slow_kbps > 10_000_000 {
        return Err("--slow-kbps must be within 1..=10000000".into());
    }
    if args.threads == 0 || args.threads > 64 {
        return Err("--threads must be within 1..=64".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Cmd::Baseline {
        frame,
        fps,
        max_seconds,
    }) = &args.cmd
    {
        let res = std::fs::read(frame)
            .map_err(|e| format!("read {}: {e}", frame.display()))
            .and_then(|jpeg| baseline::serve(&jpeg, *fps, *max_seconds));
        return match res {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baseline: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let attach = match args.url.as_deref().map(parse_url).transpose() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("beltcam-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let configs = match plan(&mut args).and_then(|c| validate(&args, &c).map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("beltcam-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run::run(&args, &configs, attach) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("beltcam-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_loopback() {
        let (a, p) = parse_url("http://127.0.0.2:8080/cam/x/stream").expect("loopback");
        assert_eq!(a.port(), 8080);
        assert_eq!(p.as_deref(), Some("/cam/x/stream"));
        assert!(parse_url("http://localhost:80").is_ok());
        assert!(parse_url("http://10.0.0.1:8080").is_err());
        assert!(parse_url("http://example.com:80").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("640x480"), Ok((640, 480)));
        assert!(parse_size("640").is_err());
        assert!(parse_size("0x10").is_err());
    }

    #[test]
    fn shares() {
        assert_eq!(share_of(100, 10.0), 10);
        assert_eq!(share_of(3, 0.0), 0);
        assert_eq!(share_of(3, 100.0), 3);
        assert_eq!(share_of(5, 10.0), 1);
    }
}
