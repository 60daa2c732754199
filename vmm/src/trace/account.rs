//! The kernel's account of one host action: typed summaries of what the trace says happened in
//! the action's window, over the region's host range, guest range and PFNs.
//!
//! It owns the analysis only: pure functions over parsed events ([`KEvent`]), a [`Window`], the
//! region's ranges ([`Ranges`]) and the samples taken before and after. Each returns a typed
//! account; [`for_action`] picks the one that fits an action, and [`disagreement`] says where the
//! trace and the pagemap samples tell different stories. Wiring these into each action's
//! evidence is the caller's (see docs/tracing.md, "The kernel's account").

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use super::parse::{kernel_event, Kernel, KsmMergeKind, Record};
use super::sampler::{PfnSample, Sample};
use crate::addr::{Hva, Pfn, PAGE_SIZE};
use crate::layout::GpaRange;
use crate::scenario::Action;
use crate::timeline::Mono;

/// A kernel event, typed, with the process it happened in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KEvent {
    pub ts: Mono,
    pub tid: i32,
    /// The thread group (tgid), resolved from the trace or the VMM's thread list.
    pub pid: i32,
    pub ev: Kernel,
}

/// Types the records pinlab reasons about (unknown events are left out).
pub fn typed(records: &[Record], vmm_pid: i32, vmm_tids: &[i32]) -> Vec<KEvent> {
    let mut tgid: HashMap<i32, i32> = vmm_tids.iter().map(|&t| (t, vmm_pid)).collect();
    for r in records {
        if let Some(g) = r.tgid {
            tgid.entry(r.tid).or_insert(g);
        }
    }
    records
        .iter()
        .filter_map(|r| {
            let ev = kernel_event(r);
            (!matches!(ev, Kernel::Other)).then(|| KEvent {
                ts: r.ts,
                tid: r.tid,
                pid: *tgid.get(&r.tid).unwrap_or(&r.tid),
                ev,
            })
        })
        .collect()
}

/// An interval on CLOCK_MONOTONIC. The trace prints microseconds, so the start is taken down
/// to its microsecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start: Mono,
    pub end: Mono,
}

impl Window {
    pub fn contains(&self, t: Mono) -> bool {
        t.0 >= self.start.0 / 1000 * 1000 && t <= self.end
    }
}

/// A host range `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HvaRange {
    pub start: Hva,
    pub len: u64,
}

impl HvaRange {
    pub fn end(&self) -> u64 {
        self.start.raw().saturating_add(self.len)
    }
    pub fn contains(&self, a: Hva) -> bool {
        a >= self.start && a.raw() < self.end()
    }
    /// Whether `[a, b)` overlaps this range.
    pub fn overlaps(&self, a: Hva, b: Hva) -> bool {
        a.raw() < self.end() && b > self.start
    }
    /// The 4 KiB page index of `a` inside the range.
    pub fn page(&self, a: Hva) -> Option<usize> {
        self.contains(a)
            .then(|| ((a.raw() - self.start.raw()) / PAGE_SIZE) as usize)
    }
}

/// Where the action's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ranges {
    /// The DMA region, in the host.
    pub region: HvaRange,
    /// The region's 2 MiB huge pages, in the host.
    pub huge: HvaRange,
    /// The region, in the guest (kvm_page_fault and spte events speak GPA).
    pub region_gpa: GpaRange,
    /// The decoy huge page, in the host.
    pub decoy: Option<HvaRange>,
}

/// Counter moves between two samples, for the named counters.
fn deltas(
    before: Option<&Sample>,
    after: Option<&Sample>,
    names: &[&str],
) -> BTreeMap<String, i64> {
    let (Some(b), Some(a)) = (before, after) else {
        return BTreeMap::new();
    };
    names
        .iter()
        .filter_map(|n| {
            let (x, y) = (b.vmstat.get(*n)?, a.vmstat.get(*n)?);
            Some((n.to_string(), *y as i64 - *x as i64))
        })
        .collect()
}

fn in_window(events: &[KEvent], w: Window) -> impl Iterator<Item = &KEvent> {
    events.iter().filter(move |e| w.contains(e.ts))
}

