//! perf_event_open counters for the VMM's threads, through the `perf-event2` crate.
//!
//! It owns the counter fds: per thread, software page faults (minor, major), context switches and
//! CPU migrations, plus CPU cycles and instructions where the host's PMU gives them (this PVM host
//! does not; the report says so with the errno), and one process-wide set opened with `inherit` on
//! the main thread so threads and fork children started later are counted too. It reads only; the
//! counters are closed on drop. Kernel-side counting is included (context switches happen there).

use std::collections::BTreeMap;
use std::sync::Arc;

use perf_event::events::{Hardware, Software};
use perf_event::{Builder, Counter};
use serde::Serialize;

/// A counter perf_event_open(2) refused. Cloned into reports (the io::Error is shared).
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The hardware probe (`cycles` on this thread) was refused: no PMU for this guest/host.
    #[error("perf_event_open({kind}) on this thread: not supported here: {source}")]
    Hardware {
        kind: &'static str,
        source: Arc<std::io::Error>,
    },
    /// A counter of `kind` on thread `tid` could not be opened.
    #[error("perf_event_open({kind}) on tid {tid}: {source}")]
    Open {
        kind: &'static str,
        tid: i32,
        source: Arc<std::io::Error>,
    },
}

/// What a counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    PageFaultsMin,
    PageFaultsMaj,
    ContextSwitches,
    CpuMigrations,
    Cycles,
    Instructions,
}

impl Kind {
    pub const SOFTWARE: [Kind; 4] = [
        Kind::PageFaultsMin,
        Kind::PageFaultsMaj,
        Kind::ContextSwitches,
        Kind::CpuMigrations,
    ];
    pub const HARDWARE: [Kind; 2] = [Kind::Cycles, Kind::Instructions];

    pub fn name(self) -> &'static str {
        match self {
            Kind::PageFaultsMin => "page-faults-min",
            Kind::PageFaultsMaj => "page-faults-maj",
            Kind::ContextSwitches => "context-switches",
            Kind::CpuMigrations => "cpu-migrations",
            Kind::Cycles => "cycles",
            Kind::Instructions => "instructions",
        }
    }

    fn builder(self) -> Builder<'static> {
        let mut b = match self {
            Kind::PageFaultsMin => Builder::new(Software::PAGE_FAULTS_MIN),
            Kind::PageFaultsMaj => Builder::new(Software::PAGE_FAULTS_MAJ),
            Kind::ContextSwitches => Builder::new(Software::CONTEXT_SWITCHES),
            Kind::CpuMigrations => Builder::new(Software::CPU_MIGRATIONS),
            Kind::Cycles => Builder::new(Hardware::CPU_CYCLES),
            Kind::Instructions => Builder::new(Hardware::INSTRUCTIONS),
        };
        b.include_kernel();
        b
    }
}

/// One thread's counters.
struct Watched {
    tid: i32,
    name: String,
    counters: Vec<(Kind, Counter)>,
}

/// One thread's counts at a sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadCounts {
    pub tid: i32,
    pub name: String,
    pub counts: BTreeMap<Kind, u64>,
}

/// The VMM's counters.
pub struct Perf {
    threads: Vec<Watched>,
    /// `Ok(())` when hardware counters open here, else why not.
    hardware: Result<(), Error>,
    /// Why a software counter could not be opened, when one could not.
    software_error: Option<Error>,
}

/// The tid used for the process-wide (inherited) set.
pub const PROCESS_TID: i32 = 0;

impl Perf {
    /// Probes hardware counters on this thread and opens the process-wide inherited set on
    /// `pid` (call it on the main thread before the VMM's threads start).
    pub fn new(pid: i32) -> Perf {
        let hardware = Kind::Cycles
            .builder()
            .observe_self()
            .build()
            .map(|_| ())
            .map_err(|e| Error::Hardware {
                kind: Kind::Cycles.name(),
                source: Arc::new(e),
            });
        let mut p = Perf {
            threads: Vec::new(),
            hardware,
            software_error: None,
        };
        p.open(pid, PROCESS_TID, "process (all threads, inherited)", true);
        p
    }

