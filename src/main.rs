//! The `beltcam` binary: arguments, logging, configuration, and the threads. Exit codes live here:
//! 0 after a graceful stop, 1 when start-up fails (bind, io backend), 2 on a configuration error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use beltcam::admit::auth::Auth;
use beltcam::config::{CameraConfig, Config, IoBackendChoice, Settings};
use beltcam::{daemon, shutdown, systemd};

#[derive(Parser, Debug)]
#[command(
    name = "beltcam",
    version,
    about = "Bounded, zero-copy MJPEG streaming for V4L2 cameras"
)]
/// Every flag is global, so `beltcam check-config --source ...` checks what `beltcam --source ...`
/// would run.
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (default: /etc/beltcam/beltcam.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on, repeatable; replaces server.listen.
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    listen: Vec<String>,
    /// Camera source `[NAME=]SPEC`, repeatable; replaces the configured cameras.
    /// SPEC: synthetic[:WxH@FPS] | dir:PATH[@FPS] | v4l2:DEVICE[:WxH@FPS[:FORMAT]]
    #[arg(long, global = true, value_name = "[NAME=]SPEC")]
    source: Vec<String>,
    /// io backend: auto probes io_uring and falls back to epoll.
    #[arg(long, global = true, value_enum)]
    io_backend: Option<IoBackendChoice>,
    /// Log level or tracing filter (error, warn, info, debug, trace).
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Serving threads (0: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Concurrent stream sessions (at most the compiled capacity).
    #[arg(long, global = true)]
    max_sessions: Option<usize>,
    /// Send timeout for one frame, in milliseconds.
    #[arg(long, global = true)]
    send_timeout_ms: Option<u64>,
    /// Deadline for a request head, in milliseconds.
    #[arg(long, global = true)]
    request_timeout_ms: Option<u64>,
    /// Concurrent stream sessions from one client IP.
    #[arg(long, global = true)]
    max_clients_per_ip: Option<usize>,
    /// New connections per minute from one client IP.
    #[arg(long, global = true)]
    connects_per_minute: Option<u32>,
    /// File holding the admin bearer token.
    #[arg(long, global = true, value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
    /// File of user:password lines required of viewers.
    #[arg(long, global = true, value_name = "PATH")]
    viewers_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Check the configuration and print the effective settings, then exit.
    CheckConfig,
    /// List V4L2 devices with their formats, sizes and frame rates, then exit.
    Devices {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Applies command-line overrides to the file's configuration.
fn apply_flags(cli: &Cli, cfg: &mut Config) {
    let s = &mut cfg.server;
    if !cli.listen.is_empty() {
        s.listen = cli.listen.clone();
    }
    if let Some(b) = cli.io_backend {
        s.io_backend = b;
    }
    if let Some(t) = cli.threads {
        s.threads = t;
    }
    if let Some(m) = cli.max_sessions {
        s.max_sessions = m;
    }
    if let Some(t) = cli.send_timeout_ms {
        s.send_timeout_ms = t;
    }
    if let Some(t) = cli.request_timeout_ms {
        s.request_timeout_ms = t;
    }
    if let Some(m) = cli.max_clients_per_ip {
        cfg.limits.max_clients_per_ip = m;
    }
    if let Some(c) = cli.connects_per_minute {
        cfg.limits.connects_per_minute = c;
    }
    if let Some(p) = &cli.admin_token_file {
        cfg.auth.admin_token_file = Some(p.clone());
    }
    if let Some(p) = &cli.viewers_file {
        cfg.auth.viewers_file = Some(p.clone());
    }
    if let Some(l) = &cli.log_level {
        cfg.log.level = l.clone();
    }
    if !cli.source.is_empty() {
        cfg.cameras = cli
            .source
            .iter()
            .enumerate()
            .map(|(i, arg)| {
                // NAME=SPEC; a bare SPEC gets cam0, cam1, ...
                let (name, spec) = match arg.split_once('=') {
                    Some((n, s)) if !n.contains(':') && !n.contains('/') => (n.to_string(), s),
                    _ => (format!("cam{i}"), arg.as_str()),
                };
                CameraConfig::new(name, spec.to_string())
            })
            .collect();
    }
}

/// The configuration in effect (file, then flags) and its validated settings.
fn load_settings(cli: &Cli) -> Result<(Config, Settings), beltcam::config::ConfigError> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    apply_flags(cli, &mut cfg);
    let settings = cfg.validate()?;
    Ok((cfg, settings))
}

/// `check-config`'s output: the effective configuration as TOML (a valid config file), then the
/// worst-case memory breakdown as TOML comments.
fn render_check(cfg: &Config, settings: &Settings) -> Result<String, toml::ser::Error> {
    let mut out = String::from("# beltcam: configuration is valid; effective settings:\n");
    out += &toml::to_string(cfg)?;
    let b = &settings.budget;
    out += &format!(
        "\n# worst-case memory: {} MiB of a {} MiB budget ([limits] memory_budget_mb)\n",
        b.total_mib(),
        settings.memory_budget_mb
    );
    for i in &b.items {
        out += &format!("#   {:>9} KiB  {}\n", i.bytes.div_ceil(1024), i.what);
    }
    Ok(out)
}

/// Writes a subcommand's output to stdout: exit 0, or 1 with one line when it cannot be rendered
/// or written.
#[allow(clippy::print_stderr)]
fn print_out<E: std::fmt::Display>(out: Result<String, E>) -> ExitCode {
    let written = out
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|o| std::io::Write::write_all(&mut std::io::stdout(), o.as_bytes()));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("beltcam: {e}");
            ExitCode::from(1)
        }
    }
}

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    // Before any thread exists, so all of them inherit the blocked mask.
    if let Err(e) = shutdown::block_signals() {
        eprintln!("beltcam: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    // Also before any thread: taking the passed sockets unsets LISTEN_FDS in the environment.
    let passed = match systemd::take_listeners() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("beltcam: cannot use the sockets passed by systemd: {e}");
            return ExitCode::from(1);
        }
    };
    let cli = Cli::parse();
    let (cfg, settings, auth) = match load_settings(&cli).and_then(|(c, s)| {
        let auth = Auth::load(&s.auth)?;
        Ok((c, s, auth))
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("beltcam: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = beltcam::logging::init(&settings.log_level) {
        eprintln!("beltcam: {e}");
        return ExitCode::from(2);
    }
    match &cli.command {
        Some(Command::CheckConfig) => print_out(render_check(&cfg, &settings)),
        Some(Command::Devices { json }) => {
            let devices = beltcam::capture::devices::list();
            print_out(if *json {
                serde_json::to_string_pretty(&devices).map(|j| j + "\n")
            } else {
                Ok(beltcam::capture::devices::render_text(&devices))
            })
        }
        Some(Command::Run) | None => run(&cli, settings, auth, passed),
    }
}

fn run(cli: &Cli, settings: Settings, auth: Auth, passed: Vec<std::net::TcpListener>) -> ExitCode {
    info!(
        worst_case_mib = settings.budget.total_mib(),
        budget_mib = settings.memory_budget_mb,
        "memory: worst case of this configuration (check-config itemises it)"
    );
    let shutdown = Arc::new(shutdown::Shutdown::new());
    if let Err(e) = shutdown::spawn_signal_thread(Arc::clone(&shutdown)) {
        error!(%e, "cannot start the signal thread");
        return ExitCode::from(1);
    }
    let mut running = match daemon::start(settings, auth, Arc::clone(&shutdown), passed) {
        Ok(r) => r,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    // SIGHUP: the file is re-read and checked with the same one-line errors as at start-up; a valid
    // one is applied live (see `Running::apply`), an invalid one leaves the running configuration.
    let reload = || match load_settings(cli).and_then(|(_, s)| Auth::load(&s.auth).map(|a| (s, a)))
    {
        Ok(new) => Some(new),
        Err(e) => {
            error!("reload refused, the running configuration stays: {e}");
            None
        }
    };
    running.supervise(&reload);
    // Graceful: sessions see shutdown at once; give serving threads a bounded moment to close
    // their sockets, then exit whatever is still in flight (the kernel closes the rest).
    if let Err(e) = running.join_serving(Duration::from_millis(700)) {
        error!(%e, "a serving thread failed");
        return ExitCode::from(1);
    }
    info!("stopped");
    ExitCode::SUCCESS
}
