//! The count of connections accepted but not yet admitted as a session (still sending their
//! request), bounded so a flood of idle sockets cannot pin memory or fds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