    fn kinds(&self) -> Vec<Kind> {
        let mut k = Kind::SOFTWARE.to_vec();
        if self.hardware.is_ok() {
            k.extend(Kind::HARDWARE);
        }
        k
    }

    fn open(&mut self, target: i32, tid: i32, name: &str, inherit: bool) {
        let mut counters = Vec::new();
        for kind in self.kinds() {
            let mut b = kind.builder();
            b.observe_pid(target).any_cpu().inherit(inherit);
            match b.build() {
                Ok(mut c) => {
                    if c.enable().is_ok() {
                        counters.push((kind, c));
                    }
                }
                Err(e) => {
                    self.software_error.get_or_insert_with(|| Error::Open {
                        kind: kind.name(),
                        tid: target,
                        source: Arc::new(e),
                    });
                }
            }
        }
        if !counters.is_empty() {
            self.threads.push(Watched {
                tid,
                name: name.to_string(),
                counters,
            });
        }
    }

    /// Starts counting thread `tid` (named `name`) unless it is counted already.
    pub fn watch(&mut self, tid: i32, name: &str) {
        if !self.threads.iter().any(|w| w.tid == tid) {
            self.open(tid, tid, name, false);
        }
    }

    /// Renames the counted thread `tid` (threads name themselves after they start).
    pub fn rename(&mut self, tid: i32, name: &str) {
        if let Some(w) = self.threads.iter_mut().find(|w| w.tid == tid) {
            w.name = name.to_string();
        }
    }

    /// Whether `tid` is counted.
    pub fn watches(&self, tid: i32) -> bool {
        self.threads.iter().any(|w| w.tid == tid)
    }

    /// Every counted thread's counts now (a thread that exited keeps its last value).
    pub fn read(&mut self) -> Vec<ThreadCounts> {
        self.threads
            .iter_mut()
            .map(|w| ThreadCounts {
                tid: w.tid,
                name: w.name.clone(),
                counts: w
                    .counters
                    .iter_mut()
                    .filter_map(|(k, c)| c.read().ok().map(|v| (*k, v)))
                    .collect(),
            })
            .collect()
    }

    /// What the report says about hardware counters.
    pub fn hardware(&self) -> Result<(), Error> {
        self.hardware.clone()
    }

    /// Why a software counter failed to open, if one did.
    pub fn software_error(&self) -> Option<Error> {
        self.software_error.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gettid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }

    /// Faults `pages` fresh anonymous pages in (a private mmap: malloc might reuse memory).
    fn touch(pages: usize) {
        let len = pages * 4096;
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        for i in 0..pages {
            // SAFETY: inside the mapping just made; volatile so the writes stay.
            unsafe { std::ptr::write_volatile(p.cast::<u8>().add(i * 4096), 1) };
        }
        // SAFETY: unmapping the mapping made above, which nothing refers to any more.
        unsafe { libc::munmap(p, len) };
    }

    #[test]
    fn watched_threads_and_inherited_children_count_their_page_faults() {
        // The inherited set is opened on this thread: a thread it starts later is counted in it.
        let me = gettid();
        let mut p = Perf::new(me);
        if let Some(e) = p.software_error() {
            eprintln!("skipped: perf_event_open refused here: {e}");
            return;
        }
        p.watch(me, "test");
        p.watch(me, "test again");
        assert!(p.watches(me));
        let min = |s: &[ThreadCounts], tid| {
            s.iter()
                .find(|t| t.tid == tid)
                .and_then(|t| t.counts.get(&Kind::PageFaultsMin).copied())
                .unwrap()
        };
        let before = p.read();
        // Fresh anonymous memory: a minor fault per page at least.
        let pages = 64;
        touch(pages);
        let mid = p.read();
        assert_eq!(mid.iter().filter(|t| t.tid == me).count(), 1);
        assert!(min(&mid, me) >= min(&before, me) + pages as u64 / 2);
        std::thread::spawn(move || touch(pages)).join().unwrap();
        let after = p.read();
        assert!(
            min(&after, PROCESS_TID) >= min(&mid, PROCESS_TID) + pages as u64 / 2,
            "the child thread's faults were not inherited"
        );
        p.rename(me, "renamed");
        assert!(p.read().iter().any(|t| t.name == "renamed"));
    }
}
