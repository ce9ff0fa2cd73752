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

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

use crate::capture::Camera;
use crate::pool::{FramePool, Revocation};

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

/// A session's write in flight: the frame (slot, seq) and the task to wake if it is revoked.
#[derive(Default)]
struct Writer {
    frame: Option<(usize, u64)>,
    waker: Option<Waker>,
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
            tokio::task::spawn_local(relay(rx, pool, Rc::downgrade(&shared)));
            shared
        });
        let place = shared.writers.borrow_mut().insert(Writer::default());
        Frames { shared, place }
    })
}

/// Wakes the thread's waiting sessions at every frame, and its writing sessions whose frame the
/// pool revoked; ends when they are all gone, or the camera.
async fn relay(mut rx: watch::Receiver<u64>, pool: Arc<FramePool>, shared: Weak<Shared>) {
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

impl Frames {
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
