//! Recording: a camera's frames kept on disk at a fixed rate, with retention by age and by total
//! size, and a free-space guard. What the old stack did without bounds (per-session folders never
//! cleaned, a free-space check bolted on), done once per camera with every bound explicit.
//!
//! One thread per recording camera. Each period it copies the newest real frame out of the pool
//! (the lease is held only for the copy, never across a disk write) and writes it atomically: a
//! temporary name in the same folder, `fdatasync`, then `rename`. Capture never waits for the disk:
//! when a write takes longer than the period, the periods it covered are skipped and counted (a
//! queue of one, never more).
//!
//! Layout, in UTC: `DIR/CAMERA/YYYY-MM-DD/HH/YYYYMMDD-HHMMSS.mmm-SEQ.jpg`. Names sort by time, so
//! retention removes the oldest first by walking the oldest folders; what is already on disk when
//! the daemon starts is counted and kept under the same limits. Below `min_free` the recorder
//! pauses with one warning (the camera turns degraded "disk low") and resumes by itself.
//!
//! With `quality` set, each recorded frame is decoded to its YUV planes and encoded again at that
//! quality on this thread (never on the capture thread), into buffers made once and reused (the
//! planes grow to the largest frame seen, at most `RECORD_REENCODE_MAX_PIXELS`). A frame that
//! cannot be re-encoded is written as the camera made it, and counted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use turbojpeg::{Compressor, Decompressor, Subsamp, YuvImage};

use super::Camera;
use crate::config::RecordSettings;
use crate::limits::RECORD_REENCODE_MAX_PIXELS;
use crate::obs::events::Event;
use crate::obs::stats::RecordingStats;
use crate::pool::MAX_JPEG_BYTES;

/// Free space is checked this often (and before the first write).
const FREE_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Age retention runs this often.
const AGE_CHECK_EVERY: Duration = Duration::from_secs(30);
/// Over the size limit, files are removed down to this share of it (removals come in batches).
const SIZE_LOW_WATER: f64 = 0.95;
/// Resuming after "disk low" needs this much more than `min_free` (no flapping at the edge).
const RESUME_MARGIN: f64 = 1.1;
/// Warnings about write errors at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The recorder's counters, shared with the camera's views.
#[derive(Default)]
pub struct RecordCounters {
    written: AtomicU64,
    skipped: AtomicU64,
    errors: AtomicU64,
    removed: AtomicU64,
    /// Frames written untouched because re-encoding them failed.
    reencode_failed: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    disk_low: AtomicBool,
    /// Unix seconds of the oldest and newest file kept (0: none).
    oldest: AtomicU64,
    newest: AtomicU64,
    dir: Mutex<String>,
    last_error: Mutex<String>,
    /// `[camera.record] quality` (`None`: untouched).
    quality: Option<u8>,
}

impl RecordCounters {
    pub fn stats(&self) -> RecordingStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let text = |m: &Mutex<String>| m.lock().map(|s| s.clone()).unwrap_or_default();
        RecordingStats {
            dir: text(&self.dir),
            quality: self.quality,
            written: l(&self.written),
            skipped: l(&self.skipped),
            errors: l(&self.errors),
            removed: l(&self.removed),
            reencode_failed: l(&self.reencode_failed),
            files: l(&self.files),
            bytes: l(&self.bytes),
            disk_low: self.disk_low.load(Ordering::Relaxed),
            oldest_unix_s: Some(l(&self.oldest)).filter(|&t| t != 0),
            newest_unix_s: Some(l(&self.newest)).filter(|&t| t != 0),
            last_error: text(&self.last_error),
        }
    }

    fn error(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = why;
        }
    }
}

/// The clock the recorder names files and judges ages by (tests inject one).
pub type Clock = fn() -> SystemTime;

pub struct Recorder {
    cam: Arc<Camera>,
    cfg: RecordSettings,
    /// `DIR/CAMERA`.
    root: PathBuf,
    counters: Arc<RecordCounters>,
    buf: Vec<u8>,
    /// With `quality` set: the decoder, encoder and their buffers.
    reencoder: Option<Reencoder>,
    clock: Clock,
    last_seq: u64,
    warned: Option<Instant>,
}

