//! The Chrome trace-event JSON file (what ui.perfetto.dev and chrome://tracing open), and a
//! checker for it.
//!
//! It owns the mapping of a traced run onto tracks: a process per PID (the VMM with its threads
//! named, fork children, ksmd/khugepaged/kcompactd), the lab's timeline as nested complete slices
//! on the thread that recorded them (run > launch > steps; guest > rounds > round N > action),
//! instants for guest phases and for every kernel event (its fields as args), and counter tracks
//! for the vmstat and perf samples. Timestamps are CLOCK_MONOTONIC in microseconds, the clock of
//! the raw text. Slices are emitted properly nested per track by construction: one that would
//! overlap its neighbour partially goes to a sibling track named `... (overlapping)`.
//!
//! [`check`] parses a file and checks what the tests (and the run itself) rely on: every track's
//! timestamps are non-decreasing in file order and its slices nest.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use serde::Serialize;
use serde_json::{json, Value};

use super::events::CATALOGUE;
use super::parse::{fields, kernel_event, Kernel, Record};
use super::sampler::Sample;
use crate::timeline::{Event, GuestPhase, LaunchStep, Mono, What};

/// First synthetic thread id (lab threads with no real thread, overlap tracks).
const SYNTHETIC_TID: i64 = 1 << 30;

/// One trace event.
#[derive(Clone, Debug, Serialize)]
pub struct TraceEvent {
    pub name: String,
    pub cat: String,
    pub ph: &'static str,
    pub ts: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dur: Option<f64>,
    pub pid: i64,
    pub tid: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s: Option<&'static str>,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub args: Value,
}

/// What the file is made from.
pub struct Input<'a> {
    pub scenario: &'a str,
    pub vmm_pid: i32,
    pub timeline: &'a [Event],
    pub records: &'a [Record],
    pub samples: &'a [Sample],
    /// The VMM's threads: tid -> comm.
    pub vmm_threads: &'a BTreeMap<i32, String>,
    /// Kernel threads kept by PID: (pid, name).
    pub kthreads: &'a [(i32, String)],
    /// Put under `otherData` (the trace's status, lost events, the trace-cmd line, ...).
    pub metadata: Value,
}

fn us(t: Mono) -> f64 {
    t.0 as f64 / 1000.0
}

fn meta(name: &str, pid: i64, tid: i64, value: &str) -> TraceEvent {
    TraceEvent {
        name: name.into(),
        cat: "__metadata".into(),
        ph: "M",
        ts: 0.0,
        dur: None,
        pid,
        tid,
        s: None,
        args: json!({ "name": value }),
    }
}

/// A complete slice before nesting is resolved.
struct Slice {
    tid: i64,
    start: Mono,
    end: Mono,
    name: String,
    cat: &'static str,
    args: Value,
}

/// Maps the timeline's thread names to track ids.
struct LabThreads {
    pid: i64,
    map: HashMap<&'static str, i64>,
    names: BTreeMap<i64, String>,
    next: i64,
}

impl LabThreads {
    fn new(pid: i32, threads: &BTreeMap<i32, String>) -> LabThreads {
        let mut names: BTreeMap<i64, String> = threads
            .iter()
            .map(|(t, c)| (*t as i64, c.clone()))
            .collect();
        names.insert(pid as i64, "main (device loop)".into());
        LabThreads {
            pid: pid as i64,
            map: HashMap::new(),
            names,
            next: SYNTHETIC_TID,
        }
    }

    fn tid(&mut self, thread: &'static str, real: &BTreeMap<i32, String>) -> i64 {
        if let Some(t) = self.map.get(thread) {
            return *t;
        }
        let want = format!("pinlab-{thread}");
        let t = match thread {
            "main" | "device" => self.pid,
            _ => match real.iter().find(|(_, c)| **c == want) {
                Some((t, _)) => *t as i64,
                None => {
                    self.next += 1;
                    self.names.insert(self.next, format!("lab: {thread}"));
                    self.next
                }
            },
        };
        self.map.insert(thread, t);
        t
    }
}

