//! Reading an upstream `multipart/x-mixed-replace` MJPEG stream (ustreamer, mjpg-streamer, another
//! beltcam, IP cameras): bytes in, whole parts out. Pure and bounded: one buffer, allocated once,
//! holds at most a part head and one part; nothing here reads a socket or allocates per part.
//!
//! What upstreams send differs, and all of it is accepted:
//! - the boundary from `Content-Type`, quoted or not, with or without leading dashes;
//! - a delimiter line before each part (`--b\r\n` + headers + body + `\r\n`) or after each part
//!   (beltcam's own framing), LF-only line ends, `----b` lines from servers whose boundary
//!   parameter already starts with `--`;
//! - parts with `Content-Length` (read exactly) or without (the body runs to the next delimiter).
//!
//! And what goes wrong is survived: bytes that are not a part (garbage before or between parts) are
//! skipped and counted until the next delimiter line; a part larger than `max_part` is skipped as it
//! streams past (never buffered whole) and counted; an oversized part head is garbage.

/// A part head longer than this is not a part head.
pub const MAX_PART_HEAD: usize = 4096;

/// The longest boundary accepted (RFC 2046 allows 70 characters).
pub const MAX_BOUNDARY: usize = 70;

/// What the reader found in the bytes given so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// One part's body, whole.
    Part(&'a [u8]),
    /// A part larger than `max_part` (its length when known): skipped.
    Oversize(Option<u64>),
    /// Bytes that were not part of any part, skipped.
    Garbage(usize),
    /// The closing delimiter (`--b--`): the upstream ended the stream.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Looking for a delimiter line; what comes before it is garbage.
    Seek,
    /// After a delimiter line, reading the part's header lines.
    Head,
    /// Reading a body: `Some(n)` bytes, or up to the next delimiter.
    Body(Option<u64>),
    /// Dropping the rest of an oversized part with a known length.
    SkipLen(u64),
    /// Dropping an oversized part without a length, up to the next delimiter.
    SkipToDelimiter,
    /// The closing delimiter was seen.
    Ended,
}

/// The boundary named by a `Content-Type` value, without leading dashes (`None` when it is not a
/// multipart type or names no usable boundary).
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        let v = v.trim_start_matches('-');
        let ok = !v.is_empty()
            && v.len() <= MAX_BOUNDARY
            && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        return ok.then(|| v.to_owned());
    }
    None
}

pub struct PartReader {
    /// `--` + the boundary: every delimiter line contains it.
    delimiter: Vec<u8>,
    max_part: usize,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    state: State,
    /// In `Body(None)`: how far the unread bytes were already searched for a delimiter.
    scanned: usize,
    /// In `Seek`: nothing but whitespace seen since the last part (which is not garbage).
    fresh: bool,
    /// The `X-Timestamp` of the part being read (beltcam's and ustreamer's capture time).
    timestamp_us: Option<u64>,
}

impl PartReader {
    /// A reader for parts of at most `max_part` bytes, delimited by `boundary` (as `boundary()`
    /// returns it).
    pub fn new(boundary: &str, max_part: usize) -> PartReader {
        let mut delimiter = b"--".to_vec();
        delimiter.extend_from_slice(&boundary.as_bytes()[..boundary.len().min(MAX_BOUNDARY)]);
        let cap = max_part + MAX_PART_HEAD + 2 * (2 + MAX_BOUNDARY + 8);
        PartReader {
            delimiter,
            max_part,
            buf: vec![0; cap].into_boxed_slice(),
            start: 0,
            end: 0,
            state: State::Seek,
            scanned: 0,
            fresh: true,
            timestamp_us: None,
        }
    }

    /// The capture time the last part's head gave (`X-Timestamp: SECONDS.MICROS`), if any: a relay
    /// keeps the upstream's time, so latency through a chain of relays is measured end to end.
    pub fn part_timestamp_us(&self) -> Option<u64> {
        self.timestamp_us
    }

