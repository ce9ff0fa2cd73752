//! Cameras: the `FrameSource` seam, the per-camera state, and the capture thread that drives a source.
//!
//! A source only knows how to open its device and produce one frame into the camera's pool. The
//! capture thread around it owns everything a source must not get wrong on its own: counting,
//! online/offline state, the "NO SIGNAL" placeholder while offline, retry with capped backoff, and the
//! heartbeat that proves the thread is alive.

pub mod convert;
pub mod devices;
pub mod dht;
pub(crate) mod dir;
pub mod encode;
pub(crate) mod font;
pub mod jpeg;
pub(crate) mod record;
pub(crate) mod relay;
pub mod synthetic;
pub(crate) mod tap;
pub(crate) mod v4l2;
pub(crate) mod workers;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::spec::SourceSpec;
use crate::logging::{RateLimit, REPEAT_EVERY};
use crate::obs::events::{Event, EventBus};
use crate::obs::health::{stale_after, Heartbeat};
use crate::obs::stats::{CameraCounts, CameraView, ControlStats};
pub use crate::obs::stats::{CameraState, StreamInfo};
use crate::pool::{FramePool, SlotWriter, MAX_JPEG_BYTES};
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device is gone (ENODEV, unplugged, folder removed): go offline and retry.
    #[error("device gone: {0}")]
    Gone(String),
    /// No frame within the dequeue timeout: go offline and retry.
    #[error("no frame for {0:?}")]
    Timeout(Duration),
    /// Opening or negotiating failed: stay offline and retry.
    #[error("{0}")]
    Open(String),
    /// One bad frame: counted and dropped, capture goes on.
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
}

/// The seam between the capture thread and a camera (real, synthetic, files). Implementations block
/// in `capture` until a frame is due, but never longer than about a second, so the capture thread's
/// heartbeat keeps beating and shutdown is noticed.
pub trait FrameSource: Send {
    /// Called once by the capture thread, before the first `open`, with the camera this source
    /// serves for its whole life. A source with threads of its own that publish (the V4L2 encode
    /// workers) keeps it; the others need not.
    fn attach(&mut self, _cam: &Arc<Camera>) {}
    /// Opens (or re-opens after a failure) and says what was negotiated.
    fn open(&mut self, cam: &Camera) -> Result<StreamInfo, SourceError>;
    /// Produces at most one frame into `cam` (via `cam.claim()` and `cam.publish(..)`).
    fn capture(&mut self, cam: &Camera) -> Result<(), SourceError>;
    /// Releases the device after a failure; `open` comes next.
    fn close(&mut self) {}
}

/// Per-camera counters (all monotonic except `fps_milli` and `last_frame_us`); read through
/// [`Camera::stats`], written through `Camera`'s methods.
#[derive(Default)]
struct CameraCounters {
    captured: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    invalid: AtomicU64,
    placeholders: AtomicU64,
    /// Published real frames per second over the last window, times 1000.
    fps_milli: AtomicU64,
    last_frame_us: AtomicU64,
    /// When the newest frame larger than a slot was refused (0: never).
    oversize_us: AtomicU64,
}

const STARTING: u8 = 0;
const ONLINE: u8 = 1;
const OFFLINE: u8 = 2;
const IDLE: u8 = 3;

/// One camera: its pool, counters and state. This is the narrow sink a source publishes through
/// (claim, publish, count, beat, stopping); it holds the event bus and shutdown, never server state.
pub struct Camera {
    /// Stable identity for the process's life (sessions and event rooms refer to it). The cameras
    /// configured at start get 0, 1, ...; a camera added by a reload gets a number never used before.
    pub id: usize,
    pub name: String,
    pub spec: SourceSpec,
    pub quality: u8,
    pub pool: Arc<FramePool>,
    counters: CameraCounters,
    pub heartbeat: Arc<Heartbeat>,
    state: AtomicU8,
    /// Negotiated format and the reason for being offline; changed only on transitions.
    detail: Mutex<(StreamInfo, String)>,
    frames_tx: watch::Sender<u64>,
    placeholder: Vec<u8>,
    shutdown: Arc<Shutdown>,
    /// Set when a reload removed (or replaced) this camera: its capture thread ends and its viewers
    /// get a clean end.
    retired: AtomicBool,
    /// A relayed camera's upstream counters (see `relay`).
    upstream: OnceLock<Arc<relay::UpstreamCounters>>,
    /// A recording camera's recorder counters (see `record`).
    recording: OnceLock<Arc<record::RecordCounters>>,
    events: Arc<EventBus>,
    /// Frames larger than a slot can come every frame: one warning, then a count (`RateLimit`).
    oversize_log: RateLimit,
    /// Capture on demand (see `Demand`).
    demand: DemandState,
    /// Camera controls set (V4L2 cameras; see `serve::controls`).
    controls: ControlCounters,
}

