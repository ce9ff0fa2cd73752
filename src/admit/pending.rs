//! The pending table: connections accepted and not yet admitted as a session (reading a request,
//! or idle between keep-alive requests), bounded so a flood of sockets cannot pin memory or fds.
//!
//! Full must never mean "nobody gets in": idle keep-alive connections are the first to go. When a
//! new connection finds the table full, the connection idle the longest is told to close and the
//! new one takes its place at once (the evicted one's guard then finds its entry gone). Each address
//! may also keep only `max_idle_per_ip` idle keep-alive connections: one more evicts its own oldest.
//! Only when every place is held by a connection actively sending a request is a newcomer refused
//! (the caller answers 503 with Retry-After).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::limits::MAX_PENDING_CONNECTIONS;

/// The signal telling one connection to close.
#[derive(Default)]
struct Evict {
    flag: AtomicBool,
    notify: Notify,
}

impl Evict {
    fn fire(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

struct Entry {
    id: u64,
    ip: IpAddr,
    /// Since when the connection waits for its next keep-alive request; `None` while it is sending
    /// one (or has not sent its first).
    idle_since: Option<Instant>,
    evict: Arc<Evict>,
}

/// The table is full of connections that are all sending a request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many connections are sending a request ({0})")]
pub struct Full(pub usize);

pub struct PendingTable {
    entries: Mutex<heapless::Vec<Entry, MAX_PENDING_CONNECTIONS>>,
    limit: usize,
    max_idle_per_ip: usize,
    next_id: AtomicU64,
    evicted: AtomicU64,
}

impl PendingTable {
    /// A table of at most `limit` (<= `MAX_PENDING_CONNECTIONS`) connections.
    pub fn new(limit: usize, max_idle_per_ip: usize) -> Self {
        PendingTable {
            entries: Mutex::new(heapless::Vec::new()),
            limit: limit.clamp(1, MAX_PENDING_CONNECTIONS),
            max_idle_per_ip: max_idle_per_ip.max(1),
            next_id: AtomicU64::new(1),
            evicted: AtomicU64::new(0),
        }
    }

    /// Connections in the table now.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Idle keep-alive connections closed to make room, so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// A place for a new connection from `ip`: a free one, or the place of the connection idle the
    /// longest (which is told to close). `Full` when every place is busy sending a request.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PendingPlace, Full> {
        let mut entries = self.entries.lock().map_err(|_| Full(self.limit))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Evict::default());
        let entry = Entry {
            id,
            ip: ip.to_canonical(),
            idle_since: None,
            evict: Arc::clone(&evict),
        };
        if entries.len() < self.limit {
            if entries.push(entry).is_err() {
                return Err(Full(self.limit));
            }
        } else {
            let oldest = entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.idle_since.map(|t| (t, i)))
                .min()
                .map(|(_, i)| i)
                .ok_or(Full(self.limit))?;
            entries[oldest].evict.fire();
            entries[oldest] = entry;
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(PendingPlace {
            table: Arc::clone(self),
            id,
            evict,
        })
    }

    fn set_idle(&self, id: u64, idle: bool) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let Some(i) = entries.iter().position(|e| e.id == id) else {
            return;
        };
        if !idle {
            entries[i].idle_since = None;
            return;
        }
        entries[i].idle_since = Some(Instant::now());
        let ip = entries[i].ip;
        let idle_here = entries
            .iter()
            .filter(|e| e.ip == ip && e.idle_since.is_some())
            .count();
        if idle_here > self.max_idle_per_ip {
            // This address keeps too many idle connections: its oldest idle one goes.
            let oldest = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.ip == ip)
                .filter_map(|(i, e)| e.idle_since.map(|t| (t, i)))
                .min()
                .map(|(_, i)| i);
            if let Some(o) = oldest {
                entries[o].evict.fire();
                entries.swap_remove(o);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn remove(&self, id: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(i) = entries.iter().position(|e| e.id == id) {
                entries.swap_remove(i);
            }
        }
    }
}

/// A connection's place in the pending table; dropping it gives the place back.
pub struct PendingPlace {
    table: Arc<PendingTable>,
    id: u64,
    evict: Arc<Evict>,
}

impl PendingPlace {
    /// Marks the connection as waiting for its next keep-alive request (evictable) or not.
    pub fn set_idle(&self, idle: bool) {
        self.table.set_idle(self.id, idle);
    }

    /// Resolves when the connection was told to close to make room.
    pub async fn evicted(&self) {
        loop {
            let notified = self.evict.notify.notified();
            if self.evict.flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    pub fn is_evicted(&self) -> bool {
        self.evict.flag.load(Ordering::Acquire)
    }
}

impl Drop for PendingPlace {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn bounds_and_releases() {
        let t = Arc::new(PendingTable::new(2, 8));
        let a = t.admit(ip(1)).unwrap();
        let _b = t.admit(ip(1)).unwrap();
        assert_eq!(t.admit(ip(2)).err(), Some(Full(2)), "all busy: refused");
        drop(a);
        assert!(t.admit(ip(2)).is_ok());
    }

    #[test]
    fn full_table_evicts_the_longest_idle() {
        let t = Arc::new(PendingTable::new(3, 8));
        let a = t.admit(ip(1)).unwrap();
        let b = t.admit(ip(1)).unwrap();
        let c = t.admit(ip(2)).unwrap();
        b.set_idle(true);
        std::thread::sleep(std::time::Duration::from_millis(2));
        a.set_idle(true);
        let d = t.admit(ip(3)).expect("an idle place is taken");
        assert!(b.is_evicted(), "the longest idle goes first");
        assert!(!a.is_evicted() && !c.is_evicted() && !d.is_evicted());
        assert_eq!(t.len(), 3);
        drop(b); // its entry is already gone: d's place stays
        assert_eq!(t.len(), 3);
        assert_eq!(t.evicted(), 1);
        a.set_idle(false);
        assert!(t.admit(ip(4)).is_err(), "nobody idle: refused");
    }

    #[test]
    fn per_address_idle_cap() {
        let t = Arc::new(PendingTable::new(16, 2));
        let places: Vec<_> = (0..3).map(|_| t.admit(ip(7)).unwrap()).collect();
        places[0].set_idle(true);
        places[1].set_idle(true);
        assert!(!places[0].is_evicted());
        places[2].set_idle(true);
        assert!(places[0].is_evicted(), "the address's oldest idle one goes");
        assert!(!places[1].is_evicted() && !places[2].is_evicted());
        let other = t.admit(ip(8)).unwrap();
        other.set_idle(true);
        assert!(!other.is_evicted(), "other addresses are not affected");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn eviction_wakes_the_waiter() {
        let t = Arc::new(PendingTable::new(1, 8));
        let a = t.admit(ip(1)).unwrap();
        a.set_idle(true);
        let waiter = async { a.evicted().await };
        let _b = t.admit(ip(2)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("evicted() resolves");
    }
}
