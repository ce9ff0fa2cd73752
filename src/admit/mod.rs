//! Admission: who may take a place, and how many places there are. The session table, the
//! per-address limits, the pending-connection count and authentication; all fixed-capacity, all
//! refusing at once (never queueing).

pub mod auth;
pub mod forwarded;
pub mod ipguard;
pub mod pending;
pub mod sessions;