/// A V4L2 camera's control counters (all monotonic).
#[derive(Default)]
struct ControlCounters {
    set: AtomicU64,
    set_failed: AtomicU64,
    applied: AtomicU64,
    apply_failed: AtomicU64,
}

/// Who wants this camera's frames, for capture on demand (`idle_stop_s`): with no stream, snapshot
/// or recorder wanting frames for `idle_stop`, the capture thread closes the source and parks; the
/// next want wakes it at once.
struct DemandState {
    /// `None`: always on.
    idle_stop: Option<Duration>,
    epoch: Instant,
    /// Consumers holding a `Demand` now (streams, the recorder).
    holders: AtomicUsize,
    /// Milliseconds since `epoch` of the last want (a snapshot, a holder coming or going).
    wanted_ms: AtomicU64,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Held by a consumer that wants frames for a while (a stream session, the recorder); dropping it
/// starts the idle timer.
pub struct Demand(Arc<Camera>);

impl Drop for Demand {
    fn drop(&mut self) {
        self.0.demand.holders.fetch_sub(1, Ordering::AcqRel);
        self.0.want_once();
    }
}

impl Camera {
    pub fn new(
        id: usize,
        name: String,
        spec: SourceSpec,
        quality: u8,
        heartbeat: Arc<Heartbeat>,
        shutdown: Arc<Shutdown>,
        events: Arc<EventBus>,
    ) -> Camera {
        let (w, h) = match &spec {
            SourceSpec::Synthetic { width, height, .. } => (*width, *height),
            SourceSpec::V4l2 {
                mode: Some((w, h, _)),
                ..
            } => (*w, *h),
            _ => (640, 480),
        };
        let placeholder = encode::placeholder_jpeg(w, h, &name).unwrap_or_else(|e| {
            warn!(camera = %name, %e, "could not encode the placeholder frame; offline viewers get none");
            Vec::new()
        });
        Camera {
            id,
            name,
            spec,
            quality,
            pool: Arc::new(FramePool::new()),
            counters: CameraCounters::default(),
            heartbeat,
            state: AtomicU8::new(STARTING),
            detail: Mutex::new((StreamInfo::default(), String::new())),
            frames_tx: watch::channel(0).0,
            placeholder,
            shutdown,
            retired: AtomicBool::new(false),
            upstream: OnceLock::new(),
            recording: OnceLock::new(),
            events,
            controls: ControlCounters::default(),
            oversize_log: RateLimit::new(REPEAT_EVERY),
            demand: DemandState {
                idle_stop: None,
                epoch: Instant::now(),
                holders: AtomicUsize::new(0),
                wanted_ms: AtomicU64::new(0),
                lock: Mutex::new(()),
                wake: Condvar::new(),
            },
        }
    }

    /// Capture on demand: stop capturing after `idle_stop` without anyone wanting frames.
    pub fn with_idle_stop(mut self, idle_stop: Option<Duration>) -> Camera {
        self.demand.idle_stop = idle_stop.filter(|d| !d.is_zero());
        self
    }

    /// A snapshot (or anything that wants one frame soon) wants this camera: wakes an idle capture.
    pub fn want_once(&self) {
        let d = &self.demand;
        let now = d.epoch.elapsed().as_millis() as u64;
        d.wanted_ms.fetch_max(now, Ordering::AcqRel);
        if d.idle_stop.is_some() {
            let _g = d.lock.lock();
            d.wake.notify_all();
        }
    }

