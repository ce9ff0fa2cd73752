//! Serving: the server state and everything that answers a connection — the request loop, frame
//! delivery (streams and snapshots), Server-Sent Events, the admin API and the page.
//!
//! Written once against `net::Conn`, so io_uring and epoll run exactly this code; [`Server`] is the
//! `net::Handler` the serving threads hand their connections to.

pub mod admin;
pub mod conn;
pub mod deliver;
pub mod page;
pub mod respond;
pub mod sse;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

pub use state::{Count, Server};

use crate::admit::pending::PendingGuard;
use crate::limits::MAX_PENDING_CONNECTIONS;
use crate::net::{Conn, Handler};

impl Handler for Server {
    async fn serve<C: Conn + 'static>(self: Arc<Self>, conn: C, peer: SocketAddr) {
        self.count(Count::Accepted);
        let Some(pending) = PendingGuard::try_new(&self.pending, MAX_PENDING_CONNECTIONS) else {
            self.count(Count::PendingRejected);
            return; // dropping `conn` closes it
        };
        conn::handle(self, conn, peer, pending).await;
    }
}
