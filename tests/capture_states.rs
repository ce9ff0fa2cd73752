//! Camera states driven through the real capture loop (`run_capture`) with fake sources behind the
//! `FrameSource` seam: what a viewer and `/events` see when a device misbehaves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beltcam::capture::{
    run_capture, wait_until, Camera, CameraState, FrameSource, SourceError, StreamInfo,
};
use beltcam::config::spec::SourceSpec;
use beltcam::obs::events::{EventBus, Next, Subscription};
use beltcam::shutdown::Shutdown;

/// Like the V4L2 source: each `capture` is a window of about half a second, and a device silent
/// for the dequeue timeout (2 s) ends the stream with `Timeout`.
const WINDOW: Duration = Duration::from_millis(500);
const DEQUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// A device that opens fine and never delivers a frame.
struct Silent {
    opens: Arc<AtomicU64>,
    opened_at: Instant,
}

impl FrameSource for Silent {
    fn open(&mut self, _cam: &Camera) -> Result<StreamInfo, SourceError> {
        self.opens.fetch_add(1, Ordering::Relaxed);
        self.opened_at = Instant::now();
        Ok(StreamInfo {
            format: "YUYV".into(),
            width: 640,
            height: 480,
            fps: 30.0,
            passthrough: false,
        })
    }

    fn capture(&mut self, cam: &Camera) -> Result<(), SourceError> {
        let silent_until = self.opened_at + DEQUEUE_TIMEOUT;
        let now = Instant::now();
        if now >= silent_until {
            return Err(SourceError::Timeout(DEQUEUE_TIMEOUT));
        }
        wait_until(cam, (now + WINDOW).min(silent_until));
        Ok(())
    }
}

fn camera(shutdown: &Arc<Shutdown>, events: &Arc<EventBus>) -> Arc<Camera> {
    let health = beltcam::obs::health::Health::new();
    Arc::new(Camera::new(
        0,
        "belt".into(),
        SourceSpec::V4l2 {
            device: "/dev/video-silent".into(),
            mode: Some((640, 480, 30.0)),
            format: None,
        },
        80,
        health.register("capture:belt"),
        Arc::clone(shutdown),
        Arc::clone(events),
    ))
}

/// Every event the subscription holds now, as SSE text.
fn drain(sub: &mut Subscription) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut out = Vec::new();
    while let Ok(next) =
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(50), sub.next()).await })
    {
        match next {
            Next::Event(e) => out.push(e.sse.to_string()),
            Next::Overflow(n) => panic!("{n} events lost"),
            Next::Closed => break,
        }
    }
    out
}