    /// A consumer wants frames until it drops the guard (stream sessions, the recorder).
    pub fn demand(self: &Arc<Self>) -> Demand {
        self.demand.holders.fetch_add(1, Ordering::AcqRel);
        self.want_once();
        Demand(Arc::clone(self))
    }

    /// Nobody has wanted frames for `idle_stop`.
    fn idle_due(&self) -> bool {
        let d = &self.demand;
        let Some(after) = d.idle_stop else {
            return false;
        };
        let since = d.epoch.elapsed().as_millis() as u64 - d.wanted_ms.load(Ordering::Acquire);
        d.holders.load(Ordering::Acquire) == 0 && since >= after.as_millis() as u64
    }

    /// Parks the capture thread until something wants frames again (true) or the camera stops
    /// (false). The heartbeat keeps beating: the watchdog never depends on capture running.
    fn park_idle(&self) -> bool {
        let d = &self.demand;
        let idle_at = d.epoch.elapsed().as_millis() as u64;
        let wanted = || {
            d.holders.load(Ordering::Acquire) > 0 || d.wanted_ms.load(Ordering::Acquire) > idle_at
        };
        loop {
            self.heartbeat.beat();
            if self.stopping() {
                return false;
            }
            let Ok(g) = d.lock.lock() else {
                return !self.stopping();
            };
            if wanted() {
                return true;
            }
            let _ = d
                .wake
                .wait_timeout_while(g, Duration::from_millis(200), |_| {
                    !wanted() && !self.stopping()
                });
        }
    }

    fn set_idle(&self) {
        let after = self.demand.idle_stop.unwrap_or_default();
        info!(camera = %self.name, idle_stop_s = after.as_secs_f64(),
              "camera idle: nothing wanted frames; capture stopped until the next viewer");
        self.events.emit(
            Some(self.id),
            Event::CameraIdle {
                camera: self.name.clone(),
            },
        );
        self.state.store(IDLE, Ordering::Release);
        self.counters.fps_milli.store(0, Ordering::Relaxed);
    }

    /// Stops this camera for good (a reload removed it): the capture thread returns and closes the
    /// device, and every viewer is woken to end its session.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.frames_tx.send_modify(|_| {});
        let _g = self.demand.lock.lock();
        self.demand.wake.notify_all();
    }

    /// Shows a relay's upstream counters in this camera's views (the first call wins).
    pub fn attach_upstream(&self, counters: Arc<relay::UpstreamCounters>) {
        let _ = self.upstream.set(counters);
    }

    /// Publishes an event about this camera (its `/events?camera=` room hears it).
    pub fn emit(&self, event: Event) {
        self.events.emit(Some(self.id), event);
    }

    /// Counts a control set over HTTP (`ok`) or refused by the device.
    pub fn count_control_set(&self, ok: bool) {
        let c = &self.controls;
        (if ok { &c.set } else { &c.set_failed }).fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a `[camera.controls]` table applied when the device opened: entries set, and not.
    pub fn count_controls_applied(&self, applied: usize, failed: usize) {
        let c = &self.controls;
        c.applied.fetch_add(applied as u64, Ordering::Relaxed);
        c.apply_failed.fetch_add(failed as u64, Ordering::Relaxed);
    }

    /// Shows a recorder's counters in this camera's views (the first call wins).
    pub fn attach_recording(&self, counters: Arc<record::RecordCounters>) {
        let _ = self.recording.set(counters);
    }

    /// Whether a reload removed this camera.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub fn state(&self) -> CameraState {
        match self.state.load(Ordering::Acquire) {
            ONLINE => CameraState::Online,
            OFFLINE => CameraState::Offline,
            IDLE => CameraState::Idle,
            _ => CameraState::Starting,
        }
    }

