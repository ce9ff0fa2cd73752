//! The io_uring backend (tokio-uring): accepts, reads and frame writes are io_uring operations. A
//! frame write owns its `LeaseBuf`, so the slot stays pinned until the kernel completes the write,
//! even if the session gave up on it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::{batch, pollout_now, run_thread, Acceptor, Conn, Handler, ServeThread};
use crate::pool::LeaseBuf;

pub struct UringConn {
    // Declared before `stream`: deregisters from epoll before the socket closes.
    ready: Option<AsyncFd<RawFd>>,
    stream: TcpStream,
    fd: RawFd,
    drain: batch::DrainSlot,
}

impl Conn for UringConn {
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        if len == buf.capacity() {
            return (Err(io::Error::other("read buffer full")), buf);
        }
        let (res, slice) = self.stream.read(buf.slice(len..)).await;
        (res, slice.into_inner())
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.stream.write_all(buf).await
    }

    async fn write_lease(&mut self, buf: LeaseBuf) -> io::Result<()> {
        self.stream.write_all(buf).await.0
    }

    async fn drained(&mut self) -> io::Result<()> {
        // Drained already (the usual case for a viewer that reads): answered with the thread's
        // batch. Otherwise wait for readiness.
        match batch::drained(self.fd, &self.drain).await {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
        // tokio-uring has no poll operation; the tokio reactor underneath it does readiness.
        if self.ready.is_none() {
            // SAFETY: `fd` belongs to `self.stream`, which outlives the registration (the field
            // order drops `ready` first), and is not closed while registered.
            let reg = unsafe { AsyncFd::register_with_interest(self.fd, Interest::WRITABLE) };
            self.ready = Some(reg.map_err(|e| io::Error::other(e.to_string()))?);
        }
        let Some(ready) = self.ready.as_ref() else {
            return Ok(());
        };
        let fd = self.fd;
        loop {
            let mut guard = ready.writable().await?;
            if let Ok(res) = guard.try_io(|_| pollout_now(fd)) {
                return res;
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.fd
    }

    fn nonblocking(&self) -> bool {
        false
    }
}

/// Dropping the connection shuts the socket down first: an io_uring read or write still in flight
/// (a request-head read whose deadline passed, a frame write given up on) then completes at once
/// and releases its buffer and the fd, instead of whenever the peer next sends or reads. Without
/// this, every timed-out silent connection kept its fd until the peer went away.
impl Drop for UringConn {
    fn drop(&mut self) {
        // SAFETY: plain syscall on the fd `stream` still owns (fields drop after this).
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }
}

/// Accepts by readiness (the tokio reactor under tokio-uring) and a non-blocking `accept`, not by
/// an io_uring accept operation: an accept op still in flight when the thread stops would take a
/// connection from the listening socket and drop it unanswered. Under socket activation the
/// listening socket outlives this process, so a restart must leave every connection it did not
/// accept in the socket's queue for the next one.
pub struct UringAcceptor {
    // Declared before `listener`: deregisters before the socket closes.
    ready: AsyncFd<RawFd>,
    listener: std::net::TcpListener,
}

impl UringAcceptor {
    /// Must be called on the runtime (it registers the listener with its reactor).
    pub fn new(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        // SAFETY: the fd belongs to `listener`, which lives in the same struct and outlives the
        // registration (field order drops `ready` first).
        let ready =
            unsafe { AsyncFd::register_with_interest(listener.as_raw_fd(), Interest::READABLE) }
                .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(UringAcceptor { ready, listener })
    }
}

impl Acceptor for UringAcceptor {
    type Conn = UringConn;
    async fn accept(&self) -> io::Result<(UringConn, SocketAddr)> {
        let (std_stream, peer) = loop {
            let mut guard = self.ready.readable().await?;
            match guard.try_io(|_| self.listener.accept()) {
                Ok(r) => break r?,
                Err(_would_block) => continue,
            }
        };
        // io_uring operations need no O_NONBLOCK; the accepted socket is blocking by default.
        let stream = TcpStream::from_std(std_stream);
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        Ok((
            UringConn {
                ready: None,
                stream,
                fd,
                drain: batch::DrainSlot::default(),
            },
            peer,
        ))
    }
}

pub fn serve<H: Handler>(t: ServeThread<H>) -> io::Result<()> {
    // `Runtime::new` rather than `builder().start()`, which panics when the ring cannot be set up
    // (RLIMIT_MEMLOCK on kernels before 5.12, a seccomp filter applied after the probe).
    let rt = tokio_uring::Runtime::new(tokio_uring::builder().entries(1024))?;
    rt.block_on(async move {
        // The frame relays' bursts go through a ring of this thread's own (see `burst`).
        super::burst::use_uring_on_this_thread();
        let acceptors = t
            .listeners
            .into_iter()
            .map(UringAcceptor::new)
            .collect::<io::Result<Vec<_>>>()?;
        run_thread(acceptors, t.shutdown, t.heartbeat, t.handler, t.started).await;
        Ok(())
    })
}
