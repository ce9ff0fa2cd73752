//! Start-up and supervision: cameras and their capture threads, listeners, serving threads, and the
//! main thread's supervision loop (the systemd watchdog, STATUS= and the per-second stats events),
//! and live reload (SIGHUP): the new settings, credentials and camera list put in force without a
//! restart.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::admit::auth::Auth;
use crate::capture::{self, Camera, FrameSource};
use crate::config::spec::{self, SourceSpec};
use crate::config::{CameraSettings, Settings};
use crate::net;
use crate::obs::events::{Event, EventBus};
use crate::obs::health::Health;
use crate::obs::render;
use crate::serve::{Live, Server};
use crate::shutdown::Shutdown;
use crate::systemd;

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
        let (w, h, fps) = spec::DEFAULT_SYNTHETIC;
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
        idle_stop: None,
        record: None,
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
            cam.v4l2.clone(),
        ))),
        SourceSpec::Http(url) => Ok(Box::new(capture::relay::RelaySource::new(url.clone()))),
    }
}

/// A camera as the daemon runs it: the settings it was made from, and its capture thread once
/// started.
struct Capture {
    settings: CameraSettings,
    camera: Arc<Camera>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// The camera, not capturing yet (see `start`).
    fn new(
        id: usize,
        settings: &CameraSettings,
        health: &Health,
        shutdown: &Arc<Shutdown>,
        events: &Arc<EventBus>,
    ) -> Capture {
        let hb = health.register(format!("capture:{}", settings.name));
        let camera = Arc::new(
            Camera::new(
                id,
                settings.name.clone(),
                settings.source.clone(),
                settings.quality,
                hb,
                Arc::clone(shutdown),
                Arc::clone(events),
            )
            .with_idle_stop(settings.idle_stop),
        );
        Capture {
            settings: settings.clone(),
            camera,
            thread: None,
        }
    }

    /// Starts the capture thread.
    fn start(&mut self) -> Result<(), String> {
        let source = make_source(&self.settings)?;
        let cam = Arc::clone(&self.camera);
        let thread = std::thread::Builder::new()
            .name(format!("capture-{}", cam.name))
            .spawn(move || capture::run_capture(cam, source))
            .map_err(|e| format!("cannot start a capture thread: {e}"))?;
        self.thread = Some(thread);
        if let Some(r) = &self.settings.record {
            let rec = capture::record::Recorder::new(
                Arc::clone(&self.camera),
                r.clone(),
                std::time::SystemTime::now,
            );
            // Not joined: it ends within one period of the camera stopping, and holds no device.
            std::thread::Builder::new()
                .name(format!("record-{}", self.camera.name))
                .spawn(move || rec.run())
                .map_err(|e| format!("cannot start a recording thread: {e}"))?;
        }
        Ok(())
    }
}

/// How long a reload waits for a removed camera's capture thread to close its device before the
/// cameras that replace it start (a source returns within about a second of being told to).
const RETIRE_WAIT: Duration = Duration::from_secs(3);

/// Settings a running daemon cannot change (sockets, threads, fixed-capacity tables): a reload
/// keeps the running value and says which need a restart.
fn keep_restart_only(old: &Settings, new: &mut Settings) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($field:ident, $name:literal) => {
            if new.$field != old.$field {
                new.$field = old.$field.clone();
                kept.push($name);
            }
        };
    }
    keep!(listen, "listen");
    keep!(io_backend, "io_backend");
    keep!(threads, "threads");
    keep!(max_sessions, "limits.max_sessions");
    keep!(max_event_subscribers, "limits.max_event_subscribers");
    keep!(tap, "tap");
    kept
}

