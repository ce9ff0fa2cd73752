//! systemd integration: readiness and status notifications, the watchdog, and socket activation.
//!
//! `Type=notify`: READY=1 only once the listeners are bound and the cameras started; STATUS= keeps
//! `systemctl status` showing per-camera fps and clients; WATCHDOG=1 is sent only while every
//! long-lived thread's heartbeat advances, so a wedged thread gets the daemon restarted, while an
//! unplugged camera (whose capture thread keeps beating as it retries) does not.
//! Everything here is a no-op when not started by systemd (no NOTIFY_SOCKET / LISTEN_FDS).

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// How often the watchdog must be fed, if systemd asked for it (WATCHDOG_USEC, and WATCHDOG_PID
/// naming this process when set, as sd_watchdog_enabled(3) reads them).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// `watchdog_interval` on given values, so the decision is tested without touching the environment.
fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok()?;
    if let Some(pid) = pid {
        if pid.parse::<u32>().ok()? != me {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn notify(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        warn!(%e, "cannot notify systemd");
    }
}

pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// A reload began (`ready` follows once it is applied or refused). systemd 253 and later require
/// the monotonic time with it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

pub fn status(line: &str) {
    notify(&[NotifyState::Status(line)]);
}

/// Listening sockets passed by systemd (socket activation), as non-blocking std listeners. Must be
/// called before other threads start: it unsets LISTEN_FDS/LISTEN_PID so children don't inherit them.
pub fn take_listeners() -> std::io::Result<Vec<TcpListener>> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()?.collect();
    let mut out = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: systemd passed us this fd (LISTEN_PID is ours) and nothing else owns it.
        let l = unsafe { TcpListener::from_raw_fd(fd) };
        l.set_nonblocking(true)?;
        debug!(fd, addr = ?l.local_addr().ok(), "socket-activated listener");
        out.push(l);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_only_when_asked_for_this_process() {
        let f = watchdog_interval_from;
        assert_eq!(f(None, None, 7), None, "no WATCHDOG_USEC: no watchdog");
        assert_eq!(f(Some("20000000"), None, 7), Some(Duration::from_secs(20)));
        assert_eq!(
            f(Some("20000000"), Some("7"), 7),
            Some(Duration::from_secs(20))
        );
        // Inherited from a parent that systemd watches: not ours (sd_watchdog_enabled(3)).
        assert_eq!(f(Some("20000000"), Some("8"), 7), None);
        for bad in [
            ("0", None),
            ("x", None),
            ("-5", None),
            ("20000000", Some("x")),
        ] {
            assert_eq!(f(Some(bad.0), bad.1, 7), None, "{bad:?}");
        }
    }
}
