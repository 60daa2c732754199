//! `Tracer`: one traced run, from the instance's setup to the files and the report.
//!
//! It owns the order of things. `start` (on the main thread, once guest RAM is mapped, before the
//! VM's threads start): open tracefs, create the instance through its owner, set `trace_clock =
//! mono`, the buffer, the PID filter (the VMM, its threads, `event-fork` for its children, the
//! kernel threads that act on guest RAM), each event's filter and enable; open the marker and the
//! pipe, start the reader, attach the marker sink to the timeline (replaying what happened
//! before). `finish` (after the verdict): detach, sample, read the per-CPU stats, stop tracing,
//! drain, remove the instance, then write FILE (Chrome JSON) and compute each action's account.
//! When tracefs is absent, read-only or refuses, the run goes on: the trace is `skipped` with the
//! reason, and FILE still holds the lab's timeline and the samples.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use super::account::{self, ActionInput, HvaRange, Ranges, Window};
use super::chrome;
use super::events::{self, Selection};
use super::instance::Instance;
use super::markers::{self, TraceSink};
use super::reader::{ReadResult, Reader};
use super::report::{ActionAccount, Lost, PerfSummary, TraceReport};
use super::sampler::{self, Sampler, Watch};
use super::tracefs::{self, Tracefs};
use crate::addr::Hva;
use crate::layout::Layout;
use crate::timeline::{Event, Mono, Timeline, What};

/// Kernel threads that act on guest RAM, by the start of their name.
pub const KERNEL_THREADS: &[&str] = &["ksmd", "khugepaged", "kcompactd", "kswapd"];

/// Per-CPU ring buffer for a run over `memory` bytes of guest RAM, in KiB: 4 MiB plus 16 KiB per
/// MiB of RAM (faults and KVM re-maps scale with it), at most 64 MiB. The reader drains it
/// while the run goes, so it only has to hold a burst.
pub fn buffer_kb_for(memory: u64) -> u64 {
    (4096 + (memory >> 20) * 16).min(64 << 10)
}

/// The raw text's path beside FILE.
pub fn raw_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_os_string();
    s.push(".ftrace.txt");
    PathBuf::from(s)
}

/// The kernel threads found now: (pid, comm).
pub fn kernel_threads() -> Vec<(i32, String)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim();
            KERNEL_THREADS
                .iter()
                .any(|k| comm.starts_with(k))
                .then(|| (pid, comm.to_string()))
        })
        .collect();
    out.sort();
    out
}

/// The tracefs side of a running trace. Field order is drop order: the files before the
/// instance, the instance before the (possibly detached) mount it lives on.
pub(super) struct KernelSide {
    pub(super) reader: Option<Reader>,
    pub(super) instance: Option<Instance>,
    fs: Tracefs,
    pub(super) selection: Selection,
    refused: Vec<(String, String)>,
    filters: BTreeMap<String, String>,
    pids: Vec<i32>,
    buffer_kb: u64,
}

impl Drop for KernelSide {
    fn drop(&mut self) {
        // Stopped here on the paths that never reach `finish` (an error, a panic): the reader's
        // open pipe would keep the instance busy.
        if let Some(r) = self.reader.take() {
            if let Some(i) = &self.instance {
                let _ = i.write("tracing_on", "0");
            }
            let _ = r.stop();
        }
    }
}

struct Running {
    sampler: Arc<Sampler>,
    sink: Arc<TraceSink>,
    kernel: Option<KernelSide>,
    skipped: Option<String>,
    ranges: Ranges,
    ram: (Hva, u64),
    kthreads: Vec<(i32, String)>,
}

/// A run's tracing; inert when the scenario asks for none.
pub struct Tracer {
    file: Option<PathBuf>,
    buffer_kb: Option<u64>,
    scenario: String,
    running: Option<Running>,
    done: bool,
}

