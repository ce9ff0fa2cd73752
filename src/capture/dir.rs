//! The folder camera: loops over a folder's `*.jpg`/`*.jpeg` files in name order at a fixed rate.
//!
//! Useful to replay a real belt's frames on a development box. Each file is read straight into a pool
//! slot (no intermediate buffer), checked, and published.
//!
//! What happens to files that cannot be published depends on why:
//! - the *content* is bad (not a valid JPEG, larger than a slot) or the entry is not a regular file
//!   (a FIFO, a device, a directory): the file is skipped, named in one warning, and looked at again
//!   only when its modification time, size or inode changes;
//! - reading failed for a reason outside the file (EMFILE, ENFILE, EACCES, EIO...): the file stays
//!   in the loop and is retried, with a rate-limited warning. A fd shortage must not blacklist a
//!   folder of good files until restart.
//!
//! Nothing here may block: files are opened with `O_NONBLOCK` (a FIFO would otherwise block
//! `open()` until a writer appears) and checked to be regular files before they are read.
//!
//! A folder with nothing usable fails `open()` with one unchanging reason, so the capture thread
//! keeps the camera offline (one log line, one event) instead of flapping online/offline at its
//! retry rate; the reason is repeated as a warning at most once a minute.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

use super::jpeg;
use super::{now_us, Camera, FrameSource, Pacer, SourceError, StreamInfo};
use crate::limits::MAX_DIR_FILES;
use crate::pool::MAX_JPEG_BYTES;

/// How often the folder is listed again while the camera runs (new, removed and fixed files).
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// Repeated warnings (transient read errors, "nothing usable") at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A file's identity as far as "has it changed?" goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
}

impl Stamp {
    pub fn of(m: &Metadata) -> Stamp {
        Stamp {
            mtime: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    /// Skipped for its content (or type) as it was at this stamp.
    bad: Option<Stamp>,
    /// Skipped for being larger than a pool slot (the reason the camera gives).
    oversize: bool,
}

/// Why a file produced no frame.
#[derive(Debug)]
pub enum Skip {
    /// The file itself is unusable as it stands: skip it until it changes.
    Content(String),
    /// The read failed for a reason outside the file: try again later.
    Transient(std::io::Error),
    /// The file is gone: list the folder again.
    Vanished,
}

/// Classifies an error from opening or reading a file. Only what says something about the file
/// itself (it is a directory, a loop of links, a name too long) marks it bad; everything else
/// (EMFILE, ENFILE, EACCES, EPERM, EIO, ENOMEM...) may pass and is retried.
pub fn classify(e: std::io::Error) -> Skip {
    match e.raw_os_error() {
        _ if e.kind() == std::io::ErrorKind::NotFound => Skip::Vanished,
        Some(libc::EISDIR | libc::ELOOP | libc::ENAMETOOLONG | libc::ENXIO | libc::ENODEV) => {
            Skip::Content(e.to_string())
        }
        _ => Skip::Transient(e),
    }
}

/// Opens `path` without blocking and checks it is a regular file.
pub fn open_regular(path: &Path) -> Result<(File, Stamp), Skip> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(classify)?;
    let m = f.metadata().map_err(classify)?;
    if !m.file_type().is_file() {
        return Err(Skip::Content("not a regular file".into()));
    }
    Ok((f, Stamp::of(&m)))
}

pub struct DirSource {
    path: PathBuf,
    fps: f64,
    files: Vec<Entry>,
    next: usize,
    pacer: Pacer,
    scanned: Option<Instant>,
    /// Transient failures in a row; a whole round of them takes the camera offline.
    failing: usize,
    /// Last repeated warning, and how many were held back since.
    warned_at: Option<Instant>,
    held_back: u64,
    /// The size last reported to the camera; 0x0 until a frame is read after `open()`.
    size: (u32, u32),
}

impl DirSource {
    pub fn new(path: PathBuf, fps: f64) -> Self {
        DirSource {
            path,
            fps,
            files: Vec::new(),
            next: 0,
            pacer: Pacer::new(fps),
            scanned: None,
            failing: 0,
            warned_at: None,
            held_back: 0,
            size: (0, 0),
        }
    }

