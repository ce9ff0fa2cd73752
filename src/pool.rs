//! The frame pool: a fixed set of slots per camera, written once per frame and leased by readers.
//!
//! Why: beltcam must never allocate on the frame path, never copy a frame once per viewer, and never
//! let a slow viewer hold up capture. A slot is filled once by a writer (capture or an encode worker),
//! published with a sequence number, and then only read: every session sending that frame leases the
//! same memory, and the lease is what an in-flight socket write owns (see `net`). The writer only ever
//! claims a slot nobody leases, so a lease pins bytes that can never change under it.
//!
//! Each slot holds the JPEG with its multipart part header rendered in front and the part's CRLF
//! after it, so a streaming session sends one contiguous buffer per frame: one write, no copy.
//!
//! Concurrency: one `AtomicU32` per slot is both the writer's claim bit and the readers' count.
//! - Writer: CAS `0 -> WRITER` (Acquire: every earlier reader's reads happen-before our writes);
//!   re-check the slot is not the newest frame; reset the slot's `seq` to 0; write bytes and meta;
//!   store `seq`; raise `newest`; only then clear `WRITER` (Release). A writer that gives up (its
//!   frame turned out older, the encode failed) just clears `WRITER`: its bytes sit under `seq` 0.
//! - Reader: load `newest`, `fetch_add(1)` on the slot (Acquire); if `WRITER` was set or the slot's
//!   `seq` is not the one `newest` named, undo and retry. Otherwise the bytes are ours to read
//!   until the lease drops (`fetch_sub`, Release), because a writer's CAS needs the count at 0.
//!
//! Both orderings matter (issue 10 item 7). Clearing `WRITER` before raising `newest` let a second
//! writer claim the slot about to become newest, scribble and abandon it, so readers leased bytes
//! that were not the frame their seq named. Without the reset of `seq` at claim, a reader that read
//! `newest` just before that frame was superseded could count itself into a slot claimed, scribbled
//! and abandoned meanwhile, and find the old `seq` still there.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::http::multipart;
use crate::limits::{MAX_JPEG_BYTES, PART_HEADER_MAX, PART_TRAILER, POOL_SLOTS, SLOT_BYTES};

const WRITER: u32 = 1 << 31;
/// How often a reader retries when the newest slot changes under it before giving up for now.
const LEASE_RETRIES: usize = 64;

/// Test builds widen the pool's race windows: a yield between two steps another thread may
/// interleave with, so the interleaving tests see in milliseconds what production sees rarely.
#[cfg(test)]
fn race_window() {
    std::thread::yield_now();
}

#[cfg(not(test))]
#[inline(always)]
fn race_window() {}

/// What a published frame is, beside its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// Sequence number, 1-based, increasing per pool.
    pub seq: u64,
    /// Capture time, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    pub width: u32,
    pub height: u32,
    /// Offset of the part header inside the slot (the header ends where the JPEG starts).
    part_start: u32,
    jpeg_len: u32,
}

impl FrameMeta {
    pub fn jpeg_len(&self) -> usize {
        self.jpeg_len as usize
    }

    /// Placeholder frames are published with no size.
    pub fn is_placeholder(&self) -> bool {
        self.width == 0
    }
}

struct Slot {
    refs: AtomicU32,
    seq: AtomicU64,
    meta: UnsafeCell<FrameMeta>,
    bytes: UnsafeCell<Box<[u8]>>,
}

/// Counters kept by the pool itself.
#[derive(Default)]
pub struct PoolCounters {
    /// Frames published.
    pub published: AtomicU64,
    /// Frames rejected because they were larger than a slot.
    pub oversize: AtomicU64,
    /// Frames dropped because every slot was leased or being written.
    pub no_free_slot: AtomicU64,
}

/// A frame too big for a slot; never truncated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("frame of {len} bytes is larger than a pool slot ({max} bytes)")]
pub struct Oversize {
    pub len: usize,
    pub max: usize,
}

pub struct FramePool {
    slots: Box<[Slot]>,
    /// `(seq << 8) | slot index` of the newest published frame; 0 before the first.
    newest: AtomicU64,
    next_seq: AtomicU64,
    pub counters: PoolCounters,
}

// SAFETY: the UnsafeCells are only written by the holder of the slot's WRITER claim, which excludes
// every reader (see the module comment); readers only read while holding a counted lease.
unsafe impl Sync for FramePool {}
unsafe impl Send for FramePool {}

