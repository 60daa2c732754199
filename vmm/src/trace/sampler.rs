//! The sampler: /proc/vmstat, KSM's pages_sharing, the perf counters and the region's PFNs at
//! every boundary of the run (launch steps, phases, rounds, each action's end).
//!
//! It owns the samples and the VMM's thread list: at each sample it finds threads started since
//! the last one (`/proc/self/task`), starts their perf counters, and queues io_uring's workers for
//! the instance's `set_event_pid` (they are not made by fork/clone, so `event-fork` misses them;
//! every other thread is followed by `event-fork`). The queue is written by the reader thread:
//! a `set_event_pid` write waits for an RCU grace period (tens of ms here), which must not land on
//! the vCPU thread. The sampler is called on the thread that pushed the boundary (the vCPU thread
//! at a phase), so a sample taken at a round's end precedes the action that runs there. It reads
//! host state and changes none.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

use super::perf::{self, Perf, ThreadCounts};
use crate::addr::{Hva, Pfn};
use crate::timeline::Mono;

/// The /proc/vmstat counters sampled (plus every `compact_*` this kernel has).
pub const VMSTAT: &[&str] = &[
    "thp_split_pmd",
    "thp_split_page",
    "thp_split_page_failed",
    "thp_deferred_split_page",
    "thp_collapse_alloc",
    "thp_collapse_alloc_failed",
    "nr_foll_pin_acquired",
    "nr_foll_pin_released",
    "cow_ksm",
    "pswpout",
    "pgmigrate_success",
    "pgmigrate_fail",
];

/// Samples kept at most (a long storm samples at every action); the rest are counted.
pub const MAX_SAMPLES: usize = 20_000;

/// Whether `name` is one of the sampled counters.
pub fn sampled(name: &str) -> bool {
    VMSTAT.contains(&name) || name.starts_with("compact_")
}

/// The counters at one boundary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub at: Mono,
    pub label: String,
    /// The sampled /proc/vmstat counters, and `ksm.pages_sharing` when KSM exists.
    pub vmstat: BTreeMap<String, u64>,
    pub perf: Vec<ThreadCounts>,
}

/// The region's and the decoy's PFNs at one boundary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PfnSample {
    pub at: Mono,
    pub label: String,
    pub region: Vec<Option<Pfn>>,
    pub decoy: Vec<Option<Pfn>>,
}

/// Where the PFNs are read from: host ranges of the region and the decoy huge page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    pub region: (Hva, u64),
    pub decoy: Option<(Hva, u64)>,
}

/// See the module header.
pub struct Sampler {
    perf: Mutex<Perf>,
    samples: Mutex<Vec<Sample>>,
    pfns: Mutex<Vec<PfnSample>>,
    dropped: Mutex<u64>,
    watch: OnceLock<Watch>,
    /// Every VMM thread seen: tid -> comm.
    threads: Mutex<BTreeMap<i32, String>>,
    /// Threads to add to the instance's `set_event_pid` (see the module header).
    pending_pids: Mutex<Vec<i32>>,
}

/// The VMM's threads now: (tid, comm).
pub fn threads_of_self() -> Vec<(i32, String)> {
    let Ok(rd) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let tid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, comm.trim().to_string()))
        })
        .collect()
}

fn vmstat_now() -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = std::fs::read_to_string("/proc/vmstat")
        .map(|t| {
            t.lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    sampled(k).then(|| Some((k.to_string(), v.trim().parse().ok()?)))?
                })
                .collect()
        })
        .unwrap_or_default();
    if let Ok(v) = crate::host::Ksm::pages_sharing() {
        out.insert("ksm.pages_sharing".into(), v);
    }
    out
}

impl Sampler {
    /// A sampler for this process; opens the process-wide perf counters (call on the main
    /// thread, before the VMM's threads start).
    pub fn new() -> Sampler {
        Sampler {
            perf: Mutex::new(Perf::new(std::process::id() as i32)),
            samples: Mutex::new(Vec::new()),
            pfns: Mutex::new(Vec::new()),
            dropped: Mutex::new(0),
            watch: OnceLock::new(),
            threads: Mutex::new(BTreeMap::new()),
            pending_pids: Mutex::new(Vec::new()),
        }
    }

