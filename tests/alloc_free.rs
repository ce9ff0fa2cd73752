//! The synthetic camera's per-frame work allocates nothing: a counting global allocator watches
//! the capture thread's own allocations while the real `Synthetic` source draws, encodes and
//! publishes frames into a camera's pool.
//!
//! What this can see: allocations through Rust's global allocator on this thread. libjpeg-turbo's
//! own `malloc` calls (inside the C library) are not counted; the test says nothing about them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use beltcam::capture::encode::I420;
use beltcam::capture::synthetic::{render, Synthetic};
use beltcam::capture::{Camera, FrameSource};
use beltcam::config::spec::SourceSpec;

struct Counting;

thread_local! {
    // `const` initialisation: reading it never allocates (which would recurse into `alloc`).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(|c| c.get());
    f();
    ALLOCS.with(|c| c.get()) - before
}

#[test]
fn the_overlay_is_drawn_without_allocating() {
    let mut img = I420::new(320, 240);
    render(&mut img, 1, "front"); // warm-up, outside the count
    let n = allocations_during(|| {
        for frame in 2..1002 {
            render(&mut img, frame, "front-camera-with-a-long-name");
        }
    });
    assert_eq!(n, 0, "render() allocated {n} times over 1000 frames");
}

#[test]
fn a_synthetic_capture_step_allocates_nothing() {
    let health = beltcam::obs::health::Health::new();
    let spec = SourceSpec::Synthetic {
        width: 320,
        height: 240,
        fps: 240.0,
    };
    let cam = Camera::new(
        0,
        "front".into(),
        spec,
        80,
        health.register("capture:front"),
        Arc::new(beltcam::shutdown::Shutdown::new()),
        Arc::new(beltcam::obs::events::EventBus::new(4)),
    );
    let mut src = Synthetic::new(320, 240, 240.0);
    src.open(&cam).expect("open");
    src.capture(&cam).expect("first frame"); // warm-up: lazily set-up state, outside the count
    let published = cam.stats().published;
    let n = allocations_during(|| {
        for _ in 0..200 {
            src.capture(&cam).expect("capture");
        }
    });
    assert_eq!(
        cam.stats().published - published,
        200,
        "every step published a frame"
    );
    assert_eq!(n, 0, "200 capture steps allocated {n} times");
}