impl Default for FramePool {
    fn default() -> Self {
        Self::new()
    }
}

impl FramePool {
    /// Allocates `POOL_SLOTS` slots of `SLOT_BYTES`. Zeroed allocations are lazily backed by the
    /// kernel, so RSS grows only with the frames actually written.
    pub fn new() -> Self {
        const _: () = assert!(POOL_SLOTS >= 3 && POOL_SLOTS < 256);
        let slots = (0..POOL_SLOTS)
            .map(|_| Slot {
                refs: AtomicU32::new(0),
                seq: AtomicU64::new(0),
                meta: UnsafeCell::new(FrameMeta::default()),
                bytes: UnsafeCell::new(vec![0u8; SLOT_BYTES].into_boxed_slice()),
            })
            .collect();
        FramePool {
            slots,
            newest: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
            counters: PoolCounters::default(),
        }
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    pub fn slot_bytes(&self) -> usize {
        SLOT_BYTES
    }

    /// Sequence number of the newest published frame (0: none yet).
    pub fn newest_seq(&self) -> u64 {
        self.newest.load(Ordering::Acquire) >> 8
    }

    /// Claims a free slot for writing one frame. `None` (counted) when every slot is leased or being
    /// written: the frame is dropped, capture goes on.
    pub fn claim(&self) -> Option<SlotWriter<'_>> {
        for (idx, slot) in self.slots.iter().enumerate() {
            if self.newest_index() == Some(idx) {
                continue;
            }
            // Acquire, paired with the Release of the last lease's drop and of the previous
            // writer's release: their reads and writes of the slot happen-before ours, so the slot
            // is now ours alone until we release it.
            if slot
                .refs
                .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // A writer that published into this slot released it only after raising `newest`
            // (see `publish`), and our CAS acquired that release: if the slot is the newest frame,
            // this load says so. Never overwrite the newest frame.
            race_window();
            if self.newest_index() == Some(idx) {
                slot.refs.fetch_and(!WRITER, Ordering::Release);
                continue;
            }
            // The slot's old frame is no longer leasable: a reader that read `newest` before this
            // frame was superseded, and counts itself in after we give the slot back unpublished,
            // must not find its seq here. Relaxed: our release of the claim publishes it.
            slot.seq.store(0, Ordering::Relaxed);
            return Some(SlotWriter { pool: self, idx });
        }
        self.counters.no_free_slot.fetch_add(1, Ordering::Relaxed);
        None
    }

    fn newest_index(&self) -> Option<usize> {
        let n = self.newest.load(Ordering::Acquire);
        (n != 0).then_some((n & 0xff) as usize)
    }

    /// Leases the newest frame, if any.
    pub fn lease_newest(self: &Arc<Self>) -> Option<Lease> {
        for _ in 0..LEASE_RETRIES {
            let n = self.newest.load(Ordering::Acquire);
            if n == 0 {
                return None;
            }
            let (seq, idx) = (n >> 8, (n & 0xff) as usize);
            let slot = &self.slots[idx];
            race_window();
            // Acquire, paired with the Release of the writer that last released the slot: what it
            // wrote (bytes, meta, seq) is visible to us. Once counted, no writer can claim the slot
            // until we let go.
            let prev = slot.refs.fetch_add(1, Ordering::Acquire);
            // The slot must still hold the frame `newest` named: not claimed now (WRITER), not
            // claimed since and given back or republished (a claim resets `seq`).
            if prev & WRITER == 0 && slot.seq.load(Ordering::Relaxed) == seq {
                // SAFETY: we hold a counted lease and no WRITER claim was set when we counted
                // ourselves in, so no writer can touch the slot until we release; the meta was
                // written before the claim's release that our Acquire above synchronised with.
                let meta = unsafe { *slot.meta.get() };
                return Some(Lease {
                    pool: Arc::clone(self),
                    idx,
                    meta,
                });
            }
            slot.refs.fetch_sub(1, Ordering::Release);
            std::hint::spin_loop();
        }
        None
    }

    /// Leases the newest frame if it is newer than `after`.
    pub fn lease_after(self: &Arc<Self>, after: u64) -> Option<Lease> {
        if self.newest_seq() <= after {
            return None;
        }
        self.lease_newest().filter(|l| l.meta.seq > after)
    }

