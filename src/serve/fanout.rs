//! Frame wake-ups per serving thread, not per session. The capture thread announces each frame on
//! its camera's watch channel; were every stream session subscribed to it, one frame would wake a
//! thousand tasks from the capture thread (a queue push under a lock each, on the serving threads'
//! remote queues). Instead one relay task per serving thread and camera listens, and wakes that
//! thread's sessions of the camera from a plain list, on their own thread.
//!
//! A session's wait re-checks the pool itself ([`Frames::after`]), so a frame published between its
//! check and its wait is never missed: both run on the relay's thread, which cannot run in between.
//!
//! The relay also watches revocations for the thread's sessions. A write in flight must end when
//! the pool takes its frame back (see `pool`); waiting on the slot's own `Notify` costs every
//! session a lock on a mutex all sessions share, twice a frame. Instead a session notes the frame
//! it is writing in its place here ([`Frames::revoked`]), and the relay, woken by any revocation
//! of the pool, wakes the sessions whose frame it was.
//!
//! Plain sessions (the pool's shared part, no pacing) go further: they park here between frames
//! ([`Frames::parked`]) and the relay sends each new frame to all of them itself, in one pass
//! (`net::burst`): one drain check for all their sockets, one lease for the batch, one
//! non-blocking `sendfile(2)` per socket from the pool's file (the kernel queues the slot's pages
//! by reference, no copy per socket; see `pool::memory`) where that measured cheaper
//! ([`SPLICE_MIN`], [`SPLICE_MAX_PART`]), else one batch of non-blocking sends (one
//! `io_uring_enter` on io_uring), and no task woken. A socket that has not
//! drained, takes part of the frame or fails is handed back to its session ([`Handoff`]), which
//! finishes on its own path with its send timeout and revocation watch, then parks again.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

use super::Server;
use crate::admit::sessions::SessionCounters;
use crate::capture::Camera;
use crate::net::{batch, burst};
use crate::pool::{FramePool, Lease, Revocation};

/// One serving thread's subscription to one camera's frames, shared by its sessions; each session
/// has its own, with its place in the revocation watch.
pub struct Frames {
    shared: Rc<Shared>,
    place: usize,
}

impl Drop for Frames {
    fn drop(&mut self) {
        self.shared.writers.borrow_mut().remove(self.place);
    }
}

/// A session's place: its write in flight, the frame (slot, seq), and its task, to wake if that
/// frame is revoked or (a plain session) when the relay hands it something.
#[derive(Default)]
struct Writer {
    frame: Option<(usize, u64)>,
    waker: Option<Waker>,
    fast: Option<Fast>,
}

/// A plain session the relay sends frames to.
struct Fast {
    fd: RawFd,
    /// The socket is `O_NONBLOCK` already (see `burst::send_file_all`).
    nonblocking: bool,
    counters: Arc<SessionCounters>,
    app: Arc<Server>,
    mode: Mode,
}

enum Mode {
    /// The session's task is sending on its own.
    Busy,
    /// Parked: the relay sends it every frame newer than `last`.
    Parked { last: u64 },
    /// Handed back, to be taken by the session's task; `last` is the relay's last full send.
    Handed { handoff: Handoff, last: u64 },
}

/// What the relay hands a parked session's task.
#[derive(Debug)]
pub enum Handoff {
    /// Send the next frame on your own path: the socket had not drained, took nothing, the pool
    /// had no frame to share, a frame came while the session was busy, or the camera was retired
    /// or is gone (the session looks which).
    Own,
    /// The socket took the first `sent` bytes of this frame's part: write the rest.
    Rest { lease: Lease, sent: usize },
    /// The socket failed.
    Gone,
}

#[derive(Default)]
struct Shared {
    waiting: RefCell<Vec<Waker>>,
    /// The previous wake's list, kept for its capacity.
    spare: RefCell<Vec<Waker>>,
    /// Wakes so far: a waiter registers once per wake.
    wakes: Cell<u64>,
    /// The camera's channel closed (the camera is gone).
    gone: Cell<bool>,
    /// One place per session (made when it subscribes, removed when it ends).
    writers: RefCell<slab::Slab<Writer>>,
    /// Parked sessions (their places); the relay's burst lists, kept for their capacity.
    burst: RefCell<BurstLists>,
}

