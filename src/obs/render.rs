//! Pure renderers: a [`Snapshot`] to the `/health`, `/stats` and ustreamer-compatible `/state` bodies
//! and systemd's `STATUS=` line.
//! (`/metrics` is in `metrics`.) Golden tests below pin each format.

use serde_json::{json, Value};

use super::health::{camera_verdict, verdict, Status};
use super::stats::{CameraState, CameraView, Snapshot};

fn age_s(cam: &CameraView) -> Option<f64> {
    cam.last_frame_age.map(|d| d.as_secs_f64())
}

/// The overall verdict and the `/health` body.
pub fn health(snap: &Snapshot) -> (Status, Value) {
    let cameras: Vec<Value> = snap
        .cameras
        .iter()
        .map(|cam| {
            let (s, reason) = camera_verdict(cam);
            json!({
                "name": cam.name,
                "status": s.as_str(),
                "state": cam.state.as_str(),
                "reason": reason,
                "last_frame_age_s": age_s(cam),
                "fps": cam.counts.fps,
            })
        })
        .collect();
    let status = verdict(snap);
    let body = json!({
        "status": status.as_str(),
        "uptime_s": snap.uptime.as_secs_f64(),
        "cameras": cameras,
        "wedged_thread": snap.wedged,
    });
    (status, body)
}

/// The `/stats` body: everything, for operators and tests.
pub fn stats(snap: &Snapshot) -> Value {
    let cameras: Vec<Value> = snap
        .cameras
        .iter()
        .map(|cam| {
            let (k, p) = (&cam.counts, &cam.pool);
            let mut v = json!({
                "name": cam.name,
                "source": cam.source,
                "state": cam.state.as_str(),
                "reason": cam.reason,
                "format": cam.info.format,
                "width": cam.info.width,
                "height": cam.info.height,
                "negotiated_fps": cam.info.fps,
                "passthrough": cam.info.passthrough,
                "clients": cam.clients,
                "last_frame_age_s": age_s(cam),
                "frames": {
                    "captured": k.captured,
                    "published": k.published,
                    "dropped": k.dropped,
                    "invalid": k.invalid,
                    "oversize": p.oversize,
                    "no_free_slot": p.no_free_slot,
                    "reclaimed": p.reclaimed,
                    "placeholders": k.placeholders,
                    "fps": k.fps,
                },
                "leases": p.leased,
            });
            if let Some(u) = &cam.upstream {
                v["upstream"] = json!(u);
            }
            if let Some(r) = &cam.recording {
                v["recording"] = json!(r);
            }
            if let Some(c) = &cam.controls {
                v["controls"] = json!(c);
            }
            v
        })
        .collect();
    let (s, c, g, e) = (&snap.sessions, &snap.server, &snap.guard, &snap.events);
    let pool = snap.cameras.first().map(|c| c.pool).unwrap_or_default();
    let mut v = json!({
        "io_backend": snap.backend,
        "uptime_s": snap.uptime.as_secs_f64(),
        "sessions": {
            "active": s.active,
            "capacity": s.capacity,
            "rejected_full": s.rejected_full,
            "opened": s.opened,
        },
        "connections": {
            "accepted": c.accepted,
            "pending": c.pending,
            "pending_rejected": c.pending_rejected,
        },
        "requests": {
            "total": c.requests,
            "bad_request": c.bad_request,
            "too_large": c.too_large,
            "not_found": c.not_found,
            "method_not_allowed": c.method_not_allowed,
            "request_timeouts": c.request_timeouts,
            "send_timeouts": c.send_timeouts,
        },
        "guard": {
            "tracked_ips": g.tracked_ips,
            "rejected_rate": g.rejected_rate,
            "rejected_per_ip": g.rejected_per_ip,
            "rejected_auth": c.rejected_auth,
            "evictions": g.evictions,
        },
        "events": {
            "subscribers": e.subscribers,
            "emitted": e.emitted,
            "lost": e.lost,
        },
        "bytes_sent": c.bytes_sent,
        "pool": {
            "slots": pool.slots,
            "slot_bytes": pool.slot_bytes,
            "bytes_per_camera": pool.slots * pool.slot_bytes,
        },
        "cameras": cameras,
        "process": {
            "rss_bytes": snap.process.rss_bytes,
            "open_fds": snap.process.open_fds,
            "threads": snap.process.threads,
        },
    });
    if let Some(t) = &snap.tap {
        v["tap"] = json!(t);
    }
    v
}

