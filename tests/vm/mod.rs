//! The VM harness for real-device tests: build (cached) and boot the small qemu VM of `tests/vm/`
//! with the kernel's `vivid` driver, run the beltcam under test inside it, and talk to it through
//! forwarded ports and the guest's control shell. Every wait has a deadline.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A cache folder `name` in cargo's target directory (kept across runs, shared by checkouts
/// that share the target directory).
pub fn target_cache(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|t| t.join(name))
        .unwrap_or_else(|| repo().join("target").join(name))
}

/// The cache: downloaded .debs, the kernel and the initramfs (`target/vmh`).
pub fn cache_dir() -> PathBuf {
    target_cache("vmh")
}

fn on_path(cmd: &str) -> bool {
    on_path_or_in(cmd, &[])
}

/// Whether `cmd` is a file in a `PATH` folder or in one of `extra`.
pub fn on_path_or_in(cmd: &str, extra: &[&str]) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p)
            .chain(extra.iter().map(PathBuf::from))
            .any(|d| d.join(cmd).is_file())
    })
}

/// A built VM image; `loopback` says whether the MJPEG camera (v4l2loopback) is in it.
pub struct Image {
    pub dir: PathBuf,
    pub loopback: bool,
    /// The guest's Debian architecture: "amd64" or "arm64".
    pub arch: String,
    /// The beltcam binary the guest runs.
    pub bin: PathBuf,
    _lock: std::fs::File,
}

/// The guest: amd64 with this build's binary, or, with `BELTCAM_VM_ARCH=arm64`, the arm64 VM
/// (qemu-system-aarch64, TCG) running the aarch64 binary named by `BELTCAM_VM_BIN`
/// (scripts/cross-aarch64.sh sets both when `BELTCAM_VM_ARM64=1`).
pub fn guest() -> Result<(String, PathBuf), String> {
    match std::env::var("BELTCAM_VM_ARCH").as_deref() {
        Err(_) | Ok("") | Ok("amd64") => {
            Ok(("amd64".into(), PathBuf::from(env!("CARGO_BIN_EXE_beltcam"))))
        }
        Ok("arm64") => {
            let bin = std::env::var_os("BELTCAM_VM_BIN")
                .map(PathBuf::from)
                .ok_or("BELTCAM_VM_ARCH=arm64 needs BELTCAM_VM_BIN (the aarch64 beltcam)")?;
            if !bin.is_file() {
                return Err(format!("BELTCAM_VM_BIN {} does not exist", bin.display()));
            }
            Ok(("arm64".into(), bin))
        }
        Ok(other) => Err(format!("BELTCAM_VM_ARCH={other}: amd64 or arm64")),
    }
}

/// Builds the image if needed. `Err` is the reason to skip, printed by the caller.
pub fn prepare() -> Result<Image, String> {
    if std::env::var_os("BELTCAM_SKIP_VM").is_some() {
        return Err("BELTCAM_SKIP_VM is set".into());
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err("the VM test runs on x86_64 Linux hosts".into());
    }
    let (arch, bin) = guest()?;
    let qemu = if arch == "arm64" {
        "qemu-system-aarch64"
    } else {
        "qemu-system-x86_64"
    };
    for tool in [qemu, "cpio", "apt-get", "dpkg", "zstd", "xz"] {
        if !on_path(tool) {
            return Err(format!("{tool} is not installed"));
        }
    }
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // One VM at a time, also across test binaries and checkouts sharing the cache.
    let lock = std::fs::File::create(dir.join("lock")).map_err(|e| e.to_string())?;
    // SAFETY: flock on an fd we own; blocks until the other holder is done.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(format!("cannot lock {}", dir.display()));
    }
    let script = std::fs::read(repo().join("tests/vm/build.sh")).map_err(|e| e.to_string())?;
    // v4l2loopback is built for the host's architecture only: no MJPEG camera on arm64.
    let want_loopback = arch == "amd64" && on_path("gcc-12") && on_path("make");
    let stamp = format!("{:x}-{}", fnv(&script), want_loopback);
    let out = dir.join("out").join(&arch);
    let stamp_file = out.join("beltcam-stamp");
    let cached = std::fs::read_to_string(&stamp_file).ok();
    if cached.as_deref() != Some(stamp.as_str()) || !out.join("initrd.cpio.gz").is_file() {
        let mut built = build(&dir, &arch, want_loopback);
        if built.is_err() && want_loopback {
            eprintln!("vm: building with v4l2loopback failed; trying without (no MJPEG run)");
            built = build(&dir, &arch, false);
        }
        let loopback = built.map_err(|log| format!("cannot build the VM image:\n{log}"))?;
        let _ = std::fs::write(&stamp_file, format!("{:x}-{}", fnv(&script), loopback));
    }
    let loopback = std::fs::read_to_string(&stamp_file).is_ok_and(|s| s.ends_with("-true"));
    Ok(Image {
        dir,
        loopback,
        arch,
        bin,
        _lock: lock,
    })
}

