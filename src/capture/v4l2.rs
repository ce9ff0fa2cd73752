//! The V4L2 camera source: negotiate, stream MMAP buffers, pass MJPEG through or encode raw frames.
//!
//! One capture thread per camera (the one `run_capture` runs) polls the device with a timeout,
//! drains it to the newest filled buffer and re-queues the rest at once, so the driver never runs
//! out of buffers and viewers always get the freshest frame. MJPEG frames are checked and copied
//! into a pool slot (standard Huffman tables inserted when the camera leaves them out); raw frames
//! go to the encode workers. Errors become `SourceError::Gone`/`Timeout`: `run_capture` then
//! serves the placeholder and re-opens with backoff, which is how an unplugged camera comes back.

pub mod controls;
pub mod ioctl;
pub mod negotiate;
pub mod stream;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::convert::{RawEncoder, RawFormat};
use super::workers::{self, Dispatch, EncodePool, Job};
use super::{dht, now_us, Camera, FrameSource, SourceError, StreamInfo};
use crate::logging::{RateLimit, REPEAT_EVERY};
use ioctl::{DeviceFd, PixFormat};
pub use negotiate::offers;
use negotiate::{fourcc_str, Request};
use stream::{Dequeued, MmapStream};

pub use crate::config::V4l2Options;

/// How long one `capture` call keeps going before it returns to `run_capture` (fps, heartbeat).
const WINDOW: Duration = Duration::from_millis(500);
/// Shortest dequeue timeout: a camera silent this long (or 4 frame times, if longer) is offline.
const MIN_DEQUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the encode statistics are logged (debug level).
const STATS_EVERY: Duration = Duration::from_secs(5);

pub struct V4l2Source {
    device: PathBuf,
    request: Request,
    opts: V4l2Options,
    live: Option<Live>,
    /// The camera the encode workers publish into (`FrameSource::attach`).
    cam: Option<Arc<Camera>>,
    /// Warnings of `open`, which repeat at every re-open of a failing device.
    rate_warning: RateLimit,
    mode_warning: RateLimit,
    controls_warning: RateLimit,
}

/// An open, streaming device. Field order is drop order: buffers unmapped before the fd closes.
struct Live {
    stream: MmapStream,
    dev: DeviceFd,
    fmt: PixFormat,
    encoders: Option<EncodePool>,
    timeout: Duration,
    last_frame: Instant,
    /// The newest dequeued buffer and its capture time, waiting for a free worker (raw only).
    held: Option<(Dequeued, u64)>,
    /// Bytes a raw frame must have (0 for MJPEG).
    raw_bytes: usize,
    stats_at: Instant,
}

impl V4l2Source {
    pub fn new(
        device: PathBuf,
        mode: Option<(u32, u32, f64)>,
        format: Option<String>,
        opts: V4l2Options,
    ) -> Self {
        let format = format.and_then(|f| <[u8; 4]>::try_from(f.as_bytes()).ok());
        V4l2Source {
            device,
            request: Request {
                size: mode.map(|m| (m.0, m.1)),
                fps: mode.map(|m| m.2),
                format,
            },
            opts,
            live: None,
            cam: None,
            rate_warning: RateLimit::new(REPEAT_EVERY),
            mode_warning: RateLimit::new(REPEAT_EVERY),
            controls_warning: RateLimit::new(REPEAT_EVERY),
        }
    }
}

/// Maps a streaming error to what the capture thread does next: every one means the stream is
/// broken and must be re-opened; ENODEV and friends are named as an unplug.
fn stream_error(what: &str, e: std::io::Error) -> SourceError {
    match e.raw_os_error() {
        Some(libc::ENODEV | libc::ENXIO | libc::ENOENT) => {
            SourceError::Gone(format!("unplugged ({what}: {e})"))
        }
        _ => SourceError::Gone(format!("{what}: {e}")),
    }
}

