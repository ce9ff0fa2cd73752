//! Format negotiation, pure: from what a camera offers and what was asked, pick format, size, rate.
//!
//! Rules: MJPEG first (passthrough: no decode, no re-encode), then the raw formats in
//! `convert::RAW_PREFERENCE`; a format that has the exact requested size beats a preferred one that
//! does not. Sizes and rates that are not offered fall back to the nearest offered (and the choice
//! says so, for the log). With no mode asked for, the target is 1280x720 at the highest rate the
//! camera has at that size: a sensible default for a belt camera streamed to browsers.

use std::io;

use serde::Serialize;

use super::ioctl::{DeviceFd, IntervalEnum, SizeEnum};
use crate::capture::convert::{RawFormat, RAW_PREFERENCE};

/// The size used when none is requested.
pub const DEFAULT_SIZE: (u32, u32) = crate::config::spec::DEFAULT_V4L2_SIZE;

/// Compressed formats that are JPEG frames and can be passed through. Some cameras say `JPEG`.
pub const JPEG_FOURCCS: [[u8; 4]; 2] = [*b"MJPG", *b"JPEG"];

/// One format with every size and rate the camera offers for it.
#[derive(Clone, Debug, Serialize)]
pub struct FormatOffer {
    #[serde(serialize_with = "ser_fourcc")]
    pub fourcc: [u8; 4],
    pub description: String,
    pub compressed: bool,
    /// beltcam can stream it (passthrough or encode).
    pub usable: bool,
    pub sizes: Vec<SizeOffer>,
    /// For stepwise/continuous sizes: the range as the driver gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stepwise: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SizeOffer {
    pub width: u32,
    pub height: u32,
    /// Frame intervals as (numerator, denominator) seconds, fastest first.
    #[serde(skip)]
    pub intervals: Vec<(u32, u32)>,
    /// The same as frames per second, for people.
    pub fps: Vec<f64>,
}

fn ser_fourcc<S: serde::Serializer>(f: &[u8; 4], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fourcc_str(*f))
}

pub fn fourcc_str(f: [u8; 4]) -> String {
    String::from_utf8_lossy(&f).trim_end().to_string()
}

pub fn usable(fourcc: [u8; 4]) -> bool {
    JPEG_FOURCCS.contains(&fourcc) || RawFormat::from_fourcc(fourcc).is_some()
}

/// Candidate sizes for a stepwise range: the common ones inside it, its ends, and `want` snapped.
pub fn expand_stepwise(r: [u32; 6], want: Option<(u32, u32)>) -> Vec<(u32, u32)> {
    let [minw, minh, maxw, maxh, sw, sh] = r;
    let snap = |v: u32, min: u32, max: u32, step: u32| {
        let v = v.clamp(min, max);
        min + (v - min + step / 2) / step * step
    };
    let mut v: Vec<(u32, u32)> = [(320, 240), (640, 480), (1280, 720), (1920, 1080)]
        .into_iter()
        .chain(want)
        .map(|(w, h)| {
            (
                snap(w, minw, maxw, sw).min(maxw),
                snap(h, minh, maxh, sh).min(maxh),
            )
        })
        .chain([(minw, minh), (maxw, maxh)])
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Frame intervals to offer for a size: discrete ones as listed (fastest first); for a
/// stepwise range, its ends.
pub fn interval_list(ivals: &[IntervalEnum]) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = ivals
        .iter()
        .flat_map(|i| match *i {
            IntervalEnum::Discrete(n, d) => vec![(n, d)],
            IntervalEnum::Stepwise(min, max) => vec![min, max],
        })
        .filter(|&(n, d)| n > 0 && d > 0)
        .collect();
    v.sort_by(|a, b| fps_of(*b).total_cmp(&fps_of(*a)));
    v.dedup();
    v
}

pub fn fps_of((n, d): (u32, u32)) -> f64 {
    if n == 0 {
        0.0
    } else {
        d as f64 / n as f64
    }
}

/// Sizes from an enumeration (stepwise ranges expanded around `want`).
pub fn size_list(sizes: &[SizeEnum], want: Option<(u32, u32)>) -> Vec<(u32, u32)> {
    sizes
        .iter()
        .flat_map(|s| match *s {
            SizeEnum::Discrete(w, h) => vec![(w, h)],
            SizeEnum::Stepwise(r) => expand_stepwise(r, want),
        })
        .collect()
}

/// What was asked for (from the source spec).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    pub size: Option<(u32, u32)>,
    pub fps: Option<f64>,
    pub format: Option<[u8; 4]>,
}

