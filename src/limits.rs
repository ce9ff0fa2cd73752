//! Compile-time capacities, in one place.
//!
//! beltcam's memory is bounded by construction: every table, queue and buffer below is sized here and
//! allocated once at start-up. `/stats` reports the pool figures so operators can see them.

/// Frame slots per camera. A session holds a lease only while its write is in flight (it waits for the
/// socket to drain before taking one), so a handful of slots serve any number of viewers that read;
/// a peer that stops reading mid-frame keeps its lease until the pool runs short and revokes it (see
/// `pool`). The rest absorb encode workers writing ahead and the newest frame always being readable.
pub const POOL_SLOTS: usize = 8;

/// Bytes per slot, including the pre-rendered multipart part header and trailer around the JPEG.
pub const SLOT_BYTES: usize = 2 * 1024 * 1024;

/// Room reserved in front of the JPEG for the multipart part header (boundary, Content-Type,
/// Content-Length, X-Timestamp, X-Frame). The longest header rendered is well under this.
pub const PART_HEADER_MAX: usize = 256;

/// Bytes after the JPEG: the part's CRLF and the boundary (`http::multipart::PART_TRAILER`, whose
/// length the pool checks against this at compile time).
pub const PART_TRAILER_LEN: usize = 22;

/// Largest JPEG a slot can hold; a bigger frame is rejected and counted as `oversize`.
pub const MAX_JPEG_BYTES: usize = SLOT_BYTES - PART_HEADER_MAX - PART_TRAILER_LEN;

/// Concurrent viewer sessions across all cameras (the session table's capacity).
pub const MAX_SESSIONS: usize = 1024;

/// Connections accepted but not yet admitted as sessions (reading a request, or idle between
/// keep-alive requests). When full, the longest-idle keep-alive connection makes room; with none
/// idle, a newcomer gets 503: a flood of idle sockets cannot pin memory or fds, nor lock anyone out.
pub const MAX_PENDING_CONNECTIONS: usize = 256;

/// Idle keep-alive connections one client address may keep open; one more closes its oldest.
pub const MAX_IDLE_KEEPALIVE_PER_IP: usize = 16;

/// `/events` subscribers one client address may hold.
pub const MAX_EVENT_SUBSCRIBERS_PER_IP: usize = 4;

/// Refused connections being closed gracefully at once (answer written, the client's unread bytes
/// drained so the close sends FIN, not RST). Past this, refusals close at once.
pub const MAX_LINGERING: usize = 256;

/// How long, and how many bytes, a refused connection's input is drained before it is closed.
pub const LINGER_MS: u64 = 1000;
pub const LINGER_BYTES: usize = 64 * 1024;

/// Cameras one process serves.
pub const MAX_CAMERAS: usize = 8;

/// Longest camera name (used in URLs and labels).
pub const MAX_CAMERA_NAME: usize = 32;

/// Request head (request line + headers) in bytes; larger gets `431`.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Request headers counted; more gets `431`.
pub const MAX_HEADERS: usize = 32;

/// Files a `dir:` camera loops over; further files are ignored with a warning.
pub const MAX_DIR_FILES: usize = 4096;

/// Listening sockets (`--listen` may be given this many times).
pub const MAX_LISTENERS: usize = 8;

/// Serving threads (one io runtime each).
pub const MAX_SERVING_THREADS: usize = 64;

/// Client IPs tracked for per-IP limits. Larger than `MAX_SESSIONS`, so an idle entry to evict
/// always exists; a power of two (the map's requirement).
pub const IP_TABLE_CAPACITY: usize = 2048;

/// `/events` subscribers at most (the configured limit may be lower).
pub const MAX_EVENT_SUBSCRIBERS: usize = 64;

/// Events kept for subscribers; one that falls further behind loses the oldest and is told so.
pub const EVENT_BACKLOG: usize = 256;

/// Lines of a viewers credentials file.
pub const MAX_VIEWER_CREDENTIALS: usize = 256;

/// Frames in each tapped camera's ring (`capture::tap`): a tap subscriber has about this many frame
/// periods to copy one before it is overwritten.
pub const TAP_RING_SLOTS: usize = 4;

/// Largest frame (in pixels) the recorder re-encodes (`[camera.record] quality`); a larger one is
/// written as the camera made it, and counted. Its decoded planes are the recorder's largest buffer.
pub const RECORD_REENCODE_MAX_PIXELS: usize = 3840 * 2160;
