//! The kernel events a traced run records, why each, and the filters that keep the trace to this
//! run.
//!
//! It owns the catalogue ([`CATALOGUE`]), choosing what this kernel has ([`select`]) and building
//! each event's filter expression ([`filter_for`]). It writes nothing: the session applies the
//! selection to its instance. Every event is also limited by the instance's `set_event_pid` (the
//! VMM, its fork children through the `event-fork` option, and the kernel threads that act on
//! guest RAM), so a filter here only narrows further.
//!
//! There is no THP-split and no GUP tracepoint (host-notes.md): a PMD split shows as
//! `kvm_unmap_hva_range` over the huge page plus the `thp_split_pmd` step in /proc/vmstat (the
//! sampler's job); pins show as `nr_foll_pin_acquired`/`released`.

use crate::addr::Hva;

/// What narrows an event beyond the PID filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind {
    /// Nothing: the PID filter is enough.
    None,
    /// The named address field must lie in guest RAM (`field >= start && field < end`).
    GuestRam(&'static str),
    /// A fixed expression.
    Fixed(&'static str),
}

/// One event of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSpec {
    pub group: &'static str,
    pub name: &'static str,
    pub filter: FilterKind,
    /// What it tells about the run, in one line (docs/tracing.md lists these).
    pub why: &'static str,
}

impl EventSpec {
    /// `group:name`, as `available_events` and `set_event` spell it.
    pub fn id(&self) -> String {
        format!("{}:{}", self.group, self.name)
    }
}

const fn ev(group: &'static str, name: &'static str, why: &'static str) -> EventSpec {
    EventSpec {
        group,
        name,
        filter: FilterKind::None,
        why,
    }
}

const fn evf(
    group: &'static str,
    name: &'static str,
    filter: FilterKind,
    why: &'static str,
) -> EventSpec {
    EventSpec {
        group,
        name,
        filter,
        why,
    }
}