fn step_name(s: LaunchStep) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// The lab's slices and instants.
fn lab_events(input: &Input, lt: &mut LabThreads) -> (Vec<Slice>, Vec<TraceEvent>) {
    let mut slices = Vec::new();
    let mut instants = Vec::new();
    let tl = input.timeline;
    let find = |f: &dyn Fn(&What) -> bool| tl.iter().find(|e| f(&e.what));
    let launch = |step: LaunchStep| find(&|w| matches!(w, What::Launch { step: s } if *s == step));
    let process = launch(LaunchStep::Process);
    let guest_start = launch(LaunchStep::GuestStart);
    let guest_end = launch(LaunchStep::GuestEnd);
    let verdict = find(&|w| matches!(w, What::Verdict { .. }));
    let last = tl.iter().map(|e| e.end()).max();
    let main = lt.tid("main", input.vmm_threads);
    if let (Some(p), Some(end)) = (process, verdict.map(|v| v.at).or(last)) {
        slices.push(Slice {
            tid: main,
            start: p.at,
            end,
            name: format!("pinlab run {}", input.scenario),
            cat: "lab",
            args: Value::Null,
        });
        if let Some(gs) = guest_start {
            slices.push(Slice {
                tid: main,
                start: p.at,
                end: gs.at,
                name: "launch".into(),
                cat: "lab",
                args: Value::Null,
            });
        }
    }
    let vcpu = lt.tid("vcpu", input.vmm_threads);
    if let (Some(gs), Some(ge)) = (guest_start, guest_end) {
        slices.push(Slice {
            tid: vcpu,
            start: gs.at,
            end: ge.at,
            name: "guest".into(),
            cat: "lab",
            args: Value::Null,
        });
    }
    // Rounds: from the rounds' start (or the previous round's end) to each round's end.
    let mut prev: Option<Mono> = None;
    let mut rounds_start = None;
    for e in tl {
        match &e.what {
            What::Phase {
                phase: GuestPhase::RoundsStart,
            } => {
                rounds_start = Some(e.at);
                prev = Some(e.at);
            }
            What::Phase {
                phase: GuestPhase::RoundDone { round },
            } => {
                if let Some(p) = prev {
                    slices.push(Slice {
                        tid: vcpu,
                        start: p,
                        end: e.at,
                        name: format!("round {round}"),
                        cat: "lab",
                        args: json!({ "round": round }),
                    });
                }
                prev = Some(e.at);
            }
            What::Phase {
                phase: GuestPhase::Unmapped,
            } => {
                if let Some(rs) = rounds_start.take() {
                    slices.push(Slice {
                        tid: vcpu,
                        start: rs,
                        end: e.at,
                        name: "rounds".into(),
                        cat: "lab",
                        args: Value::Null,
                    });
                }
            }
            _ => {}
        }
    }
    for e in tl {
        let tid = lt.tid(e.thread, input.vmm_threads);
        let args = serde_json::to_value(e).unwrap_or(Value::Null);
        let name = match &e.what {
            What::Launch { step } => step_name(*step),
            What::Phase { phase } => match phase {
                GuestPhase::Mapped => "phase mapped".into(),
                GuestPhase::RoundsStart => "phase rounds-start".into(),
                GuestPhase::RoundDone { round } => format!("phase round-done {round}"),
                GuestPhase::Unmapped => "phase unmapped".into(),
            },
            What::PhaseRejected { .. } => "phase rejected".into(),
            What::DmaBatch { .. } => "dma batch".into(),
            What::IommuMap { .. } => "iommu map".into(),
            What::IommuUnmap { .. } => "iommu unmap".into(),
            What::Action { action, .. } => format!("action {action}"),
            What::ActionFinish { action, .. } => format!("action {action} finish"),
            What::Verdict { verdict } => format!("verdict {verdict}"),
        };
        match e.dur_ns {
            Some(_) => slices.push(Slice {
                tid,
                start: e.at,
                end: e.end(),
                name,
                cat: "lab",
                args,
            }),
            None => instants.push(TraceEvent {
                name,
                cat: "lab".into(),
                ph: "i",
                ts: us(e.at),
                dur: None,
                pid: lt.pid,
                tid,
                s: Some("t"),
                args,
            }),
        }
    }
    (slices, instants)
}

