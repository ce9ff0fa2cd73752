//! Frame wake-ups per serving thread, not per session. The capture thread announces each frame on
//! its camera's watch channel; were every stream session subscribed to it, one frame would wake a
//! thousand tasks from the capture thread (a queue push under a lock each, on the serving threads'
//! remote queues). Instead one relay task per serving thread and camera listens, and wakes that
//! thread's sessions of the camera from a plain list, on their own thread.
//!
//! A session's wait re-checks the pool itself ([`Frames::after`]), so a frame published between its
//! check and its wait is never missed: both run on the relay's thread, which cannot run in between.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

use crate::capture::Camera;

/// One serving thread's subscription to one camera's frames, shared by its sessions.
pub struct Frames {
    shared: Rc<Shared>,
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
        if let Some(shared) = found {
            return Frames { shared };
        }
        let shared = Rc::new(Shared::default());
        r.push((Arc::downgrade(cam), Rc::downgrade(&shared)));
        tokio::task::spawn_local(relay(cam.subscribe(), Rc::downgrade(&shared)));
        Frames { shared }
    })
}

/// Wakes the thread's waiting sessions at every frame; ends when they are all gone, or the camera.
async fn relay(mut rx: watch::Receiver<u64>, shared: Weak<Shared>) {
    loop {
        let closed = rx.changed().await.is_err();
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let cam = camera();
        local.block_on(&rt, async {
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
}