/// Places are kept with the `last` their session was parked at.
#[derive(Default)]
struct BurstLists {
    places: Vec<(usize, u64)>,
    polls: Vec<libc::pollfd>,
    fds: Vec<RawFd>,
    nonblocking: Vec<bool>,
    sending: Vec<(usize, u64)>,
    results: Vec<io::Result<usize>>,
}

type Relays = Vec<(std::sync::Weak<Camera>, Weak<Shared>)>;

thread_local! {
    static RELAYS: RefCell<Relays> = const { RefCell::new(Vec::new()) };
}

/// This thread's subscription to `cam`, starting its relay task if it has none. Must be called on a
/// serving thread (it spawns a local task).
pub fn frames(cam: &Arc<Camera>) -> Frames {
    RELAYS.with(|r| {
        let mut r = r.borrow_mut();
        r.retain(|(c, s)| c.strong_count() > 0 && s.strong_count() > 0);
        let found = r
            .iter()
            .find(|(c, _)| std::ptr::eq(c.as_ptr(), Arc::as_ptr(cam)))
            .and_then(|(_, s)| s.upgrade());
        let shared = found.unwrap_or_else(|| {
            let shared = Rc::new(Shared::default());
            r.push((Arc::downgrade(cam), Rc::downgrade(&shared)));
            let (rx, pool) = (cam.subscribe(), Arc::clone(&cam.pool));
            let cam = Arc::downgrade(cam);
            tokio::task::spawn_local(relay(rx, pool, cam, Rc::downgrade(&shared)));
            shared
        });
        let place = shared.writers.borrow_mut().insert(Writer::default());
        Frames { shared, place }
    })
}

/// Wakes the thread's waiting sessions at every frame, and its writing sessions whose frame the
/// pool revoked; ends when they are all gone, or the camera.
async fn relay(
    mut rx: watch::Receiver<u64>,
    pool: Arc<FramePool>,
    cam: std::sync::Weak<Camera>,
    shared: Weak<Shared>,
) {
    let mut seen = pool.revocations();
    loop {
        let revoked = pool.any_revoked();
        let mut revoked = std::pin::pin!(revoked);
        // Enabled before the count is read: a revocation after the read wakes it.
        revoked.as_mut().enable();
        let now = pool.revocations();
        if now != seen {
            seen = now;
            let Some(s) = shared.upgrade() else {
                return;
            };
            for (_, w) in s.writers.borrow().iter() {
                if let (Some((slot, seq)), Some(waker)) = (w.frame, &w.waker) {
                    if pool.is_revoked(slot, seq) {
                        waker.wake_by_ref();
                    }
                }
            }
        }
        let closed = tokio::select! {
            r = rx.changed() => r.is_err(),
            () = &mut revoked => continue,
        };
        let Some(s) = shared.upgrade() else {
            return;
        };
        s.gone.set(closed);
        let ended = closed || cam.upgrade().map_or(true, |c| c.is_retired());
        burst_pass(&s, &pool, ended);
        s.wakes.set(s.wakes.get() + 1);
        let mut list = s.spare.take();
        std::mem::swap(&mut list, &mut *s.waiting.borrow_mut());
        for w in list.drain(..) {
            w.wake();
        }
        *s.spare.borrow_mut() = list;
        if closed {
            return;
        }
    }
}