impl Recorder {
    pub fn new(cam: Arc<Camera>, cfg: RecordSettings, clock: Clock) -> Recorder {
        let root = cfg.dir.join(&cam.name);
        let counters = Arc::new(RecordCounters {
            quality: cfg.quality,
            ..Default::default()
        });
        if let Ok(mut d) = counters.dir.lock() {
            *d = root.display().to_string();
        }
        cam.attach_recording(Arc::clone(&counters));
        let reencoder = cfg.quality.and_then(|q| match Reencoder::new(q) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(camera = %cam.name, %e, "recording the camera's bytes untouched: cannot make a JPEG encoder");
                None
            }
        });
        Recorder {
            cam,
            cfg,
            root,
            counters,
            buf: vec![0; MAX_JPEG_BYTES],
            reencoder,
            clock,
            last_seq: 0,
            warned: None,
        }
    }

    /// The recording thread's body: until the camera stops.
    pub fn run(mut self) {
        // A recording camera always wants frames: it never goes idle.
        let _demand = self.cam.demand();
        if let Err(e) = fs::create_dir_all(&self.root) {
            self.counters
                .error(format!("cannot create {}: {e}", self.root.display()));
            warn!(camera = %self.cam.name, dir = %self.root.display(), %e, "recording disabled: cannot create its folder");
            return;
        }
        self.count_existing();
        self.retain();
        info!(camera = %self.cam.name, dir = %self.root.display(), fps = self.cfg.fps,
              files = self.counters.files.load(Ordering::Relaxed),
              bytes = self.counters.bytes.load(Ordering::Relaxed), "recording");
        let period = Duration::from_secs_f64(1.0 / self.cfg.fps);
        let mut next = Instant::now();
        let mut free_checked: Option<Instant> = None;
        let mut aged = Instant::now();
        while !self.cam.stopping() {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(200)));
                continue;
            }
            // A write that took longer than the period: the periods it covered are skipped.
            let behind = (now - next).as_secs_f64() / period.as_secs_f64();
            if behind >= 1.0 {
                self.counters
                    .skipped
                    .fetch_add(behind as u64, Ordering::Relaxed);
                next = now;
            }
            next += period;
            if free_checked.map_or(true, |t| t.elapsed() >= FREE_CHECK_EVERY) {
                free_checked = Some(Instant::now());
                self.check_free();
            }
            if aged.elapsed() >= AGE_CHECK_EVERY {
                aged = Instant::now();
                self.retain();
            }
            if self.counters.disk_low.load(Ordering::Relaxed) {
                continue;
            }
            self.record_one();
        }
    }

    /// Copies the newest real frame out of the pool and writes it.
    fn record_one(&mut self) {
        let (len, seq, ts_us) = {
            let Some(lease) = self.cam.pool.lease_newest() else {
                return;
            };
            let m = *lease.meta();
            if m.is_placeholder() || m.seq == self.last_seq {
                return;
            }
            let jpeg = lease.jpeg();
            self.buf[..jpeg.len()].copy_from_slice(jpeg);
            (jpeg.len(), m.seq, m.timestamp_us)
        };
        self.last_seq = seq;
        // Named for the frame's capture time.
        let now = UNIX_EPOCH + Duration::from_micros(ts_us);
        let name = file_name(now, seq);
        let dir = self.root.join(day_hour(now));
        let original = &self.buf[..len];
        let data = match self.reencoder.as_mut().map(|r| r.reencode(original)) {
            None => original,
            Some(Ok(d)) => d,
            Some(Err(why)) => {
                let c = &self.counters;
                c.reencode_failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut e) = c.last_error.lock() {
                    *e = format!("re-encode: {why}");
                }
                if self.warned.map_or(true, |t| t.elapsed() >= WARN_EVERY) {
                    self.warned = Some(Instant::now());
                    warn!(camera = %self.cam.name, "recording: cannot re-encode a frame ({why}); written untouched (counted; warned at most once a minute)");
                }
                original
            }
        };
        let len = data.len();
        match write_atomically(&dir, &name, data) {
            Ok(()) => {
                let c = &self.counters;
                c.written.fetch_add(1, Ordering::Relaxed);
                c.files.fetch_add(1, Ordering::Relaxed);
                let total = c.bytes.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
                let secs = unix_s(now);
                c.newest.store(secs, Ordering::Relaxed);
                let _ = c
                    .oldest
                    .compare_exchange(0, secs, Ordering::Relaxed, Ordering::Relaxed);
                if self.cfg.keep_bytes > 0 && total > self.cfg.keep_bytes {
                    self.retain();
                }
            }
            Err(e) => {
                let why = format!("write {}: {e}", dir.join(&name).display());
                self.counters.error(why.clone());
                if self.warned.map_or(true, |t| t.elapsed() >= WARN_EVERY) {
                    self.warned = Some(Instant::now());
                    warn!(camera = %self.cam.name, errors = self.counters.errors.load(Ordering::Relaxed),
                          "recording: {why} (counted; warned at most once a minute)");
                }
            }
        }
    }

    fn check_free(&self) {
        let Some(free) = free_bytes(&self.root) else {
            return;
        };
        let min = self.cfg.min_free_bytes;
        let low = self.counters.disk_low.load(Ordering::Relaxed);
        if !low && free < min {
            self.counters.disk_low.store(true, Ordering::Relaxed);
            warn!(camera = %self.cam.name, free_mib = free >> 20, min_free_mib = min >> 20,
                  "recording paused: disk low (resumes by itself)");
            self.cam.emit(Event::Recording {
                camera: self.cam.name.clone(),
                paused: true,
                free_bytes: free,
                min_free_bytes: min,
            });
        } else if low && free as f64 >= min as f64 * RESUME_MARGIN {
            self.counters.disk_low.store(false, Ordering::Relaxed);
            info!(camera = %self.cam.name, free_mib = free >> 20, "recording resumed: disk space is back");
            self.cam.emit(Event::Recording {
                camera: self.cam.name.clone(),
                paused: false,
                free_bytes: free,
                min_free_bytes: min,
            });
        }
    }

    /// Counts what is on disk already (a restart keeps it under the same limits).
    fn count_existing(&self) {
        let (mut files, mut bytes, mut oldest, mut newest) = (0u64, 0u64, 0u64, 0u64);
        for day in sorted_dirs(&self.root) {
            for hour in sorted_dirs(&day) {
                for (path, len) in sorted_files(&hour) {
                    files += 1;
                    bytes += len;
                    if let Some(t) = name_time(&path) {
                        if oldest == 0 {
                            oldest = t;
                        }
                        newest = newest.max(t);
                    }
                }
            }
        }
        let c = &self.counters;
        c.files.store(files, Ordering::Relaxed);
        c.bytes.store(bytes, Ordering::Relaxed);
        c.oldest.store(oldest, Ordering::Relaxed);
        c.newest.store(newest, Ordering::Relaxed);
    }

    fn retain(&self) {
        let now = unix_s((self.clock)());
        let cutoff = self.cfg.keep_age.map(|a| now.saturating_sub(a.as_secs()));
        retain(&self.root, &self.counters, cutoff, self.cfg.keep_bytes);
    }
}