/// split-pmd, split-folio, kirill, mprotect-roundtrip: KVM's unmaps over the huge page and the
/// split counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SplitAccount {
    /// `kvm_unmap_hva_range` calls that overlap the region's huge pages: `[start, end)`.
    pub unmaps_over_huge_page: Vec<(Hva, Hva)>,
    pub unmaps_elsewhere: u64,
    /// thp_split_pmd, thp_split_page, thp_split_page_failed, thp_deferred_split_page.
    pub vmstat: BTreeMap<String, i64>,
}

pub fn split_account(
    events: &[KEvent],
    w: Window,
    r: &Ranges,
    before: Option<&Sample>,
    after: Option<&Sample>,
) -> SplitAccount {
    let mut a = SplitAccount {
        vmstat: deltas(
            before,
            after,
            &[
                "thp_split_pmd",
                "thp_split_page",
                "thp_split_page_failed",
                "thp_deferred_split_page",
            ],
        ),
        ..Default::default()
    };
    for e in in_window(events, w) {
        match &e.ev {
            Kernel::KvmUnmapHvaRange { start, end } if r.huge.overlaps(*start, *end) => {
                a.unmaps_over_huge_page.push((*start, *end))
            }
            Kernel::KvmUnmapHvaRange { .. } => a.unmaps_elsewhere += 1,
            _ => {}
        }
    }
    a
}

/// KSM merge events on one class of PFNs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MergeCounts {
    /// Events with error 0.
    pub merged: u64,
    pub failed: u64,
    /// error -> events.
    pub errors: BTreeMap<i32, u64>,
    pub merge_one_page: u64,
    pub merge_with_ksm_page: u64,
    /// Distinct PFNs merged.
    pub pfns_merged: usize,
}

/// ksm: merges on region PFNs vs decoy PFNs vs anything else (other processes, the control).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KsmAccount {
    pub region: MergeCounts,
    pub decoy: MergeCounts,
    pub elsewhere: MergeCounts,
    pub scans: u64,
    pub unmaps_over_region: u64,
    /// cow_ksm and ksm.pages_sharing.
    pub vmstat: BTreeMap<String, i64>,
}

pub fn ksm_account(
    events: &[KEvent],
    w: Window,
    r: &Ranges,
    region_pfns: &HashSet<Pfn>,
    decoy_pfns: &HashSet<Pfn>,
    before: Option<&Sample>,
    after: Option<&Sample>,
) -> KsmAccount {
    let mut a = KsmAccount {
        vmstat: deltas(before, after, &["cow_ksm", "ksm.pages_sharing"]),
        ..Default::default()
    };
    let mut merged_pfns: [BTreeSet<Pfn>; 3] = Default::default();
    for e in in_window(events, w) {
        match &e.ev {
            Kernel::KsmMerge {
                which, pfn, err, ..
            } => {
                let class = if region_pfns.contains(pfn) {
                    0
                } else if decoy_pfns.contains(pfn) {
                    1
                } else {
                    2
                };
                let c = [&mut a.region, &mut a.decoy, &mut a.elsewhere];
                let c = c.into_iter().nth(class).expect("three classes");
                match which {
                    KsmMergeKind::OnePage => c.merge_one_page += 1,
                    KsmMergeKind::WithKsmPage => c.merge_with_ksm_page += 1,
                }
                if *err == 0 {
                    c.merged += 1;
                    merged_pfns[class].insert(*pfn);
                } else {
                    c.failed += 1;
                    *c.errors.entry(*err).or_default() += 1;
                }
            }
            Kernel::KvmUnmapHvaRange { start, end } if r.region.overlaps(*start, *end) => {
                a.unmaps_over_region += 1
            }
            _ => {}
        }
    }
    a.region.pfns_merged = merged_pfns[0].len();
    a.decoy.pfns_merged = merged_pfns[1].len();
    a.elsewhere.pfns_merged = merged_pfns[2].len();
    a
}

/// Counts `ksm_start_scan` in the window (the scans ksmd made while the action ran).
pub fn ksm_scans(records: &[Record], w: Window) -> u64 {
    records
        .iter()
        .filter(|r| r.event == "ksm_start_scan" && w.contains(r.ts))
        .count() as u64
}

