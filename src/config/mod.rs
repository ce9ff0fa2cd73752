//! Configuration: a TOML file, then command-line flags over it.
//!
//! Every field has a documented default, unknown keys are refused, and every error names the key and
//! the reason in one line (`config/beltcam.example.toml` shows them all).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod budget;
pub mod spec;

use crate::limits::{
    MAX_CAMERAS, MAX_CAMERA_NAME, MAX_EVENT_SUBSCRIBERS, MAX_LISTENERS, MAX_SERVING_THREADS,
    MAX_SESSIONS,
};
use budget::{Budget, CameraLoad, DEFAULT_MEMORY_BUDGET_MB};

use spec::SourceSpec;

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/beltcam/beltcam.toml";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoBackendChoice {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    Uring,
    Epoll,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[tap]`: the local frame tap for ML processes on the box (docs/tap.md). Default: off.
    #[serde(default)]
    pub tap: TapConfig,
    /// `[[camera]]` tables. Empty: `/dev/video0` if present, else a synthetic test pattern.
    #[serde(default, rename = "camera")]
    pub cameras: Vec<CameraConfig>,
}

/// `[tap]`: the local frame tap (`docs/tap.md`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TapConfig {
    /// The Unix socket subscribers connect to, e.g. `/run/beltcam/tap.sock`. Unset: no tap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// The group (name or number) whose members may connect (the socket is mode 0660). Default:
    /// the daemon's own group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// `[tap]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapSettings {
    pub socket: PathBuf,
    pub group: Option<u32>,
}

impl TapConfig {
    fn validate(&self) -> Result<Option<TapSettings>, ConfigError> {
        let Some(socket) = &self.socket else {
            if self.group.is_some() {
                return Err(err("tap.group", "needs tap.socket"));
            }
            return Ok(None);
        };
        if !socket.is_absolute() || socket.as_os_str().len() > 100 {
            return Err(err(
                "tap.socket",
                format!(
                    "{} must be an absolute path of at most 100 bytes",
                    socket.display()
                ),
            ));
        }
        let group = match &self.group {
            None => None,
            Some(g) => Some(match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => match nix::unistd::Group::from_name(g) {
                    Ok(Some(grp)) => grp.gid.as_raw(),
                    _ => return Err(err("tap.group", format!("no group {g:?}"))),
                },
            }),
        };
        Ok(Some(TapSettings {
            socket: socket.clone(),
            group,
        }))
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to listen on. Default `["0.0.0.0:8080"]`. Ignored under socket activation.
    pub listen: Vec<String>,
    /// `auto` (default), `uring` or `epoll`.
    pub io_backend: IoBackendChoice,
    /// Serving threads, one io runtime each. Default 0: one per core.
    pub threads: usize,
    /// Concurrent stream sessions (at most the compiled capacity, 1024). Default 1024.
    pub max_sessions: usize,
    /// A frame send that makes no progress for this long ends the session. Default 10000.
    pub send_timeout_ms: u64,
    /// A request head must arrive within this. Default 5000.
    pub request_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this. Default 5000.
    pub keepalive_timeout_ms: u64,
    /// `/snapshot` waits this long for a fresh frame before answering 503. Default 2000.
    pub snapshot_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec!["0.0.0.0:8080".into()],
            io_backend: IoBackendChoice::Auto,
            threads: 0,
            max_sessions: MAX_SESSIONS,
            send_timeout_ms: 10_000,
            request_timeout_ms: 5_000,
            keepalive_timeout_ms: 5_000,
            snapshot_timeout_ms: 2_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent stream sessions from one client IP. Default 8.
    pub max_clients_per_ip: usize,
    /// New connections from one client IP per minute (sliding window). Default 120.
    pub connects_per_minute: u32,
    /// Concurrent `/events` subscribers. Default 32 (at most 64).
    pub max_event_subscribers: usize,
    /// Worst-case memory the configuration may need, in MiB (`check-config` prints the estimate);
    /// a configuration above it is refused. Default 200: the shipped unit's `MemoryMax=256M` less
    /// headroom for what is not itemised.
    pub memory_budget_mb: u64,
    /// Reverse proxies (exact addresses) whose `Forwarded` / `X-Forwarded-For` name the client:
    /// per-address limits, `/sessions` and the admin loopback rule then apply to that client.
    /// Their own connections are exempt from `connects_per_minute`. Default none (at most 64).
    pub trusted_proxies: Vec<IpAddr>,
    /// Monitoring hosts (exact addresses) exempt from `connects_per_minute` (pollers that do not
    /// keep connections alive). Default none (at most 64).
    pub monitoring: Vec<IpAddr>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_clients_per_ip: 8,
            connects_per_minute: 120,
            max_event_subscribers: 32,
            memory_budget_mb: DEFAULT_MEMORY_BUDGET_MB,
            trusted_proxies: Vec::new(),
            monitoring: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File of `user:password` lines; when set, viewers (streams, snapshots, the page, events) need
    /// HTTP Basic credentials from it. Default: none (open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewers_file: Option<PathBuf>,
    /// File holding the admin bearer token for `/sessions`. Default: `$CREDENTIALS_DIRECTORY/admin-token`
    /// when systemd's LoadCredential provides it; with no token, admin endpoints answer only loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info` (default), `debug`, `trace`, `off`, or tracing filter directives
    /// such as `beltcam=debug,info` (every directive must name one of those levels).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Name in URLs (`/cam/NAME/stream`) and labels: letters, digits, `-`, `_`; at most 32.
    pub name: String,
    /// Source spec: `synthetic[:WxH@FPS]`, `dir:PATH[@FPS]`, `v4l2:DEVICE[:WxH@FPS[:FORMAT]]`.
    pub source: String,
    /// JPEG quality for frames beltcam encodes (1..=100). Default 80.
    #[serde(default = "default_quality")]
    pub quality: u8,
    /// V4L2 MMAP buffers to request (2..=32). Default 4.
    #[serde(default = "default_buffers")]
    pub buffers: u32,
    /// Encode worker threads for raw (non-MJPEG) V4L2 formats (1..=8). Default 2.
    #[serde(default = "default_encode_workers")]
    pub encode_workers: usize,
    /// Capture on demand: stop capturing after this many seconds without a viewer, snapshot or
    /// recorder wanting frames (0: always on, the default); the next one starts it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub idle_stop_s: f64,
    /// `[camera.record]`: keep frames on disk. Default: not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordConfig>,
    /// `[camera.controls]`: V4L2 control name -> integer value, set at start and after every
    /// reconnect (`v4l2:` cameras only). Names as `GET /cam/NAME/controls` and `v4l2-ctl
    /// --list-ctrls` show them (`brightness`, `white_balance_automatic`); at most 32. Default none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub controls: BTreeMap<String, i64>,
}

