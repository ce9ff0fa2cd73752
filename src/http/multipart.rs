//! The multipart/x-mixed-replace framing, shared with ustreamer and mjpg-streamer clients.
//!
//! Each frame's part header is rendered once, by the pool's writer, into the bytes in front of the
//! JPEG; the trailer goes after it. A session then sends header + JPEG + trailer as one buffer.
//!
//! Framing (issue 14): a response's body starts with `--boundary`, and every part is
//! `\r\n` + headers + `\r\n\r\n` + JPEG + `\r\n--boundary`. The CRLF that ends a boundary line goes
//! out with the *next* part, so every write ends with the delimiter that closes its frame (a client
//! that finds a part's end by the boundary, like VLC, has it at once) and a response never ends
//! with a complete boundary line with no part after it. That matters to ffmpeg's
//! `-reconnect_at_eof`: it splices the new response onto the old one, and after the old framing
//! (`...JPEG\r\n--boundary\r\n` + `--boundary\r\n...`) read the second boundary as a part header
//! and quit with "Invalid data found when processing input". Now the splice is
//! `...JPEG\r\n--boundary--boundary\r\nContent-Type: ...`, one line that starts with the
//! boundary, and parsing goes on. On the wire between two frames the bytes are the same as before.
//!
//! Browser quirk (the one ustreamer's `advance_headers` works around): Chromium draws a part only
//! once it has parsed the *next* part's headers, so each frame shows one frame late (a whole second
//! at 1 fps), whatever comes right after the JPEG. So a browser (or `?advance_headers=1`) gets the
//! next part's headers right after each frame, as ustreamer does: [`ADVANCE_HEADERS`], which cannot
//! hold a `Content-Length` (the next frame's size is not known yet); browsers never need one.

use std::io::Write;

/// The boundary ustreamer and mjpg-streamer use; some clients hard-code it.
pub const BOUNDARY: &str = "boundarydonotcross";

/// Ends every part: the CRLF that closes the JPEG and the boundary, without the boundary line's
/// CRLF (the next part starts with it).
pub const PART_TRAILER: &[u8] = b"\r\n--boundarydonotcross";

/// The next part's headers sent ahead, right after a frame's trailer (`advance_headers`).
pub const ADVANCE_HEADERS: &[u8] = b"\r\nContent-Type: image/jpeg\r\n\r\n";

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
        "\r\nContent-Type: image/jpeg\r\nContent-Length: {jpeg_len}\r\nX-Timestamp: {}\r\nX-Frame: {seq}\r\n\r\n",
        Timestamp(timestamp_us)
    );
    debug_assert!(res.is_ok(), "part header longer than {cap}");
    cursor.position() as usize
}

/// The per-frame figures ustreamer's `extra_headers` option adds to each part as `X-UStreamer-*`
/// headers. beltcam keeps one timestamp per frame (when it was captured, on the real-time clock), so
/// the grab, encode and expose times all carry it; `Send-Time` is now and `Latency` the difference,
/// in seconds, as ustreamer reports them.
pub struct ExtraHeaders {
    /// False for the "NO SIGNAL" placeholder.
    pub online: bool,
    /// Frames this client skipped since its previous part (ustreamer: frames dropped).
    pub dropped: u64,
    pub width: u32,
    pub height: u32,
    /// Frames sent to this client in the last whole second.
    pub client_fps: u32,
    pub now_us: u64,
}

