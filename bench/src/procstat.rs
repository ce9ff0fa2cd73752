//! CPU time and memory of a server process, read from `/proc` so beltcam and the raw baseline are
//! measured the same way whatever they are.
//!
//! CPU is `utime + stime` from `/proc/PID/stat` (all threads of the process); memory is `VmRSS` and
//! the kernel's own high-water mark `VmHWM` from `/proc/PID/status`.

use std::fs;
use std::io;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Resident set size now, in KiB.
    pub rss_kib: u64,
    /// Peak resident set size since start (`VmHWM`), in KiB.
    pub hwm_kib: u64,
}

/// Reads one sample of `pid`.
pub fn sample(pid: u32) -> io::Result<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })?;
    Ok(Sample {
        cpu_seconds: ticks as f64 / clock_ticks_per_second(),
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
    })
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")" the first field is the state (field 3); utime is field 14, i.e. index 11 here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Tracks a process over one measured window: the first and last sample and the peak RSS.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Sample,
    pub last: Sample,
    pub peak_rss_kib: u64,
}

impl Window {
    pub fn begin(pid: u32) -> io::Result<Self> {
        let s = sample(pid)?;
        Ok(Self {
            start: s,
            last: s,
            peak_rss_kib: s.rss_kib.max(s.hwm_kib),
        })
    }

    /// Takes another sample; a process that has gone keeps its last values.
    pub fn update(&mut self, pid: u32) -> io::Result<()> {
        let s = sample(pid)?;
        self.last = s;
        self.peak_rss_kib = self.peak_rss_kib.max(s.rss_kib).max(s.hwm_kib);
        Ok(())
    }

    pub fn cpu_seconds(&self) -> f64 {
        (self.last.cpu_seconds - self.start.cpu_seconds).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_name() {
        let stat = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(s, "VmHWM:"), Some(2048));
    }

    #[test]
    fn samples_self() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.hwm_kib >= s.rss_kib);
    }
}
