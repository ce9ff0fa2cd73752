//! Writing small responses with a deadline, and refusals (an error answered before closing).

use tokio::time::timeout;

use super::Server;
use crate::http::response::Response;
use crate::net::Conn;

/// Sends a refusal (an error answered before closing the connection).
pub async fn refuse<C: Conn>(server: &Server, conn: &mut C, r: Response) {
    send(server, conn, r.closing().render(false)).await;
}

/// Writes a small response within the send timeout; false if the connection is done for.
pub async fn send<C: Conn>(server: &Server, conn: &mut C, bytes: Vec<u8>) -> bool {
    let n = bytes.len();
    match timeout(server.settings.send_timeout, conn.write_all(bytes)).await {
        Ok((Ok(()), _)) => {
            server.count_bytes(n);
            true
        }
        _ => false,
    }
}
