//! A fixed-bucket latency histogram updated with atomics (no lock on the request path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// A histogram's figures at one moment: per-bucket (not cumulative) counts, total count and sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct HistogramStats {
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum_ns: u64,
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

    pub fn stats(&self) -> HistogramStats {
        // Buckets are read before `count`; the renderer keeps +Inf at least the last cumulative
        // bucket, so an observation racing this read can never make the exposition non-cumulative.
        let buckets = std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        HistogramStats {
            buckets,
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}
