//! One connection's life: read a request head (bounded, with a deadline), route it, answer it; a
//! stream request becomes a session that sends the newest frame whenever the socket has drained.
//!
//! Written once against `net::Conn`, so io_uring and epoll run exactly this code.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, timeout_at, Instant};
use tracing::debug;

use crate::app::{App, PendingGuard, ServerCounters};
use crate::auth::Denied;
use crate::capture::now_us;
use crate::guard::Refusal;
use crate::http::multipart;
use crate::http::request::{self, Method, ParseError, Request};
use crate::http::response::{snapshot_head, Response};
use crate::http::routes::{route, Route, RouteError};
use crate::limits::MAX_REQUEST_HEAD;
use crate::net::{self, Conn};
use crate::pool::LeaseBuf;
use crate::shutdown::triggered;
use crate::{admin, events, index, metrics, stats};

enum ReadOutcome {
    Request(Request),
    /// The peer closed, the read failed, or shutdown began.
    Gone,
    /// Nothing arrived before the deadline.
    Idle,
    /// Part of a head arrived, not all of it, before the deadline (slowloris).
    Timeout,
    Bad(ParseError),
}

/// Serves one accepted connection until it closes.
pub async fn handle<C: Conn>(app: Arc<App>, mut conn: C, peer: SocketAddr, pending: PendingGuard) {
    if let Err(Refusal::Rate { retry_after_s }) = app.guard.on_connect(peer.ip()) {
        let r = Response::error(429, "too many connections from this address")
            .header("Retry-After", retry_after_s)
            .closing();
        send(&app, &mut conn, r.render(false)).await;
        return;
    }
    let mut shutdown = app.shutdown.subscribe();
    let mut buf = Vec::with_capacity(MAX_REQUEST_HEAD);
    let mut first = true;
    loop {
        let limit = if first {
            app.settings.request_timeout
        } else {
            app.settings.keepalive_timeout
        };
        let (outcome, back) = read_request(&mut conn, buf, limit, &mut shutdown).await;
        let req = match outcome {
            ReadOutcome::Request(r) => r,
            ReadOutcome::Gone => return,
            ReadOutcome::Idle => {
                if first {
                    ServerCounters::bump(&app.counters.request_timeouts);
                }
                return;
            }
            ReadOutcome::Timeout => {
                ServerCounters::bump(&app.counters.request_timeouts);
                let r = Response::error(408, "request head not received in time").closing();
                send(&app, &mut conn, r.render(false)).await;
                return;
            }
            ReadOutcome::Bad(e) => {
                let counter = match e.status() {
                    431 => &app.counters.too_large,
                    _ => &app.counters.bad_request,
                };
                ServerCounters::bump(counter);
                debug!(%peer, %e, "bad request");
                let r = Response::error(e.status(), &e.to_string()).closing();
                send(&app, &mut conn, r.render(false)).await;
                return;
            }
        };
        let Some(mut buf_back) = back else { return };
        ServerCounters::bump(&app.counters.requests);
        let started = std::time::Instant::now();
        // Bodies are never used; rather than read one, answer and close.
        let close = !req.keep_alive || req.content_length > 0 || app.shutdown.is_triggered();
        let head_only = req.method == Method::Head;
        let routed = route(&req, |n| app.camera_index(n));
        let resp = match routed.map(|r| (r, authorize(&app, r, peer, &req))) {
            Ok((_, Some(denied))) => {
                ServerCounters::bump(&app.counters.rejected_auth);
                Some(denied)
            }
            Ok((Route::Stream(cam), None)) => {
                drop(pending); // the session table bounds it from here
                stream(&app, conn, peer, cam, head_only).await;
                return;
            }
            Ok((Route::Events, None)) => {
                drop(pending); // the subscriber limit bounds it from here
                events_route(&app, &mut conn, &req).await;
                return;
            }
            Ok((Route::Snapshot(cam), None)) => {
                if snapshot(&app, &mut conn, cam, head_only, close).await {
                    None
                } else {
                    return;
                }
            }
            Ok((Route::Index, None)) => Some(Response::new(
                200,
                "text/html; charset=utf-8",
                index::page(&app),
            )),
            Ok((Route::Health, None)) => {
                let (status, body) = stats::health(&app);
                let code = if status == crate::health::Status::Ok {
                    200
                } else {
                    503
                };
                Some(Response::json(code, &body))
            }
            Ok((Route::Stats, None)) => Some(Response::json(200, &stats::stats(&app))),
            Ok((Route::Metrics, None)) => Some(Response::new(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&app),
            )),
            Ok((Route::Sessions, None)) => Some(admin::list(&app)),
            Ok((Route::SessionClose(id), None)) => Some(admin::close(&app, id)),
            Ok((Route::SessionsCloseOlder, None)) => Some(admin::close_older(&app, &req)),
            Err(RouteError::NotFound) => {
                ServerCounters::bump(&app.counters.not_found);
                Some(Response::error(
                    404,
                    &format!("no such endpoint: {}", req.path),
                ))
            }
            Err(RouteError::MethodNotAllowed(allow)) => {
                ServerCounters::bump(&app.counters.method_not_allowed);
                Some(Response::error(405, "method not allowed").header("Allow", allow))
            }
        };
        if let Some(mut r) = resp {
            r.close = close;
            if !send(&app, &mut conn, r.render(head_only)).await {
                return;
            }
        }
        app.latency.observe(started.elapsed());
        if close {
            return;
        }
        buf_back.drain(..req.head_len);
        buf = buf_back;
        first = false;
    }
}

