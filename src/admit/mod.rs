//! Admission: who may take a place, and how many places there are. The session table, the
//! per-address limits, the pending-connection count and authentication; all fixed-capacity, all
//! refusing at once (never queueing).

pub mod auth;
pub(crate) mod forwarded;
pub(crate) mod ipguard;
pub(crate) mod pending;
pub(crate) mod sessions;
