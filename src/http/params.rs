//! Query parameters of `/stream` and `/snapshot`, parsed once per request. Pure, unit-tested.
//!
//! `/stream` takes ustreamer's options (`extra_headers`, `advance_headers`, `dual_final_frames`,
//! `zero_data`, `key`), parsed as ustreamer parses them (a flag is on for `1`, `true` or `yes`,
//! anything else is off; `key` is any string), so a URL written for ustreamer never fails here, and
//! beltcam's `fps=N` (at most N frames a second to this viewer). `/snapshot` takes
//! camera-streamer's `max_delay=MS`. A malformed `fps` or `max_delay` is refused (400): a caller who
//! asked for a rate or a freshness must learn the request was not understood.

use std::time::Duration;

use super::request::Request;
use crate::obs::stats::ClientOptions;

/// Highest `fps=N` a viewer may ask for (above any camera's rate; the camera's rate caps it anyway).
pub const MAX_CLIENT_FPS: u32 = 120;
/// Longest `key` kept (ustreamer's client key, shown in `/state`); longer ones are cut.
pub const MAX_KEY_LEN: usize = 64;
/// Largest `max_delay` accepted, in milliseconds (an hour: "any frame").
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// A stream viewer's options, as `/state`'s `clients_stat` reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamParams {
    /// ustreamer's `X-UStreamer-*` part headers.
    pub extra_headers: bool,
    /// The next part's headers right after each frame (what fixes Chromium's one-frame lag). `None`
    /// when the URL does not say: then it is on for browsers (see [`StreamParams::resolve`]).
    pub advance_headers: Option<bool>,
    /// Accepted and reported; beltcam never holds a frame back (it has no `drop_same_frames`), so
    /// there is no final frame of a series to send twice.
    pub dual_final_frames: bool,
    /// Parts with `Content-Length: 0` and no JPEG (a client that only counts frames).
    pub zero_data: bool,
    /// ustreamer's client key, reported in `/state`.
    pub key: Option<String>,
    /// At most this many frames a second to this viewer.
    pub fps: Option<u32>,
}

/// ustreamer's flag parsing (`us_evkeyvalq_get_true`).
fn flag(v: &str) -> bool {
    ["1", "true", "yes"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t))
}

impl StreamParams {
    pub fn parse(req: &Request) -> Result<Self, String> {
        let mut p = StreamParams {
            extra_headers: req.query_param("extra_headers").is_some_and(flag),
            advance_headers: req.query_param("advance_headers").map(flag),
            dual_final_frames: req.query_param("dual_final_frames").is_some_and(flag),
            zero_data: req.query_param("zero_data").is_some_and(flag),
            key: req.query_param("key").map(|k| {
                let mut k = k.to_owned();
                while k.len() > MAX_KEY_LEN {
                    k.pop();
                }
                k
            }),
            fps: None,
        };
        if let Some(v) = req.query_param("fps") {
            match v.parse::<u32>() {
                Ok(n) if (1..=MAX_CLIENT_FPS).contains(&n) => p.fps = Some(n),
                _ => {
                    return Err(format!(
                        "fps must be a whole number from 1 to {MAX_CLIENT_FPS}"
                    ))
                }
            }
        }
        Ok(p)
    }

    /// Settles `advance_headers` for this client: as asked, else on for browsers. ustreamer, like
    /// beltcam, drops the `X-UStreamer-*` headers when headers go in advance.
    pub fn resolve(mut self, browser: bool) -> Self {
        let advance = self.advance_headers.unwrap_or(browser);
        self.advance_headers = Some(advance);
        if advance {
            self.extra_headers = false;
        }
        self
    }

    /// The options as `/state`'s `clients_stat` reports them.
    pub fn reported(&self) -> ClientOptions {
        ClientOptions {
            extra_headers: self.extra_headers,
            advance_headers: self.advance_headers == Some(true),
            dual_final_frames: self.dual_final_frames,
            zero_data: self.zero_data,
            key: self.key.clone(),
        }
    }

    /// Whether the pool's shared part (header, JPEG, trailer in one buffer) is what this client
    /// gets; otherwise its parts are assembled per frame.
    pub fn plain(&self) -> bool {
        !self.extra_headers && !self.zero_data && self.advance_headers != Some(true)
    }
}

/// `/snapshot?max_delay=MS`: the oldest frame the caller accepts, in milliseconds; `0` takes
/// whatever frame is newest now. `None`: the server's snapshot timeout decides.
pub fn snapshot_max_delay(req: &Request) -> Result<Option<Duration>, String> {
    match req.query_param("max_delay") {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms <= MAX_DELAY_MS => Ok(Some(Duration::from_millis(ms))),
            _ => Err(format!(
                "max_delay must be a whole number of milliseconds from 0 to {MAX_DELAY_MS}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse;

    fn req(target: &str) -> Request {
        parse(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn ustreamer_flags_parse_as_ustreamer_does() {
        let p = StreamParams::parse(&req(
            "/stream?extra_headers=1&advance_headers=yes&dual_final_frames=TRUE&zero_data=0&key=abc",
        ))
        .unwrap();
        assert!(p.extra_headers && p.dual_final_frames && !p.zero_data);
        assert_eq!(p.advance_headers, Some(true));
        assert_eq!(p.key.as_deref(), Some("abc"));
        // Unknown values are "off", never an error, as in ustreamer.
        let p = StreamParams::parse(&req("/stream?extra_headers=maybe&zero_data")).unwrap();
        assert!(!p.extra_headers && !p.zero_data && p.advance_headers.is_none());
        let long = "k".repeat(200);
        let p = StreamParams::parse(&req(&format!("/stream?key={long}"))).unwrap();
        assert_eq!(p.key.unwrap().len(), MAX_KEY_LEN);
    }

    #[test]
    fn advance_headers_default_to_browsers_and_drop_extras() {
        let p = StreamParams::parse(&req("/stream?extra_headers=1")).unwrap();
        let b = p.clone().resolve(true);
        assert_eq!(b.advance_headers, Some(true));
        assert!(!b.extra_headers && !b.plain());
        let t = p.resolve(false);
        assert_eq!(t.advance_headers, Some(false));
        assert!(t.extra_headers && !t.plain());
        let off = StreamParams::parse(&req("/stream?advance_headers=0")).unwrap();
        assert!(off.resolve(true).plain());
    }

    #[test]
    fn fps_is_bounded() {
        assert_eq!(
            StreamParams::parse(&req("/stream?fps=5")).unwrap().fps,
            Some(5)
        );
        for bad in ["0", "-1", "121", "2.5", "", "x", "99999999999"] {
            assert!(
                StreamParams::parse(&req(&format!("/stream?fps={bad}"))).is_err(),
                "fps={bad}"
            );
        }
    }

    #[test]
    fn max_delay_is_bounded() {
        assert_eq!(snapshot_max_delay(&req("/snapshot")), Ok(None));
        assert_eq!(
            snapshot_max_delay(&req("/snapshot?max_delay=0")),
            Ok(Some(Duration::ZERO))
        );
        assert_eq!(
            snapshot_max_delay(&req("/snapshot?max_delay=250")),
            Ok(Some(Duration::from_millis(250)))
        );
        for bad in ["-1", "x", "", "3600001", "1.5"] {
            assert!(
                snapshot_max_delay(&req(&format!("/snapshot?max_delay={bad}"))).is_err(),
                "{bad}"
            );
        }
    }
}
