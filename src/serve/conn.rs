//! One connection's life: read a request head (bounded, with a deadline), check limits and
//! credentials, route it, answer it. Streams and snapshots are delivered by `deliver`, event
//! streams by `sse`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout_at, Instant};
use tracing::debug;

use super::deliver::{self, StreamJob};
use super::respond::{refuse, send};
use super::{admin, controls, page, sse, Count, Server};
use crate::admit::auth::{Auth, Denied};
use crate::admit::forwarded;
use crate::admit::ipguard::Refusal;
use crate::admit::pending::PendingPlace;
use crate::http::request::{self, Method, ParseError, Request};
use crate::http::response::Response;
use crate::http::routes::{route, Route, RouteError};
use crate::limits::MAX_REQUEST_HEAD;
use crate::net::Conn;
use crate::obs::{self, health::Status};
use crate::shutdown::triggered;

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

/// Serves one accepted connection until it closes, or until a request asks for a stream, which it
/// hands back (see `Server::serve`: the request phase's state is not kept for the stream's life).
pub async fn handle<C: Conn>(
    app: Arc<Server>,
    mut conn: C,
    peer: SocketAddr,
    pending: PendingPlace,
) -> Option<StreamJob<C>> {
    // Monitoring hosts and trusted proxies (whose viewers all share its address) are not rate
    // limited per connection.
    let exempt = {
        let s = &app.live().settings;
        let ip = peer.ip().to_canonical();
        s.monitoring.contains(&ip) || s.trusted_proxies.contains(&ip)
    };
    let rate = if exempt {
        Ok(())
    } else {
        app.guard.on_connect(peer.ip())
    };
    if let Err(Refusal::Rate { retry_after_s }) = rate {
        let r = Response::error(429, "too many connections from this address")
            .header("Retry-After", retry_after_s);
        refuse(&app, &mut conn, r).await;
        return None;
    }
    let mut shutdown = app.shutdown.subscribe();
    // Most heads fit the first size; one that does not grows the buffer to the limit once.
    let mut buf = Vec::with_capacity(FIRST_HEAD_BUF);
    let mut first = true;
    loop {
        let limit = {
            let settings = &app.live().settings;
            if first {
                settings.request_timeout
            } else {
                settings.keepalive_timeout
            }
        };
        // Between keep-alive requests the connection is idle: the first to go when the pending
        // table is full (see `admit::pending`).
        pending.set_idle(!first);
        let (outcome, back) =
            read_request(&mut conn, buf, limit, &mut shutdown, &pending, !first).await;
        pending.set_idle(false);
        let req = match outcome {
            ReadOutcome::Request(r) => r,
            ReadOutcome::Gone => return None,
            ReadOutcome::Idle => {
                if first {
                    app.count(Count::RequestTimeout);
                }
                return None;
            }
            ReadOutcome::Timeout => {
                app.count(Count::RequestTimeout);
                let r = Response::error(408, "request head not received in time");
                refuse(&app, &mut conn, r).await;
                return None;
            }
            ReadOutcome::Bad(e) => {
                app.count(match e.status() {
                    431 => Count::TooLarge,
                    _ => Count::BadRequest,
                });
                debug!(%peer, %e, "bad request");
                let r = Response::error(e.status(), &e.to_string());
                refuse(&app, &mut conn, r).await;
                return None;
            }
        };
        let mut buf_back = back?;
        app.count(Count::Request);
        let started = std::time::Instant::now();
        // Bodies are never used; rather than read one, answer and close.
        let close = !req.keep_alive || req.content_length > 0 || app.shutdown.is_triggered();
        let head_only = req.method == Method::Head;
        // This request runs on the configuration in force now, to its end (a reload applies to
        // the requests after it).
        let live = app.live();
        // Behind a trusted proxy, the client it names (limits, `/sessions`, admin's loopback rule).
        let client = forwarded::client(peer, &live.settings.trusted_proxies, &req);
        let routed = route(&req, |n| live.position(n));
        let resp = match routed.map(|r| (r, authorize(&live.auth, r, client, &req))) {
            Ok((_, Some(denied))) => {
                app.count(Count::RejectedAuth);
                Some(denied)
            }
            Ok((Route::Stream(_), None)) if app.shutdown.is_triggered() => {
                Some(Response::error(503, "stopping").header("Retry-After", 1))
            }
            Ok((Route::Stream(pos), None)) => {
                // Handed back: this connection's pending place, head buffer (up to 8 KiB) and request
                // state go now; the session table bounds it from here.
                return Some(StreamJob {
                    cam: Arc::clone(&live.cameras[pos]),
                    send_timeout: live.settings.send_timeout,
                    conn,
                    client,
                    req,
                });
            }
            Ok((Route::Events, None)) => {
                drop(pending); // the subscriber limit bounds it from here
                drop(buf_back); // reads no more requests: its head buffer (up to 8 KiB) goes now
                sse::route(&app, &mut conn, &req, client).await;
                return None;
            }
            Ok((Route::Snapshot(pos), None)) => {
                let cam = &live.cameras[pos];
                if deliver::snapshot(&app, &live.settings, &mut conn, cam, &req, close).await {
                    None
                } else {
                    return None;
                }
            }
            Ok((Route::Index, None)) => Some(Response::new(
                200,
                "text/html; charset=utf-8",
                page::page(&live, app.backend),
            )),
            Ok((Route::Health, None)) => {
                let (status, body) = obs::render::health(&app.snapshot());
                let code = if status == Status::Ok { 200 } else { 503 };
                Some(Response::json(code, &body))
            }
            Ok((Route::Stats, None)) => {
                Some(Response::json(200, &obs::render::stats(&app.snapshot())))
            }
            Ok((Route::State(cam), None)) => Some(
                obs::render::ustreamer_state(&app.snapshot(), cam).map_or_else(
                    || Response::error(404, "no such camera"),
                    |body| Response::json(200, &body),
                ),
            ),
            Ok((Route::Recordings(pos), None)) => {
                let cam = live.cameras[pos].view(0);
                Some(match cam.recording {
                    Some(r) => Response::json(
                        200,
                        &serde_json::json!({ "camera": cam.name, "recording": r }),
                    ),
                    None => Response::error(404, &format!("camera {} does not record", cam.name)),
                })
            }
            Ok((Route::Metrics, None)) => Some(Response::new(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                obs::metrics::render(&app.snapshot()),
            )),
            Ok((Route::Controls(pos), None)) => Some(controls::list(&live.cameras[pos]).await),
            Ok((Route::ControlSet(pos), None)) => {
                let deadline = Instant::now() + live.settings.request_timeout;
                let cam = &live.cameras[pos];
                Some(controls::set(&mut conn, &mut buf_back, &req, cam, deadline).await)
            }
            Ok((Route::Sessions, None)) => Some(admin::list(&app, &live)),
            Ok((Route::SessionClose(id), None)) => Some(admin::close(&app, id)),
            Ok((Route::SessionsCloseOlder, None)) => Some(admin::close_older(&app, &req)),
            Err(RouteError::NotFound) => {
                app.count(Count::NotFound);
                Some(Response::error(
                    404,
                    &format!("no such endpoint: {}", req.path),
                ))
            }
            Err(RouteError::MethodNotAllowed(allow)) => {
                app.count(Count::MethodNotAllowed);
                Some(Response::error(405, "method not allowed").header("Allow", allow))
            }
        };
        if let Some(mut r) = resp {
            r.close = close;
            if !send(&app, &mut conn, r.render(head_only)).await {
                return None;
            }
        }
        app.latency.observe(started.elapsed());
        if close {
            return None;
        }
        buf_back.drain(..req.head_len);
        buf = buf_back;
        first = false;
    }
}

