//! The multipart/x-mixed-replace framing, shared with ustreamer and mjpg-streamer clients.
//!
//! Each frame's part header is rendered once, by the pool's writer, into the bytes in front of the
//! JPEG; the trailer goes after it. A session then sends header + JPEG + trailer as one buffer.
//!
//! Browser quirk (the one ustreamer's `advance_headers` works around): Chrome and Firefox only draw a
//! part once they see the *next* boundary, so a stream whose boundary leads each part shows every
//! frame one frame late, and a still camera's last frame never. Like mjpg-streamer we therefore end
//! every part with `\r\n--boundary\r\n` and put the first boundary right after the response head.

use std::io::Write;

/// The boundary ustreamer and mjpg-streamer use; some clients hard-code it.
pub const BOUNDARY: &str = "boundarydonotcross";

/// Ends every part: the CRLF that closes the JPEG and the next part's boundary line.
pub const PART_TRAILER: &[u8] = b"\r\n--boundarydonotcross\r\n";

/// Seconds since the epoch with microseconds, as ustreamer's `X-Timestamp` has it.
pub struct Timestamp(pub u64);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// Renders one part's header into `out` and returns its length. `out` is `PART_HEADER_MAX` long,
/// which holds the longest possible header (all numbers at u64::MAX).
pub fn render_part_header(out: &mut [u8], jpeg_len: usize, timestamp_us: u64, seq: u64) -> usize {
    let cap = out.len();
    let mut cursor = std::io::Cursor::new(out);
    let res = write!(
        cursor,
        "Content-Type: image/jpeg\r\nContent-Length: {jpeg_len}\r\nX-Timestamp: {}\r\nX-Frame: {seq}\r\n\r\n",
        Timestamp(timestamp_us)
    );
    debug_assert!(res.is_ok(), "part header longer than {cap}");
    cursor.position() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::PART_HEADER_MAX;

    #[test]
    fn longest_header_fits() {
        let mut buf = [0u8; PART_HEADER_MAX];
        let n = render_part_header(&mut buf, usize::MAX, u64::MAX, u64::MAX);
        assert!(n < PART_HEADER_MAX);
        assert!(buf[..n].ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn timestamp_has_six_decimals() {
        assert_eq!(Timestamp(1_000_000_007).to_string(), "1000.000007");
    }

    #[test]
    fn head_ends_with_first_boundary() {
        let h = crate::http::response::stream_head(false);
        assert!(h.ends_with("\r\n\r\n--boundarydonotcross\r\n"));
        assert!(h.contains(&format!("boundary={BOUNDARY}")));
        assert!(PART_TRAILER.ends_with(format!("--{BOUNDARY}\r\n").as_bytes()));
    }
}
