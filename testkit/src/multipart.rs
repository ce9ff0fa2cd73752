//! Incremental parser for an HTTP `multipart/x-mixed-replace` MJPEG response, as beltcam, ustreamer
//! and mjpg-streamer send it: the one multipart reader of the load generator and the tests.
//!
//! The load generator feeds it whatever each `read` returned; it never buffers JPEG bytes (it only
//! counts them down by `Content-Length`), so a viewer costs a few hundred bytes of state and the
//! parse cost is per header line, not per byte. Header names are matched case-insensitively and in
//! any order; the boundary is taken from the response's `Content-Type`. Anything that breaks the
//! framing is an error naming what was seen, which is how stream-format bugs show up in a run.
//!
//! [`Parser::strict`] is the tests' reader of beltcam's own stream: it keeps the bodies and the
//! response head, and also refuses what a lenient client would let pass (a part without its CRLF
//! before the next boundary, blank lines where a boundary belongs, a part that is not `image/jpeg`,
//! an `X-Frame` or `X-Timestamp` that does not parse).

/// Longest header or boundary line accepted.
const MAX_LINE: usize = 8 * 1024;
/// Most header lines in the response head or in one part.
const MAX_HEADER_LINES: usize = 64;

/// One complete part (frame) seen on the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub len: usize,
    /// `X-Timestamp` in microseconds since the epoch, if the part carried a parsable one.
    pub timestamp_us: Option<i64>,
    /// `X-Frame` sequence number, if present.
    pub seq: Option<u64>,
    /// The JPEG bytes, only when the parser was made with `keep_body`.
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    StatusLine,
    HeadHeaders,
    /// Strict only: the CRLF that ends a body.
    AfterBody,
    Boundary,
    PartHeaders,
    Body {
        remaining: usize,
    },
    Ended,
}

pub struct Parser {
    state: State,
    line: Vec<u8>,
    lines_seen: usize,
    boundary: Vec<u8>,
    status: u16,
    part: Part,
    have_len: bool,
    keep_body: bool,
    strict: bool,
    /// Strict only: the response head as received, one `\r\n`-terminated line each.
    head: String,
    /// Whether the line being handled ended in CRLF (not a bare LF).
    line_crlf: bool,
}

impl Parser {
    pub fn new(keep_body: bool) -> Self {
        Self {
            state: State::StatusLine,
            line: Vec::with_capacity(128),
            lines_seen: 0,
            boundary: Vec::new(),
            status: 0,
            part: empty_part(),
            have_len: false,
            keep_body,
            strict: false,
            head: String::new(),
            line_crlf: false,
        }
    }

    /// A parser that keeps bodies and the response head, and checks the framing to the letter
    /// (see the module doc).
    pub fn strict() -> Self {
        Self {
            strict: true,
            ..Self::new(true)
        }
    }

    /// The response head (status line and headers) as far as it was read; strict parsers only.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// True once a `200` multipart response head has been read.
    pub fn head_ok(&self) -> bool {
        !matches!(self.state, State::StatusLine | State::HeadHeaders)
    }

