//! The harness of `tests/systemd_vm.rs`: build (cached in `target/sysvm`, keyed on the scripts) and
//! boot the Debian bookworm VM of `tests/sysvm/` with systemd as PID 1, share this checkout's files
//! with it, and drive it through its control shell and forwarded ports. Every wait has a deadline.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::vm;

use vm::fnv;
pub use vm::repo;

/// The cache: downloaded .debs and the image (`target/sysvm`).
pub fn cache_dir() -> PathBuf {
    vm::target_cache("sysvm")
}

fn on_path(cmd: &str) -> bool {
    vm::on_path_or_in(cmd, &["/usr/sbin", "/sbin"])
}

/// A built image, locked for this process (one VM at a time).
pub struct Image {
    pub dir: PathBuf,
    _lock: std::fs::File,
}

/// Why a test cannot run here. `expected` skips (a harness built for another architecture, an
/// explicit opt-out) are fine under CI; the others fail the test when CI=true.
pub struct Skip {
    pub why: String,
    pub expected: bool,
}

fn skip(why: impl Into<String>) -> Skip {
    Skip {
        why: why.into(),
        expected: false,
    }
}

/// The SKIP line (common::skip: stderr and target/test-skips.txt); under CI=true only an expected
/// skip passes.
pub fn report_skip(test: &str, s: &Skip) {
    let allowed: &[&str] = if s.expected { &[s.why.as_str()] } else { &[] };
    crate::common::skip(test, &s.why, allowed);
}

/// Builds the image if the scripts changed since the cached build. `Err` is the reason to skip.
pub fn prepare() -> Result<Image, Skip> {
    if std::env::var_os("BELTCAM_SKIP_VM").is_some() {
        return Err(Skip {
            why: "BELTCAM_SKIP_VM is set".into(),
            expected: true,
        });
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err(Skip {
            why: "the systemd VM test runs on x86_64 Linux hosts".into(),
            expected: true,
        });
    }
    for tool in ["qemu-system-x86_64", "cpio", "xz", "gzip"] {
        if !on_path(tool) {
            return Err(skip(format!(
                "{tool} is not installed (dev.sh installs the test packages)"
            )));
        }
    }
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| skip(format!("{}: {e}", dir.display())))?;
    let lock = std::fs::File::create(dir.join("lock")).map_err(|e| skip(e.to_string()))?;
    // SAFETY: flock on an fd we own; blocks until the other holder is done.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(skip(format!("cannot lock {}", dir.display())));
    }
    let mut scripts = Vec::new();
    for s in ["build.sh", "guest-config.sh"] {
        scripts.extend(
            std::fs::read(repo().join("tests/sysvm").join(s)).map_err(|e| skip(e.to_string()))?,
        );
    }
    let stamp = format!("{:x}", fnv(&scripts));
    let out = dir.join("out");
    let stamp_file = out.join("beltcam-stamp");
    let cached = std::fs::read_to_string(&stamp_file).ok();
    if cached.as_deref() != Some(stamp.as_str()) || !out.join("rootfs.ext4").is_file() {
        for tool in ["mmdebstrap", "mke2fs", "depmod", "apt-get", "dpkg"] {
            if !on_path(tool) {
                return Err(skip(format!(
                    "{tool} is not installed: cannot build the image (dev.sh installs the test packages)"
                )));
            }
        }
        build(&dir)?;
        let _ = std::fs::write(&stamp_file, &stamp);
    }
    Ok(Image { dir, _lock: lock })
}

