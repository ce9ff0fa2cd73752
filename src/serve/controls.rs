//! `GET /cam/NAME/controls` and `PUT /cam/NAME/controls/CONTROL`: a V4L2 camera's controls over
//! HTTP (routing and the admin check for `PUT` happen before these run).
//!
//! The ioctls run on a short-lived thread of their own, on a fd of their own (see
//! `capture::v4l2::controls` for why a second fd is safe next to the capture thread's): a UVC
//! control is a USB transfer the kernel may wait seconds for, and a serving thread must never
//! block. Every wait is bounded: at most `MAX_IN_FLIGHT` such threads at once (more answer 503),
//! and an answer within `CONTROL_TIMEOUT` (else 504; the thread finishes on its own and then
//! frees its place).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::time::{timeout_at, Instant};
use tracing::info;

use crate::capture::v4l2::controls::{self, ControlError};
use crate::capture::Camera;
use crate::config::spec::SourceSpec;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::http::routes::control_path;
use crate::net::Conn;
use crate::obs::events::Event;

/// Control requests running at once, process-wide.
const MAX_IN_FLIGHT: usize = 2;
/// How long a control request may take (UVC's own control timeout is 5 s; most answer in ms).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest `PUT` body: a number, or `{"value": N}`.
pub const MAX_BODY: usize = 64;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The camera's device node, or the 404 for a camera without V4L2 controls.
fn device_of(cam: &Camera) -> Result<PathBuf, Response> {
    match &cam.spec {
        SourceSpec::V4l2 { device, .. } => Ok(device.clone()),
        other => Err(Response::error(
            404,
            &format!(
                "camera {} has no V4L2 controls (its source is {other}); only v4l2: cameras have",
                cam.name
            ),
        )),
    }
}

/// `GET /cam/NAME/controls`
pub async fn list(cam: &Camera) -> Response {
    let device = match device_of(cam) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let path = device.clone();
    match run(move || controls::list_device(&path)).await {
        Ok(Ok(list)) => Response::json(
            200,
            &json!({ "camera": cam.name, "device": device, "controls": list }),
        ),
        Ok(Err(e)) => Response::error(e.status(), &e.to_string()),
        Err(r) => r,
    }
}

/// `PUT /cam/NAME/controls/CONTROL`, value from `?value=N` or the body (read here, bounded by
/// `MAX_BODY` and `deadline`; the connection closes after the answer).
pub async fn set<C: Conn>(
    conn: &mut C,
    buf: &mut Vec<u8>,
    req: &Request,
    cam: &Camera,
    deadline: Instant,
) -> Response {
    let device = match device_of(cam) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Some((_, name)) = control_path(&req.path) else {
        return Response::error(404, "no control named in the path");
    };
    let name = name.to_owned();
    if req.content_length > MAX_BODY {
        return Response::error(413, &format!("the body is at most {MAX_BODY} bytes"));
    }
    let body = match read_body(conn, buf, req, deadline).await {
        Some(b) => b,
        None => return Response::error(408, "request body not received in time"),
    };
    let value = match parse_value(req.query_param("value"), &body) {
        Ok(v) => v,
        Err(why) => return Response::error(400, &why),
    };
    let (n, path) = (name.clone(), device);
    let answer = match run(move || controls::set_device(&path, &n, value)).await {
        Ok(Ok(c)) => {
            info!(camera = %cam.name, control = %c.name, value, read_back = ?c.value, "control set");
            cam.emit(Event::ControlSet {
                camera: cam.name.clone(),
                control: c.name.clone(),
                value,
                read_back: c.value,
            });
            Response::json(200, &json!({ "camera": cam.name, "control": c }))
        }
        Ok(Err(e @ ControlError::Unknown(_))) => {
            Response::error(404, &format!("camera {}: {e}", cam.name))
        }
        Ok(Err(e)) => Response::error(e.status(), &e.to_string()),
        Err(r) => r,
    };
    // Counted once the device was asked (a bad request above is not the camera's doing).
    cam.count_control_set(answer.status == 200);
    answer
}