/// Most entries in one `[camera.controls]` table.
pub const MAX_CONTROL_SETTINGS: usize = 32;

/// A control name as V4L2 names normalise (`capture::v4l2::controls::normalise`): 1 to 31
/// lowercase ASCII letters, digits and single `_` between them.
fn validate_control_name(name: &str) -> Result<(), String> {
    let ok = (1..=31).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with('_')
        && !name.ends_with('_')
        && !name.contains("__");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a control name (lowercase letters, digits and `_`, as \
             `GET /cam/NAME/controls` lists them, e.g. `brightness`)"
        ))
    }
}

/// `[camera.record]`: frames kept on disk at a fixed rate, with retention and a free-space guard.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// Frames a second to keep (0.001..=30). Default 1.
    #[serde(default = "default_record_fps")]
    pub fps: f64,
    /// Folder (each camera writes under DIR/NAME/). Default: `$STATE_DIRECTORY/recordings` (the
    /// unit's /var/lib/beltcam), else /var/lib/beltcam/recordings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Delete files older than this many hours (0: no age limit). Default 168 (a week).
    #[serde(default = "default_keep_hours")]
    pub keep_hours: f64,
    /// Keep at most this many MiB, oldest removed first (0: no size limit). Default 1024.
    #[serde(default = "default_keep_mb")]
    pub keep_mb: f64,
    /// Pause recording while the file system has less free than this many MiB. Default 256.
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: f64,
    /// Re-encode each recorded frame at this JPEG quality (1..=100) to save disk. Default: none,
    /// the camera's bytes are written untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn default_record_fps() -> f64 {
    1.0
}
fn default_keep_hours() -> f64 {
    168.0
}
fn default_keep_mb() -> f64 {
    1024.0
}
fn default_min_free_mb() -> f64 {
    256.0
}