    /// Leases currently held (for tests and /stats).
    pub fn leased(&self) -> usize {
        self.slots
            .iter()
            .map(|s| (s.refs.load(Ordering::Relaxed) & !WRITER) as usize)
            .sum()
    }
}

/// The exclusive right to fill one slot. Dropping it without `publish` frees the slot unchanged.
pub struct SlotWriter<'a> {
    pool: &'a FramePool,
    idx: usize,
}

impl SlotWriter<'_> {
    /// The bytes the JPEG goes into (`MAX_JPEG_BYTES` long).
    pub fn jpeg_buf(&mut self) -> &mut [u8] {
        // SAFETY: we hold the slot's WRITER claim: no reader or other writer accesses the bytes.
        let bytes = unsafe { &mut *self.pool.slots[self.idx].bytes.get() };
        &mut bytes[PART_HEADER_MAX..PART_HEADER_MAX + MAX_JPEG_BYTES]
    }

    /// Publishes the first `len` bytes of `jpeg_buf` as the newest frame and returns its sequence
    /// number. `len` larger than a slot is refused (and counted) without publishing.
    pub fn publish(
        self,
        len: usize,
        timestamp_us: u64,
        width: u32,
        height: u32,
    ) -> Result<u64, Oversize> {
        let (pool, idx) = (self.pool, self.idx);
        if len > MAX_JPEG_BYTES {
            pool.counters.oversize.fetch_add(1, Ordering::Relaxed);
            return Err(Oversize {
                len,
                max: MAX_JPEG_BYTES,
            });
        }
        let slot = &pool.slots[idx];
        let seq = pool.next_seq.fetch_add(1, Ordering::Relaxed);
        // SAFETY: WRITER claim held, as in `jpeg_buf`.
        let bytes = unsafe { &mut *slot.bytes.get() };
        let mut header = [0u8; PART_HEADER_MAX];
        let hlen = multipart::render_part_header(&mut header, len, timestamp_us, seq);
        let part_start = PART_HEADER_MAX - hlen;
        bytes[part_start..PART_HEADER_MAX].copy_from_slice(&header[..hlen]);
        let end = PART_HEADER_MAX + len;
        bytes[end..end + PART_TRAILER.len()].copy_from_slice(PART_TRAILER);
        // SAFETY: WRITER claim held.
        unsafe {
            *slot.meta.get() = FrameMeta {
                seq,
                timestamp_us,
                width,
                height,
                part_start: part_start as u32,
                jpeg_len: len as u32,
            };
        }
        // Relaxed: readers see it through the release of the claim below.
        slot.seq.store(seq, Ordering::Relaxed);
        let packed = (seq << 8) | idx as u64;
        // Raise `newest` while still holding the claim. Released the other way round, another
        // writer could claim this slot in between (it was not yet newest), scribble into it and
        // abandon it, and readers would then lease those bytes under this frame's seq. Readers
        // that see the new `newest` before the claim is released back off and retry.
        // Several writers (encode workers) may publish out of order: newest only moves forward.
        let _ = pool
            .newest
            .fetch_update(Ordering::Release, Ordering::Relaxed, |cur| {
                (cur >> 8 < seq).then_some(packed)
            });
        race_window();
        // Release, paired with the Acquire of a reader's count and of the next writer's claim:
        // the bytes, meta and seq written above (and `newest`) are theirs to see from now on.
        slot.refs.fetch_and(!WRITER, Ordering::Release);
        // The claim is released above; skip Drop's release.
        std::mem::forget(self);
        pool.counters.published.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }
}

impl Drop for SlotWriter<'_> {
    fn drop(&mut self) {
        // An abandoned claim: the bytes may be scribbled, but `seq` is 0 since the claim, so no
        // reader takes them for a frame. Release: our writes happen-before the next claimer's.
        self.pool.slots[self.idx]
            .refs
            .fetch_and(!WRITER, Ordering::Release);
    }
}

/// A counted read lease on one published frame. While it lives the slot cannot be rewritten.
pub struct Lease {
    pool: Arc<FramePool>,
    idx: usize,
    meta: FrameMeta,
}

impl Lease {
    pub fn meta(&self) -> &FrameMeta {
        &self.meta
    }

    pub fn seq(&self) -> u64 {
        self.meta.seq
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: a counted lease excludes writers (module comment); the box is never reallocated.
        unsafe { &*self.pool.slots[self.idx].bytes.get() }
    }

