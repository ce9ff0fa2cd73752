//! Observability, below everything that produces it: typed stats, the event bus, heartbeats and the
//! health verdict, the latency histogram, and pure renderers for `/health`, `/stats`, ustreamer's
//! `/state`, `/metrics` and systemd's `STATUS=` line.
//!
//! Why one layer: the counters are gathered once into a [`Snapshot`](stats::Snapshot) and every
//! view renders from it, so the four views cannot disagree (they used to walk the raw atomics each,
//! with two bugs between them). Nothing here does I/O except reading the process's own /proc entries.

pub mod events;
pub mod health;
pub(crate) mod histogram;
pub(crate) mod metrics;
pub(crate) mod process;
pub(crate) mod render;
pub mod stats;
