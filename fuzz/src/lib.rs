//! The invariants beltcam's fuzz targets check, one function per target.
//!
//! Each function takes the fuzzer's raw bytes, runs them through the same pure functions the server
//! runs on untrusted input, and panics (an `assert!`) when an invariant breaks. The libFuzzer targets
//! in `fuzz_targets/` are one-line wrappers around these, and `tests/fuzz_regression.rs` includes
//! this file with `#[path]` so the committed corpus replays through identical checks on stable Rust
//! in the normal test suite. Keep it free of libFuzzer and of anything newer than Rust 1.84.

use beltcam::capture::dht::{self, CopyError, DHT_SEGMENT_LEN, STANDARD_DHT};
use beltcam::capture::jpeg::{self, JpegError, MIN_JPEG_BYTES};
use beltcam::http::multipart::{render_part_header, Timestamp};
use beltcam::http::part_reader::{Event, PartReader};
use beltcam::http::request::{self, Method, ParseError, Request};
use beltcam::http::routes::{self, Route, RouteError};
use beltcam::limits::{MAX_REQUEST_HEAD, PART_HEADER_MAX};

/// The fixed camera list the `request` target routes against.
pub const CAMERAS: [&str; 2] = ["front", "back"];

/// Pipelined requests followed per input, as the server does on a keep-alive connection.
const MAX_PIPELINED: usize = 16;

fn camera_index(name: &str) -> Option<usize> {
    CAMERAS.iter().position(|c| *c == name)
}

/// `request` target: `request::parse`, then `routes::route`, then every pipelined request after it.
pub fn request(data: &[u8]) {
    let mut rest = data;
    for _ in 0..MAX_PIPELINED {
        let Some(r) = parse_one(rest) else { return };
        // The server drains the head and parses again only on a keep-alive request without a body.
        if !r.keep_alive || r.content_length > 0 {
            return;
        }
        rest = &rest[r.head_len..];
    }
}

/// Checks one parse of `data` (and of its prefixes) and routes the result; the request if complete.
fn parse_one(data: &[u8]) -> Option<Request> {
    let whole = request::parse(data);
    prefixes_agree(data, &whole);
    match whole {
        Ok(None) => {
            assert!(
                data.len() < MAX_REQUEST_HEAD,
                "incomplete head accepted at {} bytes (limit {MAX_REQUEST_HEAD})",
                data.len()
            );
            None
        }
        Err(e) => {
            check_error(data, e);
            None
        }
        Ok(Some(r)) => {
            check_request(data, &r);
            check_route(&r);
            Some(r)
        }
    }
}

/// The server parses after every read, so the answer on a prefix must not contradict the answer on
/// the whole: a complete head stays the same request, an error stays an error.
fn prefixes_agree(data: &[u8], whole: &Result<Option<Request>, ParseError>) {
    let n = data.len();
    for k in [n / 2, n / 3, n.saturating_sub(1), n.saturating_sub(2)] {
        match request::parse(&data[..k]) {
            Ok(None) => {}
            Ok(Some(p)) => assert_eq!(
                whole.as_ref().ok(),
                Some(&Some(p)),
                "prefix of {k} bytes was a complete request, the whole is not the same"
            ),
            Err(e) => assert!(
                whole.is_err(),
                "prefix of {k} bytes is an error ({e}), the whole {n} bytes parse: {whole:?}"
            ),
        }
    }
}

fn check_error(data: &[u8], e: ParseError) {
    assert!(!e.to_string().is_empty());
    match e {
        ParseError::HeadTooLarge => {
            assert_eq!(e.status(), 431);
            assert!(
                data.len() >= MAX_REQUEST_HEAD,
                "431 HeadTooLarge for a {}-byte input",
                data.len()
            );
        }
        ParseError::TooManyHeaders => assert_eq!(e.status(), 431),
        ParseError::Malformed(why) => {
            assert_eq!(e.status(), 400);
            assert!(!why.is_empty());
        }
    }
}

