//! One drain check per serving thread per tick instead of one per viewer: when a frame is published
//! every stream session on a thread wakes and asks whether its socket has drained (see
//! [`super::pollout_now`]). Asked one by one that is a `poll(2)` per viewer per frame, as many
//! system calls as the frame writes themselves. Here the sessions that ask in the same tick join a
//! batch, and one task per thread answers the whole batch with one `poll(2)` (in chunks of
//! [`CHUNK`] descriptors) after every session woken with it has had its turn.
//!
//! A session whose socket has not drained goes on to its backend's own readiness wait, so a slow
//! viewer costs what it did before and a fast one costs a share of one system call.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Most descriptors given to one `poll(2)`.
pub const CHUNK: usize = 512;

/// Not answered yet.
const PENDING: i16 = -1;
/// The batch's `poll(2)` failed: the session checks on its own.
const UNKNOWN: i16 = -2;

/// A connection's answer slot, made once per connection and reused for every check (the batch
/// holds a clone while the check is pending, so a session that gives up leaves nothing dangling).
#[derive(Default)]
pub struct DrainSlot(Rc<Cell<i16>>);

/// The checks of one tick: descriptors, answer slots and wakers, by index.
#[derive(Default)]
struct Lists {
    fds: Vec<libc::pollfd>,
    slots: Vec<Rc<Cell<i16>>>,
    wakers: Vec<Waker>,
}

#[derive(Default)]
struct Batch {
    now: Lists,
    /// The lists of the last flush, kept for their capacity.
    spare: Lists,
    flushing: bool,
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::default();
}

/// Whether `fd` is writable now (has drained below TCP_NOTSENT_LOWAT), checked with the rest of
/// this tick's batch: `Ok`, `Err(WouldBlock)` (not drained) or another error (the peer is gone).
pub fn drained(fd: RawFd, slot: &DrainSlot) -> Check<'_> {
    Check {
        fd,
        slot,
        joined: false,
    }
}

pub struct Check<'a> {
    fd: RawFd,
    slot: &'a DrainSlot,
    joined: bool,
}

impl Future for Check<'_> {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.joined {
            self.joined = true;
            self.slot.0.set(PENDING);
            let (fd, slot) = (self.fd, Rc::clone(&self.slot.0));
            BATCH.with(|b| {
                let mut b = b.borrow_mut();
                b.now.fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                });
                b.now.slots.push(slot);
                b.now.wakers.push(cx.waker().clone());
                if !b.flushing {
                    b.flushing = true;
                    tokio::task::spawn_local(flush());
                }
            });
            return Poll::Pending;
        }
        match self.slot.0.get() {
            PENDING => Poll::Pending,
            UNKNOWN => Poll::Ready(super::pollout_now(self.fd)),
            revents => Poll::Ready(verdict(revents)),
        }
    }
}

/// One `poll(2)` with a zero timeout over `fds` (at most [`CHUNK`] of them): false if the call
/// failed, and then no `revents` means anything.
pub fn poll_now(fds: &mut [libc::pollfd]) -> bool {
    // SAFETY: a valid array of `fds.len()` pollfds; zero timeout.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) >= 0 }
}

/// What a `poll(2)` answer for POLLOUT says: `Ok` (writable, i.e. drained), `Err(WouldBlock)`
/// (not drained) or `Err(BrokenPipe)` (the peer is gone).
pub fn verdict(revents: i16) -> io::Result<()> {
    if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    } else if revents & libc::POLLOUT != 0 {
        Ok(())
    } else {
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }
}

/// Answers the batch once every task woken with it has run (a yield puts this task behind them).
async fn flush() {
    tokio::task::yield_now().await;
    let mut lists = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        b.flushing = false;
        let spare = std::mem::take(&mut b.spare);
        std::mem::replace(&mut b.now, spare)
    });
    let Lists { fds, slots, wakers } = &mut lists;
    for (chunk, slots) in fds.chunks_mut(CHUNK).zip(slots.chunks(CHUNK)) {
        let answered = poll_now(chunk);
        for (p, slot) in chunk.iter().zip(slots) {
            slot.set(if answered { p.revents.max(0) } else { UNKNOWN });
        }
    }
    for w in wakers.drain(..) {
        w.wake();
    }
    fds.clear();
    slots.clear();
    BATCH.with(|b| b.borrow_mut().spare = lists);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    #[test]
    fn revents_verdicts() {
        assert!(verdict(libc::POLLOUT).is_ok());
        assert_eq!(verdict(0).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        for bad in [libc::POLLERR, libc::POLLHUP, libc::POLLNVAL] {
            assert_eq!(
                verdict(bad | libc::POLLOUT).unwrap_err().kind(),
                io::ErrorKind::BrokenPipe
            );
        }
    }

    /// Checks made in one tick are answered together, each with its own socket's state: a
    /// pipe with room is writable, a full one is not.
    #[test]
    fn every_check_of_a_tick_gets_its_own_answer() {
        let pipe = || {
            let mut fds = [0; 2];
            // SAFETY: pipe(2) fills two fds, which the OwnedFds then own.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: fresh fds owned by nothing else.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        let (r_full, w_full) = pipe();
        let (_r_room, w_room) = pipe();
        let fd = w_full.as_raw_fd();
        // SAFETY: fcntl/write on a pipe this test owns.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        let chunk = [0u8; 4096];
        let mut filled = 0;
        // Fill one pipe (bounded: a pipe holds 64 KiB by default).
        // SAFETY: writes from a live buffer to an fd this test owns.
        while filled < 1024 && unsafe { libc::write(fd, chunk.as_ptr().cast(), chunk.len()) } > 0 {
            filled += 1;
        }
        crate::net::block_on_local(async {
            let fds = [w_room.as_raw_fd(), fd, w_room.as_raw_fd(), fd];
            let slots: Vec<DrainSlot> = fds.iter().map(|_| DrainSlot::default()).collect();
            let mut tasks = Vec::new();
            for (fd, slot) in fds.into_iter().zip(slots) {
                tasks.push(tokio::task::spawn_local(async move {
                    drained(fd, &slot).await.map_err(|e| e.kind())
                }));
            }
            let mut got = Vec::new();
            for t in tasks {
                got.push(t.await.unwrap());
            }
            let would = Err(io::ErrorKind::WouldBlock);
            assert_eq!(got, vec![Ok(()), would, Ok(()), would]);
        });
        drop(r_full);
    }
}
