//! V4L2 controls (brightness, contrast, exposure, white balance, focus...): list them, set one,
//! and apply a camera's `[camera.controls]` table when its device opens.
//!
//! Names are V4L2's own, normalised the way `v4l2-ctl --list-ctrls` prints them (lowercase, every
//! run of other characters one `_`): "White Balance, Automatic" is `white_balance_automatic`, so
//! the names in the config, in `GET /cam/NAME/controls` and in `v4l2-ctl --set-ctrl` are the same.
//!
//! Who calls what: the capture thread applies the table on the fd it streams from (`apply`, at
//! every open, so a replugged camera gets it again); the HTTP side opens a separate fd of the same
//! node for each request (`list_device`, `set_device`). V4L2 allows any number of opens for
//! control ioctls while another fd streams (the spec's example is a control panel beside a capture
//! application), and the driver serialises control access, so nothing here races the capture
//! thread's close and re-open: a request during an unplug simply fails to open the node.

use std::io;
use std::path::Path;

use serde::Serialize;
use v4l::v4l2::vidioc;
use v4l::v4l_sys::*;

use super::ioctl::DeviceFd;

/// Most controls listed for one device (UVC cameras have 10-30, vivid about 60).
pub const MAX_CONTROLS: usize = 256;
/// Most menu items listed for one menu control.
const MAX_MENU_ITEMS: i64 = 64;

/// One control as `GET /cam/NAME/controls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Control {
    pub id: u32,
    /// Normalised name (see the module doc).
    pub name: String,
    /// V4L2's own name ("White Balance, Automatic").
    pub label: String,
    /// `integer`, `boolean`, `menu`, `integer_menu`, `button`, `integer64`, `bitmask`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub min: i64,
    pub max: i64,
    pub step: u64,
    pub default: i64,
    /// `None` for write-only controls (buttons) and when the driver refuses to read it.
    pub value: Option<i64>,
    pub read_only: bool,
    /// Settable, but without effect now (an automatic mode is on).
    pub inactive: bool,
    /// Menu controls: the valid values and their labels (menus may skip indices).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub menu: Vec<MenuItem>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MenuItem {
    pub value: i64,
    pub label: String,
}

/// Why a control could not be read or set; `status` maps each to an HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot open {device}: {err}")]
    Open { device: String, err: io::Error },
    #[error("no control named {0:?} (GET the controls list for the names)")]
    Unknown(String),
    #[error("{name} must be {}", allowed(.min, .max, .step, .menu))]
    OutOfRange {
        name: String,
        min: i64,
        max: i64,
        step: u64,
        menu: Vec<i64>,
    },
    #[error("{0} is read-only")]
    ReadOnly(String),
    /// EACCES / EBUSY from the driver: inactive under an automatic mode, or grabbed while streaming.
    #[error("the driver refused to set {name} now ({err}); an automatic mode may be on")]
    Refused { name: String, err: io::Error },
    #[error("{what} {name}: {err}")]
    Io {
        what: &'static str,
        name: String,
        err: io::Error,
    },
}

fn allowed(min: &i64, max: &i64, step: &u64, menu: &[i64]) -> String {
    if !menu.is_empty() {
        let v: Vec<String> = menu.iter().map(i64::to_string).collect();
        return format!("one of {}", v.join(", "));
    }
    if *step > 1 {
        format!("{min}..={max} in steps of {step}")
    } else {
        format!("{min}..={max}")
    }
}

impl ControlError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::Open { err, .. } => match err.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => 503,
                _ => 502,
            },
            ControlError::Unknown(_) => 404,
            ControlError::OutOfRange { .. } => 400,
            ControlError::ReadOnly(_) | ControlError::Refused { .. } => 409,
            ControlError::Io { .. } => 502,
        }
    }
}

