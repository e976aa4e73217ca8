//! The process's own resident memory and open file descriptors, from
//! `/proc/self` (Linux), for the `soak` scenario.

use std::fs;

/// One reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcSample {
    /// Seconds since the start of the run.
    pub at_secs: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// Reads `VmRSS` from `/proc/self/status` and counts `/proc/self/fd`;
/// `None` where `/proc` is not there.
pub fn sample(at_secs: u64) -> Option<ProcSample> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let rss_bytes = parse_vm_rss(&status)?;
    let fds = fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(ProcSample {
        at_secs,
        rss_bytes,
        fds,
    })
}

/// The `VmRSS:` line of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        Some("kB") | None => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        Some(_) => return None,
    };
    value.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_status_line() {
        let text = "Name:\tx\nVmPeak:\t  2000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(text), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tmany kB\n"), None);
    }

    #[test]
    fn reads_this_process() {
        if let Some(s) = sample(3) {
            assert!(s.rss_bytes > 0);
            assert!(s.fds >= 3, "stdin, stdout, stderr at least: {s:?}");
            assert_eq!(s.at_secs, 3);
        }
    }
}
