//! Typed stats: one plain `Copy` struct per subsystem, filled by that subsystem's `stats()` from its
//! own atomics, and the [`Snapshot`] of the whole daemon gathered from them once per request.

use std::time::Duration;

use serde::Serialize;

use super::histogram::HistogramStats;

/// What a camera is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    Starting,
    Online,
    Offline,
    /// Capture stopped because nothing wanted frames for `idle_stop_s` (capture on demand).
    Idle,
}

impl CameraState {
    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Starting => "starting",
            CameraState::Online => "online",
            CameraState::Offline => "offline",
            CameraState::Idle => "idle",
        }
    }
}

/// What a source negotiated when it opened.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StreamInfo {
    /// What the device delivers (`MJPG`, `YUYV`, ...) or the source kind (`synthetic`, `jpeg-files`).
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// JPEG bytes go out exactly as the device made them (no decode, no re-encode).
    pub passthrough: bool,
}

/// A camera's frame counters (all monotonic except `fps` and `last_frame_us`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CameraCounts {
    /// Frames the source delivered (valid or not).
    pub captured: u64,
    /// Real frames published (placeholders not included): its own counter, never a difference.
    pub published: u64,
    /// Frames lost: invalid, no free slot, encode failure, oversize.
    pub dropped: u64,
    /// Frames that were not valid JPEGs (a subset of `dropped`).
    pub invalid: u64,
    /// Placeholder frames published while offline.
    pub placeholders: u64,
    /// Real frames published per second over the last window.
    pub fps: f64,
    /// Capture time of the newest real frame, microseconds since the epoch (0: none yet).
    pub last_frame_us: u64,
}

/// A frame pool's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    pub slots: usize,
    pub slot_bytes: usize,
    /// Frames published into the pool, placeholders included.
    pub published: u64,
    /// Frames refused for being larger than a slot.
    pub oversize: u64,
    /// Frames dropped because every slot was leased or being written.
    pub no_free_slot: u64,
    /// Slots whose leases were revoked because the pool ran short (their holders were not reading).
    pub reclaimed: u64,
    /// Leases held right now.
    pub leased: usize,
}

/// One camera as the views show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CameraView {
    /// The camera's stable id (what sessions refer to); not shown.
    #[serde(skip)]
    pub id: usize,
    pub name: String,
    /// The source spec, as configured.
    pub source: String,
    pub state: CameraState,
    /// Why the camera is offline, or degraded while online (empty when it is fine).
    pub reason: String,
    pub info: StreamInfo,
    /// The frame rate the source is configured for, when it has one (judges staleness).
    pub nominal_fps: Option<f64>,
    pub counts: CameraCounts,
    pub pool: PoolStats,
    /// JPEG quality beltcam encodes this camera's frames at (unused when `info.passthrough`).
    pub quality: u8,
    /// Stream sessions on this camera.
    pub clients: usize,
    /// Age of the newest real frame when the snapshot was taken.
    pub last_frame_age: Option<Duration>,
    /// A relayed camera's upstream connection.
    pub upstream: Option<UpstreamStats>,
    /// A recording camera's recorder.
    pub recording: Option<RecordingStats>,
    /// A V4L2 camera's controls.
    pub controls: Option<ControlStats>,
}

/// A V4L2 camera's controls: set over HTTP, and its `[camera.controls]` table applied at each open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ControlStats {
    /// `PUT /cam/NAME/controls/CONTROL` that the device took.
    pub set: u64,
    /// Such `PUT`s that failed (no such control, out of range, device missing or busy).
    pub set_failed: u64,
    /// `[camera.controls]` entries set when the device opened (every open counts).
    pub applied: u64,
    /// Entries the device refused when it opened.
    pub apply_failed: u64,
}

/// A recording camera's recorder (`[camera.record]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecordingStats {
    /// Where its files go (`DIR/CAMERA`).
    pub dir: String,
    /// The JPEG quality frames are re-encoded at (`None`: the camera's bytes, untouched).
    pub quality: Option<u8>,
    /// Frames written since start.
    pub written: u64,
    /// Periods skipped because a write took longer than the period.
    pub skipped: u64,
    /// Writes that failed.
    pub errors: u64,
    /// Files removed by retention since start.
    pub removed: u64,
    /// Frames written untouched because re-encoding them (`quality`) failed.
    pub reencode_failed: u64,
    /// Files and bytes kept on disk now.
    pub files: u64,
    pub bytes: u64,
    /// Paused: less free space than `min_free_mb`.
    pub disk_low: bool,
    pub oldest_unix_s: Option<u64>,
    pub newest_unix_s: Option<u64>,
    pub last_error: String,
}

