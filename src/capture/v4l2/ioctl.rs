//! The V4L2 device edge: opening a node and the query/format ioctls, on v4l's raw `ioctl` wrapper.
//!
//! Why not `v4l::Device`: its conversions `unwrap()` on device strings that are not UTF-8 (cheap
//! UVC cameras have such card names) and its handle `unwrap()`s `close` in `Drop`; a camera must
//! never be able to panic the daemon. Here the fd is an `OwnedFd` (close errors are ignored, as
//! they must be after an unplug) and strings are decoded lossily. Unsafe code in this module is
//! limited to passing zeroed `#[repr(C)]` structs of the right type to the matching ioctl.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use v4l::v4l2;
use v4l::v4l2::vidioc;
use v4l::v4l_sys::*;

/// An open V4L2 node (non-blocking, so VIDIOC_DQBUF returns EAGAIN instead of waiting).
pub struct DeviceFd {
    fd: OwnedFd,
}

/// What VIDIOC_QUERYCAP says about a node.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Caps {
    pub driver: String,
    pub card: String,
    pub bus: String,
    /// The node captures single-planar video (what beltcam streams from).
    pub capture: bool,
    /// The node captures multi-planar video only (not supported yet).
    pub capture_mplane: bool,
    pub streaming: bool,
}

/// One entry of VIDIOC_ENUM_FMT.
#[derive(Clone, Debug)]
pub struct FormatDesc {
    pub fourcc: [u8; 4],
    pub description: String,
    pub compressed: bool,
}

/// A frame size as the driver lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeEnum {
    Discrete(u32, u32),
    /// min w, min h, max w, max h, step w, step h
    Stepwise([u32; 6]),
}

/// A frame interval (seconds per frame) as the driver lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntervalEnum {
    Discrete(u32, u32),
    /// min and max as (numerator, denominator)
    Stepwise((u32, u32), (u32, u32)),
}

/// The format the driver actually set.
#[derive(Clone, Copy, Debug)]
pub struct PixFormat {
    pub fourcc: [u8; 4],
    pub width: u32,
    pub height: u32,
    pub bytesperline: u32,
    pub sizeimage: u32,
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_string()
}

