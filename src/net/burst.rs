//! One frame to many sockets in one pass: the fast path of the serving thread's frame relay (see
//! `serve::fanout`). Every send is non-blocking, so the pass never waits: a socket that takes only
//! part of the frame, or none, is reported as such and its session finishes on its own.
//!
//! On an io_uring serving thread the sends are one batch of `IORING_OP_SEND` entries on a ring of
//! the thread's own, submitted with one `io_uring_enter` per [`RING_ENTRIES`] sockets. A send with
//! `MSG_DONTWAIT` is never queued by the kernel for a later retry: it completes during the
//! submission, with what the socket took or `-EAGAIN`, so after the call every entry has its
//! completion and no buffer is left in the kernel's hands. A thread checks that once, on a socket
//! pair it fills itself, before it uses the ring ([`use_uring_on_this_thread`]); a kernel that
//! queued such a send instead makes the thread use `send(2)` (logged). Elsewhere (epoll, tests)
//! the batch is one `send(2)` per socket, like the raw writer the benchmark compares against.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};
use tracing::warn;

/// Submission entries of a thread's ring: the most sends one `io_uring_enter` carries.
pub const RING_ENTRIES: u32 = 256;

const FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// Makes this thread's bursts go through a ring of its own, if the kernel completes a
/// `MSG_DONTWAIT` send during its submission (checked here). Called once per io_uring serving
/// thread; on failure the thread keeps using `send(2)`.
pub fn use_uring_on_this_thread() {
    match ring_checked() {
        Ok(ring) => RING.with(|r| *r.borrow_mut() = Some(ring)),
        Err(e) => warn!(
            "io_uring: frame bursts use send(2) on this thread ({e}); io_uring carries the rest"
        ),
    }
}

/// Whether this thread's bursts go through io_uring.
#[cfg(test)]
fn uses_uring() -> bool {
    RING.with(|r| r.borrow().is_some())
}

fn ring_checked() -> io::Result<IoUring> {
    let ring = IoUring::new(RING_ENTRIES)?;
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) fills two fds, which the OwnedFds below then own.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds owned by nothing else.
    let (_rx, tx) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    use std::os::fd::AsRawFd;
    let tx = tx.as_raw_fd();
    let chunk = vec![0u8; 64 * 1024];
    // Fill the pair (bounded: a socket buffer holds a few hundred KiB at most).
    let mut full = false;
    for _ in 0..1024 {
        // SAFETY: a live buffer, an fd this function owns.
        let n = unsafe { libc::send(tx, chunk.as_ptr().cast(), chunk.len(), FLAGS) };
        if n < 0 {
            full = io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock;
            break;
        }
    }
    if !full {
        return Err(io::Error::other(
            "could not fill a socket pair for the check",
        ));
    }
    // One send on the full socket, submitted without waiting for it: a kernel that queued it
    // (instead of answering EAGAIN at once) must not hang the thread here.
    let mut ring = ring;
    let sqe = opcode::Send::new(types::Fd(tx), chunk.as_ptr(), chunk.len() as u32)
        .flags(FLAGS)
        .build()
        .user_data(0);
    // SAFETY: `chunk` outlives the entry: this function waits for its completion below.
    unsafe { ring.submission().push(&sqe) }
        .map_err(|_| io::Error::other("submission queue full"))?;
    ring.submit()?;
    let answered = ring.completion().next().map(|cqe| cqe.result());
    if answered.is_none() {
        // Queued: the shutdown completes it (with an error) at once, then it is reaped, so the
        // kernel holds no pointer into `chunk` when it is freed.
        // SAFETY: plain syscall on an fd this function owns.
        unsafe { libc::shutdown(tx, libc::SHUT_RDWR) };
        loop {
            match ring.submit_and_wait(1) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => {
                    r?;
                    break;
                }
            }
        }
        let _ = ring.completion().next();
    }
    match answered {
        Some(res) if res == -libc::EAGAIN => Ok(ring),
        other => Err(io::Error::other(format!(
            "a MSG_DONTWAIT send on a full socket gave {other:?}, not EAGAIN at once"
        ))),
    }
}

/// Sends `buf` to every socket of `fds`, without waiting: `results[i]` is what socket `i` took
/// (possibly less than `buf.len()`), `Err(WouldBlock)` if it took nothing, or its error.
pub fn send_all(buf: &[u8], fds: &[RawFd], results: &mut Vec<io::Result<usize>>) {
    results.clear();
    let done = RING.with(|r| {
        let mut r = r.borrow_mut();
        let Some(ring) = r.as_mut() else {
            return false;
        };
        if let Err(e) = burst_ring(ring, buf, fds, results) {
            // The ring failed as a whole (not one socket): this thread goes on with send(2).
            warn!("io_uring: a frame burst failed ({e}); this thread uses send(2) from now on");
            *r = None;
            results.clear();
            return false;
        }
        true
    });
    if !done {
        results.extend(fds.iter().map(|&fd| {
            // SAFETY: a live buffer; `fd` is a socket its caller's connection owns.
            let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), FLAGS) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }));
    }
}

