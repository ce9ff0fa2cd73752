//! The standard Huffman tables, for MJPEG frames that come without them.
//!
//! Camera quirk: many UVC cameras (and the Motion-JPEG AVI convention they follow) leave the DHT
//! segment out of every frame and rely on the decoder knowing the "typical" tables of the JPEG
//! standard (ITU-T T.81 Annex K.3). Video decoders and libjpeg-turbo quietly fall back to them;
//! decoders that follow the standard to the letter (IJG libjpeg, and tools built on it) reject the
//! frame, and a viewer cannot know which one a browser uses. So a passthrough frame without DHT
//! gets the standard tables inserted in front of its scan while it is copied into the pool slot:
//! still one copy, no decode, no re-encode.

use super::jpeg::{JpegError, JpegInfo};

/// Annex K.3 tables: (table class << 4 | id, code counts per length 1..=16, symbols).
const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
#[rustfmt::skip]
const AC_LUMA_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
#[rustfmt::skip]
const AC_CHROMA_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
    0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
    0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

/// Bytes of the one DHT segment holding all four tables (marker and length included).
pub const DHT_SEGMENT_LEN: usize = 2 + 2 + 4 * (1 + 16) + 12 + 12 + 162 + 162;

/// The DHT segment, built at compile time from the tables above.
pub static STANDARD_DHT: [u8; DHT_SEGMENT_LEN] = build_segment();

const fn build_segment() -> [u8; DHT_SEGMENT_LEN] {
    let mut out = [0u8; DHT_SEGMENT_LEN];
    out[0] = 0xFF;
    out[1] = 0xC4;
    let len = (DHT_SEGMENT_LEN - 2) as u16;
    out[2] = (len >> 8) as u8;
    out[3] = len as u8;
    // put_table takes and returns the array: `&mut` in a const fn needs Rust 1.83, the MSRV is 1.81.
    let pos = 4;
    let (out, pos) = put_table(out, pos, 0x00, &DC_LUMA_BITS, &DC_VALUES);
    let (out, pos) = put_table(out, pos, 0x10, &AC_LUMA_BITS, &AC_LUMA_VALUES);
    let (out, pos) = put_table(out, pos, 0x01, &DC_CHROMA_BITS, &DC_VALUES);
    let (out, pos) = put_table(out, pos, 0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALUES);
    assert!(pos == DHT_SEGMENT_LEN);
    out
}