    /// The camera's frame counters.
    pub fn stats(&self) -> CameraCounts {
        let k = &self.counters;
        CameraCounts {
            captured: k.captured.load(Ordering::Relaxed),
            published: k.published.load(Ordering::Relaxed),
            dropped: k.dropped.load(Ordering::Relaxed),
            invalid: k.invalid.load(Ordering::Relaxed),
            placeholders: k.placeholders.load(Ordering::Relaxed),
            fps: k.fps_milli.load(Ordering::Relaxed) as f64 / 1000.0,
            last_frame_us: k.last_frame_us.load(Ordering::Relaxed),
        }
    }

    /// The camera as the observability views show it, `clients` being its stream sessions.
    pub fn view(&self, clients: usize) -> CameraView {
        let (info, mut reason) = self.detail();
        if reason.is_empty() {
            reason = self.oversize_reason().unwrap_or_default();
        }
        let counts = self.stats();
        let last_frame_age = (counts.last_frame_us != 0)
            .then(|| Duration::from_micros(now_us().saturating_sub(counts.last_frame_us)));
        CameraView {
            id: self.id,
            name: self.name.clone(),
            source: self.spec.to_string(),
            state: self.state(),
            reason,
            info,
            quality: self.quality,
            nominal_fps: self.spec.nominal_fps(),
            counts,
            pool: self.pool.stats(),
            clients,
            last_frame_age,
            upstream: self.upstream.get().map(|u| u.stats()),
            recording: self.recording.get().map(|r| r.stats()),
            controls: matches!(self.spec, SourceSpec::V4l2 { .. }).then(|| {
                let c = &self.controls;
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                ControlStats {
                    set: l(&c.set),
                    set_failed: l(&c.set_failed),
                    applied: l(&c.applied),
                    apply_failed: l(&c.apply_failed),
                }
            }),
        }
    }

    /// Counts a frame the source delivered (valid or not).
    pub fn count_captured(&self) {
        self.counters.captured.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a frame lost on the way (an encode failure, no free slot).
    pub fn count_dropped(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a frame larger than a slot (and so lost): the camera is degraded while they keep
    /// coming (see `oversize_reason`), and the first is logged, then a count every 10 s.
    pub fn count_oversize(&self) {
        self.pool.count_oversize();
        self.count_dropped();
        self.note_oversize();
    }

    /// The oversize state and its warning, for a frame the pool has already counted.
    fn note_oversize(&self) {
        self.counters.oversize_us.store(now_us(), Ordering::Relaxed);
        if let Some(held_back) = self.oversize_log.allow() {
            warn!(camera = %self.name, slot_bytes = MAX_JPEG_BYTES, held_back,
                  total = self.pool.stats().oversize,
                  "frame larger than a pool slot dropped (camera resolution or quality too high?)");
        }
    }

    /// Why a camera that is not offline is degraded: frames larger than a slot refused within
    /// the last few frame periods (as long as `/health` calls a frame stale), so the state clears
    /// once frames fit again.
    fn oversize_reason(&self) -> Option<String> {
        let at = self.counters.oversize_us.load(Ordering::Relaxed);
        let window = stale_after(self.spec.nominal_fps());
        (at != 0 && now_us().saturating_sub(at) <= window.as_micros() as u64).then(|| {
            format!(
                "frames larger than a pool slot ({MAX_JPEG_BYTES} bytes) are dropped ({} so far)",
                self.pool.stats().oversize
            )
        })
    }

    /// Negotiated stream and, when offline, why.
    pub fn detail(&self) -> (StreamInfo, String) {
        self.detail.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// A receiver that wakes when a new frame is published (value: its sequence number).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.frames_tx.subscribe()
    }

    /// The process is stopping or this camera was retired: sources and workers return.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_triggered() || self.is_retired()
    }

    /// Claims a free slot, counting a drop when there is none.
    pub fn claim(&self) -> Option<SlotWriter<'_>> {
        let w = self.pool.claim();
        if w.is_none() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        w
    }

