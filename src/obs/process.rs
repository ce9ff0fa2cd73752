//! Figures about the process itself (RSS, open fds), read from /proc.

/// Resident set size in bytes, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page)
        .unwrap_or(0)
}

/// Open file descriptors, from /proc/self/fd.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1) as u64) // minus the one read_dir holds
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_plausible() {
        assert!(rss_bytes() > 1024 * 1024);
        // stdin, stdout, stderr at least; other tests run in parallel, so no exact count.
        assert!(open_fds() >= 3);
    }
}