/// A connection's head buffer to begin with: curl's, ffmpeg's and a browser's request heads fit,
/// so a burst of connecting viewers holds 1 KiB each, not `MAX_REQUEST_HEAD`.
const FIRST_HEAD_BUF: usize = 1024;

/// How long, once stopping, a connection already accepted may take to send its request.
const STOP_GRACE: Duration = Duration::from_millis(400);

async fn read_request<C: Conn>(
    conn: &mut C,
    mut buf: Vec<u8>,
    limit: Duration,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    pending: &PendingPlace,
    idle_keepalive: bool,
) -> (ReadOutcome, Option<Vec<u8>>) {
    let mut deadline = Instant::now() + limit;
    let mut stopping = false;
    loop {
        match request::parse(&buf) {
            Ok(Some(r)) => return (ReadOutcome::Request(r), Some(buf)),
            Ok(None) => {}
            Err(e) => return (ReadOutcome::Bad(e), Some(buf)),
        }
        let was_empty = buf.is_empty();
        if buf.len() == buf.capacity() && buf.capacity() < MAX_REQUEST_HEAD {
            buf.reserve_exact(MAX_REQUEST_HEAD - buf.len());
        }
        let mut read = std::pin::pin!(timeout_at(deadline, conn.read(buf)));
        let read = if stopping {
            read.await
        } else {
            tokio::select! {
                r = &mut read => r,
                _ = triggered(shutdown) => {
                    // Stopping. An idle keep-alive connection just closes (its client retries
                    // elsewhere); one that was accepted for a request gets a short grace to send
                    // it and is answered (with `Connection: close`): under socket activation a
                    // restart must not drop a connection the old process already accepted.
                    if idle_keepalive && was_empty {
                        return (ReadOutcome::Gone, None);
                    }
                    stopping = true;
                    deadline = deadline.min(Instant::now() + STOP_GRACE);
                    match timeout_at(deadline, &mut read).await {
                        Ok(r) => r,
                        Err(_) if was_empty => return (ReadOutcome::Idle, None),
                        Err(_) => return (ReadOutcome::Timeout, None),
                    }
                }
                _ = pending.evicted() => return (ReadOutcome::Gone, None),
            }
        };
        match read {
            Err(_) if was_empty => return (ReadOutcome::Idle, None),
            Err(_) => return (ReadOutcome::Timeout, None),
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return (ReadOutcome::Gone, None),
            Ok((Ok(_), b)) => buf = b,
        }
    }
}

/// The refusal to send, if the route needs credentials the request lacks.
fn authorize(auth: &Auth, route: Route, peer: SocketAddr, req: &Request) -> Option<Response> {
    let authz = req.authorization.as_deref();
    if route.is_admin() {
        return match auth.admin(peer.ip(), authz) {
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
    if route.is_viewer() && !auth.viewer_ok(authz) {
        return Some(Response::error(401, "credentials required").header(
            "WWW-Authenticate",
            "Basic realm=\"beltcam\", charset=\"UTF-8\"",
        ));
    }
    None
}
