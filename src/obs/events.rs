//! The event bus: camera state changes, sessions opening and closing, per-second stats, recording
//! paused and resumed, frame tap subscribers coming and going, and camera controls set, as typed
//! events rendered to Server-Sent Events bytes once, when emitted (never once per subscriber).
//!
//! One bounded ring (tokio's broadcast channel) holds the last `EVENT_BACKLOG` events; every
//! subscriber reads it at its own pace. One that falls behind loses the oldest events and is told
//! how many: a slow dashboard can never slow capture, a session, or another subscriber, and memory
//! does not grow with it. The HTTP side (`serve::sse`) only copies the rendered bytes out.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};

use super::stats::{CameraState, EventStats, StreamInfo};
use crate::limits::EVENT_BACKLOG;

/// What happened. Producers build these; the bus renders each once.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    CameraOnline {
        camera: String,
        info: StreamInfo,
    },
    CameraOffline {
        camera: String,
        reason: String,
    },
    /// Capture stopped for want of viewers (capture on demand); the next one starts it.
    CameraIdle {
        camera: String,
    },
    SessionOpened {
        id: u64,
        peer: String,
        camera: String,
        endpoint: &'static str,
    },
    SessionClosed {
        id: u64,
        peer: String,
        camera: String,
        reason: &'static str,
        frames_sent: u64,
        frames_skipped: u64,
        bytes_sent: u64,
    },
    Stats {
        camera: String,
        fps: f64,
        clients: usize,
        state: CameraState,
    },
    /// Recording paused for want of disk space (`min_free_mb`), or resumed.
    Recording {
        camera: String,
        paused: bool,
        free_bytes: u64,
        min_free_bytes: u64,
    },
    /// A frame tap subscriber subscribed, or went away (`reason`: `closed`, `camera removed`,
    /// `shutdown`).
    TapConsumer {
        id: u64,
        camera: String,
        connected: bool,
        fps: Option<f64>,
        announced: u64,
        dropped: u64,
        reason: &'static str,
    },
    /// A camera control set over HTTP: the value asked for and what the driver reads back.
    ControlSet {
        camera: String,
        control: String,
        value: i64,
        read_back: Option<i64>,
    },
}

impl Event {
    /// The SSE `event:` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::CameraOnline { .. } | Event::CameraOffline { .. } | Event::CameraIdle { .. } => {
                "camera"
            }
            Event::SessionOpened { .. } | Event::SessionClosed { .. } => "session",
            Event::Stats { .. } => "stats",
            Event::Recording { .. } => "recording",
            Event::TapConsumer { .. } => "tap",
            Event::ControlSet { .. } => "control",
        }
    }

    /// The SSE `data:` JSON.
    pub fn data(&self) -> serde_json::Value {
        match self {
            Event::CameraOnline { camera, info } => json!({"camera": camera, "state": "online",
                "format": info.format, "width": info.width, "height": info.height, "fps": info.fps,
                "passthrough": info.passthrough}),
            Event::CameraOffline { camera, reason } => {
                json!({"camera": camera, "state": "offline", "reason": reason})
            }
            Event::CameraIdle { camera } => json!({"camera": camera, "state": "idle"}),
            Event::SessionOpened {
                id,
                peer,
                camera,
                endpoint,
            } => json!({"event": "opened", "id": id, "peer": peer, "camera": camera,
                "endpoint": endpoint}),
            Event::SessionClosed {
                id,
                peer,
                camera,
                reason,
                frames_sent,
                frames_skipped,
                bytes_sent,
            } => json!({"event": "closed", "id": id, "peer": peer, "camera": camera,
                "reason": reason, "frames_sent": frames_sent, "frames_skipped": frames_skipped,
                "bytes_sent": bytes_sent}),
            Event::Stats {
                camera,
                fps,
                clients,
                state,
            } => json!({"camera": camera, "fps": fps, "clients": clients, "state": state.as_str()}),
            Event::Recording {
                camera,
                paused,
                free_bytes,
                min_free_bytes,
            } => json!({"camera": camera, "state": if *paused { "paused" } else { "recording" },
                "reason": if *paused { "disk low" } else { "" }, "free_bytes": free_bytes,
                "min_free_bytes": min_free_bytes}),
            Event::TapConsumer {
                id,
                camera,
                connected,
                fps,
                announced,
                dropped,
                reason,
            } => json!({"event": if *connected { "connected" } else { "disconnected" },
                "id": id, "camera": camera, "fps": fps, "announced": announced,
                "dropped": dropped, "reason": reason}),
            Event::ControlSet {
                camera,
                control,
                value,
                read_back,
            } => json!({"camera": camera, "control": control, "value": value,
                "read_back": read_back}),
        }
    }
}

/// An event as subscribers get it: rendered once.
#[derive(Debug)]
pub struct Rendered {
    pub id: u64,
    /// The camera this event is about, for `?camera=NAME` rooms; `None` goes to everyone.
    pub camera: Option<usize>,
    /// The event in SSE wire format.
    pub sse: Box<str>,
}