/// A rate for ustreamer's integer fps fields (its meters count frames per whole second).
fn whole_fps(fps: f64) -> u32 {
    if fps.is_finite() && fps > 0.0 {
        fps.round().min(u32::MAX as f64) as u32
    } else {
        0
    }
}

/// ustreamer's `/state` body for camera `camera` (`None`: no such camera), for the programs that read
/// ustreamer (kvmd, dashboards): `{"ok": true, "result": {...}}` with ustreamer's fields and types.
/// beltcam's own figures, mapped:
/// - `instance_id`: ustreamer's `--instance-id` tells instances on one host apart (default `""`);
///   one ustreamer runs per camera, so the camera's name is the analogue.
/// - `encoder.type`: `"CPU"` when beltcam encodes the frames (libjpeg-turbo on the CPU: synthetic,
///   raw V4L2 formats); `"HW"` when it passes the source's JPEG through untouched (MJPEG devices,
///   `dir:` files), which is what ustreamer itself reports when it switches to pass-through for a
///   JPEG source. `quality` is then 0, as ustreamer says when it could not set the device's quality:
///   beltcam does not set it either, so it does not know it.
/// - `source.captured_fps` and `stream.queued_fps`: real frames published per second (beltcam
///   publishes every valid captured frame to the stream; "NO SIGNAL" placeholders do not count).
/// - `source.desired_fps`: the configured rate, else the negotiated one.
/// - `clients_stat`: one entry per stream session, keyed by the session id `/sessions` shows, with
///   the frames sent to it in the last whole second and its stream options (`extra_headers`,
///   `advance_headers` as in effect, so `true` for a browser that did not ask, `dual_final_frames`,
///   `zero_data`, `key`: `"0"` when none was given, as in ustreamer).
pub fn ustreamer_state(snap: &Snapshot, camera: usize) -> Option<Value> {
    let cam = snap.cameras.get(camera)?;
    let (enc_type, quality) = if cam.info.passthrough {
        ("HW", 0)
    } else {
        ("CPU", cam.quality)
    };
    let fps = whole_fps(cam.counts.fps);
    let desired = whole_fps(cam.nominal_fps.unwrap_or(cam.info.fps));
    let clients: serde_json::Map<String, Value> = snap
        .clients
        .iter()
        .filter(|c| c.camera == cam.id)
        .map(|c| {
            let stat = json!({
                "fps": c.fps,
                "extra_headers": c.options.extra_headers,
                "advance_headers": c.options.advance_headers,
                "dual_final_frames": c.options.dual_final_frames,
                "zero_data": c.options.zero_data,
                "key": c.options.key.as_deref().unwrap_or("0"),
            });
            (c.id.to_string(), stat)
        })
        .collect();
    Some(json!({
        "ok": true,
        "result": {
            "instance_id": cam.name,
            "encoder": {"type": enc_type, "quality": quality},
            "source": {
                "resolution": {"width": cam.info.width, "height": cam.info.height},
                "online": cam.state == CameraState::Online,
                "desired_fps": desired,
                "captured_fps": fps,
            },
            "stream": {
                "queued_fps": fps,
                // The table's count, like ustreamer's, so it always equals `clients_stat`'s size.
                "clients": clients.len(),
                "clients_stat": clients,
            },
        },
    }))
}

