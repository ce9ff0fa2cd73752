//! The server processes under test: the beltcam daemon (spawned on a free loopback port, or an
//! already running one attached by URL and PID) and the raw baseline (this binary re-run with the
//! hidden `__baseline` subcommand).
//!
//! Spawned children die with the bench (PR_SET_PDEATHSIG) and are stopped with SIGTERM then, past a
//! deadline, SIGKILL, so no run leaves a server behind. The daemon's output goes to a log file whose
//! tail is quoted when it fails to start.

use crate::http;
use crate::sys;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct ServerProc {
    pub addr: SocketAddrV4,
    pub pid: u32,
    child: Option<Child>,
    log: Option<PathBuf>,
}

/// How a daemon is started.
pub struct DaemonSpec<'a> {
    pub bin: &'a Path,
    pub backend: &'a str,
    pub source: String,
    pub extra_args: &'a [String],
    pub log: PathBuf,
    pub ready_timeout: Duration,
}

impl ServerProc {
    pub fn spawn_daemon(spec: &DaemonSpec<'_>) -> Result<Self, String> {
        let port = beltcam_testkit::try_free_port().map_err(|e| format!("free port: {e}"))?;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let log =
            File::create(&spec.log).map_err(|e| format!("create {}: {e}", spec.log.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new(spec.bin);
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--source")
            .arg(&spec.source)
            .arg("--io-backend")
            .arg(spec.backend);
        // All viewers come from 127.0.0.1: lift the per-IP limits (sessions and connects/minute)
        // unless the caller sets them.
        for (flag, value) in beltcam_testkit::LOOPBACK_LIMIT_FLAGS {
            if !spec.extra_args.iter().any(|a| a.starts_with(flag)) {
                cmd.arg(flag).arg(value);
            }
        }
        cmd.args(spec.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        // SAFETY: the closure only calls prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(sys::die_with_parent);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start daemon {}: {e}", spec.bin.display()))?;
        let mut me = Self {
            addr,
            pid: child.id(),
            child: Some(child),
            log: Some(spec.log.clone()),
        };
        let ready = {
            let child = &mut me.child;
            http::wait_ready(addr, spec.ready_timeout, || check_child(child))
        };
        if let Err(e) = ready {
            let tail = me.log_tail();
            let _ = me.stop();
            return Err(format!("{e}\n--- daemon log (tail) ---\n{tail}"));
        }
        Ok(me)
    }

    pub fn spawn_baseline(frame: &Path, fps: u32, max_seconds: u64) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg("__baseline")
            .arg("--frame")
            .arg(frame)
            .arg("--fps")
            .arg(fps.to_string())
            .arg("--max-seconds")
            .arg(max_seconds.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start baseline: {e}"))?;
        let pid = child.id();
        let out = child.stdout.take().ok_or("baseline stdout missing")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(out).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let mut me = Self {
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            pid,
            child: Some(child),
            log: None,
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(line)) => match line.trim().parse::<u16>() {
                Ok(port) if port > 0 => me.addr.set_port(port),
                _ => {
                    let _ = me.stop();
                    return Err(format!("baseline printed {line:?} instead of its port"));
                }
            },
            Ok(Err(e)) => {
                let _ = me.stop();
                return Err(format!("reading baseline port: {e}"));
            }
            Err(_) => {
                let _ = me.stop();
                return Err("baseline did not report its port within 10 s".into());
            }
        }
        Ok(me)
    }

    /// An already running daemon; it is measured but never stopped.
    pub fn attach(addr: SocketAddrV4, pid: u32) -> Self {
        Self {
            addr,
            pid,
            child: None,
            log: None,
        }
    }

    pub fn check_alive(&mut self) -> Result<(), String> {
        check_child(&mut self.child)
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s. Attached servers are left running.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        let _ = sys::kill(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("wait for pid {}: {e}", self.pid)),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "pid {} ignored SIGTERM for 5 s and was killed",
            self.pid
        ))
    }

    /// The last ~2 KiB of the daemon's log.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let Ok(mut f) = File::open(path) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(2048)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: {e}");
        }
    }
}

fn check_child(child: &mut Option<Child>) -> Result<(), String> {
    match child.as_mut().map(|c| c.try_wait()) {
        Some(Ok(Some(status))) => Err(format!("server exited early ({status})")),
        Some(Err(e)) => Err(format!("wait: {e}")),
        _ => Ok(()),
    }
}
