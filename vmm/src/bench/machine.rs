//! The machine a benchmark ran on, and how busy it was: every figure is read beside it.
//!
//! Reads /proc and /sys only; changes nothing.

use serde::Serialize;

/// The host, as /proc and /sys describe it.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `model name` of the first CPU.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// MemTotal, bytes.
    pub mem_total: u64,
    /// The running kernel release.
    pub kernel: String,
    /// /sys/kernel/mm/transparent_hugepage/enabled (the selected mode in brackets).
    pub thp: String,
    /// /proc/loadavg (1, 5, 15 minutes) when the benchmark started and when it ended: the
    /// machine is shared, so this says how much others ran meanwhile.
    pub load_before: Option<[f64; 3]>,
    pub load_after: Option<[f64; 3]>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The three load averages of /proc/loadavg.
pub fn loadavg() -> Option<[f64; 3]> {
    parse_loadavg(&read("/proc/loadavg"))
}

fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    Some([it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?])
}

impl Machine {
    /// The machine now (`load_after` is filled by [`Machine::finish`]).
    pub fn probe() -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(String::new, |s| s.trim().to_string());
        let meminfo = read("/proc/meminfo");
        let mem_total = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib.saturating_mul(1024));
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_total,
            kernel: read("/proc/sys/kernel/osrelease"),
            thp: read("/sys/kernel/mm/transparent_hugepage/enabled"),
            load_before: loadavg(),
            load_after: None,
        }
    }

    /// Records the load at the end.
    pub fn finish(&mut self) {
        self.load_after = loadavg();
    }

    /// One line for humans.
    pub fn line(&self) -> String {
        let load = |l: Option<[f64; 3]>| l.map_or("?".into(), |l| format!("{:.1}", l[0]));
        format!(
            "{} x {}, {} GiB, Linux {}, THP {}; load {} -> {}",
            self.cpus,
            self.cpu,
            self.mem_total >> 30,
            self.kernel,
            self.thp,
            load(self.load_before),
            load(self.load_after)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_parses_three_figures() {
        assert_eq!(
            parse_loadavg("6.04 8.43 8.49 3/412 12345"),
            Some([6.04, 8.43, 8.49])
        );
        assert_eq!(parse_loadavg("6.04 x"), None);
        assert_eq!(parse_loadavg(""), None);
    }

    /// On Linux the probe finds at least one CPU, some memory and a kernel release. A bug: a
    /// field read from the wrong line (empty or zero).
    #[test]
    fn probe_reads_the_host() {
        let m = Machine::probe();
        assert!(
            m.cpus >= 1 && m.mem_total > 0 && !m.kernel.is_empty(),
            "{m:?}"
        );
        assert!(m.load_before.is_some());
    }
}
