//! The local frame tap: processes on the same box (the belt's inference) get each camera's newest
//! JPEG frames without the daemon copying a frame per consumer, and a consumer that stops reading
//! can never block capture or hold a pool slot. The protocol is written down in `docs/tap.md`; a
//! stdlib-only Python client is `clients/beltcam_tap.py`.
//!
//! How: each tapped camera has a ring of `RING_SLOTS` slots in one memfd. When a camera with
//! subscribers publishes a frame, this thread copies it once into the ring (a seqlock-style header
//! per slot: the sequence number is cleared before the bytes change and set after) and announces it
//! on every due subscriber's `SOCK_SEQPACKET` socket (`FRAME slot seq len ts w h`), never blocking: a
//! subscriber whose socket is full misses that announcement (counted). Subscribers map the memfd
//! read-only (it is passed with `SCM_RIGHTS` when they subscribe), copy the bytes and check the
//! slot's sequence number again: a frame overwritten under them is detected, not misread.
//!
//! Bounded: at most `MAX_TAP_CONSUMERS` subscribers, a subscribe line of at most 256 bytes read
//! within 2 s, rings created only for cameras someone taps (kept while the camera is), one thread
//! for all of it. A subscriber holds the camera's `Demand` (capture on demand starts for it).
//!
//! The cameras served follow live reloads: an added camera can be tapped at once; a removed (or
//! changed) camera's subscribers get `END camera removed` and the socket closes. Subscribers coming
//! and going are `tap` events on `/events`; totals per camera are in `/stats` and `/metrics`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Camera, Demand};
use crate::limits::MAX_JPEG_BYTES;
use crate::obs::events::Event;
use crate::obs::stats::{TapCameraStats, TapConsumerStats, TapStats};