    /// Publishes a real frame written into `w` and wakes the viewers.
    pub fn publish(
        &self,
        w: SlotWriter<'_>,
        len: usize,
        captured_us: u64,
        width: u32,
        height: u32,
    ) {
        match w.publish(len, captured_us, width, height) {
            Ok(seq) => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .last_frame_us
                    .store(captured_us, Ordering::Relaxed);
                self.frames_tx.send_replace(seq);
            }
            Err(_oversize) => {
                // Counted as oversize by the pool.
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.note_oversize();
            }
        }
    }

    /// Counts a frame that was not a valid JPEG.
    pub fn count_invalid(&self) {
        self.counters.invalid.fetch_add(1, Ordering::Relaxed);
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn publish_placeholder(&self) {
        let len = self.placeholder.len();
        if len == 0 {
            return;
        }
        if let Some(mut w) = self.pool.claim() {
            w.jpeg_buf()[..len].copy_from_slice(&self.placeholder);
            if let Ok(seq) = w.publish(len, now_us(), 0, 0) {
                self.counters.placeholders.fetch_add(1, Ordering::Relaxed);
                self.frames_tx.send_replace(seq);
            }
        }
    }

    fn set_online(&self, info: StreamInfo) {
        info!(camera = %self.name, format = %info.format, width = info.width, height = info.height,
              fps = info.fps, passthrough = info.passthrough, "camera online");
        self.events.emit(
            Some(self.id),
            Event::CameraOnline {
                camera: self.name.clone(),
                info: info.clone(),
            },
        );
        if let Ok(mut d) = self.detail.lock() {
            // A source that learns its size from its frames (`dir:` opens as 0x0) may already
            // have reported it with the first frame: keep it.
            let size = if info.width == 0 && info.height == 0 {
                (d.0.width, d.0.height)
            } else {
                (info.width, info.height)
            };
            *d = (info, String::new());
            (d.0.width, d.0.height) = size;
        }
        self.state.store(ONLINE, Ordering::Release);
    }

    /// Records the frame size once a source learns it from its frames rather than at open
    /// (`dir:` files): `/stats` and `/state` then show the real size instead of 0x0.
    pub(crate) fn set_size(&self, width: u32, height: u32) {
        if let Ok(mut d) = self.detail.lock() {
            d.0.width = width;
            d.0.height = height;
        }
    }

    fn set_offline(&self, reason: &str) {
        let was = self.state.swap(OFFLINE, Ordering::AcqRel);
        if let Ok(mut d) = self.detail.lock() {
            if was != OFFLINE || d.1 != reason {
                warn!(camera = %self.name, reason, "camera offline; serving placeholder and retrying");
                self.events.emit(
                    Some(self.id),
                    Event::CameraOffline {
                        camera: self.name.clone(),
                        reason: reason.to_owned(),
                    },
                );
            }
            d.1 = reason.to_owned();
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Retry delays: doubling from `first`, capped at `cap`.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap,
            next: first,
        }
    }
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Sleeps until `deadline` in short steps, beating the heartbeat; returns false if shutting down.
pub fn wait_until(cam: &Camera, deadline: Instant) -> bool {
    loop {
        cam.heartbeat.beat();
        if cam.stopping() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(200)));
    }
}

/// Keeps a steady frame rate: the next deadline advances by one period, and resynchronises instead
/// of bursting when the source fell behind.
pub struct Pacer {
    period: Duration,
    next: Instant,
}

impl Pacer {
    pub fn new(fps: f64) -> Self {
        Pacer {
            period: Duration::from_secs_f64(1.0 / fps),
            next: Instant::now(),
        }
    }
    /// Waits for the next frame time; false when shutting down.
    pub fn wait(&mut self, cam: &Camera) -> bool {
        let now = Instant::now();
        if self.next + self.period < now {
            self.next = now;
        }
        let ok = wait_until(cam, self.next);
        self.next += self.period;
        ok
    }
}