/// Decodes a JPEG to its YUV planes and encodes them again at another quality: the same size and
/// chroma subsampling, no colour conversion. Made once per recorder; its buffers are reused.
struct Reencoder {
    dec: Decompressor,
    enc: Compressor,
    /// The decoded planes: grown (exactly) to the largest frame seen, never past
    /// `RECORD_REENCODE_MAX_PIXELS` at 4:4:4.
    yuv: Vec<u8>,
    /// The re-encoded JPEG (at most a slot's JPEG, like the frames it comes from).
    out: Vec<u8>,
}

impl Reencoder {
    fn new(quality: u8) -> Result<Reencoder, turbojpeg::Error> {
        let mut enc = Compressor::new()?;
        enc.set_quality(i32::from(quality))?;
        Ok(Reencoder {
            dec: Decompressor::new()?,
            enc,
            yuv: Vec::new(),
            out: vec![0; MAX_JPEG_BYTES],
        })
    }

    /// The frame at this encoder's quality.
    fn reencode(&mut self, jpeg: &[u8]) -> Result<&[u8], String> {
        let h = self.dec.read_header(jpeg).map_err(|e| e.to_string())?;
        if h.width.saturating_mul(h.height) > RECORD_REENCODE_MAX_PIXELS {
            return Err(format!(
                "{}x{} is over the re-encode limit of {RECORD_REENCODE_MAX_PIXELS} pixels",
                h.width, h.height
            ));
        }
        if h.subsamp == Subsamp::Unknown {
            return Err("unknown chroma subsampling".into());
        }
        let len = turbojpeg::yuv_pixels_len(h.width, 1, h.height, h.subsamp)
            .map_err(|e| e.to_string())?;
        if self.yuv.len() < len {
            self.yuv.reserve_exact(len - self.yuv.len());
            self.yuv.resize(len, 0);
        }
        let mut planes = YuvImage {
            pixels: &mut self.yuv[..len],
            width: h.width,
            align: 1,
            height: h.height,
            subsamp: h.subsamp,
        };
        self.dec
            .decompress_to_yuv(jpeg, planes.as_deref_mut())
            .map_err(|e| e.to_string())?;
        self.enc.set_subsamp(h.subsamp).map_err(|e| e.to_string())?;
        let n = self
            .enc
            .compress_yuv_to_slice(planes.as_deref(), &mut self.out)
            .map_err(|e| e.to_string())?;
        Ok(&self.out[..n])
    }
}

