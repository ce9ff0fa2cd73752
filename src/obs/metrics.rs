//! `/metrics`: Prometheus text exposition (version 0.0.4), rendered from a [`Snapshot`]. Base
//! units, `_total` counters (integers, never computed in floating point, so they cannot step
//! backwards), a `camera` label on per-camera series, and every name prefixed `beltcam_`.

use std::fmt::Write;

use super::histogram::{HistogramStats, LATENCY_BUCKETS};
use super::stats::{CameraState, CameraView, Snapshot};

/// A sample value: counters and gauges of counts are integers; rates and seconds are floats.
#[derive(Clone, Copy)]
enum V {
    I(u64),
    F(f64),
}

impl std::fmt::Display for V {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            V::I(n) => write!(f, "{n}"),
            V::F(x) => write!(f, "{x}"),
        }
    }
}

/// Writes one metric family: HELP, TYPE and its samples (`labels` without braces, may be empty).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, V)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn one(v: V) -> [(String, V); 1] {
    [(String::new(), v)]
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramStats) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (b, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
    }
    let count = h.count.max(cumulative);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let sum = h.sum_ns as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
}

pub fn render(snap: &Snapshot) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let per_cam = |f: &dyn Fn(&CameraView) -> V| -> Vec<(String, V)> {
        snap.cameras
            .iter()
            .map(|c| (format!("camera=\"{}\"", c.name), f(c)))
            .collect()
    };
    let o = &mut out;
    // Relayed cameras only: one series per `http://` camera.
    let per_relay = |f: &dyn Fn(&super::stats::UpstreamStats) -> V| -> Vec<(String, V)> {
        snap.cameras
            .iter()
            .filter_map(|c| Some((format!("camera=\"{}\"", c.name), f(c.upstream.as_ref()?))))
            .collect()
    };
    let per_rec = |f: &dyn Fn(&super::stats::RecordingStats) -> V| -> Vec<(String, V)> {
        snap.cameras
            .iter()
            .filter_map(|c| Some((format!("camera=\"{}\"", c.name), f(c.recording.as_ref()?))))
            .collect()
    };
    let recs = per_rec(&|r| V::I(r.written));
    if !recs.is_empty() {
        family(
            o,
            "beltcam_recorded_frames_total",
            "counter",
            "Frames written to disk.",
            &recs,
        );
        family(
            o,
            "beltcam_recording_skipped_total",
            "counter",
            "Recording periods skipped because a write took longer than the period.",
            &per_rec(&|r| V::I(r.skipped)),
        );
        family(
            o,
            "beltcam_recording_errors_total",
            "counter",
            "Recording writes that failed.",
            &per_rec(&|r| V::I(r.errors)),
        );
        family(
            o,
            "beltcam_recording_reencode_failed_total",
            "counter",
            "Recorded frames written untouched because re-encoding them (quality) failed.",
            &per_rec(&|r| V::I(r.reencode_failed)),
        );
        family(
            o,
            "beltcam_recording_removed_total",
            "counter",
            "Recorded files removed by retention (age or size).",
            &per_rec(&|r| V::I(r.removed)),
        );
        family(
            o,
            "beltcam_recording_files",
            "gauge",
            "Recorded files kept on disk.",
            &per_rec(&|r| V::I(r.files)),
        );
        family(
            o,
            "beltcam_recording_bytes",
            "gauge",
            "Bytes of recorded frames kept on disk.",
            &per_rec(&|r| V::I(r.bytes)),
        );
        family(
            o,
            "beltcam_recording_disk_low",
            "gauge",
            "1 while recording is paused for want of free disk space.",
            &per_rec(&|r| V::I(r.disk_low.into())),
        );
    }
    let per_ctl = |f: &dyn Fn(&super::stats::ControlStats) -> V| -> Vec<(String, V)> {
        snap.cameras
            .iter()
            .filter_map(|c| Some((format!("camera=\"{}\"", c.name), f(c.controls.as_ref()?))))
            .collect()
    };
    let ctls = per_ctl(&|c| V::I(c.set));
    if !ctls.is_empty() {
        family(
            o,
            "beltcam_control_sets_total",
            "counter",
            "Camera controls set over HTTP that the device took.",
            &ctls,
        );
        family(
            o,
            "beltcam_control_set_errors_total",
            "counter",
            "Camera control sets over HTTP that failed.",
            &per_ctl(&|c| V::I(c.set_failed)),
        );
        family(
            o,
            "beltcam_controls_applied_total",
            "counter",
            "[camera.controls] entries set when the device opened (every open counts).",
            &per_ctl(&|c| V::I(c.applied)),
        );
        family(
            o,
            "beltcam_controls_apply_errors_total",
            "counter",
            "[camera.controls] entries the device refused when it opened.",
            &per_ctl(&|c| V::I(c.apply_failed)),
        );
    }
    if let Some(t) = &snap.tap {
        let per_tap = |f: &dyn Fn(&super::stats::TapCameraStats) -> V| -> Vec<(String, V)> {
            t.cameras
                .iter()
                .map(|c| (format!("camera=\"{}\"", c.camera), f(c)))
                .collect()
        };
        family(
            o,
            "beltcam_tap_consumers",
            "gauge",
            "Frame tap subscribers now.",
            &per_tap(&|c| V::I(c.consumers as u64)),
        );
        family(
            o,
            "beltcam_tap_frames_announced_total",
            "counter",
            "Frames announced to frame tap subscribers (one per subscriber).",
            &per_tap(&|c| V::I(c.announced)),
        );
        family(
            o,
            "beltcam_tap_announcements_dropped_total",
            "counter",
            "Announcements a frame tap subscriber missed because its socket was full.",
            &per_tap(&|c| V::I(c.dropped)),
        );
        family(
            o,
            "beltcam_tap_subscriptions_total",
            "counter",
            "Frame tap subscriptions, by result.",
            &[
                ("result=\"accepted\"".into(), V::I(t.subscribed)),
                ("result=\"refused\"".into(), V::I(t.refused)),
            ],
        );
    }
    let relays = per_relay(&|u| V::I(u.connected.into()));
    if !relays.is_empty() {
        family(
            o,
            "beltcam_upstream_connected",
            "gauge",
            "1 while a relayed camera's upstream connection is up.",
            &relays,
        );
        family(
            o,
            "beltcam_upstream_bytes_total",
            "counter",
            "Bytes received from a relayed camera's upstream.",
            &per_relay(&|u| V::I(u.bytes)),
        );
        family(
            o,
            "beltcam_upstream_reconnects_total",
            "counter",
            "Connections to a relayed camera's upstream after the first.",
            &per_relay(&|u| V::I(u.reconnects)),
        );
        family(
            o,
            "beltcam_upstream_garbage_bytes_total",
            "counter",
            "Bytes from an upstream skipped because they were not part of any part.",
            &per_relay(&|u| V::I(u.garbage_bytes)),
        );
    }
    family(
        o,
        "beltcam_frames_captured_total",
        "counter",
        "Frames delivered by the camera.",
        &per_cam(&|c| V::I(c.counts.captured)),
    );
    family(
        o,
        "beltcam_frames_published_total",
        "counter",
        "Real frames published to viewers.",
        &per_cam(&|c| V::I(c.counts.published)),
    );
    family(
        o,
        "beltcam_frames_dropped_total",
        "counter",
        "Frames lost (invalid, no free slot, encode failure).",
        &per_cam(&|c| V::I(c.counts.dropped)),
    );
    family(
        o,
        "beltcam_frames_invalid_total",
        "counter",
        "Frames that were not valid JPEGs.",
        &per_cam(&|c| V::I(c.counts.invalid)),
    );
    family(
        o,
        "beltcam_frames_oversize_total",
        "counter",
        "Frames larger than a pool slot.",
        &per_cam(&|c| V::I(c.pool.oversize)),
    );
    family(
        o,
        "beltcam_frames_no_free_slot_total",
        "counter",
        "Frames dropped because every pool slot was leased or being written.",
        &per_cam(&|c| V::I(c.pool.no_free_slot)),
    );
    family(
        o,
        "beltcam_pool_reclaimed_total",
        "counter",
        "Pool slots whose leases were revoked because the pool ran short.",
        &per_cam(&|c| V::I(c.pool.reclaimed)),
    );
    family(
        o,
        "beltcam_placeholder_frames_total",
        "counter",
        "NO SIGNAL frames published while offline.",
        &per_cam(&|c| V::I(c.counts.placeholders)),
    );
    family(
        o,
        "beltcam_camera_fps",
        "gauge",
        "Real frames published per second.",
        &per_cam(&|c| V::F(c.counts.fps)),
    );
    family(
        o,
        "beltcam_camera_negotiated_fps",
        "gauge",
        "Frame rate the source negotiated when it opened (0 while it is not open).",
        &per_cam(&|c| V::F(c.info.fps)),
    );
    family(
        o,
        "beltcam_camera_online",
        "gauge",
        "1 when the camera delivers frames, 0 when offline or starting.",
        &per_cam(&|c| V::I((c.state == CameraState::Online) as u64)),
    );
    family(
        o,
        "beltcam_camera_idle",
        "gauge",
        "1 while capture is stopped for want of viewers (idle_stop_s); not a fault.",
        &per_cam(&|c| V::I((c.state == CameraState::Idle) as u64)),
    );
    family(
        o,
        "beltcam_camera_clients",
        "gauge",
        "Stream sessions per camera.",
        &per_cam(&|c| V::I(c.clients as u64)),
    );
    let (s, c, g) = (&snap.sessions, &snap.server, &snap.guard);
    family(
        o,
        "beltcam_sessions_active",
        "gauge",
        "Stream sessions open.",
        &one(V::I(s.active as u64)),
    );
    family(
        o,
        "beltcam_sessions_capacity",
        "gauge",
        "Stream sessions the table admits.",
        &one(V::I(s.capacity as u64)),
    );
    let reasons = [
        ("full", s.rejected_full),
        ("per_ip", g.rejected_per_ip),
        ("rate", g.rejected_rate),
        ("auth", c.rejected_auth),
        ("pending", c.pending_rejected),
        ("events_full", snap.events.rejected),
    ];
    let reasons: Vec<_> = reasons
        .iter()
        .map(|(r, n)| (format!("reason=\"{r}\""), V::I(*n)))
        .collect();
    family(
        o,
        "beltcam_sessions_rejected_total",
        "counter",
        "Clients refused, by reason.",
        &reasons,
    );
    family(
        o,
        "beltcam_connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        &one(V::I(c.accepted)),
    );
    let codes = [
        ("400", c.bad_request),
        ("404", c.not_found),
        ("405", c.method_not_allowed),
        ("408", c.request_timeouts),
        ("431", c.too_large),
    ];
    let codes: Vec<_> = codes
        .iter()
        .map(|(code, n)| (format!("code=\"{code}\""), V::I(*n)))
        .collect();
    family(
        o,
        "beltcam_http_errors_total",
        "counter",
        "Error responses, by status code.",
        &codes,
    );
    family(
        o,
        "beltcam_send_timeouts_total",
        "counter",
        "Sessions ended because a send stalled.",
        &one(V::I(c.send_timeouts)),
    );
    family(
        o,
        "beltcam_bytes_sent_total",
        "counter",
        "Bytes written to clients.",
        &one(V::I(c.bytes_sent)),
    );
    family(
        o,
        "beltcam_events_lost_total",
        "counter",
        "Events lost by subscribers that fell behind.",
        &one(V::I(snap.events.lost)),
    );
    histogram(
        o,
        "beltcam_http_request_duration_seconds",
        "Time from a complete request head to the response written (streams excluded).",
        &snap.latency,
    );
    family(
        o,
        "beltcam_process_resident_memory_bytes",
        "gauge",
        "Resident set size.",
        &one(V::I(snap.process.rss_bytes)),
    );
    family(
        o,
        "beltcam_process_open_fds",
        "gauge",
        "Open file descriptors.",
        &one(V::I(snap.process.open_fds)),
    );
    family(
        o,
        "beltcam_uptime_seconds",
        "gauge",
        "Seconds since start.",
        &one(V::F(snap.uptime.as_secs_f64())),
    );
    family(
        o,
        "beltcam_io_backend_info",
        "gauge",
        "The io backend in use.",
        &[(format!("backend=\"{}\"", snap.backend), V::I(1))],
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::obs::histogram::Histogram;
    use crate::obs::render::tests::golden_snapshot;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let mut s = String::new();
        histogram(&mut s, "x", "help", &h.stats());
        assert!(s.contains("x_bucket{le=\"0.0001\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.005\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(
            s.contains("x_bucket{le=\"+Inf\"} 3\nx_sum 5.00305\nx_count 3\n"),
            "{s}"
        );
    }

    #[test]
    fn golden_metrics_lines() {
        let text = render(&golden_snapshot());
        for line in [
            "# TYPE beltcam_frames_published_total counter",
            "beltcam_frames_published_total{camera=\"front\"} 10",
            "beltcam_frames_published_total{camera=\"back\"} 0",
            "beltcam_camera_fps{camera=\"front\"} 29.5",
            "beltcam_camera_negotiated_fps{camera=\"front\"} 30",
            "beltcam_camera_negotiated_fps{camera=\"back\"} 0",
            "beltcam_pool_reclaimed_total{camera=\"front\"} 1",
            "beltcam_camera_online{camera=\"back\"} 0",
            "beltcam_camera_idle{camera=\"back\"} 0",
            "beltcam_camera_clients{camera=\"front\"} 3",
            "beltcam_sessions_rejected_total{reason=\"full\"} 4",
            "beltcam_sessions_rejected_total{reason=\"rate\"} 5",
            "beltcam_http_errors_total{code=\"400\"} 2",
            "beltcam_bytes_sent_total 123456",
            "beltcam_http_request_duration_seconds_bucket{le=\"+Inf\"} 0",
            "beltcam_process_resident_memory_bytes 7340032",
            "beltcam_uptime_seconds 61.5",
            "beltcam_io_backend_info{backend=\"io_uring\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every family has HELP and TYPE, and every sample line belongs to the family above it.
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(
            families,
            text.lines().filter(|l| l.starts_with("# HELP ")).count()
        );
        // (25 before capture on demand added beltcam_camera_idle; relay and recording families
        // appear only for cameras that have them.)
        assert_eq!(families, 26);
    }
}
