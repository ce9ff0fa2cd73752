//! Server-Sent Events: camera state changes, sessions opening and closing, and per-second stats.
//!
//! One bounded ring (tokio's broadcast channel) holds the last `EVENT_BACKLOG` events; every
//! subscriber reads it at its own pace. One that falls behind loses the oldest events and is told
//! how many in an `overflow` event: a slow dashboard can never slow capture, a session, or another
//! subscriber, and memory does not grow with it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::app::App;
use crate::limits::EVENT_BACKLOG;
use crate::net::Conn;

/// A comment line this often keeps proxies and browsers from timing the stream out.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub kind: &'static str,
    /// The camera this event is about, for `?camera=NAME` rooms; `None` goes to everyone.
    pub camera: Option<usize>,
    pub data: String,
}

impl Event {
    /// The event in SSE wire format.
    pub fn render(&self) -> String {
        format!(
            "id: {}\nevent: {}\ndata: {}\n\n",
            self.id, self.kind, self.data
        )
    }
}

pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
    next_id: AtomicU64,
    subscribers: Arc<AtomicUsize>,
    max_subscribers: usize,
    pub emitted: AtomicU64,
    /// Events lost by subscribers that fell behind, summed.
    pub lost: AtomicU64,
    pub rejected: AtomicU64,
}

impl Events {
    pub fn new(max_subscribers: usize) -> Self {
        Events {
            tx: broadcast::channel(EVENT_BACKLOG).0,
            next_id: AtomicU64::new(1),
            subscribers: Arc::new(AtomicUsize::new(0)),
            max_subscribers,
            emitted: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Publishes an event; never blocks (old events are overwritten when nobody reads).
    pub fn emit(&self, kind: &'static str, camera: Option<usize>, data: Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = data.to_string();
        self.emitted.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Arc::new(Event {
            id,
            kind,
            camera,
            data,
        }));
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// A new subscription, or `None` when the subscriber limit is reached.
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
}

pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
    count: Arc<AtomicUsize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a subscriber is sent next.
pub enum Next {
    Event(Arc<Event>),
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

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
    Cache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\nX-Accel-Buffering: no\r\n\
    Connection: close\r\n\r\nretry: 2000\n\n";

/// Serves one `/events` subscriber until it goes away, falls silent past the send timeout, or
/// the daemon stops. `camera` limits it to one camera's room (plus events about no camera).
pub async fn serve<C: Conn>(app: &App, conn: &mut C, mut sub: Subscription, camera: Option<usize>) {
    // A small send buffer: a subscriber that stops reading falls behind (and is told so) after a
    // few KiB instead of after megabytes of autotuned buffer.
    let fd = conn.raw_fd();
    // SAFETY: the connection owns `fd` for the whole call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&borrowed).set_send_buffer_size(16 * 1024);
    let mut shutdown = app.shutdown.subscribe();
    let mut out = SSE_HEAD.as_bytes().to_vec();
    loop {
        let (res, buf) =
            match tokio::time::timeout(app.settings.send_timeout, conn.write_all(out)).await {
                Ok(r) => r,
                Err(_) => return,
            };
        if res.is_err() {
            return;
        }
        out = buf;
        out.clear();
        let next = tokio::select! {
            n = sub.next() => n,
            _ = tokio::time::sleep(HEARTBEAT) => {
                out.extend_from_slice(b": heartbeat\n\n");
                continue;
            }
            _ = crate::shutdown::triggered(&mut shutdown) => return,
        };
        match next {
            Next::Event(e) if camera.is_none() || e.camera.is_none() || e.camera == camera => {
                out.extend_from_slice(e.render().as_bytes());
            }
            Next::Event(_) => continue,
            Next::Overflow(n) => {
                app.events.lost.fetch_add(n, Ordering::Relaxed);
                out.extend_from_slice(
                    format!("event: overflow\ndata: {{\"lost\":{n}}}\n\n").as_bytes(),
                );
            }
            Next::Closed => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn slow_subscriber_is_told_what_it_lost() {
        let ev = Events::new(2);
        let mut fast = ev.subscribe().unwrap();
        let mut slow = ev.subscribe().unwrap();
        assert!(ev.subscribe().is_none(), "subscriber limit");
        for i in 0..(EVENT_BACKLOG as u64 + 10) {
            ev.emit("stats", None, serde_json::json!({ "i": i }));
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
        assert_eq!(ev.subscribers(), 1);
    }

    #[test]
    fn renders_sse_wire_format() {
        let e = Event {
            id: 7,
            kind: "camera",
            camera: Some(0),
            data: "{\"state\":\"online\"}".into(),
        };
        assert_eq!(
            e.render(),
            "id: 7\nevent: camera\ndata: {\"state\":\"online\"}\n\n"
        );
    }
}
