//! The pool's memory: one shared-memory file (`memfd_create`) mapped once, slot after slot.
//!
//! Why a file: a socket can then be sent a frame with `sendfile(2)`, which hands the kernel the
//! file's pages by reference instead of copying the bytes into every socket's buffer. That copy is
//! most of what a viewer costs (issue 15). A page so referenced stays in the socket's queue until
//! the peer has it, long after the lease that sent it is gone; the slot's next writer must not
//! write into it. So the writer first drops the slot's pages from the file ([`Memory::renew`],
//! `fallocate(PUNCH_HOLE)` over whole pages): the queued data keeps the old pages, alive until the
//! kernel lets go of them, and the writer's stores fault in fresh ones. Only slots that were sent
//! this way are renewed ([`Memory::splice_from`] marks them).
//!
//! Where the kernel has no memfd or refuses the check at start (a punched page must really be
//! replaced), the pool lives in anonymous memory and is sent by copy, as before.
//!
//! Either way the mapping is reserved whole and backed lazily: RSS grows only with the pages
//! frames are written to.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

/// The largest page size a slot must be a whole number of (arm64 kernels use 4, 16 or 64 KiB).
const MAX_PAGE: usize = 64 * 1024;

pub struct Memory {
    base: NonNull<u8>,
    len: usize,
    slot_len: usize,
    file: Option<OwnedFd>,
    /// Per slot: sent by reference since its last renewal.
    spliced: Box<[AtomicBool]>,
}

// SAFETY: the mapping is plain memory; who may touch which slot is the pool's business (its
// claim and leases), and the flags are atomics.
unsafe impl Send for Memory {}
unsafe impl Sync for Memory {}

impl Memory {
    /// `slots` slots of `slot_len` bytes (a multiple of every page size).
    pub fn new(slots: usize, slot_len: usize) -> Self {
        assert!(slot_len % MAX_PAGE == 0 && slots > 0);
        let len = slots * slot_len;
        let spliced = (0..slots).map(|_| AtomicBool::new(false)).collect();
        let (base, file) = match Self::in_file(len) {
            Ok((base, file)) => (base, Some(file)),
            Err(e) => {
                warn!("frame pool: no shared-memory file ({e}); frames are sent by copy");
                (Self::anonymous(len), None)
            }
        };
        Memory {
            base,
            len,
            slot_len,
            file,
            spliced,
        }
    }

