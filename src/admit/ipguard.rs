//! Per-client-IP limits: concurrent sessions and new connections per minute, in one fixed table.
//!
//! The old stack died of connection floods from one misbehaving client. Here every client IP has an
//! entry in a fixed-capacity map; when it is full the oldest idle entry is evicted (never grown).
//! The connection rate uses a sliding-window counter (this minute's count plus the previous minute's,
//! weighted by how much of it still overlaps the window): O(1) memory per IP and no timestamp lists.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::limits::{IP_TABLE_CAPACITY, MAX_EVENT_SUBSCRIBERS_PER_IP};
use crate::obs::stats::GuardStats;

const WINDOW_MS: u64 = 60_000;

#[derive(Clone, Copy, Debug, Default)]
struct IpEntry {
    active: u32,
    /// `/events` subscribers from this address.
    events: u32,
    minute: u64,
    current: u32,
    previous: u32,
    last_seen_ms: u64,
}

impl IpEntry {
    /// Connections in the sliding minute ending at `now_ms`.
    fn estimate(&mut self, now_ms: u64) -> u64 {
        let minute = now_ms / WINDOW_MS;
        if minute != self.minute {
            self.previous = if minute == self.minute + 1 {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.minute = minute;
        }
        let overlap = WINDOW_MS - now_ms % WINDOW_MS;
        self.previous as u64 * overlap / WINDOW_MS + self.current as u64
    }
}

/// Why a client was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many new connections in the last minute; retry after this many seconds.
    Rate { retry_after_s: u64 },
    /// Too many concurrent sessions (or event subscriptions) from this IP.
    PerIp,
}

#[derive(Default)]
struct GuardCounters {
    rejected_rate: AtomicU64,
    rejected_per_ip: AtomicU64,
    evictions: AtomicU64,
}

pub struct IpGuard {
    table: Mutex<heapless::FnvIndexMap<IpAddr, IpEntry, IP_TABLE_CAPACITY>>,
    epoch: Instant,
    /// Limits (a reload changes them; see `set_limits`).
    max_sessions: AtomicU32,
    connects_per_minute: AtomicU64,
    counters: GuardCounters,
}

impl IpGuard {
    pub fn new(max_sessions: usize, connects_per_minute: u32) -> Self {
        IpGuard {
            table: Mutex::new(heapless::FnvIndexMap::new()),
            epoch: Instant::now(),
            max_sessions: AtomicU32::new(max_sessions as u32),
            connects_per_minute: AtomicU64::new(connects_per_minute as u64),
            counters: GuardCounters::default(),
        }
    }

    /// New limits from a reloaded configuration; they apply to the next connection and stream
    /// (places already held are kept).
    pub fn set_limits(&self, max_sessions: usize, connects_per_minute: u32) {
        self.max_sessions
            .store(max_sessions as u32, Ordering::Relaxed);
        self.connects_per_minute
            .store(connects_per_minute as u64, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        // Start at one window so "the previous minute" of the first one is well defined.
        WINDOW_MS + self.epoch.elapsed().as_millis() as u64
    }

    /// Runs `f` on the entry of `ip`, creating it (evicting the oldest idle entry if full).
    fn with_entry<R>(
        &self,
        ip: IpAddr,
        now_ms: u64,
        f: impl FnOnce(&mut IpEntry) -> R,
    ) -> Option<R> {
        let ip = ip.to_canonical();
        let mut table = self.table.lock().ok()?;
        if !table.contains_key(&ip) && table.len() == table.capacity() {
            let oldest = table
                .iter()
                .filter(|(_, e)| e.active == 0 && e.events == 0)
                .min_by_key(|(_, e)| e.last_seen_ms)
                .map(|(k, _)| *k)?;
            table.remove(&oldest);
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
        if !table.contains_key(&ip) {
            let fresh = IpEntry {
                minute: now_ms / WINDOW_MS,
                ..IpEntry::default()
            };
            table.insert(ip, fresh).ok()?;
        }
        let entry = table.get_mut(&ip)?;
        entry.last_seen_ms = now_ms;
        Some(f(entry))
    }

    /// Counts a new connection from `ip`, or refuses it when the IP is over its rate.
    pub fn on_connect(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.on_connect_at(ip, self.now_ms())
    }

    fn on_connect_at(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let limit = self.connects_per_minute.load(Ordering::Relaxed);
        let verdict = self.with_entry(ip, now_ms, |e| {
            if e.estimate(now_ms) >= limit {
                false
            } else {
                e.current += 1;
                true
            }
        });
        match verdict {
            Some(true) | None => Ok(()),
            Some(false) => {
                self.counters.rejected_rate.fetch_add(1, Ordering::Relaxed);
                let retry_after_s = (WINDOW_MS - now_ms % WINDOW_MS).div_ceil(1000).max(1);
                Err(Refusal::Rate { retry_after_s })
            }
        }
    }

    /// Admits one more session from `ip`; the guard gives the place back when dropped.
    pub fn open_session(self: &Arc<Self>, ip: IpAddr) -> Result<IpSession, Refusal> {
        self.open(ip, Place::Stream, self.max_sessions.load(Ordering::Relaxed))
    }

    /// Admits one more `/events` subscriber from `ip` (at most `MAX_EVENT_SUBSCRIBERS_PER_IP`),
    /// so one address cannot take every dashboard's place.
    pub fn open_events(self: &Arc<Self>, ip: IpAddr) -> Result<IpSession, Refusal> {
        self.open(ip, Place::Events, MAX_EVENT_SUBSCRIBERS_PER_IP as u32)
    }

    fn open(self: &Arc<Self>, ip: IpAddr, place: Place, max: u32) -> Result<IpSession, Refusal> {
        let ok = self.with_entry(ip, self.now_ms(), |e| {
            let n = place.count(e);
            if *n >= max {
                false
            } else {
                *n += 1;
                true
            }
        });
        if ok == Some(false) {
            self.counters
                .rejected_per_ip
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::PerIp);
        }
        Ok(IpSession {
            guard: Arc::clone(self),
            ip: ip.to_canonical(),
            place,
            counted: ok.is_some(),
        })
    }

    /// Client IPs currently tracked.
    pub fn stats(&self) -> GuardStats {
        GuardStats {
            tracked_ips: self.tracked(),
            rejected_rate: self.counters.rejected_rate.load(Ordering::Relaxed),
            rejected_per_ip: self.counters.rejected_per_ip.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
        }
    }

    pub fn tracked(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }
}

/// One session's place in its IP's count.
/// What a per-address place is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Stream,
    Events,
}