impl V4l2Source {
    fn open_device(&mut self, cam: &Camera) -> Result<(Live, StreamInfo), SourceError> {
        let path = self.device.display().to_string();
        let open_err =
            |what: &str, e: std::io::Error| SourceError::Open(format!("{path}: {what}: {e}"));
        let dev = DeviceFd::open(&self.device).map_err(|e| open_err("open", e))?;
        let caps = dev.caps().map_err(|e| open_err("query capabilities", e))?;
        if !caps.capture || !caps.streaming {
            let why = if caps.capture_mplane {
                "multi-planar capture is not supported yet"
            } else {
                "not a streaming video capture node"
            };
            return Err(SourceError::Open(format!("{path} ({}): {why}", caps.card)));
        }
        let offers = offers(&dev, self.request.size).map_err(|e| open_err("enumerate", e))?;
        let choice = negotiate::choose(&offers, &self.request)
            .map_err(|e| SourceError::Open(format!("{path}: {e}")))?;
        let fmt = dev
            .set_format(choice.fourcc, choice.width, choice.height)
            .map_err(|e| open_err("set format", e))?;
        if fmt.fourcc != choice.fourcc {
            return Err(SourceError::Open(format!(
                "{path}: driver substituted {} for {}",
                fourcc_str(fmt.fourcc),
                fourcc_str(choice.fourcc)
            )));
        }
        let mut interval = choice.interval;
        if let Some((n, d)) = choice.interval {
            match dev.set_interval(n, d) {
                Ok(Some(got)) => interval = Some(got),
                Ok(None) => {}
                // Some drivers have no S_PARM (fixed rate): stream at whatever they deliver.
                Err(e) => {
                    if let Some(held_back) = self.rate_warning.allow() {
                        warn!(device = %path, %e, held_back, "cannot set the frame rate");
                    }
                }
            }
        }
        let fps = interval.map_or(0.0, negotiate::fps_of);
        // `[camera.controls]`, at every open: a replugged camera has lost them.
        let (controls, failed) = controls::apply(&dev, &self.opts.controls);
        if !self.opts.controls.is_empty() {
            cam.count_controls_applied(controls, failed.len());
        }
        if !failed.is_empty() {
            if let Some(held_back) = self.controls_warning.allow() {
                warn!(device = %path, held_back, failed = ?failed, "some [camera.controls] not applied");
            }
        }
        let substituted =
            !choice.notes.is_empty() || (fmt.width, fmt.height) != (choice.width, choice.height);
        if let Some(held_back) = substituted.then(|| self.mode_warning.allow()).flatten() {
            warn!(held_back, device = %path, asked = ?self.request, notes = ?choice.notes,
                  format = %fourcc_str(fmt.fourcc), width = fmt.width, height = fmt.height, fps,
                  "requested mode not offered; using the nearest");
        }
        let mut raw_bytes = 0;
        let encoders = match RawFormat::from_fourcc(fmt.fourcc) {
            None => None,
            Some(raw) => {
                let (w, h, stride) = (fmt.width as usize, fmt.height as usize, fmt.bytesperline);
                let stride = (stride as usize).max(raw.min_stride(w));
                let encs = (0..self.opts.workers.max(1))
                    .map(|_| RawEncoder::new(raw, w, h, stride, cam.quality))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| SourceError::Open(format!("{path}: {e}")))?;
                raw_bytes = raw.frame_bytes(stride, h);
                let bytes = raw_bytes.max(fmt.sizeimage as usize);
                let attached = self.cam.as_ref().ok_or_else(|| {
                    SourceError::Open(format!("{path}: raw formats need an attached camera"))
                })?;
                let pool = EncodePool::start(attached, encs, bytes, fmt.width, fmt.height)
                    .map_err(|e| open_err("encode workers", e))?;
                Some(pool)
            }
        };
        let stream = MmapStream::start(&dev, self.opts.buffers.max(2))
            .map_err(|e| open_err("start streaming", e))?;
        let period = if fps > 0.0 {
            Duration::from_secs_f64(1.0 / fps)
        } else {
            Duration::ZERO
        };
        info!(device = %path, card = %caps.card, driver = %caps.driver, buffers = stream.buffers(),
              workers = encoders.as_ref().map_or(0, |_| self.opts.workers.max(1)), controls,
              "streaming");
        let passthrough = encoders.is_none();
        let live = Live {
            stream,
            dev,
            fmt,
            encoders,
            timeout: MIN_DEQUEUE_TIMEOUT.max(period * 4),
            last_frame: Instant::now(),
            held: None,
            raw_bytes,
            stats_at: Instant::now(),
        };
        let info = StreamInfo {
            format: fourcc_str(fmt.fourcc),
            width: fmt.width,
            height: fmt.height,
            fps,
            passthrough,
        };
        Ok((live, info))
    }
}

impl FrameSource for V4l2Source {
    fn attach(&mut self, cam: &Arc<Camera>) {
        self.cam = Some(Arc::clone(cam));
    }

    fn open(&mut self, cam: &Camera) -> Result<StreamInfo, SourceError> {
        self.close();
        let (live, info) = self.open_device(cam)?;
        self.live = Some(live);
        Ok(info)
    }

    fn capture(&mut self, cam: &Camera) -> Result<(), SourceError> {
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| SourceError::Open("capture before open".into()))?;
        let end = Instant::now() + WINDOW;
        let Some(mut pool) = live.encoders.take() else {
            return live.window(cam, end, None);
        };
        // The workers keep running between calls; only the queues' ends are lent here.
        let fd = pool.done_fd();
        let r = live.window(cam, end, Some((&mut pool.dispatch(), fd)));
        live.log_stats(cam, &pool);
        let alive = pool.alive();
        live.encoders = Some(pool);
        if !alive {
            return Err(SourceError::Gone("an encode worker stopped".into()));
        }
        r
    }

    fn close(&mut self) {
        if let Some(mut live) = self.live.take() {
            live.stream.stop(&live.dev);
        }
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        self.close();
    }
}