    /// Lists the folder again, keeping what is known about files still there, and clears the
    /// "bad" mark of every file that changed since it was marked.
    fn rescan(&mut self) -> Result<(), SourceError> {
        let listed = list_jpegs(&self.path)
            .map_err(|e| SourceError::Open(format!("{}: {e}", self.path.display())))?;
        let mut old = std::mem::take(&mut self.files).into_iter().peekable();
        let mut files = Vec::with_capacity(listed.len());
        // Both lists are sorted by path: merge them.
        for path in listed {
            while old.peek().is_some_and(|e| e.path < path) {
                old.next();
            }
            let (bad, oversize) = match old.peek() {
                Some(e) if e.path == path => {
                    old.next().map_or((None, false), |e| (e.bad, e.oversize))
                }
                _ => (None, false),
            };
            // stat() does not open, so it cannot block on a FIFO.
            let bad = bad.filter(|s| std::fs::metadata(&path).is_ok_and(|m| Stamp::of(&m) == *s));
            let oversize = oversize && bad.is_some();
            files.push(Entry {
                path,
                bad,
                oversize,
            });
        }
        if self.next >= files.len() {
            self.next = 0;
        }
        self.files = files;
        self.scanned = Some(Instant::now());
        Ok(())
    }

    /// The reason the folder has nothing to show, if so. The text depends only on the folder's
    /// state, so the capture thread sees the same reason on every retry and logs it once.
    fn nothing_usable(&self) -> Option<String> {
        if self.files.is_empty() {
            return Some(format!("{}: no *.jpg or *.jpeg files", self.path.display()));
        }
        self.files.iter().all(|e| e.bad.is_some()).then(|| {
            let oversize = self.files.iter().filter(|e| e.oversize).count();
            if oversize == 0 {
                format!(
                    "{}: none of the {} files is a valid JPEG (each is skipped until it changes)",
                    self.path.display(),
                    self.files.len()
                )
            } else {
                let others = self.files.len() - oversize;
                format!(
                    "{}: none of the {} files can be shown: {oversize} larger than a pool slot \
                     ({MAX_JPEG_BYTES} bytes), {others} not valid JPEGs (each is skipped until \
                     it changes)",
                    self.path.display(),
                    self.files.len()
                )
            }
        })
    }

    /// Repeats `what` as a warning at most once a minute (the first occurrence is logged by the
    /// caller or the capture thread).
    fn warn_repeated(&mut self, cam: &str, what: &str) {
        match self.warned_at {
            None => self.warned_at = Some(Instant::now()),
            Some(t) if t.elapsed() >= WARN_EVERY => {
                warn!(camera = %cam, reason = what, repeats = self.held_back + 1,
                      "folder camera still has nothing to show");
                self.warned_at = Some(Instant::now());
                self.held_back = 0;
            }
            Some(_) => self.held_back += 1,
        }
    }

    fn mark_bad(&mut self, cam: &Camera, idx: usize, stamp: Stamp, why: &str) {
        let e = &mut self.files[idx];
        if e.bad.is_none() {
            warn!(camera = %cam.name, file = %e.path.display(), reason = %why,
                  "skipping file until it changes");
        }
        e.bad = Some(stamp);
    }

