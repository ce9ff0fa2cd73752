//! Turns one measured configuration into a result row, and rows into the markdown table and JSON.
//!
//! "CPU-seconds per delivered GB" is the figure that compares servers fairly across frame sizes and
//! viewer counts; each beltcam row is also given as a ratio to the raw baseline's figure from the same
//! run and configuration, so machine noise and loopback cost cancel out.

use crate::viewer::{Kind, ViewerStats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub server: String,
    pub viewers: usize,
    pub width: u16,
    pub height: u16,
    pub fps: u32,
    pub connected: usize,
    /// Viewers that read slowly / stalled after the head (the rest are fast).
    pub slow: usize,
    pub stalled: usize,
    /// Median fps of the connected slow viewers.
    pub slow_fps_median: Option<f64>,
    /// Slow or stalled viewers whose connection ended during the run (the server dropped them).
    pub slow_dropped: usize,
    pub seconds: f64,
    /// fps and latency are over the connected fast viewers only.
    pub fps_min: f64,
    pub fps_median: f64,
    pub frames: u64,
    pub seq_gaps: u64,
    pub mean_jpeg_bytes: f64,
    pub bytes: u64,
    pub mb_per_s: f64,
    pub server_cpu_s: f64,
    pub cpu_s_per_gb: Option<f64>,
    pub ratio_to_baseline: Option<f64>,
    pub peak_rss_mib: f64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub latency_ms_max: Option<f64>,
    pub loadgen_cpu_s: f64,
    /// Distinct viewer errors with how many viewers hit each.
    pub errors: BTreeMap<String, usize>,
}

/// Everything measured about one server in one configuration.
pub struct Measured<'a> {
    pub server: &'a str,
    pub width: u16,
    pub height: u16,
    pub fps: u32,
    pub seconds: f64,
    pub viewers: &'a [ViewerStats],
    pub server_cpu_s: f64,
    pub peak_rss_kib: u64,
    pub loadgen_cpu_s: f64,
}

pub fn row(m: &Measured<'_>) -> Row {
    let v = m.viewers;
    let connected: Vec<&ViewerStats> = v.iter().filter(|s| s.connected).collect();
    let fps_of = |kind: Kind| {
        let mut f: Vec<f64> = connected
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.frames as f64 / m.seconds.max(1e-9))
            .collect();
        f.sort_by(f64::total_cmp);
        f
    };
    let fps = fps_of(Kind::Fast);
    let slow_fps = fps_of(Kind::Slow);
    let mut lat: Vec<i64> = v
        .iter()
        .filter(|s| s.kind == Kind::Fast)
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let bytes: u64 = v.iter().map(|s| s.bytes).sum();
    let frames: u64 = v.iter().map(|s| s.frames).sum();
    let jpeg: u64 = v.iter().map(|s| s.jpeg_bytes).sum();
    let gb = bytes as f64 / 1e9;
    let mut errors = BTreeMap::new();
    for e in v.iter().filter_map(|s| s.error.as_ref()) {
        *errors.entry(e.clone()).or_insert(0) += 1;
    }
    let ms = |us: i64| us as f64 / 1000.0;
    Row {
        server: m.server.to_string(),
        viewers: v.len(),
        width: m.width,
        height: m.height,
        fps: m.fps,
        connected: connected.len(),
        slow: v.iter().filter(|s| s.kind == Kind::Slow).count(),
        stalled: v.iter().filter(|s| s.kind == Kind::Stalled).count(),
        slow_fps_median: percentile_f(&slow_fps, 0.5),
        slow_dropped: v
            .iter()
            .filter(|s| s.kind != Kind::Fast && s.connected && s.error.is_some())
            .count(),
        seconds: m.seconds,
        fps_min: fps.first().copied().unwrap_or(0.0),
        fps_median: percentile_f(&fps, 0.5).unwrap_or(0.0),
        frames,
        seq_gaps: v.iter().map(|s| s.seq_gaps).sum(),
        mean_jpeg_bytes: if frames > 0 {
            jpeg as f64 / frames as f64
        } else {
            0.0
        },
        bytes,
        mb_per_s: bytes as f64 / 1e6 / m.seconds.max(1e-9),
        server_cpu_s: m.server_cpu_s,
        cpu_s_per_gb: (gb > 0.0).then(|| m.server_cpu_s / gb),
        ratio_to_baseline: None,
        peak_rss_mib: m.peak_rss_kib as f64 / 1024.0,
        latency_ms_p50: percentile_i(&lat, 0.5).map(ms),
        latency_ms_p99: percentile_i(&lat, 0.99).map(ms),
        latency_ms_max: lat.last().copied().map(ms),
        loadgen_cpu_s: m.loadgen_cpu_s,
        errors,
    }
}