impl Live {
    /// Captures until `end`: waits for frames, drains to the newest, and publishes it
    /// (passthrough) or hands it to a free worker (raw).
    fn window(
        &mut self,
        cam: &Camera,
        end: Instant,
        mut workers: Option<(&mut Dispatch<'_>, i32)>,
    ) -> Result<(), SourceError> {
        let done_fd = workers.as_ref().map(|w| w.1);
        loop {
            cam.heartbeat.beat();
            let now = Instant::now();
            if cam.stopping() || now >= end {
                return Ok(());
            }
            if now.duration_since(self.last_frame) > self.timeout {
                return Err(SourceError::Timeout(self.timeout));
            }
            let wait = (end - now).min(self.timeout);
            // Holding a frame means every worker is busy: wake on a worker finishing, too.
            let ready = self
                .stream
                .wait(&self.dev, done_fd, wait)
                .map_err(|e| stream_error("poll", e))?;
            if let (true, Some(fd)) = (ready.extra, done_fd) {
                workers::drain_eventfd(fd);
            }
            // An unplugged device polls as an error and its dequeue fails with ENODEV; an error
            // that dequeues nothing would make poll spin, so it ends the stream as well.
            if ready.frame && !self.drain(cam)? && ready.hangup {
                return Err(SourceError::Gone("device reported an error".into()));
            }
            let Some(held) = self.held.take() else {
                continue;
            };
            match workers.as_mut() {
                None => self.deliver(cam, held)?,
                Some((d, _)) => self.hand_off(d, held)?,
            }
        }
    }

    /// Dequeues everything ready, keeping only the newest in `held`; false if nothing was ready.
    fn drain(&mut self, cam: &Camera) -> Result<bool, SourceError> {
        let mut got = false;
        while let Some(d) = self
            .stream
            .dequeue(&self.dev)
            .map_err(|e| stream_error("dequeue", e))?
        {
            got = true;
            self.last_frame = Instant::now();
            cam.count_captured();
            if let Some((old, _)) = self.held.replace((d, now_us())) {
                // A newer frame is here: the older one is skipped, its buffer goes straight back.
                cam.count_dropped();
                self.requeue(old.index)?;
            }
        }
        Ok(got)
    }

    fn requeue(&mut self, index: usize) -> Result<(), SourceError> {
        self.stream
            .queue(&self.dev, index)
            .map_err(|e| stream_error("queue", e))
    }

    /// Publishes an MJPEG frame (passthrough): checked, tables added if missing, one copy.
    fn deliver(&mut self, cam: &Camera, (d, captured): (Dequeued, u64)) -> Result<(), SourceError> {
        let data = self.stream.data(&d);
        let result = if d.error {
            Err("driver flagged the frame as corrupt".to_string())
        } else {
            match cam.claim() {
                None => Ok(()), // counted by claim
                Some(mut slot) => match dht::copy_frame(data, slot.jpeg_buf()) {
                    Ok((n, info)) => {
                        cam.publish(slot, n, captured, info.width as u32, info.height as u32);
                        Ok(())
                    }
                    Err(dht::CopyError::TooBig(_)) => {
                        cam.count_oversize();
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                },
            }
        };
        self.requeue(d.index)?;
        result.map_err(SourceError::InvalidFrame)
    }

    /// Gives a raw frame to a free worker, or keeps holding it (newest wins) if none is free.
    fn hand_off(
        &mut self,
        d: &mut Dispatch<'_>,
        (frame, captured): (Dequeued, u64),
    ) -> Result<(), SourceError> {
        if frame.error {
            self.requeue(frame.index)?;
            return Err(SourceError::InvalidFrame(
                "driver flagged the frame as corrupt".into(),
            ));
        }
        let Some((lane, mut buf)) = d.take() else {
            self.held = Some((frame, captured));
            return Ok(());
        };
        let data = self.stream.data(&frame);
        let len = data.len().min(buf.len());
        let short = len < self.raw_bytes;
        if !short {
            // The one unavoidable copy: the driver needs its buffer back within a frame time,
            // and an encode takes longer than that.
            buf[..len].copy_from_slice(&data[..len]);
        }
        self.requeue(frame.index)?;
        if short {
            d.give_back(lane, buf);
            return Err(SourceError::InvalidFrame(format!(
                "short raw frame: {len} of {} bytes",
                self.raw_bytes
            )));
        }
        d.submit(
            lane,
            Job {
                buf,
                len,
                captured_us: captured,
            },
        );
        Ok(())
    }

    fn log_stats(&mut self, cam: &Camera, pool: &EncodePool) {
        if self.stats_at.elapsed() < STATS_EVERY {
            return;
        }
        self.stats_at = Instant::now();
        let frames = pool.stats.frames.swap(0, Ordering::Relaxed);
        let micros = pool.stats.micros.swap(0, Ordering::Relaxed);
        if frames > 0 {
            debug!(camera = %cam.name, frames, encode_ms = micros as f64 / frames as f64 / 1000.0,
                   format = %fourcc_str(self.fmt.fourcc), "encode time per frame");
        }
    }
}