/// Appends a part header rendered for one session (its options change what the pool's shared
/// header says) to `out`: `content_length` (0 for `zero_data`) and, with `extra`, ustreamer's
/// `X-UStreamer-*` headers.
pub fn custom_part_header(
    out: &mut Vec<u8>,
    content_length: usize,
    timestamp_us: u64,
    seq: u64,
    extra: Option<&ExtraHeaders>,
) {
    let _ = write!(
        out,
        "\r\nContent-Type: image/jpeg\r\nContent-Length: {content_length}\r\nX-Timestamp: {}\r\nX-Frame: {seq}\r\n",
        Timestamp(timestamp_us)
    );
    if let Some(x) = extra {
        let t = Timestamp(timestamp_us);
        let _ = write!(
            out,
            "X-UStreamer-Online: {}\r\nX-UStreamer-Dropped: {}\r\nX-UStreamer-Width: {}\r\n\
             X-UStreamer-Height: {}\r\nX-UStreamer-Client-FPS: {}\r\n\
             X-UStreamer-Grab-Begin-Time: {t}\r\nX-UStreamer-Grab-End-Time: {t}\r\n\
             X-UStreamer-Encode-Begin-Time: {t}\r\nX-UStreamer-Encode-End-Time: {t}\r\n\
             X-UStreamer-Expose-Begin-Time: {t}\r\nX-UStreamer-Expose-Cmp-Time: {t}\r\n\
             X-UStreamer-Expose-End-Time: {t}\r\nX-UStreamer-Send-Time: {}\r\n\
             X-UStreamer-Latency: {}\r\n",
            x.online,
            x.dropped,
            x.width,
            x.height,
            x.client_fps,
            Timestamp(x.now_us),
            Timestamp(x.now_us.saturating_sub(timestamp_us)),
        );
    }
    out.extend_from_slice(b"\r\n");
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
    fn head_ends_with_first_boundary_and_parts_carry_its_crlf() {
        let h = crate::http::response::stream_head(false);
        assert!(h.ends_with("\r\n\r\n--boundarydonotcross"));
        assert!(h.contains(&format!("boundary={BOUNDARY}")));
        assert_eq!(PART_TRAILER, format!("\r\n--{BOUNDARY}").as_bytes());
        let mut buf = [0u8; PART_HEADER_MAX];
        let n = render_part_header(&mut buf, 3, 1, 2);
        assert!(buf.starts_with(b"\r\nContent-Type: image/jpeg\r\n"));
        // What ffmpeg's -reconnect_at_eof reads across a restart: the old response's last trailer,
        // then the new response's body. The line after the JPEG's CRLF must start with the
        // boundary, and the next one be a part header, not a second boundary.
        let mut spliced = PART_TRAILER.to_vec();
        spliced.extend_from_slice(&h.as_bytes()[h.find("\r\n\r\n").unwrap() + 4..]);
        spliced.extend_from_slice(&buf[..n]);
        let text = String::from_utf8(spliced).unwrap();
        let mut lines = text.split("\r\n").skip(1);
        assert!(lines.next().unwrap().starts_with("--boundarydonotcross"));
        assert_eq!(lines.next(), Some("Content-Type: image/jpeg"));
    }

    #[test]
    fn custom_header_has_ustreamer_extras() {
        let x = ExtraHeaders {
            online: true,
            dropped: 2,
            width: 640,
            height: 480,
            client_fps: 9,
            now_us: 3_500_000,
        };
        let mut h = Vec::new();
        custom_part_header(&mut h, 0, 1_000_000, 7, Some(&x));
        let h = String::from_utf8(h).unwrap();
        assert!(h.starts_with("\r\nContent-Type: image/jpeg\r\nContent-Length: 0\r\n"));
        assert!(h.ends_with("\r\n\r\n") && !h[2..h.len() - 4].contains("\r\n\r\n"));
        for want in [
            "X-UStreamer-Online: true",
            "X-UStreamer-Dropped: 2",
            "X-UStreamer-Width: 640",
            "X-UStreamer-Height: 480",
            "X-UStreamer-Client-FPS: 9",
            "X-UStreamer-Grab-Begin-Time: 1.000000",
            "X-UStreamer-Send-Time: 3.500000",
            "X-UStreamer-Latency: 2.500000",
            "X-Frame: 7",
        ] {
            assert!(h.contains(&format!("{want}\r\n")), "{want} in {h}");
        }
        let mut plain = Vec::new();
        custom_part_header(&mut plain, 5, 1, 2, None);
        let plain = String::from_utf8(plain).unwrap();
        assert!(!plain.contains("X-UStreamer") && plain.contains("Content-Length: 5\r\n"));
    }
}