/// One process's writes to the region during a fork action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessWrites {
    pub pid: i32,
    /// "parent" (the VMM) or "child".
    pub role: &'static str,
    /// page_fault_user with the write bit on a region page (the process's own writes).
    pub user_write_faults: u64,
    /// The guest's write faults on region pages, resolved by KVM in the VMM: `kvm_page_fault`
    /// with the write bit where the host has it (VMX/SVM), else KVM installing a writable
    /// mapping of a region frame (`kvm_mmu_set_spte` with `w`: KVM-PVM has no kvm_page_fault).
    pub guest_write_faults: u64,
    /// Distinct region pages written.
    pub pages_written: usize,
    /// Of those, how many KVM re-mapped to another PFN than before the fork (the guest now
    /// sees a copy: a COW break).
    pub pages_copied: usize,
    /// Of those, how many have another PFN in pagemap afterwards (the VMM only).
    pub pages_written_then_moved: Option<usize>,
}

/// fork-*: write faults on region pages per process, and the PFN changes that followed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ForkAccount {
    pub children: Vec<i32>,
    pub processes: Vec<ProcessWrites>,
    /// Region frames KVM re-mapped to a PFN other than the one before the fork
    /// (`kvm_mmu_spte_requested`): the guest now sees a copy.
    pub guest_pfn_changes: usize,
    pub unmaps_over_region: u64,
}

type Writes = BTreeMap<i32, (ProcessWrites, BTreeSet<usize>)>;

fn writes_of(per: &mut Writes, pid: i32, vmm_pid: i32) -> &mut (ProcessWrites, BTreeSet<usize>) {
    per.entry(pid).or_insert_with(|| {
        (
            ProcessWrites {
                pid,
                role: if pid == vmm_pid { "parent" } else { "child" },
                ..Default::default()
            },
            BTreeSet::new(),
        )
    })
}

pub fn fork_account(
    events: &[KEvent],
    w: Window,
    r: &Ranges,
    vmm_pid: i32,
    pfns_before: &[Option<Pfn>],
    pfns_after: &[Option<Pfn>],
) -> ForkAccount {
    let mut a = ForkAccount::default();
    let mut per: Writes = BTreeMap::new();
    let gpa_page = |gpa: u64| -> Option<usize> {
        let s = r.region_gpa.start.raw();
        (gpa >= s && gpa < s + r.region_gpa.len).then(|| ((gpa - s) / PAGE_SIZE) as usize)
    };
    let gfn_page = |gfn: u64| gfn.checked_mul(PAGE_SIZE).and_then(gpa_page);
    // sched_process_fork fires for new threads too: those are in the VMM's thread group.
    let vmm_threads: HashSet<i32> = events
        .iter()
        .filter(|e| e.pid == vmm_pid)
        .map(|e| e.tid)
        .collect();
    let has_kvm_page_fault =
        in_window(events, w).any(|e| matches!(e.ev, Kernel::KvmPageFault { .. }));
    // Region pages KVM re-mapped to a new PFN, by the process that did it.
    let mut changed: BTreeMap<usize, i32> = BTreeMap::new();
    for e in in_window(events, w) {
        match &e.ev {
            Kernel::ProcessFork { pid, child_pid, .. }
                if (*pid == vmm_pid || e.pid == vmm_pid) && !vmm_threads.contains(child_pid) =>
            {
                a.children.push(*child_pid)
            }
            Kernel::PageFaultUser {
                address,
                error_code,
                ..
            } if Kernel::is_write(*error_code) => {
                if let Some(p) = r.region.page(*address) {
                    let (w, pages) = writes_of(&mut per, e.pid, vmm_pid);
                    w.user_write_faults += 1;
                    pages.insert(p);
                }
            }
            Kernel::KvmPageFault {
                address,
                error_code,
                ..
            } if Kernel::is_write(*error_code) => {
                if let Some(p) = gpa_page(*address) {
                    let (w, pages) = writes_of(&mut per, e.pid, vmm_pid);
                    w.guest_write_faults += 1;
                    pages.insert(p);
                }
            }
            Kernel::SetSpte {
                gfn,
                writable: true,
                ..
            } if !has_kvm_page_fault => {
                if let Some(p) = gfn_page(*gfn) {
                    let (w, pages) = writes_of(&mut per, e.pid, vmm_pid);
                    w.guest_write_faults += 1;
                    pages.insert(p);
                }
            }
            Kernel::SpteRequested { gfn, pfn, .. } => {
                if let Some(p) = gfn_page(*gfn) {
                    if pfns_before
                        .get(p)
                        .copied()
                        .flatten()
                        .is_some_and(|b| b != *pfn)
                    {
                        changed.insert(p, e.pid);
                    }
                }
            }
            Kernel::KvmUnmapHvaRange { start, end } if r.region.overlaps(*start, *end) => {
                a.unmaps_over_region += 1
            }
            _ => {}
        }
    }
    a.guest_pfn_changes = changed.len();
    for (pid, (mut w, pages)) in per {
        w.pages_written = pages.len();
        w.pages_copied = pages
            .iter()
            .filter(|p| changed.get(p) == Some(&pid))
            .count();
        if pid == vmm_pid && !pfns_after.is_empty() {
            w.pages_written_then_moved = Some(
                pages
                    .iter()
                    .filter(|&&p| pfns_before.get(p) != pfns_after.get(p))
                    .count(),
            );
        }
        a.processes.push(w);
    }
    a
}

