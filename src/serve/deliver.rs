//! Frame delivery: snapshots and stream sessions. A session sends one frame at a time, always the
//! newest, and starts one only once its socket has drained, so a viewer that reads holds a lease for
//! one write. Draining first is not enough on its own: the kernel stops queueing a write once the
//! unsent bytes pass TCP_NOTSENT_LOWAT, so a frame larger than that plus the peer's window goes out
//! only as fast as the peer reads, and a peer that stops reading mid-frame holds its lease. So the
//! write also awaits the lease's revocation: when the pool runs short it takes the oldest frame back
//! and its holders end (see `pool`). A send stuck past the send timeout ends the session anyway.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tracing::debug;

use super::fanout::{self, Handoff};
use super::respond::{refuse, send};
use super::{Count, Server};
use crate::admit::sessions::SessionCounters;
use crate::capture::{now_us, Camera, CameraState};
use crate::config::Settings;
use crate::http::multipart::{custom_part_header, ExtraHeaders, ADVANCE_HEADERS, PART_TRAILER};
use crate::http::params::{self, StreamParams};
use crate::http::request::{Method, Request};
use crate::http::response::{snapshot_head, stream_head, Response};
use crate::net::{self, Conn};
use crate::obs::events::Event;
use crate::pool::{Lease, LeaseBuf};
use crate::shutdown::Shutdown;