const fn put_table(
    mut out: [u8; DHT_SEGMENT_LEN],
    mut pos: usize,
    class_id: u8,
    bits: &[u8; 16],
    values: &[u8],
) -> ([u8; DHT_SEGMENT_LEN], usize) {
    out[pos] = class_id;
    pos += 1;
    let mut i = 0;
    while i < 16 {
        out[pos + i] = bits[i];
        i += 1;
    }
    pos += 16;
    let mut j = 0;
    while j < values.len() {
        out[pos + j] = values[j];
        j += 1;
    }
    (out, pos + values.len())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CopyError {
    #[error(transparent)]
    Invalid(#[from] JpegError),
    #[error("frame of {0} bytes does not fit the output")]
    TooBig(usize),
}

/// Checks an MJPEG frame and copies it into `out`, inserting the standard Huffman tables when it
/// has none and dropping trailing padding. Returns the bytes written and the frame's header info.
pub fn copy_frame(src: &[u8], out: &mut [u8]) -> Result<(usize, JpegInfo), CopyError> {
    let info = super::jpeg::check(src)?;
    let n = copy_checked(src, &info, out)?;
    Ok((n, info))
}

/// `copy_frame` for a frame already checked (`info` from `jpeg::check(src)`).
pub fn copy_checked(src: &[u8], info: &JpegInfo, out: &mut [u8]) -> Result<usize, CopyError> {
    let src = &src[..info.len];
    if info.has_dht {
        let dst = out
            .get_mut(..src.len())
            .ok_or(CopyError::TooBig(src.len()))?;
        dst.copy_from_slice(src);
        return Ok(src.len());
    }
    let total = src.len() + DHT_SEGMENT_LEN;
    let dst = out.get_mut(..total).ok_or(CopyError::TooBig(total))?;
    // Tables must precede the scan that uses them; right before SOS is the latest legal place
    // and keeps any APPn/DQT/SOF order the camera chose.
    let (head, scan) = src.split_at(info.sos_offset);
    dst[..head.len()].copy_from_slice(head);
    dst[head.len()..head.len() + DHT_SEGMENT_LEN].copy_from_slice(&STANDARD_DHT);
    dst[head.len() + DHT_SEGMENT_LEN..].copy_from_slice(scan);
    Ok(total)
}

/// Removes every DHT segment before the scan (how UVC cameras send MJPEG). For fixtures and tests.
pub fn strip_dht(src: &[u8]) -> Result<Vec<u8>, JpegError> {
    let info = super::jpeg::check(src)?;
    let mut out = Vec::with_capacity(src.len());
    out.extend_from_slice(&src[..2]);
    let mut pos = 2;
    // The same walk as `jpeg::check` (which already validated it): fill bytes and standalone
    // markers have no length.
    while pos < info.sos_offset {
        let seg = match src[pos + 1] {
            0xFF => 1,
            0x01 | 0xD0..=0xD7 => 2,
            _ => 2 + u16::from_be_bytes([src[pos + 2], src[pos + 3]]) as usize,
        };
        let end = (pos + seg).min(info.sos_offset);
        if src[pos + 1] != 0xC4 || seg < 4 {
            out.extend_from_slice(&src[pos..end]);
        }
        pos = end;
    }
    out.extend_from_slice(&src[info.sos_offset..info.len]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::jpeg::check;

    fn encoded(w: usize, h: usize) -> Vec<u8> {
        crate::capture::jpeg::tests::pattern(w, h, 7, "dht", 85)
    }

    /// libjpeg-turbo writes exactly the Annex K.3 tables when not optimising: our constant must
    /// hold the same (class, id, counts, symbols) as the tables it emitted.
    #[test]
    fn constant_matches_the_tables_libjpeg_turbo_writes() {
        let j = encoded(64, 48);
        let info = check(&j).unwrap();
        let mut theirs = Vec::new();
        let mut pos = 2;
        while pos < info.sos_offset {
            let seg = 2 + u16::from_be_bytes([j[pos + 2], j[pos + 3]]) as usize;
            if j[pos + 1] == 0xC4 {
                theirs.extend(parse_tables(&j[pos + 4..pos + seg]));
            }
            pos += seg;
        }
        let mut ours = parse_tables(&STANDARD_DHT[4..]);
        theirs.sort();
        ours.sort();
        assert_eq!(theirs.len(), 4);
        assert_eq!(ours, theirs);
    }

    fn parse_tables(mut body: &[u8]) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
        let mut v = Vec::new();
        while !body.is_empty() {
            let bits = body[1..17].to_vec();
            let n: usize = bits.iter().map(|&b| b as usize).sum();
            v.push((body[0], bits, body[17..17 + n].to_vec()));
            body = &body[17 + n..];
        }
        v
    }

    #[test]
    fn inserted_tables_decode_to_the_same_pixels() {
        let j = encoded(96, 64);
        let stripped = strip_dht(&j).unwrap();
        assert!(!check(&stripped).unwrap().has_dht);
        let mut out = vec![0u8; 1 << 16];
        let (n, info) = copy_frame(&stripped, &mut out).unwrap();
        assert!(!info.has_dht);
        assert!(check(&out[..n]).unwrap().has_dht);
        let a = turbojpeg::decompress(&j, turbojpeg::PixelFormat::RGB).unwrap();
        let b = turbojpeg::decompress(&out[..n], turbojpeg::PixelFormat::RGB).unwrap();
        assert_eq!(a.pixels, b.pixels);
    }

    #[test]
    fn frames_with_tables_are_copied_verbatim_without_padding() {
        let mut j = encoded(64, 48);
        let len = j.len();
        j.extend_from_slice(&[0; 64]);
        let mut out = vec![0u8; 1 << 16];
        let (n, _) = copy_frame(&j, &mut out).unwrap();
        assert_eq!(&out[..n], &j[..len]);
    }

    #[test]
    fn too_small_output_is_refused() {
        let stripped = strip_dht(&encoded(64, 48)).unwrap();
        let mut out = vec![0u8; stripped.len() + 10];
        assert!(matches!(
            copy_frame(&stripped, &mut out),
            Err(CopyError::TooBig(_))
        ));
    }
}