    /// The whole multipart part: header, JPEG, CRLF.
    pub fn part(&self) -> &[u8] {
        let start = self.meta.part_start as usize;
        &self.bytes()[start..PART_HEADER_MAX + self.meta.jpeg_len() + PART_TRAILER.len()]
    }

    /// Just the JPEG.
    pub fn jpeg(&self) -> &[u8] {
        &self.bytes()[PART_HEADER_MAX..PART_HEADER_MAX + self.meta.jpeg_len()]
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Release, paired with the next writer's claim (Acquire): our reads of the bytes
        // happen-before its writes.
        self.pool.slots[self.idx]
            .refs
            .fetch_sub(1, Ordering::Release);
    }
}

impl std::fmt::Debug for Lease {
    // Frames print their identity, never their bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("slot", &self.idx)
            .field("meta", &self.meta)
            .finish()
    }
}

/// Which bytes of a lease a write sends. The value an io_uring write owns while in flight: the bytes
/// go from the slot to the socket, and the slot stays pinned until the kernel is done with it.
pub struct LeaseBuf {
    lease: Lease,
    whole_part: bool,
}

impl LeaseBuf {
    pub fn part(lease: Lease) -> Self {
        LeaseBuf {
            lease,
            whole_part: true,
        }
    }

    pub fn jpeg(lease: Lease) -> Self {
        LeaseBuf {
            lease,
            whole_part: false,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.whole_part {
            self.lease.part()
        } else {
            self.lease.jpeg()
        }
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

// SAFETY: the pointer is into a boxed slot that is never moved or freed while the pool (held by the
// lease's Arc) lives, and never written while the lease is counted; the length is fixed at creation.
unsafe impl tokio_uring::buf::IoBuf for LeaseBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.as_slice().as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.as_slice().len()
    }
    fn bytes_total(&self) -> usize {
        self.as_slice().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(pool: &FramePool, byte: u8, len: usize) -> u64 {
        let mut w = pool.claim().expect("free slot");
        w.jpeg_buf()[..len].fill(byte);
        w.publish(len, 1_700_000_000_123_456, 4, 4).unwrap()
    }

    #[test]
    fn empty_pool_has_no_frame() {
        let pool = Arc::new(FramePool::new());
        assert!(pool.lease_newest().is_none());
        assert_eq!(pool.newest_seq(), 0);
    }

    #[test]
    fn publish_then_lease_sees_bytes_and_header() {
        let pool = Arc::new(FramePool::new());
        let seq = fill(&pool, 0xAB, 100);
        let lease = pool.lease_newest().unwrap();
        assert_eq!(lease.seq(), seq);
        assert_eq!(lease.jpeg(), &[0xAB; 100][..]);
        let part = lease.part();
        let head_len = part.len() - 100 - PART_TRAILER.len();
        let text = std::str::from_utf8(&part[..head_len]).unwrap();
        assert!(text.starts_with("Content-Type: image/jpeg\r\n"), "{text}");
        assert!(text.contains("Content-Length: 100\r\n"), "{text}");
        assert!(
            text.contains("X-Timestamp: 1700000000.123456\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert_eq!(&part[head_len..head_len + 100], &[0xAB; 100][..]);
        assert!(part.ends_with(PART_TRAILER));
    }

    #[test]
    fn leased_slot_is_never_rewritten() {
        let pool = Arc::new(FramePool::new());
        fill(&pool, 1, 10);
        let held = pool.lease_newest().unwrap();
        for i in 0..100u8 {
            fill(&pool, i.wrapping_add(2), 10);
        }
        assert_eq!(held.jpeg(), &[1u8; 10][..]);
        assert!(pool.lease_newest().unwrap().seq() > held.seq());
    }

    #[test]
    fn all_slots_leased_drops_and_counts() {
        let pool = Arc::new(FramePool::new());
        let mut held = Vec::new();
        for i in 0..POOL_SLOTS {
            fill(&pool, i as u8, 8);
            held.push(pool.lease_newest().unwrap());
        }
        assert!(pool.claim().is_none());
        assert_eq!(pool.counters.no_free_slot.load(Ordering::Relaxed), 1);
        drop(held.remove(0));
        assert!(pool.claim().is_some());
    }

    #[test]
    fn newest_slot_is_not_claimed_even_unleased() {
        let pool = Arc::new(FramePool::new());
        fill(&pool, 7, 5);
        let mut writers = Vec::new();
        while let Some(w) = pool.claim() {
            writers.push(w);
        }
        assert_eq!(writers.len(), POOL_SLOTS - 1);
        drop(writers);
        assert_eq!(pool.lease_newest().unwrap().jpeg(), &[7u8; 5][..]);
    }

    #[test]
    fn oversize_is_refused_and_counted_and_keeps_previous_frame() {
        let pool = Arc::new(FramePool::new());
        let seq = fill(&pool, 3, 4);
        let w = pool.claim().unwrap();
        let err = w.publish(MAX_JPEG_BYTES + 1, 0, 1, 1).unwrap_err();
        assert_eq!(err.len, MAX_JPEG_BYTES + 1);
        assert_eq!(pool.counters.oversize.load(Ordering::Relaxed), 1);
        assert_eq!(pool.lease_newest().unwrap().seq(), seq);
        // The claim was released: every non-newest slot is claimable again.
        let claimed: Vec<_> = std::iter::from_fn(|| pool.claim())
            .take(POOL_SLOTS)
            .collect();
        assert_eq!(claimed.len(), POOL_SLOTS - 1);
    }

    #[test]
    fn lease_after_only_returns_newer() {
        let pool = Arc::new(FramePool::new());
        let s1 = fill(&pool, 1, 1);
        assert!(pool.lease_after(s1).is_none());
        let s2 = fill(&pool, 2, 1);
        assert_eq!(pool.lease_after(s1).unwrap().seq(), s2);
    }

    #[test]
    fn out_of_order_publish_keeps_newest_monotonic() {
        let pool = Arc::new(FramePool::new());
        let mut a = pool.claim().unwrap();
        let mut b = pool.claim().unwrap();
        a.jpeg_buf()[0] = 1;
        b.jpeg_buf()[0] = 2;
        let sb = b.publish(1, 0, 1, 1).unwrap();
        let sa = a.publish(1, 0, 1, 1).unwrap();
        assert!(sa > sb);
        assert_eq!(pool.lease_newest().unwrap().jpeg(), &[1]);
    }

    /// Fills `len` bytes of a writer's JPEG area with `tag`: its 8 little-endian bytes, then its low
    /// byte repeated. Publishers tag a frame with its timestamp, abandoners with `ABANDONED | n`.
    fn scribble(w: &mut SlotWriter<'_>, tag: u64, len: usize) {
        let buf = &mut w.jpeg_buf()[..len];
        buf[..8].copy_from_slice(&tag.to_le_bytes());
        buf[8..].fill(tag as u8);
    }

    const ABANDONED: u64 = 1 << 63;

    /// Checks that a lease's bytes are the frame its meta names: the JPEG carries the tag the
    /// publisher gave as timestamp, the part header names the meta's seq and length, the trailer is
    /// intact. Read twice, so a slot rewritten while leased is caught too.
    fn check_lease(l: &Lease) -> Result<(), String> {
        let m = *l.meta();
        for pass in 0..2 {
            let j = l.jpeg();
            let tag = u64::from_le_bytes(j[..8].try_into().unwrap());
            if tag != m.timestamp_us || j[8..].iter().any(|&b| b != tag as u8) {
                let what = if tag & ABANDONED != 0 {
                    "an abandoned write"
                } else {
                    "another frame"
                };
                return Err(format!(
                    "pass {pass}: seq {} holds {what} (tag {tag:#x}, meta {m:?})",
                    m.seq
                ));
            }
            let part = l.part();
            if !part.ends_with(PART_TRAILER) {
                return Err(format!("pass {pass}: seq {}: trailer overwritten", m.seq));
            }
            let head = &part[..part.len() - j.len() - PART_TRAILER.len()];
            let head = std::str::from_utf8(head).map_err(|e| format!("header not UTF-8: {e}"))?;
            let want = format!("Content-Length: {}\r\n", m.jpeg_len());
            let frame = format!("X-Frame: {}\r\n", m.seq);
            if !head.contains(&want) || !head.contains(&frame) {
                return Err(format!("pass {pass}: seq {}: header {head:?}", m.seq));
            }
            for _ in 0..16 {
                std::hint::spin_loop();
            }
        }
        Ok(())
    }

    /// Issue 10 item 7: publishing writers beside writers that claim, scribble a longer frame and
    /// abandon it (as an encode worker whose frame turned out older, or failed, does), and readers
    /// that check every lease is the frame its meta names. Before the fix, `publish` cleared the
    /// writer bit before raising `newest`, and a reader could lease a slot claimed and abandoned
    /// after it read `newest`. Stops at the first bad lease; bounded in time otherwise.
    #[test]
    fn abandoning_writers_never_corrupt_a_lease() {
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};
        let limit = Duration::from_secs(4);
        let pool = Arc::new(FramePool::new());
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(std::sync::Mutex::new(None::<String>));
        let start = Instant::now();
        let spawn_loop = |f: Box<dyn Fn(u64) + Send>| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
                    f(i);
                    i += 1;
                }
                i
            })
        };
        let mut threads = Vec::new();
        for w in 0..2u64 {
            let pool = Arc::clone(&pool);
            threads.push(spawn_loop(Box::new(move |i| {
                if let Some(mut s) = pool.claim() {
                    let tag = (i << 3 | w) + 1;
                    let len = 16 + (i as usize * 7) % 200;
                    scribble(&mut s, tag, len);
                    s.publish(len, tag, 4, 4).unwrap();
                }
            })));
        }
        for a in 0..2u64 {
            let pool = Arc::clone(&pool);
            threads.push(spawn_loop(Box::new(move |i| {
                if let Some(mut s) = pool.claim() {
                    scribble(&mut s, ABANDONED | i << 3 | a, 300 + (i as usize % 100));
                }
            })));
        }
        for _ in 0..2 {
            let (pool, stop, bad) = (Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&bad));
            threads.push(spawn_loop(Box::new(move |_| {
                if let Some(l) = pool.lease_newest() {
                    if let Err(e) = check_lease(&l) {
                        bad.lock().unwrap().get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            })));
        }
        let counts: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let bad = bad.lock().unwrap().take();
        assert!(
            bad.is_none(),
            "after {:?}: {}",
            start.elapsed(),
            bad.unwrap()
        );
        assert!(
            counts.iter().all(|&n| n > 100),
            "a thread starved: {counts:?}"
        );
        assert!(pool.counters.published.load(Ordering::Relaxed) > 100);
        assert_eq!(pool.leased(), 0, "a lease leaked");
    }

