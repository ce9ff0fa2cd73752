//! JPEG encoding with turbojpeg: planar YUV 4:2:0 frames straight into a pool slot.
//!
//! Encoding from YUV skips the RGB conversion entirely; cameras deliver YUV and the synthetic pattern
//! is drawn in it. Output goes into the slot's buffer (`compress_yuv_to_slice`), so a frame costs no
//! allocation; one that does not fit is an error, counted by the caller, never truncated.

use turbojpeg::{Compressor, Subsamp, YuvImage};

use super::font;

/// A planar I420 (YUV 4:2:0) frame: Y plane then U then V, no row padding. Sizes are even.
pub struct I420 {
    pub width: usize,
    pub height: usize,
    pub buf: Vec<u8>,
}

impl I420 {
    /// Allocates once; the buffer is reused for every frame.
    pub fn new(width: usize, height: usize) -> Self {
        I420 {
            width,
            height,
            buf: vec![0; width * height * 3 / 2],
        }
    }

    /// The three planes, mutably.
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let ysize = self.width * self.height;
        let csize = ysize / 4;
        let (y, rest) = self.buf.split_at_mut(ysize);
        let (u, v) = rest.split_at_mut(csize);
        (y, u, v)
    }
}

/// A compressor for 4:2:0 at `quality`.
pub fn compressor(quality: u8) -> Result<Compressor, turbojpeg::Error> {
    let mut c = Compressor::new()?;
    c.set_quality(quality as i32)?;
    c.set_subsamp(Subsamp::Sub2x2)?;
    Ok(c)
}

/// Encodes `img` into `out`, returning the JPEG's length.
pub fn encode_i420(
    c: &mut Compressor,
    img: &I420,
    out: &mut [u8],
) -> Result<usize, turbojpeg::Error> {
    let yuv = YuvImage {
        pixels: &img.buf[..],
        width: img.width,
        align: 1,
        height: img.height,
        subsamp: Subsamp::Sub2x2,
    };
    c.compress_yuv_to_slice(yuv, out)
}

/// The "NO SIGNAL" frame viewers see while a camera is offline, encoded once at start-up.
pub fn placeholder_jpeg(
    width: u32,
    height: u32,
    camera: &str,
) -> Result<Vec<u8>, turbojpeg::Error> {
    let (w, h) = (width as usize & !1, height as usize & !1);
    let mut img = I420::new(w, h);
    let (y, u, v) = img.planes_mut();
    y.fill(40);
    u.fill(128);
    v.fill(128);
    let scale = (h / 120).max(1);
    for (row, text) in [(0usize, "NO SIGNAL"), (1, camera)] {
        let tw = font::text_width(text, scale);
        let x = w.saturating_sub(tw) / 2;
        let ty = h / 2 - 8 * scale + row * 10 * scale;
        font::draw_text(y, w, h, x, ty, scale, text, (235, 40));
    }
    let mut c = compressor(70)?;
    let mut out = vec![0u8; turbojpeg::compressed_buf_len(w, h, Subsamp::Sub2x2)?];
    let n = encode_i420(&mut c, &img, &mut out)?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_decodes_at_its_size() {
        let jpeg = placeholder_jpeg(320, 240, "front").unwrap();
        let h = turbojpeg::read_header(&jpeg).unwrap();
        assert_eq!((h.width, h.height), (320, 240));
        assert!(crate::capture::jpeg::check(&jpeg).is_ok());
    }

    #[test]
    fn too_small_output_is_an_error_not_a_truncation() {
        let mut img = I420::new(64, 64);
        img.buf
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i * 31) as u8);
        let mut c = compressor(95).unwrap();
        let mut out = [0u8; 64];
        assert!(encode_i420(&mut c, &img, &mut out).is_err());
    }
}