    /// A transient failure: counted, warned about at most once a minute, and after a whole round
    /// of them the camera goes offline with a reason that does not change while the cause stays.
    fn transient(
        &mut self,
        cam: &Camera,
        path: &Path,
        e: &std::io::Error,
    ) -> Result<(), SourceError> {
        cam.counters
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.failing += 1;
        let first = self.warned_at.is_none();
        self.warn_repeated(&cam.name, &e.to_string());
        if first {
            warn!(camera = %cam.name, file = %path.display(), %e, "cannot read file; will retry");
        }
        let usable = self.files.iter().filter(|f| f.bad.is_none()).count();
        if self.failing >= usable.max(1) {
            return Err(SourceError::Open(unreadable(&self.path, e)));
        }
        Ok(())
    }
}

fn unreadable(dir: &Path, e: &std::io::Error) -> String {
    format!("{}: cannot read any file ({e})", dir.display())
}

/// The JPEG files of `dir` in name order, at most `MAX_DIR_FILES`. Entries that are not regular
/// files (by `stat`, which never blocks) are left out.
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

/// Reads `f` into `buf`; `Ok(None)` when it is larger than `buf`.
fn read_into(mut f: File, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
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
        match f.read(&mut buf[n..]) {
            Ok(0) => return Ok(Some(n)),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl FrameSource for DirSource {
    fn open(&mut self, cam: &Camera) -> Result<StreamInfo, SourceError> {
        self.rescan()?;
        // Files too short to be a JPEG are known bad without reading them (a 0-byte file).
        for e in self.files.iter_mut().filter(|e| e.bad.is_none()) {
            if let Ok(m) = std::fs::metadata(&e.path) {
                if m.len() < jpeg::MIN_JPEG_BYTES as u64 {
                    warn!(camera = %cam.name, file = %e.path.display(), bytes = m.len(),
                          "skipping file until it changes: too short for a JPEG");
                    e.bad = Some(Stamp::of(&m));
                }
            }
        }
        if let Some(why) = self.nothing_usable() {
            self.warn_repeated(&cam.name, &why);
            return Err(SourceError::Open(why));
        }
        // Going online needs at least one file that can be opened now; otherwise say why and
        // stay offline (the same reason each retry while the cause lasts).
        let mut last = None;
        for i in 0..self.files.len() {
            if self.files[i].bad.is_some() {
                continue;
            }
            match open_regular(&self.files[i].path) {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(Skip::Content(why)) => {
                    if let Ok(m) = std::fs::metadata(&self.files[i].path) {
                        self.mark_bad(cam, i, Stamp::of(&m), &why);
                    }
                }
                Err(Skip::Vanished) => {}
                Err(Skip::Transient(e)) => last = Some(e),
            }
        }
        if let Some(e) = last {
            let why = unreadable(&self.path, &e);
            self.warn_repeated(&cam.name, &why);
            return Err(SourceError::Open(why));
        }
        if let Some(why) = self.nothing_usable() {
            self.warn_repeated(&cam.name, &why);
            return Err(SourceError::Open(why));
        }
        self.failing = 0;
        self.warned_at = None;
        self.held_back = 0;
        // The files' size is learnt from the first frame read (see `capture`).
        self.size = (0, 0);
        Ok(StreamInfo {
            format: "jpeg-files".into(),
            width: 0,
            height: 0,
            fps: self.fps,
            passthrough: true,
        })
    }

    fn capture(&mut self, cam: &Camera) -> Result<(), SourceError> {
        if self.scanned.map_or(true, |t| t.elapsed() >= RESCAN_EVERY) {
            self.rescan()?;
        }
        if let Some(why) = self.nothing_usable() {
            return Err(SourceError::Open(why));
        }
        if !self.pacer.wait(cam) {
            return Ok(());
        }
        // Skip known-bad files without waiting a frame period for each.
        let idx = loop {
            let i = self.next % self.files.len();
            self.next = i + 1;
            if self.files[i].bad.is_none() {
                break i;
            }
        };
        let path = self.files[idx].path.clone();
        let (file, stamp) = match open_regular(&path) {
            Ok(f) => f,
            Err(Skip::Content(why)) => {
                if let Ok(m) = std::fs::metadata(&path) {
                    self.mark_bad(cam, idx, Stamp::of(&m), &why);
                }
                return Ok(());
            }
            Err(Skip::Vanished) => {
                self.scanned = None;
                return Ok(());
            }
            Err(Skip::Transient(e)) => return self.transient(cam, &path, &e),
        };
        let Some(mut slot) = cam.claim() else {
            return Ok(());
        };
        let captured = now_us();
        let read = read_into(file, slot.jpeg_buf());
        cam.count_captured();
        let why = match read {
            Ok(Some(n)) => match jpeg::check(&slot.jpeg_buf()[..n]) {
                Ok(info) => {
                    let size = (info.width.into(), info.height.into());
                    cam.publish(slot, info.len, captured, size.0, size.1);
                    // The size is known only from the files (they may differ): report the
                    // newest frame's, taking the lock only when it changes.
                    if self.size != size {
                        self.size = size;
                        cam.set_size(size.0, size.1);
                    }
                    self.failing = 0;
                    self.warned_at = None;
                    return Ok(());
                }
                Err(e) => e.to_string(),
            },
            Ok(None) => {
                // Counted, logged (rate-limited) and shown as the camera's state by `Camera`.
                cam.count_oversize();
                drop(slot);
                self.mark_bad(
                    cam,
                    idx,
                    stamp,
                    &format!("larger than a pool slot ({MAX_JPEG_BYTES} bytes)"),
                );
                self.files[idx].oversize = true;
                return Ok(());
            }
            Err(e) => {
                drop(slot);
                return match classify(e) {
                    Skip::Transient(e) => self.transient(cam, &path, &e),
                    Skip::Vanished => Ok(()),
                    Skip::Content(why) => {
                        self.mark_bad(cam, idx, stamp, &why);
                        Ok(())
                    }
                };
            }
        };
        self.mark_bad(cam, idx, stamp, &why);
        Err(SourceError::InvalidFrame(format!(
            "{}: {why}",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(code: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(code)
    }

    #[test]
    fn only_errors_about_the_file_itself_mark_it_bad() {
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EACCES,
            libc::EPERM,
            libc::EIO,
            libc::ENOMEM,
            libc::EAGAIN,
        ] {
            assert!(matches!(classify(io(code)), Skip::Transient(_)), "{code}");
        }
        for code in [libc::EISDIR, libc::ELOOP, libc::ENXIO] {
            assert!(matches!(classify(io(code)), Skip::Content(_)), "{code}");
        }
        assert!(matches!(classify(io(libc::ENOENT)), Skip::Vanished));
    }

    #[test]
    fn fifo_and_directory_are_refused_without_blocking() {
        let d = std::env::temp_dir().join(format!("beltcam-dirunit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub.jpg")).unwrap();
        let fifo = d.join("pipe.jpg");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // A blocking open of a FIFO with no writer would hang this test here.
        assert!(matches!(open_regular(&fifo), Err(Skip::Content(_))));
        assert!(matches!(
            open_regular(&d.join("sub.jpg")),
            Err(Skip::Content(_))
        ));
        std::fs::write(d.join("ok.jpg"), b"x").unwrap();
        assert!(open_regular(&d.join("ok.jpg")).is_ok());
        assert!(matches!(
            open_regular(&d.join("gone.jpg")),
            Err(Skip::Vanished)
        ));
        // Listing leaves both out, by stat.
        assert_eq!(list_jpegs(&d).unwrap(), vec![d.join("ok.jpg")]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_changed_file_is_looked_at_again() {
        let d = std::env::temp_dir().join(format!("beltcam-dirunit2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("a.jpg");
        std::fs::write(&f, b"bad").unwrap();
        let mut src = DirSource::new(d.clone(), 10.0);
        src.rescan().unwrap();
        let stamp = Stamp::of(&std::fs::metadata(&f).unwrap());
        src.files[0].bad = Some(stamp);
        src.rescan().unwrap();
        assert!(src.files[0].bad.is_some(), "unchanged: still skipped");
        assert!(src.nothing_usable().unwrap().contains("valid JPEG"));
        std::fs::write(&f, b"longer content").unwrap();
        src.rescan().unwrap();
        assert!(src.files[0].bad.is_none(), "changed: looked at again");
        assert!(src.nothing_usable().is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
