//! The server state every serving thread shares: settings, cameras, admission, observability.
//!
//! Only `serve/` and the daemon name this type. Lower layers get what they need from it (a camera,
//! the event bus, a heartbeat), never the whole.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::admit::auth::Auth;
use crate::admit::ipguard::IpGuard;
use crate::admit::pending::PendingTable;
use crate::admit::sessions::SessionTable;
use crate::capture::Camera;
use crate::config::Settings;
use crate::limits::{MAX_IDLE_KEEPALIVE_PER_IP, MAX_PENDING_CONNECTIONS};
use crate::net::Backend;
use crate::obs::events::EventBus;
use crate::obs::health::Health;
use crate::obs::histogram::Histogram;
use crate::obs::process;
use crate::obs::stats::{ProcessStats, ServerCounts, Snapshot};
use crate::shutdown::Shutdown;

/// Server-wide counters (monotonic), private to this module: bumped through [`Server::count`],
/// read through [`Server::snapshot`].
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    requests: AtomicU64,
    pending_rejected: AtomicU64,
    bad_request: AtomicU64,
    too_large: AtomicU64,
    not_found: AtomicU64,
    method_not_allowed: AtomicU64,
    request_timeouts: AtomicU64,
    send_timeouts: AtomicU64,
    rejected_auth: AtomicU64,
    bytes_sent: AtomicU64,
}

/// Which server counter to bump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    Accepted,
    Request,
    /// Refused because too many connections were still sending their request.
    PendingRejected,
    /// 400 responses (malformed requests).
    BadRequest,
    /// 431 responses (oversized heads).
    TooLarge,
    NotFound,
    MethodNotAllowed,
    /// Requests that did not arrive within the request timeout.
    RequestTimeout,
    /// Sessions ended because a frame send stalled past the send timeout.
    SendTimeout,
    /// Requests refused for missing or wrong credentials (401/403).
    RejectedAuth,
}

/// What a reload replaces: the settings, the credentials and the camera list. A connection takes
/// one `Live` when it starts a request and keeps it for that request (a stream keeps it for the
/// session), so a reload applies to new requests and never changes one half-way.
pub struct Live {
    pub settings: Settings,
    pub auth: Auth,
    /// In configuration order: position 0 is what `/stream` and `/snapshot` serve.
    pub cameras: Vec<Arc<Camera>>,
}

impl Live {
    /// The position of the camera called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.cameras.iter().position(|c| c.name == name)
    }

    /// The camera with the stable id `id`, if it is still configured.
    pub fn by_id(&self, id: usize) -> Option<&Arc<Camera>> {
        self.cameras.iter().find(|c| c.id == id)
    }
}

pub struct Server {
    live: RwLock<Arc<Live>>,
    pub sessions: Arc<SessionTable>,
    pub health: Arc<Health>,
    pub shutdown: Arc<Shutdown>,
    pub backend: Backend,
    pub guard: Arc<IpGuard>,
    pub events: Arc<EventBus>,
    /// Latency of non-stream requests.
    pub latency: Histogram,
    /// Connections accepted and not yet a session or finished.
    pub pending: Arc<PendingTable>,
    /// Refused connections being closed gracefully right now (see `respond::refuse`).
    pub lingering: AtomicUsize,
    /// The frame tap's subscribers, for the views (`attach_tap`).
    tap: std::sync::OnceLock<Arc<crate::capture::tap::TapCounters>>,
    counters: Counters,
}

impl Server {
    /// A server over cameras that already exist (their capture threads are the caller's).
    pub fn new(
        settings: Settings,
        auth: Auth,
        backend: Backend,
        cameras: Vec<Arc<Camera>>,
        health: Arc<Health>,
        events: Arc<EventBus>,
        shutdown: Arc<Shutdown>,
    ) -> Server {
        Server {
            sessions: Arc::new(SessionTable::new(settings.max_sessions)),
            guard: Arc::new(IpGuard::new(
                settings.max_clients_per_ip,
                settings.connects_per_minute,
            )),
            events,
            latency: Histogram::default(),
            live: RwLock::new(Arc::new(Live {
                settings,
                auth,
                cameras,
            })),
            health,
            shutdown,
            backend,
            pending: Arc::new(PendingTable::new(
                MAX_PENDING_CONNECTIONS,
                MAX_IDLE_KEEPALIVE_PER_IP,
            )),
            lingering: AtomicUsize::new(0),
            tap: std::sync::OnceLock::new(),
            counters: Counters::default(),
        }
    }

    /// The configuration in force now.
    pub fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(l) => Arc::clone(&l),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts a reloaded configuration in force for new requests; returns the one it replaced.
    /// The per-address limits change at once (see `IpGuard::set_limits`).
    pub fn replace_live(&self, live: Live) -> Arc<Live> {
        self.guard.set_limits(
            live.settings.max_clients_per_ip,
            live.settings.connects_per_minute,
        );
        let new = Arc::new(live);
        let mut slot = match self.live.write() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::replace(&mut *slot, new)
    }

    /// Shows the frame tap's subscribers in `/stats`.
    pub fn attach_tap(&self, counters: Arc<crate::capture::tap::TapCounters>) {
        let _ = self.tap.set(counters);
    }

    pub fn count(&self, what: Count) {
        let c = &self.counters;
        let counter = match what {
            Count::Accepted => &c.accepted,
            Count::Request => &c.requests,
            Count::PendingRejected => &c.pending_rejected,
            Count::BadRequest => &c.bad_request,
            Count::TooLarge => &c.too_large,
            Count::NotFound => &c.not_found,
            Count::MethodNotAllowed => &c.method_not_allowed,
            Count::RequestTimeout => &c.request_timeouts,
            Count::SendTimeout => &c.send_timeouts,
            Count::RejectedAuth => &c.rejected_auth,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_bytes(&self, n: usize) {
        self.counters
            .bytes_sent
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    fn server_counts(&self) -> ServerCounts {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerCounts {
            accepted: l(&c.accepted),
            pending: self.pending.len() as u64,
            pending_rejected: l(&c.pending_rejected),
            requests: l(&c.requests),
            bad_request: l(&c.bad_request),
            too_large: l(&c.too_large),
            not_found: l(&c.not_found),
            method_not_allowed: l(&c.method_not_allowed),
            request_timeouts: l(&c.request_timeouts),
            send_timeouts: l(&c.send_timeouts),
            rejected_auth: l(&c.rejected_auth),
            bytes_sent: l(&c.bytes_sent),
        }
    }

    /// Everything `/health`, `/stats`, `/metrics` and `STATUS=` show, gathered once.
    pub fn snapshot(&self) -> Snapshot {
        let live = self.live();
        let ids: Vec<usize> = live.cameras.iter().map(|c| c.id).collect();
        let clients = self.sessions.clients_per_camera(&ids);
        Snapshot {
            backend: self.backend.as_str(),
            uptime: self.health.uptime(),
            cameras: live
                .cameras
                .iter()
                .zip(clients)
                .map(|(c, n)| c.view(n))
                .collect(),
            sessions: self.sessions.stats(),
            clients: self.sessions.client_stats(),
            server: self.server_counts(),
            guard: self.guard.stats(),
            events: self.events.stats(),
            process: ProcessStats {
                rss_bytes: process::rss_bytes(),
                open_fds: process::open_fds(),
                threads: self.health.threads().len(),
            },
            wedged: self.health.wedged(),
            latency: self.latency.stats(),
            tap: self.tap.get().map(|t| t.stats()),
        }
    }
}