/// Places slices so each track's slices nest: a slice that would overlap partially moves to a
/// sibling track (recursively).
fn nest(mut slices: Vec<Slice>, lt: &mut LabThreads) -> Vec<(Slice, i64)> {
    slices.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut out = Vec::new();
    // Per placed track: the stack of open slice ends.
    let mut stacks: HashMap<i64, Vec<Mono>> = HashMap::new();
    let mut overflow: HashMap<i64, i64> = HashMap::new();
    for s in slices {
        let mut track = s.tid;
        loop {
            let stack = stacks.entry(track).or_default();
            while stack.last().is_some_and(|&end| end <= s.start) {
                stack.pop();
            }
            if stack.last().is_none_or(|&end| s.end <= end) {
                stack.push(s.end);
                break;
            }
            let base = track;
            track = *overflow.entry(base).or_insert_with(|| {
                lt.next += 1;
                let name = lt
                    .names
                    .get(&base)
                    .cloned()
                    .unwrap_or_else(|| format!("{base}"));
                lt.names.insert(lt.next, format!("{name} (overlapping)"));
                lt.next
            });
        }
        out.push((s, track));
    }
    out
}

/// The group of a kernel event (for the category).
fn group_of(event: &str) -> &'static str {
    if event == "tracing_mark_write" {
        return "ftrace";
    }
    CATALOGUE
        .iter()
        .find(|e| e.name == event)
        .map_or("kernel", |e| e.group)
}

fn kernel_args(r: &Record) -> Value {
    match kernel_event(r) {
        Kernel::Other => {
            let f = fields(&r.body);
            if f.is_empty() {
                json!({ "text": r.body })
            } else {
                let mut m: serde_json::Map<String, Value> =
                    f.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                m.insert("text".into(), Value::String(r.body.clone()));
                Value::Object(m)
            }
        }
        k => serde_json::to_value(k).unwrap_or(Value::Null),
    }
}