/// V4L2's name in `v4l2-ctl`'s form: lowercase ASCII letters and digits, other runs as one `_`.
pub fn normalise(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    let mut gap = false;
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

/// Whether `value` is one `c` accepts; the error names the allowed values. Pure, for the HTTP
/// answer: the kernel would silently clamp an out-of-range integer instead.
pub fn check_value(c: &Control, value: i64) -> Result<(), ControlError> {
    if c.read_only {
        return Err(ControlError::ReadOnly(c.name.clone()));
    }
    if c.kind == "button" {
        return Ok(()); // any value presses it (its range is 0..=0)
    }
    let on_step = c.step <= 1 || (value.wrapping_sub(c.min) as u64) % c.step == 0;
    let ok = if c.menu.is_empty() {
        (c.min..=c.max).contains(&value) && on_step
    } else {
        c.menu.iter().any(|m| m.value == value)
    };
    if ok {
        Ok(())
    } else {
        Err(ControlError::OutOfRange {
            name: c.name.clone(),
            min: c.min,
            max: c.max,
            step: c.step,
            menu: c.menu.iter().map(|m| m.value).collect(),
        })
    }
}

fn kind_of(t: u32) -> Option<&'static str> {
    Some(match t {
        1 => "integer",
        2 => "boolean",
        3 => "menu",
        4 => "button",
        5 => "integer64",
        8 => "bitmask",
        9 => "integer_menu",
        // Control classes are headings; strings and compound controls are not numbers.
        _ => return None,
    })
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_string()
}

/// Every numeric control of the device, in the driver's order, current values included.
pub fn list(dev: &DeviceFd) -> io::Result<Vec<Control>> {
    let mut out = Vec::new();
    let mut id = 0u32;
    // Bounded: a driver that loops its enumeration cannot keep the caller here.
    for _ in 0..MAX_CONTROLS * 2 {
        // SAFETY: plain old data, all-zero is valid.
        let mut q: v4l2_query_ext_ctrl = unsafe { std::mem::zeroed() };
        q.id = id | V4L2_CTRL_FLAG_NEXT_CTRL;
        // SAFETY: the argument is the request's own struct type.
        match unsafe { dev.ioctl(vidioc::VIDIOC_QUERY_EXT_CTRL, &mut q) } {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => break,
            Err(e) => return Err(e),
        }
        if q.id <= id {
            break; // not advancing: a broken driver
        }
        id = q.id;
        if q.flags & V4L2_CTRL_FLAG_DISABLED != 0 {
            continue;
        }
        let Some(kind) = kind_of(q.type_) else {
            continue;
        };
        let name_bytes: Vec<u8> = q.name.iter().map(|&c| c as u8).collect();
        let label = cstr(&name_bytes);
        let mut c = Control {
            id: q.id,
            name: normalise(&label),
            label,
            kind,
            min: q.minimum,
            max: q.maximum,
            step: q.step,
            default: q.default_value,
            value: None,
            read_only: q.flags & V4L2_CTRL_FLAG_READ_ONLY != 0,
            inactive: q.flags & V4L2_CTRL_FLAG_INACTIVE != 0,
            menu: Vec::new(),
        };
        if matches!(kind, "menu" | "integer_menu") {
            c.menu = menu(dev, &c)?;
        }
        if q.flags & V4L2_CTRL_FLAG_WRITE_ONLY == 0 && kind != "button" {
            c.value = get(dev, c.id, kind).ok();
        }
        out.push(c);
        if out.len() >= MAX_CONTROLS {
            break;
        }
    }
    Ok(out)
}

fn menu(dev: &DeviceFd, c: &Control) -> io::Result<Vec<MenuItem>> {
    let mut items = Vec::new();
    let hi = c.max.min(c.min.saturating_add(MAX_MENU_ITEMS));
    for index in c.min.max(0)..=hi {
        // SAFETY: plain old data, all-zero is valid.
        let mut m: v4l2_querymenu = unsafe { std::mem::zeroed() };
        m.id = c.id;
        m.index = index as u32;
        // SAFETY: the argument is the request's own struct type.
        match unsafe { dev.ioctl(vidioc::VIDIOC_QUERYMENU, &mut m) } {
            Ok(()) => {}
            // Menus may skip indices: EINVAL says this one is not a value.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(e) => return Err(e),
        }
        // SAFETY: the driver filled the member the control's type names.
        let label = unsafe {
            if c.kind == "integer_menu" {
                { m.__bindgen_anon_1.value }.to_string()
            } else {
                cstr(&m.__bindgen_anon_1.name)
            }
        };
        items.push(MenuItem {
            value: index,
            label,
        });
    }
    Ok(items)
}

