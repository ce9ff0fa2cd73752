//! beltcam: captures frames from cameras into fixed lock-free frame pools and serves them as MJPEG
//! over HTTP, on io_uring or epoll, with every table, queue and buffer bounded at compile time.
//!
//! Layers, bottom to top (a module imports only its own layer or lower ones; `tests/architecture.rs`
//! checks it):
//! 1. `limits`, `shutdown`, `systemd`, `logging`, `config` — leaves and settings
//! 2. `obs` — typed stats, the event bus, heartbeats and health, pure renderers
//! 3. `pool`, `http` — the frame pool with its part framing; pure request parsing and routing
//! 4. `capture` — sources and capture threads, publishing through `Camera`
//! 5. `admit` — session table, per-address limits, pending connections, auth
//! 6. `net` — io backends: listeners, shutdown, heartbeat and a connection callback
//! 7. `serve` — the server state and everything that answers a connection
//! 8. `daemon` (and the binary's `main`) — wiring
//!
//! The binary wires these together; they are a library so that tests, benchmarks and fuzz targets
//! can use them directly.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod admit;
pub mod capture;
pub mod config;
pub mod daemon;
pub mod http;
pub mod limits;
pub mod logging;
pub mod net;
pub mod obs;
pub mod pool;
pub mod serve;
pub mod shutdown;
pub mod systemd;