/// Sends the newest frame to every parked session that has not had it, in one pass (see the
/// module comment); hands back those it cannot serve. With `ended` (the camera is retired or
/// gone) every parked session is handed back instead, to find out.
fn burst_pass(s: &Shared, pool: &Arc<FramePool>, ended: bool) {
    let mut writers = s.writers.borrow_mut();
    let mut lists = s.burst.borrow_mut();
    let BurstLists {
        places,
        polls,
        fds,
        nonblocking,
        sending,
        results,
    } = &mut *lists;
    let newest = pool.newest_seq();
    places.clear();
    polls.clear();
    for (place, w) in writers.iter_mut() {
        let Some(f) = &mut w.fast else { continue };
        let Mode::Parked { last } = f.mode else {
            continue;
        };
        if ended {
            hand(w, Handoff::Own, last);
        } else if last < newest {
            places.push((place, last));
            polls.push(libc::pollfd {
                fd: f.fd,
                events: libc::POLLOUT,
                revents: 0,
            });
        }
    }
    if places.is_empty() {
        return;
    }
    let lease = pool.lease_newest();
    for chunk in polls.chunks_mut(batch::CHUNK) {
        if !batch::poll_now(chunk) {
            // Unknown: every session of the chunk checks on its own.
            chunk.iter_mut().for_each(|p| p.revents = 0);
        }
    }
    fds.clear();
    nonblocking.clear();
    sending.clear();
    for (&(place, last), p) in places.iter().zip(polls.iter()) {
        let w = &mut writers[place];
        let fresh = lease.as_ref().is_some_and(|l| l.seq() > last);
        match batch::verdict(p.revents) {
            Ok(()) if fresh => {
                fds.push(p.fd);
                nonblocking.push(w.fast.as_ref().is_some_and(|f| f.nonblocking));
                sending.push((place, last));
            }
            Ok(()) => hand(w, Handoff::Own, last),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => hand(w, Handoff::Own, last),
            Err(_) => hand(w, Handoff::Gone, last),
        }
    }
    let Some(lease) = lease.filter(|_| !fds.is_empty()) else {
        return;
    };
    let part = lease.part();
    let (seq, len) = (lease.seq(), part.len());
    // By reference from the pool's file where it has one, where that measured cheaper (see
    // `SPLICE_MIN`, `SPLICE_MAX_PART`) and where this thread may, else by copy.
    let file = (fds.len() >= SPLICE_MIN && len <= SPLICE_MAX_PART && burst::sends_by_reference())
        .then(|| lease.part_in_file())
        .flatten();
    match file {
        Some(file) => burst::send_file_all(file, part, fds, nonblocking, results),
        None => burst::send_all(part, fds, results),
    }
    let mut bytes = 0;
    let mut app = None;
    for (&(place, last), r) in sending.iter().zip(results.iter()) {
        let w = &mut writers[place];
        let Some(f) = &mut w.fast else { continue };
        match r {
            Ok(n) if *n == len => {
                f.counters.record_frame(len, skipped(last, seq));
                f.mode = Mode::Parked { last: seq };
                bytes += len;
                app.get_or_insert_with(|| Arc::clone(&f.app));
            }
            Ok(n) if *n > 0 => {
                let handoff = Handoff::Rest {
                    lease: lease.clone(),
                    sent: *n,
                };
                hand(w, handoff, last);
            }
            Ok(_) => hand(w, Handoff::Own, last),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => hand(w, Handoff::Own, last),
            Err(_) => hand(w, Handoff::Gone, last),
        }
    }
    if let Some(app) = app {
        app.count_bytes(bytes);
    }
}

/// The fewest sockets in a relay pass that are sent the frame by reference (`sendfile(2)`) rather
/// than by copy. A slot sent by reference costs its next writer fresh pages (a punch of the slot and
/// a page fault per page written, about 150 µs for a 200 KB frame here), once per frame; sending by
/// reference saves part of a copy per socket. Below this the copies are cheaper, and the few
/// viewers' latency lower (5 viewers of 720p: 0.10–0.13 CPU-s against 0.13–0.20 by reference).
const SPLICE_MIN: usize = 16;

/// The largest part sent by reference. Measured on the x86 benchmark host (issue 15, loopback,
/// io_uring, CPU-seconds against the copy's in alternating runs): 200 viewers of 166 KB parts
/// 0.80–0.84 against 0.93–1.06, 300 of 112 KB 0.77–0.89 against 0.97–1.11, with a lower p99 each
/// time; but 200 of 213 KB (720p) 1.72–1.97 against 1.27–1.35, and of 480 KB 5.9–6.2 against
/// 3.6–3.7. Why the cost turns between 166 and 213 KB is not found (the profile's time is inside
/// TCP's transmit with interrupts off); until it is, larger parts are copied.
const SPLICE_MAX_PART: usize = 192 * 1024;

/// Frames a session skipped between the last it was sent (`last`, 0 if none yet) and `seq`.
pub fn skipped(last: u64, seq: u64) -> u64 {
    if last == 0 {
        0
    } else {
        seq.saturating_sub(last + 1)
    }
}

/// Hands `handoff` to a parked session and wakes its task.
fn hand(w: &mut Writer, handoff: Handoff, last: u64) {
    if let Some(f) = &mut w.fast {
        f.mode = Mode::Handed { handoff, last };
        if let Some(waker) = &w.waker {
            waker.wake_by_ref();
        }
    }
}