/// What negotiation picked.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub fourcc: [u8; 4],
    pub width: u32,
    pub height: u32,
    /// (numerator, denominator) seconds per frame; `None` if the camera lists no rates.
    pub interval: Option<(u32, u32)>,
    pub passthrough: bool,
    /// Where the choice differs from the request, in words (empty when it matches).
    pub notes: Vec<String>,
}

fn preference(fourcc: [u8; 4]) -> Option<usize> {
    if let Some(i) = JPEG_FOURCCS.iter().position(|f| *f == fourcc) {
        return Some(i);
    }
    RAW_PREFERENCE
        .iter()
        .position(|r| r.fourcc() == fourcc)
        .map(|i| i + JPEG_FOURCCS.len())
}

/// Picks format, size and rate. Errors when the camera offers nothing beltcam can stream.
pub fn choose(offers: &[FormatOffer], req: &Request) -> Result<Choice, String> {
    let mut notes = Vec::new();
    let candidates: Vec<&FormatOffer> = offers
        .iter()
        .filter(|o| preference(o.fourcc).is_some() && !o.sizes.is_empty())
        .collect();
    let has_size =
        |o: &FormatOffer, s: (u32, u32)| o.sizes.iter().any(|z| (z.width, z.height) == s);
    let asked = req
        .format
        .and_then(|f| candidates.iter().copied().find(|o| o.fourcc == f));
    if let (Some(f), None) = (req.format, asked) {
        notes.push(format!("format {} not offered", fourcc_str(f)));
    }
    let fmt = match asked {
        Some(o) => o,
        None => candidates
            .iter()
            .copied()
            .min_by_key(|o| {
                let exact = req.size.is_some_and(|s| has_size(o, s));
                (!exact, preference(o.fourcc))
            })
            .ok_or_else(|| {
                let all: Vec<String> = offers.iter().map(|o| fourcc_str(o.fourcc)).collect();
                format!("no usable format (camera offers: {})", all.join(", "))
            })?,
    };
    let (tw, th) = req.size.unwrap_or(DEFAULT_SIZE);
    let size = fmt
        .sizes
        .iter()
        .min_by_key(|s| {
            let d = s.width.abs_diff(tw) as u64 + s.height.abs_diff(th) as u64;
            (d, u64::MAX - s.width as u64 * s.height as u64)
        })
        .ok_or("no sizes")?;
    if let Some((w, h)) = req.size.filter(|&r| r != (size.width, size.height)) {
        notes.push(format!("{w}x{h} not offered"));
    }
    let interval = match req.fps {
        // intervals are fastest first: min_by keeps the first of equals, the faster one
        Some(want) => size.intervals.iter().copied().min_by(|a, b| {
            (fps_of(*a) - want)
                .abs()
                .total_cmp(&(fps_of(*b) - want).abs())
        }),
        None => size.intervals.first().copied(),
    };
    if let (Some(want), Some(got)) = (req.fps, interval) {
        if (fps_of(got) - want).abs() > 0.01 {
            notes.push(format!("{want} fps not offered at that size"));
        }
    }
    Ok(Choice {
        fourcc: fmt.fourcc,
        width: size.width,
        height: size.height,
        interval,
        passthrough: JPEG_FOURCCS.contains(&fmt.fourcc),
        notes,
    })
}