fn burst_ring(
    ring: &mut IoUring,
    buf: &[u8],
    fds: &[RawFd],
    results: &mut Vec<io::Result<usize>>,
) -> io::Result<()> {
    let len = u32::try_from(buf.len()).map_err(|_| io::Error::other("frame too large"))?;
    let base = results.len();
    results.extend(
        fds.iter()
            .map(|_| Err(io::Error::from(io::ErrorKind::Other))),
    );
    for (chunk_no, chunk) in fds.chunks(RING_ENTRIES as usize).enumerate() {
        let first = chunk_no * RING_ENTRIES as usize;
        {
            let mut sq = ring.submission();
            for (i, &fd) in chunk.iter().enumerate() {
                let sqe = opcode::Send::new(types::Fd(fd), buf.as_ptr(), len)
                    .flags(FLAGS)
                    .build()
                    .user_data((first + i) as u64);
                // SAFETY: `buf` outlives the completion of this entry: every entry of the chunk
                // completes before this function returns (the wait below), and the caller holds
                // `buf` across the call.
                unsafe { sq.push(&sqe) }.map_err(|_| io::Error::other("submission queue full"))?;
            }
        }
        // Every entry completes during the submission (see the module comment): the wait is for
        // completions already posted.
        let mut want = chunk.len();
        while want > 0 {
            match ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            for cqe in ring.completion() {
                let i = base + cqe.user_data() as usize;
                let res = cqe.result();
                results[i] = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                };
                want -= 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// Whether io_uring works here; says SKIP (and fails under `CI=true`, unless CI says it has
    /// no io_uring with `BELTCAM_SKIP_URING`) when it does not.
    #[allow(clippy::print_stderr)]
    fn uring_here(test: &str) -> bool {
        let Some(e) = crate::net::probe_uring() else {
            return true;
        };
        let line = format!("SKIP {test}: io_uring refused here ({e})");
        eprintln!("{line}");
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci || std::env::var_os("BELTCAM_SKIP_URING").is_some(),
            "{line}: CI=true without BELTCAM_SKIP_URING"
        );
        false
    }

    fn check(uring: bool) {
        if uring {
            if !uring_here("a_burst_over_io_uring_reports_each_socket") {
                return;
            }
            use_uring_on_this_thread();
            assert!(uses_uring(), "the ring passed its own check");
        }
        let (mut a_rx, a_tx) = UnixStream::pair().unwrap();
        let (_b_rx, b_tx) = UnixStream::pair().unwrap();
        let (c_rx, c_tx) = UnixStream::pair().unwrap();
        drop(c_rx);
        b_tx.set_nonblocking(true).unwrap();
        let fill = vec![7u8; 64 * 1024];
        let mut filled = 0;
        while filled < 1024 && (&b_tx).write_nonblocking(&fill) {
            filled += 1;
        }
        let frame = vec![1u8; 1000];
        let fds = [a_tx.as_raw_fd(), b_tx.as_raw_fd(), c_tx.as_raw_fd()];
        let mut results = Vec::new();
        send_all(&frame, &fds, &mut results);
        assert_eq!(results.len(), 3);
        assert_eq!(
            *results[0].as_ref().unwrap(),
            1000,
            "the open socket took it all"
        );
        let mut got = vec![0u8; 1000];
        a_rx.read_exact(&mut got).unwrap();
        assert_eq!(got, frame);
        assert_eq!(
            results[1].as_ref().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "the full socket took nothing, without waiting"
        );
        assert_eq!(
            results[2].as_ref().unwrap_err().raw_os_error(),
            Some(libc::EPIPE),
            "the closed peer is an error (and no SIGPIPE)"
        );
        RING.with(|r| *r.borrow_mut() = None);
    }

    trait WriteNb {
        fn write_nonblocking(self, buf: &[u8]) -> bool;
    }
    impl WriteNb for &UnixStream {
        fn write_nonblocking(self, buf: &[u8]) -> bool {
            use std::io::Write;
            let mut s = self;
            s.write(buf).is_ok()
        }
    }

    #[test]
    fn a_burst_over_send_reports_each_socket() {
        check(false);
    }

    #[test]
    fn a_burst_over_io_uring_reports_each_socket() {
        check(true);
    }

    /// More sockets than a ring's submission queue holds: the burst goes in several submissions.
    #[test]
    fn a_burst_larger_than_the_ring() {
        if !uring_here("a_burst_larger_than_the_ring") {
            return;
        }
        use_uring_on_this_thread();
        let pairs: Vec<_> = (0..RING_ENTRIES as usize + 10)
            .map(|_| UnixStream::pair().unwrap())
            .collect();
        let fds: Vec<RawFd> = pairs.iter().map(|(_, tx)| tx.as_raw_fd()).collect();
        let mut results = Vec::new();
        send_all(b"frame", &fds, &mut results);
        assert_eq!(results.len(), fds.len());
        assert!(results.iter().all(|r| matches!(r, Ok(5))), "{results:?}");
        RING.with(|r| *r.borrow_mut() = None);
    }
}