/// Every trace event of the file, metadata first, the rest in timestamp order.
pub fn render(input: &Input) -> Vec<TraceEvent> {
    let vmm = input.vmm_pid as i64;
    let mut lt = LabThreads::new(input.vmm_pid, input.vmm_threads);
    let (slices, mut body) = lab_events(input, &mut lt);
    for (s, track) in nest(slices, &mut lt) {
        body.push(TraceEvent {
            name: s.name,
            cat: s.cat.into(),
            ph: "X",
            ts: us(s.start),
            dur: Some(s.end.since(s.start) as f64 / 1000.0),
            pid: vmm,
            tid: track,
            s: None,
            args: s.args,
        });
    }
    // Kernel events: the process from the tgid, or what other lines say about the tid.
    let mut tgid_of: HashMap<i32, i32> = input
        .vmm_threads
        .keys()
        .map(|&t| (t, input.vmm_pid))
        .collect();
    for r in input.records {
        if let Some(g) = r.tgid {
            tgid_of.entry(r.tid).or_insert(g);
        }
    }
    let mut process_names: BTreeMap<i64, String> = BTreeMap::new();
    process_names.insert(vmm, format!("pinlab {} (VMM)", input.scenario));
    for (pid, name) in input.kthreads {
        process_names.insert(*pid as i64, format!("{name} (kernel thread)"));
    }
    let mut thread_names: BTreeMap<(i64, i64), String> = BTreeMap::new();
    for r in input.records {
        if let Kernel::ProcessFork {
            pid,
            child_pid,
            child_comm,
            ..
        } = kernel_event(r)
        {
            // sched_process_fork fires for threads too: a child in the VMM's thread group is one.
            let parent_is_vmm = tgid_of.get(&pid) == Some(&input.vmm_pid) || pid == input.vmm_pid;
            if parent_is_vmm && tgid_of.get(&child_pid) != Some(&input.vmm_pid) {
                process_names
                    .entry(child_pid as i64)
                    .or_insert(format!("{child_comm} (fork child of the VMM)"));
            }
        }
    }
    for r in input.records {
        if r.event == "tracing_mark_write" {
            continue;
        }
        let pid = *tgid_of.get(&r.tid).unwrap_or(&r.tid) as i64;
        process_names.entry(pid).or_insert_with(|| r.comm.clone());
        thread_names
            .entry((pid, r.tid as i64))
            .or_insert_with(|| r.comm.clone());
        body.push(TraceEvent {
            name: r.event.clone(),
            cat: group_of(&r.event).into(),
            ph: "i",
            ts: us(r.ts),
            dur: None,
            pid,
            tid: r.tid as i64,
            s: Some("t"),
            args: kernel_args(r),
        });
    }
    // Counter tracks, as steps since the first sample.
    let mut first: BTreeMap<String, u64> = BTreeMap::new();
    for s in input.samples {
        for (k, v) in &s.vmstat {
            let base = *first.entry(k.clone()).or_insert(*v);
            body.push(TraceEvent {
                name: format!("vmstat {k}"),
                cat: "vmstat".into(),
                ph: "C",
                ts: us(s.at),
                dur: None,
                pid: vmm,
                tid: 0,
                s: None,
                args: json!({ "value": v.wrapping_sub(base) as i64 }),
            });
        }
        for t in &s.perf {
            for (kind, v) in &t.counts {
                body.push(TraceEvent {
                    name: format!("perf {} {}", t.name, kind.name()),
                    cat: "perf".into(),
                    ph: "C",
                    ts: us(s.at),
                    dur: None,
                    pid: vmm,
                    tid: 0,
                    s: None,
                    args: json!({ "value": v }),
                });
            }
        }
    }
    body.sort_by(|a, b| {
        a.ts.total_cmp(&b.ts)
            .then(b.dur.unwrap_or(0.0).total_cmp(&a.dur.unwrap_or(0.0)))
    });
    let mut out = Vec::new();
    for (pid, name) in &process_names {
        out.push(meta("process_name", *pid, 0, name));
    }
    for (tid, name) in &lt.names {
        out.push(meta("thread_name", vmm, *tid, name));
    }
    for ((pid, tid), name) in &thread_names {
        if *pid != vmm || !lt.names.contains_key(tid) {
            out.push(meta("thread_name", *pid, *tid, name));
        }
    }
    out.extend(body);
    out
}

/// Writes the file; returns how many trace events it holds.
pub fn write(input: &Input, out: impl Write) -> io::Result<usize> {
    let events = render(input);
    let n = events.len();
    let doc = json!({
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": input.metadata,
    });
    let mut w = io::BufWriter::new(out);
    serde_json::to_writer(&mut w, &doc).map_err(io::Error::other)?;
    w.flush()?;
    Ok(n)
}

/// What [`check`] found in a well-formed file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub events: usize,
    pub tracks: usize,
    pub slices: usize,
    pub max_depth: usize,
    pub counters: usize,
}

/// Why a file is not well formed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no traceEvents array")]
    NoEvents,
    #[error("event {index} lacks {field}")]
    Field { index: usize, field: &'static str },
    #[error("track {track}: timestamp {ts} after {prev} (event {index})")]
    NotMonotonic {
        track: String,
        index: usize,
        prev: f64,
        ts: f64,
    },
    #[error(
        "track {track}: slice {name:?} [{start}, {end}] overlaps its parent ending {parent_end}"
    )]
    NotNested {
        track: String,
        name: String,
        start: f64,
        end: f64,
        parent_end: f64,
    },
}