async fn read_request<C: Conn>(
    conn: &mut C,
    mut buf: Vec<u8>,
    limit: Duration,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> (ReadOutcome, Option<Vec<u8>>) {
    let deadline = Instant::now() + limit;
    loop {
        match request::parse(&buf) {
            Ok(Some(r)) => return (ReadOutcome::Request(r), Some(buf)),
            Ok(None) => {}
            Err(e) => return (ReadOutcome::Bad(e), Some(buf)),
        }
        let was_empty = buf.is_empty();
        let read = tokio::select! {
            r = timeout_at(deadline, conn.read(buf)) => r,
            _ = triggered(shutdown) => return (ReadOutcome::Gone, None),
        };
        match read {
            Err(_) if was_empty => return (ReadOutcome::Idle, None),
            Err(_) => return (ReadOutcome::Timeout, None),
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return (ReadOutcome::Gone, None),
            Ok((Ok(_), b)) => buf = b,
        }
    }
}

/// Writes a small response within the send timeout; false if the connection is done for.
async fn send<C: Conn>(app: &App, conn: &mut C, bytes: Vec<u8>) -> bool {
    let n = bytes.len() as u64;
    match timeout(app.settings.send_timeout, conn.write_all(bytes)).await {
        Ok((Ok(()), _)) => {
            app.counters.bytes_sent.fetch_add(n, Ordering::Relaxed);
            true
        }
        _ => false,
    }
}

/// Answers with the newest frame, waiting up to the snapshot timeout for one that is fresh.
async fn snapshot<C: Conn>(
    app: &App,
    conn: &mut C,
    cam_idx: usize,
    head_only: bool,
    close: bool,
) -> bool {
    let cam = &app.cameras[cam_idx];
    let max_age = app.settings.snapshot_timeout;
    let deadline = Instant::now() + max_age;
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
        let r = Response::error(503, &why).header("Retry-After", 1);
        let mut r = r;
        r.close = close;
        return send(app, conn, r.render(head_only)).await;
    };
    let m = *lease.meta();
    if !send(
        app,
        conn,
        snapshot_head(m.jpeg_len(), m.timestamp_us, m.seq, close),
    )
    .await
    {
        return false;
    }
    if head_only {
        return true;
    }
    match timeout(
        app.settings.send_timeout,
        conn.write_lease(LeaseBuf::jpeg(lease)),
    )
    .await
    {
        Ok(Ok(())) => {
            app.counters
                .bytes_sent
                .fetch_add(m.jpeg_len() as u64, Ordering::Relaxed);
            true
        }
        _ => false,
    }
}

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
async fn stream<C: Conn>(
    app: &Arc<App>,
    mut conn: C,
    peer: SocketAddr,
    cam_idx: usize,
    head_only: bool,
) {
    let cam = &app.cameras[cam_idx];
    if head_only {
        send(app, &mut conn, multipart::stream_head().into_bytes()).await;
        return;
    }
    let _ip_place = match app.guard.open_session(peer.ip()) {
        Ok(p) => p,
        Err(_) => {
            let r = Response::error(429, "too many streams from this address")
                .header("Retry-After", 5)
                .closing();
            send(app, &mut conn, r.render(false)).await;
            return;
        }
    };
    let session = match app.sessions.open(peer, cam_idx, "stream") {
        Ok(s) => s,
        Err(full) => {
            let r = Response::error(503, &full.to_string())
                .header("Retry-After", 2)
                .closing();
            send(app, &mut conn, r.render(false)).await;
            return;
        }
    };
    app.events.emit(
        "session",
        Some(cam_idx),
        serde_json::json!({"event": "opened", "id": session.id, "peer": peer.to_string(),
            "camera": cam.name, "endpoint": "stream"}),
    );
    let _shut = ShutdownOnDrop(conn.raw_fd());
    debug!(session = session.id, %peer, camera = %cam.name, "session opened");
    let typical = cam
        .pool
        .lease_newest()
        .map_or(256 * 1024, |l| l.meta().jpeg_len());
    net::tune_for_stream(conn.raw_fd(), typical);
    if !send(app, &mut conn, multipart::stream_head().into_bytes()).await {
        return;
    }
    let counters = &session.counters;
    let mut frames = cam.subscribe();
    let mut shutdown = app.shutdown.subscribe();
    let mut last = 0u64;
    let reason = 'session: loop {
        while cam.pool.newest_seq() <= last {
            tokio::select! {
                r = frames.changed() => if r.is_err() { break 'session "camera gone" },
                _ = triggered(&mut shutdown) => break 'session "shutdown",
                _ = counters.closed() => break 'session "closed by admin",
            }
        }
        let send_one = timeout(app.settings.send_timeout, async {
            conn.drained().await?;
            let Some(lease) = cam.pool.lease_after(last) else {
                return Ok::<_, io::Error>(None);
            };
            let (seq, n) = (lease.seq(), lease.part().len());
            conn.write_lease(LeaseBuf::part(lease)).await?;
            Ok(Some((seq, n)))
        });
        let res = tokio::select! {
            r = send_one => r,
            _ = triggered(&mut shutdown) => break "shutdown",
            _ = counters.closed() => break "closed by admin",
        };
        match res {
            Err(_) => {
                ServerCounters::bump(&app.counters.send_timeouts);
                break "send timeout";
            }
            Ok(Err(_)) => break "client gone",
            Ok(Ok(None)) => {}
            Ok(Ok(Some((seq, n)))) => {
                if last != 0 && seq > last + 1 {
                    counters
                        .skipped
                        .fetch_add(seq - last - 1, Ordering::Relaxed);
                }
                last = seq;
                counters.frames.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                app.counters
                    .bytes_sent
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    };
    let frames_sent = counters.frames.load(Ordering::Relaxed);
    debug!(session = session.id, %peer, reason, frames_sent, "session closed");
    app.events.emit(
        "session",
        Some(cam_idx),
        serde_json::json!({"event": "closed", "id": session.id, "peer": peer.to_string(),
            "camera": cam.name, "reason": reason, "frames_sent": frames_sent,
            "frames_skipped": counters.skipped.load(Ordering::Relaxed),
            "bytes_sent": counters.bytes.load(Ordering::Relaxed)}),
    );
}

/// The refusal to send, if the route needs credentials the request lacks.
fn authorize(app: &App, route: Route, peer: SocketAddr, req: &Request) -> Option<Response> {
    let authz = req.authorization.as_deref();
    if route.is_admin() {
        return match app.auth.admin(peer.ip(), authz) {
            Ok(()) => None,
            Err(Denied::Unauthorized) => Some(
                Response::error(401, "admin token required")
                    .header("WWW-Authenticate", "Bearer realm=\"beltcam\""),
            ),
            Err(Denied::Forbidden) => Some(Response::error(
                403,
                "admin endpoints answer only on loopback unless an admin token is configured",
            )),
        };
    }
    if route.is_viewer() && !app.auth.viewer_ok(authz) {
        return Some(Response::error(401, "credentials required").header(
            "WWW-Authenticate",
            "Basic realm=\"beltcam\", charset=\"UTF-8\"",
        ));
    }
    None
}

/// `/events[?camera=NAME]`: a bounded number of subscribers.
async fn events_route<C: Conn>(app: &App, conn: &mut C, req: &Request) {
    let camera = match req.query_param("camera") {
        None => None,
        Some(name) => match app.camera_index(name) {
            Some(i) => Some(i),
            None => {
                let r = Response::error(404, &format!("no camera {name:?}")).closing();
                send(app, conn, r.render(false)).await;
                return;
            }
        },
    };
    let Some(sub) = app.events.subscribe() else {
        let r = Response::error(503, "too many event subscribers")
            .header("Retry-After", 5)
            .closing();
        send(app, conn, r.render(false)).await;
        return;
    };
    events::serve(app, conn, sub, camera).await;
}