/// Renders an event in SSE wire format.
pub fn render(id: u64, event: &Event) -> String {
    format!(
        "id: {id}\nevent: {}\ndata: {}\n\n",
        event.kind(),
        event.data()
    )
}

/// The SSE `overflow` event telling a subscriber how many events it lost.
pub fn render_overflow(lost: u64) -> String {
    format!("event: overflow\ndata: {{\"lost\":{lost}}}\n\n")
}

pub struct EventBus {
    tx: broadcast::Sender<Arc<Rendered>>,
    next_id: AtomicU64,
    subscribers: Arc<AtomicUsize>,
    max_subscribers: usize,
    emitted: AtomicU64,
    lost: AtomicU64,
    rejected: AtomicU64,
}

impl EventBus {
    pub fn new(max_subscribers: usize) -> Self {
        EventBus {
            tx: broadcast::channel(EVENT_BACKLOG).0,
            next_id: AtomicU64::new(1),
            subscribers: Arc::new(AtomicUsize::new(0)),
            max_subscribers,
            emitted: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Publishes an event about `camera` (or everyone); never blocks (old events are overwritten
    /// when nobody reads).
    pub fn emit(&self, camera: Option<usize>, event: Event) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sse = render(id, &event).into_boxed_str();
        self.emitted.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Arc::new(Rendered { id, camera, sse }));
    }

    /// A new subscription, or `None` (counted) when the subscriber limit is reached.
    pub fn subscribe(&self) -> Option<Subscription> {
        let max = self.max_subscribers;
        if self
            .subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Subscription {
            rx: self.tx.subscribe(),
            count: Arc::clone(&self.subscribers),
        })
    }

    /// Counts events a subscriber lost by falling behind.
    pub fn count_lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    pub fn stats(&self) -> EventStats {
        EventStats {
            subscribers: self.subscribers.load(Ordering::Relaxed),
            emitted: self.emitted.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

pub struct Subscription {
    rx: broadcast::Receiver<Arc<Rendered>>,
    count: Arc<AtomicUsize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a subscriber is sent next.
pub enum Next {
    Event(Arc<Rendered>),
    /// This many events were lost because the subscriber fell behind.
    Overflow(u64),
    Closed,
}

impl Subscription {
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Ok(e) => Next::Event(e),
            Err(RecvError::Lagged(n)) => Next::Overflow(n),
            Err(RecvError::Closed) => Next::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_event(i: u64) -> Event {
        Event::Stats {
            camera: format!("c{i}"),
            fps: 1.0,
            clients: 0,
            state: CameraState::Online,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn slow_subscriber_is_told_what_it_lost() {
        let ev = EventBus::new(2);
        let mut fast = ev.subscribe().unwrap();
        let mut slow = ev.subscribe().unwrap();
        assert!(ev.subscribe().is_none(), "subscriber limit");
        for i in 0..(EVENT_BACKLOG as u64 + 10) {
            ev.emit(None, stats_event(i));
            if let Next::Event(e) = fast.next().await {
                assert_eq!(e.id, i + 1);
            } else {
                panic!("the fast subscriber lost events");
            }
        }
        match slow.next().await {
            Next::Overflow(n) => assert_eq!(n, 10),
            _ => panic!("expected an overflow"),
        }
        match slow.next().await {
            Next::Event(e) => assert_eq!(e.id, 11, "then the oldest retained event"),
            _ => panic!("expected an event"),
        }
        drop(fast);
        assert_eq!(ev.stats().subscribers, 1);
        assert_eq!(ev.stats().rejected, 1);
    }

    #[test]
    fn renders_sse_wire_format() {
        let e = Event::CameraOffline {
            camera: "front".into(),
            reason: "gone".into(),
        };
        assert_eq!(
            render(7, &e),
            "id: 7\nevent: camera\ndata: {\"camera\":\"front\",\"reason\":\"gone\",\"state\":\"offline\"}\n\n"
        );
        let paused = Event::Recording {
            camera: "belt".into(),
            paused: true,
            free_bytes: 1,
            min_free_bytes: 2,
        };
        assert_eq!(paused.kind(), "recording");
        assert_eq!(paused.data()["state"], "paused");
        assert_eq!(paused.data()["reason"], "disk low");
        let gone = Event::TapConsumer {
            id: 3,
            camera: "belt".into(),
            connected: false,
            fps: None,
            announced: 9,
            dropped: 1,
            reason: "camera removed",
        };
        assert_eq!(
            (gone.kind(), gone.data()["event"].as_str()),
            ("tap", Some("disconnected"))
        );
        let set = Event::ControlSet {
            camera: "belt".into(),
            control: "brightness".into(),
            value: 140,
            read_back: Some(140),
        };
        assert_eq!(set.kind(), "control");
        assert_eq!(set.data()["read_back"], 140);
        assert_eq!(
            render_overflow(3),
            "event: overflow\ndata: {\"lost\":3}\n\n"
        );
    }
}
