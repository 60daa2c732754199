//! What a run's page draws, typed: built from `report::Outcome` (a run) or deserialized from a
//! child's JSON result (a matrix row) into the same structs, so one renderer serves both and a
//! unit test can check that the two paths agree.
//!
//! The `Deserialize` impls name only the fields drawn; everything else in the JSON is ignored.
//! When `Outcome` itself becomes deserializable the JSON path can go through it instead.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::identity::Identity;
use crate::layout::Layout;
use crate::report::Outcome;
use crate::scenario::{Action, PinKind, Verdict};
use crate::timeline::{self, DmaDirection, GuestPhase, What};

/// A guest phase marker as drawn.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Phase {
    Mapped,
    RoundsStart,
    RoundDone { round: u32 },
    Unmapped,
}

/// Which way a DMA batch went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    ToGuest,
    FromGuest,
}

/// One timeline entry, in the shape of the JSON (`kind`-tagged).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Mark {
    Launch {
        step: String,
    },
    Phase {
        #[serde(flatten)]
        phase: Phase,
    },
    PhaseRejected {
        code: u32,
        round: u32,
        why: String,
    },
    DmaBatch {
        direction: Direction,
        descriptors: u32,
        bytes: u64,
        failed: u32,
    },
    IommuMap {
        iova: u64,
        gpa: u64,
        len: u64,
        status: String,
    },
    IommuUnmap {
        iova: u64,
        len: u64,
        status: String,
    },
    Action {
        action: Action,
        iteration: Option<u32>,
        evidence: Option<usize>,
        error: Option<String>,
    },
    ActionFinish {
        action: Action,
        evidence: usize,
    },
    Verdict {
        verdict: Verdict,
    },
    /// A kind this page does not know (a newer result): listed, not drawn.
    #[serde(other)]
    Other,
}

/// One event on CLOCK_MONOTONIC nanoseconds.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct EventView {
    pub at: u64,
    #[serde(default)]
    pub dur_ns: Option<u64>,
    #[serde(flatten)]
    pub mark: Mark,
}

fn launch_step_name(s: timeline::LaunchStep) -> &'static str {
    use timeline::LaunchStep as L;
    match s {
        L::Process => "process",
        L::RamMapped => "ram-mapped",
        L::Prefault => "prefault",
        L::VmCreated => "vm-created",
        L::GuestStart => "guest-start",
        L::GuestEnd => "guest-end",
    }
}

impl From<&timeline::Event> for EventView {
    fn from(e: &timeline::Event) -> Self {
        let mark = match &e.what {
            What::Launch { step } => Mark::Launch {
                step: launch_step_name(*step).to_string(),
            },
            What::Phase { phase } => Mark::Phase {
                phase: match *phase {
                    GuestPhase::Mapped => Phase::Mapped,
                    GuestPhase::RoundsStart => Phase::RoundsStart,
                    GuestPhase::RoundDone { round } => Phase::RoundDone { round },
                    GuestPhase::Unmapped => Phase::Unmapped,
                },
            },
            What::PhaseRejected { code, round, why } => Mark::PhaseRejected {
                code: *code,
                round: *round,
                why: why.to_string(),
            },
            What::DmaBatch {
                direction,
                descriptors,
                bytes,
                failed,
            } => Mark::DmaBatch {
                direction: match direction {
                    DmaDirection::ToGuest => Direction::ToGuest,
                    DmaDirection::FromGuest => Direction::FromGuest,
                },
                descriptors: *descriptors,
                bytes: *bytes,
                failed: *failed,
            },
            What::IommuMap {
                iova,
                gpa,
                len,
                status,
            } => Mark::IommuMap {
                iova: iova.raw(),
                gpa: gpa.raw(),
                len: *len,
                status: status.to_string(),
            },
            What::IommuUnmap { iova, len, status } => Mark::IommuUnmap {
                iova: iova.raw(),
                len: *len,
                status: status.to_string(),
            },
            What::Action {
                action,
                iteration,
                evidence,
                error,
            } => Mark::Action {
                action: *action,
                iteration: *iteration,
                evidence: *evidence,
                error: error.clone(),
            },
            What::ActionFinish { action, evidence } => Mark::ActionFinish {
                action: *action,
                evidence: *evidence,
            },
            What::Verdict { verdict } => Mark::Verdict { verdict: *verdict },
        };
        EventView {
            at: e.at.0,
            dur_ns: e.dur_ns,
            mark,
        }
    }
}