/// One control's current value (VIDIOC_G_EXT_CTRLS: 64-bit controls need it).
fn get(dev: &DeviceFd, id: u32, kind: &str) -> io::Result<i64> {
    // SAFETY: plain old data, all-zero is valid.
    let mut one: v4l2_ext_control = unsafe { std::mem::zeroed() };
    one.id = id;
    ext_ctrls(dev, vidioc::VIDIOC_G_EXT_CTRLS, &mut one)?;
    // SAFETY: the driver wrote the member the control's type uses (value64 for 64-bit controls).
    let v = unsafe {
        if kind == "integer64" {
            one.__bindgen_anon_1.value64
        } else {
            one.__bindgen_anon_1.value as i64
        }
    };
    Ok(v)
}

fn set(dev: &DeviceFd, id: u32, kind: &str, value: i64) -> io::Result<()> {
    // SAFETY: plain old data, all-zero is valid.
    let mut one: v4l2_ext_control = unsafe { std::mem::zeroed() };
    one.id = id;
    if kind == "integer64" {
        one.__bindgen_anon_1.value64 = value;
    } else {
        // Checked against the control's 32-bit range before this call.
        one.__bindgen_anon_1.value = value as i32;
    }
    ext_ctrls(dev, vidioc::VIDIOC_S_EXT_CTRLS, &mut one)
}

fn ext_ctrls(dev: &DeviceFd, req: vidioc::_IOC_TYPE, one: &mut v4l2_ext_control) -> io::Result<()> {
    // SAFETY: plain old data, all-zero is valid.
    let mut list: v4l2_ext_controls = unsafe { std::mem::zeroed() };
    // `which` = V4L2_CTRL_WHICH_CUR_VAL (0): any control class (ctrl_class 0 on older kernels).
    list.count = 1;
    list.controls = one;
    // SAFETY: the argument is the request's own struct type, and `controls` points at `count`
    // live, exclusively borrowed elements for the duration of the call.
    unsafe { dev.ioctl(req, &mut list) }
}

/// Finds a control by normalised name.
fn find(dev: &DeviceFd, name: &str) -> Result<Control, ControlError> {
    let all = list(dev).map_err(|err| ControlError::Io {
        what: "list controls for",
        name: name.to_owned(),
        err,
    })?;
    all.into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ControlError::Unknown(name.to_owned()))
}

/// Checks and sets one control on an open device; returns it as read back afterwards.
pub fn set_on(dev: &DeviceFd, name: &str, value: i64) -> Result<Control, ControlError> {
    set_checked(dev, find(dev, name)?, value)
}

fn set_checked(dev: &DeviceFd, c: Control, value: i64) -> Result<Control, ControlError> {
    check_value(&c, value)?;
    set(dev, c.id, c.kind, value).map_err(|err| match err.raw_os_error() {
        Some(libc::EACCES | libc::EBUSY) => ControlError::Refused {
            name: c.name.clone(),
            err,
        },
        Some(libc::ERANGE) => ControlError::OutOfRange {
            name: c.name.clone(),
            min: c.min,
            max: c.max,
            step: c.step,
            menu: c.menu.iter().map(|m| m.value).collect(),
        },
        _ => ControlError::Io {
            what: "set",
            name: c.name.clone(),
            err,
        },
    })?;
    let mut after = c;
    if after.kind != "button" {
        after.value = get(dev, after.id, after.kind).ok();
    }
    Ok(after)
}

fn open(device: &Path) -> Result<DeviceFd, ControlError> {
    DeviceFd::open(device).map_err(|err| ControlError::Open {
        device: device.display().to_string(),
        err,
    })
}

/// Lists the controls of the node at `device` through a fd of its own (see the module doc).
pub fn list_device(device: &Path) -> Result<Vec<Control>, ControlError> {
    list(&open(device)?).map_err(|err| ControlError::Io {
        what: "list controls of",
        name: device.display().to_string(),
        err,
    })
}

/// Sets one control of the node at `device` through a fd of its own (see the module doc).
pub fn set_device(device: &Path, name: &str, value: i64) -> Result<Control, ControlError> {
    set_on(&open(device)?, name, value)
}