/// Why the kernel side of a trace could not be set up, or FILE not written. A run's trace is
/// `skipped` with this as the reason; nothing here fails the run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Tracefs::open: {0}")]
    Tracefs(#[source] tracefs::Error),
    #[error("reading available_events: {0}")]
    AvailableEvents(#[source] tracefs::Error),
    #[error("Instance::create: {0}")]
    CreateInstance(#[source] super::instance::Error),
    /// Writing `value` to the instance's `file` (its error names the path and value).
    #[error("setting {file}: {source}")]
    Setup {
        file: &'static str,
        #[source]
        source: super::instance::Error,
    },
    #[error("opening the instance's {file}: {source}")]
    OpenFile {
        file: &'static str,
        #[source]
        source: super::instance::Error,
    },
    #[error("spawning the trace reader thread: {0}")]
    SpawnReader(#[source] std::io::Error),
    #[error("creating {path}: {source}")]
    CreateJson {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    WriteJson {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(super) fn kernel_side(
    raw_file: Option<&Path>,
    buffer_kb: u64,
    ram: (Hva, u64),
    sampler: &Arc<Sampler>,
    kthreads: &[(i32, String)],
) -> Result<(KernelSide, tracefs::InstanceFile), Error> {
    let fs = Tracefs::open().map_err(Error::Tracefs)?;
    let available = fs.available_events().map_err(Error::AvailableEvents)?;
    let selection = events::select(&available);
    let pid = std::process::id();
    let instance =
        Instance::create(&fs, &tracefs::instance_name(pid)).map_err(Error::CreateInstance)?;
    let setup = |file: &'static str, v: &str| {
        instance
            .write(file, v)
            .map_err(|source| Error::Setup { file, source })
    };
    setup("tracing_on", "0")?;
    setup("trace_clock", "mono")?;
    setup("buffer_size_kb", &buffer_kb.to_string())?;
    setup("options/record-tgid", "1")?;
    setup("options/event-fork", "1")?;
    let mut pids: Vec<i32> = vec![pid as i32];
    pids.extend(sampler::threads_of_self().into_iter().map(|(t, _)| t));
    pids.extend(kthreads.iter().map(|(p, _)| *p));
    pids.sort();
    pids.dedup();
    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    setup("set_event_pid", &list.join(" "))?;
    let mut refused = Vec::new();
    let mut filters = BTreeMap::new();
    let mut enabled = Vec::new();
    for spec in &selection.present {
        let base = format!("events/{}/{}", spec.group, spec.name);
        if let Some(f) = events::filter_for(spec, Some(ram)) {
            if let Err(e) = instance.write(&format!("{base}/filter"), &f) {
                refused.push((spec.id(), format!("filter {f:?}: {e}")));
                continue;
            }
            filters.insert(spec.id(), f);
        }
        match instance.write(&format!("{base}/enable"), "1") {
            Ok(()) => enabled.push(*spec),
            Err(e) => refused.push((spec.id(), e.to_string())),
        }
    }
    let selection = Selection {
        present: enabled,
        absent: selection.absent,
    };
    let marker = instance
        .open("trace_marker", OpenOptions::new().write(true))
        .map_err(|source| Error::OpenFile {
            file: "trace_marker",
            source,
        })?;
    let pipe = instance
        .open(
            "trace_pipe",
            OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK),
        )
        .map_err(|source| Error::OpenFile {
            file: "trace_pipe",
            source,
        })?;
    let raw = raw_file.map(|p| File::create(p).and_then(|mut f| {
        writeln!(
            f,
            "# pinlab trace: instance {}, trace_clock mono (CLOCK_MONOTONIC), record-tgid on\n# events: {}",
            instance.name(),
            selection.present.iter().map(|e| e.id()).collect::<Vec<_>>().join(" ")
        )?;
        Ok(f)
    }));
    // New io_uring workers join the PID filter from the reader thread (see `sampler`).
    let pid_file = instance.dir().join("set_event_pid");
    let s = sampler.clone();
    let tick: super::reader::Tick = Box::new(move || {
        let pids = s.take_pending_pids();
        if !pids.is_empty() {
            let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            if let Err(e) = tracefs::append(&pid_file, &list.join(" ")) {
                tracing::debug!("adding {list:?} to set_event_pid: {e}");
            }
        }
    });
    let reader =
        Reader::spawn(pipe, raw.and_then(|r| r.ok()), Some(tick)).map_err(Error::SpawnReader)?;
    setup("tracing_on", "1")?;
    Ok((
        KernelSide {
            reader: Some(reader),
            instance: Some(instance),
            fs,
            selection,
            refused,
            filters,
            pids,
            buffer_kb,
        },
        marker,
    ))
}

impl Tracer {
    /// A tracer writing `file` (none: tracing off); `buffer` overrides the per-CPU buffer size.
    pub fn new(file: Option<PathBuf>, buffer: Option<u64>, scenario: &str) -> Tracer {
        Tracer {
            file,
            buffer_kb: buffer.map(|b| b.div_ceil(1024)),
            scenario: scenario.to_string(),
            running: None,
            done: false,
        }
    }

    /// Whether this run is traced.
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Starts tracing (see the module header). Call on the main thread once guest RAM is
    /// mapped at `ram`, before the VM's threads start. Never fails the run: a tracefs that
    /// cannot be used makes the trace `skipped`.
    pub fn start(&mut self, timeline: &Timeline, ram: (Hva, u64), layout: &Layout) {
        let Some(file) = self.file.clone() else {
            return;
        };
        if self.running.is_some() || self.done {
            return;
        }
        let at = |gpa: crate::addr::Gpa| Hva(ram.0.raw() + gpa.raw());
        let ranges = Ranges {
            region: HvaRange {
                start: at(layout.region.start),
                len: layout.region.len,
            },
            huge: HvaRange {
                start: at(layout.huge_pages.start),
                len: layout.huge_pages.len,
            },
            region_gpa: layout.region,
            decoy: layout.decoy.map(|d| HvaRange {
                start: at(d),
                len: crate::addr::HUGE_PAGE_SIZE,
            }),
        };
        let sampler = Arc::new(Sampler::new());
        sampler.watch(Watch {
            region: (ranges.region.start, ranges.region.len),
            decoy: ranges.decoy.map(|d| (d.start, d.len)),
        });
        let kthreads = kernel_threads();
        let buffer_kb = self.buffer_kb.unwrap_or_else(|| buffer_kb_for(ram.1));
        let (kernel, marker, skipped) =
            match kernel_side(Some(&raw_path(&file)), buffer_kb, ram, &sampler, &kthreads) {
                Ok((k, m)) => (Some(k), Some(m), None),
                Err(why) => (None, None, Some(why.to_string())),
            };
        let sink = Arc::new(TraceSink::new(marker, sampler.clone()));
        for e in timeline.snapshot() {
            sink.write_marker(&e);
        }
        sampler.sample(Mono::now(), "trace start".into(), true);
        timeline.set_sink(sink.clone());
        self.running = Some(Running {
            sampler,
            sink,
            kernel,
            skipped,
            ranges,
            ram,
            kthreads,
        });
    }

    /// Stops tracing, removes the instance, writes FILE and FILE.ftrace.txt, and reports.
    /// `None` when the run was not traced.
    pub fn finish(&mut self, timeline: &Timeline) -> Option<TraceReport> {
        let file = self.file.clone()?;
        if self.done {
            return None;
        }
        self.done = true;
        timeline.clear_sink();
        let events = timeline.snapshot();
        let Some(mut run) = self.running.take() else {
            let mut rep = TraceReport::skipped(
                &file,
                "the run ended before guest RAM was mapped: nothing was traced".into(),
            );
            rep.write_error = write_json(
                &file,
                &self.scenario,
                &events,
                &[],
                &[],
                &Default::default(),
                &[],
                json!({"status": "skipped"}),
            )
            .err()
            .map(|e| e.to_string());
            return Some(rep);
        };
        run.sampler.sample(Mono::now(), "trace end".into(), true);
        run.sink.close();
        let mut rep = match run.skipped.take() {
            Some(why) => TraceReport::skipped(&file, why),
            None => TraceReport::recorded(&file, raw_path(&file)),
        };
        let mut read = ReadResult::default();
        if let Some(k) = run.kernel.as_mut() {
            let per_cpu = k
                .instance
                .as_ref()
                .map(|i| i.cpu_stats())
                .unwrap_or_default();
            if let Some(i) = &k.instance {
                let _ = i.write("tracing_on", "0");
            }
            if let Some(r) = k.reader.take() {
                read = r.stop();
            }
            if let Some(i) = k.instance.take() {
                let name = i.name().to_string();
                if let Err(e) = i.remove() {
                    rep.instance_error = Some(e.to_string());
                }
                rep.instance = Some(name);
            }
            rep.tracefs = Some(k.fs.describe());
            rep.buffer_kb_per_cpu = Some(k.buffer_kb);
            rep.events_enabled = k.selection.present.iter().map(|e| e.id()).collect();
            rep.events_absent = k.selection.absent.clone();
            rep.events_refused = k.refused.clone();
            rep.filters = k.filters.clone();
            rep.traced_pids = k.pids.clone();
            rep.trace_cmd = Some(events::trace_cmd_line(
                &k.selection,
                Some(run.ram),
                &k.pids.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            ));
            rep.lost = Lost::from_parts(per_cpu, read.lost_in_text, read.over_bound);
            rep.lost_events = rep.lost.total > 0;
            rep.reader_error = read.error.clone();
        }
        rep.kernel_threads = run.kthreads.clone();
        rep.ranges = Some(run.ranges);
        rep.records = read.records.len() as u64 + read.over_bound;
        rep.markers = read
            .records
            .iter()
            .filter(|r| r.event == "tracing_mark_write" && r.body.starts_with(markers::PREFIX))
            .count() as u64;
        let samples = run.sampler.samples();
        let pfns = run.sampler.pfn_samples();
        let threads = run.sampler.threads();
        rep.samples = samples.len();
        rep.perf = PerfSummary {
            hardware: match run.sampler.hardware() {
                Ok(()) => "counted".into(),
                Err(e) => e.to_string(),
            },
            software_error: run.sampler.software_error().map(|e| e.to_string()),
            last: samples.last().map(|s| s.perf.clone()).unwrap_or_default(),
        };
        let vmm_pid = std::process::id() as i32;
        let tids: Vec<i32> = threads.keys().copied().collect();
        let kev = account::typed(&read.records, vmm_pid, &tids);
        rep.accounts = action_accounts(
            &events,
            &read.records,
            &kev,
            &run.ranges,
            vmm_pid,
            &samples,
            &pfns,
        );
        let metadata = json!({
            "pinlab": {
                "scenario": self.scenario,
                "status": rep.status,
                "reason": rep.reason,
                "clock": "CLOCK_MONOTONIC (tracefs mono), microseconds",
                "lost_events": rep.lost.total,
                "trace_cmd": rep.trace_cmd,
                "events_absent": rep.events_absent,
            }
        });
        match write_json(
            &file,
            &self.scenario,
            &events,
            &read.records,
            &samples,
            &threads,
            &run.kthreads,
            metadata,
        ) {
            Ok(n) => rep.json_events = n,
            Err(e) => rep.write_error = Some(e.to_string()),
        }
        Some(rep)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // An early return or a panic between start and finish: the instance owner removes the
        // instance; the sink's marker file is closed first so the rmdir does not wait on it.
        if let Some(run) = &self.running {
            run.sink.close();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_json(
    file: &Path,
    scenario: &str,
    events: &[Event],
    records: &[super::parse::Record],
    samples: &[sampler::Sample],
    threads: &BTreeMap<i32, String>,
    kthreads: &[(i32, String)],
    metadata: serde_json::Value,
) -> Result<usize, Error> {
    let input = chrome::Input {
        scenario,
        vmm_pid: std::process::id() as i32,
        timeline: events,
        records,
        samples,
        vmm_threads: threads,
        kthreads,
        metadata,
    };
    let f = File::create(file).map_err(|source| Error::CreateJson {
        path: file.to_path_buf(),
        source,
    })?;
    chrome::write(&input, f).map_err(|source| Error::WriteJson {
        path: file.to_path_buf(),
        source,
    })
}

/// Each action span of the timeline with the trace's account of it.
fn action_accounts(
    events: &[Event],
    records: &[super::parse::Record],
    kev: &[account::KEvent],
    ranges: &Ranges,
    vmm_pid: i32,
    samples: &[sampler::Sample],
    pfns: &[sampler::PfnSample],
) -> Vec<ActionAccount> {
    let guest_end = events
        .iter()
        .filter(|e| matches!(e.what, What::Launch { .. }))
        .map(|e| e.end())
        .max();
    let mut out = Vec::new();
    for e in events {
        let What::Action {
            action,
            iteration,
            evidence,
            ..
        } = &e.what
        else {
            continue;
        };
        // A fork's effects come after it: until its later half ran (the child released), or
        // the guest's end.
        let finish = evidence.and_then(|idx| {
            events.iter().find_map(|f| match f.what {
                What::ActionFinish { evidence, .. } if evidence == idx && f.at >= e.at => {
                    Some(f.at)
                }
                _ => None,
            })
        });
        let forks = matches!(
            action,
            crate::scenario::Action::ForkParentWrite
                | crate::scenario::Action::ForkChildWrite
                | crate::scenario::Action::ForkChildExit
                | crate::scenario::Action::Bias1024
        );
        let end = if forks {
            finish.or(guest_end).unwrap_or(e.end()).max(e.end())
        } else {
            e.end()
        };
        let window = Window { start: e.at, end };
        let before = samples.iter().rev().find(|s| s.at <= e.at);
        let after = samples.iter().find(|s| s.at >= end);
        let pfns_before = pfns.iter().rev().find(|s| s.at <= e.at);
        let pfns_after = pfns.iter().find(|s| s.at >= end);
        let input = ActionInput {
            records,
            events: kev,
            window,
            ranges,
            vmm_pid,
            before,
            after,
            pfns_before,
            pfns_after,
        };
        let acc = account::for_action(*action, &input);
        out.push(ActionAccount {
            action: *action,
            iteration: *iteration,
            evidence: *evidence,
            window,
            disagreement: account::disagreement(&acc, &input),
            account: acc,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_grows_with_ram_and_is_capped() {
        assert_eq!(buffer_kb_for(64 << 20), 4096 + 64 * 16);
        assert!(buffer_kb_for(1 << 30) > buffer_kb_for(64 << 20));
        assert_eq!(buffer_kb_for(1 << 40), 64 << 10);
    }

    #[test]
    fn raw_file_sits_beside_the_json() {
        assert_eq!(
            raw_path(Path::new("/tmp/x.json")),
            PathBuf::from("/tmp/x.json.ftrace.txt")
        );
    }

    #[test]
    fn an_untraced_tracer_does_nothing() {
        let t = Timeline::new();
        let mut tr = Tracer::new(None, None, "s");
        assert!(!tr.enabled());
        tr.start(
            &t,
            (Hva(0x1000), 0x1000),
            &Layout::new(64 << 20, 2 << 20, 0).unwrap(),
        );
        assert!(tr.finish(&t).is_none());
    }
}
