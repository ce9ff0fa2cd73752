//! Raw camera formats to JPEG: the conversion to planar YUV that turbojpeg takes, and the encode.
//!
//! turbojpeg compresses planar YUV without any colour conversion, so raw frames are only reshuffled:
//! packed 4:2:2 (YUYV and its byte orders) is split into planes and its chroma halved vertically to
//! 4:2:0 (every other chroma row is taken: cheaper than averaging and invisible at MJPEG
//! qualities); NV12/NV21 have their interleaved chroma split; planar 4:2:0 and GREY go to the
//! encoder in place. All scratch planes belong to one `RawEncoder` and are allocated once.
//! The functions are public so benchmarks can time them on full-HD frames.

use turbojpeg::{Compressor, Image, PixelFormat, Subsamp, YuvImage, YuvPlanesImage};

/// The raw (non-JPEG) pixel formats beltcam encodes, by V4L2 fourcc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawFormat {
    /// Packed 4:2:2, bytes Y0 U Y1 V.
    Yuyv,
    /// Packed 4:2:2, bytes Y0 V Y1 U.
    Yvyu,
    /// Packed 4:2:2, bytes U Y0 V Y1.
    Uyvy,
    /// Packed 4:2:2, bytes V Y0 U Y1.
    Vyuy,
    /// Y plane, then interleaved U V at half size.
    Nv12,
    /// Y plane, then interleaved V U at half size.
    Nv21,
    /// Planar 4:2:0: Y, U, V (`YU12`, also called I420).
    Yu12,
    /// Planar 4:2:0: Y, V, U.
    Yv12,
    /// 8-bit luma only.
    Grey,
    Rgb24,
    Bgr24,
}

/// Every raw format, in the order beltcam prefers them when the camera has no MJPEG: packed YUV
/// first (what UVC cameras send), then the planar ones, RGB, and GREY last (it loses colour).
pub const RAW_PREFERENCE: [RawFormat; 11] = [
    RawFormat::Yuyv,
    RawFormat::Uyvy,
    RawFormat::Yvyu,
    RawFormat::Vyuy,
    RawFormat::Nv12,
    RawFormat::Nv21,
    RawFormat::Yu12,
    RawFormat::Yv12,
    RawFormat::Rgb24,
    RawFormat::Bgr24,
    RawFormat::Grey,
];

impl RawFormat {
    pub fn fourcc(self) -> [u8; 4] {
        *match self {
            RawFormat::Yuyv => b"YUYV",
            RawFormat::Yvyu => b"YVYU",
            RawFormat::Uyvy => b"UYVY",
            RawFormat::Vyuy => b"VYUY",
            RawFormat::Nv12 => b"NV12",
            RawFormat::Nv21 => b"NV21",
            RawFormat::Yu12 => b"YU12",
            RawFormat::Yv12 => b"YV12",
            RawFormat::Grey => b"GREY",
            RawFormat::Rgb24 => b"RGB3",
            RawFormat::Bgr24 => b"BGR3",
        }
    }

    pub fn from_fourcc(f: [u8; 4]) -> Option<RawFormat> {
        RAW_PREFERENCE.into_iter().find(|r| r.fourcc() == f)
    }

    /// Bytes of one row of the first plane.
    pub fn min_stride(self, width: usize) -> usize {
        match self {
            RawFormat::Yuyv | RawFormat::Yvyu | RawFormat::Uyvy | RawFormat::Vyuy => width * 2,
            RawFormat::Rgb24 | RawFormat::Bgr24 => width * 3,
            _ => width,
        }
    }

    /// Bytes one frame needs with rows of `stride` bytes (the chroma planes of planar formats
    /// have half the stride, as V4L2 defines them).
    pub fn frame_bytes(self, stride: usize, height: usize) -> usize {
        match self {
            RawFormat::Nv12 | RawFormat::Nv21 => stride * height + stride * (height / 2),
            RawFormat::Yu12 | RawFormat::Yv12 => stride * height + 2 * (stride / 2) * (height / 2),
            _ => stride * height,
        }
    }

