//! The epoll backend (tokio's reactor), for where io_uring is refused. Frame writes go straight from
//! the leased slot with non-blocking `write`, so both backends send the same bytes with no copy.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};

use super::{batch, pollout_now, run_thread, Acceptor, Conn, Handler, ServeThread};
use crate::pool::LeaseBuf;

pub struct EpollConn(TcpStream, batch::DrainSlot);

impl EpollConn {
    pub fn new(stream: TcpStream) -> Self {
        EpollConn(stream, batch::DrainSlot::default())
    }
}

impl Conn for EpollConn {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        if len == buf.capacity() {
            return (Err(io::Error::other("read buffer full")), buf);
        }
        buf.resize(buf.capacity(), 0);
        let res = self.0.read(&mut buf[len..]).await;
        buf.truncate(len + *res.as_ref().unwrap_or(&0));
        (res, buf)
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        (self.0.write_all(&buf).await, buf)
    }

    async fn write_lease(&mut self, buf: LeaseBuf) -> io::Result<()> {
        let bytes = buf.as_slice();
        let mut off = 0;
        while off < bytes.len() {
            self.0.writable().await?;
            match self.0.try_write(&bytes[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn drained(&mut self) -> io::Result<()> {
        let fd = self.0.as_raw_fd();
        // Drained already (the usual case for a viewer that reads): answered with the thread's
        // batch. Otherwise wait for the kernel's readiness edge.
        match batch::drained(fd, &self.1).await {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
        loop {
            self.0.writable().await?;
            // A WouldBlock from the closure clears tokio's cached readiness, so the next
            // `writable` waits for the kernel's next EPOLLOUT edge.
            match self.0.try_io(Interest::WRITABLE, || pollout_now(fd)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn nonblocking(&self) -> bool {
        true
    }
}

pub struct EpollAcceptor(TcpListener);

impl EpollAcceptor {
    pub fn new(listener: TcpListener) -> Self {
        EpollAcceptor(listener)
    }
}

impl Acceptor for EpollAcceptor {
    type Conn = EpollConn;
    async fn accept(&self) -> io::Result<(EpollConn, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((EpollConn::new(stream), peer))
    }
}

pub fn serve<H: Handler>(t: ServeThread<H>) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut acceptors = Vec::new();
        for l in t.listeners {
            acceptors.push(EpollAcceptor(TcpListener::from_std(l)?));
        }
        run_thread(acceptors, t.shutdown, t.heartbeat, t.handler, t.started).await;
        Ok(())
    })
}