    /// Takes the threads queued for `set_event_pid`.
    pub fn take_pending_pids(&self) -> Vec<i32> {
        std::mem::take(&mut *self.pending_pids.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// From now on, samples marked `with_pfns` read these ranges' PFNs.
    pub fn watch(&self, w: Watch) {
        let _ = self.watch.set(w);
    }

    /// Finds new threads: names them, counts them, traces them.
    fn discover(&self, perf: &mut Perf) {
        let mut known = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for (tid, comm) in threads_of_self() {
            match known.get(&tid) {
                // A thread names itself after it starts: keep the latest name.
                Some(c) if *c != comm => {
                    perf.rename(tid, &comm);
                    known.insert(tid, comm);
                }
                Some(_) => {}
                None => {
                    perf.watch(tid, &comm);
                    if comm.starts_with("iou-") {
                        self.pending_pids
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(tid);
                    }
                    known.insert(tid, comm);
                }
            }
        }
    }

    /// Takes one sample at `at`, labelled; with `with_pfns`, the PFNs too.
    pub fn sample(&self, at: Mono, label: String, with_pfns: bool) {
        let perf_counts = {
            let mut perf = self.perf.lock().unwrap_or_else(|p| p.into_inner());
            self.discover(&mut perf);
            perf.read()
        };
        let s = Sample {
            at,
            label: label.clone(),
            vmstat: vmstat_now(),
            perf: perf_counts,
        };
        {
            let mut v = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            if v.len() < MAX_SAMPLES {
                v.push(s);
            } else {
                *self.dropped.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            }
        }
        if let (true, Some(w)) = (with_pfns, self.watch.get()) {
            let read = |r: (Hva, u64)| crate::pfn::pfns(r.0, r.1).unwrap_or_default();
            let p = PfnSample {
                at,
                label,
                region: read(w.region),
                decoy: w.decoy.map(read).unwrap_or_default(),
            };
            let mut v = self.pfns.lock().unwrap_or_else(|p| p.into_inner());
            if v.len() < MAX_SAMPLES {
                v.push(p);
            }
        }
    }

    /// The samples so far, in the order taken.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The PFN samples so far.
    pub fn pfn_samples(&self) -> Vec<PfnSample> {
        self.pfns.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Samples lost to the bound.
    pub fn dropped(&self) -> u64 {
        *self.dropped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every VMM thread seen: tid -> comm.
    pub fn threads(&self) -> BTreeMap<i32, String> {
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hardware counters: `Ok` when counted, else why not.
    pub fn hardware(&self) -> Result<(), perf::Error> {
        self.perf
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hardware()
    }

    /// Why software counters failed, if they did.
    pub fn software_error(&self) -> Option<perf::Error> {
        self.perf
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .software_error()
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_hold_the_listed_counters_and_find_new_threads() {
        let s = Sampler::new();
        s.sample(Mono::now(), "first".into(), false);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("pinlab-sampled".into())
            .spawn(move || {
                // std names the thread before running this closure.
                ready_tx.send(()).unwrap();
                rx.recv()
            })
            .unwrap();
        ready.recv().unwrap();
        s.sample(Mono::now(), "second".into(), false);
        tx.send(()).unwrap();
        t.join().unwrap().unwrap();
        let v = s.samples();
        assert_eq!(v.len(), 2);
        assert!(
            v[0].vmstat.contains_key("thp_split_pmd"),
            "{:?}",
            v[0].vmstat
        );
        assert!(v[0]
            .vmstat
            .keys()
            .all(|k| sampled(k) || k.starts_with("ksm.")));
        assert!(s.threads().values().any(|c| c == "pinlab-sampled"));
        assert!(v[0].at <= v[1].at);
    }

    #[test]
    fn pfn_samples_read_the_watched_range() {
        let s = Sampler::new();
        let mut buf = vec![1u8; 8 * 4096];
        let hva = Hva::from_ptr(buf.as_mut_ptr());
        s.sample(Mono::now(), "before watch".into(), true);
        s.watch(Watch {
            region: (hva, 4096),
            decoy: None,
        });
        s.sample(Mono::now(), "watched".into(), true);
        let p = s.pfn_samples();
        assert_eq!(p.len(), 1, "a sample before watch() has no PFNs");
        assert!(!p[0].region.is_empty());
        assert!(
            p[0].region.iter().all(|p| p.is_some()),
            "root reads PFNs of touched pages"
        );
        drop(buf);
    }
}
