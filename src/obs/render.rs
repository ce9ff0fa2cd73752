//! `/health` and `/stats` bodies, and the process figures (RSS, open fds) they report.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use crate::app::App;
use crate::capture::{now_us, Camera, CameraState};
use crate::health::Status;
use crate::limits::{POOL_SLOTS, SLOT_BYTES};

/// Resident set size in bytes, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page)
        .unwrap_or(0)
}

/// Open file descriptors, from /proc/self/fd.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1) as u64) // minus the one read_dir holds
        .unwrap_or(0)
}

/// Age of the newest real frame, if there was one.
pub fn last_frame_age(cam: &Camera) -> Option<Duration> {
    let last = cam.counters.last_frame_us.load(Ordering::Relaxed);
    (last != 0).then(|| Duration::from_micros(now_us().saturating_sub(last)))
}

/// A camera is stale when its newest frame is older than three frame periods, and at least 2 s.
fn stale_after(cam: &Camera) -> Duration {
    let fps = cam.spec.nominal_fps().unwrap_or(1.0).max(0.01);
    Duration::from_secs_f64((3.0 / fps).max(2.0))
}

fn camera_status(cam: &Camera) -> (Status, String) {
    let (_, reason) = cam.detail();
    match (cam.state(), last_frame_age(cam)) {
        (CameraState::Online, Some(age)) if age <= stale_after(cam) => (Status::Ok, String::new()),
        (CameraState::Online, Some(age)) => (
            Status::Degraded,
            format!("no frame for {:.1} s", age.as_secs_f64()),
        ),
        (CameraState::Online | CameraState::Starting, None) => {
            (Status::Degraded, "no frame yet".into())
        }
        (CameraState::Starting, Some(_)) => (Status::Degraded, "starting".into()),
        (CameraState::Offline, _) => (Status::Degraded, format!("offline: {reason}")),
    }
}

/// The overall verdict and the `/health` body.
pub fn health(app: &App) -> (Status, Value) {
    let mut status = Status::Ok;
    let cameras: Vec<Value> = app
        .cameras
        .iter()
        .map(|cam| {
            let (s, reason) = camera_status(cam);
            if s != Status::Ok {
                status = Status::Degraded;
            }
            json!({
                "name": cam.name,
                "status": s.as_str(),
                "state": cam.state().as_str(),
                "reason": reason,
                "last_frame_age_s": last_frame_age(cam).map(|d| d.as_secs_f64()),
                "fps": cam.counters.fps_milli.load(Ordering::Relaxed) as f64 / 1000.0,
            })
        })
        .collect();
    let wedged = app.health.wedged();
    if wedged.is_some() {
        status = Status::Down;
    }
    let body = json!({
        "status": status.as_str(),
        "uptime_s": app.health.uptime().as_secs_f64(),
        "cameras": cameras,
        "wedged_thread": wedged,
    });
    (status, body)
}

/// The `/stats` (and ustreamer-style `/state`) body.
pub fn stats(app: &App) -> Value {
    let clients = app.sessions.clients_per_camera(app.cameras.len());
    let c = &app.counters;
    let cameras: Vec<Value> = app
        .cameras
        .iter()
        .zip(clients)
        .map(|(cam, clients)| {
            let (info, reason) = cam.detail();
            let pc = &cam.pool.counters;
            let k = &cam.counters;
            json!({
                "name": cam.name,
                "source": cam.spec.to_string(),
                "state": cam.state().as_str(),
                "reason": reason,
                "format": info.format,
                "width": info.width,
                "height": info.height,
                "negotiated_fps": info.fps,
                "passthrough": info.passthrough,
                "clients": clients,
                "last_frame_age_s": last_frame_age(cam).map(|d| d.as_secs_f64()),
                "frames": {
                    "captured": k.captured.load(Ordering::Relaxed),
                    "published": pc.published.load(Ordering::Relaxed) - k.placeholders.load(Ordering::Relaxed),
                    "dropped": k.dropped.load(Ordering::Relaxed),
                    "invalid": k.invalid.load(Ordering::Relaxed),
                    "oversize": pc.oversize.load(Ordering::Relaxed),
                    "no_free_slot": pc.no_free_slot.load(Ordering::Relaxed),
                    "placeholders": k.placeholders.load(Ordering::Relaxed),
                    "fps": k.fps_milli.load(Ordering::Relaxed) as f64 / 1000.0,
                },
                "leases": cam.pool.leased(),
            })
        })
        .collect();
    json!({
        "io_backend": app.backend.as_str(),
        "uptime_s": app.health.uptime().as_secs_f64(),
        "sessions": {
            "active": app.sessions.active(),
            "capacity": app.sessions.capacity(),
            "rejected_full": app.sessions.rejected_full.load(Ordering::Relaxed),
            "opened": app.sessions.opened.load(Ordering::Relaxed),
        },
        "connections": {
            "accepted": c.accepted.load(Ordering::Relaxed),
            "pending": app.pending.load(Ordering::Relaxed),
            "pending_rejected": c.pending_rejected.load(Ordering::Relaxed),
        },
        "requests": {
            "total": c.requests.load(Ordering::Relaxed),
            "bad_request": c.bad_request.load(Ordering::Relaxed),
            "too_large": c.too_large.load(Ordering::Relaxed),
            "not_found": c.not_found.load(Ordering::Relaxed),
            "method_not_allowed": c.method_not_allowed.load(Ordering::Relaxed),
            "request_timeouts": c.request_timeouts.load(Ordering::Relaxed),
            "send_timeouts": c.send_timeouts.load(Ordering::Relaxed),
        },
        "guard": {
            "tracked_ips": app.guard.tracked(),
            "rejected_rate": app.guard.counters.rejected_rate.load(Ordering::Relaxed),
            "rejected_per_ip": app.guard.counters.rejected_per_ip.load(Ordering::Relaxed),
            "rejected_auth": c.rejected_auth.load(Ordering::Relaxed),
            "evictions": app.guard.counters.evictions.load(Ordering::Relaxed),
        },
        "events": {
            "subscribers": app.events.subscribers(),
            "emitted": app.events.emitted.load(Ordering::Relaxed),
            "lost": app.events.lost.load(Ordering::Relaxed),
        },
        "bytes_sent": c.bytes_sent.load(Ordering::Relaxed),
        "pool": {
            "slots": POOL_SLOTS,
            "slot_bytes": SLOT_BYTES,
            "bytes_per_camera": POOL_SLOTS * SLOT_BYTES,
        },
        "cameras": cameras,
        "process": {
            "rss_bytes": rss_bytes(),
            "open_fds": open_fds(),
            "threads": app.health.threads().len(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_plausible() {
        assert!(rss_bytes() > 1024 * 1024);
        // stdin, stdout, stderr at least; other tests run in parallel, so no exact count.
        assert!(open_fds() >= 3);
    }
}
