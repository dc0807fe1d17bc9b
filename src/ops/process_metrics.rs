//! The process's own metrics under the names every Prometheus client library uses
//! (`process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_cpu_seconds_total`, `process_start_time_seconds`), read from `/proc/self` at
//! each scrape. `prometheus-client` has no process collector; this one is small and
//! reads only the process's own files, so it works under the unit's `ProcSubset=pid`
//! (no `/proc/stat`: the start time comes from `CLOCK_BOOTTIME` instead of `btime`).
//! Linux only; elsewhere the series are left out.
//!
//! It may touch: `/proc/self`, libc's `sysconf` and `clock_gettime` (no system call
//! the unit's filter refuses: `systemd/check-syscalls.py` runs a scrape under strace).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The process collector, registered once with the root registry.
#[derive(Debug)]
pub struct ProcessCollector {
    /// When the process started, in seconds since the Unix epoch (read once).
    start_time: Option<f64>,
}

impl ProcessCollector {
    /// Reads the start time once.
    pub fn new() -> ProcessCollector {
        ProcessCollector {
            start_time: read_stat().and_then(|stat| start_time(stat.start_ticks)),
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector::new()
    }
}

/// What `/proc/self/stat` says, in its own units.
struct Stat {
    /// User plus system CPU time, in clock ticks.
    cpu_ticks: u64,
    /// When the process started, in clock ticks since boot.
    start_ticks: u64,
    /// Resident set size, in pages.
    rss_pages: u64,
}

/// Parses `/proc/self/stat`: the fields after the command name (in parentheses, which
/// may hold spaces and parentheses itself, hence the last `)`).
fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Field numbers of proc(5) minus 3 (pid, comm and the state come first).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

fn read_stat() -> Option<Stat> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf reads a system setting and has no preconditions.
    let value = unsafe { libc::sysconf(name) };
    (value > 0).then_some(value as u64)
}

/// The start time in seconds since the epoch: now, minus the time since boot
/// (`CLOCK_BOOTTIME`), plus the start in seconds since boot.
fn start_time(start_ticks: u64) -> Option<f64> {
    let ticks_per_second = sysconf(libc::_SC_CLK_TCK)? as f64;
    let mut boot = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut boot) } != 0 {
        return None;
    }
    let since_boot = boot.tv_sec as f64 + boot.tv_nsec as f64 / 1e9;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(now - since_boot + start_ticks as f64 / ticks_per_second)
}

/// Raises the soft limit on open files towards `wanted` (as far as the hard limit
/// allows; under the systemd unit, whose filter refuses the call, it stays at
/// `LimitNOFILE`). Returns the soft limit then, if it can be read.
pub fn raise_open_file_limit(wanted: usize) -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a rlimit of ours.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let target = (wanted as libc::rlim_t).min(limit.rlim_max);
            if target > limit.rlim_cur {
                limit.rlim_cur = target;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
    max_fds()
}

/// The soft limit on open files, from `/proc/self/limits` (not getrlimit(2), which
/// glibc makes a `prlimit64` call, one of the unit's refused `@resources` calls).
fn max_fds() -> Option<u64> {
    parse_max_fds(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    // "unlimited" has no number: the series is left out.
    soft.parse().ok()
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut gauge = |name: &str, help: &str, value: Option<f64>| {
            let Some(value) = value else { return Ok(()) };
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        let stat = read_stat();
        let page_size = sysconf(libc::_SC_PAGESIZE);
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stat.as_ref()
                .zip(page_size)
                .map(|(stat, page)| (stat.rss_pages * page) as f64),
        )?;
        gauge(
            "process_open_fds",
            "Number of open file descriptors",
            open_fds().map(|n| n as f64),
        )?;
        gauge(
            "process_max_fds",
            "Maximum number of open file descriptors",
            max_fds().map(|n| n as f64),
        )?;
        gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            self.start_time,
        )?;
        if let Some((stat, ticks)) = stat.as_ref().zip(sysconf(libc::_SC_CLK_TCK)) {
            let cpu = ConstCounter::new(stat.cpu_ticks as f64 / ticks as f64);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped_whole() {
        // proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime priority nice num_threads itrealvalue
        // starttime vsize rss ...
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 4 0 123456 9000000 777 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.cpu_ticks, 300);
        assert_eq!(stat.start_ticks, 123456);
        assert_eq!(stat.rss_pages, 777);
    }

    #[test]
    fn the_soft_limit_on_open_files_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95364                95364                processes \n\
                      Max open files            4096                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(4096));
        assert_eq!(
            parse_max_fds("Max open files  unlimited  unlimited  files"),
            None
        );
    }

    #[test]
    fn this_process_reads_as_started_before_now_and_holding_memory() {
        let stat = read_stat().expect("/proc/self/stat");
        assert!(stat.rss_pages > 0);
        let started = start_time(stat.start_ticks).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
        assert!(open_fds().unwrap() >= 3);
        assert!(max_fds().unwrap() >= open_fds().unwrap());
    }
}
