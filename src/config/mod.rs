//! Configuration: a TOML file, then command-line flags over it.
//!
//! Every field has a documented default, unknown keys are refused, and every error names the key and
//! the reason in one line (`config/beltcam.example.toml` shows them all).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod spec;

use crate::limits::{
    MAX_CAMERAS, MAX_CAMERA_NAME, MAX_EVENT_SUBSCRIBERS, MAX_LISTENERS, MAX_SERVING_THREADS,
    MAX_SESSIONS,
};

use spec::SourceSpec;

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/beltcam/beltcam.toml";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoBackendChoice {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    Uring,
    Epoll,
}

#[derive(Clone, Debug, Default, Deserialize)]
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
    /// `[[camera]]` tables. Empty: `/dev/video0` if present, else a synthetic test pattern.
    #[serde(default, rename = "camera")]
    pub cameras: Vec<CameraConfig>,
}

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent stream sessions from one client IP. Default 8.
    pub max_clients_per_ip: usize,
    /// New connections from one client IP per minute (sliding window). Default 120.
    pub connects_per_minute: u32,
    /// Concurrent `/events` subscribers. Default 32 (at most 64).
    pub max_event_subscribers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_clients_per_ip: 8,
            connects_per_minute: 120,
            max_event_subscribers: 32,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File of `user:password` lines; when set, viewers (streams, snapshots, the page, events) need
    /// HTTP Basic credentials from it. Default: none (open).
    pub viewers_file: Option<PathBuf>,
    /// File holding the admin bearer token for `/sessions`. Default: `$CREDENTIALS_DIRECTORY/admin-token`
    /// when systemd's LoadCredential provides it; with no token, admin endpoints answer only loopback.
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info` (default), `debug`, `trace`, or a tracing filter directive.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
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
    pub auth: AuthConfig,
    pub cameras: Vec<CameraSettings>,
}

#[derive(Clone, Debug)]
pub struct CameraSettings {
    pub name: String,
    pub source: SourceSpec,
    pub quality: u8,
    pub v4l2: V4l2Options,
}

/// Tunables of a V4L2 camera (config keys `buffers` and `encode_workers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V4l2Options {
    /// MMAP buffers requested from the driver (it may grant another number). Default 4.
    pub buffers: u32,
    /// Encode worker threads for raw formats. Default 2.
    pub workers: usize,
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
        if l.connects_per_minute == 0 {
            return Err(err("limits.connects_per_minute", "must be at least 1"));
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
            let v4l2 = V4l2Options {
                buffers: c.buffers,
                workers: c.encode_workers,
            };
            v4l2.validate().map_err(|(k, r)| err(key(k), r))?;
            cameras.push(CameraSettings {
                name: c.name.clone(),
                source,
                quality: c.quality,
                v4l2,
            });
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
            auth: self.auth.clone(),
            cameras,
        })
    }
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
    fn duplicate_camera_names_refused() {
        let t = "[[camera]]\nname=\"a\"\nsource=\"synthetic\"\n[[camera]]\nname=\"a\"\nsource=\"synthetic\"\n";
        let e = Config::parse(t).unwrap().validate().unwrap_err();
        assert_eq!(e.key, "camera[1].name");
    }
}
