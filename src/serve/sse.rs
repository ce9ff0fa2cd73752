//! `/events`: Server-Sent Events over HTTP. The bus (`obs::events`) renders each event once; this
//! copies the bytes out to one subscriber, with a deadline on every write.

use std::net::SocketAddr;
use std::time::Duration;

use super::respond::refuse;
use super::Server;
use crate::http::request::Request;
use crate::http::response::{head, Response, NO_STORE};
use crate::net::Conn;
use crate::obs::events::{render_overflow, Next, Subscription};

/// A comment line this often keeps proxies and browsers from timing the stream out.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// `/events[?camera=NAME]`: a bounded number of subscribers, and a few per address.
pub async fn route<C: Conn>(server: &Server, conn: &mut C, req: &Request, peer: SocketAddr) {
    let camera = match req.query_param("camera") {
        None => None,
        Some(name) => match server.live().cameras.iter().find(|c| c.name == name) {
            Some(c) => Some(c.id),
            None => {
                let r = Response::error(404, &format!("no camera {name:?}"));
                refuse(server, conn, r).await;
                return;
            }
        },
    };
    let _ip_place = match server.guard.open_events(peer.ip()) {
        Ok(p) => p,
        Err(_) => {
            let r = Response::error(429, "too many event streams from this address")
                .header("Retry-After", 5);
            refuse(server, conn, r).await;
            return;
        }
    };
    let Some(sub) = server.events.subscribe() else {
        let r = Response::error(503, "too many event subscribers").header("Retry-After", 5);
        refuse(server, conn, r).await;
        return;
    };
    serve(server, conn, sub, camera).await;
}

/// Serves one subscriber until it goes away, falls silent past the send timeout, or the daemon
/// stops. `camera` limits it to one camera's room (plus events about no camera).
pub async fn serve<C: Conn>(
    server: &Server,
    conn: &mut C,
    mut sub: Subscription,
    camera: Option<usize>,
) {
    // A small send buffer: a subscriber that stops reading falls behind (and is told so) after a
    // few KiB instead of after megabytes of autotuned buffer.
    let fd = conn.raw_fd();
    // SAFETY: the connection owns `fd` for the whole call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&borrowed).set_send_buffer_size(16 * 1024);
    let mut shutdown = server.shutdown.subscribe();
    let send_timeout = server.live().settings.send_timeout;
    let mut out = head(
        200,
        "text/event-stream",
        None,
        "X-Accel-Buffering: no\r\n",
        NO_STORE,
        true,
    )
    .into_bytes();
    out.extend_from_slice(b"retry: 2000\n\n");
    loop {
        let (res, buf) = match tokio::time::timeout(send_timeout, conn.write_all(out)).await {
            Ok(r) => r,
            Err(_) => return,
        };
        if res.is_err() {
            return;
        }
        out = buf;
        out.clear();
        let next = tokio::select! {
            n = sub.next() => n,
            _ = tokio::time::sleep(HEARTBEAT) => {
                out.extend_from_slice(b": heartbeat\n\n");
                continue;
            }
            _ = crate::shutdown::triggered(&mut shutdown) => return,
        };
        match next {
            Next::Event(e) if camera.is_none() || e.camera.is_none() || e.camera == camera => {
                out.extend_from_slice(e.sse.as_bytes());
            }
            Next::Event(_) => continue,
            Next::Overflow(n) => {
                server.events.count_lost(n);
                out.extend_from_slice(render_overflow(n).as_bytes());
            }
            Next::Closed => return,
        }
    }
}
