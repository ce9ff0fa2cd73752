//! Shutdown: the first SIGTERM/SIGINT starts a graceful stop, a second one exits at once.
//!
//! Signals are blocked in every thread and taken by one thread with `sigwait`, so no handler runs
//! in an arbitrary thread and the async runtimes need no signal driver. Everything that waits also
//! watches `Shutdown`, so a stop is noticed within one wait.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use tokio::sync::watch;
use tracing::{info, warn};

pub struct Shutdown {
    /// Set by SIGHUP, taken by the supervisor.
    reload: AtomicBool,
    /// Listening sockets to close first when exiting at once (the second signal).
    listeners: Mutex<Vec<RawFd>>,
    flag: AtomicBool,
    tx: watch::Sender<bool>,
    lock: Mutex<bool>,
    cv: Condvar,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            reload: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            flag: AtomicBool::new(false),
            tx: watch::channel(false).0,
            lock: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
        self.tx.send_replace(true);
        if let Ok(mut g) = self.lock.lock() {
            *g = true;
            self.cv.notify_all();
        }
    }

    /// Asks the supervisor to re-read the configuration (wakes it from `wait_timeout`).
    pub fn request_reload(&self) {
        self.reload.store(true, Ordering::Release);
        if let Ok(_g) = self.lock.lock() {
            self.cv.notify_all();
        }
    }

    /// Whether a reload was requested since the last call.
    pub fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::AcqRel)
    }

    /// Remembers a listening socket to shut down before an immediate exit.
    pub fn register_listener(&self, fd: RawFd) {
        if let Ok(mut l) = self.listeners.lock() {
            l.push(fd);
        }
    }

    /// Exits the process now, listening sockets first: shutting them down frees the port at once,
    /// so a restart right after binds it (the io_uring instance that holds them is torn down
    /// asynchronously after exit, and would otherwise keep the port a moment longer).
    pub fn exit_now(&self, code: i32) -> ! {
        if let Ok(l) = self.listeners.lock() {
            for &fd in l.iter() {
                // SAFETY: plain syscall; the process exits right after.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        }
        std::process::exit(code)
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Blocks the calling thread until triggered, a reload is requested, or `timeout`; true if
    /// triggered.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let Ok(g) = self.lock.lock() else {
            return self.is_triggered();
        };
        let waiting = |t: &mut bool| !*t && !self.reload.load(Ordering::Acquire);
        match self.cv.wait_timeout_while(g, timeout, waiting) {
            Ok((g, _)) => *g,
            Err(_) => self.is_triggered(),
        }
    }
}

/// Resolves when shutdown is triggered.
pub async fn triggered(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|t| *t).await;
}

/// Signals whose default action would kill the daemon without a graceful stop (systemd counts a
/// death by SIGHUP as a clean exit, so `Restart=on-failure` would not even bring it back): taken
/// by the signal thread and ignored, logged once each.
const IGNORED: [Signal; 3] = [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGALRM];

fn signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    for s in IGNORED {
        set.add(s);
    }
    set
}

/// Blocks the signals beltcam handles in the calling thread, so every thread spawned after
/// inherits the mask. Call first thing in `main`.
pub fn block_signals() -> nix::Result<()> {
    signals().thread_block()
}

/// Starts the thread that turns signals into shutdown.
pub fn spawn_signal_thread(shutdown: Arc<Shutdown>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = signals();
            let mut seen = 0;
            let mut logged = Vec::new();
            loop {
                let Ok(sig) = set.wait() else { continue };
                if sig == Signal::SIGHUP {
                    info!("SIGHUP: re-reading the configuration");
                    shutdown.request_reload();
                    continue;
                }
                if IGNORED.contains(&sig) {
                    if !logged.contains(&sig) {
                        warn!(signal = %sig, "signal ignored (logged once)");
                        logged.push(sig);
                    }
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    info!(signal = %sig, "shutting down (send again to exit at once)");
                    shutdown.trigger();
                } else {
                    warn!(signal = %sig, "second signal: exiting now");
                    shutdown.exit_now(128 + sig as i32);
                }
            }
        })
        .map(|_| ())
}