impl Frames {
    /// Makes this a plain session the relay sends frames to while it is parked
    /// ([`Frames::parked`]); `fd` is its socket, open for as long as `self` lives, `O_NONBLOCK`
    /// or not as `nonblocking` says.
    pub fn send_here(
        &self,
        fd: RawFd,
        nonblocking: bool,
        counters: Arc<SessionCounters>,
        app: Arc<Server>,
    ) {
        self.shared.writers.borrow_mut()[self.place].fast = Some(Fast {
            fd,
            nonblocking,
            counters,
            app,
            mode: Mode::Busy,
        });
    }

    /// Parks the session (see [`Frames::send_here`]) until the relay hands it something back:
    /// resolves with that and the seq of the last frame sent to it. `last` is the last frame the
    /// session sent on its own; a newer one already published is handed back at once.
    pub fn parked<'a>(&'a self, cam: &'a Camera, last: u64) -> Parked<'a> {
        Parked {
            frames: self,
            cam,
            last,
        }
    }

    /// What the relay handed back and the session's task has not taken (a stopping session
    /// finishes a part the relay started).
    pub fn take_handoff(&self) -> Option<(Handoff, u64)> {
        let mut writers = self.shared.writers.borrow_mut();
        let f = writers.get_mut(self.place)?.fast.as_mut()?;
        match std::mem::replace(&mut f.mode, Mode::Busy) {
            Mode::Handed { handoff, last } => Some((handoff, last)),
            other => {
                f.mode = other;
                None
            }
        }
    }

    /// Resolves once the pool revokes the frame of `revocation`, which this session is writing:
    /// never, if it is not. Must be polled on the thread that made `self` (a session's task is).
    pub fn revoked<'a>(&'a self, revocation: &'a Revocation) -> Revoked<'a> {
        Revoked {
            frames: self,
            revocation,
        }
    }

    /// Resolves once `cam` has a frame newer than `last` or is retired (`Ok`; the caller looks
    /// which), or its channel closed (`Err`).
    pub fn after<'a>(&'a self, cam: &'a Camera, last: u64) -> After<'a> {
        After {
            shared: &self.shared,
            cam,
            last,
            registered: None,
        }
    }
}

pub struct After<'a> {
    shared: &'a Shared,
    cam: &'a Camera,
    last: u64,
    registered: Option<u64>,
}

impl Future for After<'_> {
    type Output = Result<(), ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        if self.cam.pool.newest_seq() > self.last || self.cam.is_retired() {
            return Poll::Ready(Ok(()));
        }
        if self.shared.gone.get() {
            return Poll::Ready(Err(()));
        }
        let wakes = self.shared.wakes.get();
        if self.registered != Some(wakes) {
            self.registered = Some(wakes);
            self.shared.waiting.borrow_mut().push(cx.waker().clone());
        }
        Poll::Pending
    }
}

pub struct Parked<'a> {
    frames: &'a Frames,
    cam: &'a Camera,
    last: u64,
}

impl Future for Parked<'_> {
    type Output = (Handoff, u64);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(Handoff, u64)> {
        let mut writers = self.frames.shared.writers.borrow_mut();
        let w = &mut writers[self.frames.place];
        let Some(f) = &mut w.fast else {
            return Poll::Ready((Handoff::Own, self.last));
        };
        match std::mem::replace(&mut f.mode, Mode::Busy) {
            Mode::Handed { handoff, last } => return Poll::Ready((handoff, last)),
            Mode::Busy => {
                // A frame published while the session was busy found it so: it is sent now.
                let newest = self.cam.pool.newest_seq();
                if newest > self.last || self.cam.is_retired() || self.frames.shared.gone.get() {
                    return Poll::Ready((Handoff::Own, self.last));
                }
                f.mode = Mode::Parked { last: self.last };
            }
            parked @ Mode::Parked { .. } => f.mode = parked,
        }
        match &mut w.waker {
            Some(old) if old.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        // Left while parked (the session stops): the relay sends no more. A handoff stays for
        // `take_handoff` (or goes with the place).
        if let Ok(mut writers) = self.frames.shared.writers.try_borrow_mut() {
            if let Some(f) = writers
                .get_mut(self.frames.place)
                .and_then(|w| w.fast.as_mut())
            {
                if matches!(f.mode, Mode::Parked { .. }) {
                    f.mode = Mode::Busy;
                }
            }
        }
    }
}

pub struct Revoked<'a> {
    frames: &'a Frames,
    revocation: &'a Revocation,
}