pub struct Running {
    pub server: Arc<Server>,
    serving_done: mpsc::Receiver<std::io::Result<()>>,
    serving: usize,
    captures: Vec<Capture>,
    /// The id the next camera a reload adds gets (ids are never reused).
    next_camera_id: usize,
    /// The frame tap's camera list, when the tap is on: a reload sends it the new one.
    tap_cameras: Option<tokio::sync::watch::Sender<Vec<Arc<Camera>>>>,
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
    let passed_empty = passed.is_empty();
    let listeners = if passed_empty {
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
    // Only sockets we bound: a socket-activated one belongs to systemd and serves the next instance,
    // so an immediate exit must not shut it down.
    if passed_empty {
        for l in &listeners {
            shutdown.register_listener(std::os::fd::AsRawFd::as_raw_fd(l));
        }
    }
    let health = Arc::new(Health::new());
    let events = Arc::new(EventBus::new(settings.max_event_subscribers));
    let mut captures: Vec<Capture> = settings
        .cameras
        .iter()
        .enumerate()
        .map(|(i, c)| Capture::new(i, c, &health, &shutdown, &events))
        .collect();
    let cameras = captures.iter().map(|c| Arc::clone(&c.camera)).collect();
    let threads = match settings.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let tap = settings.tap.clone();
    let server = Arc::new(Server::new(
        settings,
        auth,
        backend,
        cameras,
        Arc::clone(&health),
        events,
        Arc::clone(&shutdown),
    ));
    for c in &mut captures {
        c.start()?;
    }
    let mut tap_cameras = None;
    if let Some(t) = tap {
        // The tap serves the cameras configured at start, then each reload's list (`apply`).
        let counters = Arc::new(capture::tap::TapCounters::default());
        server.attach_tap(Arc::clone(&counters));
        let (tx, rx) =
            tokio::sync::watch::channel(captures.iter().map(|c| Arc::clone(&c.camera)).collect());
        tap_cameras = Some(tx);
        let tap = capture::tap::Tap {
            socket: t.socket,
            group: t.group,
            cameras: rx,
            counters,
            stopping: Arc::clone(&shutdown),
        };
        std::thread::Builder::new()
            .name("tap".into())
            .spawn(move || tap.run())
            .map_err(|e| format!("cannot start the frame tap thread: {e}"))?;
    }
    let (done_tx, serving_done) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    for i in 0..threads {
        let ls = listeners
            .iter()
            .map(|l| l.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot share a listener: {e}"))?;
        let started = started_tx.clone();
        let thread = net::ServeThread {
            listeners: ls,
            shutdown: Arc::clone(&shutdown),
            heartbeat: health.register(format!("serve-{i}")),
            handler: Arc::clone(&server),
            started: Box::new(move || {
                let _ = started.send(());
            }),
        };
        let done = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("serve-{i}"))
            .spawn(move || {
                let r = net::serve(backend, thread);
                let _ = done.send(r);
            })
            .map_err(|e| format!("cannot start a serving thread: {e}"))?;
    }
    // Every serving thread either has its runtime up or has failed to build it: a runtime that
    // cannot be built is a start-up error, reported before READY=1.
    drop(started_tx);
    let up = started_rx.iter().take(threads).count();
    if up < threads {
        // A thread dropped its `started` without calling it: its result is on the way.
        shutdown.trigger();
        let why = match serving_done.recv() {
            Ok(Err(e)) => e.to_string(),
            _ => "a serving thread stopped".into(),
        };
        return Err(format!(
            "cannot start the {} runtime: {why}",
            backend.as_str()
        ));
    }
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.to_string()))
        .collect();
    info!(listen = ?addrs, io_backend = backend.as_str(), threads,
          cameras = captures.len(), "beltcam serving");
    Ok(Running {
        server,
        serving_done,
        serving: threads,
        next_camera_id: captures.len(),
        captures,
        tap_cameras,
    })
}

