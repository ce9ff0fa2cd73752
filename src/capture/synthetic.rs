//! The synthetic camera: a moving test pattern with the frame number and time burned in.
//!
//! It is the embedded default when no camera is present, and what tests and benchmarks stream: every
//! frame differs (so a viewer sees motion and a test can tell frames apart), and it runs the same
//! encode-into-slot path a raw camera does.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use super::encode::{self, I420};
use super::{font, now_us, Camera, FrameSource, Pacer, SourceError, StreamInfo};

pub struct Synthetic {
    width: usize,
    height: usize,
    fps: f64,
    frame: u64,
    img: Option<I420>,
    compressor: Option<turbojpeg::Compressor>,
    pacer: Pacer,
}

impl Synthetic {
    pub fn new(width: u32, height: u32, fps: f64) -> Self {
        Synthetic {
            width: width as usize,
            height: height as usize,
            fps,
            frame: 0,
            img: None,
            compressor: None,
            pacer: Pacer::new(fps),
        }
    }
}

/// Draws frame `n` of the pattern: a diagonal luma ramp and chroma bars that move every frame, and a
/// black band with the camera name, frame number and UTC time.
pub fn render(img: &mut I420, n: u64, camera: &str) {
    let (w, h) = (img.width, img.height);
    let (y, u, v) = img.planes_mut();
    let shift = (n * 4) as usize;
    for (row, line) in y.chunks_exact_mut(w).enumerate() {
        for (col, px) in line.iter_mut().enumerate() {
            *px = 16 + (((col + row + shift) >> 1) % 220) as u8;
        }
    }
    let cw = w / 2;
    for (row, (lu, lv)) in u
        .chunks_exact_mut(cw)
        .zip(v.chunks_exact_mut(cw))
        .enumerate()
    {
        for col in 0..cw {
            let bar = ((col * 8 / cw) + (n as usize / 8)) % 8;
            lu[col] = (bar * 32) as u8;
            lv[col] = (255 - (bar * 32) as u8) ^ (row as u8 & 0x10);
        }
    }
    let scale = (h / 90).max(1);
    let band = 10 * scale * 2;
    y[..band.min(h) * w].fill(16);
    let chroma_rows = (band / 2).min(h / 2);
    u[..chroma_rows * cw].fill(128);
    v[..chroma_rows * cw].fill(128);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    // Written into stack buffers: a frame costs no allocation (a `format!` here cost two).
    let mut line1 = Line::new();
    let _ = write!(line1, "{camera} FRAME {n:06}");
    let mut line2 = Line::new();
    let _ = write!(
        line2,
        "{:02}:{:02}:{:02}.{:03} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    );
    let (line1, line2) = (line1.as_str(), line2.as_str());
    font::draw_text(y, w, h, scale * 2, scale, scale, line1, (235, 16));
    font::draw_text(y, w, h, scale * 2, scale * 11, scale, line2, (235, 16));
}

/// One overlay line, formatted on the stack. Text past `LINE_BYTES` is cut at a character
/// boundary (a long camera name loses its end, never the frame counter's format).
pub struct Line {
    buf: [u8; LINE_BYTES],
    len: usize,
}

/// Longer than any line that fits across a frame at the overlay's smallest scale.
const LINE_BYTES: usize = 128;

impl Line {
    pub fn new() -> Self {
        Line {
            buf: [0; LINE_BYTES],
            len: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only whole characters are ever copied in (see `write_str`).
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE_BYTES - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl FrameSource for Synthetic {
    fn open(&mut self, cam: &Camera) -> Result<StreamInfo, SourceError> {
        self.img = Some(I420::new(self.width, self.height));
        self.compressor =
            Some(encode::compressor(cam.quality).map_err(|e| SourceError::Open(e.to_string()))?);
        Ok(StreamInfo {
            format: "synthetic".into(),
            width: self.width as u32,
            height: self.height as u32,
            fps: self.fps,
            passthrough: false,
        })
    }

    fn capture(&mut self, cam: &Camera) -> Result<(), SourceError> {
        if !self.pacer.wait(cam) {
            return Ok(());
        }
        let (Some(img), Some(c)) = (self.img.as_mut(), self.compressor.as_mut()) else {
            return Err(SourceError::Open("capture before open".into()));
        };
        self.frame += 1;
        let captured = now_us();
        render(img, self.frame, &cam.name);
        cam.count_captured();
        let Some(mut slot) = cam.claim() else {
            return Ok(());
        };
        match encode::encode_i420(c, img, slot.jpeg_buf()) {
            Ok(len) => {
                cam.publish(slot, len, captured, self.width as u32, self.height as u32);
                Ok(())
            }
            Err(e) => Err(SourceError::InvalidFrame(format!("encode: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_differ_and_encode() {
        let mut img = I420::new(160, 120);
        render(&mut img, 1, "t");
        let a = img.buf.clone();
        render(&mut img, 2, "t");
        assert_ne!(a, img.buf);
        let mut c = encode::compressor(80).unwrap();
        let mut out = vec![0u8; 1 << 20];
        let n = encode::encode_i420(&mut c, &img, &mut out).unwrap();
        let hdr = turbojpeg::read_header(&out[..n]).unwrap();
        assert_eq!((hdr.width, hdr.height), (160, 120));
    }

    #[test]
    fn overlay_line_cuts_long_text_at_a_character_boundary() {
        let mut l = Line::new();
        let _ = write!(l, "{} FRAME {:06}", "é".repeat(100), 7);
        assert_eq!(l.as_str().len(), LINE_BYTES);
        assert!(l.as_str().starts_with("éé"));
        let mut l = Line::new();
        let (name, n) = ("front", 42);
        let _ = write!(l, "{name} FRAME {n:06}");
        assert_eq!(l.as_str(), "front FRAME 000042");
    }
}
