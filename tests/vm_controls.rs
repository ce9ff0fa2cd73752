//! Camera controls against a real kernel driver: beltcam inside the qemu VM of `tests/vm/`, with
//! `vivid`'s webcam (brightness, contrast, saturation, hue...) and a `[camera.controls]` table
//! (payload `tests/vm/guest/controls.sh`). Lists the controls, sets brightness over HTTP and reads
//! it back through beltcam and through `v4l2-ctl`, refuses an out-of-range value with the range,
//! and checks that an unplug and re-plug (vivid's platform device unbound and bound again: the
//! driver's controls are back at their defaults) gets the table applied again.
//!
//! Skips, with the reason printed, where the VM cannot run (see `vm_vivid.rs`; the same reasons
//! are allowed under CI=true).

mod common;
mod vm;

use std::time::{Duration, Instant};

use serde_json::Value;

const TOKEN: &str = "vm-controls-admin-token-0123456789";

/// One request to the VM's forwarded port; (status, body as JSON or Null).
fn http(port: u16, method: &str, path: &str, token: bool, body: &str) -> (u16, Value) {
    let auth = if token {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    match common::raw(port, req.as_bytes()) {
        Ok((code, _, body)) => (code, serde_json::from_slice(&body).unwrap_or(Value::Null)),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn control<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["controls"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn v4l2_ctl(vm: &vm::Vm, name: &str) -> Option<i64> {
    let (rc, out) = vm.ctl(&format!("v4l2-ctl -d /dev/video0 --get-ctrl {name}"));
    if rc != 0 {
        return None;
    }
    // "brightness: 200"
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:"))?.trim().parse().ok())
}

#[test]
fn controls_in_a_vm() {
    let img = match vm::prepare() {
        Ok(img) => img,
        Err(why) => {
            let allowed = [
                "BELTCAM_SKIP_VM is set",
                "the VM test runs on x86_64 Linux hosts",
            ];
            common::skip("controls_in_a_vm", &why, &allowed);
            return;
        }
    };
    let t0 = Instant::now();
    let vm = vm::Vm::boot(&img, "controls.sh", &[8080], &[]);
    let port = vm.ports[0];
    assert!(
        vm.wait_http(0, "/health", 200, Duration::from_secs(60)),
        "beltcam in the VM never became healthy:\n{}\n{}",
        vm.ctl("cat /tmp/controls.log").1,
        vm.console_text()
    );
    eprintln!("vm: healthy {:.1} s after boot", t0.elapsed().as_secs_f64());

    // The list: vivid's user controls with their ranges, the table already applied at start.
    let (code, list) = http(port, "GET", "/cam/vivid/controls", false, "");
    assert_eq!(code, 200, "{list}");
    let b = control(&list, "brightness");
    assert_eq!(b["label"], "Brightness", "{b}");
    assert_eq!(b["type"], "integer", "{b}");
    assert_eq!(
        (b["min"].as_i64(), b["max"].as_i64()),
        (Some(0), Some(255)),
        "{b}"
    );
    assert_eq!(
        (b["step"].as_i64(), b["default"].as_i64()),
        (Some(1), Some(128)),
        "{b}"
    );
    assert_eq!(
        b["value"], 200,
        "[camera.controls] brightness not applied at start: {b}"
    );
    assert_eq!(control(&list, "contrast")["value"], 90);
    for name in ["saturation", "hue"] {
        control(&list, name);
    }
    let menus = list["controls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "menu" && c["menu"].as_array().is_some_and(|m| !m.is_empty()))
        .count();
    let names: Vec<&str> = list["controls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    eprintln!(
        "vm: {} controls listed ({menus} menus with items): {}",
        names.len(),
        names.join(" ")
    );
    assert!(menus > 0, "vivid has menu controls: {list}");
    assert_eq!(v4l2_ctl(&vm, "brightness"), Some(200), "v4l2-ctl disagrees");

    // Set over HTTP: admin token needed (the host is not loopback to the guest).
    let (code, _) = http(
        port,
        "PUT",
        "/cam/vivid/controls/brightness?value=60",
        false,
        "",
    );
    assert_eq!(code, 401, "PUT without the admin token");
    let (code, set) = http(
        port,
        "PUT",
        "/cam/vivid/controls/brightness?value=60",
        true,
        "",
    );
    assert_eq!(code, 200, "{set}");
    assert_eq!(set["control"]["value"], 60, "{set}");
    let (_, list) = http(port, "GET", "/cam/vivid/controls", false, "");
    assert_eq!(control(&list, "brightness")["value"], 60);
    assert_eq!(v4l2_ctl(&vm, "brightness"), Some(60), "v4l2-ctl disagrees");
    // A body instead of the query.
    let (code, set) = http(
        port,
        "PUT",
        "/cam/vivid/controls/saturation",
        true,
        "{\"value\": 30}",
    );
    assert_eq!(code, 200, "{set}");
    assert_eq!(v4l2_ctl(&vm, "saturation"), Some(30));

    // Out of range: 400 naming the range, nothing changed.
    let (code, e) = http(
        port,
        "PUT",
        "/cam/vivid/controls/brightness?value=300",
        true,
        "",
    );
    assert_eq!(code, 400, "{e}");
    let msg = e["reason"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("0..=255"), "{e}");
    assert_eq!(v4l2_ctl(&vm, "brightness"), Some(60));
    // Unknown control, unknown camera, a camera without V4L2 controls.
    let (code, e) = http(
        port,
        "PUT",
        "/cam/vivid/controls/sharpness_x?value=1",
        true,
        "",
    );
    assert_eq!(code, 404, "{e}");
    let (code, _) = http(
        port,
        "PUT",
        "/cam/nope/controls/brightness?value=1",
        true,
        "",
    );
    assert_eq!(code, 404);
    let (code, e) = http(port, "GET", "/cam/synth/controls", false, "");
    assert_eq!(code, 404, "{e}");
    assert!(e.to_string().contains("no V4L2 controls"), "{e}");

    // Unplug and re-plug: the driver comes back with its defaults; beltcam's re-open applies the
    // table again (brightness 200, not the 60 set over HTTP nor vivid's default 128).
    let (rc, out) = vm.ctl("echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind");
    assert_eq!(rc, 0, "unbind: {out}");
    let (code, e) = http(port, "GET", "/cam/vivid/controls", false, "");
    assert_eq!(code, 503, "controls of an unplugged camera: {e}");
    let replug = Instant::now();
    let (rc, out) = vm.ctl("echo vivid.0 > /sys/bus/platform/drivers/vivid/bind");
    assert_eq!(rc, 0, "bind: {out}");
    let reapplied = common::wait_for(Duration::from_secs(10), || {
        v4l2_ctl(&vm, "brightness") == Some(200)
    });
    let after = v4l2_ctl(&vm, "brightness");
    assert!(
        reapplied,
        "brightness {after:?} after re-plug, want 200:\n{}",
        vm.ctl("tail -n 20 /tmp/controls.log").1
    );
    eprintln!(
        "vm: re-plug -> [camera.controls] applied again within {:.2} s",
        replug.elapsed().as_secs_f64()
    );
    let (_, list) = http(port, "GET", "/cam/vivid/controls", false, "");
    assert_eq!(control(&list, "brightness")["value"], 200);
    assert_eq!(control(&list, "contrast")["value"], 90);
    assert_eq!(
        control(&list, "saturation")["value"],
        control(&list, "saturation")["default"],
        "not in the table: back at vivid's default"
    );
    assert!(common::wait_for(Duration::from_secs(5), || {
        vm::get_json(port, "/health").is_some_and(|h| h["status"] == "ok")
    }));
    eprintln!("vm: controls run took {:.1} s", t0.elapsed().as_secs_f64());
}
