//! The trace's part of a run's result: what was traced, what was lost, where the files are, and
//! the kernel's account of each action. Shapes only; `session` fills it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::account::{Ranges, TraceAccount, Window};
use super::instance::CpuStats;
use super::perf::ThreadCounts;
use crate::scenario::Action;

/// Whether the kernel's side was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceStatus {
    Recorded,
    /// tracefs was absent, read-only or refused: the file holds the lab's timeline and the
    /// samples only; `reason` says why.
    Skipped,
}

/// Events lost between the kernel and the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// All of it: the per-CPU counters, or the text's own count when that is larger.
    pub total: u64,
    pub per_cpu: Vec<CpuStats>,
    /// `[LOST N EVENTS]` lines the reader saw.
    pub in_text: u64,
    /// Records past the reader's bound (kept in the raw file, not analysed).
    pub not_analysed: u64,
}

impl Lost {
    pub fn from_parts(per_cpu: Vec<CpuStats>, in_text: u64, not_analysed: u64) -> Lost {
        let counted: u64 = per_cpu.iter().map(|c| c.lost()).sum();
        Lost {
            total: counted.max(in_text),
            per_cpu,
            in_text,
            not_analysed,
        }
    }
}

/// The perf counters' part.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PerfSummary {
    /// "counted", or why hardware counters are not.
    pub hardware: String,
    pub software_error: Option<String>,
    /// The counts at the last sample, per thread (tid 0: the whole process, inherited).
    pub last: Vec<ThreadCounts>,
}

/// One action's window and what the trace says about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActionAccount {
    pub action: Action,
    pub iteration: Option<u32>,
    /// The index of the action's evidence in the run's evidence list.
    pub evidence: Option<usize>,
    pub window: Window,
    pub account: TraceAccount,
    /// Where the trace and the pagemap samples disagree, if they do.
    pub disagreement: Option<String>,
}

/// The trace's part of the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceReport {
    pub status: TraceStatus,
    pub reason: Option<String>,
    /// The Chrome trace-event JSON.
    pub file: PathBuf,
    /// The raw instance text, when recorded.
    pub raw_file: Option<PathBuf>,
    /// Where tracefs came from.
    pub tracefs: Option<String>,
    pub instance: Option<String>,
    /// Where the region, its huge pages and the decoy were in the host and the guest.
    pub ranges: Option<Ranges>,
    /// Why the instance could not be removed (it stays journaled for the next run).
    pub instance_error: Option<String>,
    pub clock: &'static str,
    pub buffer_kb_per_cpu: Option<u64>,
    pub events_enabled: Vec<String>,
    /// Catalogue events this kernel does not have.
    pub events_absent: Vec<String>,
    /// Events the kernel has but refused to enable or filter: (event, why).
    pub events_refused: Vec<(String, String)>,
    pub filters: BTreeMap<String, String>,
    pub traced_pids: Vec<i32>,
    pub kernel_threads: Vec<(i32, String)>,
    pub records: u64,
    /// pinlab markers found in the trace.
    pub markers: u64,
    pub lost: Lost,
    /// Whether any event was lost (a run whose trace lost events says so).
    pub lost_events: bool,
    pub samples: usize,
    pub perf: PerfSummary,
    pub accounts: Vec<ActionAccount>,
    /// The equivalent trace-cmd command line.
    pub trace_cmd: Option<String>,
    /// Trace events in the JSON file.
    pub json_events: usize,
    pub reader_error: Option<String>,
    pub write_error: Option<String>,
}

impl TraceReport {
    fn base(file: &Path, status: TraceStatus) -> TraceReport {
        TraceReport {
            status,
            reason: None,
            file: file.to_path_buf(),
            raw_file: None,
            tracefs: None,
            instance: None,
            ranges: None,
            instance_error: None,
            clock: "mono",
            buffer_kb_per_cpu: None,
            events_enabled: Vec::new(),
            events_absent: Vec::new(),
            events_refused: Vec::new(),
            filters: BTreeMap::new(),
            traced_pids: Vec::new(),
            kernel_threads: Vec::new(),
            records: 0,
            markers: 0,
            lost: Lost::default(),
            lost_events: false,
            samples: 0,
            perf: PerfSummary::default(),
            accounts: Vec::new(),
            trace_cmd: None,
            json_events: 0,
            reader_error: None,
            write_error: None,
        }
    }

    pub fn recorded(file: &Path, raw: PathBuf) -> TraceReport {
        let mut r = Self::base(file, TraceStatus::Recorded);
        r.raw_file = Some(raw);
        r
    }