/// Every event a traced run asks for, in the order the docs list them.
pub const CATALOGUE: &[EventSpec] = &[
    // KVM's view of guest RAM: the MMU notifier calls and the guest's faults.
    ev("kvm", "kvm_unmap_hva_range", "KVM dropped its mapping of a host range (split, COW protect, KSM, migration, discard)"),
    ev("kvm", "kvm_age_hva", "reclaim asked KVM whether a range was used"),
    ev("kvm", "kvm_test_age_hva", "reclaim tested one page's age through KVM"),
    ev("kvm", "kvm_page_fault", "a guest access KVM had to fault in (address is the guest's; error_code bit 1 = write)"),
    ev("kvm", "kvm_userspace_exit", "the vCPU returned to the VMM"),
    ev("kvm", "kvm_pio", "a guest port access (doorbells, phase markers, console)"),
    ev("kvmmmu", "kvm_mmu_spte_requested", "KVM maps a guest frame to a host PFN: the PFN the guest sees from now on"),
    ev("kvmmmu", "kvm_mmu_set_spte", "KVM installed a mapping (w = writable)"),
    ev("kvmmmu", "kvm_mmu_prepare_zap_page", "KVM tears down a shadow page"),
    ev("kvmmmu", "kvm_mmu_split_huge_page", "KVM split a huge mapping"),
    // The host's own faults on guest RAM (the VMM's threads and fork children).
    evf("exceptions", "page_fault_user", FilterKind::GuestRam("address"), "a user-mode fault on guest RAM (error_code bit 1 = write: a COW break when the page was shared)"),
    // THP collapse and migration of PMDs.
    ev("huge_memory", "mm_khugepaged_scan_pmd", "khugepaged looked at a PMD range (status says why it did not collapse)"),
    ev("huge_memory", "mm_collapse_huge_page", "a collapse finished (status: succeeded, or why not)"),
    ev("huge_memory", "mm_collapse_huge_page_isolate", "pages isolated for a collapse"),
    ev("huge_memory", "mm_collapse_huge_page_swapin", "pages swapped in for a collapse"),
    ev("thp", "set_migration_pmd", "a PMD-mapped THP is being migrated"),
    ev("thp", "remove_migration_pmd", "a PMD-mapped THP migration finished"),
    // KSM.
    ev("ksm", "ksm_start_scan", "ksmd started a scan"),
    ev("ksm", "ksm_stop_scan", "ksmd finished a scan"),
    ev("ksm", "ksm_enter", "an mm became mergeable"),
    ev("ksm", "ksm_exit", "an mm left KSM"),
    ev("ksm", "ksm_merge_one_page", "a page was merged into a KSM page (pfn; error 0 = merged)"),
    ev("ksm", "ksm_merge_with_ksm_page", "a page was merged with a (ksm) page (pfn; error 0 = merged)"),
    ev("ksm", "ksm_remove_ksm_page", "a KSM page was freed"),
    ev("ksm", "ksm_remove_rmap_item", "a KSM rmap item was dropped"),
    // Migration and compaction.
    ev("migrate", "mm_migrate_pages_start", "a migration batch started (mode, reason)"),
    ev("migrate", "mm_migrate_pages", "a migration batch ended (succeeded, failed, THP counts)"),
    ev("migrate", "set_migration_pte", "a PTE was replaced by a migration entry"),
    ev("migrate", "remove_migration_pte", "a migration entry was replaced by the new page"),
    ev("compaction", "mm_compaction_begin", "a compaction run started"),
    ev("compaction", "mm_compaction_end", "a compaction run ended (status)"),
    ev("compaction", "mm_compaction_migratepages", "compaction migrated pages (nr_migrated, nr_failed)"),
    ev("compaction", "mm_compaction_isolate_migratepages", "compaction isolated pages to move"),
    ev("compaction", "mm_compaction_finished", "compaction decided it was done"),
    ev("compaction", "mm_compaction_kcompactd_wake", "kcompactd woke"),
    // io_uring: the pin (buffer registration) and the device's requests.
    ev("io_uring", "io_uring_create", "a ring was created"),
    ev("io_uring", "io_uring_register", "buffers registered (nr_user_bufs): the FOLL_PIN | FOLL_LONGTERM pin"),
    ev("io_uring", "io_uring_submit_req", "the device submitted a request"),
    ev("io_uring", "io_uring_complete", "a request completed (res)"),
    ev("io_uring", "io_uring_req_failed", "a request failed"),
    ev("io_uring", "io_uring_queue_async_work", "a request went to an io worker"),
    // Reclaim, TLB shootdowns, large allocations.
    ev("vmscan", "mm_vmscan_reclaim_pages", "pages reclaimed (MADV_PAGEOUT)"),
    ev("vmscan", "mm_vmscan_write_folio", "a folio written to swap"),
    ev("vmscan", "mm_vmscan_direct_reclaim_begin", "direct reclaim started"),
    ev("vmscan", "mm_vmscan_direct_reclaim_end", "direct reclaim ended"),
    evf("tlb", "tlb_flush", FilterKind::Fixed("reason != 0"), "a TLB shootdown (task-switch flushes are filtered out)"),
    evf("kmem", "mm_page_alloc", FilterKind::Fixed("order > 0"), "a high-order allocation (order 9: a THP)"),
    // Processes: fork children get their own tracks.
    ev("sched", "sched_process_fork", "the VMM forked (the child's pid)"),
    ev("sched", "sched_process_exit", "a traced process exited"),
    // The syscalls that change guest RAM's mapping, the pins, and forks.
    ev("syscalls", "sys_enter_madvise", "madvise (split, discard, collapse, pageout, mergeable)"),
    ev("syscalls", "sys_exit_madvise", "madvise returned"),
    ev("syscalls", "sys_enter_mprotect", "mprotect"),
    ev("syscalls", "sys_exit_mprotect", "mprotect returned"),
    ev("syscalls", "sys_enter_mremap", "mremap (guest RAM moves)"),
    ev("syscalls", "sys_exit_mremap", "mremap returned (the new address)"),
    ev("syscalls", "sys_enter_munmap", "munmap"),
    ev("syscalls", "sys_exit_munmap", "munmap returned"),
    ev("syscalls", "sys_enter_clone", "clone (fork)"),
    ev("syscalls", "sys_exit_clone", "clone returned (the child's pid in the parent)"),
    ev("syscalls", "sys_enter_clone3", "clone3 (fork, threads)"),
    ev("syscalls", "sys_exit_clone3", "clone3 returned"),
    ev("syscalls", "sys_enter_io_uring_register", "io_uring_register (the pin)"),
    ev("syscalls", "sys_exit_io_uring_register", "io_uring_register returned"),
    ev("syscalls", "sys_enter_vmsplice", "vmsplice (the FOLL_GET reference)"),
    ev("syscalls", "sys_exit_vmsplice", "vmsplice returned"),
];

/// The catalogue split by what this kernel has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub present: Vec<EventSpec>,
    /// `group:name` of every catalogue event this kernel lacks.
    pub absent: Vec<String>,
}