    /// Byte offsets of (Y0, U, Y1, V) inside a packed 4:2:2 macropixel.
    fn packed_offsets(self) -> Option<[usize; 4]> {
        match self {
            RawFormat::Yuyv => Some([0, 1, 2, 3]),
            RawFormat::Yvyu => Some([0, 3, 2, 1]),
            RawFormat::Uyvy => Some([1, 0, 3, 2]),
            RawFormat::Vyuy => Some([1, 2, 3, 0]),
            _ => None,
        }
    }
}

/// Splits packed 4:2:2 rows into Y, U, V planes at 4:2:0 (`u`/`v`: width/2 x height/2, no padding;
/// chroma from the even rows).
pub fn packed422_to_i420(
    fmt: RawFormat,
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    (y, u, v): (&mut [u8], &mut [u8], &mut [u8]),
) {
    let [oy0, ou, oy1, ov] = fmt.packed_offsets().unwrap_or([0, 1, 2, 3]);
    let cw = width / 2;
    for (row, line) in src.chunks(stride).take(height).enumerate() {
        let line = &line[..width * 2];
        let yrow = &mut y[row * width..(row + 1) * width];
        for (px, out) in line.chunks_exact(4).zip(yrow.chunks_exact_mut(2)) {
            out[0] = px[oy0];
            out[1] = px[oy1];
        }
        if row % 2 == 0 {
            let c = row / 2 * cw;
            let (urow, vrow) = (&mut u[c..c + cw], &mut v[c..c + cw]);
            for ((px, uo), vo) in line.chunks_exact(4).zip(urow).zip(vrow) {
                *uo = px[ou];
                *vo = px[ov];
            }
        }
    }
}

