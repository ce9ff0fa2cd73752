//! Writing small responses with a deadline, and refusals: an error answered, then a graceful close.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::{timeout, timeout_at, Instant};

use super::Server;
use crate::http::response::Response;
use crate::limits::{LINGER_BYTES, LINGER_MS, MAX_LINGERING};
use crate::net::{self, Conn};

/// Sends a refusal (an error answered before closing the connection), then lingers: the client
/// reads the status every time, even one that was still sending its request.
pub async fn refuse<C: Conn>(server: &Server, conn: &mut C, r: Response) {
    if send(server, conn, r.closing().render(false)).await {
        linger(&server.lingering, conn).await;
    }
}

/// Writes a small response within the send timeout; false if the connection is done for.
pub async fn send<C: Conn>(server: &Server, conn: &mut C, bytes: Vec<u8>) -> bool {
    let n = bytes.len();
    let send_timeout = server.live().settings.send_timeout;
    match timeout(send_timeout, conn.write_all(bytes)).await {
        Ok((Ok(()), _)) => {
            server.count_bytes(n);
            true
        }
        _ => false,
    }
}

/// Closing a socket whose receive queue holds unread bytes sends a reset, and a reset can destroy
/// the answer still in flight (clients then see "connection reset" instead of our 429 or 431).
/// So: shut the write side (FIN after the answer), read and discard what the client still sends
/// until it closes, for at most `LINGER_MS` and `LINGER_BYTES`, then close. At most `MAX_LINGERING`
/// connections linger at once; past that a refusal closes at once.
async fn linger<C: Conn>(count: &AtomicUsize, conn: &mut C) {
    let taken = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < MAX_LINGERING).then_some(n + 1)
    });
    if taken.is_err() {
        return;
    }
    net::shutdown_write(conn.raw_fd());
    let deadline = Instant::now() + Duration::from_millis(LINGER_MS);
    let mut buf = Vec::with_capacity(4096);
    let mut total = 0;
    while total < LINGER_BYTES {
        buf.clear();
        match timeout_at(deadline, conn.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                total += n;
                buf = b;
            }
            _ => break,
        }
    }
    count.fetch_sub(1, Ordering::AcqRel);
}