/// The body's bytes (after the head in `buf`, the rest read until `deadline`); `None` when it did
/// not all come in time.
async fn read_body<C: Conn>(
    conn: &mut C,
    buf: &mut Vec<u8>,
    req: &Request,
    deadline: Instant,
) -> Option<Vec<u8>> {
    let want = req.head_len + req.content_length;
    buf.reserve(want.saturating_sub(buf.len()));
    while buf.len() < want {
        let (r, b) = timeout_at(deadline, conn.read(std::mem::take(buf)))
            .await
            .ok()?;
        *buf = b;
        match r {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
    }
    Some(buf[req.head_len..want].to_vec())
}

/// The value to set: `?value=N` if given, else the body, a number or `{"value": N}` (JSON
/// booleans are 1 and 0).
pub fn parse_value(query: Option<&str>, body: &[u8]) -> Result<i64, String> {
    const HOW: &str = "give the value as ?value=N, or a body of N or {\"value\": N}";
    if let Some(q) = query {
        return q
            .trim()
            .parse()
            .map_err(|_| format!("value {q:?} is not an integer; {HOW}"));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| HOW.to_string())?
        .trim();
    if text.is_empty() {
        return Err(format!("no value; {HOW}"));
    }
    if let Ok(v) = text.parse::<i64>() {
        return Ok(v);
    }
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|_| format!("{text:?} is not a value; {HOW}"))?;
    match &json["value"] {
        serde_json::Value::Bool(b) => Ok(i64::from(*b)),
        v => v
            .as_i64()
            .ok_or_else(|| format!("{text:?} has no integer \"value\"; {HOW}")),
    }
}

/// Frees an in-flight place when the control thread ends (however it ends).
struct Place;

impl Drop for Place {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `f` on a thread of its own and waits at most `CONTROL_TIMEOUT` for it; `Err` is the
/// answer when it cannot run or does not finish in time.
async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    run_within(CONTROL_TIMEOUT, f).await
}

async fn run_within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    let taken = IN_FLIGHT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < MAX_IN_FLIGHT).then_some(n + 1)
    });
    if taken.is_err() {
        return Err(
            Response::error(503, "camera controls are busy; try again").header("Retry-After", 1)
        );
    }
    let place = Place;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("controls".into())
        .spawn(move || {
            let _place = place;
            let _ = tx.send(f());
        });
    if spawned.is_err() {
        // The closure (and its place) was dropped with the failed spawn.
        return Err(Response::error(
            503,
            "cannot start a thread for the controls",
        ));
    }
    match timeout_at(Instant::now() + limit, rx).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(Response::error(500, "the control request failed")),
        Err(_) => Err(Response::error(
            504,
            &format!(
                "the camera did not answer within {:.1} s",
                limit.as_secs_f64()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_from_query_or_body() {
        assert_eq!(parse_value(Some("42"), b""), Ok(42));
        assert_eq!(parse_value(Some("-7"), b"99"), Ok(-7), "the query wins");
        assert_eq!(parse_value(None, b"  128\r\n"), Ok(128));
        assert_eq!(parse_value(None, br#"{"value": 3}"#), Ok(3));
        assert_eq!(parse_value(None, br#"{"value": true}"#), Ok(1));
        assert_eq!(parse_value(None, br#"{"value": false}"#), Ok(0));
        for bad in [
            &b""[..],
            b"abc",
            br#"{"v": 3}"#,
            br#"{"value": 1.5}"#,
            b"\xff",
        ] {
            let e = parse_value(None, bad).unwrap_err();
            assert!(e.contains("?value=N"), "{e}");
        }
        assert!(parse_value(Some("1e3"), b"").is_err());
        assert!(parse_value(Some("99999999999999999999"), b"").is_err());
    }

    #[test]
    fn in_flight_places_are_bounded_timed_out_and_freed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let short = Duration::from_millis(100);
        rt.block_on(async {
            assert_eq!(run(|| 5).await.ok(), Some(5));
            // Threads stuck in the "device": each answers 504 and keeps its place until it ends.
            let mut releases = Vec::new();
            for _ in 0..MAX_IN_FLIGHT {
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                releases.push(tx);
                let r = run_within(short, move || {
                    let _ = rx.recv_timeout(Duration::from_secs(10));
                })
                .await;
                assert_eq!(r.err().map(|r| r.status), Some(504));
            }
            let r = run(|| 1).await;
            assert_eq!(r.err().map(|r| r.status), Some(503), "no place left");
            drop(releases);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while IN_FLIGHT.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(run(|| 1).await.ok(), Some(1), "places freed");
        });
    }
}