    /// Starts over for a new stream (a reconnect), keeping the buffer.
    pub fn reset(&mut self, boundary: &str) {
        self.delimiter.clear();
        self.delimiter.extend_from_slice(b"--");
        self.delimiter
            .extend_from_slice(&boundary.as_bytes()[..boundary.len().min(MAX_BOUNDARY)]);
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
        self.timestamp_us = None;
        self.enter_seek();
    }

    /// Where the next bytes go: read into this, then call `filled` with the count. Never empty
    /// while the stream has not ended (`next_event` frees space before it asks for more).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were written at the start of `spare()`.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes buffered and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next thing found in the bytes given so far, or `None` when more are needed.
    pub fn next_event(&mut self) -> Option<Event<'_>> {
        loop {
            let data = &self.buf[self.start..self.end];
            match self.state {
                State::Ended => return None,
                State::Seek | State::SkipToDelimiter => {
                    let counting = self.state == State::Seek;
                    if counting && self.fresh {
                        // Line breaks and padding between parts are not garbage.
                        let ws = data.iter().take_while(|b| b.is_ascii_whitespace()).count();
                        if ws > 0 {
                            self.start += ws;
                            continue;
                        }
                        if data.is_empty() {
                            return None;
                        }
                        self.fresh = false;
                    }
                    match self.find_delimiter(0) {
                        Some((line, after)) => {
                            let Some(rest) = line_end(&data[after..]) else {
                                // The delimiter line is not complete yet: keep it.
                                if line > 0 {
                                    return self.drop_bytes(line, counting);
                                }
                                return None;
                            };
                            let closing = data[after..].starts_with(b"--");
                            self.start += after + rest;
                            if closing {
                                self.state = State::Ended;
                                return Some(Event::End);
                            }
                            self.state = State::Head;
                            if counting && line > 0 {
                                return Some(Event::Garbage(line));
                            }
                        }
                        None => {
                            // Keep a tail that may hold the start of a delimiter.
                            let keep = self.delimiter.len() + 4;
                            if data.len() <= keep {
                                return None;
                            }
                            return self.drop_bytes(data.len() - keep, counting);
                        }
                    }
                }
                State::Head => {
                    let Some((head_len, content_length, timestamp_us)) = part_head(data) else {
                        if data.len() > MAX_PART_HEAD {
                            self.enter_seek();
                            return self.drop_bytes(MAX_PART_HEAD, true);
                        }
                        return None;
                    };
                    self.start += head_len;
                    self.timestamp_us = timestamp_us;
                    self.state = match content_length {
                        Some(n) if n > self.max_part as u64 => {
                            self.state = State::SkipLen(n);
                            return Some(Event::Oversize(Some(n)));
                        }
                        n => State::Body(n),
                    };
                    self.scanned = 0;
                }
                State::Body(Some(n)) => {
                    let n = n as usize;
                    if data.len() < n {
                        return None;
                    }
                    let at = self.start;
                    self.start += n;
                    self.enter_seek();
                    return Some(Event::Part(&self.buf[at..at + n]));
                }
                State::Body(None) => match self.find_delimiter(self.scanned) {
                    Some((line, _)) => {
                        // The body ends before the line break that precedes the delimiter.
                        let mut body = line;
                        if body > 0 && data[body - 1] == b'\n' {
                            body -= 1;
                            if body > 0 && data[body - 1] == b'\r' {
                                body -= 1;
                            }
                        }
                        let at = self.start;
                        self.start += body;
                        self.enter_seek();
                        if body > self.max_part {
                            return Some(Event::Oversize(Some(body as u64)));
                        }
                        return Some(Event::Part(&self.buf[at..at + body]));
                    }
                    None => {
                        let keep = self.delimiter.len() + 4;
                        // Next time, search only what arrives (plus a possible partial delimiter).
                        self.scanned = data.len().saturating_sub(keep);
                        if data.len() > self.max_part + keep {
                            self.scanned = 0;
                            self.state = State::SkipToDelimiter;
                            let n = data.len() - keep;
                            self.start += n;
                            return Some(Event::Oversize(None));
                        }
                        return None;
                    }
                },
                State::SkipLen(left) => {
                    if data.is_empty() {
                        return None;
                    }
                    let n = (left as usize).min(data.len());
                    self.start += n;
                    let left = left - n as u64;
                    if left == 0 {
                        self.enter_seek();
                    } else {
                        self.state = State::SkipLen(left);
                    }
                }
            }
        }
    }

    fn enter_seek(&mut self) {
        self.state = State::Seek;
        self.fresh = true;
    }

    /// Drops `n` unread bytes; reports them as garbage when `count`.
    fn drop_bytes(&mut self, n: usize, count: bool) -> Option<Event<'_>> {
        let n = n.min(self.buffered());
        self.start += n;
        if count && n > 0 {
            Some(Event::Garbage(n))
        } else {
            // Nothing to report; the caller loops by asking again.
            self.next_event()
        }
    }

    /// The first delimiter line at or after `from` in the unread bytes: the offset where its line
    /// starts (its leading dashes included) and the offset just past the boundary. A delimiter
    /// starts a line, or the unread bytes (what follows a part, or the stream's first bytes).
    fn find_delimiter(&self, from: usize) -> Option<(usize, usize)> {
        let data = &self.buf[self.start..self.end];
        let d = &self.delimiter;
        let mut i = from;
        while i + d.len() <= data.len() {
            let p = i + find(&data[i..], d)?;
            // Extra leading dashes belong to the delimiter ("----b" when the parameter said "--b").
            let mut line = p;
            while line > 0 && data[line - 1] == b'-' {
                line -= 1;
            }
            if line == 0 || data[line - 1] == b'\n' {
                return Some((line, p + d.len()));
            }
            i = p + 1;
        }
        None
    }
}

