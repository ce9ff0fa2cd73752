//! The frame pool: a fixed set of slots per camera, written once per frame and leased by readers.
//!
//! Why: beltcam must never allocate on the frame path, never copy a frame once per viewer, and never
//! let a slow viewer hold up capture. A slot is filled once by a writer (capture or an encode worker),
//! published with a sequence number, and then only read: every session sending that frame leases the
//! same memory, and the lease is what an in-flight socket write owns (see `net`). The writer only ever
//! claims a slot nobody leases, so a lease pins bytes that can never change under it.
//!
//! Each slot holds the JPEG with its multipart part header rendered in front and the part's CRLF
//! after it, so a streaming session sends one contiguous buffer per frame: one write, no copy. The
//! slots live in a shared-memory file (`memory`), so the frame relay can go further and have the
//! kernel queue a slot's pages on each socket by reference (`sendfile(2)`); such a slot gets fresh
//! pages before it is written again (at its claim), so queued data never changes.
//!
//! Concurrency: one `AtomicU32` per slot is both the writer's claim bit and the readers' count.
//! - Writer: CAS `0 -> WRITER` (Acquire: every earlier reader's reads happen-before our writes);
//!   back off if the slot is the newest frame or holds a seq newer than `newest` (published, its
//!   writer about to raise `newest`); reset the slot's `seq` to 0; write bytes and meta; store
//!   `seq`; clear `WRITER` (Release); raise `newest`. A writer that gives up (its frame turned out
//!   older, the encode failed) just clears `WRITER`: its bytes sit under `seq` 0.
//! - Reader: load `newest`, `fetch_add(1)` on the slot (Acquire); if `WRITER` was set or the slot's
//!   `seq` is not the one `newest` named, undo and retry. Otherwise the bytes are ours to read
//!   until the lease drops (`fetch_sub`, Release), because a writer's CAS needs the count at 0.
//!
//! Both checks matter (issue 10 item 7). Without the newer-than-`newest` check, a second writer
//! could claim the slot in the gap between its publisher's release and `newest` naming it, scribble
//! and abandon it, so readers leased bytes that were not the frame their seq named (and a longer
//! abandoned JPEG overwrote the trailer). Without the reset of `seq` at claim, a reader that read
//! `newest` just before that frame was superseded could count itself into a slot claimed, scribbled
//! and abandoned meanwhile, and find the old `seq` still there. (Raising `newest` before releasing
//! the claim also closes the first gap, but then readers find the newest frame still claimed and
//! come back empty-handed whenever the publisher is preempted between the two.)
//!
//! Capture always gets a free slot (issue 10 item 1). A lease is what an in-flight write owns, and
//! a peer that stops reading stops that write: waiting for the socket to drain before leasing does
//! not bound it (the kernel queues no more than `TCP_NOTSENT_LOWAT` past the peer's window, so a
//! large frame goes out only as fast as the peer reads). Left alone, enough such peers pin every
//! slot and capture stops for everyone. So a lease is revocable once the pool runs short:
//! - Which: `claim()` that takes the last free slot, or finds none, revokes the leases on the
//!   oldest leased frame. Leases are only ever taken on the newest frame, so the frame with the
//!   lowest seq is the one leased longest ago, and it is never the newest (checked against
//!   `newest`, which only moves forward). One slot at a time: a claim that took the last free slot
//!   revokes nothing while an earlier revocation is still being let go; a claim that found nothing
//!   free revokes the next oldest as well. Counted in `reclaimed`.
//! - How: a revocation is a request to the holders, never a change under them. The slot stays
//!   pinned by its count (its bytes cannot change) until every lease on it drops; then it is free
//!   like any other. The holder learns of it through its lease's `Revocation` (per slot: the
//!   revoked seq plus a `tokio::sync::Notify`), which a session awaits beside its write and then
//!   ends: its `shutdown(fd, SHUT_RDWR)` makes an io_uring write in flight complete at once, and
//!   completion drops the `LeaseBuf`; on epoll dropping the write drops it. The session ends
//!   because part of a frame may already be on the wire.
//! - Bound: the claim that takes the last free slot revokes, so holders that let go within a frame
//!   interval cost capture no frame; holders that do not make the next claim fail (counted in
//!   `no_free_slot`) and revoke one more slot. A session that never reaches its `select!` still
//!   ends at its send timeout.
//! - Cost: claim, publish and lease take no lock and allocate nothing. A revocation, only when the
//!   pool is short, is one atomic store and `Notify::notify_waiters` (a short internal lock, and a
//!   wake of each task waiting on that slot), done by the claiming thread. A holder's `revoked()`
//!   future registers with that slot's `Notify` in place, without allocating.