fn check_request(data: &[u8], r: &Request) {
    let h = r.head_len;
    assert!(
        h > 0 && h <= data.len(),
        "head_len {h} of {} bytes",
        data.len()
    );
    assert!(h <= MAX_REQUEST_HEAD, "head_len {h} over the limit");
    assert!(data[..h].ends_with(b"\n"), "head does not end a line");
    assert!(r.path.starts_with('/'), "path {:?}", r.path);
    // The path is percent-decoded (a decoded `%3F` is a literal '?'), so the query split is
    // checked on the raw target instead: the query never holds the path's bytes.
    assert!(!r.path.contains('\0'), "path {:?} holds a NUL", r.path);
    if let Some(q) = &r.query {
        assert!(
            data[..h]
                .windows(q.len() + 1)
                .any(|w| w[0] == b'?' && &w[1..] == q.as_bytes()),
            "query {q:?} is not the text after a '?' of the head"
        );
    }
    let target = r.path.len() + r.query.as_ref().map_or(0, |q| q.len() + 1);
    assert!(target < h, "request target longer than the head");
    // The head alone is the same request, and one byte less is not yet a request.
    assert_eq!(request::parse(&data[..h]), Ok(Some(r.clone())));
    assert_eq!(request::parse(&data[..h - 1]), Ok(None));
    for key in ["action", "", "n"] {
        if let Some(v) = r.query_param(key) {
            assert!(!v.contains('&'), "query value {v:?} spans parameters");
        }
    }
}

/// Routes `r` as each method. Whether a path exists must not depend on the method; the methods
/// that succeed must be exactly the ones a 405's `Allow` header lists, and all reach one route.
fn check_route(r: &Request) {
    const METHODS: [(Method, &str); 6] = [
        (Method::Get, "GET"),
        (Method::Head, "HEAD"),
        (Method::Post, "POST"),
        (Method::Put, "PUT"),
        (Method::Delete, "DELETE"),
        (Method::Other, "BREW"),
    ];
    let results = METHODS.map(|(m, _)| {
        let req = Request {
            method: m,
            ..r.clone()
        };
        routes::route(&req, camera_index)
    });
    let not_found = results.iter().filter(|x| **x == Err(RouteError::NotFound));
    match not_found.count() {
        0 => {}
        n if n == METHODS.len() => return,
        _ => panic!("{:?} is found for some methods only: {results:?}", r.path),
    }
    let allowed: Vec<&str> = METHODS
        .iter()
        .zip(&results)
        .filter(|(_, x)| x.is_ok())
        .map(|((_, name), _)| *name)
        .collect();
    assert!(!allowed.is_empty(), "{:?}: no method may use it", r.path);
    assert!(!allowed.contains(&"BREW"), "unknown method accepted");
    let mut first = None;
    for x in &results {
        match x {
            Ok(route) => {
                if let Route::Stream(i) | Route::Snapshot(i) = route {
                    assert!(*i < CAMERAS.len(), "camera {i} of {}", CAMERAS.len());
                }
                assert_eq!(*first.get_or_insert(route), route, "one path, two routes");
            }
            Err(RouteError::MethodNotAllowed(allow)) => {
                let listed: Vec<&str> = allow.split(", ").collect();
                assert_eq!(listed, allowed, "Allow: {allow} for {:?}", r.path);
            }
            Err(RouteError::NotFound) => unreachable!(),
        }
    }
}

