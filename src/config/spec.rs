//! Source specs: the one-line camera descriptions used by `--source` and the config's `source` key.
//!
//! `synthetic[:WxH@FPS]`, `dir:PATH[@FPS]`, `v4l2:DEVICE[:WxH@FPS[:FORMAT]]`,
//! `http://[USER:PASS@]HOST[:PORT]/PATH` (an upstream MJPEG stream); a bare `/dev/...` path means
//! `v4l2:` with that device.

use std::path::PathBuf;

/// The size a V4L2 camera is asked for when the spec names none: a sensible default for a belt
/// camera streamed to browsers (negotiation falls back to the nearest the camera offers).
pub const DEFAULT_V4L2_SIZE: (u32, u32) = (1280, 720);

#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    Synthetic {
        width: u32,
        height: u32,
        fps: f64,
    },
    Dir {
        path: PathBuf,
        fps: f64,
    },
    V4l2 {
        device: PathBuf,
        /// Requested size and rate; `None` takes the camera's best.
        mode: Option<(u32, u32, f64)>,
        /// Requested fourcc (e.g. `MJPG`, `YUYV`); `None` prefers MJPEG.
        format: Option<String>,
    },
    /// An upstream MJPEG stream (ustreamer, mjpg-streamer, another beltcam, an IP camera), relayed.
    Http(HttpUrl),
}

/// An `http://` upstream: where to connect, what to ask for, and the Basic credentials if any.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// A host name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    /// The request target: path and query (`/?action=stream` for mjpg-streamer).
    pub path: String,
    /// `user:password` for HTTP Basic auth to the upstream.
    pub credentials: Option<String>,
}

/// The longest upstream URL accepted.
pub const MAX_URL: usize = 1024;

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        if url.len() > MAX_URL {
            return Err(format!("an upstream URL is at most {MAX_URL} bytes"));
        }
        if url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err("an upstream URL has no spaces or control characters".into());
        }
        let rest = url.strip_prefix("http://").ok_or(
            "upstream URLs start with http:// (https is not supported: relay over the LAN)",
        )?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        let (credentials, hostport) = match authority.rsplit_once('@') {
            Some((c, h)) if c.contains(':') => (Some(c.to_owned()), h),
            Some(_) => return Err("upstream credentials are written user:password@host".into()),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("an IPv6 host is written [addr]")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("unexpected {after:?} after [{h}]")),
            };
            (h, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("an upstream URL needs a host".into());
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port {p:?} is not 1..=65535"))?,
        };
        Ok(HttpUrl {
            host: host.to_owned(),
            port,
            path,
            credentials,
        })
    }

    /// `host:port` as the `Host` header and `connect` want it (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The URL as `/stats` and logs show it: the password is never printed.
impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://")?;
        if let Some(c) = &self.credentials {
            let user = c.split_once(':').map_or(c.as_str(), |(u, _)| u);
            write!(f, "{user}:***@")?;
        }
        write!(f, "{}{}", self.authority(), self.path)
    }
}

impl std::fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpUrl({self})")
    }
}

pub const DEFAULT_SYNTHETIC: (u32, u32, f64) = (1280, 720, 30.0);
pub const DEFAULT_DIR_FPS: f64 = 15.0;

impl SourceSpec {
    pub fn parse(spec: &str) -> Result<SourceSpec, String> {
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        match kind {
            "synthetic" => {
                let (width, height, fps) = if rest.is_empty() {
                    DEFAULT_SYNTHETIC
                } else {
                    parse_mode(rest)?
                };
                Ok(SourceSpec::Synthetic { width, height, fps })
            }
            "dir" => {
                if rest.is_empty() {
                    return Err("dir: needs a folder, e.g. dir:/var/lib/beltcam/frames@15".into());
                }
                let (path, fps) = match rest.rsplit_once('@') {
                    Some((p, f)) => (p, parse_fps(f)?),
                    None => (rest, DEFAULT_DIR_FPS),
                };
                Ok(SourceSpec::Dir {
                    path: path.into(),
                    fps,
                })
            }
            "v4l2" => parse_v4l2(rest),
            "http" => Ok(SourceSpec::Http(HttpUrl::parse(spec)?)),
            "https" => Err("https upstreams are not supported: relay over http on the LAN".into()),
            _ if spec.starts_with("/dev/") => parse_v4l2(spec),
            _ => Err(format!(
                "unknown source kind {kind:?} (expected synthetic, dir, v4l2 or http)"
            )),
        }
    }