    /// True once the closing boundary (`--boundary--`) was seen.
    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Consumes `data`, calling `on_part` for every part whose last byte is in it.
    pub fn feed(&mut self, data: &[u8], mut on_part: impl FnMut(Part)) -> Result<(), String> {
        let mut pos = 0;
        while pos < data.len() {
            if let State::Body { remaining } = self.state {
                let n = remaining.min(data.len() - pos);
                if self.keep_body {
                    self.part.body.extend_from_slice(&data[pos..pos + n]);
                }
                pos += n;
                self.state = State::Body {
                    remaining: remaining - n,
                };
                if remaining == n {
                    self.state = self.after_body();
                    on_part(std::mem::replace(&mut self.part, empty_part()));
                }
                continue;
            }
            if self.state == State::Ended {
                return Ok(()); // an epilogue after the closing boundary is ignored
            }
            match memchr(b'\n', &data[pos..]) {
                None => {
                    self.push_line_bytes(&data[pos..])?;
                    pos = data.len();
                }
                Some(i) => {
                    self.push_line_bytes(&data[pos..pos + i])?;
                    pos += i + 1;
                    let mut line = std::mem::take(&mut self.line);
                    self.line_crlf = line.last() == Some(&b'\r');
                    if self.line_crlf {
                        line.pop();
                    }
                    let res = self.on_line(&line, &mut on_part);
                    line.clear();
                    self.line = line;
                    res?;
                }
            }
        }
        Ok(())
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(format!(
                "line longer than {MAX_LINE} bytes in {:?}",
                self.state
            ));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn count_line(&mut self) -> Result<(), String> {
        self.lines_seen += 1;
        if self.lines_seen > MAX_HEADER_LINES {
            return Err(format!(
                "more than {MAX_HEADER_LINES} header lines in {:?}",
                self.state
            ));
        }
        Ok(())
    }

    fn after_body(&self) -> State {
        if self.strict {
            State::AfterBody
        } else {
            State::Boundary
        }
    }

    fn on_line(&mut self, line: &[u8], on_part: &mut impl FnMut(Part)) -> Result<(), String> {
        if self.strict && matches!(self.state, State::StatusLine | State::HeadHeaders) {
            self.head.push_str(&String::from_utf8_lossy(line));
            self.head.push_str("\r\n");
        }
        match self.state {
            State::StatusLine => {
                let text = String::from_utf8_lossy(line);
                let mut it = text.split_whitespace();
                let proto = it.next().unwrap_or("");
                let code = it.next().and_then(|c| c.parse::<u16>().ok());
                match code {
                    Some(c) if proto.starts_with("HTTP/1.") => self.status = c,
                    _ => return Err(format!("not an HTTP status line: {text:?}")),
                }
                self.state = State::HeadHeaders;
            }
            State::HeadHeaders => {
                if line.is_empty() {
                    if self.status != 200 {
                        return Err(format!("HTTP status {}", self.status));
                    }
                    if self.boundary.is_empty() {
                        return Err("response has no multipart boundary in Content-Type".into());
                    }
                    self.lines_seen = 0;
                    self.state = State::Boundary;
                    return Ok(());
                }
                self.count_line()?;
                if let Some((name, value)) = split_header(line) {
                    if name.eq_ignore_ascii_case("content-type") {
                        self.boundary = boundary_of(value)
                            .map(|b| format!("--{b}").into_bytes())
                            .unwrap_or_default();
                    }
                }
            }
            State::AfterBody => {
                if !line.is_empty() || !self.line_crlf {
                    return Err(format!(
                        "part must end with CRLF, got {:?}",
                        String::from_utf8_lossy(&line[..line.len().min(80)])
                    ));
                }
                self.state = State::Boundary;
            }
            State::Boundary => {
                if line.is_empty() && !self.strict {
                    self.count_line()?; // the CRLF ending a body; tolerate a few stray blanks
                    return Ok(());
                }
                if line == self.boundary.as_slice() {
                    self.lines_seen = 0;
                    self.state = State::PartHeaders;
                } else if line.strip_suffix(b"--") == Some(self.boundary.as_slice()) {
                    self.state = State::Ended;
                } else {
                    return Err(format!(
                        "expected boundary {:?}, got {:?}",
                        String::from_utf8_lossy(&self.boundary),
                        String::from_utf8_lossy(&line[..line.len().min(80)])
                    ));
                }
            }
            State::PartHeaders => {
                if line.is_empty() {
                    return self.start_body(on_part);
                }
                self.count_line()?;
                let Some((name, value)) = split_header(line) else {
                    return Err(format!(
                        "malformed part header {:?}",
                        String::from_utf8_lossy(line)
                    ));
                };
                if name.eq_ignore_ascii_case("content-length") {
                    let n = value
                        .parse::<usize>()
                        .map_err(|_| format!("bad Content-Length {value:?}"))?;
                    self.part.len = n;
                    self.have_len = true;
                } else if name.eq_ignore_ascii_case("x-timestamp") {
                    self.part.timestamp_us = parse_timestamp_us(value);
                    if self.strict && self.part.timestamp_us.is_none() {
                        return Err(format!("bad X-Timestamp {value:?}"));
                    }
                } else if name.eq_ignore_ascii_case("x-frame") {
                    self.part.seq = value.parse().ok();
                    if self.strict && self.part.seq.is_none() {
                        return Err(format!("bad X-Frame {value:?}"));
                    }
                } else if self.strict
                    && name.eq_ignore_ascii_case("content-type")
                    && value != "image/jpeg"
                {
                    return Err(format!("part Content-Type {value:?}, not image/jpeg"));
                }
            }
            State::Body { .. } | State::Ended => {}
        }
        Ok(())
    }

    fn start_body(&mut self, on_part: &mut impl FnMut(Part)) -> Result<(), String> {
        if !self.have_len {
            return Err("part without Content-Length".into());
        }
        self.have_len = false;
        self.lines_seen = 0;
        if self.part.len == 0 {
            self.state = self.after_body();
            on_part(std::mem::replace(&mut self.part, empty_part()));
        } else {
            if self.keep_body {
                self.part.body.reserve(self.part.len.min(64 << 20));
            }
            self.state = State::Body {
                remaining: self.part.len,
            };
        }
        Ok(())
    }
}

fn empty_part() -> Part {
    Part {
        len: 0,
        timestamp_us: None,
        seq: None,
        body: Vec::new(),
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Splits `Name: value` into trimmed name and value.
pub fn split_header(line: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(line).ok()?;
    let (name, value) = text.split_once(':')?;
    Some((name.trim(), value.trim()))
}

/// The `boundary` parameter of a multipart Content-Type, unquoted.
fn boundary_of(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        // Some servers put the dashes in the parameter too; the line then has four.
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// `1700000000.123456` -> microseconds. Fewer or more decimals are scaled to microseconds.
pub fn parse_timestamp_us(v: &str) -> Option<i64> {
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut us: i64 = 0;
    let digits = frac.as_bytes();
    for i in 0..6 {
        let d = match digits.get(i) {
            Some(c) if c.is_ascii_digit() => i64::from(c - b'0'),
            Some(_) => return None,
            None => 0,
        };
        us = us * 10 + d;
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(secs * 1_000_000 + us)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=boundarydonotcross\r\nConnection: close\r\n\r\n--boundarydonotcross\r\n";

    fn part(seq: u64, body: &[u8]) -> Vec<u8> {
        let mut v = format!(
            "Content-Type: image/jpeg\r\nContent-Length: {}\r\nX-Timestamp: 1700000000.{seq:06}\r\nX-Frame: {seq}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        v.extend_from_slice(body);
        v.extend_from_slice(b"\r\n--boundarydonotcross\r\n");
        v
    }

    fn stream() -> Vec<u8> {
        let mut s = HEAD.as_bytes().to_vec();
        s.extend(part(1, b"\xff\xd8abc\r\n--boundarydonotcross\r\n\xff\xd9"));
        s.extend(part(2, b""));
        s.extend(part(3, &[7u8; 5000]));
        s
    }

    fn run(chunk: usize, keep: bool) -> Vec<Part> {
        let mut p = Parser::new(keep);
        let mut out = Vec::new();
        for c in stream().chunks(chunk) {
            p.feed(c, |f| out.push(f)).expect("parse");
        }
        assert!(p.head_ok());
        out
    }

    #[test]
    fn parses_in_any_chunking() {
        for chunk in [1, 2, 3, 7, 64, 100_000] {
            let parts = run(chunk, false);
            let seqs: Vec<_> = parts.iter().map(|p| p.seq).collect();
            assert_eq!(seqs, vec![Some(1), Some(2), Some(3)], "chunk {chunk}");
            assert_eq!(parts[2].len, 5000);
            assert_eq!(parts[0].timestamp_us, Some(1_700_000_000_000_001));
        }
    }

    #[test]
    fn keeps_body_on_request() {
        let parts = run(13, true);
        assert_eq!(
            parts[0].body,
            b"\xff\xd8abc\r\n--boundarydonotcross\r\n\xff\xd9"
        );
        assert_eq!(parts[2].body.len(), 5000);
    }

    #[test]
    fn header_order_and_case_do_not_matter() {
        let mut s = b"HTTP/1.0 200 OK\r\ncontent-type: multipart/x-mixed-replace; boundary=\"xx\"\r\n\r\n\r\n--xx\r\nx-frame: 9\r\ncontent-length: 2\r\nx-timestamp: 5.5\r\n\r\nab\r\n--xx--\r\n".to_vec();
        s.extend_from_slice(b"ignored");
        let mut p = Parser::new(false);
        let mut out = Vec::new();
        p.feed(&s, |f| out.push(f)).expect("parse");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].seq, Some(9));
        assert_eq!(out[0].timestamp_us, Some(5_500_000));
        assert!(p.ended());
    }

    #[test]
    fn rejects_bad_streams() {
        let bad: [&[u8]; 4] = [
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=b\r\n\r\n--b\r\nX-Frame: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=b\r\n\r\n--c\r\n",
        ];
        for s in bad {
            assert!(Parser::new(false).feed(s, |_| {}).is_err(), "{s:?}");
        }
    }

    #[test]
    fn strict_keeps_head_and_bodies() {
        let mut p = Parser::strict();
        let mut out = Vec::new();
        for c in stream().chunks(5) {
            p.feed(c, |f| out.push(f)).expect("parse");
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].body.len(), 5000);
        assert!(p
            .head()
            .starts_with("HTTP/1.1 200 OK\r\nContent-Type: multipart/"));
    }

    #[test]
    fn strict_refuses_what_lenient_lets_pass() {
        let h = "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=b\r\n\r\n";
        let lenient_ok: [String; 5] = [
            format!("{h}\r\n--b\r\n"),
            format!("{h}--b\r\nContent-Length: 2\r\n\r\nab--b\r\n"),
            format!("{h}--b\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n\r\n--b\r\n"),
            format!("{h}--b\r\nX-Frame: one\r\nContent-Length: 0\r\n\r\n\r\n--b\r\n"),
            format!("{h}--b\r\nContent-Length: 1\r\n\r\na\n--b\r\n"),
        ];
        for s in &lenient_ok {
            assert!(
                Parser::new(true).feed(s.as_bytes(), |_| {}).is_ok(),
                "{s:?}"
            );
            assert!(
                Parser::strict().feed(s.as_bytes(), |_| {}).is_err(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            parse_timestamp_us("1700000000.123456"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(parse_timestamp_us("1.5"), Some(1_500_000));
        assert_eq!(parse_timestamp_us("3"), Some(3_000_000));
        assert_eq!(parse_timestamp_us("x.1"), None);
    }
}