/// Answers with the newest frame, waiting up to the snapshot timeout for one that is fresh: no older
/// than the snapshot timeout, or than `?max_delay=MS` when the request says (camera-streamer's
/// parameter; `0` takes whatever real frame is newest now). The wait is bounded by the snapshot
/// timeout either way.
///
/// The lease is taken only once the socket has drained (a pipelining client that stopped reading
/// holds nothing), and the write that owns it also watches its revocation: when the pool runs short
/// a client that is not reading loses the frame and its connection (see `pool`).
pub async fn snapshot<C: Conn>(
    app: &Server,
    settings: &Settings,
    conn: &mut C,
    cam: &Camera,
    req: &Request,
    close: bool,
) -> bool {
    // Fresh by default is judged against the camera's own frame interval: a 0.2 fps camera's
    // newest frame is up to 5 s old and still current. `?max_delay=MS` sets it instead. The wait
    // for one stays the configured timeout.
    let send_timeout = settings.send_timeout;
    let head_only = req.method == Method::Head;
    let max_age = match params::snapshot_max_delay(req) {
        Ok(None) => {
            let period = cam.spec.nominal_fps().map_or(0.0, |fps| 1.0 / fps);
            settings
                .snapshot_timeout
                .max(Duration::from_secs_f64(3.0 * period))
        }
        Ok(Some(Duration::ZERO)) => Duration::MAX,
        Ok(Some(d)) => d,
        Err(why) => {
            let mut r = Response::error(400, &why);
            r.close = close;
            return send(app, conn, r.render(head_only)).await;
        }
    };
    let deadline = Instant::now() + settings.snapshot_timeout;
    net::set_notsent_lowat(conn.raw_fd());
    if timeout(send_timeout, conn.drained())
        .await
        .map_or(true, |r| r.is_err())
    {
        return false;
    }
    // An idle camera (capture on demand) starts now.
    cam.want_once();
    let mut rx = cam.subscribe();
    let lease = loop {
        if let Some(l) = cam.pool.lease_newest() {
            // The "NO SIGNAL" placeholder is for people watching a stream; a snapshot consumer
            // (an ML process) must learn that there is no picture, not get one.
            let real = !l.meta().is_placeholder();
            let age = now_us().saturating_sub(l.meta().timestamp_us);
            if real && u128::from(age) <= max_age.as_micros() {
                break Some(l);
            }
        }
        match timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => break None,
        }
    };
    let Some(lease) = lease else {
        let why = if max_age == Duration::MAX {
            format!("no frame from camera {}", cam.name)
        } else {
            format!(
                "no frame newer than {} ms from camera {}",
                max_age.as_millis(),
                cam.name
            )
        };
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

/// A stream to deliver: what the request phase (`conn::handle`) hands back when a request asks
/// for one.
pub struct StreamJob<C> {
    pub conn: C,
    /// The client (behind a trusted proxy, the one it names).
    pub client: SocketAddr,
    pub cam: Arc<Camera>,
    pub send_timeout: Duration,
    pub req: Request,
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

const SHUTDOWN: &str = "shutdown";

/// Resolves with the reason once the server stops or an admin closes the session. Polled at every
/// wait of every frame, so it costs two flag loads and a waker registration, no lock: both a
/// shutdown (`Server::stopping`) and an admin close wake the session through its counters.
fn stopped<'a>(
    counters: &'a SessionCounters,
    shutdown: &'a Shutdown,
) -> impl std::future::Future<Output = &'static str> + 'a {
    std::future::poll_fn(move |cx| {
        counters.register(cx.waker());
        if shutdown.is_triggered() {
            Poll::Ready(SHUTDOWN)
        } else if counters.close_requested() {
            Poll::Ready("closed by admin")
        } else {
            Poll::Pending
        }
    })
}

/// How long a frame already being written when the server stops may take to finish: a client
/// that reconnects (ffmpeg's `-reconnect_at_eof`) then resumes at a part boundary.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// A stream session: one frame at a time, always the newest, only once the socket has drained.
///
/// Options (`StreamParams`): with none, each frame is the pool's shared part, one write. Otherwise
/// the part is assembled around the leased JPEG: a per-session header (`extra_headers`,
/// `zero_data`), or for `advance_headers` (browsers) the JPEG, its trailer and the next part's
/// headers. `fps=N` paces the session on a grid of 1/N s: it waits for the next slot, then sends
/// the newest frame it has not sent yet, so frames are evenly spaced and always the newest.
///
/// Not an `async fn`: an `async fn` keeps its arguments twice in its future (as given, and moved
/// into its body), and a viewer's task holds this future for the whole stream. The request is
/// read here, before the future is made, and is not kept.
pub fn stream<'a, C: Conn + 'a>(
    app: &'a Arc<Server>,
    job: StreamJob<C>,
) -> impl Future<Output = ()> + 'a {
    let StreamJob {
        mut conn,
        client: peer,
        cam,
        send_timeout,
        req,
    } = job;
    let params = StreamParams::parse(&req).map(|p| p.resolve(req.browser));
    let head_only = req.method == Method::Head;
    drop(req);
    async move {
        // By reference: a moved copy would be kept beside the captured one.
        let params = match &params {
            Ok(p) => p,
            Err(why) => {
                Box::pin(refuse(app, &mut conn, Response::error(400, why))).await;
                return;
            }
        };
        if head_only {
            Box::pin(send(app, &mut conn, stream_head(true).into_bytes())).await;
            return;
        }
        let advance = params.advance_headers == Some(true);
        // Declared first so it drops last: the session leaves the table (and its IP place is given
        // back) before the peer sees the connection end.
        let _shut = ShutdownOnDrop(conn.raw_fd());
        let _ip_place = match app.guard.open_session(peer.ip()) {
            Ok(p) => p,
            Err(_) => {
                let r = Response::error(429, "too many streams from this address")
                    .header("Retry-After", 5);
                Box::pin(refuse(app, &mut conn, r)).await;
                return;
            }
        };
        let session = match app.sessions.open(peer, cam.id, "stream") {
            Ok(s) => s,
            Err(full) => {
                let r = Response::error(503, &full.to_string()).header("Retry-After", 2);
                Box::pin(refuse(app, &mut conn, r)).await;
                return;
            }
        };
        session.counters.set_options(params.reported());
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
        // Capture runs while any session wants frames (capture on demand). Woken from idle, the pool's
        // newest frame is the one from before the camera stopped: the session starts after it.
        let woke = cam.state() == CameraState::Idle;
        let _demand = cam.demand();
        let stale = if woke { cam.pool.newest_seq() } else { 0 };
        let typical = cam
            .pool
            .lease_newest()
            .map_or(256 * 1024, |l| l.meta().jpeg_len());
        net::tune_for_stream(conn.raw_fd(), typical);
        let mut head = stream_head(false).into_bytes();
        if advance {
            head.extend_from_slice(ADVANCE_HEADERS);
        }
        if !Box::pin(send(app, &mut conn, head)).await {
            return;
        }
        let counters = &session.counters;
        // Woken by this thread's relay of the camera's frames (see `fanout`).
        let frames = fanout::frames(&cam);
        let stop = || stopped(counters, &app.shutdown);
        let mut last = stale;
        // Reused for per-session part headers and trailers (owned: an io_uring write owns its buffer).
        // Plain sessions send the pool's part as it is and never need it.
        let mut scratch: Vec<u8> = match (params.plain(), params.extra_headers) {
            (true, _) => Vec::new(),
            (false, true) => Vec::with_capacity(640),
            (false, false) => Vec::with_capacity(64),
        };
        let period = params
            .fps
            .map(|n| Duration::from_secs_f64(1.0 / f64::from(n)));
        let mut due = Instant::now();
        // Plain, unpaced sessions park with the relay between frames, which sends them each new frame
        // in its batch (see `fanout`); what it cannot send is handed back here.
        let fast = params.plain() && period.is_none();
        if fast {
            frames.send_here(
                conn.raw_fd(),
                conn.nonblocking(),
                Arc::clone(counters),
                Arc::clone(app),
            );
        }
        // The rest of a part the relay started: (lease, bytes the socket already took).
        let mut rest: Option<(Lease, usize)> = None;
        let reason = 'session: loop {
            if fast {
                let handed = tokio::select! {
                    h = frames.parked(&cam, last) => Some(h),
                    why = stop() => {
                        // Stopping: a part the relay started is finished below (briefly), so the
                        // stream ends at a part boundary.
                        match frames.take_handoff() {
                            Some(h @ (Handoff::Rest { .. }, _)) if why == SHUTDOWN => Some(h),
                            _ => break 'session why,
                        }
                    }
                };
                if let Some((handoff, relay_last)) = handed {
                    last = relay_last;
                    match handoff {
                        Handoff::Own => {}
                        Handoff::Gone => break 'session "client gone",
                        Handoff::Rest { lease, sent } => rest = Some((lease, sent)),
                    }
                }
            }
            if period.is_some() {
                tokio::select! {
                    () = sleep_until(due) => {}
                    why = stop() => break 'session why,
                }
            }
            while rest.is_none() && cam.pool.newest_seq() <= last {
                if cam.is_retired() {
                    break 'session "camera removed";
                }
                tokio::select! {
                    r = frames.after(&cam, last) => if r.is_err() { break 'session "camera gone" },
                    why = stop() => break 'session why,
                }
            }
            if cam.is_retired() {
                break "camera removed";
            }
            let started = Instant::now();
            let prev = last;
            let handed = rest.take();
            let send_one = timeout(send_timeout, async {
                let (lease, from) = match handed {
                    Some(rest) => rest,
                    None => {
                        conn.drained().await?;
                        let Some(lease) = cam.pool.lease_after(prev) else {
                            return Ok::<_, io::Error>(None);
                        };
                        (lease, 0)
                    }
                };
                let seq = lease.seq();
                // Draining first keeps leases short for viewers that read; a peer that stopped
                // reading mid-frame holds its lease until the pool runs short and revokes it.
                let revocation = lease.revocation();
                let write = async {
                    if params.plain() {
                        let n = lease.part().len();
                        conn.write_lease(LeaseBuf::part_from(lease, from)).await?;
                        return Ok::<_, io::Error>(n);
                    }
                    let m = *lease.meta();
                    let mut n = 0;
                    let mut buf = std::mem::take(&mut scratch);
                    if !advance {
                        let extra = params.extra_headers.then(|| ExtraHeaders {
                            online: !m.is_placeholder(),
                            dropped: fanout::skipped(prev, seq),
                            width: m.width,
                            height: m.height,
                            client_fps: counters.fps(),
                            now_us: now_us(),
                        });
                        let len = if params.zero_data { 0 } else { m.jpeg_len() };
                        buf.clear();
                        custom_part_header(&mut buf, len, m.timestamp_us, seq, extra.as_ref());
                        n += buf.len();
                        let (r, b) = conn.write_all(buf).await;
                        r?;
                        buf = b;
                    }
                    if params.zero_data {
                        drop(lease);
                    } else {
                        n += m.jpeg_len();
                        conn.write_lease(LeaseBuf::jpeg(lease)).await?;
                    }
                    buf.clear();
                    buf.extend_from_slice(PART_TRAILER);
                    if advance {
                        buf.extend_from_slice(ADVANCE_HEADERS);
                    }
                    n += buf.len();
                    let (r, b) = conn.write_all(buf).await;
                    r?;
                    scratch = b;
                    Ok(n)
                };
                let n = tokio::select! {
                    r = write => r?,
                    () = frames.revoked(&revocation) => return Err(io::Error::other(REVOKED)),
                };
                Ok(Some((seq, n)))
            });
            // Boxed: a session's task keeps only what it needs between frames (a parked session sends
            // nothing itself), not the largest of its writes' states.
            let mut send_one = Box::pin(send_one);
            let mut stopping = None;
            let res = tokio::select! {
                r = &mut send_one => r,
                why = stop() => {
                    if why != SHUTDOWN {
                        break why;
                    }
                    // Stopping: a frame already on its way is finished (briefly), so the stream ends
                    // at a part boundary and a reconnecting client's parser stays in step.
                    stopping = Some(why);
                    match timeout(STOP_GRACE, &mut send_one).await {
                        Ok(r) => r,
                        Err(_) => break why,
                    }
                }
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
                    counters.record_frame(n, fanout::skipped(last, seq));
                    last = seq;
                    app.count_bytes(n);
                    if let Some(p) = period {
                        // A whole period after this frame went out (`started` is never before `due`):
                        // consecutive frames are at least 1/N s apart, even after a pause.
                        due = started + p;
                    }
                }
            }
            if let Some(why) = stopping {
                break why;
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
}