#[test]
fn a_device_that_opens_but_never_delivers_stays_offline_with_a_placeholder_each_second() {
    let shutdown = Arc::new(Shutdown::new());
    let events = Arc::new(EventBus::new(4));
    let mut sub = events.subscribe().unwrap();
    let cam = camera(&shutdown, &events);
    let opens = Arc::new(AtomicU64::new(0));
    let source = Silent {
        opens: Arc::clone(&opens),
        opened_at: Instant::now(),
    };
    let thread = {
        let cam = Arc::clone(&cam);
        std::thread::spawn(move || run_capture(cam, Box::new(source)))
    };

    // The first dequeue timeout takes it offline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cam.state() != CameraState::Offline {
        assert!(Instant::now() < deadline, "never went offline");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (t0, p0, opens0) = (
        Instant::now(),
        cam.stats().placeholders,
        opens.load(Ordering::Relaxed),
    );
    // Watch 5 s (two more dequeue timeouts and re-opens): poll the state for any flap.
    let window = Duration::from_secs(5);
    let mut states = vec![CameraState::Offline];
    let (mut last_p, mut last_change, mut max_gap) = (p0, t0, Duration::ZERO);
    while t0.elapsed() < window {
        let s = cam.state();
        if states.last() != Some(&s) {
            states.push(s);
        }
        let p = cam.stats().placeholders;
        if p != last_p {
            max_gap = max_gap.max(last_change.elapsed());
            (last_p, last_change) = (p, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    max_gap = max_gap.max(last_change.elapsed());
    let secs = t0.elapsed().as_secs_f64();
    let placeholders = cam.stats().placeholders - p0;
    let reopens = opens.load(Ordering::Relaxed) - opens0;
    shutdown.trigger();
    let stop = Instant::now() + Duration::from_secs(5);
    while !thread.is_finished() {
        assert!(Instant::now() < stop, "capture thread did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    thread.join().unwrap();
    let sse = drain(&mut sub);
    let online = sse
        .iter()
        .filter(|e| e.contains(r#""state":"online""#))
        .count();
    let offline = sse
        .iter()
        .filter(|e| e.contains(r#""state":"offline""#))
        .count();
    eprintln!(
        "silent device over {secs:.1} s offline: re-opens {reopens}, states {states:?}, \
         online events {online}, offline events {offline}, placeholders {placeholders}, \
         longest gap between placeholders {:.2} s",
        max_gap.as_secs_f64()
    );
    assert!(reopens >= 2, "the loop re-opened the device ({reopens})");
    assert_eq!(states, [CameraState::Offline], "the state flapped");
    assert_eq!(online, 0, "online events: {sse:?}");
    assert_eq!(offline, 1, "offline events: {sse:?}");
    // About one a second: 5 s gives 4 to 6 (the window's ends), never a gap of a re-open cycle.
    assert!(
        (4..=7).contains(&placeholders),
        "{placeholders} placeholders in {secs:.1} s"
    );
    assert!(
        max_gap <= Duration::from_millis(1400),
        "viewers waited {:.2} s for a placeholder",
        max_gap.as_secs_f64()
    );
}

/// A camera that delivers frames too large for a slot while `big` is set, small ones otherwise.
struct Sized {
    big: Arc<std::sync::atomic::AtomicBool>,
    pacer: beltcam::capture::Pacer,
}

impl FrameSource for Sized {
    fn open(&mut self, _cam: &Camera) -> Result<StreamInfo, SourceError> {
        Ok(StreamInfo {
            format: "MJPG".into(),
            width: 64,
            height: 48,
            fps: 20.0,
            passthrough: true,
        })
    }

    fn capture(&mut self, cam: &Camera) -> Result<(), SourceError> {
        if !self.pacer.wait(cam) {
            return Ok(());
        }
        cam.count_captured();
        let Some(mut slot) = cam.claim() else {
            return Ok(());
        };
        let jpeg = beltcam::capture::encode::placeholder_jpeg(64, 48, "t").unwrap();
        slot.jpeg_buf()[..jpeg.len()].copy_from_slice(&jpeg);
        let len = if self.big.load(Ordering::Relaxed) {
            beltcam::pool::MAX_JPEG_BYTES + 1
        } else {
            jpeg.len()
        };
        cam.publish(slot, len, beltcam::capture::now_us(), 64, 48);
        Ok(())
    }
}

#[test]
fn an_online_camera_losing_oversize_frames_is_degraded_until_they_fit() {
    use beltcam::obs::health::{camera_verdict, Status};
    let shutdown = Arc::new(Shutdown::new());
    let events = Arc::new(EventBus::new(4));
    let health = beltcam::obs::health::Health::new();
    let cam = Arc::new(Camera::new(
        0,
        "belt".into(),
        SourceSpec::Synthetic {
            width: 64,
            height: 48,
            fps: 20.0,
        },
        80,
        health.register("capture:belt"),
        Arc::clone(&shutdown),
        Arc::clone(&events),
    ));
    let big = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let source = Sized {
        big: Arc::clone(&big),
        pacer: beltcam::capture::Pacer::new(20.0),
    };
    let thread = {
        let cam = Arc::clone(&cam);
        std::thread::spawn(move || run_capture(cam, Box::new(source)))
    };
    let until = |what: &str, limit: Duration, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + limit;
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: {:?}", cam.view(0));
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let verdict = || camera_verdict(&cam.view(0));
    until("ok with small frames", Duration::from_secs(5), &|| {
        verdict().0 == Status::Ok
    });
    big.store(true, Ordering::Relaxed);
    until(
        "degraded by oversize frames",
        Duration::from_secs(5),
        &|| {
            let (s, why) = verdict();
            s == Status::Degraded && why.contains("larger than a pool slot")
        },
    );
    let refused = cam.pool.stats().oversize;
    assert!(refused >= 1);
    assert_eq!(
        cam.state(),
        CameraState::Online,
        "still delivering, not offline"
    );
    // Frames fit again: ok within the stale window (3 frame periods, at least 2 s).
    big.store(false, Ordering::Relaxed);
    let t = Instant::now();
    until("recovered", Duration::from_secs(5), &|| {
        verdict().0 == Status::Ok
    });
    eprintln!(
        "oversize: {refused}+ refused, recovered {:.1} s after frames fit",
        t.elapsed().as_secs_f64()
    );
    shutdown.trigger();
    thread.join().unwrap();
}
