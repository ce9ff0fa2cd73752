//! Serving: the server state and everything that answers a connection — the request loop, frame
//! delivery (streams and snapshots), Server-Sent Events, the admin API and the page.
//!
//! Written once against `net::Conn`, so io_uring and epoll run exactly this code; [`Server`] is the
//! `net::Handler` the serving threads hand their connections to.

pub(crate) mod admin;
pub(crate) mod conn;
pub(crate) mod controls;
pub(crate) mod deliver;
pub(crate) mod fanout;
pub(crate) mod page;
pub(crate) mod respond;
pub(crate) mod sse;
pub(crate) mod state;

use std::net::SocketAddr;
use std::sync::Arc;

pub use state::{Count, Live, Server};

use crate::http::response::Response;
use crate::net::{Conn, Handler};

impl Handler for Server {
    /// Not an `async fn`, which would keep `conn` and `peer` twice in the task for the whole
    /// connection (see `deliver::stream`).
    #[allow(clippy::manual_async_fn)]
    fn serve<C: Conn + 'static>(
        self: Arc<Self>,
        mut conn: C,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + 'static {
        async move {
            self.count(Count::Accepted);
            match self.pending.admit(peer.ip()) {
                Ok(place) => {
                    // The request phase is boxed and over before a stream starts, so a viewer's
                    // task keeps only the stream's state: not the head buffer (up to 8 KiB), the pending
                    // place, the request or the other routes' state.
                    // The handed-back job is a temporary of this statement: the task keeps the
                    // stream's future only, not the job it was made from as well.
                    let stream =
                        match Box::pin(conn::handle(Arc::clone(&self), conn, peer, place)).await {
                            Some(job) => deliver::stream(&self, job),
                            None => return,
                        };
                    stream.await;
                }
                Err(full) => {
                    // Every place is held by a connection still sending its request: say so.
                    self.count(Count::PendingRejected);
                    let r = Response::error(503, &full.to_string()).header("Retry-After", 1);
                    // Boxed, as the request phase is: the task would otherwise be as large as
                    // this refusal's write for every connection's whole life.
                    Box::pin(respond::refuse(&self, &mut conn, r)).await;
                }
            }
        }
    }

    /// Stream sessions wait on their own stop signal, not the shutdown channel (see `deliver`):
    /// this wakes them.
    fn stopping(&self) {
        self.sessions.close_all();
    }
}
