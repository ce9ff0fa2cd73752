//! MMAP streaming: the driver's buffers mapped once, dequeued with a poll timeout, re-queued at once.
//!
//! Why our own instead of `v4l::io::mmap::Stream`: that one `panic!`s in `Drop` when STREAMOFF or
//! the unmapping fails with anything but ENODEV (an unplug can also give EIO or EINVAL, depending
//! on the driver), its `next()` re-queues a buffer only on the following call (so it cannot drain
//! to the newest frame), and it has no way to wait on a second fd. This one never panics: `Drop`
//! stops and unmaps best-effort and ignores errors, because after an unplug they are expected.

use std::io;
use std::time::Duration;

use v4l::v4l2;
use v4l::v4l2::vidioc;
use v4l::v4l_sys::*;

use super::ioctl::DeviceFd;

/// One dequeued buffer: which, how many bytes the driver filled, and its flags.
#[derive(Clone, Copy, Debug)]
pub struct Dequeued {
    pub index: usize,
    pub bytesused: usize,
    /// The driver flagged the frame as corrupt (V4L2_BUF_FLAG_ERROR).
    pub error: bool,
}

/// What a wait saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ready {
    /// A buffer can be dequeued (or the device reports an error: the dequeue will say which).
    pub frame: bool,
    /// The device signalled an error or hang-up (unplug).
    pub hangup: bool,
    /// The extra fd (the encode workers' eventfd) is readable.
    pub extra: bool,
}

pub struct MmapStream {
    maps: Vec<(*mut u8, usize)>,
    streaming: bool,
}

// SAFETY: the raw pointers are private MAP_SHARED mappings owned by this value alone; nothing
// else aliases them in this process, so moving the owner to another thread is sound.
unsafe impl Send for MmapStream {}

fn buf_desc() -> v4l2_buffer {
    // SAFETY: plain old data, all-zero is valid.
    let mut b: v4l2_buffer = unsafe { std::mem::zeroed() };
    b.type_ = v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
    b.memory = v4l2_memory_V4L2_MEMORY_MMAP;
    b
}

impl MmapStream {
    /// Requests `count` buffers (the driver may grant another number), maps and queues them all,
    /// and starts streaming.
    pub fn start(dev: &DeviceFd, count: u32) -> io::Result<MmapStream> {
        // SAFETY: plain old data, all-zero is valid.
        let mut req: v4l2_requestbuffers = unsafe { std::mem::zeroed() };
        req.count = count;
        req.type_ = v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
        req.memory = v4l2_memory_V4L2_MEMORY_MMAP;
        // SAFETY: the argument is the request's own struct type.
        unsafe { dev.ioctl(vidioc::VIDIOC_REQBUFS, &mut req) }?;
        if req.count < 2 {
            return Err(io::Error::other(format!(
                "driver granted {} buffers",
                req.count
            )));
        }
        let mut s = MmapStream {
            maps: Vec::with_capacity(req.count as usize),
            streaming: false,
        };
        for index in 0..req.count {
            let mut b = buf_desc();
            b.index = index;
            // SAFETY: the argument is the request's own struct type.
            unsafe { dev.ioctl(vidioc::VIDIOC_QUERYBUF, &mut b) }?;
            // SAFETY: maps the buffer the driver just described (offset and length from
            // QUERYBUF) from our open fd; the result is checked before use.
            let p = unsafe {
                v4l2::mmap(
                    std::ptr::null_mut(),
                    b.length as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    dev.raw(),
                    b.m.offset as libc::off_t,
                )
            }?;
            s.maps.push((p as *mut u8, b.length as usize));
        }
        for index in 0..s.maps.len() {
            s.queue(dev, index)?;
        }
        let mut typ = v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE as i32;
        // SAFETY: STREAMON takes an int buffer type.
        unsafe { dev.ioctl(vidioc::VIDIOC_STREAMON, &mut typ) }?;
        s.streaming = true;
        Ok(s)
    }

    pub fn buffers(&self) -> usize {
        self.maps.len()
    }

    /// Waits up to `timeout` for a frame on `dev` or for `extra` to become readable.
    pub fn wait(&self, dev: &DeviceFd, extra: Option<i32>, timeout: Duration) -> io::Result<Ready> {
        let mut fds = [
            libc::pollfd {
                fd: dev.raw(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: extra.unwrap_or(-1), // negative fds are ignored by poll(2)
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a live array of two pollfd structs, as the count says.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(Ready::default()),
                _ => Err(e),
            };
        }
        let bad = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
        Ok(Ready {
            frame: fds[0].revents & (libc::POLLIN | bad) != 0,
            hangup: fds[0].revents & bad != 0,
            extra: fds[1].revents & libc::POLLIN != 0,
        })
    }

    /// Dequeues one filled buffer; `None` when none is ready (EAGAIN).
    pub fn dequeue(&mut self, dev: &DeviceFd) -> io::Result<Option<Dequeued>> {
        let mut b = buf_desc();
        // SAFETY: the argument is the request's own struct type.
        match unsafe { dev.ioctl(vidioc::VIDIOC_DQBUF, &mut b) } {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
        let index = b.index as usize;
        let Some(&(_, len)) = self.maps.get(index) else {
            return Err(io::Error::other(format!("driver returned buffer {index}")));
        };
        Ok(Some(Dequeued {
            index,
            bytesused: (b.bytesused as usize).min(len),
            error: b.flags & V4L2_BUF_FLAG_ERROR != 0,
        }))
    }

    /// The bytes of a dequeued buffer. Valid until it is queued again.
    pub fn data(&self, d: &Dequeued) -> &[u8] {
        let (p, _) = self.maps[d.index];
        // SAFETY: the mapping is `len` bytes long and `bytesused <= len` (clamped in dequeue);
        // while the buffer is dequeued the driver does not write it, and the borrow of `self`
        // keeps the mapping alive.
        unsafe { std::slice::from_raw_parts(p, d.bytesused) }
    }

    /// Gives a buffer back to the driver.
    pub fn queue(&mut self, dev: &DeviceFd, index: usize) -> io::Result<()> {
        let mut b = buf_desc();
        b.index = index as u32;
        // SAFETY: the argument is the request's own struct type.
        unsafe { dev.ioctl(vidioc::VIDIOC_QBUF, &mut b) }
    }

    /// Stops streaming and unmaps, ignoring errors (expected after an unplug). The driver frees
    /// the buffers when the fd is closed, which follows.
    pub fn stop(&mut self, dev: &DeviceFd) {
        if self.streaming {
            let mut typ = v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE as i32;
            // SAFETY: STREAMOFF takes an int buffer type.
            if let Err(e) = unsafe { dev.ioctl(vidioc::VIDIOC_STREAMOFF, &mut typ) } {
                tracing::debug!(%e, "STREAMOFF failed (device gone?)");
            }
            self.streaming = false;
        }
        self.unmap();
    }

    fn unmap(&mut self) {
        for (p, len) in self.maps.drain(..) {
            // SAFETY: (p, len) is a mapping made in `start` and not unmapped before; the only
            // borrows of it (`data`) end before `&mut self` can be taken.
            if let Err(e) = unsafe { v4l2::munmap(p as *mut libc::c_void, len) } {
                tracing::debug!(%e, "munmap of a V4L2 buffer failed");
            }
        }
    }
}

impl Drop for MmapStream {
    fn drop(&mut self) {
        // Without the fd we cannot STREAMOFF; closing the fd does it. Unmapping is what we owe.
        self.unmap();
    }
}
