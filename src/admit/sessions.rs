//! The session table: every stream viewer, in one fixed-capacity table for all cameras.
//!
//! Full means an immediate refusal (503 with Retry-After), never a queue: the old stack's unbounded
//! client lists are what this replaces. An entry is removed when its guard drops, whatever ended the
//! session, so a session can never outlive its connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::task::AtomicWaker;

use crate::limits::MAX_SESSIONS;
use crate::obs::stats::{ClientOptions, ClientStat, SessionStats};

/// Live counters of one session, shared by the session's task and the table.
#[derive(Default)]
pub struct SessionCounters {
    bytes: AtomicU64,
    frames: AtomicU64,
    skipped: AtomicU64,
    /// The per-second frame meter, each word `second << 32 | frames`: the second being counted
    /// and the one before it. Written only on the session's serving thread (its task, or the
    /// frame relay that sends to it: `serve::fanout`), one writer at a time.
    fps_cur: AtomicU64,
    fps_prev: AtomicU64,
    close: AtomicBool,
    /// Wakes the session's task when a close is requested. An `AtomicWaker`, not a `Notify`: the
    /// session re-registers at every wait of every frame, which this does without a lock.
    waker: AtomicWaker,
    /// The viewer's stream options, set once when its stream starts (`/state` shows them).
    options: OnceLock<ClientOptions>,
}

impl SessionCounters {
    /// Counts one frame of `bytes` sent, after `skipped` newer frames were passed over.
    pub fn record_frame(&self, bytes: usize, skipped: u64) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if skipped > 0 {
            self.skipped.fetch_add(skipped, Ordering::Relaxed);
        }
        self.meter_frame(meter_second());
    }

    fn meter_frame(&self, sec: u64) {
        let cur = self.fps_cur.load(Ordering::Relaxed);
        if cur >> 32 == sec {
            self.fps_cur.store(cur + 1, Ordering::Relaxed);
        } else {
            self.fps_prev.store(cur, Ordering::Relaxed);
            self.fps_cur.store(sec << 32 | 1, Ordering::Relaxed);
        }
    }

    /// Frames sent in the last whole second (ustreamer's per-client fps: a count, not an average
    /// since the start, so a stalled viewer reads 0 at once).
    pub fn fps(&self) -> u32 {
        self.fps_at(meter_second())
    }

    fn fps_at(&self, sec: u64) -> u32 {
        let count = |w: u64| (w >> 32 == sec.wrapping_sub(1)).then_some(w as u32);
        count(self.fps_cur.load(Ordering::Relaxed))
            .or_else(|| count(self.fps_prev.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }

    /// Frames sent, bytes sent, frames skipped.
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        )
    }

    /// Records the viewer's stream options (the first call wins).
    pub fn set_options(&self, o: ClientOptions) {
        let _ = self.options.set(o);
    }

    /// Asks the session to end; it notices at its next wait.
    pub fn request_close(&self) {
        self.close.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Has `request_close` wake this task; check `close_requested` after (see `serve::deliver`).
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    pub fn close_requested(&self) -> bool {
        self.close.load(Ordering::Acquire)
    }
}

/// Whole seconds on a monotonic clock, starting at 1 (0 marks a meter that never counted), for the
/// per-session frame meters.
fn meter_second() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    (base.elapsed().as_secs() + 1) & 0xffff_ffff
}

struct Entry {
    id: u64,
    peer: SocketAddr,
    camera: usize,
    endpoint: &'static str,
    started_unix_ms: u64,
    started: Instant,
    counters: Arc<SessionCounters>,
}

/// A session as listed by `/sessions`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionView {
    pub id: u64,
    pub peer: String,
    pub camera: usize,
    pub endpoint: &'static str,
    pub started_unix_ms: u64,
    pub age_s: f64,
    pub bytes_sent: u64,
    pub frames_sent: u64,
    pub frames_skipped: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("session table full ({0} sessions)")]
pub struct Full(pub usize);

pub struct SessionTable {
    entries: Mutex<heapless::Vec<Entry, MAX_SESSIONS>>,
    limit: usize,
    next_id: AtomicU64,
    rejected_full: AtomicU64,
    opened: AtomicU64,
}

