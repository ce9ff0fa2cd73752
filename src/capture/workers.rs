//! Encode workers for raw cameras: conversion + JPEG encode off the capture thread, straight into
//! pool slots.
//!
//! Bounded by construction: each worker owns exactly one input buffer (one raw frame) and one
//! `RawEncoder` (its compressor and scratch planes), all allocated when the stream opens. The
//! buffer travels through two single-producer single-consumer ringbuf queues of capacity 1: `free`
//! (worker -> capture) and `todo` (capture -> worker). No locks, no allocation per frame.
//!
//! Newest frame wins: the capture thread takes a frame out of the driver's buffer only when a
//! worker's buffer is free; until then it holds the newest dequeued V4L2 buffer and re-queues any
//! older one (see `v4l2`). Workers tell the capture thread they are free through an eventfd it
//! polls beside the camera, and are woken by `unpark`.
//!
//! The threads are scoped to one `capture` call (about half a second) because publishing needs the
//! `&Camera` the capture thread lends; spawning two threads twice a second costs microseconds, and
//! it keeps every borrow checked by the compiler instead of an unsafe `'static` camera pointer.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use super::convert::RawEncoder;
use super::Camera;

/// One raw frame handed to a worker.
pub struct Job {
    pub buf: Vec<u8>,
    pub len: usize,
    pub captured_us: u64,
}

struct Lane {
    todo: HeapProd<Job>,
    free: HeapCons<Vec<u8>>,
}

struct Worker {
    todo: HeapCons<Job>,
    free: HeapProd<Vec<u8>>,
    enc: RawEncoder,
}

/// Encode time totals, for the periodic log line and the report.
#[derive(Default)]
pub struct EncodeStats {
    pub frames: AtomicU64,
    pub micros: AtomicU64,
    pub failed: AtomicU64,
}

pub struct EncodePool {
    lanes: Vec<Lane>,
    workers: Vec<Worker>,
    done: OwnedFd,
    next: usize,
    width: u32,
    height: u32,
    pub stats: EncodeStats,
}

impl EncodePool {
    /// One worker per encoder, each with an input buffer of `frame_bytes`.
    pub fn new(
        encoders: Vec<RawEncoder>,
        frame_bytes: usize,
        width: u32,
        height: u32,
    ) -> std::io::Result<EncodePool> {
        // SAFETY: eventfd has no memory arguments; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let done = unsafe { OwnedFd::from_raw_fd(fd) };
        let (mut lanes, mut workers) = (Vec::new(), Vec::new());
        for enc in encoders {
            let (todo_tx, todo_rx) = HeapRb::<Job>::new(1).split();
            let (mut free_tx, free_rx) = HeapRb::<Vec<u8>>::new(1).split();
            let _ = free_tx.try_push(vec![0u8; frame_bytes]);
            lanes.push(Lane {
                todo: todo_tx,
                free: free_rx,
            });
            workers.push(Worker {
                todo: todo_rx,
                free: free_tx,
                enc,
            });
        }
        Ok(EncodePool {
            lanes,
            workers,
            done,
            next: 0,
            width,
            height,
            stats: EncodeStats::default(),
        })
    }

    /// The fd that becomes readable when a worker finished a frame.
    pub fn done_fd(&self) -> i32 {
        self.done.as_raw_fd()
    }