fn build(dir: &Path, arch: &str, loopback: bool) -> Result<bool, String> {
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg(repo().join("tests/vm/build.sh"))
        .arg(arch)
        .env("VMH_DIR", dir)
        .env("VMH_LOOPBACK", if loopback { "1" } else { "0" })
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run build.sh: {e}"))?;
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        return Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    eprintln!(
        "vm: {arch} image built in {:.1} s (loopback: {loopback})",
        t0.elapsed().as_secs_f64()
    );
    Ok(loopback)
}

/// FNV-1a, a stable cache key for build scripts.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// A running VM. Dropping it ends the payload and kills qemu's process group.
pub struct Vm {
    child: Child,
    pub ctl: u16,
    pub ports: Vec<u16>,
    pub console: PathBuf,
}

impl Vm {
    /// Boots the image with `script` as payload, forwarding one host port per guest port.
    pub fn boot(img: &Image, script: &str, guest_ports: &[u16], adds: &[(PathBuf, &str)]) -> Vm {
        let bin = img.bin.display();
        let ctl = crate::common::free_port();
        let ports: Vec<u16> = guest_ports
            .iter()
            .map(|_| crate::common::free_port())
            .collect();
        let console = img.dir.join(format!("console-{}.log", std::process::id()));
        let vm_dir = repo().join("tests/vm");
        let mut cmd = Command::new("bash");
        cmd.arg(vm_dir.join("run.sh"))
            .args(["-a", &img.arch])
            .args(["--timeout", "300", "--ctl", &ctl.to_string()])
            .args(["--log", &console.display().to_string()])
            .args(["--add-bin", &format!("{bin}:/usr/bin/beltcam")])
            .args([
                "--add",
                &format!(
                    "{}:/usr/bin/beltcam-start",
                    vm_dir.join("guest/beltcam-start").display()
                ),
            ])
            .args([
                "--script",
                &vm_dir.join("guest").join(script).display().to_string(),
            ]);
        for (h, g) in ports.iter().zip(guest_ports) {
            cmd.args(["-f", &format!("{h}:{g}")]);
        }
        for (src, dst) in adds {
            cmd.args(["--add", &format!("{}:{dst}", src.display())]);
        }
        let child = cmd
            .env("VMH_DIR", &img.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start run.sh");
        Vm {
            child,
            ctl,
            ports,
            console,
        }
    }

    /// Runs shell commands in the guest; returns (exit code, output).
    pub fn ctl(&self, cmd: &str) -> (i32, String) {
        ctl_at(self.ctl, cmd, Duration::from_secs(30))
    }

    /// Waits until `GET path` on forwarded port `i` answers with `code`. qemu accepts forwarded
    /// connections before the guest listens and they hang: every try has a short timeout.
    pub fn wait_http(&self, i: usize, path: &str, code: u16, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if get(self.ports[i], path, Duration::from_millis(700)).is_ok_and(|r| r.0 == code) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.ctl("touch /tmp/stop");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill(2) on the process group we created for run.sh and its qemu.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.console);
    }
}

/// Runs shell commands through a guest control shell forwarded to `port` (one shell per connection:
/// the commands, then `exit`); waits at most `limit`. Returns (exit code of the last command, output);
/// the code is -2 when the connection failed, -1 when no exit code came back in time.
pub fn ctl_at(port: u16, cmd: &str, limit: Duration) -> (i32, String) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let sent = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
        s.set_read_timeout(Some(limit))?;
        s.write_all(format!("{cmd}\necho \"__RC=$?\"\nexit\n").as_bytes())?;
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break, // timed out or reset: what came so far is the answer
            }
        }
        Ok(())
    });
    let text = String::from_utf8_lossy(&out).to_string();
    let rc = text
        .lines()
        .find_map(|l| l.strip_prefix("__RC=")?.trim().parse().ok())
        .unwrap_or(if sent.is_err() { -2 } else { -1 });
    let body = text
        .lines()
        .filter(|l| !l.starts_with("__RC="))
        .collect::<Vec<_>>()
        .join("\n");
    (rc, body)
}

/// `GET path` with connect and read timeouts; returns (status, body).
pub fn get(port: u16, path: &str, timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (code, _, body) = beltcam_testkit::http::get(addr, path, timeout)?;
    Ok((code, body))
}

pub fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let (_, body) = get(port, path, Duration::from_secs(2)).ok()?;
    serde_json::from_slice(&body).ok()
}

/// `/health`'s `status` on forwarded port `port`, or "" while it does not answer.
pub fn health_status(port: u16) -> String {
    get_json(port, "/health")
        .and_then(|h| h["status"].as_str().map(str::to_string))
        .unwrap_or_default()
}