/// A relayed camera's upstream connection (`http://` sources).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamStats {
    pub connected: bool,
    /// Bytes received from the upstream (heads included).
    pub bytes: u64,
    /// Successful connections.
    pub connects: u64,
    /// Connections after the first.
    pub reconnects: u64,
    /// Bytes skipped because they were not part of any part.
    pub garbage_bytes: u64,
    /// Parts skipped because they were larger than a slot.
    pub oversize_parts: u64,
    /// Why the last connection failed or ended (empty when none has).
    pub last_error: String,
}

/// Connection and request counters of the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerCounts {
    pub accepted: u64,
    /// Connections accepted and not yet a session or finished (a gauge).
    pub pending: u64,
    pub pending_rejected: u64,
    pub requests: u64,
    pub bad_request: u64,
    pub too_large: u64,
    pub not_found: u64,
    pub method_not_allowed: u64,
    pub request_timeouts: u64,
    pub send_timeouts: u64,
    pub rejected_auth: u64,
    pub bytes_sent: u64,
}

/// One stream session as ustreamer's `/state` lists it in `clients_stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientStat {
    /// The session id (the one `/sessions` shows and `DELETE /sessions/ID` takes).
    pub id: u64,
    /// Index of the camera the session watches.
    pub camera: usize,
    /// Frames sent to this session in the last whole second.
    pub fps: u32,
    /// Its `/stream` options.
    pub options: ClientOptions,
}

/// A stream viewer's ustreamer options as `/state` reports them (set from `http::params`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientOptions {
    pub extra_headers: bool,
    /// As in effect (on by default for browsers).
    pub advance_headers: bool,
    pub dual_final_frames: bool,
    pub zero_data: bool,
    pub key: Option<String>,
}

/// The session table's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionStats {
    pub active: usize,
    pub capacity: usize,
    pub rejected_full: u64,
    pub opened: u64,
}

/// The per-address guard's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuardStats {
    pub tracked_ips: usize,
    pub rejected_rate: u64,
    pub rejected_per_ip: u64,
    pub evictions: u64,
}

/// The event bus's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventStats {
    pub subscribers: usize,
    pub emitted: u64,
    /// Events lost by subscribers that fell behind, summed.
    pub lost: u64,
    /// Subscriptions refused at the limit.
    pub rejected: u64,
}

/// The process's own figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessStats {
    pub rss_bytes: u64,
    pub open_fds: u64,
    /// Long-lived threads with a heartbeat.
    pub threads: usize,
}

/// A frame tap subscriber (`[tap]`, see `capture::tap`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TapConsumerStats {
    pub id: u64,
    pub camera: String,
    /// The rate it asked for (`None`: every frame).
    pub fps: Option<f64>,
    /// Frames announced to it.
    pub announced: u64,
    /// Announcements it missed because its socket was full (it was not reading).
    pub dropped: u64,
}

/// The frame tap (`[tap]`): its subscribers now, and its totals since start.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TapStats {
    /// Subscribers now, oldest first.
    pub consumers: Vec<TapConsumerStats>,
    /// Subscriptions accepted since start.
    pub subscribed: u64,
    /// Subscriptions refused (`ERR`: a bad line, an unknown camera, the subscriber limit).
    pub refused: u64,
    /// Every camera the tap serves, with totals kept as subscribers come and go.
    pub cameras: Vec<TapCameraStats>,
}

/// One camera as the tap serves it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TapCameraStats {
    pub camera: String,
    /// Subscribers now.
    pub consumers: usize,
    /// Announcements sent to its subscribers, and missed because a subscriber's socket was full.
    pub announced: u64,
    pub dropped: u64,
}

/// Everything the views show, gathered once.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// `io_uring` or `epoll`.
    pub backend: &'static str,
    pub uptime: Duration,
    pub cameras: Vec<CameraView>,
    pub sessions: SessionStats,
    /// Every stream session, oldest first.
    pub clients: Vec<ClientStat>,
    pub server: ServerCounts,
    pub guard: GuardStats,
    pub events: EventStats,
    pub process: ProcessStats,
    /// The first thread whose heartbeat stalled, if any.
    pub wedged: Option<String>,
    /// Latency of non-stream requests.
    pub latency: HistogramStats,
    /// The frame tap, when it is on.
    pub tap: Option<TapStats>,
}
