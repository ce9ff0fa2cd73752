//! The folder camera: loops over a folder's `*.jpg`/`*.jpeg` files in name order at a fixed rate.
//!
//! Useful to replay a real belt's frames on a development box. Each file is read straight into a pool
//! slot (no intermediate buffer), checked, and published; a file that is not a valid JPEG is skipped,
//! counted, and named in one warning (not one per loop).

use std::io::Read;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::jpeg;
use super::{now_us, Camera, FrameSource, Pacer, SourceError, StreamInfo};
use crate::limits::MAX_DIR_FILES;
use crate::pool::MAX_JPEG_BYTES;

pub struct DirSource {
    path: PathBuf,
    fps: f64,
    files: Vec<PathBuf>,
    warned: Vec<bool>,
    next: usize,
    pacer: Pacer,
}

impl DirSource {
    pub fn new(path: PathBuf, fps: f64) -> Self {
        DirSource {
            path,
            fps,
            files: Vec::new(),
            warned: Vec::new(),
            next: 0,
            pacer: Pacer::new(fps),
        }
    }
}

/// The JPEG files of `dir` in name order, at most `MAX_DIR_FILES`.
pub fn list_jpegs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
                && p.is_file()
        })
        .collect();
    files.sort();
    if files.len() > MAX_DIR_FILES {
        warn!(dir = %dir.display(), found = files.len(), kept = MAX_DIR_FILES, "too many files; looping over the first ones");
        files.truncate(MAX_DIR_FILES);
    }
    Ok(files)
}

/// Reads a file into `buf`; `Ok(None)` when it is larger than `buf`.
fn read_into(path: &Path, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    loop {
        if n == buf.len() {
            // One more byte means the file does not fit.
            let mut probe = [0u8; 1];
            return Ok(if f.read(&mut probe)? == 0 {
                Some(n)
            } else {
                None
            });
        }
        match f.read(&mut buf[n..])? {
            0 => return Ok(Some(n)),
            k => n += k,
        }
    }
}

impl FrameSource for DirSource {
    fn open(&mut self, _cam: &Camera) -> Result<StreamInfo, SourceError> {
        let files = list_jpegs(&self.path)
            .map_err(|e| SourceError::Open(format!("{}: {e}", self.path.display())))?;
        if files.is_empty() {
            return Err(SourceError::Open(format!(
                "{}: no *.jpg or *.jpeg files",
                self.path.display()
            )));
        }
        if files != self.files {
            self.warned = vec![false; files.len()];
            self.files = files;
            self.next = 0;
        }
        Ok(StreamInfo {
            format: "jpeg-files".into(),
            width: 0,
            height: 0,
            fps: self.fps,
            passthrough: true,
        })
    }

    fn capture(&mut self, cam: &Camera) -> Result<(), SourceError> {
        if self.warned.iter().all(|w| *w) {
            return Err(SourceError::Gone(format!(
                "{}: none of the {} files is a valid JPEG",
                self.path.display(),
                self.files.len()
            )));
        }
        if !self.pacer.wait(cam) {
            return Ok(());
        }
        // Skip known-bad files without waiting a frame period for each.
        let idx = loop {
            let i = self.next % self.files.len();
            self.next = i + 1;
            if !self.warned[i] {
                break i;
            }
        };
        let path = &self.files[idx];
        let Some(mut slot) = cam.claim() else {
            return Ok(());
        };
        let captured = now_us();
        let read = read_into(path, slot.jpeg_buf());
        cam.count_captured();
        let why = match read {
            Ok(Some(n)) => match jpeg::check(&slot.jpeg_buf()[..n]) {
                Ok(info) => {
                    cam.publish(
                        slot,
                        info.len,
                        captured,
                        info.width.into(),
                        info.height.into(),
                    );
                    return Ok(());
                }
                Err(e) => e.to_string(),
            },
            Ok(None) => {
                cam.pool.count_oversize();
                format!("larger than a pool slot ({MAX_JPEG_BYTES} bytes)")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SourceError::Gone(format!("{} vanished", path.display())))
            }
            Err(e) => e.to_string(),
        };
        if !self.warned[idx] {
            self.warned[idx] = true;
            warn!(camera = %cam.name, file = %path.display(), reason = %why, "skipping file: not a valid JPEG");
        }
        Err(SourceError::InvalidFrame(format!(
            "{}: {why}",
            path.display()
        )))
    }
}