/// Applies a `[camera.controls]` table on an open device: the automatic-mode switches first (names
/// with `auto`), since a manual value such as `exposure_time_absolute` only takes once its
/// automatic mode is off. Returns how many were set and the failures, one line each.
pub fn apply(dev: &DeviceFd, table: &[(String, i64)]) -> (usize, Vec<String>) {
    if table.is_empty() {
        return (0, Vec::new());
    }
    let all = match list(dev) {
        Ok(all) => all,
        Err(e) => return (0, vec![format!("cannot list the controls: {e}")]),
    };
    let mut order: Vec<&(String, i64)> = table.iter().collect();
    order.sort_by_key(|(n, _)| !n.contains("auto"));
    let mut set = 0;
    let mut failed = Vec::new();
    for (name, value) in order {
        let r = match all.iter().find(|c| c.name == *name) {
            Some(c) => set_checked(dev, c.clone(), *value),
            None => Err(ControlError::Unknown(name.clone())),
        };
        match r {
            Ok(_) => set += 1,
            Err(e) => failed.push(e.to_string()),
        }
    }
    (set, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_v4l2_ctls() {
        assert_eq!(normalise("Brightness"), "brightness");
        assert_eq!(
            normalise("White Balance, Automatic"),
            "white_balance_automatic"
        );
        assert_eq!(
            normalise("White Balance Temperature, Auto"),
            "white_balance_temperature_auto"
        );
        assert_eq!(
            normalise("Exposure Time, Absolute"),
            "exposure_time_absolute"
        );
        assert_eq!(normalise("Integer 32 Bits"), "integer_32_bits");
        assert_eq!(normalise("  (Gain) "), "gain");
        assert_eq!(normalise("Été"), "t");
        assert_eq!(normalise(""), "");
    }

    fn ctl(min: i64, max: i64, step: u64, menu: &[i64]) -> Control {
        Control {
            id: 0x0098_0900,
            name: "brightness".into(),
            label: "Brightness".into(),
            kind: if menu.is_empty() { "integer" } else { "menu" },
            min,
            max,
            step,
            default: min,
            value: Some(min),
            read_only: false,
            inactive: false,
            menu: menu
                .iter()
                .map(|&value| MenuItem {
                    value,
                    label: format!("item {value}"),
                })
                .collect(),
        }
    }

    #[test]
    fn values_are_checked_against_range_step_and_menu() {
        let c = ctl(0, 255, 1, &[]);
        assert!(check_value(&c, 0).is_ok() && check_value(&c, 255).is_ok());
        let e = check_value(&c, 256).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.to_string(), "brightness must be 0..=255");
        assert!(check_value(&c, -1).is_err());

        let c = ctl(-10, 10, 5, &[]);
        assert!(check_value(&c, -5).is_ok());
        let e = check_value(&c, 3).unwrap_err();
        assert_eq!(e.to_string(), "brightness must be -10..=10 in steps of 5");

        let c = ctl(0, 3, 1, &[1, 3]);
        assert!(check_value(&c, 3).is_ok());
        let e = check_value(&c, 2).unwrap_err();
        assert_eq!(e.to_string(), "brightness must be one of 1, 3");

        let mut c = ctl(0, 0, 0, &[]);
        c.kind = "button";
        assert!(check_value(&c, 1).is_ok(), "any value presses a button");
        let mut c = ctl(0, 255, 1, &[]);
        c.read_only = true;
        assert_eq!(check_value(&c, 1).unwrap_err().status(), 409);
    }

    #[test]
    fn extreme_ranges_do_not_overflow() {
        // 2^64 - 1 is not a multiple of 7.
        let c = ctl(i64::MIN, i64::MAX, 7, &[]);
        assert!(check_value(&c, i64::MIN).is_ok());
        assert!(check_value(&c, i64::MAX).is_err());
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(ctl(0, 2, 1, &[0, 2])).unwrap();
        assert_eq!(v["name"], "brightness");
        assert_eq!(v["type"], "menu");
        assert_eq!((v["min"].as_i64(), v["max"].as_i64()), (Some(0), Some(2)));
        assert_eq!(v["menu"][1]["value"], 2);
        assert_eq!(v["menu"][1]["label"], "item 2");
        let v = serde_json::to_value(ctl(0, 255, 1, &[])).unwrap();
        assert!(v.get("menu").is_none(), "{v}");
        assert_eq!(v["value"], 0);
        assert_eq!(v["default"], 0);
        assert_eq!(v["step"], 1);
    }

    #[test]
    fn missing_device_is_503() {
        let e = list_device(Path::new("/nonexistent/video9")).unwrap_err();
        assert_eq!(e.status(), 503, "{e}");
        assert!(e.to_string().contains("/nonexistent/video9"), "{e}");
    }
}