    pub fn skipped(file: &Path, reason: String) -> TraceReport {
        let mut r = Self::base(file, TraceStatus::Skipped);
        r.reason = Some(reason);
        r
    }

    /// One line for the human summary.
    pub fn summary(&self) -> String {
        match self.status {
            TraceStatus::Skipped => format!(
                "trace: skipped ({}); {} holds the lab's timeline and samples",
                self.reason.as_deref().unwrap_or("no reason"),
                self.file.display()
            ),
            TraceStatus::Recorded => format!(
                "trace: {} ({} kernel events, {} markers, {}{}){}",
                self.file.display(),
                self.records,
                self.markers,
                if self.lost_events {
                    format!("{} events LOST to overruns", self.lost.total)
                } else {
                    "nothing lost".to_string()
                },
                if self.events_absent.is_empty() {
                    String::new()
                } else {
                    format!("; absent here: {}", self.events_absent.join(" "))
                },
                self.write_error
                    .as_ref()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ),
        }
    }
}

fn vmstat_text(v: &BTreeMap<String, i64>) -> String {
    let moved: Vec<String> = v
        .iter()
        .filter(|(_, d)| **d != 0)
        .map(|(k, d)| format!("{k} {d:+}"))
        .collect();
    if moved.is_empty() {
        "no vmstat step".into()
    } else {
        moved.join(", ")
    }
}

impl std::fmt::Display for TraceAccount {
    /// The kernel's account of one action, in one line for the human summary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceAccount::Split(a) => write!(
                f,
                "kvm_unmap_hva_range over the region's huge page x{} (elsewhere x{}); {}",
                a.unmaps_over_huge_page.len(),
                a.unmaps_elsewhere,
                vmstat_text(&a.vmstat)
            ),
            TraceAccount::Ksm(a) => write!(
                f,
                "ksm_merge_* on region PFNs: {} merged, {} refused; on decoy PFNs: {} merged; \
                 elsewhere {} merged; {} scans; {}",
                a.region.merged,
                a.region.failed,
                a.decoy.merged,
                a.elsewhere.merged,
                a.scans,
                vmstat_text(&a.vmstat)
            ),
            TraceAccount::Fork(a) => {
                write!(f, "{} child(ren);", a.children.len())?;
                for p in &a.processes {
                    write!(
                        f,
                        " {} {}: {} user + {} guest write faults on {} region pages, {} copied;",
                        p.role,
                        p.pid,
                        p.user_write_faults,
                        p.guest_write_faults,
                        p.pages_written,
                        p.pages_copied
                    )?;
                }
                write!(
                    f,
                    " KVM re-mapped {} region frames to another PFN",
                    a.guest_pfn_changes
                )
            }
            TraceAccount::Compact(a) => write!(
                f,
                "mm_migrate_pages: {} batches, {} pages migrated, {} failed; {} migration entries \
                 on the region, {} region PFNs moved; {}",
                a.migrate_batches,
                a.pages_migrated,
                a.pages_failed,
                a.region_migration_entries,
                a.region_pfns_moved,
                vmstat_text(&a.vmstat)
            ),
            TraceAccount::Collapse(a) => write!(
                f,
                "mm_collapse_huge_page: [{}]; kvm_unmap_hva_range over the huge page x{}; {}",
                a.collapses.join(", "),
                a.unmaps_over_huge_page,
                vmstat_text(&a.vmstat)
            ),
            TraceAccount::Other(a) => write!(
                f,
                "{} kernel events in the window, kvm_unmap_hva_range over the region x{}",
                a.events.values().sum::<u64>(),
                a.unmaps_over_region
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::account::{KsmAccount, MergeCounts};
    use super::*;

    /// The human line names region and decoy merges apart, and only the vmstat counters that
    /// moved. A bug: region and decoy swapped, or a zero step printed as a change.
    #[test]
    fn the_ksm_line_keeps_region_and_decoy_apart() {
        let a = TraceAccount::Ksm(KsmAccount {
            region: MergeCounts {
                failed: 7,
                ..Default::default()
            },
            decoy: MergeCounts {
                merged: 512,
                ..Default::default()
            },
            vmstat: [
                ("cow_ksm".to_string(), 0),
                ("ksm.pages_sharing".to_string(), 511),
            ]
            .into(),
            ..Default::default()
        });
        let line = a.to_string();
        assert!(line.contains("region PFNs: 0 merged, 7 refused"), "{line}");
        assert!(line.contains("decoy PFNs: 512 merged"), "{line}");
        assert!(
            line.contains("ksm.pages_sharing +511") && !line.contains("cow_ksm"),
            "{line}"
        );
    }
}
