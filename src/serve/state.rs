//! The state every thread shares: settings, cameras, the session table, health and counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::auth::Auth;
use crate::capture::Camera;
use crate::config::Settings;
use crate::events::Events;
use crate::guard::IpGuard;
use crate::health::Health;
use crate::metrics::Histogram;
use crate::net::Backend;
use crate::session::SessionTable;
use crate::shutdown::Shutdown;

/// Server-wide counters (monotonic).
#[derive(Default)]
pub struct ServerCounters {
    pub accepted: AtomicU64,
    pub requests: AtomicU64,
    /// Refused because too many connections were still sending their request.
    pub pending_rejected: AtomicU64,
    /// 400 responses (malformed requests).
    pub bad_request: AtomicU64,
    /// 431 responses (oversized heads).
    pub too_large: AtomicU64,
    pub not_found: AtomicU64,
    pub method_not_allowed: AtomicU64,
    /// Requests that did not arrive within the request timeout.
    pub request_timeouts: AtomicU64,
    /// Sessions ended because a frame send stalled past the send timeout.
    pub send_timeouts: AtomicU64,
    /// Requests refused for missing or wrong credentials (401/403).
    pub rejected_auth: AtomicU64,
    pub bytes_sent: AtomicU64,
}

impl ServerCounters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct App {
    pub settings: Settings,
    pub cameras: Vec<Arc<Camera>>,
    pub sessions: Arc<SessionTable>,
    pub health: Health,
    pub shutdown: Arc<Shutdown>,
    pub backend: Backend,
    pub counters: ServerCounters,
    pub guard: Arc<IpGuard>,
    pub auth: Auth,
    pub events: Arc<Events>,
    /// Latency of non-stream requests.
    pub latency: Histogram,
    /// Connections accepted and not yet a session or finished.
    pub pending: Arc<AtomicUsize>,
}

impl App {
    pub fn camera_index(&self, name: &str) -> Option<usize> {
        self.cameras.iter().position(|c| c.name == name)
    }
}

/// Counts a pending connection for as long as it lives.
pub struct PendingGuard(Arc<AtomicUsize>);

impl PendingGuard {
    /// Takes a pending place, or `None` when `max` are already pending.
    pub fn try_new(pending: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| PendingGuard(Arc::clone(pending)))
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_guard_bounds_and_releases() {
        let n = Arc::new(AtomicUsize::new(0));
        let a = PendingGuard::try_new(&n, 2).unwrap();
        let _b = PendingGuard::try_new(&n, 2).unwrap();
        assert!(PendingGuard::try_new(&n, 2).is_none());
        drop(a);
        assert!(PendingGuard::try_new(&n, 2).is_some());
        assert_eq!(n.load(Ordering::Relaxed), 1);
    }
}