/// Removes the oldest files under `root` while they are older than `cutoff` (Unix seconds) or the
/// total is over `limit` bytes (then down to `SIZE_LOW_WATER` of it); empty folders go too.
fn retain(root: &Path, c: &RecordCounters, cutoff: Option<u64>, limit: u64) {
    let over = |bytes: u64| limit > 0 && bytes > limit;
    let target = (limit as f64 * SIZE_LOW_WATER) as u64;
    let mut trimming = over(c.bytes.load(Ordering::Relaxed));
    'walk: for day in sorted_dirs(root) {
        for hour in sorted_dirs(&day) {
            for (path, len) in sorted_files(&hour) {
                let t = name_time(&path);
                let old = matches!((cutoff, t), (Some(cut), Some(t)) if t < cut);
                if trimming && c.bytes.load(Ordering::Relaxed) <= target {
                    trimming = false;
                }
                if !old && !trimming {
                    c.oldest.store(t.unwrap_or(0), Ordering::Relaxed);
                    break 'walk;
                }
                if fs::remove_file(&path).is_ok() {
                    c.removed.fetch_add(1, Ordering::Relaxed);
                    let less = |n: u64| move |v: u64| Some(v.saturating_sub(n));
                    let _ = c
                        .files
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, less(1));
                    let _ = c
                        .bytes
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, less(len));
                }
            }
            let _ = fs::remove_dir(&hour); // only when empty
        }
        let _ = fs::remove_dir(&day);
    }
    if c.files.load(Ordering::Relaxed) == 0 {
        c.oldest.store(0, Ordering::Relaxed);
        c.newest.store(0, Ordering::Relaxed);
    }
}

fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Some(u64::from(s.blocks_available()) * u64::from(s.fragment_size()))
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Recorded files (not temporaries) with their sizes, oldest first.
fn sorted_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<(PathBuf, u64)> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.ends_with(".jpg") && !n.starts_with('.')
                })
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Civil date (UTC) of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date (the inverse of `civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD/HH` of a time (UTC).
fn day_hour(t: SystemTime) -> PathBuf {
    let s = unix_s(t) as i64;
    let (y, m, d) = civil(s.div_euclid(86_400));
    let h = s.rem_euclid(86_400) / 3600;
    PathBuf::from(format!("{y:04}-{m:02}-{d:02}")).join(format!("{h:02}"))
}

/// `YYYYMMDD-HHMMSS.mmm-SEQ.jpg` (UTC).
fn file_name(t: SystemTime, seq: u64) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() as i64;
    let (y, m, day) = civil(s.div_euclid(86_400));
    let r = s.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{day:02}-{:02}{:02}{:02}.{:03}-{seq:08}.jpg",
        r / 3600,
        r % 3600 / 60,
        r % 60,
        d.subsec_millis()
    )
}

