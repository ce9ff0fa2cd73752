//! Frame delivery: snapshots and stream sessions. A session sends one frame at a time, always the
//! newest, and starts one only once its socket has drained, so a viewer that reads holds a lease for
//! one write. Draining first is not enough on its own: the kernel stops queueing a write once the
//! unsent bytes pass TCP_NOTSENT_LOWAT, so a frame larger than that plus the peer's window goes out
//! only as fast as the peer reads, and a peer that stops reading mid-frame holds its lease. So the
//! write also awaits the lease's revocation: when the pool runs short it takes the oldest frame back
//! and its holders end (see `pool`). A send stuck past the send timeout ends the session anyway.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, timeout_at, Instant};
use tracing::debug;

use super::respond::{refuse, send};
use super::{Count, Server};
use crate::capture::{now_us, Camera};
use crate::config::Settings;
use crate::http::response::{snapshot_head, stream_head, Response};
use crate::net::{self, Conn};
use crate::obs::events::Event;
use crate::pool::LeaseBuf;
use crate::shutdown::triggered;

/// Answers with the newest frame, waiting up to the snapshot timeout for one that is fresh.
///
/// The lease is taken only once the socket has drained (a pipelining client that stopped reading
/// holds nothing), and the write that owns it also watches its revocation: when the pool runs short
/// a client that is not reading loses the frame and its connection (see `pool`).
pub async fn snapshot<C: Conn>(
    app: &Server,
    settings: &Settings,
    conn: &mut C,
    cam: &Camera,
    head_only: bool,
    close: bool,
) -> bool {
    // Fresh is judged against the camera's own frame interval: a 0.2 fps camera's newest frame is
    // up to 5 s old and still current. The wait for one stays the configured timeout.
    let period = cam.spec.nominal_fps().map_or(0.0, |fps| 1.0 / fps);
    let max_age = settings
        .snapshot_timeout
        .max(Duration::from_secs_f64(3.0 * period));
    let send_timeout = settings.send_timeout;
    let deadline = Instant::now() + settings.snapshot_timeout;
    net::set_notsent_lowat(conn.raw_fd());
    if timeout(send_timeout, conn.drained())
        .await
        .map_or(true, |r| r.is_err())
    {
        return false;
    }
    let mut rx = cam.subscribe();
    let lease = loop {
        if let Some(l) = cam.pool.lease_newest() {
            // The "NO SIGNAL" placeholder is for people watching a stream; a snapshot consumer
            // (an ML process) must learn that there is no picture, not get one.
            let real = !l.meta().is_placeholder();
            if real && now_us().saturating_sub(l.meta().timestamp_us) <= max_age.as_micros() as u64
            {
                break Some(l);
            }
        }
        match timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => break None,
        }
    };
    let Some(lease) = lease else {
        let why = format!(
            "no frame newer than {} ms from camera {}",
            max_age.as_millis(),
            cam.name
        );
        let mut r = Response::error(503, &why).header("Retry-After", 1);
        r.close = close;
        return send(app, conn, r.render(head_only)).await;
    };
    let m = *lease.meta();
    let revocation = lease.revocation();
    let head = snapshot_head(m.jpeg_len(), m.timestamp_us, m.seq, close);
    let head_len = head.len();
    let write = async {
        let (r, _) = conn.write_all(head).await;
        r?;
        if !head_only {
            conn.write_lease(LeaseBuf::jpeg(lease)).await?;
        }
        Ok::<_, io::Error>(())
    };
    let done = tokio::select! {
        r = timeout(send_timeout, write) => matches!(r, Ok(Ok(()))),
        () = revocation.revoked() => false,
    };
    if done {
        app.count_bytes(head_len + if head_only { 0 } else { m.jpeg_len() });
    }
    done
}

/// The reason a session ends when the pool took its frame back.
const REVOKED: &str = "not reading (frame reclaimed for capture)";

/// Shuts the socket down when a session ends, so an io_uring write still in flight completes (with
/// an error) and releases its lease and fd now rather than whenever the peer reads again.
struct ShutdownOnDrop(std::os::fd::RawFd);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain syscall on an fd the connection still owns (it drops after this guard).
        unsafe { libc::shutdown(self.0, libc::SHUT_RDWR) };
    }
}