use std::cell::UnsafeCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::http::multipart;
pub use crate::http::multipart::PART_TRAILER;
pub use crate::limits::MAX_JPEG_BYTES;
use crate::limits::{PART_HEADER_MAX, PART_TRAILER_LEN, POOL_SLOTS, SLOT_BYTES};
use crate::obs::stats::PoolStats;

mod memory;

const _: () = assert!(PART_TRAILER.len() == PART_TRAILER_LEN);

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
    /// Seq of the frame in the slot; 0 from a claim until its publish.
    seq: AtomicU64,
    /// Seq whose leases are revoked (0: none). Only ever a seq older than the newest.
    revoked: AtomicU64,
    /// Wakes the holders' `Revocation::revoked` when `revoked` is set.
    revoke: Notify,
    meta: UnsafeCell<FrameMeta>,
}

impl Slot {
    /// Whether the leases on the slot's current frame are revoked (a hint: read without a lease).
    fn holds_revoked(&self) -> bool {
        let seq = self.seq.load(Ordering::Relaxed);
        seq != 0 && self.revoked.load(Ordering::Relaxed) == seq
    }
}

/// Counters kept by the pool itself.
#[derive(Default)]
struct PoolCounters {
    /// Frames published.
    published: AtomicU64,
    /// Frames rejected because they were larger than a slot.
    oversize: AtomicU64,
    /// Frames dropped because every slot was leased or being written.
    no_free_slot: AtomicU64,
    /// Slots whose leases were revoked because the pool ran short (see the module comment).
    reclaimed: AtomicU64,
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
    /// The slots' bytes, `SLOT_BYTES` each (see `memory`).
    memory: memory::Memory,
    /// `(seq << 8) | slot index` of the newest published frame; 0 before the first.
    newest: AtomicU64,
    next_seq: AtomicU64,
    counters: PoolCounters,
    /// Wakes every waiter at each revocation, whatever its slot: the serving threads' relays,
    /// which wake their own sessions that hold the slot (see `serve::fanout`).
    any_revoke: Notify,
}

// SAFETY: the UnsafeCells are only written by the holder of the slot's WRITER claim, which excludes
// every reader (see the module comment); readers only read while holding a counted lease.
unsafe impl Sync for FramePool {}
unsafe impl Send for FramePool {}

// Leases and revocations live in sessions' tasks and are revoked from capture's thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<FramePool>();
    send_sync::<Lease>();
    send_sync::<LeaseBuf>();
    send_sync::<Revocation>();
};

impl Default for FramePool {
    fn default() -> Self {
        Self::new()
    }
}

