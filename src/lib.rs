//! beltcam: captures frames from cameras into fixed lock-free frame pools and serves them as MJPEG
//! over HTTP, on io_uring or epoll, with every table, queue and buffer bounded at compile time.
//!
//! The binary (`main.rs`) wires these modules together; they are a library so that tests, benchmarks
//! and fuzz targets can use the pure parts (HTTP parsing, JPEG checks, the pool) directly.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod budget;
pub mod capture;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod devices;
pub mod events;
pub mod guard;
pub mod health;
pub mod http;
pub mod index;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod stats;
pub mod systemd;