/// `jpeg_check` target: the marker walker never panics, and what it accepts is what it says.
pub fn jpeg_check(data: &[u8]) {
    match jpeg::check(data) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            match e {
                JpegError::TooSmall(n) => assert!(n < MIN_JPEG_BYTES && n <= data.len()),
                // Truncated may point just past the end: a segment that swallowed the EOI.
                JpegError::Truncated(p) => {
                    assert!(p <= data.len(), "error offset {p} of {} bytes", data.len())
                }
                JpegError::BadMarker(p) => {
                    assert!(p + 1 < data.len(), "marker at {p} of {} bytes", data.len())
                }
                JpegError::NoSoi
                | JpegError::NoEoi
                | JpegError::NoFrameHeader
                | JpegError::ZeroSize => {}
            }
        }
        Ok(info) => {
            let len = info.len;
            assert!(len <= data.len(), "len {len} of {} bytes", data.len());
            assert!(len >= MIN_JPEG_BYTES);
            assert_eq!(&data[..2], [0xFF, 0xD8], "accepted without SOI");
            assert_eq!(&data[len - 2..len], [0xFF, 0xD9], "accepted without EOI");
            assert!(
                data[len..].iter().all(|&b| b == 0),
                "dropped non-zero bytes after EOI"
            );
            let sos = info.sos_offset;
            assert!(sos >= 2 && sos + 4 <= len, "SOS at {sos} of {len}");
            assert_eq!(&data[sos..sos + 2], [0xFF, 0xDA], "sos_offset not at SOS");
            assert!(info.width > 0 && info.height > 0);
            if info.has_dht {
                assert!(
                    data[..sos].windows(2).any(|w| w == [0xFF, 0xC4]),
                    "has_dht without a DHT marker before the scan"
                );
            }
            // The frame proper checks the same alone, padded further, and not when cut short.
            assert_eq!(jpeg::check(&data[..len]), Ok(info));
            let mut padded = data[..len].to_vec();
            padded.extend_from_slice(&[0; 7]);
            assert_eq!(jpeg::check(&padded), Ok(info));
            assert!(
                jpeg::check(&data[..len - 1]).is_err(),
                "accepted without EOI"
            );
        }
    }
}

/// `dht_insert` target: `dht::copy_frame` (what the V4L2 capture runs on every MJPEG frame) accepts
/// exactly what `jpeg::check` accepts, and its output always passes `jpeg::check` with tables.
pub fn dht_insert(data: &[u8]) {
    let mut out = vec![0xA5; data.len() + DHT_SEGMENT_LEN + 16];
    let copied = dht::copy_frame(data, &mut out);
    let info = match jpeg::check(data) {
        Err(e) => {
            assert_eq!(copied, Err(CopyError::Invalid(e)));
            return;
        }
        Ok(info) => info,
    };
    let added = if info.has_dht { 0 } else { DHT_SEGMENT_LEN };
    let n = info.len + added;
    assert_eq!(copied, Ok((n, info)));
    let frame = &out[..n];
    let sos = info.sos_offset;
    if info.has_dht {
        assert_eq!(
            frame,
            &data[..info.len],
            "a frame with tables is not copied verbatim"
        );
    } else {
        assert_eq!(&frame[..sos], &data[..sos]);
        assert_eq!(&frame[sos..sos + DHT_SEGMENT_LEN], &STANDARD_DHT[..]);
        assert_eq!(&frame[sos + DHT_SEGMENT_LEN..], &data[sos..info.len]);
    }
    let again = jpeg::check(frame);
    let Ok(o) = again else {
        panic!("copy_frame output fails jpeg::check: {again:?}");
    };
    assert!(o.has_dht, "output still without tables");
    assert_eq!((o.width, o.height, o.len), (info.width, info.height, n));
    assert_eq!(o.sos_offset, sos + added);
    // One byte short of room is refused, not truncated.
    let mut small = vec![0; n - 1];
    assert_eq!(dht::copy_frame(data, &mut small), Err(CopyError::TooBig(n)));
}

/// `dht_strip` target: `dht::strip_dht` (the fixture helper that makes UVC-style frames) never
/// panics on a frame `jpeg::check` accepts, and leaves a frame that checks without tables.
pub fn dht_strip(data: &[u8]) {
    let stripped = dht::strip_dht(data);
    let info = match jpeg::check(data) {
        Err(e) => {
            assert_eq!(stripped, Err(e));
            return;
        }
        Ok(info) => info,
    };
    let stripped = stripped.expect("strip_dht refused a frame jpeg::check accepts");
    match jpeg::check(&stripped) {
        Ok(o) => {
            assert!(!o.has_dht, "tables left in");
            assert_eq!((o.width, o.height), (info.width, info.height));
        }
        // A tiny frame can drop under the plausible minimum once its tables are gone.
        Err(JpegError::TooSmall(n)) if n < MIN_JPEG_BYTES => {}
        Err(e) => panic!("strip_dht output fails jpeg::check: {e:?}"),
    }
}