impl Future for Revoked<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Noted before the check: a revocation after it wakes the relay, which runs on this
        // thread after this poll and finds the note.
        let mut writers = self.frames.shared.writers.borrow_mut();
        let w = &mut writers[self.frames.place];
        w.frame = Some(self.revocation.frame());
        match &mut w.waker {
            Some(old) if old.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        if self.revocation.is_revoked() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Revoked<'_> {
    fn drop(&mut self) {
        if let Ok(mut writers) = self.frames.shared.writers.try_borrow_mut() {
            if let Some(w) = writers.get_mut(self.frames.place) {
                w.frame = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn camera() -> Arc<Camera> {
        crate::capture::test_camera("t")
    }

    /// Sessions on one thread share one relay; a frame published from another thread wakes every
    /// one of them, and retiring the camera wakes them too.
    #[test]
    fn one_relay_per_thread_wakes_every_session() {
        let cam = camera();
        crate::net::block_on_local(async {
            let mut tasks = Vec::new();
            for _ in 0..50 {
                let cam = Arc::clone(&cam);
                tasks.push(tokio::task::spawn_local(async move {
                    let frames = frames(&cam);
                    frames.after(&cam, 0).await
                }));
            }
            tokio::task::yield_now().await;
            let relays = RELAYS.with(|r| r.borrow().len());
            assert_eq!(relays, 1, "one relay for the camera on this thread");
            let publisher = Arc::clone(&cam);
            std::thread::spawn(move || publisher.publish_placeholder());
            for t in tasks {
                let r = tokio::time::timeout(Duration::from_secs(10), t).await;
                assert_eq!(r.expect("woken").unwrap(), Ok(()));
            }
            // Waiting past the newest frame: retiring the camera wakes the waiter.
            let newest = cam.pool.newest_seq();
            assert!(newest > 0);
            let frames = frames(&cam);
            let retire = Arc::clone(&cam);
            std::thread::spawn(move || retire.retire());
            let r = tokio::time::timeout(Duration::from_secs(10), frames.after(&cam, newest)).await;
            assert_eq!(r.expect("woken by the retirement"), Ok(()));
            assert!(cam.is_retired());
        });
    }

    /// A write waiting on its frame's revocation through the relay is woken when a claim on
    /// another thread takes that frame back; a write of a frame not revoked is not, and its
    /// place is given back when its session ends.
    #[test]
    fn the_relay_wakes_the_writer_whose_frame_is_revoked() {
        use crate::limits::POOL_SLOTS;
        let cam = camera();
        // Every slot but one leased, oldest first: the next claim takes the last free one and
        // asks the oldest frame back.
        let mut held = Vec::new();
        for _ in 0..POOL_SLOTS - 1 {
            cam.publish_placeholder();
            held.push(cam.pool.lease_newest().expect("a frame"));
        }
        crate::net::block_on_local(async {
            // Each writer in its own task, as sessions are: only a wake runs it again.
            let writer = |revocation: Revocation| {
                let cam = Arc::clone(&cam);
                tokio::task::spawn_local(async move {
                    let frames = frames(&cam);
                    frames.revoked(&revocation).await;
                })
            };
            let old = writer(held[0].revocation());
            let mut new = writer(held[POOL_SLOTS - 2].revocation());
            let probe = frames(&cam);
            let writing = || {
                let w = probe.shared.writers.borrow();
                w.iter().filter(|(_, w)| w.frame.is_some()).count()
            };
            for _ in 0..1000 {
                if writing() == 2 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert_eq!(writing(), 2, "the writers did not note their frames");
            let pool = Arc::clone(&cam.pool);
            let claimer = std::thread::spawn(move || pool.claim().is_some());
            tokio::time::timeout(Duration::from_secs(10), old)
                .await
                .expect("the relay woke the writer of the revoked frame")
                .unwrap();
            assert!(
                claimer.join().unwrap(),
                "the last free slot was not claimed"
            );
            let woken = tokio::time::timeout(Duration::from_millis(20), &mut new).await;
            assert!(
                woken.is_err(),
                "the newest frame's writer was woken as revoked"
            );
            new.abort();
            let _ = new.await;
            assert_eq!(
                probe.shared.writers.borrow().len(),
                1,
                "places not given back"
            );
        });
        assert!(held[0].is_revoked() && !held[POOL_SLOTS - 2].is_revoked());
    }
}