/// Splits the interleaved chroma plane of NV12 (`swap`: NV21) into U and V planes.
pub fn nv12_chroma(
    uv: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    swap: bool,
    (u, v): (&mut [u8], &mut [u8]),
) {
    let cw = width / 2;
    let (u, v) = if swap { (v, u) } else { (u, v) };
    for (row, line) in uv.chunks(stride).take(height / 2).enumerate() {
        let (urow, vrow) = (&mut u[row * cw..][..cw], &mut v[row * cw..][..cw]);
        for ((pair, uo), vo) in line[..cw * 2].chunks_exact(2).zip(urow).zip(vrow) {
            *uo = pair[0];
            *vo = pair[1];
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("short frame: {got} bytes, {want} expected")]
    Short { got: usize, want: usize },
    #[error("{0}")]
    Turbo(#[from] turbojpeg::Error),
}

/// Encodes raw frames of one negotiated format to JPEG, reusing its compressor and scratch planes.
pub struct RawEncoder {
    fmt: RawFormat,
    width: usize,
    height: usize,
    stride: usize,
    compressor: Compressor,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl RawEncoder {
    /// `stride` is V4L2's bytesperline. Sizes must be even (4:2:0 chroma).
    pub fn new(
        fmt: RawFormat,
        width: usize,
        height: usize,
        stride: usize,
        quality: u8,
    ) -> Result<RawEncoder, String> {
        if width < 2 || height < 2 || width % 2 != 0 || height % 2 != 0 {
            return Err(format!("{width}x{height}: odd sizes are not supported"));
        }
        if stride < fmt.min_stride(width) {
            return Err(format!("stride {stride} too small for {width} pixels"));
        }
        let mut compressor = Compressor::new().map_err(|e| e.to_string())?;
        compressor
            .set_quality(quality as i32)
            .and_then(|()| compressor.set_subsamp(Subsamp::Sub2x2))
            .map_err(|e| e.to_string())?;
        let (luma, chroma) = match fmt {
            RawFormat::Yuyv | RawFormat::Yvyu | RawFormat::Uyvy | RawFormat::Vyuy => {
                (width * height, width * height / 4)
            }
            RawFormat::Nv12 | RawFormat::Nv21 => (0, width * height / 4),
            RawFormat::Grey if stride != width => (width * height, 0),
            _ => (0, 0),
        };
        Ok(RawEncoder {
            fmt,
            width,
            height,
            stride,
            compressor,
            y: vec![0; luma],
            u: vec![0; chroma],
            v: vec![0; chroma],
        })
    }

    /// Bytes a frame must have.
    pub fn frame_bytes(&self) -> usize {
        self.fmt.frame_bytes(self.stride, self.height)
    }

    /// Converts (if needed) and encodes one frame into `out`, returning the JPEG's length. A frame
    /// whose JPEG does not fit `out` is an error, never truncated.
    pub fn encode(&mut self, src: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
        let want = self.frame_bytes();
        if src.len() < want {
            return Err(EncodeError::Short {
                got: src.len(),
                want,
            });
        }
        let (w, h, s) = (self.width, self.height, self.stride);
        let c = &mut self.compressor;
        let n = match self.fmt {
            RawFormat::Yuyv | RawFormat::Yvyu | RawFormat::Uyvy | RawFormat::Vyuy => {
                let planes_out = (&mut self.y[..], &mut self.u[..], &mut self.v[..]);
                packed422_to_i420(self.fmt, src, s, w, h, planes_out);
                c.compress_yuv_planes_to_slice(&planes(&self.y, w, &self.u, &self.v, w, h), out)?
            }
            RawFormat::Nv12 | RawFormat::Nv21 => {
                let swap = self.fmt == RawFormat::Nv21;
                nv12_chroma(&src[s * h..], s, w, h, swap, (&mut self.u, &mut self.v));
                c.compress_yuv_planes_to_slice(&planes(src, s, &self.u, &self.v, w, h), out)?
            }
            RawFormat::Yu12 | RawFormat::Yv12 => {
                let (luma, chroma) = src.split_at(s * h);
                let (a, b) = chroma.split_at(s / 2 * (h / 2));
                let (u, v) = if self.fmt == RawFormat::Yu12 {
                    (a, b)
                } else {
                    (b, a)
                };
                let img = YuvPlanesImage {
                    u_stride: s / 2,
                    v_stride: s / 2,
                    ..planes(luma, s, u, v, w, h)
                };
                c.compress_yuv_planes_to_slice(&img, out)?
            }
            RawFormat::Grey => {
                let luma = if s == w {
                    &src[..w * h]
                } else {
                    for (dst, line) in self.y.chunks_exact_mut(w).zip(src.chunks(s)) {
                        dst.copy_from_slice(&line[..w]);
                    }
                    &self.y[..]
                };
                let img = YuvImage {
                    pixels: luma,
                    width: w,
                    align: 1,
                    height: h,
                    subsamp: Subsamp::Gray,
                };
                c.compress_yuv_to_slice(img, out)?
            }
            RawFormat::Rgb24 | RawFormat::Bgr24 => {
                let format = match self.fmt {
                    RawFormat::Rgb24 => PixelFormat::RGB,
                    _ => PixelFormat::BGR,
                };
                let img = Image {
                    pixels: &src[..want],
                    width: w,
                    pitch: s,
                    height: h,
                    format,
                };
                c.compress_to_slice(img, out)?
            }
        };
        Ok(n)
    }
}

/// A 4:2:0 planes image with chroma planes of `w/2` stride.
fn planes<'a>(
    y: &'a [u8],
    y_stride: usize,
    u: &'a [u8],
    v: &'a [u8],
    w: usize,
    h: usize,
) -> YuvPlanesImage<&'a [u8]> {
    YuvPlanesImage {
        y_plane: y,
        u_plane: u,
        v_plane: v,
        width: w,
        height: h,
        y_stride,
        u_stride: w / 2,
        v_stride: w / 2,
        subsamp: Subsamp::Sub2x2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame in `fmt` whose Y is a ramp and whose chroma is constant (u0, v0), with row padding.
    fn frame(fmt: RawFormat, w: usize, h: usize, pad: usize) -> (Vec<u8>, usize) {
        let stride = fmt.min_stride(w) + pad;
        let mut f = vec![0u8; fmt.frame_bytes(stride, h)];
        let (u0, v0) = (90u8, 200u8);
        let yv = |x: usize, y: usize| (16 + (x + 2 * y) % 200) as u8;
        for row in 0..h {
            let line = &mut f[row * stride..];
            for x in 0..w {
                match fmt.packed_offsets() {
                    Some([oy0, ou, oy1, ov]) => {
                        let m = &mut line[x / 2 * 4..];
                        m[if x % 2 == 0 { oy0 } else { oy1 }] = yv(x, row);
                        m[ou] = u0;
                        m[ov] = v0;
                    }
                    None => line[x] = yv(x, row),
                }
            }
        }
        let c = stride * h;
        match fmt {
            RawFormat::Nv12 | RawFormat::Nv21 => {
                let (a, b) = if fmt == RawFormat::Nv12 {
                    (u0, v0)
                } else {
                    (v0, u0)
                };
                for row in 0..h / 2 {
                    for x in 0..w / 2 {
                        f[c + row * stride + 2 * x] = a;
                        f[c + row * stride + 2 * x + 1] = b;
                    }
                }
            }
            RawFormat::Yu12 | RawFormat::Yv12 => {
                let (a, b) = if fmt == RawFormat::Yu12 {
                    (u0, v0)
                } else {
                    (v0, u0)
                };
                let cs = stride / 2 * (h / 2);
                f[c..c + cs].fill(a);
                f[c + cs..].fill(b);
            }
            _ => {}
        }
        (f, stride)
    }

    #[test]
    fn every_yuv_format_encodes_to_the_same_picture() {
        let (w, h) = (64, 32);
        let mut reference: Option<Vec<u8>> = None;
        for fmt in RAW_PREFERENCE {
            if matches!(fmt, RawFormat::Rgb24 | RawFormat::Bgr24 | RawFormat::Grey) {
                continue;
            }
            for pad in [0, 8] {
                let (f, stride) = frame(fmt, w, h, pad);
                let mut enc = RawEncoder::new(fmt, w, h, stride, 95).unwrap();
                let mut out = vec![0u8; 1 << 16];
                let n = enc.encode(&f, &mut out).unwrap();
                let img = turbojpeg::decompress(&out[..n], PixelFormat::RGB).unwrap();
                assert_eq!((img.width, img.height), (w, h));
                match &reference {
                    None => reference = Some(img.pixels),
                    Some(r) => assert_eq!(r, &img.pixels, "{fmt:?} pad {pad}"),
                }
            }
        }
    }

    #[test]
    fn grey_and_rgb_encode() {
        for fmt in [RawFormat::Grey, RawFormat::Rgb24, RawFormat::Bgr24] {
            for pad in [0, 6] {
                let (f, stride) = frame(fmt, 32, 16, pad);
                let mut enc = RawEncoder::new(fmt, 32, 16, stride, 80).unwrap();
                let mut out = vec![0u8; 1 << 16];
                let n = enc.encode(&f, &mut out).unwrap();
                let hdr = turbojpeg::read_header(&out[..n]).unwrap();
                assert_eq!((hdr.width, hdr.height), (32, 16), "{fmt:?}");
                if fmt == RawFormat::Grey {
                    assert_eq!(hdr.subsamp, Subsamp::Gray);
                }
            }
        }
    }

    #[test]
    fn short_frames_and_odd_sizes_are_errors() {
        let mut enc = RawEncoder::new(RawFormat::Yuyv, 64, 32, 128, 80).unwrap();
        let mut out = vec![0u8; 1 << 16];
        assert!(matches!(
            enc.encode(&[0u8; 100], &mut out),
            Err(EncodeError::Short { .. })
        ));
        assert!(RawEncoder::new(RawFormat::Yuyv, 63, 32, 128, 80).is_err());
        assert!(RawEncoder::new(RawFormat::Yuyv, 64, 32, 100, 80).is_err());
    }

    #[test]
    fn fourccs_round_trip() {
        for f in RAW_PREFERENCE {
            assert_eq!(RawFormat::from_fourcc(f.fourcc()), Some(f));
        }
        assert_eq!(RawFormat::from_fourcc(*b"MJPG"), None);
    }
}
