//! The worst-case memory of a configuration, computed before anything is allocated.
//!
//! beltcam allocates its big buffers once at start-up, so their sum is known from the configuration
//! alone: the frame pools, the encode buffers of raw V4L2 cameras, the synthetic pattern's image,
//! the session table, the per-connection read buffers and the event ring. `check-config` prints the
//! breakdown, the daemon logs it at start, and validation refuses a configuration whose total is
//! above `[limits] memory_budget_mb` (the unit's `MemoryMax=` would otherwise kill it under load,
//! or worse, only once the last camera starts). Pure arithmetic, so it is unit-tested here.

use crate::limits::{
    EVENT_BACKLOG, MAX_JPEG_BYTES, MAX_PENDING_CONNECTIONS, MAX_REQUEST_HEAD, MAX_SESSIONS,
    POOL_SLOTS, SLOT_BYTES,
};

/// The default `[limits] memory_budget_mb`: the shipped unit's `MemoryMax=256M` less 56 MiB of
/// headroom for what is not itemised (code, thread stacks, the allocator's slack, libjpeg's own
/// tables, kernel socket buffers charged to the cgroup).
pub const DEFAULT_MEMORY_BUDGET_MB: u64 = 200;

/// Bytes not itemised below that every process has: code, stacks actually touched, the runtimes,
/// the allocator's bookkeeping. An estimate measured on x86_64 (RSS of an idle daemon without
/// cameras is about 6 MiB); rounded up.
pub const BASE_BYTES: u64 = 16 << 20;

/// JPEG bytes a frame may take per pixel in the worst case the size check allows (2 bits a pixel,
/// well above what quality 80 gives for camera images). A size whose frames could exceed a slot at
/// this rate is refused when parsed.
pub const WORST_JPEG_BITS_PER_PIXEL: u64 = 2;

/// Largest frame (in pixels) whose worst-case JPEG still fits one pool slot.
pub const MAX_FRAME_PIXELS: u64 = MAX_JPEG_BYTES as u64 * 8 / WORST_JPEG_BITS_PER_PIXEL;

/// Bytes of one session table entry at most (`admit::sessions` checks its real size against this).
pub const SESSION_ENTRY_BYTES: u64 = 128;

/// Bytes of the session table: its entries, allocated in place.
pub const SESSION_TABLE_BYTES: u64 = MAX_SESSIONS as u64 * SESSION_ENTRY_BYTES;

/// Bytes of the largest event a subscriber is sent (a camera's online event with its format);
/// events are small JSON objects, this bounds the ring's strings.
pub const MAX_EVENT_BYTES: u64 = 512;

/// libjpeg-turbo's working memory for one compressor at `width`: its MCU-row buffers (16 rows of
/// three components, twice) and a fixed part for tables and the entropy coder.
pub fn compressor_bytes(width: u64) -> u64 {
    width * 16 * 3 * 2 + (256 << 10)
}

/// The worst-case JPEG size of a `width` x `height` frame; `Err` (with the reason) when it cannot
/// fit a pool slot. Used by the source-spec parser, so `synthetic:8192x8192` is refused up front.
pub fn check_frame_fits(width: u32, height: u32) -> Result<(), String> {
    let pixels = width as u64 * height as u64;
    if pixels > MAX_FRAME_PIXELS {
        return Err(format!(
            "{width}x{height} frames ({} MB raw YUYV) can need up to {} KB of JPEG, more than a \
             pool slot holds ({} KB); at most {MAX_FRAME_PIXELS} pixels (e.g. 3840x2160)",
            pixels * 2 / 1_000_000,
            pixels * WORST_JPEG_BITS_PER_PIXEL / 8 / 1000,
            MAX_JPEG_BYTES / 1000
        ));
    }
    Ok(())
}

/// A relayed camera's read buffer (see `http::part_reader`): a slot, a part head, a margin.
pub const RELAY_BUFFER_BYTES: u64 = (SLOT_BYTES + 4096 + 256) as u64;

/// What one camera costs beyond its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CameraLoad {
    /// The test pattern: one I420 image and one compressor.
    Synthetic { width: u32, height: u32 },
    /// JPEG files read straight into slots: nothing beyond the pool.
    Dir,
    /// An upstream MJPEG stream: one read buffer of a part head and a slot.
    Relay,
    /// A V4L2 camera. `raw` when beltcam may have to encode (a raw format requested, or no format
    /// requested, since a camera without MJPEG falls back to raw): then each of `workers` holds
    /// an input buffer of `width * height * 2` and an encoder with its scratch planes.
    V4l2 {
        width: u32,
        height: u32,
        raw: bool,
        workers: usize,
    },
}

/// One line of the breakdown.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    pub what: String,
    pub bytes: u64,
}

/// The worst case, item by item.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Budget {
    pub items: Vec<Item>,
    pub total_bytes: u64,
}

impl Budget {
    pub fn total_mib(&self) -> u64 {
        self.total_bytes.div_ceil(1 << 20)
    }
}