/// A kernel event group of a traced run: when each event of the group fired.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct KernelGroup {
    /// The tracefs group (`huge_memory`, `ksm`, ...).
    pub name: String,
    /// (CLOCK_MONOTONIC ns, event name).
    pub events: Vec<(u64, String)>,
}

/// One counter of a traced run as a step line: (CLOCK_MONOTONIC ns, value).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Counter {
    /// `/proc/vmstat` name, e.g. `thp_split_pmd`.
    pub name: String,
    pub points: Vec<(u64, f64)>,
}

/// What tracing adds to the timeline (empty for an untraced run; the tracing code fills it).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Trace {
    #[serde(default)]
    pub kernel: Vec<KernelGroup>,
    #[serde(default)]
    pub counters: Vec<Counter>,
}

/// A set of region pages as a result lists it: the first pages of `total`, ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    /// Region page indices, ascending.
    pub listed: Vec<u32>,
    pub total: u32,
    /// From this page on, a page not listed may still be in the set (the list was cut).
    pub unknown_from: Option<u32>,
}

impl Listed {
    /// The first pages of a set of `total` out of `pages`, as a result lists them (ascending,
    /// maybe cut). A cut list whose unlisted remainder must fill every page past its end (the
    /// total says so: all 512 of 512 lost) is complete after all.
    pub fn first_of(mut listed: Vec<u32>, total: u32, pages: u32) -> Self {
        let mut unknown_from = ((listed.len() as u32) < total)
            .then(|| listed.last().map_or(0, |&l| l.saturating_add(1)));
        if let Some(u) = unknown_from {
            let rest = total - listed.len() as u32;
            if u < pages && rest == pages - u {
                listed.extend(u..pages);
                unknown_from = None;
            }
        }
        Listed {
            listed,
            total,
            unknown_from,
        }
    }

    /// Whether page `p` is in the set: `None` where the list cannot say.
    pub fn state(&self, p: u32) -> Option<bool> {
        if self.listed.binary_search(&p).is_ok() {
            Some(true)
        } else if self.unknown_from.is_some_and(|u| p >= u) {
            None
        } else {
            Some(false)
        }
    }

    pub fn is_truncated(&self) -> bool {
        self.unknown_from.is_some()
    }
}

/// A pinned page whose PFN is no longer the mapped one.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Change {
    /// Page index in its mapping.
    pub page: usize,
    pub gpa: u64,
    pub pinned: Option<u64>,
    pub mapped: Option<u64>,
}

/// One IOMMU mapping's PFN evidence.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Pin {
    pub gpa: u64,
    pub len: u64,
    pub pages: usize,
    pub pinned_pfns_changed_pages: usize,
    pub changed: Vec<Change>,
    pub unreadable: Option<String>,
}

/// What one host action left, with its details as key/value pairs (their Serialize form).
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub action: Action,
    pub after_round: u32,
    pub storm_iteration: Option<u32>,
    pub summary: String,
    pub vmstat: BTreeMap<String, i64>,
    pub region_pfns_changed: usize,
    pub region_thp_pages_before: usize,
    pub region_thp_pages_after: usize,
    pub details: Vec<(String, String)>,
    pub finish: Vec<(String, String)>,
}