    /// Runs `body` (the capture loop) with the workers running beside it; returns when `body` does
    /// and the workers finished what they were given.
    pub fn run<R>(
        &mut self,
        cam: &Camera,
        body: impl FnOnce(&mut Dispatch<'_>) -> R,
    ) -> std::io::Result<R> {
        let stop = AtomicBool::new(false);
        let (stats, done, size) = (
            &self.stats,
            self.done.as_raw_fd(),
            (self.width, self.height),
        );
        std::thread::scope(|s| {
            let mut threads = Vec::with_capacity(self.workers.len());
            for (i, w) in self.workers.iter_mut().enumerate() {
                let stop = &stop;
                let h = std::thread::Builder::new()
                    .name(format!("encode-{}-{i}", cam.name))
                    .spawn_scoped(s, move || w.run(cam, stop, stats, done, size));
                match h {
                    Ok(h) => threads.push(h),
                    Err(e) => {
                        stop.store(true, Ordering::Release);
                        threads.iter().for_each(|t| t.thread().unpark());
                        return Err(e);
                    }
                }
            }
            let mut d = Dispatch {
                lanes: &mut self.lanes,
                threads: threads.iter().map(|t| t.thread()).collect(),
                next: &mut self.next,
            };
            // Stop the workers however `body` ends: a panic unwinding past here would otherwise
            // leave them parked and the scope waiting for them forever.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut d)));
            stop.store(true, Ordering::Release);
            threads.iter().for_each(|t| t.thread().unpark());
            match r {
                Ok(r) => Ok(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

/// The capture thread's side of the queues during `EncodePool::run`.
pub struct Dispatch<'a> {
    lanes: &'a mut [Lane],
    threads: Vec<&'a std::thread::Thread>,
    next: &'a mut usize,
}

impl Dispatch<'_> {
    /// A free input buffer and its worker, round robin; `None` when every worker is busy.
    pub fn take(&mut self) -> Option<(usize, Vec<u8>)> {
        let (n, start) = (self.lanes.len(), *self.next);
        for i in (0..n).map(|k| (start + k) % n) {
            if let Some(buf) = self.lanes[i].free.try_pop() {
                *self.next = (i + 1) % n;
                return Some((i, buf));
            }
        }
        None
    }

    /// Hands a filled buffer to its worker (the one `take` named) and wakes it.
    pub fn submit(&mut self, lane: usize, job: Job) {
        // Capacity 1 and the worker's only buffer was with us, so the queue is empty.
        let pushed = self.lanes[lane].todo.try_push(job);
        debug_assert!(pushed.is_ok());
        self.threads[lane].unpark();
    }

    /// Gives an unused buffer back.
    pub fn give_back(&mut self, lane: usize, buf: Vec<u8>) {
        let job = Job {
            buf,
            len: 0,
            captured_us: 0,
        };
        self.submit(lane, job);
    }
}

impl Worker {
    fn run(
        &mut self,
        cam: &Camera,
        stop: &AtomicBool,
        stats: &EncodeStats,
        done: i32,
        size: (u32, u32),
    ) {
        loop {
            if let Some(job) = self.todo.try_pop() {
                if job.len > 0 {
                    self.encode(cam, &job, stats, size);
                }
                // Capacity 1, and this buffer is the only one of this worker: never full.
                let _ = self.free.try_push(job.buf);
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from a live array to the pool's eventfd, which outlives
                // the scoped worker threads. A failed write only delays the capture thread's
                // notice until its next poll timeout.
                let _ = unsafe { libc::write(done, one.as_ptr() as *const libc::c_void, 8) };
                continue;
            }
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
    }

    fn encode(&mut self, cam: &Camera, job: &Job, stats: &EncodeStats, (w, h): (u32, u32)) {
        let Some(mut slot) = cam.claim() else {
            return; // counted by claim
        };
        let t0 = Instant::now();
        let r = self.enc.encode(&job.buf[..job.len], slot.jpeg_buf());
        stats
            .micros
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.frames.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(n) => {
                // Two workers can finish out of order: never let an older frame follow a newer
                // one (viewers would see time jump back).
                if cam.stats().last_frame_us > job.captured_us {
                    cam.count_dropped();
                    return;
                }
                cam.publish(slot, n, job.captured_us, w, h);
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                cam.count_dropped();
                tracing::debug!(camera = %cam.name, %e, "encode failed; frame dropped");
            }
        }
    }
}

/// Clears the eventfd after the capture thread saw it readable.
pub fn drain_eventfd(fd: i32) {
    let mut b = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live 8-byte array; non-blocking fd.
    let _ = unsafe { libc::read(fd, b.as_mut_ptr() as *mut libc::c_void, 8) };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ringbuf::traits::Observer;

    use super::*;
    use crate::capture::convert::RawFormat;
    use crate::capture::now_us;
    use crate::config::spec::SourceSpec;

    fn camera() -> Camera {
        let spec = SourceSpec::Synthetic {
            width: 64,
            height: 48,
            fps: 30.0,
        };
        let health = crate::obs::health::Health::new();
        Camera::new(
            0,
            "t".into(),
            spec,
            80,
            health.register("t"),
            Arc::new(crate::shutdown::Shutdown::new()),
            Arc::new(crate::obs::events::EventBus::new(4)),
        )
    }

    fn pool(workers: usize) -> EncodePool {
        let encs = (0..workers)
            .map(|_| RawEncoder::new(RawFormat::Yuyv, 64, 48, 128, 80).unwrap())
            .collect();
        EncodePool::new(encs, 64 * 48 * 2, 64, 48).unwrap()
    }

    fn published(cam: &Camera) -> u64 {
        cam.pool.stats().published
    }

    fn wait(cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn workers_encode_into_pool_slots_and_hand_buffers_back() {
        let cam = camera();
        let mut p = pool(2);
        let frame: Vec<u8> = (0..64 * 48 * 2).map(|i| (i % 200) as u8 + 16).collect();
        let ok = p
            .run(&cam, |d| {
                for round in 0..3 {
                    // Each worker has one buffer: two takes succeed, the third finds all busy.
                    let mut lanes = Vec::new();
                    while let Some((lane, mut buf)) = d.take() {
                        buf.copy_from_slice(&frame);
                        lanes.push((lane, buf));
                    }
                    assert_eq!(lanes.len(), 2);
                    for (lane, buf) in lanes {
                        let len = buf.len();
                        let captured_us = now_us();
                        d.submit(
                            lane,
                            Job {
                                buf,
                                len,
                                captured_us,
                            },
                        );
                    }
                    // Both frames are handled: published, or dropped because the other (newer)
                    // one was published first. Newest wins, so at least one is published.
                    let handled = || published(&cam) + cam.stats().dropped;
                    assert!(wait(|| handled() >= 2 * (round + 1)));
                    assert!(published(&cam) > round);
                    assert!(wait(|| d.lanes.iter().all(|l| !l.free.is_empty())));
                }
                true
            })
            .unwrap();
        assert!(ok);
        assert!(p.stats.frames.load(Ordering::Relaxed) >= 3);
        let lease = cam.pool.lease_newest().unwrap();
        let hdr = turbojpeg::read_header(lease.jpeg()).unwrap();
        assert_eq!((hdr.width, hdr.height), (64, 48));
    }

    #[test]
    fn an_older_frame_never_follows_a_newer_one() {
        let cam = camera();
        let mut p = pool(1);
        cam.counters
            .last_frame_us
            .store(u64::MAX, Ordering::Relaxed);
        p.run(&cam, |d| {
            let (lane, buf) = d.take().unwrap();
            let len = buf.len();
            d.submit(
                lane,
                Job {
                    buf,
                    len,
                    captured_us: 1,
                },
            );
            assert!(wait(|| cam.stats().dropped == 1));
        })
        .unwrap();
        assert_eq!(published(&cam), 0);
    }
}