impl SessionTable {
    /// A table admitting at most `limit` (<= `MAX_SESSIONS`) sessions.
    pub fn new(limit: usize) -> Self {
        SessionTable {
            entries: Mutex::new(heapless::Vec::new()),
            limit: limit.min(MAX_SESSIONS),
            next_id: AtomicU64::new(1),
            rejected_full: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.limit
    }

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            active: self.active(),
            capacity: self.limit,
            rejected_full: self.rejected_full.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
        }
    }

    pub fn active(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Admits a session or refuses it when the table is full.
    pub fn open(
        self: &Arc<Self>,
        peer: SocketAddr,
        camera: usize,
        endpoint: &'static str,
    ) -> Result<SessionGuard, Full> {
        let mut entries = self.entries.lock().map_err(|_| Full(self.limit))?;
        if entries.len() >= self.limit {
            self.rejected_full.fetch_add(1, Ordering::Relaxed);
            return Err(Full(self.limit));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::new(SessionCounters::default());
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let entry = Entry {
            id,
            peer,
            camera,
            endpoint,
            started_unix_ms,
            started: Instant::now(),
            counters: Arc::clone(&counters),
        };
        if entries.push(entry).is_err() {
            self.rejected_full.fetch_add(1, Ordering::Relaxed);
            return Err(Full(self.limit));
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(SessionGuard {
            table: Arc::clone(self),
            id,
            counters,
        })
    }

    fn remove(&self, id: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(i) = entries.iter().position(|e| e.id == id) {
                entries.swap_remove(i);
            }
        }
    }

    /// Every session, oldest first.
    pub fn list(&self) -> Vec<SessionView> {
        let mut v: Vec<SessionView> = self
            .entries
            .lock()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| SessionView {
                        id: e.id,
                        peer: e.peer.to_string(),
                        camera: e.camera,
                        endpoint: e.endpoint,
                        started_unix_ms: e.started_unix_ms,
                        age_s: e.started.elapsed().as_secs_f64(),
                        bytes_sent: e.counters.bytes.load(Ordering::Relaxed),
                        frames_sent: e.counters.frames.load(Ordering::Relaxed),
                        frames_skipped: e.counters.skipped.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Asks session `id` to close; false if there is no such session.
    pub fn close(&self, id: u64) -> bool {
        self.close_where(|e| e.id == id) > 0
    }

    /// Asks every session older than `age` to close; returns how many.
    pub fn close_older_than(&self, age: Duration) -> usize {
        self.close_where(|e| e.started.elapsed() > age)
    }

    /// Asks every session to close (shutdown).
    pub fn close_all(&self) -> usize {
        self.close_where(|_| true)
    }

    fn close_where(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        self.entries
            .lock()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| pred(e))
                    .inspect(|e| e.counters.request_close())
                    .count()
            })
            .unwrap_or(0)
    }

    /// Every session's id, camera and frames per second, oldest first (ustreamer's `clients_stat`).
    pub fn client_stats(&self) -> Vec<ClientStat> {
        let mut v: Vec<ClientStat> = self
            .entries
            .lock()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| ClientStat {
                        id: e.id,
                        camera: e.camera,
                        fps: e.counters.fps(),
                        options: e.counters.options.get().cloned().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The number of sessions of each camera in `ids` (camera ids, in the order given).
    pub fn clients_per_camera(&self, ids: &[usize]) -> Vec<usize> {
        let mut counts = vec![0; ids.len()];
        if let Ok(entries) = self.entries.lock() {
            for e in entries.iter() {
                if let Some(i) = ids.iter().position(|&id| id == e.camera) {
                    counts[i] += 1;
                }
            }
        }
        counts
    }
}

/// Holds a table entry; dropping it removes the session.
pub struct SessionGuard {
    table: Arc<SessionTable>,
    pub id: u64,
    pub counters: Arc<SessionCounters>,
}

impl std::fmt::Debug for SessionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGuard")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    #[test]
    fn full_table_refuses_and_counts() {
        let t = Arc::new(SessionTable::new(2));
        let a = t.open(peer(), 0, "stream").unwrap();
        let _b = t.open(peer(), 0, "stream").unwrap();
        assert_eq!(t.open(peer(), 0, "stream").unwrap_err(), Full(2));
        assert_eq!(t.stats().rejected_full, 1);
        drop(a);
        assert_eq!(t.active(), 1);
        assert!(t.open(peer(), 0, "stream").is_ok());
    }

    #[test]
    fn close_by_id_and_age() {
        let t = Arc::new(SessionTable::new(4));
        let a = t.open(peer(), 0, "stream").unwrap();
        let b = t.open(peer(), 1, "stream").unwrap();
        assert!(t.close(a.id));
        assert!(a.counters.close_requested());
        assert!(!b.counters.close_requested());
        assert!(!t.close(999));
        assert_eq!(t.close_older_than(Duration::from_secs(3600)), 0);
        assert_eq!(t.close_older_than(Duration::ZERO), 2);
        assert!(b.counters.close_requested());
        assert_eq!(t.clients_per_camera(&[0, 1]), vec![1, 1]);
        let ids: Vec<u64> = t.list().iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![a.id, b.id]);
    }

    #[test]
    fn fps_is_the_last_whole_second() {
        let c = SessionCounters::default();
        assert_eq!(c.fps_at(10), 0);
        for _ in 0..5 {
            c.meter_frame(10);
        }
        // Second 10 is still being counted: the last whole second (9) had none.
        assert_eq!(c.fps_at(10), 0);
        assert_eq!(c.fps_at(11), 5);
        for _ in 0..3 {
            c.meter_frame(11);
        }
        assert_eq!(c.fps_at(11), 5);
        assert_eq!(c.fps_at(12), 3);
        // A viewer that stopped reading drops to 0 once a whole second passes without a frame.
        assert_eq!(c.fps_at(13), 0);
        // A gap: the second before the current one was empty.
        c.meter_frame(20);
        assert_eq!(c.fps_at(20), 0);
        assert_eq!(c.fps_at(21), 1);
    }

    #[test]
    fn client_stats_list_sessions_with_their_camera() {
        let t = Arc::new(SessionTable::new(4));
        let a = t.open(peer(), 1, "stream").unwrap();
        let b = t.open(peer(), 0, "stream").unwrap();
        let stats = t.client_stats();
        assert_eq!(stats.len(), 2);
        assert_eq!((stats[0].id, stats[0].camera), (a.id, 1));
        assert_eq!((stats[1].id, stats[1].camera), (b.id, 0));
        drop(a);
        assert_eq!(t.client_stats().len(), 1);
    }

    #[test]
    fn memory_budget_covers_the_table() {
        let per_entry = std::mem::size_of::<SessionTable>() / MAX_SESSIONS;
        assert!(
            per_entry as u64 <= crate::config::budget::SESSION_ENTRY_BYTES,
            "an entry takes {per_entry} bytes: raise budget::SESSION_ENTRY_BYTES"
        );
    }
}
