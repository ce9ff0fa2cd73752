//! `/metrics`: Prometheus text exposition (version 0.0.4). Base units, `_total` counters, a `camera`
//! label on per-camera series, and every name prefixed `beltcam_`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::app::App;
use crate::capture::CameraState;
use crate::stats;

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// A fixed-bucket histogram updated with atomics (no lock on the request path).
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Writes one metric family: HELP, TYPE and its samples (`labels` without braces, may be empty).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn load(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

pub fn render(app: &App) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let cams = &app.cameras;
    let label = |i: usize| format!("camera=\"{}\"", cams[i].name);
    let per_cam = |f: &dyn Fn(usize) -> f64| -> Vec<(String, f64)> {
        (0..cams.len()).map(|i| (label(i), f(i))).collect()
    };
    family(
        &mut out,
        "beltcam_frames_captured_total",
        "counter",
        "Frames delivered by the camera.",
        &per_cam(&|i| load(&cams[i].counters.captured)),
    );
    family(
        &mut out,
        "beltcam_frames_published_total",
        "counter",
        "Real frames published to viewers.",
        &per_cam(&|i| {
            load(&cams[i].pool.counters.published) - load(&cams[i].counters.placeholders)
        }),
    );
    family(
        &mut out,
        "beltcam_frames_dropped_total",
        "counter",
        "Frames lost (invalid, no free slot, encode failure).",
        &per_cam(&|i| load(&cams[i].counters.dropped)),
    );
    family(
        &mut out,
        "beltcam_frames_invalid_total",
        "counter",
        "Frames that were not valid JPEGs.",
        &per_cam(&|i| load(&cams[i].counters.invalid)),
    );
    family(
        &mut out,
        "beltcam_frames_oversize_total",
        "counter",
        "Frames larger than a pool slot.",
        &per_cam(&|i| load(&cams[i].pool.counters.oversize)),
    );
    family(
        &mut out,
        "beltcam_placeholder_frames_total",
        "counter",
        "NO SIGNAL frames published while offline.",
        &per_cam(&|i| load(&cams[i].counters.placeholders)),
    );
    family(
        &mut out,
        "beltcam_camera_fps",
        "gauge",
        "Real frames published per second.",
        &per_cam(&|i| load(&cams[i].counters.fps_milli) / 1000.0),
    );
    family(
        &mut out,
        "beltcam_camera_online",
        "gauge",
        "1 when the camera delivers frames, 0 when offline or starting.",
        &per_cam(&|i| (cams[i].state() == CameraState::Online) as u8 as f64),
    );
    let clients = app.sessions.clients_per_camera(cams.len());
    family(
        &mut out,
        "beltcam_camera_clients",
        "gauge",
        "Stream sessions per camera.",
        &per_cam(&|i| clients[i] as f64),
    );
    family(
        &mut out,
        "beltcam_sessions_active",
        "gauge",
        "Stream sessions open.",
        &[(String::new(), app.sessions.active() as f64)],
    );
    family(
        &mut out,
        "beltcam_sessions_capacity",
        "gauge",
        "Stream sessions the table admits.",
        &[(String::new(), app.sessions.capacity() as f64)],
    );
    let c = &app.counters;
    let g = &app.guard.counters;
    family(
        &mut out,
        "beltcam_sessions_rejected_total",
        "counter",
        "Clients refused, by reason.",
        &[
            ("reason=\"full\"".into(), load(&app.sessions.rejected_full)),
            ("reason=\"per_ip\"".into(), load(&g.rejected_per_ip)),
            ("reason=\"rate\"".into(), load(&g.rejected_rate)),
            ("reason=\"auth\"".into(), load(&c.rejected_auth)),
            ("reason=\"pending\"".into(), load(&c.pending_rejected)),
            ("reason=\"events_full\"".into(), load(&app.events.rejected)),
        ],
    );
    family(
        &mut out,
        "beltcam_connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        &[(String::new(), load(&c.accepted))],
    );
    family(
        &mut out,
        "beltcam_http_errors_total",
        "counter",
        "Error responses, by status code.",
        &[
            ("code=\"400\"".into(), load(&c.bad_request)),
            ("code=\"404\"".into(), load(&c.not_found)),
            ("code=\"405\"".into(), load(&c.method_not_allowed)),
            ("code=\"408\"".into(), load(&c.request_timeouts)),
            ("code=\"431\"".into(), load(&c.too_large)),
        ],
    );
    family(
        &mut out,
        "beltcam_send_timeouts_total",
        "counter",
        "Sessions ended because a send stalled.",
        &[(String::new(), load(&c.send_timeouts))],
    );
    family(
        &mut out,
        "beltcam_bytes_sent_total",
        "counter",
        "Bytes written to clients.",
        &[(String::new(), load(&c.bytes_sent))],
    );
    family(
        &mut out,
        "beltcam_events_lost_total",
        "counter",
        "Events lost by subscribers that fell behind.",
        &[(String::new(), load(&app.events.lost))],
    );
    app.latency.render(
        &mut out,
        "beltcam_http_request_duration_seconds",
        "Time from a complete request head to the response written (streams excluded).",
    );
    family(
        &mut out,
        "beltcam_process_resident_memory_bytes",
        "gauge",
        "Resident set size.",
        &[(String::new(), stats::rss_bytes() as f64)],
    );
    family(
        &mut out,
        "beltcam_process_open_fds",
        "gauge",
        "Open file descriptors.",
        &[(String::new(), stats::open_fds() as f64)],
    );
    family(
        &mut out,
        "beltcam_uptime_seconds",
        "gauge",
        "Seconds since start.",
        &[(String::new(), app.health.uptime().as_secs_f64())],
    );
    family(
        &mut out,
        "beltcam_io_backend_info",
        "gauge",
        "The io backend in use.",
        &[(format!("backend=\"{}\"", app.backend.as_str()), 1.0)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.0001\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.005\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(
            s.contains("x_bucket{le=\"+Inf\"} 3\nx_sum 5.00305\nx_count 3\n"),
            "{s}"
        );
    }
}