/// Everything the device offers, for negotiation and `beltcam devices`.
pub fn offers(dev: &DeviceFd, want: Option<(u32, u32)>) -> io::Result<Vec<FormatOffer>> {
    let mut out = Vec::new();
    for f in dev.formats()? {
        let raw_sizes = dev.sizes(f.fourcc)?;
        let stepwise = raw_sizes.iter().find_map(|s| match s {
            SizeEnum::Stepwise([a, b, c, d, e, g]) => {
                Some(format!("{a}x{b} to {c}x{d}, step {e}x{g}"))
            }
            _ => None,
        });
        let mut sizes = Vec::new();
        for (w, h) in size_list(&raw_sizes, want) {
            let intervals = interval_list(&dev.intervals(f.fourcc, w, h)?);
            let fps = intervals
                .iter()
                .map(|&i| (fps_of(i) * 1000.0).round() / 1000.0)
                .collect();
            sizes.push(SizeOffer {
                width: w,
                height: h,
                intervals,
                fps,
            });
        }
        out.push(FormatOffer {
            fourcc: f.fourcc,
            description: f.description,
            compressed: f.compressed,
            usable: usable(f.fourcc),
            sizes,
            stepwise,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(f: &[u8; 4], sizes: &[(u32, u32, &[f64])]) -> FormatOffer {
        FormatOffer {
            fourcc: *f,
            description: String::new(),
            compressed: f == b"MJPG",
            usable: usable(*f),
            sizes: sizes
                .iter()
                .map(|&(width, height, fps)| SizeOffer {
                    width,
                    height,
                    intervals: fps.iter().map(|&f| (1000, (f * 1000.0) as u32)).collect(),
                    fps: fps.to_vec(),
                })
                .collect(),
            stepwise: None,
        }
    }

    fn vivid() -> Vec<FormatOffer> {
        let sizes: &[(u32, u32, &[f64])] = &[
            (320, 180, &[60.0, 30.0]),
            (640, 360, &[40.0, 20.0]),
            (640, 480, &[25.0, 12.5]),
            (1280, 720, &[12.5, 6.25]),
            (1920, 1080, &[5.0]),
        ];
        vec![
            offer(b"YUYV", sizes),
            offer(b"UYVY", sizes),
            offer(b"NV12", sizes),
            offer(b"GREY", sizes),
            offer(b"BA81", sizes),
        ]
    }

    fn req(size: Option<(u32, u32)>, fps: Option<f64>, fmt: Option<&[u8; 4]>) -> Request {
        Request {
            size,
            fps,
            format: fmt.copied(),
        }
    }

    #[test]
    fn exact_request_is_taken_as_is() {
        let c = choose(&vivid(), &req(Some((640, 480)), Some(25.0), Some(b"UYVY"))).unwrap();
        assert_eq!((&c.fourcc, c.width, c.height), (b"UYVY", 640, 480));
        assert_eq!(c.interval, Some((1000, 25000)));
        assert!(c.notes.is_empty() && !c.passthrough);
    }

    #[test]
    fn mjpeg_is_preferred_and_passed_through() {
        let mut o = vivid();
        o.push(offer(b"MJPG", &[(640, 480, &[30.0]), (1280, 720, &[30.0])]));
        let c = choose(&o, &req(None, None, None)).unwrap();
        assert_eq!((&c.fourcc, c.width, c.height), (b"MJPG", 1280, 720));
        assert!(c.passthrough);
        // ...unless only a raw format has the exact size asked for
        let c = choose(&o, &req(Some((320, 180)), None, None)).unwrap();
        assert_eq!(&c.fourcc, b"YUYV");
    }

    #[test]
    fn nearest_size_and_rate_with_notes() {
        let c = choose(&vivid(), &req(Some((800, 600)), Some(30.0), None)).unwrap();
        assert_eq!((&c.fourcc, c.width, c.height), (b"YUYV", 640, 480));
        assert_eq!(c.interval, Some((1000, 25000)));
        assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
        // no rate asked: the fastest at the size
        let c = choose(&vivid(), &req(Some((1280, 720)), None, None)).unwrap();
        assert_eq!(fps_of(c.interval.unwrap()), 12.5);
    }

    #[test]
    fn unoffered_format_falls_back_and_says_so() {
        let c = choose(&vivid(), &req(None, None, Some(b"MJPG"))).unwrap();
        assert_eq!(&c.fourcc, b"YUYV");
        assert!(c.notes[0].contains("MJPG"));
    }

    #[test]
    fn grey_is_the_last_resort_and_unusable_formats_are_refused() {
        let o = vec![
            offer(b"GREY", &[(640, 480, &[30.0])]),
            offer(b"BA81", &[(640, 480, &[30.0])]),
        ];
        assert_eq!(&choose(&o, &Request::default()).unwrap().fourcc, b"GREY");
        let e = choose(
            &[offer(b"H264", &[(640, 480, &[30.0])])],
            &Request::default(),
        )
        .unwrap_err();
        assert!(e.contains("H264"), "{e}");
    }

    #[test]
    fn stepwise_sizes_snap_to_the_step() {
        let v = expand_stepwise([16, 16, 1920, 1080, 8, 8], Some((643, 479)));
        assert!(v.contains(&(640, 480)) && v.contains(&(1920, 1080)) && v.contains(&(16, 16)));
        assert!(v.iter().all(|&(w, h)| w % 8 == 0 && h % 8 == 0));
        let i = interval_list(&[IntervalEnum::Stepwise((1, 60), (1, 1))]);
        assert_eq!(i, vec![(1, 60), (1, 1)]);
    }
}
