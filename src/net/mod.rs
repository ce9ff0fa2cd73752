//! The I/O backend seam: io_uring (tokio-uring) or epoll (tokio), chosen at start-up.
//!
//! tokio-uring is barely maintained and io_uring is refused in many places (old kernels, Docker's
//! and Kubernetes' default seccomp, RHEL's default, qemu-user), so the server is written once against
//! the small [`Conn`] trait and each backend supplies a runtime, an accept loop and a `Conn`.
//! Swapping or adding a backend touches only this folder.
//!
//! This layer knows no application: it takes listeners, the shutdown signal, a heartbeat and a
//! [`Handler`] that is given every accepted connection. Admission, counters and HTTP live above.

pub mod batch;
pub mod burst;
pub mod epoll;
pub mod uring;

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::IoBackendChoice;
use crate::logging::{RateLimit, REPEAT_EVERY};
use crate::obs::health::Heartbeat;
use crate::pool::LeaseBuf;
use crate::shutdown::Shutdown;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Why io_uring cannot be used here, or `None` if it can.
pub fn probe_uring() -> Option<io::Error> {
    io_uring::IoUring::new(8).err()
}

/// Picks the backend: `auto` probes and falls back to epoll on ENOSYS/EPERM/EINVAL (and any other
/// refusal, logged); `uring` insists and fails start-up with the reason.
pub fn choose(choice: IoBackendChoice) -> Result<Backend, String> {
    match choice {
        IoBackendChoice::Epoll => Ok(Backend::Epoll),
        IoBackendChoice::Uring => match probe_uring() {
            None => Ok(Backend::Uring),
            Some(e) => Err(format!(
                "io_backend = uring, but io_uring is not available: {e}"
            )),
        },
        IoBackendChoice::Auto => match probe_uring() {
            None => Ok(Backend::Uring),
            Some(e) => {
                let known = matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EINVAL)
                );
                if known {
                    info!(reason = %e, "io_uring refused by this kernel or sandbox; using epoll");
                } else {
                    warn!(reason = %e, "io_uring probe failed unexpectedly; using epoll");
                }
                Ok(Backend::Epoll)
            }
        },
    }
}

/// One accepted connection, as the server sees it. Buffers are passed by value because io_uring
/// owns them while an operation is in flight.
#[allow(async_fn_in_trait)]
pub trait Conn {
    /// Appends what arrives to `buf`, up to its capacity (never grows it). 0 means EOF.
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Writes all of `buf`.
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    /// Writes all of a leased frame straight from its pool slot.
    async fn write_lease(&mut self, buf: LeaseBuf) -> io::Result<()>;
    /// Waits until the socket has drained below TCP_NOTSENT_LOWAT, so a peer that reads gets the
    /// next frame's write started at once (one that stops reading mid-frame is the pool's business:
    /// its lease is revocable).
    async fn drained(&mut self) -> io::Result<()>;
    fn raw_fd(&self) -> RawFd;
    /// Whether the socket is `O_NONBLOCK` (epoll's are; io_uring's need not be).
    fn nonblocking(&self) -> bool;
}

/// `Err(WouldBlock)` unless `fd` is writable right now (poll with a zero timeout). With
/// TCP_NOTSENT_LOWAT set, "writable" means the unsent backlog is below the mark.
pub fn pollout_now(fd: RawFd) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
        return Err(io::Error::from(io::ErrorKind::BrokenPipe));
    }
    if pfd.revents & libc::POLLOUT != 0 {
        Ok(())
    } else {
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }
}

/// Shuts the write side of a socket: the peer reads what was sent, then EOF.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall on an fd the caller's connection owns.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Socket options for a streaming session: a send buffer that holds a whole frame (the kernel
/// doubles the value) and a low not-sent mark, so "writable" means "drained".
pub fn tune_for_stream(fd: RawFd, frame_len: usize) {
    // SAFETY: the caller's connection owns `fd` and outlives this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&borrowed);
    let want = (frame_len * 2 + 64 * 1024).clamp(128 * 1024, 4 * 1024 * 1024);
    if sock.send_buffer_size().map_or(true, |cur| cur < want * 2) {
        let _ = sock.set_send_buffer_size(want);
    }
    set_notsent_lowat(fd);
}

/// TCP_NOTSENT_LOWAT at 32 KiB: "writable" (see [`pollout_now`]) then means "drained".
pub fn set_notsent_lowat(fd: RawFd) {
    let lowat: libc::c_int = 32 * 1024;
    // SAFETY: setsockopt with a valid fd and an int option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &lowat as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// What the application gives the io layer: it is handed every accepted connection, on the
/// serving thread that accepted it (a `LocalSet` task; the future need not be `Send`).
pub trait Handler: Send + Sync + 'static {
    fn serve<C: Conn + 'static>(
        self: Arc<Self>,
        conn: C,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + 'static;

    /// Called on each serving thread once shutdown is triggered, before its connections get their
    /// grace: wake whatever waits without watching the shutdown signal itself.
    fn stopping(&self) {}
}