impl Running {
    /// Supervises until shutdown is triggered. Each tick (1 s, or half the watchdog interval if
    /// shorter): feed the systemd watchdog if no thread is wedged; once a second: STATUS= and a
    /// `stats` event per camera.
    ///
    /// On SIGHUP it calls `reload`, which re-reads and checks the configuration (see `main`), and
    /// applies what it returns.
    pub fn supervise(&mut self, reload: &dyn Fn() -> Option<(Settings, Auth)>) {
        let server = Arc::clone(&self.server);
        let watchdog = systemd::watchdog_interval();
        let tick = watchdog.map_or(Duration::from_secs(1), |w| {
            (w / 2).min(Duration::from_secs(1))
        });
        let mut last_stats = Instant::now() - Duration::from_secs(1);
        let mut wedged_logged = false;
        systemd::ready();
        loop {
            match server.health.wedged() {
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
            if server.shutdown.wait_timeout(tick) {
                break;
            }
            if server.shutdown.take_reload() {
                systemd::reloading();
                if let Some((settings, auth)) = reload() {
                    self.apply(settings, auth);
                }
                systemd::ready();
            }
        }
        systemd::stopping();
    }

    /// Puts a reloaded configuration in force. Cameras whose settings did not change keep running
    /// and keep their viewers; removed and changed ones stop (their viewers get a clean end) and
    /// have closed their devices before the added and changed ones start; limits, timeouts,
    /// credentials and the log level apply to new connections and requests. Settings that need a
    /// restart keep their running value and are named in the log.
    pub fn apply(&mut self, mut new: Settings, auth: Auth) {
        let server = Arc::clone(&self.server);
        let old = server.live();
        let restart = keep_restart_only(&old.settings, &mut new);
        if new.cameras.is_empty() {
            new.cameras.push(default_camera());
        }
        if new.log_level != old.settings.log_level {
            if let Err(e) = crate::logging::set_filter(&new.log_level) {
                error!(
                    "reload: {e}; the log level stays {:?}",
                    old.settings.log_level
                );
                new.log_level = old.settings.log_level.clone();
            }
        }
        let (mut keep, retire): (Vec<Capture>, Vec<Capture>) = self
            .captures
            .drain(..)
            .partition(|c| new.cameras.contains(&c.settings));
        let mut captures = Vec::with_capacity(new.cameras.len());
        let mut added = Vec::new();
        for c in &new.cameras {
            match keep.iter().position(|k| k.settings == *c) {
                Some(i) => captures.push(keep.swap_remove(i)),
                None => {
                    let id = self.next_camera_id;
                    self.next_camera_id += 1;
                    added.push(c.name.clone());
                    captures.push(Capture::new(
                        id,
                        c,
                        &server.health,
                        &server.shutdown,
                        &server.events,
                    ));
                }
            }
        }
        let cameras: Vec<Arc<Camera>> = captures.iter().map(|c| Arc::clone(&c.camera)).collect();
        if let Some(tap) = &self.tap_cameras {
            // The tap ends the removed cameras' subscribers and serves the added ones.
            tap.send_replace(cameras.clone());
        }
        // New requests see the new list from here; then the removed cameras stop.
        drop(old);
        server.replace_live(Live {
            settings: new,
            auth,
            cameras,
        });
        let removed: Vec<String> = retire.iter().map(|c| c.settings.name.clone()).collect();
        for c in &retire {
            c.camera.retire();
            server.health.unregister(&c.camera.heartbeat);
            server.events.emit(
                Some(c.camera.id),
                Event::CameraOffline {
                    camera: c.camera.name.clone(),
                    reason: "removed by a reload".into(),
                },
            );
        }
        let deadline = Instant::now() + RETIRE_WAIT;
        for c in retire {
            let Some(t) = c.thread else { continue };
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                warn!(camera = %c.settings.name, "reload: the removed camera's capture thread has not stopped yet");
            }
        }
        for c in &mut captures {
            if c.thread.is_none() {
                if let Err(e) = c.start() {
                    error!(camera = %c.settings.name, "reload: {e}");
                }
            }
        }
        let kept: Vec<&str> = captures
            .iter()
            .filter(|c| !added.contains(&c.settings.name))
            .map(|c| c.settings.name.as_str())
            .collect();
        // The warning comes first: "reload applied" is the reload's last line, the one a
        // watcher of the log (or the test) waits for.
        if !restart.is_empty() {
            warn!(settings = ?restart, "reload: these settings changed but need a restart; their running values stay");
        }
        info!(?kept, ?added, ?removed, "reload applied");
        self.captures = captures;
    }

    fn publish_stats(&self) {
        let snap = self.server.snapshot();
        for (i, cam) in snap.cameras.iter().enumerate() {
            self.server.events.emit(
                Some(i),
                Event::Stats {
                    camera: cam.name.clone(),
                    fps: cam.counts.fps,
                    clients: cam.clients,
                    state: cam.state,
                },
            );
        }
        systemd::status(&render::status_line(&snap));
    }

    /// Waits up to `limit` for the serving threads to finish; the first error any of them had.
    pub fn join_serving(&self, limit: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + limit;
        let mut result = Ok(());
        for _ in 0..self.serving {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.serving_done.recv_timeout(left) {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        result
    }
}