    /// Writers publish frames whose every byte is the low byte of a per-frame value, with the
    /// value's length; readers lease concurrently and check each frame is whole and unchanged while
    /// held. A torn or rewritten frame fails the test.
    #[test]
    fn stress_publish_lease_release_under_contention() {
        const FRAMES: u64 = 20_000;
        let pool = Arc::new(FramePool::new());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let mut published = 0;
                    for i in 0..FRAMES {
                        let v = (i * 2 + w) as u8;
                        let len = 64 + (i as usize * 37) % 4000;
                        if let Some(mut s) = pool.claim() {
                            s.jpeg_buf()[..len].fill(v);
                            s.jpeg_buf()[0] = (len & 0xff) as u8;
                            s.jpeg_buf()[1] = (len >> 8) as u8;
                            s.publish(len, i, 0, 0).unwrap();
                            published += 1;
                        }
                    }
                    published
                })
            })
            .collect();
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let pool = Arc::clone(&pool);
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut last = 0;
                    let mut checked = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        let Some(l) = pool.lease_newest() else {
                            continue;
                        };
                        assert!(l.seq() >= last, "newest went backwards");
                        last = l.seq();
                        let j = l.jpeg();
                        let len = j[0] as usize | (j[1] as usize) << 8;
                        assert_eq!(len, j.len());
                        let v = j[2];
                        assert!(j[2..].iter().all(|&b| b == v), "torn frame");
                        std::hint::spin_loop();
                        assert!(
                            l.jpeg()[2..].iter().all(|&b| b == v),
                            "rewritten while leased"
                        );
                        checked += 1;
                    }
                    checked
                })
            })
            .collect();
        let published: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        done.store(true, Ordering::Relaxed);
        let checked: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(published > FRAMES, "writers starved: {published}");
        assert!(checked > 0);
        assert_eq!(pool.leased(), 0, "a lease leaked");
        assert_eq!(pool.counters.published.load(Ordering::Relaxed), published);
    }
}