/// `[camera.record]`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordSettings {
    pub fps: f64,
    pub dir: PathBuf,
    pub keep_age: Option<Duration>,
    /// 0: no size limit.
    pub keep_bytes: u64,
    pub min_free_bytes: u64,
    /// Re-encode at this JPEG quality; `None`: the camera's bytes, untouched.
    pub quality: Option<u8>,
}

impl RecordConfig {
    fn validate(&self, key: impl Fn(&str) -> String) -> Result<RecordSettings, ConfigError> {
        let range = |k: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(err(key(k), format!("must be {lo}..={hi} (got {v})")))
            }
        };
        let fps = range("record.fps", self.fps, 0.001, 30.0)?;
        let hours = range("record.keep_hours", self.keep_hours, 0.0, 24.0 * 3650.0)?;
        let mb = range("record.keep_mb", self.keep_mb, 0.0, 16.0 * 1024.0 * 1024.0)?;
        let free = range(
            "record.min_free_mb",
            self.min_free_mb,
            0.0,
            16.0 * 1024.0 * 1024.0,
        )?;
        if let Some(q) = self.quality.filter(|q| !(1..=100).contains(q)) {
            return Err(err(
                key("record.quality"),
                format!("must be 1..=100 (got {q})"),
            ));
        }
        let dir = match &self.dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => {
                return Err(err(
                    key("record.dir"),
                    format!("{} is not an absolute path", d.display()),
                ))
            }
            None => std::env::var_os("STATE_DIRECTORY")
                .and_then(|v| std::env::split_paths(&v).next())
                .unwrap_or_else(|| PathBuf::from("/var/lib/beltcam"))
                .join("recordings"),
        };
        Ok(RecordSettings {
            fps,
            dir,
            keep_age: (hours > 0.0).then(|| Duration::from_secs_f64(hours * 3600.0)),
            keep_bytes: (mb * 1024.0 * 1024.0) as u64,
            min_free_bytes: (free * 1024.0 * 1024.0) as u64,
            quality: self.quality,
        })
    }
}

fn default_quality() -> u8 {
    80
}

pub fn default_buffers() -> u32 {
    4
}

pub fn default_encode_workers() -> usize {
    2
}

impl CameraConfig {
    /// A camera with every optional key at its default.
    pub fn new(name: String, source: String) -> Self {
        CameraConfig {
            name,
            source,
            quality: default_quality(),
            buffers: default_buffers(),
            encode_workers: default_encode_workers(),
            idle_stop_s: 0.0,
            record: None,
            controls: BTreeMap::new(),
        }
    }
}

/// A config error: which key, and why. Displays as one line.
#[derive(Debug, thiserror::Error)]
#[error("config error: {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn err(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Settings after validation, in the types the daemon uses.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    pub io_backend: IoBackendChoice,
    pub threads: usize,
    pub max_sessions: usize,
    pub send_timeout: Duration,
    pub request_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub snapshot_timeout: Duration,
    pub log_level: String,
    pub max_clients_per_ip: usize,
    pub connects_per_minute: u32,
    pub max_event_subscribers: usize,
    /// `[limits] trusted_proxies` and `monitoring` (see `LimitsConfig`).
    pub trusted_proxies: Vec<IpAddr>,
    pub monitoring: Vec<IpAddr>,
    pub auth: AuthConfig,
    pub cameras: Vec<CameraSettings>,
    /// The worst-case memory of this configuration, and the budget it was checked against.
    pub budget: Budget,
    pub memory_budget_mb: u64,
    /// The frame tap, when `[tap] socket` is set.
    pub tap: Option<TapSettings>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CameraSettings {
    pub name: String,
    pub source: SourceSpec,
    pub quality: u8,
    pub v4l2: V4l2Options,
    /// Capture on demand (`idle_stop_s`); `None`: always on.
    pub idle_stop: Option<Duration>,
    pub record: Option<RecordSettings>,
}

/// Tunables of a V4L2 camera (config keys `buffers`, `encode_workers` and `[camera.controls]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V4l2Options {
    /// MMAP buffers requested from the driver (it may grant another number). Default 4.
    pub buffers: u32,
    /// Encode worker threads for raw formats. Default 2.
    pub workers: usize,
    /// `[camera.controls]`, applied at every open. Default none.
    pub controls: Vec<(String, i64)>,
}