impl DeviceFd {
    pub fn open(path: &Path) -> io::Result<DeviceFd> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(DeviceFd { fd: f.into() })
    }

    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Runs one ioctl whose argument is `arg`.
    ///
    /// # Safety
    /// `T` must be the struct type that `req` is defined with (linux/videodev2.h): the kernel
    /// copies `size_of` that type in and out of `arg`.
    pub(super) unsafe fn ioctl<T>(&self, req: vidioc::_IOC_TYPE, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is a live, exclusive borrow of the type the request expects (the
        // caller's contract), so the kernel's copy stays inside it; the fd is owned and open.
        unsafe { v4l2::ioctl(self.raw(), req, arg as *mut T as *mut std::os::raw::c_void) }
    }

    pub fn caps(&self) -> io::Result<Caps> {
        // SAFETY: v4l2_capability is plain old data; all-zero is a valid value.
        let mut c: v4l2_capability = unsafe { std::mem::zeroed() };
        // SAFETY: the argument is the request's own struct type.
        unsafe { self.ioctl(vidioc::VIDIOC_QUERYCAP, &mut c) }?;
        // Nodes of a multi-node device (UVC's metadata node) differ: use the node's own caps.
        let caps = if c.capabilities & V4L2_CAP_DEVICE_CAPS != 0 {
            c.device_caps
        } else {
            c.capabilities
        };
        Ok(Caps {
            driver: cstr(&c.driver),
            card: cstr(&c.card),
            bus: cstr(&c.bus_info),
            capture: caps & V4L2_CAP_VIDEO_CAPTURE != 0,
            capture_mplane: caps & V4L2_CAP_VIDEO_CAPTURE_MPLANE != 0,
            streaming: caps & V4L2_CAP_STREAMING != 0,
        })
    }

    pub fn formats(&self) -> io::Result<Vec<FormatDesc>> {
        let mut out = Vec::new();
        for index in 0..256 {
            // SAFETY: plain old data, all-zero is valid.
            let mut d: v4l2_fmtdesc = unsafe { std::mem::zeroed() };
            d.index = index;
            d.type_ = v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
            // SAFETY: the argument is the request's own struct type.
            let r = unsafe { self.ioctl(vidioc::VIDIOC_ENUM_FMT, &mut d) };
            match r {
                Ok(()) => out.push(FormatDesc {
                    fourcc: d.pixelformat.to_le_bytes(),
                    description: cstr(&d.description),
                    compressed: d.flags & V4L2_FMT_FLAG_COMPRESSED != 0,
                }),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub fn sizes(&self, fourcc: [u8; 4]) -> io::Result<Vec<SizeEnum>> {
        let mut out = Vec::new();
        for index in 0..256 {
            // SAFETY: plain old data, all-zero is valid.
            let mut s: v4l2_frmsizeenum = unsafe { std::mem::zeroed() };
            s.index = index;
            s.pixel_format = u32::from_le_bytes(fourcc);
            // SAFETY: the argument is the request's own struct type.
            let r = unsafe { self.ioctl(vidioc::VIDIOC_ENUM_FRAMESIZES, &mut s) };
            match r {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => break,
                Err(e) => return Err(e),
            }
            // SAFETY: the driver filled the union member that `type_` names.
            unsafe {
                if s.type_ == v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_DISCRETE {
                    let d = s.__bindgen_anon_1.discrete;
                    out.push(SizeEnum::Discrete(d.width, d.height));
                } else {
                    let w = s.__bindgen_anon_1.stepwise;
                    out.push(SizeEnum::Stepwise([
                        w.min_width,
                        w.min_height,
                        w.max_width,
                        w.max_height,
                        w.step_width.max(1),
                        w.step_height.max(1),
                    ]));
                    break; // stepwise and continuous come alone
                }
            }
        }
        Ok(out)
    }

    pub fn intervals(&self, fourcc: [u8; 4], w: u32, h: u32) -> io::Result<Vec<IntervalEnum>> {
        let mut out = Vec::new();
        for index in 0..256 {
            // SAFETY: plain old data, all-zero is valid.
            let mut i: v4l2_frmivalenum = unsafe { std::mem::zeroed() };
            i.index = index;
            i.pixel_format = u32::from_le_bytes(fourcc);
            i.width = w;
            i.height = h;
            // SAFETY: the argument is the request's own struct type.
            let r = unsafe { self.ioctl(vidioc::VIDIOC_ENUM_FRAMEINTERVALS, &mut i) };
            match r {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => break,
                Err(e) => return Err(e),
            }
            // SAFETY: the driver filled the union member that `type_` names.
            unsafe {
                if i.type_ == v4l2_frmivaltypes_V4L2_FRMIVAL_TYPE_DISCRETE {
                    let d = i.__bindgen_anon_1.discrete;
                    out.push(IntervalEnum::Discrete(d.numerator, d.denominator));
                } else {
                    let s = i.__bindgen_anon_1.stepwise;
                    out.push(IntervalEnum::Stepwise(
                        (s.min.numerator, s.min.denominator),
                        (s.max.numerator, s.max.denominator),
                    ));
                    break;
                }
            }
        }
        Ok(out)
    }

    /// VIDIOC_S_FMT; returns what the driver chose (it may differ from the request).
    pub fn set_format(&self, fourcc: [u8; 4], width: u32, height: u32) -> io::Result<PixFormat> {
        // SAFETY: plain old data, all-zero is valid.
        let mut f: v4l2_format = unsafe { std::mem::zeroed() };
        f.type_ = v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
        // `pix` is the union member for VIDEO_CAPTURE (writing a union field is safe).
        f.fmt.pix.width = width;
        f.fmt.pix.height = height;
        f.fmt.pix.pixelformat = u32::from_le_bytes(fourcc);
        f.fmt.pix.field = v4l2_field_V4L2_FIELD_NONE;
        // SAFETY: the argument is the request's own struct type.
        unsafe { self.ioctl(vidioc::VIDIOC_S_FMT, &mut f) }?;
        // SAFETY: the driver answered in the VIDEO_CAPTURE member.
        let p = unsafe { f.fmt.pix };
        Ok(PixFormat {
            fourcc: p.pixelformat.to_le_bytes(),
            width: p.width,
            height: p.height,
            bytesperline: p.bytesperline,
            sizeimage: p.sizeimage,
        })
    }

    /// VIDIOC_S_PARM with a frame interval; returns the interval the driver chose, if it says.
    pub fn set_interval(&self, num: u32, den: u32) -> io::Result<Option<(u32, u32)>> {
        // SAFETY: plain old data, all-zero is valid.
        let mut p: v4l2_streamparm = unsafe { std::mem::zeroed() };
        p.type_ = v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
        // `capture` is the union member for VIDEO_CAPTURE.
        p.parm.capture.timeperframe.numerator = num;
        p.parm.capture.timeperframe.denominator = den;
        // SAFETY: the argument is the request's own struct type.
        unsafe { self.ioctl(vidioc::VIDIOC_S_PARM, &mut p) }?;
        // SAFETY: the driver answered in the VIDEO_CAPTURE member.
        let t = unsafe { p.parm.capture.timeperframe };
        Ok((t.numerator != 0 && t.denominator != 0).then_some((t.numerator, t.denominator)))
    }
}