/// A stream session: one frame at a time, always the newest, only once the socket has drained.
pub async fn stream<C: Conn>(
    app: &Arc<Server>,
    mut conn: C,
    peer: SocketAddr,
    cam: Arc<Camera>,
    send_timeout: Duration,
    head_only: bool,
) {
    if head_only {
        send(app, &mut conn, stream_head(true).into_bytes()).await;
        return;
    }
    // Declared first so it drops last: the session leaves the table (and its IP place is given
    // back) before the peer sees the connection end.
    let _shut = ShutdownOnDrop(conn.raw_fd());
    let _ip_place = match app.guard.open_session(peer.ip()) {
        Ok(p) => p,
        Err(_) => {
            let r =
                Response::error(429, "too many streams from this address").header("Retry-After", 5);
            refuse(app, &mut conn, r).await;
            return;
        }
    };
    let session = match app.sessions.open(peer, cam.id, "stream") {
        Ok(s) => s,
        Err(full) => {
            let r = Response::error(503, &full.to_string()).header("Retry-After", 2);
            refuse(app, &mut conn, r).await;
            return;
        }
    };
    app.events.emit(
        Some(cam.id),
        Event::SessionOpened {
            id: session.id,
            peer: peer.to_string(),
            camera: cam.name.clone(),
            endpoint: "stream",
        },
    );
    debug!(session = session.id, %peer, camera = %cam.name, "session opened");
    let typical = cam
        .pool
        .lease_newest()
        .map_or(256 * 1024, |l| l.meta().jpeg_len());
    net::tune_for_stream(conn.raw_fd(), typical);
    if !send(app, &mut conn, stream_head(false).into_bytes()).await {
        return;
    }
    let counters = &session.counters;
    let mut frames = cam.subscribe();
    let mut shutdown = app.shutdown.subscribe();
    let mut last = 0u64;
    let reason = 'session: loop {
        while cam.pool.newest_seq() <= last {
            if cam.is_retired() {
                break 'session "camera removed";
            }
            tokio::select! {
                r = frames.changed() => if r.is_err() { break 'session "camera gone" },
                _ = triggered(&mut shutdown) => break 'session "shutdown",
                _ = counters.closed() => break 'session "closed by admin",
            }
        }
        if cam.is_retired() {
            break "camera removed";
        }
        let send_one = timeout(send_timeout, async {
            conn.drained().await?;
            let Some(lease) = cam.pool.lease_after(last) else {
                return Ok::<_, io::Error>(None);
            };
            let (seq, n) = (lease.seq(), lease.part().len());
            // Draining first keeps leases short for viewers that read; a peer that stopped
            // reading mid-frame holds its lease until the pool runs short and revokes it.
            let revocation = lease.revocation();
            tokio::select! {
                r = conn.write_lease(LeaseBuf::part(lease)) => r?,
                () = revocation.revoked() => return Err(io::Error::other(REVOKED)),
            }
            Ok(Some((seq, n)))
        });
        let res = tokio::select! {
            r = send_one => r,
            _ = triggered(&mut shutdown) => break "shutdown",
            _ = counters.closed() => break "closed by admin",
        };
        match res {
            Err(_) => {
                app.count(Count::SendTimeout);
                break "send timeout";
            }
            Ok(Err(e)) if e.to_string() == REVOKED => break REVOKED,
            Ok(Err(_)) => break "client gone",
            Ok(Ok(None)) => {}
            Ok(Ok(Some((seq, n)))) => {
                let skipped = if last != 0 {
                    seq.saturating_sub(last + 1)
                } else {
                    0
                };
                last = seq;
                counters.record_frame(n, skipped);
                app.count_bytes(n);
            }
        }
    };
    let (frames_sent, bytes_sent, frames_skipped) = counters.totals();
    debug!(session = session.id, %peer, reason, frames_sent, "session closed");
    app.events.emit(
        Some(cam.id),
        Event::SessionClosed {
            id: session.id,
            peer: peer.to_string(),
            camera: cam.name.clone(),
            reason,
            frames_sent,
            frames_skipped,
            bytes_sent,
        },
    );
}
