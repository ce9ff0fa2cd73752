//! Start-up and supervision: cameras and their capture threads, listeners, serving threads, and the
//! main thread's supervision loop (health, and later the systemd watchdog and status).

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::app::{App, ServerCounters};
use crate::auth::Auth;
use crate::capture::spec::SourceSpec;
use crate::capture::{self, Camera, FrameSource};
use crate::config::{CameraSettings, Settings};
use crate::events::Events;
use crate::guard::IpGuard;
use crate::health::Health;
use crate::metrics::Histogram;
use crate::net;
use crate::session::SessionTable;
use crate::shutdown::Shutdown;
use crate::systemd;
use std::sync::atomic::Ordering;

/// The camera used when none is configured: `/dev/video0` when present, else the test pattern.
pub fn default_camera() -> CameraSettings {
    let video0 = std::path::Path::new("/dev/video0");
    let source = if video0.exists() {
        let source = SourceSpec::V4l2 {
            device: video0.into(),
            mode: None,
            format: None,
        };
        info!(source = %source, "no camera configured; using /dev/video0");
        source
    } else {
        let (w, h, fps) = capture::spec::DEFAULT_SYNTHETIC;
        let source = SourceSpec::Synthetic {
            width: w,
            height: h,
            fps,
        };
        info!(source = %source, "no camera configured and no /dev/video0; using the synthetic test pattern");
        source
    };
    CameraSettings {
        name: "cam0".into(),
        source,
        quality: 80,
        v4l2: Default::default(),
    }
}

/// The source behind a spec.
pub fn make_source(cam: &CameraSettings) -> Result<Box<dyn FrameSource>, String> {
    let spec = &cam.source;
    match spec {
        SourceSpec::Synthetic { width, height, fps } => Ok(Box::new(
            capture::synthetic::Synthetic::new(*width, *height, *fps),
        )),
        SourceSpec::Dir { path, fps } => {
            Ok(Box::new(capture::dir::DirSource::new(path.clone(), *fps)))
        }
        SourceSpec::V4l2 {
            device,
            mode,
            format,
        } => Ok(Box::new(capture::v4l2::V4l2Source::new(
            device.clone(),
            *mode,
            format.clone(),
            cam.v4l2,
        ))),
    }
}

pub struct Running {
    pub app: Arc<App>,
    serving_done: mpsc::Receiver<()>,
    serving: usize,
}

/// Binds, starts every thread, and returns once the daemon is serving.
/// `passed` are listeners from socket activation; when there are any, `settings.listen` is not bound.
pub fn start(
    mut settings: Settings,
    auth: Auth,
    shutdown: Arc<Shutdown>,
    passed: Vec<std::net::TcpListener>,
) -> Result<Running, String> {
    let backend = net::choose(settings.io_backend)?;
    if settings.cameras.is_empty() {
        settings.cameras.push(default_camera());
    }
    let listeners = if passed.is_empty() {
        settings
            .listen
            .iter()
            .map(|a| net::bind(*a).map_err(|e| format!("cannot listen on {a}: {e}")))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        info!(
            sockets = passed.len(),
            "using sockets passed by systemd (socket activation)"
        );
        passed
    };
    let health = Health::new();
    let events = Arc::new(Events::new(settings.max_event_subscribers));
    let mut cameras = Vec::new();
    let mut sources = Vec::new();
    for (i, c) in settings.cameras.iter().enumerate() {
        sources.push(make_source(c)?);
        let hb = health.register(format!("capture:{}", c.name));
        cameras.push(Arc::new(Camera::new(
            i,
            c.name.clone(),
            c.source.clone(),
            c.quality,
            hb,
            Arc::clone(&shutdown),
            Arc::clone(&events),
        )));
    }
    let threads = match settings.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let app = Arc::new(App {
        sessions: Arc::new(SessionTable::new(settings.max_sessions)),
        guard: Arc::new(IpGuard::new(
            settings.max_clients_per_ip,
            settings.connects_per_minute,
        )),
        auth,
        events,
        latency: Histogram::default(),
        settings,
        cameras,
        health,
        shutdown,
        backend,
        counters: ServerCounters::default(),
        pending: Arc::new(AtomicUsize::new(0)),
    });
    for (cam, source) in app.cameras.iter().zip(sources) {
        let cam = Arc::clone(cam);
        std::thread::Builder::new()
            .name(format!("capture-{}", cam.name))
            .spawn(move || capture::run_capture(cam, source))
            .map_err(|e| format!("cannot start a capture thread: {e}"))?;
    }
    let (done_tx, serving_done) = mpsc::channel();
    for i in 0..threads {
        let ls = listeners
            .iter()
            .map(|l| l.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot share a listener: {e}"))?;
        let app = Arc::clone(&app);
        let hb = app.health.register(format!("serve-{i}"));
        let done = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("serve-{i}"))
            .spawn(move || {
                net::serve(app, ls, hb);
                let _ = done.send(());
            })
            .map_err(|e| format!("cannot start a serving thread: {e}"))?;
    }
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.to_string()))
        .collect();
    info!(listen = ?addrs, io_backend = backend.as_str(), threads,
          cameras = app.cameras.len(), "beltcam serving");
    Ok(Running {
        app,
        serving_done,
        serving: threads,
    })
}

impl Running {
    /// Supervises until shutdown is triggered. Each tick (1 s, or half the watchdog interval if
    /// shorter): feed the systemd watchdog if no thread is wedged; once a second: STATUS= and a
    /// `stats` event per camera.
    pub fn supervise(&self) {
        let app = &self.app;
        let watchdog = systemd::watchdog_interval();
        let tick = watchdog.map_or(Duration::from_secs(1), |w| {
            (w / 2).min(Duration::from_secs(1))
        });
        let mut last_stats = Instant::now() - Duration::from_secs(1);
        let mut wedged_logged = false;
        systemd::ready();
        loop {
            match app.health.wedged() {
                None => {
                    wedged_logged = false;
                    if watchdog.is_some() {
                        systemd::watchdog();
                    }
                }
                Some(name) if !wedged_logged => {
                    error!(thread = %name, "thread wedged; no longer feeding the watchdog");
                    wedged_logged = true;
                }
                Some(_) => {}
            }
            if last_stats.elapsed() >= Duration::from_secs(1) {
                last_stats = Instant::now();
                self.publish_stats();
            }
            if app.shutdown.wait_timeout(tick) {
                break;
            }
        }
        systemd::stopping();
        app.sessions.close_all();
    }

    fn publish_stats(&self) {
        let app = &self.app;
        let clients = app.sessions.clients_per_camera(app.cameras.len());
        let mut status = String::new();
        for (cam, clients) in app.cameras.iter().zip(clients) {
            let fps = cam.counters.fps_milli.load(Ordering::Relaxed) as f64 / 1000.0;
            let state = cam.state().as_str();
            app.events.emit(
                "stats",
                Some(cam.index),
                serde_json::json!({"camera": cam.name, "fps": fps, "clients": clients,
                    "state": state}),
            );
            if !status.is_empty() {
                status.push_str("; ");
            }
            status.push_str(&format!("{} {fps:.1}fps, {clients} clients", cam.name));
            if state != "online" {
                status.push_str(&format!(" ({state})"));
            }
        }
        status.push_str(&format!(" | {}", app.backend.as_str()));
        systemd::status(&status);
    }

    /// Waits up to `limit` for the serving threads to finish.
    pub fn join_serving(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for _ in 0..self.serving {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.serving_done.recv_timeout(left).is_err() {
                break;
            }
        }
    }
}