    /// Nominal frame rate, for health's staleness threshold.
    pub fn nominal_fps(&self) -> Option<f64> {
        match self {
            SourceSpec::Synthetic { fps, .. } | SourceSpec::Dir { fps, .. } => Some(*fps),
            SourceSpec::V4l2 { mode, .. } => mode.map(|m| m.2),
            SourceSpec::Http(_) => None,
        }
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Synthetic { width, height, fps } => {
                write!(f, "synthetic:{width}x{height}@{fps}")
            }
            SourceSpec::Dir { path, fps } => write!(f, "dir:{}@{fps}", path.display()),
            SourceSpec::V4l2 {
                device,
                mode,
                format,
            } => {
                write!(f, "v4l2:{}", device.display())?;
                if let Some((w, h, fps)) = mode {
                    write!(f, ":{w}x{h}@{fps}")?;
                }
                if let Some(fmt) = format {
                    write!(f, ":{fmt}")?;
                }
                Ok(())
            }
            SourceSpec::Http(url) => write!(f, "{url}"),
        }
    }
}

fn parse_v4l2(rest: &str) -> Result<SourceSpec, String> {
    let mut parts = rest.splitn(3, ':');
    let device = parts.next().unwrap_or_default();
    if device.is_empty() {
        return Err("v4l2: needs a device, e.g. v4l2:/dev/video0".into());
    }
    let mode = parts.next().map(parse_mode).transpose()?;
    let format = match parts.next() {
        Some(f) if f.len() == 4 && f.is_ascii() => Some(f.to_ascii_uppercase()),
        Some(f) => return Err(format!("format {f:?} is not a fourcc like MJPG or YUYV")),
        None => None,
    };
    Ok(SourceSpec::V4l2 {
        device: device.into(),
        mode,
        format,
    })
}

/// `WxH@FPS` (the `@FPS` may be left out: 30).
pub fn parse_mode(s: &str) -> Result<(u32, u32, f64), String> {
    let (size, fps) = match s.split_once('@') {
        Some((size, fps)) => (size, parse_fps(fps)?),
        None => (s, 30.0),
    };
    let (w, h) = size
        .split_once('x')
        .ok_or_else(|| format!("size {size:?} is not WIDTHxHEIGHT"))?;
    let dim = |v: &str| -> Result<u32, String> {
        match v.parse::<u32>() {
            Ok(n) if (MIN_SIDE..=MAX_SIDE).contains(&n) && n % 2 == 0 => Ok(n),
            _ => Err(format!(
                "{v:?} is not an even size between {MIN_SIDE} and {MAX_SIDE}"
            )),
        }
    };
    let (w, h) = (dim(w)?, dim(h)?);
    super::budget::check_frame_fits(w, h)?;
    Ok((w, h, fps))
}

/// Frame sides accepted (even, for 4:2:0 chroma); the pixel count is bounded by the slot too.
pub const MIN_SIDE: u32 = 16;
pub const MAX_SIDE: u32 = 8192;
/// Frame rates accepted. Below 0.1 fps a frame period is over 10 s, longer than any timeout the
/// daemon keeps (and `1e-300` would overflow the pacer's `Duration`).
pub const MIN_FPS: f64 = 0.1;
pub const MAX_FPS: f64 = 240.0;