/// Parses `json` and checks ordering and nesting per track (see the module header).
pub fn check(json: &[u8]) -> Result<CheckReport, CheckError> {
    const EPS: f64 = 1e-3;
    let doc: Value = serde_json::from_slice(json)?;
    let events = doc
        .get("traceEvents")
        .and_then(|e| e.as_array())
        .ok_or(CheckError::NoEvents)?;
    let mut last: HashMap<String, f64> = HashMap::new();
    let mut stacks: HashMap<String, Vec<f64>> = HashMap::new();
    let mut rep = CheckReport {
        events: events.len(),
        ..Default::default()
    };
    for (index, e) in events.iter().enumerate() {
        let get = |field: &'static str| e.get(field).ok_or(CheckError::Field { index, field });
        let ph = get("ph")?.as_str().unwrap_or("");
        if ph == "M" {
            continue;
        }
        let ts = get("ts")?
            .as_f64()
            .ok_or(CheckError::Field { index, field: "ts" })?;
        let pid = get("pid")?;
        let track = if ph == "C" {
            rep.counters += 1;
            format!("{pid}/counter {}", get("name")?)
        } else {
            format!("{pid}/{}", get("tid")?)
        };
        if let Some(&prev) = last.get(&track) {
            if ts + EPS < prev {
                return Err(CheckError::NotMonotonic {
                    track,
                    index,
                    prev,
                    ts,
                });
            }
        }
        last.insert(track.clone(), ts);
        if ph == "X" {
            rep.slices += 1;
            let end = ts + get("dur")?.as_f64().unwrap_or(0.0);
            let stack = stacks.entry(track.clone()).or_default();
            while stack.last().is_some_and(|&pe| pe <= ts + EPS) {
                stack.pop();
            }
            if let Some(&parent_end) = stack.last() {
                if end > parent_end + EPS {
                    return Err(CheckError::NotNested {
                        track,
                        name: get("name")?.to_string(),
                        start: ts,
                        end,
                        parent_end,
                    });
                }
            }
            stack.push(end);
            rep.max_depth = rep.max_depth.max(stack.len());
        }
    }
    rep.tracks = last.len();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Action, Verdict};

    fn ev(at: u64, dur: Option<u64>, thread: &'static str, what: What) -> Event {
        Event {
            at: Mono(at),
            dur_ns: dur,
            thread,
            what,
        }
    }

    fn setup_timeline() -> Vec<Event> {
        let phase = |p| What::Phase { phase: p };
        vec![
            ev(
                1_000,
                None,
                "main",
                What::Launch {
                    step: LaunchStep::Process,
                },
            ),
            ev(
                2_000,
                Some(1_000),
                "main",
                What::Launch {
                    step: LaunchStep::RamMapped,
                },
            ),
            // Overlaps RamMapped partially on the same thread: must move to a sibling track.
            ev(
                2_500,
                Some(2_000),
                "main",
                What::Launch {
                    step: LaunchStep::VmCreated,
                },
            ),
            ev(
                5_000,
                None,
                "vcpu",
                What::Launch {
                    step: LaunchStep::GuestStart,
                },
            ),
            ev(6_000, None, "vcpu", phase(GuestPhase::RoundsStart)),
            ev(
                7_000,
                None,
                "vcpu",
                phase(GuestPhase::RoundDone { round: 1 }),
            ),
            ev(
                7_100,
                Some(500),
                "vcpu",
                What::Action {
                    action: Action::SplitPmd,
                    iteration: None,
                    evidence: Some(0),
                    error: None,
                },
            ),
            ev(
                9_000,
                None,
                "vcpu",
                phase(GuestPhase::RoundDone { round: 2 }),
            ),
            ev(9_500, None, "vcpu", phase(GuestPhase::Unmapped)),
            ev(
                10_000,
                None,
                "vcpu",
                What::Launch {
                    step: LaunchStep::GuestEnd,
                },
            ),
            ev(
                11_000,
                None,
                "main",
                What::Verdict {
                    verdict: Verdict::Coherent,
                },
            ),
        ]
    }

    #[test]
    fn rendered_file_checks_and_nests_action_in_its_round() {
        let tl = setup_timeline();
        let threads: BTreeMap<i32, String> = [
            (100, "pinlab".to_string()),
            (101, "pinlab-vcpu".to_string()),
        ]
        .into();
        let records = vec![Record {
            ts: Mono(7_200),
            cpu: 0,
            tid: 101,
            tgid: Some(100),
            comm: "pinlab-vcpu".into(),
            event: "kvm_unmap_hva_range".into(),
            body: "mmu notifier unmap range: 0x1000 -- 0x2000".into(),
        }];
        let input = Input {
            scenario: "t",
            vmm_pid: 100,
            timeline: &tl,
            records: &records,
            samples: &[],
            vmm_threads: &threads,
            kthreads: &[(5, "ksmd".into())],
            metadata: json!({}),
        };
        let mut buf = Vec::new();
        write(&input, &mut buf).unwrap();
        let rep = check(&buf).unwrap();
        // run > launch > ram-mapped on main; guest > rounds > round 2 > action on the vCPU.
        assert!(rep.max_depth >= 4, "{rep:?}");
        let doc: Value = serde_json::from_slice(&buf).unwrap();
        let evs = doc["traceEvents"].as_array().unwrap();
        let named = |n: &str| evs.iter().find(|e| e["name"] == n).cloned().unwrap();
        let action = named("action split-pmd");
        let round2 = named("round 2");
        assert_eq!(action["tid"], 101);
        assert_eq!(round2["tid"], 101);
        let vm = named("vm-created");
        assert_ne!(vm["tid"], 100, "the overlapping slice stayed on main");
        let unmap = named("kvm_unmap_hva_range");
        assert_eq!(
            (unmap["pid"].clone(), unmap["cat"].clone()),
            (json!(100), json!("kvm"))
        );
        assert_eq!(unmap["args"]["start"], 0x1000);
        assert!(evs
            .iter()
            .any(|e| e["ph"] == "M" && e["args"]["name"] == "ksmd (kernel thread)"));
    }

    #[test]
    fn check_rejects_disorder_and_partial_overlap() {
        let bad_order = json!({"traceEvents": [
            {"name": "a", "ph": "i", "ts": 5.0, "pid": 1, "tid": 1},
            {"name": "b", "ph": "i", "ts": 4.0, "pid": 1, "tid": 1},
        ]});
        assert!(matches!(
            check(bad_order.to_string().as_bytes()),
            Err(CheckError::NotMonotonic { .. })
        ));
        let overlap = json!({"traceEvents": [
            {"name": "a", "ph": "X", "ts": 1.0, "dur": 5.0, "pid": 1, "tid": 1},
            {"name": "b", "ph": "X", "ts": 2.0, "dur": 10.0, "pid": 1, "tid": 1},
        ]});
        assert!(matches!(
            check(overlap.to_string().as_bytes()),
            Err(CheckError::NotNested { .. })
        ));
        let other_track = json!({"traceEvents": [
            {"name": "a", "ph": "X", "ts": 1.0, "dur": 5.0, "pid": 1, "tid": 1},
            {"name": "b", "ph": "X", "ts": 2.0, "dur": 10.0, "pid": 1, "tid": 2},
        ]});
        assert_eq!(check(other_track.to_string().as_bytes()).unwrap().tracks, 2);
        assert!(matches!(check(b"[1,"), Err(CheckError::Json(_))));
    }
}
