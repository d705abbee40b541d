//! What a process uses, from `/proc`: CPU seconds and peak RSS ([`ProcUsage`]), the resident set
//! now. Linux only; the acceptance steps, the benchmarks and the chaos runner measure with it.

use anyhow::Context;

/// CPU seconds and peak RSS of a process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcUsage {
    pub user_s: f64,
    pub system_s: f64,
    pub peak_rss_kib: u64,
}

impl ProcUsage {
    pub fn of(pid: u32) -> anyhow::Result<ProcUsage> {
        let read = |what: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{what}")).with_context(|| format!("/proc/{pid}/{what}"))
        };
        let stat = read("stat")?;
        let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // Fields after the command: state(0) … utime(11) stime(12), in clock ticks (100 Hz on Linux).
        let ticks = |i: usize| {
            fields.get(i).and_then(|f| f.parse::<f64>().ok()).with_context(|| format!("/proc/{pid}/stat field {i}"))
        };
        let peak_rss_kib =
            status_kib(&read("status")?, "VmHWM:").with_context(|| format!("VmHWM in /proc/{pid}/status"))?;
        Ok(ProcUsage { user_s: ticks(11)? / 100.0, system_s: ticks(12)? / 100.0, peak_rss_kib })
    }

    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.system_s
    }
}

/// This process's resident set, KiB (0 where /proc is unreadable).
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// The resident set of `/proc/<pid>`, KiB (0 where it is unreadable).
pub fn rss_kib_of(pid: impl std::fmt::Display) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| status_kib(&s, "VmRSS:")).unwrap_or(0)
}

/// A `Key:   123 kB` line of /proc/<pid>/status, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}
