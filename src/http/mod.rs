//! HTTP: request parsing, routing, responses and the multipart framing. Everything here is pure
//! (no sockets), so it is unit-tested and fuzzed directly; `server` does the I/O.

pub mod multipart;
pub mod params;
pub mod part_reader;
pub mod request;
pub(crate) mod response;
pub mod routes;