impl FramePool {
    /// Reserves `POOL_SLOTS` slots of `SLOT_BYTES` in a shared-memory file (see `memory`), lazily
    /// backed by the kernel, so RSS grows only with the frames actually written.
    pub fn new() -> Self {
        const _: () = assert!(POOL_SLOTS >= 3 && POOL_SLOTS < 256);
        let slots = (0..POOL_SLOTS)
            .map(|_| Slot {
                refs: AtomicU32::new(0),
                seq: AtomicU64::new(0),
                revoked: AtomicU64::new(0),
                revoke: Notify::new(),
                meta: UnsafeCell::new(FrameMeta::default()),
            })
            .collect();
        FramePool {
            slots,
            memory: memory::Memory::new(POOL_SLOTS, SLOT_BYTES),
            newest: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
            counters: PoolCounters::default(),
            any_revoke: Notify::new(),
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
    /// written: the frame is dropped, capture goes on. Taking the last free slot, or finding none,
    /// revokes the oldest leases so the next claim finds a slot (see the module comment).
    pub fn claim(&self) -> Option<SlotWriter<'_>> {
        let got = (0..self.slots.len()).find(|&idx| self.try_claim(idx));
        if let Some(idx) = got {
            // Sockets may still queue the last frame's pages: the writer gets fresh ones.
            self.memory.renew(idx);
        }
        self.reclaim_if_short(got);
        match got {
            Some(idx) => Some(SlotWriter { pool: self, idx }),
            None => {
                self.counters.no_free_slot.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn try_claim(&self, idx: usize) -> bool {
        let slot = &self.slots[idx];
        if self.newest_index() == Some(idx) {
            return false;
        }
        // Acquire, paired with the Release of the last lease's drop and of the previous writer's
        // release: their reads and writes of the slot happen-before ours, so the slot is now ours
        // alone until we release it.
        if slot
            .refs
            .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // Never overwrite the newest frame, nor one about to become it: a writer that published
        // into this slot released its claim before raising `newest` (see `publish`), and our CAS
        // acquired that release, so we see the seq it published. A seq newer than what `newest`
        // names is a frame whose publisher is about to raise `newest` to it; one older has been
        // superseded and never will be raised, since `newest` only moves forward.
        race_window();
        let newest = self.newest.load(Ordering::Acquire);
        let seq = slot.seq.load(Ordering::Relaxed);
        if (newest != 0 && (newest & 0xff) as usize == idx) || seq > newest >> 8 {
            slot.refs.fetch_and(!WRITER, Ordering::Release);
            return false;
        }
        // The slot's old frame is no longer leasable: a reader that read `newest` before this
        // frame was superseded, and counts itself in after we give the slot back unpublished,
        // must not find its seq here. Relaxed: our release of the claim publishes it.
        slot.seq.store(0, Ordering::Relaxed);
        true
    }

    /// After a claim that took `got` (or nothing): when no other slot is free, revoke the oldest
    /// leases, unless this claim succeeded and an earlier revocation is still being let go.
    fn reclaim_if_short(&self, got: Option<usize>) {
        let newest = self.newest_index();
        let (mut free, mut pending) = (0, 0);
        for (idx, slot) in self.slots.iter().enumerate() {
            if Some(idx) == got || Some(idx) == newest {
                continue;
            }
            let refs = slot.refs.load(Ordering::Relaxed);
            if refs == 0 {
                free += 1;
            } else if refs & WRITER == 0 && slot.holds_revoked() {
                pending += 1;
            }
        }
        if free == 0 && (got.is_none() || pending == 0) {
            self.revoke_oldest();
        }
    }

    /// Revokes the leases on the oldest leased frame that is not yet revoked, never the newest.
    fn revoke_oldest(&self) {
        let mut oldest: Option<(u64, usize)> = None;
        for (idx, slot) in self.slots.iter().enumerate() {
            let refs = slot.refs.load(Ordering::Relaxed);
            let seq = slot.seq.load(Ordering::Relaxed);
            if refs == 0 || refs & WRITER != 0 || seq == 0 || slot.holds_revoked() {
                continue;
            }
            if oldest.map_or(true, |(s, _)| seq < s) {
                oldest = Some((seq, idx));
            }
        }
        let Some((seq, idx)) = oldest else {
            return;
        };
        // Never the newest frame: `newest` only moves forward, so once it names a later seq this
        // frame can never be the newest again. (A frame published but not yet raised to newest
        // reads as `seq >= newest` here and is left alone.)
        if seq >= self.newest_seq() {
            return;
        }
        let slot = &self.slots[idx];
        // SeqCst, with the load in `Revocation::is_revoked`: a holder that registered with the
        // Notify before our `notify_waiters` is woken; one that registered after sees the store.
        slot.revoked.store(seq, Ordering::SeqCst);
        slot.revoke.notify_waiters();
        // SeqCst, with the load in `revocations`: a relay that enabled its `any_revoked` waiter
        // before this is woken; one that enabled it after reads the new count and looks.
        self.counters.reclaimed.fetch_add(1, Ordering::SeqCst);
        self.any_revoke.notify_waiters();
    }

    /// Revocations so far: a waiter that read this after enabling its [`Self::any_revoked`] future
    /// misses none (a revocation after the read wakes the future).
    pub fn revocations(&self) -> u64 {
        self.counters.reclaimed.load(Ordering::SeqCst)
    }

    /// Whether the leases on frame `seq` in slot `idx` are revoked (see [`Revocation::frame`]).
    pub fn is_revoked(&self, idx: usize, seq: u64) -> bool {
        // SeqCst: see `revoke_oldest`.
        self.slots[idx].revoked.load(Ordering::SeqCst) == seq
    }

    /// Resolves at the next revocation of any slot (after `enable`, even if not yet polled).
    pub fn any_revoked(&self) -> tokio::sync::futures::Notified<'_> {
        self.any_revoke.notified()
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
            // A revoked frame is one a claim wants back: lease the newer one instead.
            if prev & WRITER == 0
                && slot.seq.load(Ordering::Relaxed) == seq
                && slot.revoked.load(Ordering::Relaxed) != seq
            {
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

    /// The pool's figures for /stats and /metrics.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            slots: self.slots.len(),
            slot_bytes: SLOT_BYTES,
            published: self.counters.published.load(Ordering::Relaxed),
            oversize: self.counters.oversize.load(Ordering::Relaxed),
            no_free_slot: self.counters.no_free_slot.load(Ordering::Relaxed),
            reclaimed: self.counters.reclaimed.load(Ordering::Relaxed),
            leased: self.leased(),
        }
    }

    /// Counts a frame refused for its size before it reached `publish` (e.g. a file larger
    /// than a slot, found while reading it into the slot).
    pub fn count_oversize(&self) {
        self.counters.oversize.fetch_add(1, Ordering::Relaxed);
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
        &mut self.bytes()[PART_HEADER_MAX..PART_HEADER_MAX + MAX_JPEG_BYTES]
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: we hold the slot's WRITER claim: no reader or other writer accesses the bytes,
        // which are the slot's `SLOT_BYTES` of the pool's mapping.
        unsafe { std::slice::from_raw_parts_mut(self.pool.memory.slot(self.idx), SLOT_BYTES) }
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
        let mut this = self;
        let bytes = this.bytes();
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
        // Relaxed: readers and the next claimer see it through the release of the claim below.
        slot.seq.store(seq, Ordering::Relaxed);
        // Release, paired with the Acquire of a reader's count and of the next writer's claim:
        // the bytes, meta and seq written above are theirs to see from now on. Released before
        // `newest` names the slot, so readers never find the newest frame still claimed; in the
        // gap, a claimer sees this seq is newer than `newest` and leaves the slot alone.
        slot.refs.fetch_and(!WRITER, Ordering::Release);
        // The claim is released above; skip Drop's release.
        std::mem::forget(this);
        race_window();
        let packed = (seq << 8) | idx as u64;
        // Several writers (encode workers) may publish out of order: newest only moves forward.
        // Release/Acquire on `newest` orders nothing else: readers take the bytes through the
        // slot's count.
        let _ = pool
            .newest
            .fetch_update(Ordering::Release, Ordering::Relaxed, |cur| {
                (cur >> 8 < seq).then_some(packed)
            });
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

    /// The handle a holder awaits beside its write: it resolves when the pool runs short and wants
    /// this lease's slot back. Taken before the lease moves into a write; holds no lease itself.
    pub fn revocation(&self) -> Revocation {
        Revocation {
            pool: Arc::clone(&self.pool),
            idx: self.idx,
            seq: self.meta.seq,
        }
    }

    /// Whether the pool wants this lease's slot back (see `revocation`).
    pub fn is_revoked(&self) -> bool {
        self.pool.slots[self.idx].revoked.load(Ordering::SeqCst) == self.meta.seq
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: a counted lease excludes writers (module comment); the mapping lives as long as
        // the pool, which the lease keeps.
        unsafe { std::slice::from_raw_parts(self.pool.memory.slot(self.idx), SLOT_BYTES) }
    }

    /// Where [`Lease::part`] is in the pool's file, for `sendfile(2)`: `(file, offset)`, or `None`
    /// if the pool has no file (it is then sent by copy). The file's pages so sent may stay queued
    /// on the socket after the lease is gone; the slot's next writer writes fresh pages.
    pub fn part_in_file(&self) -> Option<(RawFd, u64)> {
        self.pool
            .memory
            .splice_from(self.idx, self.meta.part_start as usize)
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

/// Another lease on the same frame (the relay's batch shares one and hands a copy to a session
/// that must finish its write on its own).
impl Clone for Lease {
    fn clone(&self) -> Self {
        // Relaxed, as for `Arc::clone`: `self` already holds the slot, so no writer can claim it
        // until both are gone.
        self.pool.slots[self.idx]
            .refs
            .fetch_add(1, Ordering::Relaxed);
        Lease {
            pool: Arc::clone(&self.pool),
            idx: self.idx,
            meta: self.meta,
        }
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

/// The pool's request that the holders of one leased frame let go of it (see the module comment):
/// a session awaits `revoked()` beside the write that owns the lease and, when it resolves, ends,
/// shutting its socket down so that a write in flight completes and drops the lease.
///
/// ```ignore
/// let lease = pool.lease_after(last)?;
/// let revocation = lease.revocation();
/// tokio::select! {
///     r = conn.write_lease(LeaseBuf::part(lease)) => r?,
///     () = revocation.revoked() => return, // the session's drop runs shutdown(fd, SHUT_RDWR)
/// }
/// ```
pub struct Revocation {
    pool: Arc<FramePool>,
    idx: usize,
    seq: u64,
}

impl Revocation {
    /// Whether the frame's leases are revoked. Stays true for as long as this handle lives.
    pub fn is_revoked(&self) -> bool {
        self.pool.is_revoked(self.idx, self.seq)
    }

    /// The frame's slot and seq, for [`FramePool::is_revoked`].
    pub fn frame(&self) -> (usize, u64) {
        (self.idx, self.seq)
    }

    /// Resolves once the frame's leases are revoked; never, if they are not. Cancel-safe, and
    /// allocation-free (the waiter lives in this future).
    pub async fn revoked(&self) {
        let notify = &self.pool.slots[self.idx].revoke;
        loop {
            let mut notified = std::pin::pin!(notify.notified());
            // Registered before the check, so a revocation between the two still wakes us.
            notified.as_mut().enable();
            if self.is_revoked() {
                return;
            }
            notified.await;
        }
    }
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocation")
            .field("slot", &self.idx)
            .field("seq", &self.seq)
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

/// Which bytes of a lease a write sends. The value an io_uring write owns while in flight: the bytes
/// go from the slot to the socket, and the slot stays pinned until the kernel is done with it.
pub struct LeaseBuf {
    lease: Lease,
    whole_part: bool,
    /// Bytes already sent (left out).
    from: usize,
}

impl LeaseBuf {
    pub fn part(lease: Lease) -> Self {
        Self::part_from(lease, 0)
    }

    /// The part from byte `from` on: the rest of a part whose start a socket already took.
    pub fn part_from(lease: Lease, from: usize) -> Self {
        let from = from.min(lease.part().len());
        LeaseBuf {
            lease,
            whole_part: true,
            from,
        }
    }

    pub fn jpeg(lease: Lease) -> Self {
        LeaseBuf {
            lease,
            whole_part: false,
            from: 0,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.whole_part {
            &self.lease.part()[self.from..]
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

    /// The kernel may still queue a frame's pages on a socket (sent by reference from the pool's
    /// file) after its lease is gone and its slot rewritten: the peer must still get that frame.
    #[test]
    fn a_frame_queued_by_reference_outlives_its_slot() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let pool = Arc::new(FramePool::new());
        fill(&pool, b'A', 8000);
        let lease = pool.lease_newest().unwrap();
        if !memory::file_here(
            "a_frame_queued_by_reference_outlives_its_slot",
            &pool.memory,
        ) {
            return;
        }
        let (file, offset) = lease.part_in_file().expect("the pool has its file");
        let part = lease.part().to_vec();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (sock, _) = listener.accept().unwrap();
        let mut off = offset as libc::off_t;
        // SAFETY: a socket and a file open for the call; `off` is a local.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), file, &mut off, part.len()) };
        assert_eq!(n, part.len() as isize, "a small part is queued whole");
        drop(lease);
        // Every slot is written again, the frame's own among them.
        for _ in 0..=POOL_SLOTS {
            fill(&pool, b'B', 8000);
        }
        let mut got = vec![0u8; part.len()];
        peer.read_exact(&mut got).unwrap();
        assert!(got == part, "the queued frame changed under the socket");
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
        assert!(
            text.starts_with("\r\nContent-Type: image/jpeg\r\n"),
            "{text}"
        );
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

    fn reclaimed(pool: &FramePool) -> u64 {
        pool.counters.reclaimed.load(Ordering::Relaxed)
    }

    /// Issue 10 item 1: peers that never read pin a slot each; capture still gets one.
    #[test]
    fn holder_that_never_lets_go_is_revoked_when_the_pool_runs_short() {
        let pool = Arc::new(FramePool::new());
        let mut held = Vec::new();
        for i in 0..POOL_SLOTS - 1 {
            fill(&pool, i as u8, 8);
            held.push(pool.lease_newest().unwrap());
        }
        // One slot left free: not short yet, nobody is asked for anything.
        assert_eq!(reclaimed(&pool), 0);
        assert!(held.iter().all(|l| !l.is_revoked()));
        // This claim takes the last free slot: the holders of the oldest frame are asked to let go.
        let mut w = pool.claim().expect("the last free slot");
        assert_eq!(reclaimed(&pool), 1);
        assert!(held[0].is_revoked(), "{:?}", held[0]);
        assert!(held[1..].iter().all(|l| !l.is_revoked()));
        w.jpeg_buf()[..8].fill(0xEE);
        w.publish(8, 0, 4, 4).unwrap();
        held.push(pool.lease_newest().unwrap());
        // Its holder does not let go: the next claim finds nothing, drops the frame and asks the
        // next oldest too. The newest frame's holder is never asked.
        assert!(pool.claim().is_none());
        assert_eq!(pool.counters.no_free_slot.load(Ordering::Relaxed), 1);
        assert_eq!(reclaimed(&pool), 2);
        assert!(held[1].is_revoked());
        assert!(held[2..].iter().all(|l| !l.is_revoked()));
        // A revoked lease still pins bytes that do not change.
        assert_eq!(held[0].jpeg(), &[0u8; 8][..]);
        // Once the first holder lets go, the next claim succeeds.
        drop(held.remove(0));
        assert!(pool.claim().is_some());
        assert_eq!(pool.counters.no_free_slot.load(Ordering::Relaxed), 1);
    }

    /// New peers that never read keep arriving, each leasing the newest frame; holders let go
    /// when revoked, as delivery does. Capture then never misses a frame.
    #[test]
    fn capture_always_gets_a_slot_when_revoked_holders_let_go() {
        let pool = Arc::new(FramePool::new());
        let mut held: Vec<Lease> = Vec::new();
        for frame in 0..200u32 {
            let mut w = pool
                .claim()
                .unwrap_or_else(|| panic!("frame {frame}: no slot"));
            w.jpeg_buf()[..4].copy_from_slice(&frame.to_le_bytes());
            let seq = w.publish(4, frame.into(), 4, 4).unwrap();
            for _ in 0..3 {
                held.push(pool.lease_newest().unwrap());
            }
            assert!(held.iter().all(|l| l.seq() < seq || !l.is_revoked()));
            held.retain(|l| !l.is_revoked());
            // Bounded: only the frames still pinned are held.
            assert!(held.len() <= 3 * POOL_SLOTS, "{}", held.len());
        }
        assert_eq!(pool.counters.no_free_slot.load(Ordering::Relaxed), 0);
        assert!(reclaimed(&pool) >= 190, "{}", reclaimed(&pool));
        for l in &held {
            let frame = u32::from_le_bytes(l.jpeg().try_into().unwrap());
            assert_eq!(u64::from(frame), l.meta().timestamp_us);
        }
    }

    #[test]
    fn newest_frame_is_never_revoked() {
        let pool = Arc::new(FramePool::new());
        // Every slot but the newest is being written and the newest is leased: nothing to ask.
        fill(&pool, 1, 8);
        let on_newest: Vec<_> = (0..3).map(|_| pool.lease_newest().unwrap()).collect();
        let writers: Vec<_> = std::iter::from_fn(|| pool.claim())
            .take(POOL_SLOTS)
            .collect();
        assert_eq!(writers.len(), POOL_SLOTS - 1);
        assert_eq!(reclaimed(&pool), 0);
        assert!(on_newest.iter().all(|l| !l.is_revoked()));
        drop(writers);
        // Every slot leased, claims keep failing: the revocations walk from the oldest frame up
        // and stop short of the newest.
        let mut held = on_newest;
        for i in 1..POOL_SLOTS {
            fill(&pool, i as u8 + 1, 8);
            held.push(pool.lease_newest().unwrap());
        }
        for _ in 0..2 * POOL_SLOTS {
            assert!(pool.claim().is_none());
        }
        assert_eq!(reclaimed(&pool), POOL_SLOTS as u64 - 1);
        let newest = pool.newest_seq();
        for l in &held {
            assert_eq!(l.is_revoked(), l.seq() != newest, "{l:?}");
        }
        assert_eq!(pool.lease_newest().unwrap().seq(), newest);
    }

    /// A holder waiting on `revoked()` (as a session does beside its write) is woken by a claim
    /// made on another thread (capture's).
    #[test]
    fn revocation_wakes_a_waiting_holder() {
        use std::time::Duration;
        let pool = Arc::new(FramePool::new());
        let mut held = Vec::new();
        // One slot left free: the claim below takes it, which asks the oldest frame back.
        for i in 0..POOL_SLOTS - 1 {
            fill(&pool, i as u8, 8);
            held.push(pool.lease_newest().unwrap());
        }
        let oldest = held[0].revocation();
        let newest = held[POOL_SLOTS - 2].revocation();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut wait = std::pin::pin!(oldest.revoked());
            // Polled once, so it is registered before the claim.
            let early = tokio::time::timeout(Duration::from_millis(5), wait.as_mut()).await;
            assert!(early.is_err(), "resolved before any claim");
            let claimer = {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || pool.claim().is_some())
            };
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .expect("the revocation woke the holder");
            assert!(
                claimer.join().unwrap(),
                "the last free slot was not claimed"
            );
            let newest_woken =
                tokio::time::timeout(Duration::from_millis(5), newest.revoked()).await;
            assert!(newest_woken.is_err(), "the newest frame was revoked");
        });
        assert!(oldest.is_revoked() && held[0].is_revoked());
        assert_eq!(reclaimed(&pool), 1);
    }

    /// Publishing and abandoning writers, checking readers, and peers that pin leases until they
    /// are revoked: every lease's bytes stay the frame its meta names, revocations happen, and
    /// capture keeps publishing.
    #[test]
    fn stress_with_revocations_keeps_every_lease_whole() {
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};
        let limit = Duration::from_secs(2);
        let pool = Arc::new(FramePool::new());
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(std::sync::Mutex::new(None::<String>));
        let start = Instant::now();
        let mut threads = Vec::new();
        let report = |bad: &std::sync::Mutex<Option<String>>, stop: &AtomicBool, e: String| {
            bad.lock().unwrap().get_or_insert(e);
            stop.store(true, Ordering::Relaxed);
        };
        for w in 0..2u64 {
            let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
                    i += 1;
                    if let Some(mut s) = pool.claim() {
                        let tag = (i << 1 | w) + 1;
                        let len = 16 + (i as usize * 7) % 200;
                        scribble(&mut s, tag, len);
                        s.publish(len, tag, 4, 4).unwrap();
                    }
                }
                i
            }));
        }
        {
            let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
                    i += 1;
                    if let Some(mut s) = pool.claim() {
                        scribble(&mut s, ABANDONED | i, 300 + (i as usize % 100));
                    }
                }
                i
            }));
        }
        // Two brief readers, two that pin up to three frames each until revoked.
        for pin in [0usize, 0, 3, 3] {
            let (pool, stop, bad) = (Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&bad));
            threads.push(std::thread::spawn(move || {
                let mut held: Vec<Lease> = Vec::new();
                let mut let_go = 0u64;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
                    let last = held.last().map_or(0, Lease::seq);
                    if let Some(l) = pool.lease_after(last) {
                        held.push(l);
                    }
                    for l in &held {
                        if let Err(e) = check_lease(l) {
                            report(&bad, &stop, e);
                        }
                    }
                    let before = held.len();
                    held.retain(|l| !l.is_revoked());
                    let_go += (before - held.len()) as u64;
                    if held.len() > pin {
                        held.remove(0);
                    }
                }
                let_go
            }));
        }
        let counts: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let bad = bad.lock().unwrap().take();
        assert!(
            bad.is_none(),
            "after {:?}: {}",
            start.elapsed(),
            bad.unwrap()
        );
        let published = pool.counters.published.load(Ordering::Relaxed);
        assert!(published > 100, "capture starved: {published}, {counts:?}");
        assert!(reclaimed(&pool) > 0, "no revocation: {counts:?}");
        assert!(
            counts[5] + counts[6] > 0,
            "no pinning reader was revoked: {counts:?}"
        );
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