/// Flattens a JSON value into dotted keys and printed leaves.
pub fn flatten(v: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    walk(&key(k), v, out);
                }
            }
            serde_json::Value::Array(a) if a.iter().all(|x| !x.is_object()) => {
                let items: Vec<String> = a.iter().map(leaf).collect();
                out.push((prefix.to_string(), items.join(", ")));
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&key(&i.to_string()), v, out);
                }
            }
            other => out.push((prefix.to_string(), leaf(other))),
        }
    }
    fn leaf(v: &serde_json::Value) -> String {
        match v {
            // Addresses and PFNs read better in hex.
            serde_json::Value::Number(n) if n.as_u64().is_some_and(|n| n >= 1 << 32) => {
                format!("{:#x}", n.as_u64().unwrap_or(0))
            }
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "—".into(),
            other => other.to_string(),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

/// THP pages per 2 MiB block of guest RAM, at boot and at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Blocks {
    #[serde(default)]
    pub boot: Option<Vec<u16>>,
    #[serde(default)]
    pub end: Option<Vec<u16>>,
}

/// Everything a run's page (or a matrix row's section) draws.
#[derive(Clone, Debug, PartialEq)]
pub struct RunView {
    pub scenario: String,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub expected: Verdict,
    pub expected_from: String,
    pub pin: PinKind,
    pub thp: bool,
    pub memory_bytes: u64,
    /// Guest RAM faulted in and measured, from GPA 0 (`Outcome::prefaulted_bytes`); the blocks
    /// past it were never measured.
    pub prefaulted_bytes: Option<u64>,
    pub rounds: u32,
    pub thp_coverage: Option<f64>,
    pub thp_coverage_end: Option<f64>,
    pub blocks: Blocks,
    pub region_pages: u32,
    pub rounds_done: Option<u32>,
    pub write_lost: Listed,
    pub read_stale: Listed,
    pub pins: Vec<Pin>,
    pub evidence: Vec<Evidence>,
    pub events: Vec<EventView>,
    pub dropped: u64,
    pub trace: Trace,
    pub identity: Identity,
    pub launch_to_guest_done_ms: Option<f64>,
    /// The scenario's places in guest RAM (from `Scenario::layout()`), when it has a layout.
    pub layout: Option<Layout>,
}

impl RunView {
    /// The view of a typed run result and the scenario it ran.
    pub fn of(o: &Outcome, layout: Option<Layout>) -> Self {
        let guest = o.guest.as_ref().map(|g| ChildGuest {
            rounds_done: g.rounds_done,
            region_pages: g.region_pages,
            write_lost_page_list: g.write_lost_page_list.clone(),
            read_stale_page_list: g.read_stale_page_list.clone(),
        });
        let pages = PageFacts::of(guest, o.device_write_lost_pages, o.device_read_stale_pages);
        RunView {
            scenario: o.scenario.clone(),
            verdict: o.verdict,
            reason: o.reason.clone(),
            expected: o.expected,
            expected_from: o.expected_from.clone(),
            pin: o.pin,
            thp: o.thp,
            memory_bytes: o.memory_bytes,
            prefaulted_bytes: o.prefaulted_bytes,
            rounds: o.rounds,
            thp_coverage: o.thp_coverage,
            thp_coverage_end: o.thp_coverage_end,
            blocks: Blocks {
                boot: o.thp_blocks.boot.clone(),
                end: o.thp_blocks.end.clone(),
            },
            region_pages: pages.region_pages,
            rounds_done: pages.rounds_done,
            write_lost: pages.write_lost,
            read_stale: pages.read_stale,
            pins: o
                .pins
                .iter()
                .map(|p| Pin {
                    gpa: p.gpa.raw(),
                    len: p.len,
                    pages: p.pages,
                    pinned_pfns_changed_pages: p.pinned_pfns_changed_pages,
                    changed: p
                        .changed
                        .iter()
                        .map(|c| Change {
                            page: c.page,
                            gpa: c.gpa.raw(),
                            pinned: c.pinned.map(|p| p.raw()),
                            mapped: c.mapped.map(|p| p.raw()),
                        })
                        .collect(),
                    unreadable: p.unreadable.clone(),
                })
                .collect(),
            evidence: o
                .evidence
                .iter()
                .map(|e| Evidence {
                    action: e.action,
                    after_round: e.after_round,
                    storm_iteration: e.storm_iteration,
                    summary: e.summary.clone(),
                    vmstat: e.vmstat.clone(),
                    region_pfns_changed: e.region_pfns_changed,
                    region_thp_pages_before: e.region_thp_pages_before,
                    region_thp_pages_after: e.region_thp_pages_after,
                    details: serde_json::to_value(&e.details)
                        .map(|v| flatten(&v))
                        .unwrap_or_default(),
                    finish: e
                        .finish
                        .as_ref()
                        .and_then(|f| serde_json::to_value(f).ok())
                        .map(|v| flatten(&v))
                        .unwrap_or_default(),
                })
                .collect(),
            events: o.timeline.events.iter().map(EventView::from).collect(),
            dropped: o.timeline.dropped,
            trace: Trace::default(),
            identity: o.identity.clone(),
            launch_to_guest_done_ms: o.timings_ms.launch_to_guest_done,
            layout,
        }
    }

    /// Region pages whose pinned PFN changed: each mapping lists its first few.
    pub fn moved(&self) -> Listed {
        let start = self.layout.map(|l| l.region.start.raw());
        let page_of = |gpa: u64| {
            let off = gpa.checked_sub(start?)?;
            u32::try_from(off / crate::addr::PAGE_SIZE)
                .ok()
                .filter(|&p| p < self.region_pages)
        };
        let mut listed: Vec<u32> = self
            .pins
            .iter()
            .flat_map(|p| p.changed.iter())
            .filter_map(|c| page_of(c.gpa))
            .collect();
        listed.sort_unstable();
        listed.dedup();
        // A cut list says nothing past its last page; with several mappings, the earliest cut
        // bounds what is known.
        let unknown_from = self
            .pins
            .iter()
            .filter(|p| p.changed.len() < p.pinned_pfns_changed_pages || p.unreadable.is_some())
            .map(|p| {
                let last = p
                    .changed
                    .last()
                    .map_or(p.gpa, |c| c.gpa + crate::addr::PAGE_SIZE);
                page_of(last).unwrap_or(0)
            })
            .min();
        let total: u32 = self
            .pins
            .iter()
            .map(|p| p.pinned_pfns_changed_pages as u32)
            .sum();
        // One mapping: its list is the first pages of its total, as the guest's lists are.
        if let ([p], Some(_)) = (&self.pins[..], unknown_from) {
            if p.unreadable.is_none() {
                return Listed::first_of(listed, total, self.region_pages);
            }
        }
        Listed {
            listed,
            total,
            unknown_from,
        }
    }

    /// Whether the run got as far as the guest's DMA (an `error` or `skipped` run may not).
    pub fn has_pages(&self) -> bool {
        self.region_pages > 0
    }
}

/// The fields of a child's JSON result (`pinlab run --json`) that a page draws.
#[derive(Debug, Deserialize)]
pub struct ChildResult {
    pub scenario: String,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub expected: Verdict,
    pub expected_from: String,
    pub pin: PinKind,
    pub thp: bool,
    pub memory_bytes: u64,
    #[serde(default)]
    pub prefaulted_bytes: Option<u64>,
    pub rounds: u32,
    pub thp_coverage: Option<f64>,
    pub thp_coverage_end: Option<f64>,
    #[serde(default)]
    pub thp_blocks: Blocks,
    pub device_write_lost_pages: u32,
    pub device_read_stale_pages: u32,
    #[serde(default)]
    pub timings_ms: ChildTimings,
    pub pins: Vec<Pin>,
    pub guest: Option<ChildGuest>,
    pub evidence: Vec<ChildEvidence>,
    pub timeline: ChildTimeline,
    pub identity: Identity,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChildTimings {
    pub launch_to_guest_done: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct ChildGuest {
    pub rounds_done: u32,
    pub region_pages: u32,
    pub write_lost_page_list: Vec<u32>,
    pub read_stale_page_list: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub struct ChildEvidence {
    pub action: Action,
    pub after_round: u32,
    pub storm_iteration: Option<u32>,
    pub summary: String,
    pub vmstat: BTreeMap<String, i64>,
    pub region_pfns_changed: usize,
    pub region_thp_pages_before: usize,
    pub region_thp_pages_after: usize,
    pub details: serde_json::Value,
    pub finish: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChildTimeline {
    pub events: Vec<EventView>,
    pub dropped: u64,
    #[serde(default)]
    pub trace: Trace,
}

/// What a run says per page of the region, from the guest's report and the run's counts.
struct PageFacts {
    region_pages: u32,
    rounds_done: Option<u32>,
    write_lost: Listed,
    read_stale: Listed,
}

impl PageFacts {
    fn of(guest: Option<ChildGuest>, write_lost_pages: u32, read_stale_pages: u32) -> Self {
        // Without the guest's report there is nothing to say per page.
        let Some(g) = guest else {
            return PageFacts {
                region_pages: 0,
                rounds_done: None,
                write_lost: Listed::first_of(Vec::new(), write_lost_pages, 0),
                read_stale: Listed::first_of(Vec::new(), read_stale_pages, 0),
            };
        };
        PageFacts {
            region_pages: g.region_pages,
            rounds_done: Some(g.rounds_done),
            write_lost: Listed::first_of(g.write_lost_page_list, write_lost_pages, g.region_pages),
            read_stale: Listed::first_of(g.read_stale_page_list, read_stale_pages, g.region_pages),
        }
    }
}

impl ChildResult {
    /// The view of a matrix row's result and its scenario's layout.
    pub fn into_view(self, layout: Option<Layout>) -> RunView {
        let pages = PageFacts::of(
            self.guest,
            self.device_write_lost_pages,
            self.device_read_stale_pages,
        );
        RunView {
            region_pages: pages.region_pages,
            rounds_done: pages.rounds_done,
            write_lost: pages.write_lost,
            read_stale: pages.read_stale,
            scenario: self.scenario,
            verdict: self.verdict,
            reason: self.reason,
            expected: self.expected,
            expected_from: self.expected_from,
            pin: self.pin,
            thp: self.thp,
            memory_bytes: self.memory_bytes,
            prefaulted_bytes: self.prefaulted_bytes,
            rounds: self.rounds,
            thp_coverage: self.thp_coverage,
            thp_coverage_end: self.thp_coverage_end,
            blocks: self.thp_blocks,
            pins: self.pins,
            evidence: self
                .evidence
                .into_iter()
                .map(|e| Evidence {
                    action: e.action,
                    after_round: e.after_round,
                    storm_iteration: e.storm_iteration,
                    summary: e.summary,
                    vmstat: e.vmstat,
                    region_pfns_changed: e.region_pfns_changed,
                    region_thp_pages_before: e.region_thp_pages_before,
                    region_thp_pages_after: e.region_thp_pages_after,
                    details: flatten(&e.details),
                    finish: e.finish.as_ref().map(flatten).unwrap_or_default(),
                })
                .collect(),
            events: self.timeline.events,
            dropped: self.timeline.dropped,
            trace: self.timeline.trace,
            identity: self.identity,
            launch_to_guest_done_ms: self.timings_ms.launch_to_guest_done,
            layout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{Mono, Timeline};

    #[test]
    fn a_listed_set_knows_where_its_knowledge_ends() {
        let complete = Listed::first_of(vec![1, 5], 2, 512);
        assert_eq!(complete.state(5), Some(true));
        assert_eq!(complete.state(100), Some(false));
        let cut = Listed::first_of(vec![0, 1, 2], 10, 512);
        assert_eq!(cut.state(1), Some(true));
        assert_eq!(
            cut.state(3),
            None,
            "past the last listed page nothing is known"
        );
        assert!(cut.is_truncated() && !complete.is_truncated());
        let gap = Listed::first_of(vec![0, 4], 9, 512);
        assert_eq!(
            gap.state(2),
            Some(false),
            "a gap before the last listed is known"
        );
        assert_eq!(Listed::first_of(vec![], 3, 512).state(0), None);
        // 64 listed of 512 lost in a region of 512: every page is lost.
        let all = Listed::first_of((0..64).collect(), 512, 512);
        assert!(!all.is_truncated());
        assert!((0..512).all(|p| all.state(p) == Some(true)));
        // 64 listed, 70 lost: 6 more somewhere past page 63.
        assert_eq!(Listed::first_of((0..64).collect(), 70, 512).state(64), None);
    }

    #[test]
    fn flatten_names_every_leaf_by_its_path() {
        let v = serde_json::json!({"a": 1, "b": {"c": "x", "d": [1, 2]}, "e": [{"f": null}], "g": 140207598858240u64});
        let f = flatten(&v);
        assert_eq!(
            f,
            vec![
                ("a".into(), "1".into()),
                ("b.c".into(), "x".into()),
                ("b.d".into(), "1, 2".into()),
                ("e.0.f".into(), "—".into()),
                ("g".into(), "0x7f84a01ff000".into()),
            ]
        );
    }

    /// The typed path (a run) and the JSON path (a matrix row) must draw the same run.
    #[test]
    fn typed_and_json_views_agree() {
        let s = crate::config::load(None).unwrap();
        let mut o = Outcome::empty(&s);
        let t = Timeline::new();
        t.instant(
            "main",
            What::Launch {
                step: timeline::LaunchStep::Process,
            },
        );
        t.instant(
            "vcpu",
            What::Phase {
                phase: GuestPhase::RoundDone { round: 2 },
            },
        );
        t.span(
            Mono::now(),
            "device",
            What::DmaBatch {
                direction: DmaDirection::FromGuest,
                descriptors: 3,
                bytes: 4096,
                failed: 0,
            },
        );
        t.instant(
            "main",
            What::Action {
                action: Action::Dontneed,
                iteration: None,
                evidence: Some(0),
                error: None,
            },
        );
        o.timeline = (&t).into();
        o.verdict = Verdict::Diverged;
        o.thp_blocks.boot = Some(vec![512, 3]);
        o.device_write_lost_pages = 2;
        o.guest = Some(crate::oracle::GuestSummary {
            region_pages: 512,
            write_lost_page_list: vec![4, 9],
            ..Default::default()
        });
        o.evidence.push(crate::evidence::ActionEvidence {
            action: Action::Dontneed,
            after_round: 2,
            storm_iteration: None,
            summary: "s".into(),
            interval: crate::evidence::Interval::since(Mono::now()),
            vmstat: [("thp_split_pmd".to_string(), 1)].into(),
            region_pfns_changed: 512,
            region_pages_changed: crate::evidence::PageList::new(&[0, 1]),
            region_thp_pages_before: 512,
            region_thp_pages_after: 0,
            details: crate::evidence::Details::Dontneed(crate::evidence::Dontneed {
                region: crate::addr::Hva(0x7f00_0000_0000),
                len: 2 << 20,
                present_before: 512,
                unmapped_pages: 512,
                changed_pages: crate::evidence::PageList::new(&[]),
                effect: crate::evidence::Effect::Done,
            }),
            finish: None,
        });
        let layout = s.layout().ok();
        let typed = RunView::of(&o, layout);
        let json = serde_json::to_string(&o).unwrap();
        let child: ChildResult = serde_json::from_str(&json).unwrap();
        let from_json = child.into_view(layout);
        assert_eq!(typed, from_json);
        assert_eq!(typed.events.len(), 4);
        assert!(matches!(
            typed.events[1].mark,
            Mark::Phase {
                phase: Phase::RoundDone { round: 2 }
            }
        ));
        assert!(
            typed.evidence[0]
                .details
                .contains(&("unmapped_pages".into(), "512".into())),
            "{:?}",
            typed.evidence[0].details
        );
    }
}