/// `multipart_header` target: any (length, timestamp, sequence) renders a complete part header that
/// fits `PART_HEADER_MAX` and reads back as the same numbers. It starts with the CRLF that ends the
/// boundary line before it (see `http::multipart`).
pub fn multipart_header(data: &[u8]) {
    let (jpeg_len, ts, seq) = (word(data, 0) as usize, word(data, 1), word(data, 2));
    let mut out = [0u8; PART_HEADER_MAX];
    let n = render_part_header(&mut out, jpeg_len, ts, seq);
    assert!(n < PART_HEADER_MAX, "part header of {n} bytes");
    assert!(out.starts_with(b"\r\n"), "part header must open with CRLF");
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let parsed = httparse::parse_headers(&out[2..n], &mut headers);
    let Ok(httparse::Status::Complete((used, hs))) = parsed else {
        panic!("part header does not parse: {parsed:?}");
    };
    assert_eq!(used, n - 2);
    let get = |name: &str| {
        hs.iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    assert_eq!(get("Content-Type"), Some("image/jpeg"));
    assert_eq!(get("Content-Length"), Some(jpeg_len.to_string().as_str()));
    assert_eq!(get("X-Timestamp"), Some(Timestamp(ts).to_string().as_str()));
    assert_eq!(get("X-Frame"), Some(seq.to_string().as_str()));
}

/// The `i`th little-endian u64 of `data`, zero-extended where the input runs out.
fn word(data: &[u8], i: usize) -> u64 {
    let from = data.get(i * 8..).unwrap_or(&[]);
    let n = from.len().min(8);
    let mut w = [0u8; 8];
    w[..n].copy_from_slice(&from[..n]);
    u64::from_le_bytes(w)
}

/// `part_reader` target: an upstream MJPEG stream as `PartReader` reads it from a relayed camera.
/// Byte 0 picks the read size, byte 1 the part limit; the rest is what the upstream sent.
///
/// - Any bytes, any read size: no panic, every part within the limit, the reader never holds more
///   than its one buffer and always has room for more (memory stays flat on endless garbage).
/// - Round trip: the same bytes cut into parts and framed as beltcam and ustreamer frame them (with
///   `Content-Length`) come back as exactly those parts, whatever the body holds (boundaries
///   included) and whatever the read size.
pub fn part_reader(data: &[u8]) {
    let (Some(&a), Some(&b)) = (data.first(), data.get(1)) else {
        return;
    };
    let chunk = 1 + a as usize % 97;
    let max = 1 + b as usize * 8;
    let body = &data[2..];
    for c in [chunk, usize::MAX] {
        for p in read_parts(body, c, max) {
            assert!(p.len() <= max, "part of {} bytes, limit {max}", p.len());
        }
    }
    // Parts: the body split at 0xFF bytes, each no longer than the limit.
    let parts: Vec<&[u8]> = body
        .split(|&x| x == 0xFF)
        .filter(|p| p.len() <= max)
        .collect();
    let mut framed = Vec::new();
    for p in &parts {
        framed.extend_from_slice(
            format!(
                "--b\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                p.len()
            )
            .as_bytes(),
        );
        framed.extend_from_slice(p);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"--b\r\n");
    for c in [chunk, usize::MAX] {
        let got = read_parts(&framed, c, max);
        assert_eq!(got.len(), parts.len(), "read size {c}");
        for (g, p) in got.iter().zip(&parts) {
            assert_eq!(g.as_slice(), *p, "read size {c}");
        }
    }
}

/// The parts a reader for boundary `b` finds in `input` fed `chunk` bytes at a time.
fn read_parts(input: &[u8], chunk: usize, max: usize) -> Vec<Vec<u8>> {
    let mut r = PartReader::new("b", max);
    let mut parts = Vec::new();
    let mut fed = 0;
    let mut ended = false;
    loop {
        while let Some(e) = r.next_event() {
            match e {
                Event::Part(p) => parts.push(p.to_vec()),
                Event::End => ended = true,
                Event::Oversize(_) | Event::Garbage(_) => {}
            }
        }
        if fed == input.len() || ended {
            return parts;
        }
        let spare = r.spare();
        assert!(!spare.is_empty(), "no room after {fed} bytes");
        let n = chunk.min(spare.len()).min(input.len() - fed);
        spare[..n].copy_from_slice(&input[fed..fed + n]);
        r.filled(n);
        fed += n;
    }
}