fn build(dir: &Path) -> Result<(), Skip> {
    let t0 = Instant::now();
    // mmdebstrap's root mode and chroot need root; passwordless sudo will do.
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let mut cmd = if root {
        Command::new("bash")
    } else if Command::new("sudo")
        .args(["-n", "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        let mut c = Command::new("sudo");
        c.args(["-n", "--preserve-env=SYSVM_DIR", "bash"]);
        c
    } else {
        return Err(skip(
            "building the image needs root or passwordless sudo (mmdebstrap, chroot)",
        ));
    };
    eprintln!("sysvm: building the image (mmdebstrap; about 100 MB from the Debian mirror)");
    let out = cmd
        .arg(repo().join("tests/sysvm/build.sh"))
        .env("SYSVM_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| skip(format!("cannot run build.sh: {e}")))?;
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(skip(format!(
            "cannot build the image (no access to Debian's packages?):\n{tail}"
        )));
    }
    eprintln!("sysvm: image built in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// The binary under test for the guest: cargo's debug build of beltcam without its debug info
/// (`objcopy --strip-debug`: 95 MB -> 7 MB, which the guest copies in about a second instead of
/// 10 s under TCG). The code is the same; without objcopy, the binary as built.
pub fn guest_binary(img: &Image) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_beltcam"));
    let out = img.dir.join(format!("beltcam-{}", std::process::id()));
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&bin)
        .arg(&out)
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if stripped {
        out
    } else {
        eprintln!("sysvm: objcopy --strip-debug failed; the guest gets the full debug binary");
        bin
    }
}

/// A running VM. Dropping it ends the payload (the VM powers off) and kills qemu's process group.
pub struct SysVm {
    child: Child,
    pub ctl_port: u16,
    pub ports: Vec<u16>,
    pub console: PathBuf,
    share: PathBuf,
    payload: PathBuf,
}

impl SysVm {
    /// Boots the image. `share` files (host path, path under the share) appear read-only under
    /// /mnt/host in the guest after `mount /mnt/host`; one host port is forwarded per guest port.
    pub fn boot(img: &Image, share: &[(PathBuf, &str)], guest_ports: &[u16]) -> SysVm {
        let id = std::process::id();
        let share_dir = img.dir.join(format!("share-{id}"));
        let _ = std::fs::remove_dir_all(&share_dir);
        for (src, dst) in share {
            let to = share_dir.join(dst);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            if std::fs::hard_link(src, &to).is_err() {
                std::fs::copy(src, &to).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
            }
        }
        // The payload only keeps the VM up until the host is done (bounded), then reports.
        let payload = img.dir.join(format!("payload-{id}.sh"));
        std::fs::write(
            &payload,
            "#!/bin/bash\n\
             for i in $(seq 3000); do [ -e /run/sysvm-stop ] && break; sleep 0.2; done\n\
             echo '== systemctl --failed'; systemctl --failed --no-pager\n",
        )
        .unwrap();
        let ctl_port = crate::common::free_port();
        let ports: Vec<u16> = guest_ports
            .iter()
            .map(|_| crate::common::free_port())
            .collect();
        let console = img.dir.join(format!("console-{id}.log"));
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("tests/sysvm/run.sh"))
            .args(["-t", "600", "--ctl", &ctl_port.to_string()])
            .args(["--log", &console.display().to_string()])
            .args(["--share", &share_dir.display().to_string()])
            .args(["-p", &payload.display().to_string()]);
        for (h, g) in ports.iter().zip(guest_ports) {
            cmd.args(["-f", &format!("{h}:{g}")]);
        }
        let child = cmd
            .env("SYSVM_DIR", &img.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start tests/sysvm/run.sh");
        SysVm {
            child,
            ctl_port,
            ports,
            console,
            share: share_dir,
            payload,
        }
    }

    /// Runs shell commands (bash, as root) in the guest; returns (exit code, output).
    pub fn ctl(&self, cmd: &str) -> (i32, String) {
        self.ctl_for(cmd, Duration::from_secs(30))
    }

    pub fn ctl_for(&self, cmd: &str, limit: Duration) -> (i32, String) {
        vm::ctl_at(self.ctl_port, cmd, limit)
    }

    /// Waits until the control shell answers (the guest reached sockets.target).
    pub fn wait_ctl(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            // Before the guest listens, qemu accepts and the connection hangs: bounded tries. Once
            // it listens, systemd starts a bash per connection, which takes seconds on a busy host.
            if vm::ctl_at(self.ctl_port, "true", Duration::from_secs(10)).0 == 0 {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    pub fn console_tail(&self, n: usize) -> String {
        let raw = std::fs::read(&self.console).unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for SysVm {
    fn drop(&mut self) {
        let _ = vm::ctl_at(
            self.ctl_port,
            "touch /run/sysvm-stop",
            Duration::from_secs(5),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill(2) on the process group we created for run.sh and its qemu.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.share);
        let _ = std::fs::remove_file(&self.payload);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.console);
        }
    }
}
