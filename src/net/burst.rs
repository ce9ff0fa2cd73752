//! One frame to many sockets in one pass: the fast path of the serving thread's frame relay (see
//! `serve::fanout`). Every send is non-blocking, so the pass never waits: a socket that takes only
//! part of the frame, or none, is reported as such and its session finishes on its own.
//!
//! From the pool's file ([`send_file_all`]) each socket gets one `sendfile(2)`: the kernel queues
//! the file's pages on it by reference, so no socket costs a copy of the frame. That is the relay's
//! usual path; the sends below are for a pool without a file.
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
    append_sends(buf, fds, results);
}

/// [`send_all`], with the results appended to `results`.
fn append_sends(buf: &[u8], fds: &[RawFd], results: &mut Vec<io::Result<usize>>) {
    let base = results.len();
    let done = RING.with(|r| {
        let mut r = r.borrow_mut();
        let Some(ring) = r.as_mut() else {
            return false;
        };
        if let Err(e) = burst_ring(ring, buf, fds, results) {
            // The ring failed as a whole (not one socket): this thread goes on with send(2).
            warn!("io_uring: a frame burst failed ({e}); this thread uses send(2) from now on");
            *r = None;
            results.truncate(base);
            return false;
        }
        true
    });
    if !done {
        results.extend(fds.iter().map(|&fd| send_one(fd, buf)));
    }
}

/// Sends `buf`, which is `buf.len()` bytes of `file` from `offset`, to every socket of `fds` with
/// `sendfile(2)`, without waiting: the kernel queues the file's pages on each socket by reference
/// instead of copying them (the pool's file, see `pool::memory`). `nonblocking[i]` says whether
/// socket `i` is `O_NONBLOCK` already; one that is not (io_uring's) is made so for its call, which
/// is safe because the relay only sends to sockets with no operation in flight. Results are as for
/// [`send_all`]. A closed peer is `EPIPE`: the process ignores SIGPIPE (Rust's runtime sets that
/// before `main`). Where `sendfile` itself is refused (a seccomp filter, a kernel without it for
/// this file), the thread sends by copy from then on (logged).
pub fn send_file_all(
    (file, offset): (RawFd, u64),
    buf: &[u8],
    fds: &[RawFd],
    nonblocking: &[bool],
    results: &mut Vec<io::Result<usize>>,
) {
    if SENDFILE_REFUSED.get() {
        return send_all(buf, fds, results);
    }
    results.clear();
    for (&fd, &nb) in fds.iter().zip(nonblocking) {
        let r = match send_file(fd, nb, file, offset, buf.len()) {
            Err(e) if refused(&e) => {
                // The socket's own error or the call's? A plain send on the same socket tells.
                let plain = send_one(fd, buf);
                if plain.as_ref().map_or_else(|e| !refused(e), |_| true) {
                    SENDFILE_REFUSED.set(true);
                    warn!("frame bursts send by copy on this thread: sendfile(2) refused ({e})");
                    results.push(plain);
                    return append_sends(buf, &fds[results.len()..], results);
                }
                plain
            }
            r => r,
        };
        results.push(r);
    }
}

thread_local! {
    static SENDFILE_REFUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread sends by reference ([`send_file_all`]), i.e. `sendfile(2)` has not been
/// refused here. A caller asks before it takes a file location from the pool, which marks the slot
/// for fresh pages: a thread that sends by copy would pay for those at every frame.
pub fn sends_by_reference() -> bool {
    !SENDFILE_REFUSED.get()
}

/// Errors that say `sendfile(2)` is not available, rather than anything about the socket.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::EOPNOTSUPP)
    )
}

fn send_file(
    fd: RawFd,
    nonblocking: bool,
    file: RawFd,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    let mut off = offset as libc::off_t;
    // SAFETY: plain syscalls on a socket its caller's connection owns and a file the pool owns,
    // both open for the call; `off` is a local.
    unsafe {
        if !nonblocking && libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) != 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::sendfile(fd, file, &mut off, len);
        let r = if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        };
        if !nonblocking {
            libc::fcntl(fd, libc::F_SETFL, 0);
        }
        r
    }
}

