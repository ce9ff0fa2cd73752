//! Helpers that beltcam's integration tests (`tests/common`) and its load generator (`bench/`)
//! both need, written once: a free loopback port, the flags that lift the daemon's per-address
//! limits for loopback load, a blocking HTTP exchange with timeouts, and an incremental parser for
//! the multipart (MJPEG) stream. Standard library only; never part of the daemon.

pub mod http;
pub mod multipart;

use std::io;
use std::net::{Ipv4Addr, TcpListener};

/// A loopback port free right now (the kernel's pick for an ephemeral bind).
pub fn try_free_port() -> io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// Like [`try_free_port`], for tests: panics when loopback cannot be bound at all.
pub fn free_port() -> u16 {
    try_free_port().expect("a free loopback port")
}

/// Flags (and values) that lift the daemon's per-address limits: tests and the bench connect from
/// one loopback address far faster than any real client. Callers add each unless the run sets it.
pub const LOOPBACK_LIMIT_FLAGS: [(&str, &str); 2] = [
    ("--max-clients-per-ip", "1024"),
    ("--connects-per-minute", "1000000"),
];