    fn in_file(len: usize) -> std::io::Result<(NonNull<u8>, OwnedFd)> {
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let file = memfd_create(c"beltcam-pool", MemFdCreateFlag::MFD_CLOEXEC)?;
        nix::unistd::ftruncate(&file, len as i64)?;
        // SAFETY: a fresh shared mapping of a file this struct owns; unmapped in Drop.
        let base = unsafe {
            mmap(
                None,
                std::num::NonZeroUsize::new(len).expect("len > 0"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }?;
        let base = base.cast::<u8>();
        // The check: a page written, punched and read again must read as zero (a fresh page).
        // SAFETY: inside the mapping just made.
        unsafe { base.as_ptr().write_volatile(1) };
        let checked = punch(file.as_raw_fd(), 0, MAX_PAGE).and_then(|()| {
            // SAFETY: as above.
            match unsafe { base.as_ptr().read_volatile() } {
                0 => Ok(()),
                _ => Err(std::io::Error::other("a punched page kept its bytes")),
            }
        });
        if let Err(e) = checked {
            // SAFETY: the mapping made above, not used after this.
            let _ = unsafe { nix::sys::mman::munmap(base.cast(), len) };
            return Err(e);
        }
        Ok((base, file))
    }

    fn anonymous(len: usize) -> NonNull<u8> {
        use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
        // SAFETY: a fresh private mapping; unmapped in Drop.
        let base = unsafe {
            mmap_anonymous(
                None,
                std::num::NonZeroUsize::new(len).expect("len > 0"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        };
        base.expect("the frame pool's memory (a few MiB, reserved at start)")
            .cast()
    }

    /// Slot `idx`'s bytes. Who may read or write them is the pool's business.
    pub fn slot(&self, idx: usize) -> *mut u8 {
        assert!(idx * self.slot_len < self.len);
        // SAFETY: inside the mapping (checked above).
        unsafe { self.base.as_ptr().add(idx * self.slot_len) }
    }

    /// Where `len` bytes at `start` of slot `idx` are in the pool's file, for `sendfile(2)`:
    /// `(file, offset)`, or `None` if the pool has no file. Marks the slot, so its next writer
    /// renews it first ([`Memory::renew`]). Call it while holding a lease on the slot.
    pub fn splice_from(&self, idx: usize, start: usize) -> Option<(RawFd, u64)> {
        let file = self.file.as_ref()?;
        // Relaxed: the lease's release and the next writer's claim (Acquire) order it.
        self.spliced[idx].store(true, Ordering::Relaxed);
        Some((file.as_raw_fd(), (idx * self.slot_len + start) as u64))
    }

    /// Before slot `idx` is written again: if the kernel may still hold its pages (it was sent by
    /// reference), they are dropped from the file, so the writer writes fresh pages and what is
    /// still queued on sockets keeps the old bytes. Call it holding the slot's writer claim.
    pub fn renew(&self, idx: usize) {
        if !self.spliced[idx].swap(false, Ordering::Relaxed) {
            return;
        }
        let Some(file) = &self.file else { return };
        if let Err(e) = punch(file.as_raw_fd(), idx * self.slot_len, self.slot_len) {
            // Not expected (the check at start punched the same file). The slot is written in
            // place; what sockets still queue of its last frame may show the new bytes.
            warn!("frame pool: could not renew slot {idx}'s pages: {e}");
        }
    }
}

fn punch(fd: RawFd, offset: usize, len: usize) -> std::io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    fallocate(
        fd,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    )?;
    Ok(())
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; no slot is borrowed once the pool is dropped.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
    }
}

/// For tests: whether `m` has its file; says SKIP (a failure under `CI=true`: every CI kernel has
/// memfd) when it does not.
#[cfg(test)]
#[allow(clippy::print_stderr)]
pub(super) fn file_here(test: &str, m: &Memory) -> bool {
    if m.file.is_some() {
        return true;
    }
    eprintln!("SKIP {test}: the frame pool has no shared-memory file here");
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "CI=true: memfd is on every CI kernel"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_zeroed_and_apart() {
        let m = Memory::new(3, MAX_PAGE);
        for idx in 0..3 {
            // SAFETY: slot bytes, nobody else uses them in this test.
            let s = unsafe { std::slice::from_raw_parts_mut(m.slot(idx), MAX_PAGE) };
            assert!(s.iter().all(|&b| b == 0));
            s.fill(idx as u8 + 1);
        }
        // SAFETY: as above.
        let first = unsafe { std::slice::from_raw_parts(m.slot(0), MAX_PAGE) };
        assert!(first.iter().all(|&b| b == 1), "slot 1 overlapped slot 0");
    }

    #[test]
    fn renew_only_touches_a_spliced_slot() {
        let m = Memory::new(2, MAX_PAGE);
        if !file_here("renew_only_touches_a_spliced_slot", &m) {
            return;
        }
        // SAFETY: slot bytes, nobody else uses them in this test.
        unsafe { m.slot(0).write(7) };
        m.renew(0);
        // SAFETY: as above.
        assert_eq!(
            unsafe { m.slot(0).read() },
            7,
            "a slot never sent was renewed"
        );
        let (_, off) = m.splice_from(0, 100).unwrap();
        assert_eq!(off, 100);
        assert_eq!(m.splice_from(1, 5).unwrap().1, MAX_PAGE as u64 + 5);
        m.renew(0);
        // SAFETY: as above.
        assert_eq!(
            unsafe { m.slot(0).read() },
            0,
            "a spliced slot kept its pages"
        );
    }
}