impl V4l2Options {
    /// Checks the ranges (for the config's validation): the reason names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(2..=32).contains(&self.buffers) {
            return Err(("buffers", format!("must be 2..=32 (got {})", self.buffers)));
        }
        if !(1..=8).contains(&self.workers) {
            return Err((
                "encode_workers",
                format!("must be 1..=8 (got {})", self.workers),
            ));
        }
        Ok(())
    }
}

impl Default for V4l2Options {
    fn default() -> Self {
        V4l2Options {
            buffers: 4,
            workers: 2,
            controls: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and parses a TOML file; `None` with no `--config` and no default file means defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(e) => return Err(err(path.display().to_string(), e.to_string())),
        };
        Self::parse(&text).map_err(|e| err(format!("{}: {}", path.display(), e.key), e.reason))
    }

    /// Parses TOML text; errors name the key path (`camera[0].quality`) and the reason.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string().replace(".camera[", "camera[");
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let key = match (path.as_str(), line) {
                (".", Some(l)) | ("", Some(l)) => format!("line {l}"),
                (p, Some(l)) => format!("{p} (line {l})"),
                (p, None) => p.to_string(),
            };
            err(key, inner.message().replace('\n', " "))
        })
    }

    /// Checks every value and converts to `Settings`.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let s = &self.server;
        if s.listen.is_empty() || s.listen.len() > MAX_LISTENERS {
            return Err(err(
                "server.listen",
                format!("needs 1 to {MAX_LISTENERS} addresses"),
            ));
        }
        let listen = s
            .listen
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<SocketAddr>().map_err(|_| {
                    err(
                        format!("server.listen[{i}]"),
                        format!("{a:?} is not ADDR:PORT"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The second bind of one address fails with EADDRINUSE at start-up (exit 1, "retry"):
        // it is a configuration error, refused here (exit 2, "don't restart").
        for (i, a) in listen.iter().enumerate() {
            if listen[..i].contains(a) {
                return Err(err(
                    format!("server.listen[{i}]"),
                    format!("{a} is listed twice"),
                ));
            }
        }
        validate_log_level(&self.log.level).map_err(|r| err("log.level", r))?;
        if s.threads > MAX_SERVING_THREADS {
            return Err(err(
                "server.threads",
                format!("at most {MAX_SERVING_THREADS}"),
            ));
        }
        if s.max_sessions == 0 || s.max_sessions > MAX_SESSIONS {
            return Err(err(
                "server.max_sessions",
                format!("must be 1..={MAX_SESSIONS} (the compiled capacity)"),
            ));
        }
        for (key, v) in [
            ("server.send_timeout_ms", s.send_timeout_ms),
            ("server.request_timeout_ms", s.request_timeout_ms),
            ("server.keepalive_timeout_ms", s.keepalive_timeout_ms),
            ("server.snapshot_timeout_ms", s.snapshot_timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&v) {
                return Err(err(key, "must be 1..=3600000 milliseconds"));
            }
        }
        let l = &self.limits;
        if l.max_clients_per_ip == 0 || l.max_clients_per_ip > MAX_SESSIONS {
            return Err(err(
                "limits.max_clients_per_ip",
                format!("must be 1..={MAX_SESSIONS}"),
            ));
        }
        if !(1..=1_000_000).contains(&l.connects_per_minute) {
            return Err(err("limits.connects_per_minute", "must be 1..=1000000"));
        }
        if !(MIN_MEMORY_BUDGET_MB..=MAX_MEMORY_BUDGET_MB).contains(&l.memory_budget_mb) {
            return Err(err(
                "limits.memory_budget_mb",
                format!("must be {MIN_MEMORY_BUDGET_MB}..={MAX_MEMORY_BUDGET_MB}"),
            ));
        }
        for (key, list) in [
            ("limits.trusted_proxies", &l.trusted_proxies),
            ("limits.monitoring", &l.monitoring),
        ] {
            if list.len() > MAX_LISTED_ADDRESSES {
                return Err(err(
                    key,
                    format!("at most {MAX_LISTED_ADDRESSES} addresses"),
                ));
            }
        }
        if l.max_event_subscribers == 0 || l.max_event_subscribers > MAX_EVENT_SUBSCRIBERS {
            return Err(err(
                "limits.max_event_subscribers",
                format!("must be 1..={MAX_EVENT_SUBSCRIBERS}"),
            ));
        }
        if self.cameras.len() > MAX_CAMERAS {
            return Err(err("camera", format!("at most {MAX_CAMERAS} cameras")));
        }
        let mut cameras = Vec::with_capacity(self.cameras.len());
        for (i, c) in self.cameras.iter().enumerate() {
            let key = |k: &str| format!("camera[{i}].{k}");
            validate_name(&c.name).map_err(|r| err(key("name"), r))?;
            if self.cameras[..i].iter().any(|o| o.name == c.name) {
                return Err(err(key("name"), format!("{:?} is used twice", c.name)));
            }
            let source = SourceSpec::parse(&c.source).map_err(|r| err(key("source"), r))?;
            if !(1..=100).contains(&c.quality) {
                return Err(err(
                    key("quality"),
                    format!("must be 1..=100 (got {})", c.quality),
                ));
            }
            if !c.controls.is_empty() && !matches!(source, SourceSpec::V4l2 { .. }) {
                return Err(err(key("controls"), "controls apply to v4l2: cameras only"));
            }
            if c.controls.len() > MAX_CONTROL_SETTINGS {
                return Err(err(
                    key("controls"),
                    format!("at most {MAX_CONTROL_SETTINGS} controls"),
                ));
            }
            for name in c.controls.keys() {
                validate_control_name(name)
                    .map_err(|r| err(key(&format!("controls.{name}")), r))?;
            }
            let v4l2 = V4l2Options {
                buffers: c.buffers,
                workers: c.encode_workers,
                controls: c.controls.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            };
            v4l2.validate().map_err(|(k, r)| err(key(k), r))?;
            let record = c.record.as_ref().map(|r| r.validate(key)).transpose()?;
            if !(c.idle_stop_s.is_finite() && (0.0..=86_400.0).contains(&c.idle_stop_s)) {
                return Err(err(
                    key("idle_stop_s"),
                    format!("must be 0..=86400 seconds (got {})", c.idle_stop_s),
                ));
            }
            let idle_stop = (c.idle_stop_s > 0.0).then(|| Duration::from_secs_f64(c.idle_stop_s));
            cameras.push(CameraSettings {
                name: c.name.clone(),
                source,
                quality: c.quality,
                v4l2,
                idle_stop,
                record,
            });
        }
        let tap = self.tap.validate()?;
        let mut budget = estimate_budget(&cameras);
        if tap.is_some() {
            let n = cameras.len().max(1) as u64;
            let bytes = n * (crate::limits::TAP_RING_SLOTS * crate::limits::SLOT_BYTES) as u64;
            budget.items.push(budget::Item {
                what: format!(
                    "frame tap rings ({n} cameras x {} slots, made when first tapped)",
                    crate::limits::TAP_RING_SLOTS
                ),
                bytes,
            });
            budget.total_bytes += bytes;
        }
        if budget.total_mib() > l.memory_budget_mb {
            let big = budget
                .items
                .iter()
                .max_by_key(|i| i.bytes)
                .map(|i| format!("; largest: {} = {} MiB", i.what, i.bytes >> 20))
                .unwrap_or_default();
            return Err(err(
                "limits.memory_budget_mb",
                format!(
                    "the configuration may need {} MiB, more than the budget of {} MiB \
                     (fewer or smaller cameras, fewer encode_workers, or raise the budget \
                     together with the unit's MemoryMax){big}",
                    budget.total_mib(),
                    l.memory_budget_mb
                ),
            ));
        }
        Ok(Settings {
            listen,
            io_backend: s.io_backend,
            threads: s.threads,
            max_sessions: s.max_sessions,
            send_timeout: Duration::from_millis(s.send_timeout_ms),
            request_timeout: Duration::from_millis(s.request_timeout_ms),
            keepalive_timeout: Duration::from_millis(s.keepalive_timeout_ms),
            snapshot_timeout: Duration::from_millis(s.snapshot_timeout_ms),
            log_level: self.log.level.clone(),
            max_clients_per_ip: l.max_clients_per_ip,
            connects_per_minute: l.connects_per_minute,
            max_event_subscribers: l.max_event_subscribers,
            trusted_proxies: l.trusted_proxies.iter().map(|a| a.to_canonical()).collect(),
            monitoring: l.monitoring.iter().map(|a| a.to_canonical()).collect(),
            auth: self.auth.clone(),
            cameras,
            budget,
            memory_budget_mb: l.memory_budget_mb,
            tap,
        })
    }
}

/// Longest `[limits] trusted_proxies` or `monitoring` list (each is searched per connection).
pub const MAX_LISTED_ADDRESSES: usize = 64;

/// Bounds of `[limits] memory_budget_mb`.
pub const MIN_MEMORY_BUDGET_MB: u64 = 16;
pub const MAX_MEMORY_BUDGET_MB: u64 = 1 << 20;

/// The worst-case memory of these cameras (none configured: the default camera, counted as the
/// costlier of its two forms, a raw `/dev/video0` at the default size).
pub fn estimate_budget(cameras: &[CameraSettings]) -> Budget {
    let load = |c: &CameraSettings| match &c.source {
        SourceSpec::Synthetic { width, height, .. } => CameraLoad::Synthetic {
            width: *width,
            height: *height,
        },
        SourceSpec::Dir { .. } => CameraLoad::Dir,
        SourceSpec::Http(_) => CameraLoad::Relay,
        SourceSpec::V4l2 { mode, format, .. } => {
            // No size asked: negotiation aims at DEFAULT_SIZE. No format asked: MJPEG is
            // preferred, but a camera without it is encoded from raw, so count that.
            let (width, height) = mode.map(|m| (m.0, m.1)).unwrap_or(spec::DEFAULT_V4L2_SIZE);
            let raw = !format
                .as_deref()
                .is_some_and(|f| f == "MJPG" || f == "JPEG");
            CameraLoad::V4l2 {
                width,
                height,
                raw,
                workers: c.v4l2.workers,
            }
        }
    };
    let mut loads: Vec<(String, CameraLoad)> =
        cameras.iter().map(|c| (c.name.clone(), load(c))).collect();
    if loads.is_empty() {
        let (width, height) = spec::DEFAULT_V4L2_SIZE;
        loads.push((
            "cam0 (default)".into(),
            CameraLoad::V4l2 {
                width,
                height,
                raw: true,
                workers: default_encode_workers(),
            },
        ));
    }
    let mut b = budget::estimate(&loads, budget::SESSION_TABLE_BYTES);
    for c in cameras.iter() {
        let Some(r) = &c.record else { continue };
        let bytes = crate::limits::MAX_JPEG_BYTES as u64;
        b.items.push(budget::Item {
            what: format!("camera {}: recording buffer", c.name),
            bytes,
        });
        b.total_bytes += bytes;
        if r.quality.is_some() {
            // The decoded planes (4:4:4 at worst: 3 bytes a pixel) and the re-encoded JPEG.
            let bytes = (crate::limits::RECORD_REENCODE_MAX_PIXELS * 3
                + crate::limits::MAX_JPEG_BYTES) as u64;
            b.items.push(budget::Item {
                what: format!("camera {}: recording re-encode buffers", c.name),
                bytes,
            });
            b.total_bytes += bytes;
        }
    }
    b
}

/// Level words a filter directive may use.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Accepts a level or tracing filter directives (`beltcam=debug,info`), each of which must name a
/// known level: tracing itself takes `warnn` as a target name and then logs nothing at all.
pub fn validate_log_level(level: &str) -> Result<(), String> {
    let is_level = |w: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(w.trim()));
    if level.trim().is_empty() {
        return Err(format!("is empty (expected one of {})", LEVELS.join(", ")));
    }
    for d in level.split(',') {
        let word = match d.rsplit_once('=') {
            Some((target, lvl)) if !target.trim().is_empty() => lvl,
            _ if d.contains('=') => {
                return Err(format!("{d:?} is not a TARGET=LEVEL directive"));
            }
            _ => d,
        };
        if !is_level(word) {
            return Err(format!(
                "{:?} is not a level (expected one of {}, or TARGET=LEVEL directives)",
                word.trim(),
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("{level:?} is not a tracing filter ({e})"))
}

pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CAMERA_NAME {
        return Err(format!("must be 1 to {MAX_CAMERA_NAME} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{name:?} may only hold letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_defaults() {
        let s = Config::parse("").unwrap().validate().unwrap();
        assert_eq!(s.listen, vec!["0.0.0.0:8080".parse().unwrap()]);
        assert_eq!(s.send_timeout, Duration::from_secs(10));
        assert!(s.cameras.is_empty());
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config/beltcam.example.toml");
        let s = Config::parse(text).unwrap().validate().unwrap();
        assert!(!s.cameras.is_empty());
    }

    #[test]
    fn trusted_proxies_and_monitoring_are_bounded_address_lists() {
        let s = Config::parse(
            "[limits]\ntrusted_proxies = [\"127.0.0.2\", \"::ffff:10.0.0.1\", \"::1\"]\nmonitoring = [\"10.1.1.1\"]\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        let ips: Vec<IpAddr> = ["127.0.0.2", "10.0.0.1", "::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            s.trusted_proxies, ips,
            "IPv4-mapped addresses are canonical"
        );
        assert_eq!(s.monitoring, vec!["10.1.1.1".parse::<IpAddr>().unwrap()]);
        let e = Config::parse("[limits]\nmonitoring = [\"10.1.1\"]\n").unwrap_err();
        assert!(e.to_string().contains("monitoring"), "{e}");
        let many: Vec<String> = (0..65).map(|i| format!("\"10.0.0.{i}\"")).collect();
        let text = format!("[limits]\ntrusted_proxies = [{}]\n", many.join(", "));
        let e = Config::parse(&text).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("limits.trusted_proxies"), "{e}");
    }

    #[test]
    fn camera_controls_are_a_bounded_table_of_names() {
        let cam = |src: &str, table: &str| {
            format!("[[camera]]\nname = \"a\"\nsource = \"{src}\"\n[camera.controls]\n{table}")
        };
        let s = Config::parse(&cam(
            "v4l2:/dev/video0",
            "brightness = 200\nwhite_balance_automatic = 0\nhue = -5\n",
        ))
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(
            s.cameras[0].v4l2.controls,
            [
                ("brightness".to_string(), 200),
                ("hue".to_string(), -5),
                ("white_balance_automatic".to_string(), 0)
            ]
        );
        let none = Config::parse("[[camera]]\nname = \"a\"\nsource = \"/dev/video0\"\n")
            .unwrap()
            .validate()
            .unwrap();
        assert!(none.cameras[0].v4l2.controls.is_empty());
        for (text, key) in [
            (cam("synthetic", "brightness = 1\n"), "camera[0].controls"),
            (
                cam("v4l2:/dev/video0", "\"White Balance\" = 1\n"),
                "camera[0].controls.White Balance",
            ),
            (
                cam("v4l2:/dev/video0", "a__b = 1\n"),
                "camera[0].controls.a__b",
            ),
            (
                cam("v4l2:/dev/video0", &format!("{} = 1\n", "y".repeat(32))),
                "camera[0].controls.yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy",
            ),
            (
                cam(
                    "v4l2:/dev/video0",
                    &(0..33).map(|i| format!("c{i} = 1\n")).collect::<String>(),
                ),
                "camera[0].controls",
            ),
        ] {
            let e = Config::parse(&text).unwrap().validate().unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        // Values are integers.
        let e = Config::parse(&cam("v4l2:/dev/video0", "brightness = \"high\"\n")).unwrap_err();
        assert!(e.to_string().contains("brightness"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_in_one_line() {
        let e = Config::parse("[server]\nlisten = []\nlistn = 3\n").unwrap_err();
        let line = e.to_string();
        assert!(line.contains("listn"), "{line}");
        assert!(line.contains("line 3"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[[camera]]\nname = \"a\"\nsource = \"synthetic\"\nquality = 0\n",
                "camera[0].quality",
            ),
            (
                "[[camera]]\nname = \"a b\"\nsource = \"synthetic\"\n",
                "camera[0].name",
            ),
            (
                "[[camera]]\nname = \"a\"\nsource = \"webcam\"\n",
                "camera[0].source",
            ),
            ("[server]\nlisten = [\"nope\"]\n", "server.listen[0]"),
            ("[server]\nmax_sessions = 5000\n", "server.max_sessions"),
            ("[server]\nio_backend = \"kqueue\"\n", "server.io_backend"),
            ("[server]\nthreads = -1\n", "server.threads"),
            (
                "[limits]\nmax_clients_per_ip = 0\n",
                "limits.max_clients_per_ip",
            ),
            (
                "[limits]\nconnects_per_minute = 0\n",
                "limits.connects_per_minute",
            ),
            ("[auth]\nadmin_token = \"x\"\n", "auth.admin_token"),
        ];
        for (text, key) in cases {
            let e = Config::parse(text).and_then(|c| c.validate()).unwrap_err();
            assert!(e.key.starts_with(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn log_levels_and_directives_accepted_typos_refused() {
        for ok in [
            "info",
            "WARN",
            "off",
            "beltcam=debug,info",
            "beltcam::capture=trace",
        ] {
            assert!(validate_log_level(ok).is_ok(), "{ok}");
        }
        for bad in [
            "warnn",
            "loud",
            "",
            " ",
            "beltcam=loud",
            "info,",
            "=info",
            "beltcam",
        ] {
            assert!(validate_log_level(bad).is_err(), "{bad:?}");
        }
        let e = Config::parse("[log]\nlevel = \"warnn\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "log.level");
        assert!(
            e.to_string().starts_with("config error: log.level: "),
            "{e}"
        );
    }

    #[test]
    fn numbers_are_bounded_at_parse_time() {
        for (text, key) in [
            (
                "[[camera]]\nname=\"a\"\nsource=\"synthetic:640x480@1e-300\"\n",
                "camera[0].source",
            ),
            (
                "[[camera]]\nname=\"a\"\nsource=\"synthetic:8192x8192\"\n",
                "camera[0].source",
            ),
            (
                "[limits]\nconnects_per_minute = 4000000000\n",
                "limits.connects_per_minute",
            ),
            (
                "[limits]\nmemory_budget_mb = 1\n",
                "limits.memory_budget_mb",
            ),
            ("[server]\nsend_timeout_ms = 0\n", "server.send_timeout_ms"),
            ("[server]\nthreads = 65\n", "server.threads"),
        ] {
            let e = Config::parse(text).unwrap().validate().unwrap_err();
            assert_eq!(e.key, key, "{text:?}: {e}");
        }
    }

    #[test]
    fn duplicate_listen_addresses_refused() {
        let t = "[server]\nlisten = [\"127.0.0.1:9\", \"[::1]:9\", \"127.0.0.1:9\"]\n";
        let e = Config::parse(t).unwrap().validate().unwrap_err();
        assert_eq!(e.key, "server.listen[2]");
    }

    #[test]
    fn over_budget_configuration_refused_and_names_the_budget() {
        let mut t = String::new();
        for i in 0..8 {
            t += &format!("[[camera]]\nname=\"c{i}\"\nsource=\"v4l2:/dev/video{i}:1920x1080@30:YUYV\"\nencode_workers = 8\n");
        }
        let e = Config::parse(&t).unwrap().validate().unwrap_err();
        assert_eq!(e.key, "limits.memory_budget_mb", "{e}");
        // The same cameras fit a budget raised to their estimate.
        let need = e
            .reason
            .split_whitespace()
            .nth(4)
            .unwrap()
            .parse::<u64>()
            .unwrap();
        let t = format!("[limits]\nmemory_budget_mb = {need}\n{t}");
        let s = Config::parse(&t).unwrap().validate().unwrap();
        assert_eq!(s.budget.total_mib(), need);
    }

    #[test]
    fn effective_config_prints_as_toml_that_parses_back() {
        let text = include_str!("../../config/beltcam.example.toml");
        let cfg = Config::parse(text).unwrap();
        let out = toml::to_string(&cfg).unwrap();
        let back = Config::parse(&out).unwrap();
        assert_eq!(toml::to_string(&back).unwrap(), out);
        assert!(out.contains("[[camera]]"), "{out}");
    }

    #[test]
    fn duplicate_camera_names_refused() {
        let t = "[[camera]]\nname=\"a\"\nsource=\"synthetic\"\n[[camera]]\nname=\"a\"\nsource=\"synthetic\"\n";
        let e = Config::parse(t).unwrap().validate().unwrap_err();
        assert_eq!(e.key, "camera[1].name");
    }
}