/// Frames a ring holds: a subscriber has about this many frame periods to copy one.
pub const RING_SLOTS: usize = crate::limits::TAP_RING_SLOTS;
/// Bytes of a slot's header (see `docs/tap.md`).
pub const SLOT_HEADER: usize = 64;
/// Bytes of a slot: its header and the largest JPEG, rounded up to 64 (every header, and so every
/// sequence number, stays aligned).
pub const SLOT_SIZE: usize = (SLOT_HEADER + MAX_JPEG_BYTES).next_multiple_of(64);
/// Subscribers at once.
pub const MAX_TAP_CONSUMERS: usize = 16;
/// `BTAP`, little-endian, at the start of every slot header.
const MAGIC: u32 = u32::from_le_bytes(*b"BTAP");
const MAX_LINE: usize = 256;
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/stats` and `/metrics` show of the tap (`TapStats`), updated by the tap's thread.
#[derive(Default)]
pub struct TapCounters {
    stats: Mutex<TapStats>,
}

impl TapCounters {
    pub fn stats(&self) -> TapStats {
        self.stats.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// One camera's ring: the memfd and the daemon's read-write mapping of it.
struct Ring {
    fd: OwnedFd,
    map: *mut u8,
    len: usize,
    next_slot: usize,
}

impl Ring {
    fn new(camera: &str) -> std::io::Result<Ring> {
        let name = std::ffi::CString::new(format!("beltcam-tap-{camera}"))
            .map_err(|_| std::io::Error::other("camera name"))?;
        // SAFETY: a plain syscall with a valid C string.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new fd we own from here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = RING_SLOTS * SLOT_SIZE;
        // SAFETY: plain syscalls on the fd we own.
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // No one may resize it under a consumer's mapping (a SIGBUS for them).
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            );
        }
        // SAFETY: maps `len` bytes of the fd we own, shared, read-write; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Ring {
            fd,
            map: map.cast(),
            len,
            next_slot: 0,
        })
    }

    /// The slot's sequence number field, as an atomic (the memory is shared with readers).
    fn seq(&self, slot: usize) -> &AtomicU64 {
        // SAFETY: 8-aligned (page-aligned map, SLOT_SIZE a multiple of 64, offset 8) and
        // inside the mapping, which lives as long as `self`.
        unsafe { &*(self.map.add(slot * SLOT_SIZE + 8).cast::<AtomicU64>()) }
    }

    /// Copies a frame into the next slot: sequence cleared first, bytes and header, then the
    /// sequence set (Release), so a reader that sees the same sequence before and after its copy
    /// read a whole frame. Returns the slot.
    fn write(&mut self, seq: u64, jpeg: &[u8], ts_us: u64, w: u32, h: u32) -> usize {
        let slot = self.next_slot;
        self.next_slot = (slot + 1) % RING_SLOTS;
        self.seq(slot).store(0, Ordering::Release);
        std::sync::atomic::fence(Ordering::Release);
        let n = jpeg.len().min(MAX_JPEG_BYTES);
        // SAFETY: the slot lies inside the mapping; this thread is its only writer; readers map it
        // read-only and check the sequence around their copy.
        unsafe {
            let base = self.map.add(slot * SLOT_SIZE);
            std::ptr::copy_nonoverlapping(jpeg.as_ptr(), base.add(SLOT_HEADER), n);
            let put = |off: usize, bytes: &[u8]| {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(off), bytes.len())
            };
            put(0, &MAGIC.to_le_bytes());
            put(4, &1u32.to_le_bytes()); // header version
            put(16, &(n as u32).to_le_bytes());
            put(20, &w.to_le_bytes());
            put(24, &h.to_le_bytes());
            put(32, &ts_us.to_le_bytes());
        }
        self.seq(slot).store(seq, Ordering::Release);
        slot
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}

/// A subscriber, ended by `end`.
struct Consumer {
    id: u64,
    /// Shared with the task that notices the subscriber closing (`watch_consumer`).
    fd: Rc<AsyncFd<OwnedFd>>,
    camera: Arc<Camera>,
    period: Option<Duration>,
    last: Option<Instant>,
    _demand: Demand,
    stat: TapConsumerStats,
}

/// Everything the tap's tasks share (one thread: a `RefCell`, never borrowed across an await).
#[derive(Default)]
struct State {
    /// The cameras served now: those configured at start, then each reload's list.
    cameras: Vec<Arc<Camera>>,
    /// Each camera's announcing task, by camera id.
    tasks: HashMap<usize, tokio::task::JoinHandle<()>>,
    /// Rings of the cameras someone tapped, by camera id.
    rings: HashMap<usize, Ring>,
    consumers: Vec<Consumer>,
    subscribed: u64,
    refused: u64,
    /// Per camera served, in `cameras`' order; kept by name across a reload that changes it.
    totals: Vec<TapCameraStats>,
}

type Shared = Rc<RefCell<State>>;

/// The tap: its socket and the cameras it serves.
pub struct Tap {
    pub socket: PathBuf,
    pub group: Option<u32>,
    /// The cameras to serve: the ones configured at start, then each reload's list (`send_replace`
    /// by `daemon::Running::apply`). A removed camera's subscribers get `END camera removed`.
    pub cameras: watch::Receiver<Vec<Arc<Camera>>>,
    pub counters: Arc<TapCounters>,
    pub stopping: Arc<crate::shutdown::Shutdown>,
}

impl Tap {
    /// Binds the socket (replacing a stale one), then serves on this thread until shutdown.
    pub fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                warn!(%e, "frame tap disabled: cannot build its runtime");
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, self.serve());
    }

    async fn serve(self) {
        let Tap {
            socket,
            group,
            cameras: mut camera_list,
            counters,
            stopping,
        } = self;
        let listener = match bind_seqpacket(&socket, group) {
            Ok(l) => l,
            Err(e) => {
                warn!(socket = %socket.display(), %e, "frame tap disabled: cannot listen");
                return;
            }
        };
        info!(socket = %socket.display(), "frame tap listening");
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open, the same fd, until it drops.
        let listener =
            match unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) } {
                Ok(l) => l,
                Err(e) => {
                    warn!(%e, "frame tap disabled");
                    return;
                }
            };
        let shared: Shared = Rc::default();
        let first = camera_list.borrow_and_update().clone();
        set_cameras(&shared, &counters, first);
        publish_stats(&shared, &counters);
        let mut shutdown = stopping.subscribe();
        let mut next_id = 1;
        let mut watching = true;
        loop {
            let ready = tokio::select! {
                r = listener.readable() => r,
                changed = camera_list.changed(), if watching => {
                    match changed {
                        Ok(()) => {
                            let list = camera_list.borrow_and_update().clone();
                            set_cameras(&shared, &counters, list);
                            publish_stats(&shared, &counters);
                        }
                        // The daemon is going away: serve the last list until shutdown.
                        Err(_) => watching = false,
                    }
                    continue;
                }
                _ = crate::shutdown::triggered(&mut shutdown) => break,
            };
            let Ok(mut guard) = ready else { break };
            // SAFETY: accept4 on our listening socket; a returned fd is new and ours.
            let fd = unsafe {
                libc::accept4(
                    listener.get_ref().as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                guard.clear_ready();
                continue;
            }
            // SAFETY: see above.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let id = next_id;
            next_id += 1;
            let (shared, counters) = (Rc::clone(&shared), Arc::clone(&counters));
            tokio::task::spawn_local(async move {
                match subscribe(id, fd, &shared).await {
                    Ok(fd) => {
                        publish_stats(&shared, &counters);
                        watch_consumer(id, fd, &shared).await;
                        publish_stats(&shared, &counters);
                    }
                    Err(e) => {
                        publish_stats(&shared, &counters);
                        tracing::debug!(consumer = id, %e, "tap subscription refused");
                    }
                }
            });
        }
        let _ = std::fs::remove_file(&socket);
    }
}

/// Serves `list` from now on: new cameras get an announcing task; removed ones lose theirs, their
/// ring, and their subscribers (told `END camera removed`, then closed).
fn set_cameras(shared: &Shared, counters: &Arc<TapCounters>, list: Vec<Arc<Camera>>) {
    let mut st = shared.borrow_mut();
    let kept = |id: usize| list.iter().any(|c| c.id == id);
    let gone: Vec<usize> = st.tasks.keys().copied().filter(|&id| !kept(id)).collect();
    for id in gone {
        if let Some(t) = st.tasks.remove(&id) {
            t.abort();
        }
        st.rings.remove(&id);
    }
    let (stay, ended): (Vec<Consumer>, Vec<Consumer>) = std::mem::take(&mut st.consumers)
        .into_iter()
        .partition(|c| kept(c.camera.id));
    st.consumers = stay;
    for c in ended {
        end(c, "camera removed");
    }
    for cam in &list {
        if st.tasks.contains_key(&cam.id) {
            continue;
        }
        let (cam2, shared2, counters2) = (Arc::clone(cam), Rc::clone(shared), Arc::clone(counters));
        let task = tokio::task::spawn_local(async move {
            let mut rx = cam2.subscribe();
            while rx.changed().await.is_ok() {
                if announce(&cam2, &shared2) {
                    publish_stats(&shared2, &counters2);
                }
            }
        });
        st.tasks.insert(cam.id, task);
    }
    let mut old = std::mem::take(&mut st.totals);
    st.totals = list
        .iter()
        .map(|c| match old.iter().position(|t| t.camera == c.name) {
            Some(i) => old.swap_remove(i),
            None => TapCameraStats {
                camera: c.name.clone(),
                ..Default::default()
            },
        })
        .collect();
    st.cameras = list;
}

/// Ends a subscriber: `END <reason>` unless it closed itself, the socket shut down (its
/// `watch_consumer` task sees that and ends too), an event, a log line.
fn end(c: Consumer, reason: &'static str) {
    let fd = c.fd.get_ref().as_raw_fd();
    if reason != "closed" {
        let _ = send(fd, format!("END {reason}\n").as_bytes(), None);
    }
    // SAFETY: shutdown(2) on our socket, which stays open until the last Rc of it drops.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    info!(consumer = c.id, camera = %c.camera.name, reason, announced = c.stat.announced,
          dropped = c.stat.dropped, "tap consumer gone");
    c.camera.emit(Event::TapConsumer {
        id: c.id,
        camera: c.camera.name.clone(),
        connected: false,
        fps: c.stat.fps,
        announced: c.stat.announced,
        dropped: c.stat.dropped,
        reason,
    });
}

/// Receives what the socket holds once it is readable (0: closed), waiting out spurious readiness.
async fn recv_ready(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut g = fd.readable().await?;
        // SAFETY: recv into our buffer on our socket.
        let n = unsafe {
            libc::recv(
                fd.get_ref().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(e);
        }
        g.clear_ready();
    }
}

/// Waits until subscriber `id` closes its socket (or `end` shut it down), then ends it if it is
/// still subscribed: a subscriber that leaves is noticed at once, not at its next announcement.
async fn watch_consumer(id: u64, fd: Rc<AsyncFd<OwnedFd>>, shared: &Shared) {
    let mut buf = [0u8; 64];
    // Nothing is expected after SUBSCRIBE: what arrives is ignored, until closed (0) or failed.
    while let Ok(1..) = recv_ready(&fd, &mut buf).await {}
    let gone = {
        let mut st = shared.borrow_mut();
        st.consumers
            .iter()
            .position(|c| c.id == id)
            .map(|i| st.consumers.remove(i))
    };
    if let Some(c) = gone {
        end(c, "closed");
    }
}

/// Reads the `SUBSCRIBE` line, answers `OK` with the ring's fd or `ERR`, registers the consumer;
/// its socket, for `watch_consumer`.
async fn subscribe(id: u64, fd: OwnedFd, shared: &Shared) -> std::io::Result<Rc<AsyncFd<OwnedFd>>> {
    // SAFETY: the OwnedFd moves into the AsyncFd and stays open, the same fd, until it drops.
    let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut buf = [0u8; MAX_LINE];
    let n = tokio::time::timeout(SUBSCRIBE_TIMEOUT, recv_ready(&fd, &mut buf))
        .await
        .map_err(|_| std::io::Error::other("no SUBSCRIBE within 2 s"))??;
    let line = String::from_utf8_lossy(&buf[..n]);
    let mut st = shared.borrow_mut();
    let st = &mut *st;
    let mut refuse = |why: String| {
        st.refused += 1;
        let _ = send(
            fd.get_ref().as_raw_fd(),
            format!("ERR {why}\n").as_bytes(),
            None,
        );
        Err(std::io::Error::other(why))
    };
    let (camera, period) = match parse_subscribe(line.trim_end()) {
        Ok(s) => s,
        Err(why) => return refuse(why),
    };
    let Some(cam) = st.cameras.iter().find(|c| c.name == camera).cloned() else {
        return refuse(format!("no camera {camera:?}"));
    };
    if st.consumers.len() >= MAX_TAP_CONSUMERS {
        return refuse(format!("{MAX_TAP_CONSUMERS} consumers already"));
    }
    let ring_fd = match st.rings.entry(cam.id) {
        std::collections::hash_map::Entry::Occupied(r) => r.get().fd.as_raw_fd(),
        std::collections::hash_map::Entry::Vacant(v) => match Ring::new(&camera) {
            Ok(r) => v.insert(r).fd.as_raw_fd(),
            Err(e) => return refuse(format!("cannot make the ring: {e}")),
        },
    };
    let ok = format!("OK {camera} slots={RING_SLOTS} slot_size={SLOT_SIZE} header={SLOT_HEADER}\n");
    send(fd.get_ref().as_raw_fd(), ok.as_bytes(), Some(ring_fd))?;
    let fps = period.map(|p| 1.0 / p.as_secs_f64());
    info!(consumer = id, camera = %camera, fps = ?fps, "tap consumer subscribed");
    cam.emit(Event::TapConsumer {
        id,
        camera: camera.clone(),
        connected: true,
        fps,
        announced: 0,
        dropped: 0,
        reason: "",
    });
    st.subscribed += 1;
    let fd = Rc::new(fd);
    st.consumers.push(Consumer {
        id,
        fd: Rc::clone(&fd),
        _demand: cam.demand(),
        camera: cam,
        period,
        last: None,
        stat: TapConsumerStats {
            id,
            camera,
            fps,
            announced: 0,
            dropped: 0,
        },
    });
    Ok(fd)
}

/// `SUBSCRIBE CAMERA [fps=N]`: the camera and the least time between two announcements.
fn parse_subscribe(line: &str) -> Result<(String, Option<Duration>), String> {
    let mut words = line.split_ascii_whitespace();
    if words.next() != Some("SUBSCRIBE") {
        return Err("expected: SUBSCRIBE CAMERA [fps=N]".into());
    }
    let camera = words
        .next()
        .ok_or("SUBSCRIBE needs a camera name")?
        .to_owned();
    let mut period = None;
    for w in words {
        match w.strip_prefix("fps=").map(str::parse::<f64>) {
            Some(Ok(f)) if f.is_finite() && (0.01..=240.0).contains(&f) => {
                period = Some(Duration::from_secs_f64(1.0 / f))
            }
            _ => return Err(format!("bad option {w:?} (fps=0.01..240)")),
        }
    }
    Ok((camera, period))
}

/// Copies the camera's newest frame into its ring (once) and announces it to every due subscriber;
/// ends the subscribers that went away. Whether anything was announced or ended.
fn announce(cam: &Camera, shared: &Shared) -> bool {
    let mut guard = shared.borrow_mut();
    let st = &mut *guard;
    let now = Instant::now();
    let due = |c: &Consumer| {
        c.camera.id == cam.id
            && c.period
                .map_or(true, |p| c.last.map_or(true, |l| now - l >= p))
    };
    if !st.consumers.iter().any(due) {
        return false;
    }
    let Some(lease) = cam.pool.lease_newest() else {
        return false;
    };
    let m = *lease.meta();
    if m.is_placeholder() {
        return false;
    }
    let Some(ring) = st.rings.get_mut(&cam.id) else {
        return false;
    };
    let slot = ring.write(m.seq, lease.jpeg(), m.timestamp_us, m.width, m.height);
    drop(lease);
    let msg = format!(
        "FRAME {slot} {} {} {} {} {}\n",
        m.seq,
        m.jpeg_len(),
        m.timestamp_us,
        m.width,
        m.height
    );
    let (mut sent, mut missed) = (0, 0);
    let mut gone = Vec::new();
    for c in st.consumers.iter_mut().filter(|c| due(c)) {
        match send(c.fd.get_ref().as_raw_fd(), msg.as_bytes(), None) {
            Ok(()) => {
                c.last = Some(now);
                c.stat.announced += 1;
                sent += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                c.stat.dropped += 1;
                missed += 1;
            }
            Err(_) => gone.push(c.id),
        }
    }
    if let Some(t) = st.totals.iter_mut().find(|t| t.camera == cam.name) {
        t.announced += sent;
        t.dropped += missed;
    }
    if !gone.is_empty() {
        let (ended, stay): (Vec<Consumer>, Vec<Consumer>) = std::mem::take(&mut st.consumers)
            .into_iter()
            .partition(|c| gone.contains(&c.id));
        st.consumers = stay;
        for c in ended {
            end(c, "closed");
        }
    }
    true
}

fn publish_stats(shared: &Shared, counters: &TapCounters) {
    let st = shared.borrow();
    let stats = TapStats {
        consumers: st.consumers.iter().map(|c| c.stat.clone()).collect(),
        subscribed: st.subscribed,
        refused: st.refused,
        cameras: st
            .totals
            .iter()
            .map(|t| TapCameraStats {
                consumers: st
                    .consumers
                    .iter()
                    .filter(|c| c.camera.name == t.camera)
                    .count(),
                ..t.clone()
            })
            .collect(),
    };
    if let Ok(mut s) = counters.stats.lock() {
        *s = stats;
    }
}

/// One message, never blocking; with `fd`, passed along (`SCM_RIGHTS`).
fn send(sock: RawFd, msg: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    // Room for one fd's control message.
    let mut cmsg_buf = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the sendmsg call.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: the control buffer is large enough for CMSG_SPACE(sizeof(int)) and aligned for
        // cmsghdr; CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            hdr.msg_control = cmsg_buf.as_mut_ptr().cast();
            hdr.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: sendmsg on our socket with the header built above.
    let n = unsafe { libc::sendmsg(sock, &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A `SOCK_SEQPACKET` listening socket at `path` (a stale socket file is replaced), mode 0660 and
/// owned by `group` when given.
fn bind_seqpacket(path: &std::path::Path, group: Option<u32>) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::other("socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if m.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::other("exists and is not a socket"));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // SAFETY: plain syscalls; the fd is checked and owned right after.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: see above.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: bind and listen on our socket with a valid address.
    unsafe {
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        ) != 0
            || libc::listen(fd.as_raw_fd(), 16) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    // Only when the group differs: the socket is already the daemon's group, and under the shipped
    // unit chown(2) is refused (SystemCallFilter=~@privileged holds @chown).
    use std::os::unix::fs::MetadataExt;
    if let Some(gid) = group.filter(|&g| std::fs::metadata(path).map_or(true, |m| m.gid() != g)) {
        if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
            let _ = std::fs::remove_file(path); // no socket file nobody listens on
            return Err(e);
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_lines() {
        assert_eq!(
            parse_subscribe("SUBSCRIBE belt").unwrap(),
            ("belt".into(), None)
        );
        let (_, p) = parse_subscribe("SUBSCRIBE belt fps=2").unwrap();
        assert_eq!(p, Some(Duration::from_millis(500)));
        for bad in [
            "",
            "HELLO",
            "SUBSCRIBE",
            "SUBSCRIBE belt fps=0",
            "SUBSCRIBE belt fps=x",
            "SUBSCRIBE belt x=1",
        ] {
            assert!(parse_subscribe(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_slot_is_whole_or_marked() {
        let mut r = Ring::new("unit").unwrap();
        let slot = r.write(7, b"\xff\xd8jpeg\xff\xd9", 123, 4, 2);
        assert_eq!(slot, 0);
        assert_eq!(r.seq(0).load(Ordering::Acquire), 7);
        // SAFETY: reading inside the mapping, no writer running.
        let hdr = unsafe { std::slice::from_raw_parts(r.map, SLOT_HEADER + 8) };
        assert_eq!(&hdr[0..4], b"BTAP");
        assert_eq!(u32::from_le_bytes(hdr[16..20].try_into().unwrap()), 8);
        assert_eq!(&hdr[SLOT_HEADER..SLOT_HEADER + 8], b"\xff\xd8jpeg\xff\xd9");
        assert_eq!(r.write(8, b"x", 0, 0, 0), 1);
        for s in 2..RING_SLOTS + 1 {
            assert_eq!(r.write(s as u64 + 7, b"x", 0, 0, 0), s % RING_SLOTS);
        }
    }
}
