//! Liveness: one heartbeat per long-lived thread, and the health verdict built from them and from
//! each camera's state.
//!
//! A thread that stops beating is wedged; the daemon then reports `down` and stops pinging the systemd
//! watchdog so it gets restarted. A camera that is unplugged is not wedged: its capture thread keeps
//! beating while it retries, and health says `degraded` with the reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::stats::{CameraState, CameraView, Snapshot};

/// A thread stalled longer than this is reported as wedged.
pub const WEDGED_AFTER: Duration = Duration::from_secs(5);

pub struct Heartbeat {
    pub name: String,
    epoch: Instant,
    last_ms: AtomicU64,
    beats: AtomicU64,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }
}

/// Every heartbeat in the process.
pub struct Health {
    epoch: Instant,
    beats: Mutex<Vec<Arc<Heartbeat>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Health {
            epoch: Instant::now(),
            beats: Mutex::new(Vec::new()),
        }
    }

    /// Registers a thread's heartbeat (it starts as just beaten).
    pub fn register(&self, name: impl Into<String>) -> Arc<Heartbeat> {
        let hb = Arc::new(Heartbeat {
            name: name.into(),
            epoch: self.epoch,
            last_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            beats: AtomicU64::new(0),
        });
        if let Ok(mut v) = self.beats.lock() {
            v.push(Arc::clone(&hb));
        }
        hb
    }

    /// Forgets a heartbeat whose thread ended for good (a camera a reload removed), so its silence
    /// is not taken for a wedged thread.
    pub fn unregister(&self, hb: &Arc<Heartbeat>) {
        if let Ok(mut v) = self.beats.lock() {
            v.retain(|h| !Arc::ptr_eq(h, hb));
        }
    }

    /// Name and age of each heartbeat.
    pub fn threads(&self) -> Vec<(String, Duration)> {
        self.beats
            .lock()
            .map(|v| v.iter().map(|h| (h.name.clone(), h.age())).collect())
            .unwrap_or_default()
    }

    /// The first thread whose heartbeat is older than `WEDGED_AFTER`, if any.
    pub fn wedged(&self) -> Option<String> {
        self.threads()
            .into_iter()
            .find(|(_, age)| *age > WEDGED_AFTER)
            .map(|(n, _)| n)
    }

    pub fn uptime(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// Debug builds only: `BELTCAM_DEBUG_WEDGE=NAME` with `BELTCAM_DEBUG_WEDGE_AFTER_MS=N` blocks the
/// thread owning heartbeat NAME forever once the process is N ms old, so tests can prove that the
/// watchdog stops being fed and /health says `down`. Never compiled into release builds.
#[cfg(debug_assertions)]
pub fn debug_wedge_hook(hb: &Heartbeat) {
    let Ok(name) = std::env::var("BELTCAM_DEBUG_WEDGE") else {
        return;
    };
    let after = std::env::var("BELTCAM_DEBUG_WEDGE_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if name == hb.name && hb.epoch.elapsed() >= Duration::from_millis(after) {
        tracing::warn!(thread = %name, "debug hook: wedging this thread");
        loop {
            std::thread::park();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Degraded,
    Down,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Down => "down",
        }
    }
}

/// A camera is stale when its newest frame is older than three frame periods, and at least 2 s.
pub fn stale_after(nominal_fps: Option<f64>) -> Duration {
    let fps = nominal_fps.unwrap_or(1.0).max(0.01);
    Duration::from_secs_f64((3.0 / fps).max(2.0))
}

/// One camera's verdict and, when not ok, why.
pub fn camera_verdict(cam: &CameraView) -> (Status, String) {
    if cam.recording.as_ref().is_some_and(|r| r.disk_low) {
        return (Status::Degraded, "recording paused: disk low".into());
    }
    match (cam.state, cam.last_frame_age) {
        // Capture on demand: stopped for want of viewers, which is fine.
        (CameraState::Idle, _) => (Status::Ok, String::new()),
        // A camera that delivers but loses frames (larger than a slot) says why.
        (CameraState::Online | CameraState::Starting, _) if !cam.reason.is_empty() => {
            (Status::Degraded, cam.reason.clone())
        }
        (CameraState::Online, Some(age)) if age <= stale_after(cam.nominal_fps) => {
            (Status::Ok, String::new())
        }
        (CameraState::Online, Some(age)) => (
            Status::Degraded,
            format!("no frame for {:.1} s", age.as_secs_f64()),
        ),
        (CameraState::Online | CameraState::Starting, None) => {
            (Status::Degraded, "no frame yet".into())
        }
        (CameraState::Starting, Some(_)) => (Status::Degraded, "starting".into()),
        (CameraState::Offline, _) => (Status::Degraded, format!("offline: {}", cam.reason)),
    }
}

/// The daemon's verdict: down when a thread is wedged, degraded when a camera is not ok.
pub fn verdict(snap: &Snapshot) -> Status {
    if snap.wedged.is_some() {
        Status::Down
    } else if snap
        .cameras
        .iter()
        .all(|c| camera_verdict(c).0 == Status::Ok)
    {
        Status::Ok
    } else {
        Status::Degraded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_heartbeats_are_not_wedged() {
        let h = Health::new();
        let a = h.register("capture:a");
        a.beat();
        assert_eq!(h.wedged(), None);
        assert_eq!(h.threads().len(), 1);
        assert!(a.age() < WEDGED_AFTER);
        assert_eq!(a.beats(), 1);
    }
}