impl Place {
    fn count(self, e: &mut IpEntry) -> &mut u32 {
        match self {
            Place::Stream => &mut e.active,
            Place::Events => &mut e.events,
        }
    }
}

/// A per-address place (a stream or an event subscription); dropping it gives the place back.
pub struct IpSession {
    guard: Arc<IpGuard>,
    ip: IpAddr,
    place: Place,
    counted: bool,
}

impl Drop for IpSession {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        if let Ok(mut t) = self.guard.table.lock() {
            if let Some(e) = t.get_mut(&self.ip) {
                let n = self.place.count(e);
                *n = n.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn rate_limit_slides_over_the_minute() {
        let g = IpGuard::new(8, 10);
        let t0 = 10 * WINDOW_MS; // the start of a minute
        for _ in 0..10 {
            assert!(g.on_connect_at(ip(1), t0).is_ok());
        }
        assert!(matches!(
            g.on_connect_at(ip(1), t0 + 1),
            Err(Refusal::Rate { .. })
        ));
        assert!(
            g.on_connect_at(ip(2), t0 + 1).is_ok(),
            "other IPs are not affected"
        );
        // Half into the next minute, half of the previous minute's 10 still count: 5 more fit.
        let t1 = t0 + WINDOW_MS + WINDOW_MS / 2;
        for _ in 0..5 {
            assert!(g.on_connect_at(ip(1), t1).is_ok());
        }
        assert!(g.on_connect_at(ip(1), t1).is_err());
        // Two minutes of silence forget everything.
        assert!(g.on_connect_at(ip(1), t0 + 3 * WINDOW_MS).is_ok());
        assert_eq!(g.stats().rejected_rate, 2);
    }

    #[test]
    fn sessions_per_ip_are_capped_and_released() {
        let g = Arc::new(IpGuard::new(2, 1000));
        let a = g.open_session(ip(1)).unwrap();
        let _b = g.open_session(ip(1)).unwrap();
        assert_eq!(g.open_session(ip(1)).err(), Some(Refusal::PerIp));
        assert!(g.open_session(ip(2)).is_ok());
        drop(a);
        assert!(g.open_session(ip(1)).is_ok());
    }

    #[test]
    fn full_table_evicts_the_oldest_idle_entry() {
        let g = Arc::new(IpGuard::new(8, 1000));
        let busy = g.open_session(ip(0)).unwrap();
        for n in 0..IP_TABLE_CAPACITY as u32 + 10 {
            assert!(g.on_connect_at(ip(n), WINDOW_MS + n as u64).is_ok());
        }
        assert_eq!(g.tracked(), IP_TABLE_CAPACITY);
        assert_eq!(g.stats().evictions, 10);
        // The entry with a live session was never evicted: its count is still there.
        let t = g.table.lock().unwrap();
        assert_eq!(t.get(&ip(0)).map(|e| e.active), Some(1));
        drop(t);
        drop(busy);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_same_client() {
        let g = Arc::new(IpGuard::new(1, 1000));
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let _s = g.open_session(v4).unwrap();
        assert!(g.open_session(mapped).is_err());
    }

    #[test]
    fn event_places_are_capped_per_address() {
        let g = Arc::new(IpGuard::new(8, 1000));
        let held: Vec<_> = (0..MAX_EVENT_SUBSCRIBERS_PER_IP)
            .map(|_| g.open_events(ip(3)).unwrap())
            .collect();
        assert_eq!(g.open_events(ip(3)).err(), Some(Refusal::PerIp));
        assert!(
            g.open_events(ip(4)).is_ok(),
            "another address is not affected"
        );
        assert!(g.open_session(ip(3)).is_ok(), "streams are counted apart");
        drop(held);
        assert!(g.open_events(ip(3)).is_ok());
    }
}
