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
//! The threads live as long as the pool: started when the stream opens, stopped and joined when
//! the pool is dropped (the stream closes, the capture thread returns, the camera is removed).
//! They hold the camera by `Arc`, so no borrow has to end with each `capture` call.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
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

/// The workers of one open stream and the capture thread's ends of their queues. Dropping it stops
/// and joins the workers.
pub struct EncodePool {
    lanes: Vec<Lane>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Written by the workers: declared after nothing they need, and the threads are joined in
    /// `drop` before any field is dropped.
    done: OwnedFd,
    next: usize,
    pub stats: Arc<EncodeStats>,
}

impl EncodePool {
    /// Starts one worker thread per encoder, each with an input buffer of `frame_bytes`,
    /// publishing into `cam`.
    pub fn start(
        cam: &Arc<Camera>,
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
        let mut pool = EncodePool {
            lanes: Vec::new(),
            threads: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            done,
            next: 0,
            stats: Arc::new(EncodeStats::default()),
        };
        for (i, enc) in encoders.into_iter().enumerate() {
            let (todo_tx, todo_rx) = HeapRb::<Job>::new(1).split();
            let (mut free_tx, free_rx) = HeapRb::<Vec<u8>>::new(1).split();
            let _ = free_tx.try_push(vec![0u8; frame_bytes]);
            let mut worker = Worker {
                todo: todo_rx,
                free: free_tx,
                enc,
            };
            let (cam, stop, stats) = (
                Arc::clone(cam),
                Arc::clone(&pool.stop),
                Arc::clone(&pool.stats),
            );
            let done = pool.done.as_raw_fd();
            // On an error, dropping `pool` stops and joins the workers already started.
            let t = std::thread::Builder::new()
                .name(format!("encode-{}-{i}", cam.name))
                .spawn(move || worker.run(&cam, &stop, &stats, done, (width, height)))?;
            pool.lanes.push(Lane {
                todo: todo_tx,
                free: free_rx,
            });
            pool.threads.push(t);
        }
        Ok(pool)
    }

    /// The fd that becomes readable when a worker finished a frame.
    pub fn done_fd(&self) -> i32 {
        self.done.as_raw_fd()
    }

    /// The capture thread's side of the queues, for one `capture` call.
    pub fn dispatch(&mut self) -> Dispatch<'_> {
        Dispatch {
            lanes: &mut self.lanes,
            threads: &self.threads,
            next: &mut self.next,
        }
    }

    /// Whether every worker thread is still running (a panicked one is not).
    pub fn alive(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }
}

impl Drop for EncodePool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in &self.threads {
            t.thread().unpark();
        }
        // A worker finishes the frame in hand (one encode, milliseconds) and returns; joining
        // here keeps the eventfd open until no worker can write to it.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The capture thread's side of the queues (`EncodePool::dispatch`).
pub struct Dispatch<'a> {
    lanes: &'a mut [Lane],
    threads: &'a [JoinHandle<()>],
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
        self.threads[lane].thread().unpark();
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
                // the worker threads (`EncodePool::drop` joins them before closing it). A failed write only delays the capture thread's
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

    fn camera(name: &str) -> Arc<Camera> {
        crate::capture::test_camera(name)
    }

    fn pool(cam: &Arc<Camera>, workers: usize) -> EncodePool {
        let encs = (0..workers)
            .map(|_| RawEncoder::new(RawFormat::Yuyv, 64, 48, 128, 80).unwrap())
            .collect();
        EncodePool::start(cam, encs, 64 * 48 * 2, 64, 48).unwrap()
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
        let cam = camera("t");
        let mut p = pool(&cam, 2);
        let frame: Vec<u8> = (0..64 * 48 * 2).map(|i| (i % 200) as u8 + 16).collect();
        {
            let d = &mut p.dispatch();
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
        }
        assert!(p.stats.frames.load(Ordering::Relaxed) >= 3);
        let lease = cam.pool.lease_newest().unwrap();
        let hdr = turbojpeg::read_header(lease.jpeg()).unwrap();
        assert_eq!((hdr.width, hdr.height), (64, 48));
    }

    #[test]
    fn an_older_frame_never_follows_a_newer_one() {
        let cam = camera("t");
        let mut p = pool(&cam, 1);
        cam.counters
            .last_frame_us
            .store(u64::MAX, Ordering::Relaxed);
        {
            let mut d = p.dispatch();
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
        }
        assert_eq!(published(&cam), 0);
    }

    /// Thread ids of this process's threads whose name starts with `prefix` (names are cut at 15
    /// bytes by the kernel).
    fn tids(prefix: &str) -> std::collections::BTreeSet<u64> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
                comm.starts_with(prefix)
                    .then(|| e.file_name().to_str()?.parse().ok())?
            })
            .collect()
    }

    #[test]
    fn workers_live_as_long_as_the_pool_and_stop_with_it() {
        // "encode-tidcount-0" is cut to "encode-tidcoun": no other test's threads match.
        let prefix = "encode-tidcoun";
        let cam = camera("tidcount");
        let mut p = pool(&cam, 2);
        let frame = vec![128u8; 64 * 48 * 2];
        // A thread names itself once running: wait for both names.
        assert!(wait(|| tids(prefix).len() == 2), "two workers started");
        let first = tids(prefix);
        let (mut seen, mut rounds) = (first.clone(), 0);
        let t0 = Instant::now();
        // Three seconds of what the V4L2 source does: one `dispatch` per 500 ms capture window
        // (each used to spawn and join the workers), frames handed over as workers free up.
        while t0.elapsed() < Duration::from_secs(3) {
            let mut d = p.dispatch();
            let end = Instant::now() + Duration::from_millis(500);
            while Instant::now() < end {
                if let Some((lane, mut buf)) = d.take() {
                    buf.copy_from_slice(&frame);
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
                seen.extend(tids(prefix));
                std::thread::sleep(Duration::from_millis(10));
            }
            rounds += 1;
        }
        assert!(rounds >= 5);
        assert!(published(&cam) > 10, "workers encoded: {}", published(&cam));
        assert!(p.alive());
        assert_eq!(
            seen, first,
            "worker threads were replaced over {rounds} windows"
        );
        drop(p);
        assert!(
            wait(|| tids(prefix).is_empty()),
            "workers outlived their pool"
        );
    }
}