/// What one serving thread runs: its listeners (clones of the shared ones), the shutdown signal, its
/// heartbeat, and the application's handler.
pub struct ServeThread<H> {
    pub listeners: Vec<std::net::TcpListener>,
    pub shutdown: Arc<Shutdown>,
    pub heartbeat: Arc<Heartbeat>,
    pub handler: Arc<H>,
    /// Called once the runtime is up and the listeners registered, before serving.
    pub started: Box<dyn FnOnce() + Send>,
}

/// Runs one serving thread's runtime until shutdown. An error means the runtime could not be
/// built (e.g. io_uring refused memory after the start-up probe passed): a clean start-up error.
pub fn serve<H: Handler>(backend: Backend, thread: ServeThread<H>) -> io::Result<()> {
    match backend {
        Backend::Uring => uring::serve(thread),
        Backend::Epoll => epoll::serve(thread),
    }
}

/// How long `bind` retries an address that is still in use.
pub const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds a listening socket the way every backend wants it: SO_REUSEADDR, non-blocking, deep backlog.
///
/// A killed predecessor's listening socket can outlive it briefly (an io_uring instance tears down
/// asynchronously after the process is gone, holding its files), so EADDRINUSE is retried for up
/// to `BIND_RETRY`, logged once, before start-up fails: systemd's restart 100 ms after a crash
/// must not fail on it.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + BIND_RETRY;
    let mut logged = false;
    loop {
        match bind_once(addr) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
            {
                if !logged {
                    warn!(%addr, "address in use (a previous instance may still be closing); retrying for up to 2 s");
                    logged = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

fn bind_once(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A listening socket of one backend.
#[allow(async_fn_in_trait)]
pub trait Acceptor {
    type Conn: Conn + 'static;
    async fn accept(&self) -> io::Result<(Self::Conn, SocketAddr)>;
}

/// The body of a serving thread, the same on every backend (both run tasks on a `LocalSet`): a
/// heartbeat ticker and one accept loop per listener, until shutdown.
pub async fn run_thread<A: Acceptor + 'static, H: Handler>(
    acceptors: Vec<A>,
    shutdown: Arc<Shutdown>,
    heartbeat: Arc<Heartbeat>,
    handler: Arc<H>,
    started: Box<dyn FnOnce() + Send>,
) {
    started();
    let mut stop = shutdown.subscribe();
    tokio::task::spawn_local(async move {
        loop {
            heartbeat.beat();
            #[cfg(debug_assertions)]
            crate::obs::health::debug_wedge_hook(&heartbeat);
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    });
    let live = Rc::new(Cell::new(0usize));
    let idle = Rc::new(tokio::sync::Notify::new());
    for acceptor in acceptors {
        tokio::task::spawn_local(accept_loop(
            acceptor,
            Arc::clone(&shutdown),
            Arc::clone(&handler),
            (Rc::clone(&live), Rc::clone(&idle)),
        ));
    }
    crate::shutdown::triggered(&mut stop).await;
    handler.stopping();
    // Accepting stopped; connections already accepted get a bounded moment to be answered and
    // closed (`stopping` has woken the sessions, which end at once).
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while live.get() > 0 {
        tokio::select! {
            _ = idle.notified() => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
}

/// How long a serving thread waits, once stopping, for its connections to finish.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Counts one connection task for as long as it lives; the last one out wakes the thread's stop.
struct Live(Rc<Cell<usize>>, Rc<tokio::sync::Notify>);

impl Live {
    fn new(live: &Rc<Cell<usize>>, idle: &Rc<tokio::sync::Notify>) -> Live {
        live.set(live.get() + 1);
        Live(Rc::clone(live), Rc::clone(idle))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
        if self.0.get() == 0 {
            self.1.notify_one();
        }
    }
}

async fn accept_loop<A: Acceptor + 'static, H: Handler>(
    acceptor: A,
    shutdown: Arc<Shutdown>,
    handler: Arc<H>,
    (live, idle): (Rc<Cell<usize>>, Rc<tokio::sync::Notify>),
) {
    let mut stop = shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            r = acceptor.accept() => r,
            _ = crate::shutdown::triggered(&mut stop) => return,
        };
        match accepted {
            Ok((conn, peer)) => {
                let counted = Live::new(&live, &idle);
                let handler = Arc::clone(&handler);
                // The connection's future is made inside the task, not moved into it: a future
                // captured and then awaited is stored twice in the task (once as the captured
                // value, once being awaited), which doubled every connection's memory.
                tokio::task::spawn_local(async move {
                    handler.serve(conn, peer).await;
                    drop(counted);
                });
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the listener stays open.
                // Every serving thread retries ten times a second while it lasts: one line,
                // then a count every `REPEAT_EVERY`, for the whole process.
                static ACCEPT_FAILED: RateLimit = RateLimit::new(REPEAT_EVERY);
                if let Some(held_back) = ACCEPT_FAILED.allow() {
                    warn!(%e, held_back, "accept failed; retrying");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs `fut` as a serving thread would: a current-thread runtime with a `LocalSet` (tests).
#[cfg(test)]
pub(crate) fn block_on_local<F: Future>(fut: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, fut)
}
