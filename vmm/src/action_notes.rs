//! What each host action needs and what evidence it leaves: the `--list-actions` table, kept
//! beside the vocabulary (`scenario::Action`) it describes.

use crate::scenario::Action;

impl Action {
    /// What the action needs from the host and the layout, in one line.
    pub fn needs(self) -> &'static str {
        match self {
            Action::ForkParentWrite | Action::ForkChildWrite | Action::ForkChildExit => {
                "nothing beyond the run (set vm.dontfork to see QEMU's mitigation)"
            }
            Action::MprotectRoundtrip => "a THP-backed region (vm.thp) to show the PMD split",
            Action::SplitPmd | Action::Kirill => {
                "an unpinned 4 KiB page beside the region inside its huge page (region smaller than its huge pages, or an offset)"
            }
            Action::SplitFolio => {
                "a page beside the region to split the PMD first; THP-backed RAM"
            }
            Action::Collapse => "THP enabled for madvise; a split first (it splits if needed)",
            Action::Ksm => "KSM (/sys/kernel/mm/ksm); a decoy huge page after the region (vm.memory)",
            Action::KsmShadow => {
                "KSM; root (the helper's PFNs); a region of at most 64MiB; run once, not in a storm"
            }
            Action::Compact => "/proc/sys/vm/compact_memory (root)",
            Action::Pageout => "swap: an active swap area or [host] swap / --swap SIZE",
            Action::Mremap | Action::MremapDontunmap => {
                "nothing beyond the run (the memslot is re-pointed with the vCPU stopped)"
            }
            Action::UffdWp => "userfaultfd with write-protect support",
            Action::Dontneed => "nothing beyond the run",
            Action::Bias1024 => "a guest page after the region (vm.memory)",
        }
    }

    /// What evidence the action leaves, in one line.
    pub fn leaves(self) -> &'static str {
        match self {
            Action::ForkParentWrite | Action::ForkChildWrite | Action::ForkChildExit => {
                "pages copied at fork (parent vs child PFNs), the child's exit, vmstat deltas"
            }
            Action::MprotectRoundtrip => {
                "the page's VMA read-only then read-write again, thp_split_pmd delta"
            }
            Action::SplitPmd => "thp_split_pmd delta, region THP pages before/after",
            Action::SplitFolio => {
                "thp_split_page / thp_split_page_failed deltas: whether the pinned folio refused"
            }
            Action::Kirill => "seed 002's sequence: PFNs of both halves in parent and child",
            Action::Collapse => "MADV_COLLAPSE result, thp_collapse_alloc delta, PFNs",
            Action::Ksm => {
                "region vs decoy pages merged (PFNs, KSM bit), KSM counters over the interval"
            }
            Action::KsmShadow => {
                "helper copies vs control pages merged (KSM bit), region PFNs kept, KSM counters, the finding"
            }
            Action::Compact => "pgmigrate_success / compact_* deltas, region PFNs moved",
            Action::Pageout => "pswpout delta, region vs decoy pages swapped",
            Action::Mremap | Action::MremapDontunmap => "old and new host address, PFNs kept",
            Action::UffdWp => "write faults handled by the uffd handler",
            Action::Dontneed => "region PFNs discarded and refaulted",
            Action::Bias1024 => "whether fork copied a page with >= 1024 plain references",
        }
    }
}