/// The length of the rest of a delimiter line (through its `\n`), if the line is complete.
/// Transport padding (spaces, tabs) and a closing `--` may sit before the line break.
fn line_end(rest: &[u8]) -> Option<usize> {
    let limit = rest.len().min(MAX_BOUNDARY);
    let nl = rest[..limit].iter().position(|&b| b == b'\n');
    match nl {
        Some(i) => Some(i + 1),
        None if rest.len() >= MAX_BOUNDARY => Some(limit),
        None => None,
    }
}

/// A complete part head at the start of `data`: its length (through the empty line), its
/// `Content-Length` and its `X-Timestamp` in microseconds. An empty line right away is a part with
/// no headers.
fn part_head(data: &[u8]) -> Option<(usize, Option<u64>, Option<u64>)> {
    let mut content_length = None;
    let mut timestamp_us = None;
    let mut at = 0;
    loop {
        let nl = data[at..].iter().position(|&b| b == b'\n')?;
        let line = &data[at..at + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at += nl + 1;
        if at > MAX_PART_HEAD {
            return None;
        }
        if line.is_empty() {
            return Some((at, content_length, timestamp_us));
        }
        if let Some((k, v)) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split_once(':'))
        {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse::<u64>().ok();
            } else if k.eq_ignore_ascii_case("x-timestamp") {
                timestamp_us = parse_timestamp(v);
            }
        }
    }
}