/// systemd's `STATUS=` line: `cam0 30.0fps, 3 clients; cam1 0.0fps, 0 clients (offline) | io_uring`.
pub fn status_line(snap: &Snapshot) -> String {
    let mut status = String::new();
    for cam in &snap.cameras {
        if !status.is_empty() {
            status.push_str("; ");
        }
        status.push_str(&format!(
            "{} {:.1}fps, {} clients",
            cam.name, cam.counts.fps, cam.clients
        ));
        if cam.state.as_str() != "online" {
            status.push_str(&format!(" ({})", cam.state.as_str()));
        }
    }
    status.push_str(&format!(" | {}", snap.backend));
    status
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::obs::stats::*;

    /// A fixed snapshot: one online camera with a fresh frame, one offline.
    pub(crate) fn golden_snapshot() -> Snapshot {
        let pool = PoolStats {
            slots: 8,
            slot_bytes: 2097152,
            published: 12,
            oversize: 1,
            no_free_slot: 2,
            reclaimed: 1,
            leased: 3,
        };
        let front = CameraView {
            id: 0,
            name: "front".into(),
            source: "synthetic:640x480@30".into(),
            state: CameraState::Online,
            reason: String::new(),
            info: StreamInfo {
                format: "synthetic".into(),
                width: 640,
                height: 480,
                fps: 30.0,
                passthrough: false,
            },
            quality: 80,
            nominal_fps: Some(30.0),
            counts: CameraCounts {
                captured: 11,
                published: 10,
                dropped: 1,
                invalid: 0,
                placeholders: 2,
                fps: 29.5,
                last_frame_us: 1_700_000_000_000_000,
            },
            pool,
            clients: 3,
            upstream: None,
            recording: None,
            controls: None,
            last_frame_age: Some(Duration::from_millis(20)),
        };
        let back = CameraView {
            id: 1,
            name: "back".into(),
            source: "v4l2:/dev/video9".into(),
            state: CameraState::Offline,
            reason: "device gone: ENODEV".into(),
            info: StreamInfo::default(),
            quality: 80,
            nominal_fps: None,
            counts: CameraCounts::default(),
            pool: PoolStats {
                published: 0,
                ..pool
            },
            clients: 0,
            last_frame_age: None,
            upstream: None,
            recording: None,
            controls: None,
        };
        Snapshot {
            backend: "io_uring",
            uptime: Duration::from_millis(61_500),
            cameras: vec![front, back],
            sessions: SessionStats {
                active: 3,
                capacity: 1024,
                rejected_full: 4,
                opened: 9,
            },
            clients: vec![
                ClientStat {
                    id: 7,
                    camera: 0,
                    fps: 30,
                    ..Default::default()
                },
                ClientStat {
                    id: 9,
                    camera: 0,
                    fps: 12,
                    ..Default::default()
                },
            ],
            server: ServerCounts {
                accepted: 20,
                pending: 1,
                requests: 15,
                bad_request: 2,
                bytes_sent: 123456,
                ..Default::default()
            },
            guard: GuardStats {
                tracked_ips: 2,
                rejected_rate: 5,
                ..Default::default()
            },
            events: EventStats {
                subscribers: 1,
                emitted: 40,
                lost: 0,
                rejected: 0,
            },
            process: ProcessStats {
                rss_bytes: 7 << 20,
                open_fds: 12,
                threads: 4,
            },
            wedged: None,
            latency: Default::default(),
            tap: None,
        }
    }

    #[test]
    fn golden_health() {
        let (status, body) = health(&golden_snapshot());
        assert_eq!(status, Status::Degraded);
        assert_eq!(
            body.to_string(),
            r#"{"cameras":[{"fps":29.5,"last_frame_age_s":0.02,"name":"front","reason":"","state":"online","status":"ok"},{"fps":0.0,"last_frame_age_s":null,"name":"back","reason":"offline: device gone: ENODEV","state":"offline","status":"degraded"}],"status":"degraded","uptime_s":61.5,"wedged_thread":null}"#
        );
        let mut wedged = golden_snapshot();
        wedged.wedged = Some("serve-0".into());
        assert_eq!(health(&wedged).0, Status::Down);
    }

    #[test]
    fn golden_stats() {
        let body = stats(&golden_snapshot());
        assert_eq!(
            body.to_string(),
            r#"{"bytes_sent":123456,"cameras":[{"clients":3,"format":"synthetic","frames":{"captured":11,"dropped":1,"fps":29.5,"invalid":0,"no_free_slot":2,"oversize":1,"placeholders":2,"published":10,"reclaimed":1},"height":480,"last_frame_age_s":0.02,"leases":3,"name":"front","negotiated_fps":30.0,"passthrough":false,"reason":"","source":"synthetic:640x480@30","state":"online","width":640},{"clients":0,"format":"","frames":{"captured":0,"dropped":0,"fps":0.0,"invalid":0,"no_free_slot":2,"oversize":1,"placeholders":0,"published":0,"reclaimed":1},"height":0,"last_frame_age_s":null,"leases":3,"name":"back","negotiated_fps":0.0,"passthrough":false,"reason":"device gone: ENODEV","source":"v4l2:/dev/video9","state":"offline","width":0}],"connections":{"accepted":20,"pending":1,"pending_rejected":0},"events":{"emitted":40,"lost":0,"subscribers":1},"guard":{"evictions":0,"rejected_auth":0,"rejected_per_ip":0,"rejected_rate":5,"tracked_ips":2},"io_backend":"io_uring","pool":{"bytes_per_camera":16777216,"slot_bytes":2097152,"slots":8},"process":{"open_fds":12,"rss_bytes":7340032,"threads":4},"requests":{"bad_request":2,"method_not_allowed":0,"not_found":0,"request_timeouts":0,"send_timeouts":0,"too_large":0,"total":15},"sessions":{"active":3,"capacity":1024,"opened":9,"rejected_full":4},"uptime_s":61.5}"#
        );
    }

    #[test]
    fn golden_ustreamer_state() {
        let mut snap = golden_snapshot();
        // The offline camera had negotiated MJPEG passthrough before it went away.
        snap.cameras[1].info = StreamInfo {
            format: "MJPG".into(),
            width: 1920,
            height: 1080,
            fps: 15.0,
            passthrough: true,
        };
        let front = ustreamer_state(&snap, 0).unwrap();
        assert_eq!(
            front.to_string(),
            r#"{"ok":true,"result":{"encoder":{"quality":80,"type":"CPU"},"instance_id":"front","source":{"captured_fps":30,"desired_fps":30,"online":true,"resolution":{"height":480,"width":640}},"stream":{"clients":2,"clients_stat":{"7":{"advance_headers":false,"dual_final_frames":false,"extra_headers":false,"fps":30,"key":"0","zero_data":false},"9":{"advance_headers":false,"dual_final_frames":false,"extra_headers":false,"fps":12,"key":"0","zero_data":false}},"queued_fps":30}}}"#
        );
        // Passthrough reads as ustreamer's "HW"; an offline camera keeps its last resolution.
        let back = ustreamer_state(&snap, 1).unwrap();
        assert_eq!(
            back.to_string(),
            r#"{"ok":true,"result":{"encoder":{"quality":0,"type":"HW"},"instance_id":"back","source":{"captured_fps":0,"desired_fps":15,"online":false,"resolution":{"height":1080,"width":1920}},"stream":{"clients":0,"clients_stat":{},"queued_fps":0}}}"#
        );
        assert!(ustreamer_state(&snap, 2).is_none());
        // The types a ustreamer reader relies on.
        let r = &front["result"];
        assert!(r["source"]["resolution"]["width"].is_u64());
        assert!(r["source"]["online"].is_boolean());
        assert!(r["stream"]["clients_stat"]["7"]["key"].is_string());
        assert!(r["encoder"]["type"].is_string() && r["encoder"]["quality"].is_u64());
    }

    #[test]
    fn golden_status_line() {
        assert_eq!(
            status_line(&golden_snapshot()),
            "front 29.5fps, 3 clients; back 0.0fps, 0 clients (offline) | io_uring"
        );
    }
}