/// The Unix seconds a recorded file's name says it was taken at.
fn name_time(path: &Path) -> Option<u64> {
    let n = path.file_name()?.to_str()?;
    let num = |r: std::ops::Range<usize>| n.get(r)?.parse::<u32>().ok();
    if n.as_bytes().get(8) != Some(&b'-') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    u64::try_from(days * 86_400 + i64::from(h * 3600 + mi * 60 + s)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dated_sortable_and_read_back() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_561_723_456); // 2025-12-01 04:02:03.456
        assert_eq!(file_name(t, 42), "20251201-040203.456-00000042.jpg");
        assert_eq!(day_hour(t), PathBuf::from("2025-12-01/04"));
        assert_eq!(
            name_time(Path::new("x/20251201-040203.456-00000042.jpg")),
            Some(1_764_561_723)
        );
        assert_eq!(name_time(Path::new("notes.jpg")), None);
        for days in [-1000, 0, 59, 60, 365, 10_957, 20_000, 100_000] {
            let (y, m, d) = civil(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
    }

    /// Files named for `times` (Unix seconds), `len` bytes each, under `root`; counted.
    fn files_at(root: &Path, times: &[u64], len: usize) -> RecordCounters {
        for (i, &t) in times.iter().enumerate() {
            let at = UNIX_EPOCH + Duration::from_secs(t);
            write_atomically(
                &root.join(day_hour(at)),
                &file_name(at, i as u64),
                &vec![0; len],
            )
            .unwrap();
        }
        let c = RecordCounters::default();
        c.files.store(times.len() as u64, Ordering::Relaxed);
        c.bytes.store((times.len() * len) as u64, Ordering::Relaxed);
        c
    }

    fn left(root: &Path) -> Vec<u64> {
        let mut v = Vec::new();
        for d in sorted_dirs(root) {
            for h in sorted_dirs(&d) {
                v.extend(sorted_files(&h).iter().filter_map(|(p, _)| name_time(p)));
            }
        }
        v
    }

    #[test]
    fn retention_by_age_removes_older_files_and_empty_folders() {
        let root = std::env::temp_dir().join(format!("beltcam-rec-age-{}", std::process::id()));
        let day = 86_400;
        let now = 1_764_561_723;
        // Three days back, two days back (two hours), an hour ago, now.
        let times = [
            now - 3 * day,
            now - 2 * day,
            now - 2 * day + 3600,
            now - 3600,
            now,
        ];
        let c = files_at(&root, &times, 10);
        retain(&root, &c, Some(now - day), 0);
        assert_eq!(left(&root), [now - 3600, now]);
        assert_eq!(c.removed.load(Ordering::Relaxed), 3);
        assert_eq!(
            (
                c.files.load(Ordering::Relaxed),
                c.bytes.load(Ordering::Relaxed)
            ),
            (2, 20)
        );
        assert_eq!(c.oldest.load(Ordering::Relaxed), now - 3600);
        assert_eq!(
            sorted_dirs(&root).len(),
            1,
            "the emptied day folders are gone"
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn retention_by_size_removes_oldest_down_to_low_water() {
        let root = std::env::temp_dir().join(format!("beltcam-rec-size-{}", std::process::id()));
        let times: Vec<u64> = (0..40).map(|i| 1_764_561_723 + i * 600).collect();
        let c = files_at(&root, &times, 1000);
        // 40 kB kept, limit 30 kB: down to 95 % of it, oldest first.
        retain(&root, &c, None, 30_000);
        let kept = left(&root);
        assert_eq!(kept.len(), 28, "{kept:?}");
        assert_eq!(kept, times[12..]);
        assert_eq!(c.bytes.load(Ordering::Relaxed), 28_000);
        // Under the limit: nothing more goes.
        retain(&root, &c, None, 30_000);
        assert_eq!(left(&root).len(), 28);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn reencoding_keeps_the_size_lowers_the_bytes_and_reuses_its_buffers() {
        let original = crate::capture::jpeg::tests::pattern(320, 240, 5, "rec", 95);
        let mut r = Reencoder::new(20).unwrap();
        let small = r.reencode(&original).unwrap().to_vec();
        let h = turbojpeg::read_header(&small).unwrap();
        assert_eq!((h.width, h.height), (320, 240));
        assert!(
            small.len() * 2 < original.len(),
            "{} vs {}",
            small.len(),
            original.len()
        );
        let planes = r.yuv.capacity();
        for n in 0..5 {
            let f = crate::capture::jpeg::tests::pattern(320, 240, n, "rec", 95);
            r.reencode(&f).unwrap();
        }
        assert_eq!(r.yuv.capacity(), planes, "the planes buffer did not grow");
        assert!(r.reencode(b"not a jpeg").is_err());
    }

    #[test]
    fn atomic_write_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("beltcam-rec-unit-{}", std::process::id()));
        write_atomically(&dir.join("a/b"), "f.jpg", b"data").unwrap();
        assert_eq!(fs::read(dir.join("a/b/f.jpg")).unwrap(), b"data");
        let names: Vec<_> = fs::read_dir(dir.join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert_eq!(sorted_files(&dir.join("a/b")).len(), 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
