//! JPEG sanity checks: pure and bounded, run on every frame that beltcam did not encode itself.
//!
//! Cameras and folders hand us truncated frames (USB glitches), zero-padded frames (UVC drivers round
//! the payload up), and MJPEG without Huffman tables. A frame that would not decode must never be
//! published: browsers drop the whole stream on one bad part.

/// What the marker walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegInfo {
    pub width: u16,
    pub height: u16,
    /// A DHT segment is present (UVC MJPEG often omits it and relies on the standard tables).
    pub has_dht: bool,
    /// Length of the JPEG proper: up to and including EOI, without trailing padding.
    pub len: usize,
    /// Offset of the SOS marker (where tables would be inserted).
    pub sos_offset: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    #[error("too small to be a JPEG ({0} bytes)")]
    TooSmall(usize),
    #[error("missing SOI marker")]
    NoSoi,
    #[error("missing EOI marker (truncated)")]
    NoEoi,
    #[error("segment runs past the end at offset {0}")]
    Truncated(usize),
    #[error("bad marker at offset {0}")]
    BadMarker(usize),
    #[error("no frame header (SOF) before the scan")]
    NoFrameHeader,
    #[error("zero width or height")]
    ZeroSize,
}

/// Smallest plausible baseline JPEG (SOI, DQT, SOF, SOS, one MCU, EOI).
pub const MIN_JPEG_BYTES: usize = 125;

/// Walks the markers up to the scan and checks the frame ends with EOI.
pub fn check(data: &[u8]) -> Result<JpegInfo, JpegError> {
    // Trailing zero padding after EOI is common with UVC; ignore it.
    let trimmed = data.len() - data.iter().rev().take_while(|&&b| b == 0).count();
    let d = &data[..trimmed];
    if d.len() < MIN_JPEG_BYTES {
        return Err(JpegError::TooSmall(d.len()));
    }
    if d[0] != 0xFF || d[1] != 0xD8 {
        return Err(JpegError::NoSoi);
    }
    if d[d.len() - 2] != 0xFF || d[d.len() - 1] != 0xD9 {
        return Err(JpegError::NoEoi);
    }
    let mut pos = 2;
    let mut size = None;
    let mut has_dht = false;
    loop {
        if pos + 4 > d.len() {
            return Err(JpegError::Truncated(pos));
        }
        if d[pos] != 0xFF {
            return Err(JpegError::BadMarker(pos));
        }
        let marker = d[pos + 1];
        match marker {
            0xFF => {
                pos += 1; // fill byte
                continue;
            }
            0x01 | 0xD0..=0xD7 => {
                pos += 2;
                continue;
            }
            0xD8 | 0xD9 | 0x00 => return Err(JpegError::BadMarker(pos)),
            _ => {}
        }
        let seg_len = u16::from_be_bytes([d[pos + 2], d[pos + 3]]) as usize;
        if seg_len < 2 || pos + 2 + seg_len > d.len() {
            return Err(JpegError::Truncated(pos));
        }
        match marker {
            0xC4 => has_dht = true,
            0xC0..=0xCF if marker != 0xC8 && marker != 0xCC => {
                if seg_len < 8 {
                    return Err(JpegError::Truncated(pos));
                }
                let h = u16::from_be_bytes([d[pos + 5], d[pos + 6]]);
                let w = u16::from_be_bytes([d[pos + 7], d[pos + 8]]);
                if w == 0 || h == 0 {
                    return Err(JpegError::ZeroSize);
                }
                size = Some((w, h));
            }
            0xDA => {
                let (width, height) = size.ok_or(JpegError::NoFrameHeader)?;
                return Ok(JpegInfo {
                    width,
                    height,
                    has_dht,
                    len: d.len(),
                    sos_offset: pos,
                });
            }
            _ => {}
        }
        pos += 2 + seg_len;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real `w`x`h` JPEG of frame `n` of the synthetic pattern (the capture tests' test JPEG).
    pub(crate) fn pattern(w: usize, h: usize, n: u64, label: &str, quality: u8) -> Vec<u8> {
        let mut img = crate::capture::encode::I420::new(w, h);
        crate::capture::synthetic::render(&mut img, n, label);
        let mut c = crate::capture::encode::compressor(quality).unwrap();
        let mut out = vec![0u8; 1 << 20];
        let n = crate::capture::encode::encode_i420(&mut c, &img, &mut out).unwrap();
        out.truncate(n);
        out
    }

    pub(crate) fn sample() -> Vec<u8> {
        pattern(64, 48, 3, "t", 80)
    }

    #[test]
    fn accepts_a_real_jpeg_and_padding() {
        let mut j = sample();
        let info = check(&j).unwrap();
        assert_eq!((info.width, info.height), (64, 48));
        assert!(info.has_dht);
        assert_eq!(info.len, j.len());
        j.extend_from_slice(&[0; 100]);
        assert_eq!(check(&j).unwrap().len, info.len);
    }

    #[test]
    fn rejects_truncated_and_garbage() {
        let j = sample();
        assert_eq!(check(&j[..j.len() - 10]), Err(JpegError::NoEoi));
        assert!(matches!(check(&j[..20]), Err(JpegError::TooSmall(_))));
        let mut bad = j.clone();
        bad[0] = 0;
        assert_eq!(check(&bad), Err(JpegError::NoSoi));
        assert!(check(&[0xFF; 400]).is_err());
        let mut hdr_cut = j[..30].to_vec();
        hdr_cut.resize(200, 0x11);
        hdr_cut.extend_from_slice(&[0xFF, 0xD9]);
        assert!(check(&hdr_cut).is_err());
    }

    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// A frame of vivid's webcam (beltcam in the test VM, 320x180) and the same frame without its
    /// DHT segments, as UVC cameras send MJPEG: the standard tables make it decode to the same
    /// pixels.
    #[test]
    fn real_frame_without_huffman_tables_is_fixed_by_insertion() {
        let original = fixture("vivid-320x180.jpg");
        let no_dht = fixture("mjpeg-no-dht.jpg");
        let info = check(&no_dht).unwrap();
        assert_eq!((info.width, info.height, info.has_dht), (320, 180, false));
        let mut out = vec![0u8; 1 << 16];
        let (n, _) = crate::capture::dht::copy_frame(&no_dht, &mut out).unwrap();
        assert!(check(&out[..n]).unwrap().has_dht);
        let fmt = turbojpeg::PixelFormat::RGB;
        let a = turbojpeg::decompress(&original, fmt).unwrap();
        let b = turbojpeg::decompress(&out[..n], fmt).unwrap();
        assert_eq!(a.pixels, b.pixels);
    }

    #[test]
    fn truncated_real_frame_is_rejected() {
        let cut = fixture("mjpeg-truncated.jpg");
        assert_eq!(check(&cut), Err(JpegError::NoEoi));
        let mut out = vec![0u8; 1 << 16];
        assert!(crate::capture::dht::copy_frame(&cut, &mut out).is_err());
    }

    #[test]
    fn never_panics_on_prefixes() {
        let j = sample();
        for n in 0..j.len() {
            let _ = check(&j[..n]);
        }
    }
}