/// Fills `ratio_to_baseline` of every row from the `baseline` row of the same configuration.
pub fn fill_ratios(rows: &mut [Row]) {
    let base: Vec<(usize, u16, u16, u32, f64)> = rows
        .iter()
        .filter(|r| r.server == "baseline")
        .filter_map(|r| Some((r.viewers, r.width, r.height, r.fps, r.cpu_s_per_gb?)))
        .collect();
    for r in rows.iter_mut() {
        let b = base
            .iter()
            .find(|b| (b.0, b.1, b.2, b.3) == (r.viewers, r.width, r.height, r.fps));
        r.ratio_to_baseline = match (b, r.cpu_s_per_gb) {
            (Some(b), Some(mine)) if b.4 > 0.0 => Some(mine / b.4),
            _ => None,
        };
    }
}

fn percentile_i(sorted: &[i64], q: f64) -> Option<i64> {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied()
}

fn percentile_f(sorted: &[f64], q: f64) -> Option<f64> {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied()
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

/// The markdown table for `rows`, followed by any viewer errors.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| server | viewers | frame | fps | JPEG KB | connected | slow/stalled (dropped) | slow fps med | fast fps/viewer min/med | MB/s | server CPU s | CPU s/GB | vs baseline | peak RSS MiB | latency ms p50/p99/max | loadgen CPU s |\n",
    );
    s.push_str("|---|---:|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|---:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {}x{} | {} | {:.1} | {}/{} | {} / {} ({}) | {} | {:.1} / {:.1} | {:.1} | {:.2} | {} | {} | {:.1} | {} / {} / {} | {:.2} |",
            r.server,
            r.viewers,
            r.width,
            r.height,
            r.fps,
            r.mean_jpeg_bytes / 1000.0,
            r.connected,
            r.viewers,
            r.slow,
            r.stalled,
            r.slow_dropped,
            opt(r.slow_fps_median, 2),
            r.fps_min,
            r.fps_median,
            r.mb_per_s,
            r.server_cpu_s,
            opt(r.cpu_s_per_gb, 2),
            r.ratio_to_baseline.map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
            r.peak_rss_mib,
            opt(r.latency_ms_p50, 1),
            opt(r.latency_ms_p99, 1),
            opt(r.latency_ms_max, 1),
            r.loadgen_cpu_s,
        );
    }
    for r in rows.iter().filter(|r| !r.errors.is_empty()) {
        for (e, n) in &r.errors {
            let _ = writeln!(
                s,
                "\n- {} ({} viewers, {}x{}@{}): {n} viewer(s): {e}",
                r.server, r.viewers, r.width, r.height, r.fps
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(frames: u64, lat: &[i64]) -> ViewerStats {
        ViewerStats {
            connected: true,
            frames,
            bytes: frames * 1_000_000,
            jpeg_bytes: frames * 999_000,
            latencies_us: lat.to_vec(),
            ..Default::default()
        }
    }

    fn measured<'a>(server: &'a str, v: &'a [ViewerStats], cpu: f64) -> Row {
        row(&Measured {
            server,
            width: 640,
            height: 480,
            fps: 30,
            seconds: 2.0,
            viewers: v,
            server_cpu_s: cpu,
            peak_rss_kib: 2048,
            loadgen_cpu_s: 0.1,
        })
    }

    #[test]
    fn computes_rates_and_ratio() {
        let v = [viewer(60, &[1000, 2000, 3000]), viewer(40, &[5000])];
        let mut rows = vec![
            measured("beltcam-epoll", &v, 0.2),
            measured("baseline", &v, 0.1),
        ];
        fill_ratios(&mut rows);
        let r = &rows[0];
        assert_eq!(r.fps_min, 20.0);
        assert_eq!(r.mb_per_s, 50.0);
        assert_eq!(r.cpu_s_per_gb, Some(2.0));
        assert_eq!(r.ratio_to_baseline, Some(2.0));
        assert_eq!(r.latency_ms_max, Some(5.0));
        let t = markdown(&rows);
        assert!(t.contains("| beltcam-epoll | 2 | 640x480 | 30 |"), "{t}");
        assert!(t.contains("2.00x"), "{t}");
    }
}