/// `SECONDS[.FRACTION]` to microseconds (at most 6 fraction digits are read).
fn parse_timestamp(v: &str) -> Option<u64> {
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: u64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(6).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let micros: u64 = format!("{digits:0<6}").parse().ok()?;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// The first occurrence of `needle` (not empty) in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        i += hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        if hay[i + 1..i + needle.len()] == *rest {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything `r` yields for `input` fed in chunks of `chunk` bytes, parts as their bytes.
    fn run(boundary: &str, max: usize, input: &[u8], chunk: usize) -> Vec<String> {
        let mut r = PartReader::new(boundary, max);
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            while let Some(e) = r.next_event() {
                out.push(match e {
                    Event::Part(p) => format!("part:{}", String::from_utf8_lossy(p)),
                    Event::Oversize(n) => format!("oversize:{n:?}"),
                    Event::Garbage(n) => format!("garbage:{n}"),
                    Event::End => "end".into(),
                });
            }
            if fed == input.len() {
                return out;
            }
            let spare = r.spare();
            assert!(!spare.is_empty(), "the reader must always take more bytes");
            let n = chunk.min(spare.len()).min(input.len() - fed);
            spare[..n].copy_from_slice(&input[fed..fed + n]);
            r.filled(n);
            fed += n;
        }
    }

    /// Same events whatever the chunking.
    fn all_chunkings(boundary: &str, max: usize, input: &[u8]) -> Vec<String> {
        let whole = run(boundary, max, input, usize::MAX);
        for chunk in [1, 2, 3, 7, 64] {
            assert_eq!(run(boundary, max, input, chunk), whole, "chunk {chunk}");
        }
        whole
    }

    #[test]
    fn boundary_from_content_type() {
        let b = |s| boundary(s);
        assert_eq!(
            b("multipart/x-mixed-replace;boundary=boundarydonotcross").as_deref(),
            Some("boundarydonotcross")
        );
        assert_eq!(
            b("multipart/x-mixed-replace; Boundary=\"my frame\"").as_deref(),
            Some("my frame")
        );
        assert_eq!(
            b("multipart/x-mixed-replace; boundary=--myboundary").as_deref(),
            Some("myboundary")
        );
        assert_eq!(b("image/jpeg"), None);
        assert_eq!(b("multipart/x-mixed-replace"), None);
        assert_eq!(b("multipart/x-mixed-replace; boundary="), None);
        assert_eq!(
            b(&format!("multipart/x; boundary={}", "a".repeat(71))),
            None
        );
    }

    #[test]
    fn beltcam_framing_delimiter_after_each_part() {
        let s = b"--b\r\nContent-Type: image/jpeg\r\nContent-Length: 3\r\n\r\nabc\r\n--b\r\n\
                  Content-Type: image/jpeg\r\nContent-Length: 2\r\n\r\nde\r\n--b\r\n";
        assert_eq!(all_chunkings("b", 100, s), ["part:abc", "part:de"]);
    }

    #[test]
    fn beltcam_framing_line_break_sent_with_the_next_part() {
        // The body starts with the delimiter; its line break goes out with the next part.
        let s = b"--b\r\nContent-Type: image/jpeg\r\nContent-Length: 3\r\n\r\nabc\r\n--b\
                  \r\nContent-Type: image/jpeg\r\nContent-Length: 2\r\n\r\nde\r\n--b";
        assert_eq!(all_chunkings("b", 100, s), ["part:abc", "part:de"]);
        // A part is out as soon as its body is in, not when the next one starts.
        let first = b"--b\r\nContent-Length: 3\r\n\r\nabc\r\n--b";
        assert_eq!(run("b", 100, first, usize::MAX), ["part:abc"]);
    }

    #[test]
    fn the_upstream_capture_time_is_read() {
        let mut r = PartReader::new("b", 100);
        let s = b"--b\r\nX-Timestamp: 1700000000.123456\r\nContent-Length: 1\r\n\r\nA\r\n--b\r\n\r\nB\r\n--b\r\n";
        r.spare()[..s.len()].copy_from_slice(s);
        r.filled(s.len());
        assert_eq!(r.next_event(), Some(Event::Part(b"A")));
        assert_eq!(r.part_timestamp_us(), Some(1_700_000_000_123_456));
        assert_eq!(r.next_event(), Some(Event::Part(b"B")));
        assert_eq!(r.part_timestamp_us(), None);
        assert_eq!(parse_timestamp("12.5"), Some(12_500_000));
        assert_eq!(parse_timestamp("12"), Some(12_000_000));
        assert_eq!(parse_timestamp("x"), None);
        assert_eq!(parse_timestamp("1.2x"), None);
    }

    #[test]
    fn delimiter_before_each_part_without_length_and_lf_only() {
        let s = b"\r\n--b\nContent-Type: image/jpeg\n\nabc\n--b\n\nxyz\r\n--b--\r\n";
        assert_eq!(all_chunkings("b", 100, s), ["part:abc", "part:xyz", "end"]);
    }

    #[test]
    fn extra_dashes_and_padding_on_delimiter_lines() {
        let s = b"----b  \r\nContent-Length: 1\r\n\r\nA\r\n----b\r\nContent-Length: 1\r\n\r\nB\r\n";
        assert_eq!(all_chunkings("b", 100, s), ["part:A", "part:B"]);
    }

    #[test]
    fn garbage_is_skipped_counted_and_reading_resynchronises() {
        let s = b"HELLO garbage\r\n--b\r\nContent-Length: 1\r\n\r\nA\r\nmore junk\r\n--b\r\nContent-Length: 1\r\n\r\nB\r\n--b\r\n";
        let ev = run("b", 100, s, usize::MAX);
        assert_eq!(ev, ["garbage:15", "part:A", "garbage:11", "part:B"]);
        // Chunked, garbage may be reported in pieces; the parts are the same.
        for chunk in [1, 5] {
            let ev = run("b", 100, s, chunk);
            let parts: Vec<_> = ev.iter().filter(|e| e.starts_with("part")).collect();
            assert_eq!(parts, ["part:A", "part:B"]);
            let junk: usize = ev
                .iter()
                .filter_map(|e| e.strip_prefix("garbage:")?.parse::<usize>().ok())
                .sum();
            assert_eq!(junk, 15 + 11, "{ev:?}");
        }
    }

    #[test]
    fn a_boundary_inside_a_body_with_length_is_data() {
        let s = b"--b\r\nContent-Length: 9\r\n\r\nx\n--b\r\nyz\r\n--b\r\n";
        assert_eq!(all_chunkings("b", 100, s), ["part:x\n--b\r\nyz"]);
    }

    #[test]
    fn oversized_parts_are_skipped_without_buffering_them() {
        let big = "X".repeat(50);
        let with_len = format!(
            "--b\r\nContent-Length: 50\r\n\r\n{big}\r\n--b\r\nContent-Length: 2\r\n\r\nok\r\n--b\r\n"
        );
        assert_eq!(
            all_chunkings("b", 10, with_len.as_bytes()),
            ["oversize:Some(50)", "part:ok"]
        );
        let without = format!("--b\r\n\r\n{big}\r\n--b\r\n\r\nok\r\n--b\r\n");
        let ev = run("b", 10, without.as_bytes(), usize::MAX);
        assert_eq!(ev, ["oversize:Some(50)", "part:ok"]);
        for chunk in [1, 7] {
            let ev = run("b", 10, without.as_bytes(), chunk);
            assert_eq!(ev, ["oversize:None", "part:ok"], "chunk {chunk}");
        }
    }

    #[test]
    fn endless_garbage_keeps_memory_flat() {
        let mut r = PartReader::new("b", 1000);
        let cap = r.buf.len();
        let (mut junk, mut sent) = (0, 0);
        for _ in 0..10_000 {
            let spare = r.spare();
            let n = spare.len().min(997);
            // Never a delimiter: "-b" but never "--b".
            for b in spare[..n].iter_mut() {
                *b = b"-bx\r\n"[sent % 5];
                sent += 1;
            }
            r.filled(n);
            while let Some(e) = r.next_event() {
                match e {
                    Event::Garbage(n) => junk += n,
                    Event::Part(_) | Event::Oversize(_) | Event::End => {}
                }
            }
            assert!(r.buffered() <= cap);
        }
        assert_eq!(r.buf.len(), cap);
        assert!(junk + 16 >= sent, "{junk} of {sent}");
    }

    #[test]
    fn oversized_head_is_garbage() {
        let mut s = b"--b\r\n".to_vec();
        for _ in 0..300 {
            s.extend_from_slice(b"X-Header: 0123456789\r\n");
        }
        s.extend_from_slice(b"\r\nbody\r\n--b\r\nContent-Length: 2\r\n\r\nok\r\n--b\r\n");
        let ev = run("b", 100, &s, usize::MAX);
        assert_eq!(ev.last().map(String::as_str), Some("part:ok"), "{ev:?}");
        assert!(ev.iter().any(|e| e.starts_with("garbage")));
    }
}