/// compact: what migration and compaction did, and whether any region page moved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactAccount {
    pub migrate_batches: u64,
    pub pages_migrated: u64,
    pub pages_failed: u64,
    pub thp_migrated: u64,
    pub compaction_migrated: u64,
    /// Migration entries set on region pages (`set_migration_pte` in the region).
    pub region_migration_entries: u64,
    /// Region pages whose PFN changed (pagemap samples before and after).
    pub region_pfns_moved: usize,
    pub vmstat: BTreeMap<String, i64>,
}

pub fn compact_account(
    events: &[KEvent],
    w: Window,
    r: &Ranges,
    pfns_before: &[Option<Pfn>],
    pfns_after: &[Option<Pfn>],
    before: Option<&Sample>,
    after: Option<&Sample>,
) -> CompactAccount {
    let mut a = CompactAccount {
        vmstat: deltas(
            before,
            after,
            &[
                "pgmigrate_success",
                "pgmigrate_fail",
                "compact_migrate_scanned",
            ],
        ),
        region_pfns_moved: crate::pfn::diff_pfns(pfns_before, pfns_after).len(),
        ..Default::default()
    };
    for e in in_window(events, w) {
        match &e.ev {
            Kernel::MigratePages {
                succeeded,
                failed,
                thp_succeeded,
                ..
            } => {
                a.migrate_batches += 1;
                a.pages_migrated += succeeded;
                a.pages_failed += failed;
                a.thp_migrated += thp_succeeded;
            }
            Kernel::CompactionMigratePages { migrated, .. } => a.compaction_migrated += migrated,
            Kernel::MigrationPte {
                set: true, addr, ..
            } if r.region.contains(*addr) => a.region_migration_entries += 1,
            _ => {}
        }
    }
    a
}

/// collapse: what khugepaged and MADV_COLLAPSE said.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CollapseAccount {
    /// `mm_collapse_huge_page` statuses, in order.
    pub collapses: Vec<String>,
    /// `mm_khugepaged_scan_pmd` status -> count.
    pub scans: BTreeMap<String, u64>,
    pub unmaps_over_huge_page: u64,
    pub vmstat: BTreeMap<String, i64>,
}

pub fn collapse_account(
    events: &[KEvent],
    w: Window,
    r: &Ranges,
    before: Option<&Sample>,
    after: Option<&Sample>,
) -> CollapseAccount {
    let mut a = CollapseAccount {
        vmstat: deltas(
            before,
            after,
            &["thp_collapse_alloc", "thp_collapse_alloc_failed"],
        ),
        ..Default::default()
    };
    for e in in_window(events, w) {
        match &e.ev {
            Kernel::CollapseHugePage { status, .. } => a.collapses.push(status.clone()),
            Kernel::KhugepagedScanPmd { status, .. } => {
                *a.scans.entry(status.clone()).or_default() += 1
            }
            Kernel::KvmUnmapHvaRange { start, end } if r.huge.overlaps(*start, *end) => {
                a.unmaps_over_huge_page += 1
            }
            _ => {}
        }
    }
    a
}

/// Any other action: events by type in the window, and KVM unmaps over the region.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OtherAccount {
    pub events: BTreeMap<String, u64>,
    pub unmaps_over_region: u64,
}

pub fn other_account(records: &[Record], events: &[KEvent], w: Window, r: &Ranges) -> OtherAccount {
    let mut a = OtherAccount::default();
    for rec in records.iter().filter(|x| w.contains(x.ts)) {
        if rec.event != "tracing_mark_write" {
            *a.events.entry(rec.event.clone()).or_default() += 1;
        }
    }
    a.unmaps_over_region = in_window(events, w)
        .filter(|e| matches!(e.ev, Kernel::KvmUnmapHvaRange { start, end } if r.region.overlaps(start, end)))
        .count() as u64;
    a
}

