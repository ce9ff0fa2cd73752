//! Raw -> JPEG encoding throughput at 1920x1080, the way the V4L2 encode workers do it: YUYV
//! (packed 4:2:2, what UVC cameras send) and NV12 (what CSI pipelines send), quality 80.
//!
//! Frames are real-sized and carry the synthetic test pattern (a flat frame would compress
//! unrealistically fast). `one_thread` times one encoder; `two_threads` runs one encoder per core,
//! as the worker pool does on a 2-core box, and reports frames per second in aggregate.
//!
//! Run: `cargo bench --bench encode` (criterion; stable Rust).

use std::time::Duration;

use beltcam::capture::convert::{RawEncoder, RawFormat};
use beltcam::capture::encode::I420;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const W: usize = 1920;
const H: usize = 1080;
const QUALITY: u8 = 80;

/// One 1080p frame of the test pattern in `fmt` (YUYV or NV12).
fn frame(fmt: RawFormat) -> Vec<u8> {
    let mut img = I420::new(W, H);
    beltcam::capture::synthetic::render(&mut img, 42, "bench");
    let (y, u, v) = img.planes_mut();
    match fmt {
        RawFormat::Yuyv => {
            let mut out = vec![0u8; W * H * 2];
            for row in 0..H {
                for pair in 0..W / 2 {
                    let o = row * W * 2 + pair * 4;
                    let c = (row / 2) * (W / 2) + pair;
                    out[o] = y[row * W + pair * 2];
                    out[o + 1] = u[c];
                    out[o + 2] = y[row * W + pair * 2 + 1];
                    out[o + 3] = v[c];
                }
            }
            out
        }
        RawFormat::Nv12 => {
            let mut out = y.to_vec();
            for (a, b) in u.iter().zip(v.iter()) {
                out.push(*a);
                out.push(*b);
            }
            out
        }
        other => panic!("no bench frame for {other:?}"),
    }
}

fn encoder(fmt: RawFormat) -> RawEncoder {
    let stride = match fmt {
        RawFormat::Yuyv => W * 2,
        _ => W,
    };
    RawEncoder::new(fmt, W, H, stride, QUALITY).expect("encoder")
}

fn bench(c: &mut Criterion) {
    for (name, fmt) in [("yuyv", RawFormat::Yuyv), ("nv12", RawFormat::Nv12)] {
        let src = frame(fmt);
        let mut out = vec![0u8; 4 << 20];
        let mut enc = encoder(fmt);
        let mut g = c.benchmark_group(format!("encode_1080p_{name}"));
        g.sample_size(20).measurement_time(Duration::from_secs(8));
        g.throughput(Throughput::Elements(1));
        g.bench_function("one_thread", |b| {
            b.iter(|| enc.encode(&src, &mut out).expect("encodes"))
        });
        // Two workers, one per core, each with its own encoder and frame: 2 x 8 frames an iteration.
        const PER_THREAD: u64 = 8;
        g.throughput(Throughput::Elements(2 * PER_THREAD));
        let mut workers: Vec<(RawEncoder, Vec<u8>, Vec<u8>)> = (0..2)
            .map(|_| (encoder(fmt), src.clone(), vec![0u8; 4 << 20]))
            .collect();
        g.bench_function("two_threads", |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for (enc, src, out) in workers.iter_mut() {
                        s.spawn(move || {
                            for _ in 0..PER_THREAD {
                                enc.encode(src, out).expect("encodes");
                            }
                        });
                    }
                });
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