/// Splits the catalogue by `available` (the lines of `available_events`: `group:name`).
pub fn select(available: &[String]) -> Selection {
    let have: std::collections::HashSet<&str> = available.iter().map(|s| s.as_str()).collect();
    let mut sel = Selection::default();
    for spec in CATALOGUE {
        if have.contains(spec.id().as_str()) {
            sel.present.push(*spec);
        } else {
            sel.absent.push(spec.id());
        }
    }
    sel
}

/// The filter expression for `spec`, given guest RAM's host range; `None` for no filter.
/// A `GuestRam` event with RAM not known yet gets no filter (and is enabled only once it is).
pub fn filter_for(spec: &EventSpec, ram: Option<(Hva, u64)>) -> Option<String> {
    match spec.filter {
        FilterKind::None => None,
        FilterKind::Fixed(f) => Some(f.to_string()),
        FilterKind::GuestRam(field) => ram.map(|(hva, len)| {
            format!(
                "{field} >= {:#x} && {field} < {:#x}",
                hva.raw(),
                hva.raw().saturating_add(len)
            )
        }),
    }
}

/// The equivalent `trace-cmd record` command line (docs and the report print it).
/// `pids` are the VMM (whose children `-c` follows) and the kernel threads kept by PID.
pub fn trace_cmd_line(sel: &Selection, ram: Option<(Hva, u64)>, pids: &[u32]) -> String {
    let mut s = String::from("trace-cmd record -C mono -b 8192");
    for spec in &sel.present {
        s.push_str(&format!(" -e {}", spec.id()));
        if let Some(f) = filter_for(spec, ram) {
            s.push_str(&format!(" -f '{f}'"));
        }
    }
    for pid in pids {
        s.push_str(&format!(" -P {pid}"));
    }
    s.push_str(" -c");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_splits_the_catalogue_exactly() {
        let available = vec![
            "kvm:kvm_unmap_hva_range".to_string(),
            "exceptions:page_fault_user".to_string(),
            "ksm:ksm_merge_with_ksm_page".to_string(),
            "not:in_catalogue".to_string(),
        ];
        let sel = select(&available);
        let present: Vec<String> = sel.present.iter().map(|e| e.id()).collect();
        assert_eq!(
            present,
            [
                "kvm:kvm_unmap_hva_range",
                "exceptions:page_fault_user",
                "ksm:ksm_merge_with_ksm_page"
            ]
        );
        assert_eq!(sel.present.len() + sel.absent.len(), CATALOGUE.len());
        assert!(sel.absent.contains(&"ksm:ksm_merge_one_page".to_string()));
        assert!(!sel.absent.iter().any(|a| a == "not:in_catalogue"));
    }

    #[test]
    fn filters_table() {
        // (event, guest RAM, expected filter) — a bug shows as an unfiltered page fault stream
        // (the whole machine's faults) or a filter on an event that has no such field.
        let pf = CATALOGUE
            .iter()
            .find(|e| e.name == "page_fault_user")
            .unwrap();
        let unmap = CATALOGUE
            .iter()
            .find(|e| e.name == "kvm_unmap_hva_range")
            .unwrap();
        let tlb = CATALOGUE.iter().find(|e| e.name == "tlb_flush").unwrap();
        let ram = Some((Hva(0x7f00_0000_0000), 64 << 20));
        let cases = [
            (
                pf,
                ram,
                Some("address >= 0x7f0000000000 && address < 0x7f0004000000".to_string()),
            ),
            (pf, None, None),
            (unmap, ram, None),
            (tlb, None, Some("reason != 0".to_string())),
        ];
        for (spec, ram, want) in cases {
            assert_eq!(filter_for(spec, ram), want, "{}", spec.id());
        }
    }

    #[test]
    fn docs_list_every_catalogue_event() {
        let docs = include_str!("../../../docs/tracing.md");
        for e in CATALOGUE {
            assert!(
                docs.contains(&format!("`{}`", e.name)) || docs.contains(&format!("`{}`", e.id())),
                "docs/tracing.md does not list {}",
                e.id()
            );
        }
    }

    #[test]
    fn catalogue_has_no_duplicates_and_trace_cmd_names_every_event() {
        let mut ids: Vec<String> = CATALOGUE.iter().map(|e| e.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), CATALOGUE.len());
        let sel = select(&ids);
        let line = trace_cmd_line(&sel, Some((Hva(0x1000), 0x1000)), &[7, 9]);
        assert_eq!(line.matches(" -e ").count(), CATALOGUE.len());
        assert!(line.contains("-f 'address >= 0x1000 && address < 0x2000'"));
        assert!(line.ends_with("-P 7 -P 9 -c"), "{line}");
    }
}