/// The account that fits an action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "account", rename_all = "kebab-case")]
pub enum TraceAccount {
    Split(SplitAccount),
    Ksm(KsmAccount),
    Fork(ForkAccount),
    Compact(CompactAccount),
    Collapse(CollapseAccount),
    Other(OtherAccount),
}

/// What the account is computed from (one action's window and its samples).
pub struct ActionInput<'a> {
    pub records: &'a [Record],
    pub events: &'a [KEvent],
    pub window: Window,
    pub ranges: &'a Ranges,
    pub vmm_pid: i32,
    pub before: Option<&'a Sample>,
    pub after: Option<&'a Sample>,
    pub pfns_before: Option<&'a PfnSample>,
    pub pfns_after: Option<&'a PfnSample>,
}

/// The trace's account of `action` (see each `*_account`).
pub fn for_action(action: Action, i: &ActionInput) -> TraceAccount {
    let region = |p: Option<&PfnSample>| p.map(|p| p.region.clone()).unwrap_or_default();
    match action {
        Action::SplitPmd | Action::SplitFolio | Action::Kirill | Action::MprotectRoundtrip => {
            TraceAccount::Split(split_account(
                i.events, i.window, i.ranges, i.before, i.after,
            ))
        }
        Action::Ksm => {
            let set = |f: &dyn Fn(&PfnSample) -> &Vec<Option<Pfn>>| -> HashSet<Pfn> {
                [i.pfns_before, i.pfns_after]
                    .into_iter()
                    .flatten()
                    .flat_map(|p| f(p).iter().flatten().copied())
                    .collect()
            };
            let region_pfns = set(&|p| &p.region);
            let decoy_pfns = set(&|p| &p.decoy);
            let mut a = ksm_account(
                i.events,
                i.window,
                i.ranges,
                &region_pfns,
                &decoy_pfns,
                i.before,
                i.after,
            );
            a.scans = ksm_scans(i.records, i.window);
            TraceAccount::Ksm(a)
        }
        Action::ForkParentWrite
        | Action::ForkChildWrite
        | Action::ForkChildExit
        | Action::Bias1024 => TraceAccount::Fork(fork_account(
            i.events,
            i.window,
            i.ranges,
            i.vmm_pid,
            &region(i.pfns_before),
            &region(i.pfns_after),
        )),
        Action::Compact => TraceAccount::Compact(compact_account(
            i.events,
            i.window,
            i.ranges,
            &region(i.pfns_before),
            &region(i.pfns_after),
            i.before,
            i.after,
        )),
        Action::Collapse => TraceAccount::Collapse(collapse_account(
            i.events, i.window, i.ranges, i.before, i.after,
        )),
        _ => TraceAccount::Other(other_account(i.records, i.events, i.window, i.ranges)),
    }
}