/// The capture thread's body: open, capture until failure, then offline with placeholder and retry.
///
/// A camera is online from its first real frame, not from a successful `open`: a device that
/// opens but never delivers (a V4L2 node whose sensor is dead) would otherwise flap online and
/// offline at every re-open, and its viewers would get the placeholder only once per flap. While
/// it is open and silent, it stays offline and viewers get "NO SIGNAL" about once a second.
pub fn run_capture(cam: Arc<Camera>, mut source: Box<dyn FrameSource>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let mut fps_window = (Instant::now(), 0u64);
    let mut last_placeholder: Option<Instant> = None;
    source.attach(&cam);
    let mut placeholder_due = |cam: &Camera| {
        if last_placeholder.map_or(true, |t| t.elapsed() >= PLACEHOLDER_EVERY) {
            cam.publish_placeholder();
            last_placeholder = Some(Instant::now());
        }
    };
    while !cam.stopping() {
        cam.heartbeat.beat();
        match source.open(&cam) {
            Ok(info) => {
                // Online once a real frame is published after this open.
                let mut pending = Some(info);
                let published_at_open = cam.counters.published.load(Ordering::Relaxed);
                loop {
                    cam.heartbeat.beat();
                    if cam.stopping() {
                        return;
                    }
                    update_fps(&cam, &mut fps_window);
                    if pending.is_some() && cam.state() == CameraState::Offline {
                        placeholder_due(&cam);
                    }
                    let r = source.capture(&cam);
                    if pending.is_some()
                        && cam.counters.published.load(Ordering::Relaxed) > published_at_open
                    {
                        if let Some(info) = pending.take() {
                            cam.set_online(info);
                            backoff.reset();
                        }
                    }
                    match r {
                        Ok(()) if cam.idle_due() => {
                            if !go_idle(&cam, source.as_mut()) {
                                return;
                            }
                            backoff.reset();
                            break;
                        }
                        Ok(()) => {}
                        Err(SourceError::InvalidFrame(why)) => {
                            cam.count_invalid();
                            tracing::debug!(camera = %cam.name, why, "invalid frame dropped");
                        }
                        Err(e) => {
                            cam.set_offline(&e.to_string());
                            source.close();
                            break;
                        }
                    }
                }
            }
            Err(e) => cam.set_offline(&e.to_string()),
        }
        cam.counters.fps_milli.store(0, Ordering::Relaxed);
        if cam.state() == CameraState::Idle {
            // Woken from idle: open again at once.
            continue;
        }
        if cam.idle_due() {
            // Offline and nobody wants it: stop retrying until someone does.
            if !go_idle(&cam, source.as_mut()) {
                return;
            }
            backoff.reset();
            continue;
        }
        // Offline: viewers stay connected and see "NO SIGNAL" about once a second.
        placeholder_due(&cam);
        if !wait_until(&cam, Instant::now() + backoff.next_delay()) {
            return;
        }
    }
}

/// A synthetic 64x48 camera for unit tests of the layers that consume frames.
#[cfg(test)]
pub(crate) fn test_camera(name: &str) -> Arc<Camera> {
    let spec = crate::config::spec::SourceSpec::Synthetic {
        width: 64,
        height: 48,
        fps: 30.0,
    };
    let health = crate::obs::health::Health::new();
    Arc::new(Camera::new(
        0,
        name.into(),
        spec,
        80,
        health.register(name),
        Arc::new(crate::shutdown::Shutdown::new()),
        Arc::new(crate::obs::events::EventBus::new(4)),
    ))
}

/// Capture on demand: closes the source, says `idle`, and parks until something wants frames (true)
/// or the camera stops (false).
fn go_idle(cam: &Camera, source: &mut dyn FrameSource) -> bool {
    source.close();
    cam.set_idle();
    cam.park_idle()
}

/// How often an offline camera's viewers get the "NO SIGNAL" frame (a little under a second, so
/// a capture window of about half a second still lands one each second).
const PLACEHOLDER_EVERY: Duration = Duration::from_millis(900);

fn update_fps(cam: &Camera, window: &mut (Instant, u64)) {
    let elapsed = window.0.elapsed();
    if elapsed >= Duration::from_secs(1) {
        let published = cam.counters.published.load(Ordering::Relaxed);
        let fps = published.saturating_sub(window.1) as f64 / elapsed.as_secs_f64();
        cam.counters
            .fps_milli
            .store((fps * 1000.0) as u64, Ordering::Relaxed);
        *window = (Instant::now(), published);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_at_one_second() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