fn parse_fps(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        // `contains` is false for NaN; the infinities are outside the range.
        Ok(f) if (MIN_FPS..=MAX_FPS).contains(&f) => Ok(f),
        _ => Err(format!(
            "fps {s:?} is not a number between {MIN_FPS} and {MAX_FPS}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_urls() {
        let u = |s: &str| HttpUrl::parse(s);
        let ustreamer = u("http://10.0.0.5:8080/stream").unwrap();
        assert_eq!(
            (
                ustreamer.host.as_str(),
                ustreamer.port,
                ustreamer.path.as_str()
            ),
            ("10.0.0.5", 8080, "/stream")
        );
        let mjpg = u("http://cam.local/?action=stream").unwrap();
        assert_eq!((mjpg.port, mjpg.path.as_str()), (80, "/?action=stream"));
        assert_eq!(
            u("http://cam.local?action=stream").unwrap().path,
            "/?action=stream"
        );
        assert_eq!(u("http://h").unwrap().path, "/");
        let v6 = u("http://op:pw@[::1]:5001/cam/front/stream").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 5001));
        assert_eq!(v6.credentials.as_deref(), Some("op:pw"));
        assert_eq!(v6.authority(), "[::1]:5001");
        // The password never shows.
        assert_eq!(v6.to_string(), "http://op:***@[::1]:5001/cam/front/stream");
        assert!(!format!("{:?}", SourceSpec::Http(v6)).contains("pw"));
        for bad in [
            "https://h/stream",
            "http://",
            "http://h:0/",
            "http://h:99999/",
            "http://user@h/",
            "http://h/a b",
            "http://[::1/",
        ] {
            assert!(SourceSpec::parse(bad).is_err(), "{bad}");
        }
        assert!(u(&format!("http://h/{}", "a".repeat(MAX_URL))).is_err());
        assert!(matches!(
            SourceSpec::parse("http://127.0.0.1:8080/stream"),
            Ok(SourceSpec::Http(_))
        ));
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            SourceSpec::parse("synthetic").unwrap(),
            SourceSpec::Synthetic {
                width: 1280,
                height: 720,
                fps: 30.0
            }
        );
        assert_eq!(
            SourceSpec::parse("synthetic:640x480@15").unwrap(),
            SourceSpec::Synthetic {
                width: 640,
                height: 480,
                fps: 15.0
            }
        );
        assert_eq!(
            SourceSpec::parse("dir:/tmp/a@2.5").unwrap(),
            SourceSpec::Dir {
                path: "/tmp/a".into(),
                fps: 2.5
            }
        );
        assert_eq!(
            SourceSpec::parse("v4l2:/dev/video0:640x480@25:yuyv").unwrap(),
            SourceSpec::V4l2 {
                device: "/dev/video0".into(),
                mode: Some((640, 480, 25.0)),
                format: Some("YUYV".into())
            }
        );
        assert!(matches!(
            SourceSpec::parse("/dev/v4l/by-id/usb-cam-video-index0").unwrap(),
            SourceSpec::V4l2 { mode: None, .. }
        ));
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        for bad in [
            "webcam",
            "synthetic:640x@30",
            "synthetic:641x480",
            "synthetic:640x480@0",
            "synthetic:640x480@1e-300",
            "synthetic:640x480@1e-19",
            "synthetic:640x480@0.05",
            "synthetic:640x480@NaN",
            "synthetic:640x480@inf",
            "synthetic:640x480@241",
            "synthetic:8192x8192",
            "synthetic:7680x4320@1",
            "synthetic:14x480",
            "dir:/x@1e-300",
            "dir:/x@nan",
            "v4l2:/dev/video0:8192x8192@5",
            "dir:",
            "v4l2:",
            "v4l2:/dev/video0:640x480@25:JPEG2",
        ] {
            assert!(SourceSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oversize_frames_are_refused_with_the_slot_as_reason() {
        let e = SourceSpec::parse("synthetic:8192x8192").unwrap_err();
        assert!(e.contains("pool slot"), "{e}");
        assert!(SourceSpec::parse("synthetic:3840x2160@5").is_ok());
        assert!(SourceSpec::parse("synthetic:640x480@0.1").is_ok());
        assert!(SourceSpec::parse("synthetic:640x480@240").is_ok());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "synthetic:640x480@15",
            "dir:/x@15",
            "v4l2:/dev/video0:640x480@25:YUYV",
        ] {
            let spec = SourceSpec::parse(s).unwrap();
            assert_eq!(SourceSpec::parse(&spec.to_string()).unwrap(), spec);
        }
    }
}