fn send_one(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: a live buffer; `fd` is a socket its caller's connection owns.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), FLAGS) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
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

    /// Three sockets to send on: an open one, a full one (left non-blocking) and one whose peer is
    /// gone. Returns the open one's reader, the three, and the full one's reader (keep it).
    fn open_full_closed() -> (UnixStream, [UnixStream; 3], UnixStream) {
        let (a_rx, a_tx) = UnixStream::pair().unwrap();
        let (b_rx, b_tx) = UnixStream::pair().unwrap();
        let (c_rx, c_tx) = UnixStream::pair().unwrap();
        drop(c_rx);
        b_tx.set_nonblocking(true).unwrap();
        let fill = vec![7u8; 64 * 1024];
        let mut filled = 0;
        while filled < 1024 && (&b_tx).write_nonblocking(&fill) {
            filled += 1;
        }
        (a_rx, [a_tx, b_tx, c_tx], b_rx)
    }

    fn check(uring: bool) {
        if uring {
            if !uring_here("a_burst_over_io_uring_reports_each_socket") {
                return;
            }
            use_uring_on_this_thread();
            assert!(uses_uring(), "the ring passed its own check");
        }
        let (mut a_rx, [a_tx, b_tx, c_tx], _b_rx) = open_full_closed();
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

    /// By reference from a file: each socket gets the bytes from the offset, a full one reports
    /// `WouldBlock` at once even if it is a blocking socket (which stays blocking after), a closed
    /// peer is `EPIPE`.
    #[test]
    fn a_burst_from_a_file_reports_each_socket_and_never_waits() {
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        let file = std::fs::File::from(memfd_create(c"t", MemFdCreateFlag::MFD_CLOEXEC).unwrap());
        let bytes: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        std::io::Write::write_all(&mut &file, &bytes).unwrap();
        let (mut a_rx, [a_tx, b_tx, c_tx], _b_rx) = open_full_closed();
        b_tx.set_nonblocking(false).unwrap();
        let fds = [a_tx.as_raw_fd(), b_tx.as_raw_fd(), c_tx.as_raw_fd()];
        let mut results = Vec::new();
        let file = (file.as_raw_fd(), 1000);
        send_file_all(
            file,
            &bytes[1000..],
            &fds,
            &[false, false, true],
            &mut results,
        );
        assert_eq!(*results[0].as_ref().unwrap(), 2000);
        let mut got = vec![0u8; 2000];
        a_rx.read_exact(&mut got).unwrap();
        assert_eq!(got, bytes[1000..]);
        assert_eq!(
            results[1].as_ref().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "the full blocking socket took nothing, without waiting"
        );
        for fd in [a_tx.as_raw_fd(), b_tx.as_raw_fd()] {
            // SAFETY: plain syscall on an open fd.
            let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            assert_eq!(
                fl & libc::O_NONBLOCK,
                0,
                "a blocking socket was left non-blocking"
            );
        }
        assert_eq!(
            results[2].as_ref().unwrap_err().raw_os_error(),
            Some(libc::EPIPE),
            "the closed peer is an error (and the process lives)"
        );
    }

    /// A thread where `sendfile(2)` is refused (here: the "file" is a directory, EINVAL) sends by
    /// copy, this burst included, and says so.
    #[test]
    fn a_burst_where_sendfile_is_refused_sends_by_copy() {
        let not_a_file = std::fs::File::open(std::env::temp_dir()).unwrap();
        let (mut a_rx, a_tx) = UnixStream::pair().unwrap();
        let (mut b_rx, b_tx) = UnixStream::pair().unwrap();
        let fds = [a_tx.as_raw_fd(), b_tx.as_raw_fd()];
        let mut results = Vec::new();
        let file = (not_a_file.as_raw_fd(), 0);
        send_file_all(file, b"frame", &fds, &[false, false], &mut results);
        assert!(!sends_by_reference(), "the refusal was noticed");
        assert!(results.iter().all(|r| matches!(r, Ok(5))), "{results:?}");
        for rx in [&mut a_rx, &mut b_rx] {
            let mut got = [0u8; 5];
            rx.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"frame");
        }
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