/// Where the trace's account and the pagemap samples (or the counters) disagree, in one line.
pub fn disagreement(acc: &TraceAccount, i: &ActionInput) -> Option<String> {
    let moved = match (i.pfns_before, i.pfns_after) {
        (Some(b), Some(a)) => Some(crate::pfn::diff_pfns(&b.region, &a.region).len()),
        _ => None,
    };
    match acc {
        TraceAccount::Split(s) => {
            let splits = s.vmstat.get("thp_split_pmd").copied().unwrap_or(0);
            match (splits > 0, s.unmaps_over_huge_page.is_empty()) {
                (true, true) => Some(format!(
                    "thp_split_pmd moved by {splits} but KVM was told of no unmap over the region's huge page"
                )),
                _ => None,
            }
        }
        TraceAccount::Ksm(k) if k.region.merged > 0 && moved == Some(0) => Some(format!(
            "the trace shows {} merges on region PFNs but pagemap shows no region PFN changed",
            k.region.merged
        )),
        TraceAccount::Fork(f) => {
            let parent = f.processes.iter().find(|p| p.role == "parent")?;
            let pm = parent.pages_written_then_moved?;
            (pm > 0 && f.guest_pfn_changes == 0 && parent.user_write_faults == 0).then(|| {
                format!("pagemap shows {pm} written region pages moved but the trace shows no write fault or KVM re-map on them")
            })
        }
        TraceAccount::Compact(c) => match (c.region_migration_entries > 0, c.region_pfns_moved > 0) {
            (true, false) => Some(format!(
                "{} migration entries on region pages but pagemap shows no region PFN changed",
                c.region_migration_entries
            )),
            (false, true) => Some(format!(
                "pagemap shows {} region PFNs changed but the trace shows no migration entry on them",
                c.region_pfns_moved
            )),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Gpa;

    fn k(ts: u64, pid: i32, ev: Kernel) -> KEvent {
        KEvent {
            ts: Mono(ts),
            tid: pid,
            pid,
            ev,
        }
    }

    fn setup_ranges() -> Ranges {
        Ranges {
            region: HvaRange {
                start: Hva(0x7f00_0020_0000),
                len: 1 << 20,
            },
            huge: HvaRange {
                start: Hva(0x7f00_0020_0000),
                len: 2 << 20,
            },
            region_gpa: GpaRange {
                start: Gpa(0x20_0000),
                len: 1 << 20,
            },
            decoy: None,
        }
    }

    fn sample(at: u64, vm: &[(&str, u64)]) -> Sample {
        Sample {
            at: Mono(at),
            label: String::new(),
            vmstat: vm.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            perf: Vec::new(),
        }
    }

    const W: Window = Window {
        start: Mono(1_000_500),
        end: Mono(2_000_000),
    };

    #[test]
    fn split_counts_unmaps_over_the_huge_page_inside_the_window_only() {
        let r = setup_ranges();
        let unmap = |s, e| Kernel::KvmUnmapHvaRange {
            start: Hva(s),
            end: Hva(e),
        };
        let evs = [
            // Printed at microsecond precision: just before the window's ns start, same µs.
            k(1_000_000, 1, unmap(0x7f00_0030_0000, 0x7f00_0030_1000)),
            k(1_500_000, 1, unmap(0x7f00_0060_0000, 0x7f00_0060_1000)),
            // Outside the window.
            k(3_000_000, 1, unmap(0x7f00_0020_0000, 0x7f00_0040_0000)),
        ];
        let a = split_account(
            &evs,
            W,
            &r,
            Some(&sample(0, &[("thp_split_pmd", 5)])),
            Some(&sample(9, &[("thp_split_pmd", 6)])),
        );
        assert_eq!(
            a.unmaps_over_huge_page,
            [(Hva(0x7f00_0030_0000), Hva(0x7f00_0030_1000))]
        );
        assert_eq!(a.unmaps_elsewhere, 1);
        assert_eq!(a.vmstat["thp_split_pmd"], 1);
        let acc = TraceAccount::Split(a.clone());
        let input = ActionInput {
            records: &[],
            events: &evs,
            window: W,
            ranges: &r,
            vmm_pid: 1,
            before: None,
            after: None,
            pfns_before: None,
            pfns_after: None,
        };
        assert_eq!(disagreement(&acc, &input), None);
        let lonely = TraceAccount::Split(SplitAccount {
            unmaps_over_huge_page: vec![],
            ..a
        });
        assert!(disagreement(&lonely, &input).is_some());
    }

    #[test]
    fn ksm_classifies_merges_by_pfn_and_error() {
        let r = setup_ranges();
        let merge = |pfn, err| Kernel::KsmMerge {
            which: KsmMergeKind::WithKsmPage,
            pfn: Pfn(pfn),
            ksm_page: false,
            err,
        };
        let evs = [
            k(1_100_000, 9, merge(10, 0)),
            k(1_200_000, 9, merge(10, 0)),
            k(1_300_000, 9, merge(20, -16)),
            k(1_400_000, 9, merge(30, 0)),
        ];
        let region: HashSet<Pfn> = [Pfn(20)].into();
        let decoy: HashSet<Pfn> = [Pfn(10)].into();
        let a = ksm_account(&evs, W, &r, &region, &decoy, None, None);
        assert_eq!((a.decoy.merged, a.decoy.pfns_merged), (2, 1));
        assert_eq!((a.region.merged, a.region.failed), (0, 1));
        assert_eq!(a.region.errors[&-16], 1);
        assert_eq!(a.elsewhere.merged, 1);
    }

    #[test]
    fn fork_separates_parent_and_child_and_counts_guest_pfn_changes() {
        let r = setup_ranges();
        let pf = |addr, code| Kernel::PageFaultUser {
            address: Hva(addr),
            ip: 0,
            error_code: code,
        };
        let evs = [
            k(
                1_050_000,
                100,
                Kernel::ProcessFork {
                    pid: 100,
                    child_pid: 200,
                    child_comm: "pinlab".into(),
                },
            ),
            // Child writes page 1; a read fault does not count.
            k(1_100_000, 200, pf(0x7f00_0020_1000, 0x7)),
            k(1_100_001, 200, pf(0x7f00_0020_2000, 0x4)),
            // The guest writes page 0 (GPA 0x200000) in the parent; KVM maps a new PFN.
            k(
                1_200_000,
                100,
                Kernel::KvmPageFault {
                    vcpu: 0,
                    rip: 0,
                    address: 0x20_0000,
                    error_code: 0x6,
                },
            ),
            k(
                1_200_001,
                100,
                Kernel::SpteRequested {
                    gfn: 0x200,
                    pfn: Pfn(999),
                    level: 1,
                },
            ),
            // The same PFN as before: no change.
            k(
                1_200_002,
                100,
                Kernel::SpteRequested {
                    gfn: 0x201,
                    pfn: Pfn(11),
                    level: 1,
                },
            ),
        ];
        let before = [Some(Pfn(10)), Some(Pfn(11))];
        let after = [Some(Pfn(999)), Some(Pfn(11))];
        let a = fork_account(&evs, W, &r, 100, &before, &after);
        assert_eq!(a.children, [200]);
        assert_eq!(a.guest_pfn_changes, 1);
        let parent = a.processes.iter().find(|p| p.role == "parent").unwrap();
        assert_eq!((parent.guest_write_faults, parent.pages_written), (1, 1));
        assert_eq!(
            (parent.pages_copied, parent.pages_written_then_moved),
            (1, Some(1))
        );
        let child = a.processes.iter().find(|p| p.pid == 200).unwrap();
        assert_eq!((child.role, child.user_write_faults), ("child", 1));
        assert_eq!(child.pages_written_then_moved, None);
    }

    #[test]
    fn without_kvm_page_fault_writable_sptes_are_the_guest_writes() {
        // KVM-PVM: no kvm_page_fault; the COW break shows as an unmap of the page, a new PFN
        // and a writable spte. A read re-map (not writable) is not a write.
        let r = setup_ranges();
        let spte = |gfn, writable| Kernel::SetSpte {
            gfn,
            writable,
            level: 1,
        };
        let evs = [
            k(
                1_100_000,
                100,
                Kernel::SpteRequested {
                    gfn: 0x200,
                    pfn: Pfn(50),
                    level: 1,
                },
            ),
            k(1_100_001, 100, spte(0x200, true)),
            k(
                1_100_002,
                100,
                Kernel::SpteRequested {
                    gfn: 0x201,
                    pfn: Pfn(11),
                    level: 1,
                },
            ),
            k(1_100_003, 100, spte(0x201, false)),
        ];
        let before = [Some(Pfn(10)), Some(Pfn(11))];
        let a = fork_account(&evs, W, &r, 100, &before, &[]);
        let parent = &a.processes[0];
        assert_eq!(
            (
                parent.guest_write_faults,
                parent.pages_written,
                parent.pages_copied
            ),
            (1, 1, 1)
        );
        assert_eq!(a.guest_pfn_changes, 1);
    }

    #[test]
    fn compact_disagrees_when_pagemap_and_trace_differ() {
        let r = setup_ranges();
        let evs = [k(
            1_100_000,
            1,
            Kernel::MigrationPte {
                set: true,
                addr: Hva(0x7f00_0020_0000),
                order: 0,
            },
        )];
        let same = [Some(Pfn(1))];
        let a = compact_account(&evs, W, &r, &same, &same, None, None);
        assert_eq!(a.region_migration_entries, 1);
        let pb = PfnSample {
            at: Mono(0),
            label: String::new(),
            region: same.to_vec(),
            decoy: vec![],
        };
        let input = ActionInput {
            records: &[],
            events: &evs,
            window: W,
            ranges: &r,
            vmm_pid: 1,
            before: None,
            after: None,
            pfns_before: Some(&pb),
            pfns_after: Some(&pb),
        };
        let acc = for_action(Action::Compact, &input);
        assert!(disagreement(&acc, &input)
            .unwrap()
            .contains("migration entries"));
    }
}