/// Worst-case bytes of a process serving `cameras` with `max_event_subscribers` subscribers.
/// The session table and connection buffers are sized by the compiled capacities, not the
/// configured limits: they are allocated (or may be) at their full size.
pub fn estimate(cameras: &[(String, CameraLoad)], session_table_bytes: u64) -> Budget {
    let mut items = Vec::new();
    let pool = (POOL_SLOTS * SLOT_BYTES) as u64;
    for (name, load) in cameras {
        let extra = match *load {
            CameraLoad::Synthetic { width, height } => {
                let (w, h) = (width as u64, height as u64);
                w * h * 3 / 2 + compressor_bytes(w)
            }
            CameraLoad::Dir => 0,
            CameraLoad::Relay => RELAY_BUFFER_BYTES,
            CameraLoad::V4l2 {
                width,
                height,
                raw,
                workers,
            } => {
                let (w, h) = (width as u64, height as u64);
                if raw {
                    // Input buffer (YUYV is the largest raw format: 2 bytes a pixel) plus the
                    // encoder's I420 scratch planes and its compressor, per worker.
                    workers as u64 * (w * h * 2 + w * h * 3 / 2 + compressor_bytes(w))
                } else {
                    0
                }
            }
        };
        items.push(Item {
            what: format!("camera {name}: frame pool ({POOL_SLOTS} x {SLOT_BYTES} bytes)"),
            bytes: pool,
        });
        if extra > 0 {
            items.push(Item {
                what: format!("camera {name}: capture and encode buffers"),
                bytes: extra,
            });
        }
    }
    items.push(Item {
        what: format!("session table ({MAX_SESSIONS} entries)"),
        bytes: session_table_bytes,
    });
    items.push(Item {
        what: format!(
            "request buffers ({MAX_REQUEST_HEAD} bytes x {} connections)",
            MAX_SESSIONS + MAX_PENDING_CONNECTIONS
        ),
        bytes: (MAX_REQUEST_HEAD * (MAX_SESSIONS + MAX_PENDING_CONNECTIONS)) as u64,
    });
    items.push(Item {
        what: format!("event ring ({EVENT_BACKLOG} events)"),
        bytes: EVENT_BACKLOG as u64 * MAX_EVENT_BYTES,
    });
    items.push(Item {
        what: "process base (code, stacks, runtimes)".into(),
        bytes: BASE_BYTES,
    });
    let total_bytes = items.iter().map(|i| i.bytes).sum();
    Budget { items, total_bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn total(cams: &[CameraLoad]) -> u64 {
        let named: Vec<_> = cams
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("c{i}"), *c))
            .collect();
        estimate(&named, 0).total_bytes
    }

    #[test]
    fn no_camera_is_the_fixed_part() {
        let fixed = (MAX_REQUEST_HEAD * (MAX_SESSIONS + MAX_PENDING_CONNECTIONS)) as u64
            + EVENT_BACKLOG as u64 * MAX_EVENT_BYTES
            + BASE_BYTES;
        assert_eq!(total(&[]), fixed);
        // The session table is passed in and counted.
        assert_eq!(estimate(&[], 1000).total_bytes, fixed + 1000);
    }

    #[test]
    fn each_camera_costs_its_pool_and_its_buffers() {
        let pool = (POOL_SLOTS * SLOT_BYTES) as u64;
        assert_eq!(total(&[CameraLoad::Dir]) - total(&[]), pool);
        let syn = total(&[CameraLoad::Synthetic {
            width: 1280,
            height: 720,
        }]) - total(&[]);
        assert_eq!(syn, pool + 1280 * 720 * 3 / 2 + compressor_bytes(1280));
        let mjpeg = CameraLoad::V4l2 {
            width: 1920,
            height: 1080,
            raw: false,
            workers: 2,
        };
        assert_eq!(total(&[mjpeg]) - total(&[]), pool);
        let raw = CameraLoad::V4l2 {
            width: 1920,
            height: 1080,
            raw: true,
            workers: 2,
        };
        let per_worker = 1920 * 1080 * 2 + 1920 * 1080 * 3 / 2 + compressor_bytes(1920);
        assert_eq!(total(&[raw]) - total(&[]), pool + 2 * per_worker);
    }

    #[test]
    fn default_budget_fits_the_units_memory_max_with_headroom() {
        // Four 1080p raw cameras with two workers each, the largest ordinary box, fit.
        let raw = CameraLoad::V4l2 {
            width: 1920,
            height: 1080,
            raw: true,
            workers: 2,
        };
        assert!(total(&[raw; 4]) < DEFAULT_MEMORY_BUDGET_MB * MIB);
        // Eight default synthetic cameras fit too; the eight 8192x8192 ones would not.
        let syn = CameraLoad::Synthetic {
            width: 1280,
            height: 720,
        };
        assert!(total(&[syn; 8]) < DEFAULT_MEMORY_BUDGET_MB * MIB);
        let huge = CameraLoad::Synthetic {
            width: 8192,
            height: 8192,
        };
        assert!(total(&[huge; 8]) > DEFAULT_MEMORY_BUDGET_MB * MIB);
        // Below the shipped unit's MemoryMax, with at least 32 MiB to spare.
        let unit = include_str!("../../systemd/beltcam.service");
        let max_mb: u64 = unit
            .lines()
            .find_map(|l| l.strip_prefix("MemoryMax="))
            .and_then(|v| v.trim().strip_suffix('M')?.parse().ok())
            .expect("MemoryMax=NNNM in the unit");
        assert!(DEFAULT_MEMORY_BUDGET_MB + 32 <= max_mb, "{max_mb}");
    }

    #[test]
    fn frames_that_cannot_fit_a_slot_are_refused() {
        assert!(check_frame_fits(1920, 1080).is_ok());
        assert!(check_frame_fits(3840, 2160).is_ok());
        let e = check_frame_fits(8192, 8192).unwrap_err();
        assert!(e.contains("pool slot"), "{e}");
        assert!(check_frame_fits(7680, 4320).is_err());
    }

    #[test]
    fn items_add_up_to_the_total() {
        let b = estimate(&[("a".into(), CameraLoad::Dir)], 123);
        assert_eq!(b.items.iter().map(|i| i.bytes).sum::<u64>(), b.total_bytes);
        assert_eq!(b.total_mib(), b.total_bytes.div_ceil(MIB));
    }
}
