//! The rules of each kernel era. A SIMULATION: each rule is the decision a kernel of that era
//! makes (reuse or copy on a write fault, copy at fork, unshare on pin, may unmap, may merge,
//! may split...), written as a small function over the model's [`State`], with the kernel file
//! and function it stands for cited next to it. An era is a [`Rules`] table of such functions
//! plus its range and what changed there; the operations in `ops` ask it and never test the era
//! themselves. The list of eras, their names and the version lookup are `era`.
//!
//! Sources. Modern rules (5.19+ = what 6.18 does) were read in the current torvalds/linux tree
//! (mm/memory.c, mm/ksm.c, mm/mprotect.c, mm/rmap.c, mm/gup.c, mm/huge_memory.c). Old rules are
//! "per kernel-eras.md / seed NNN" where the seed quotes the code (seed 000 quotes KOSAKI's
//! reuse_swap_page and try_to_unmap_one hunks, seed 002 quotes 4.5's do_huge_pmd_wp_page,
//! reuse_swap_page and do_wp_page, seed 004 quotes write_protect_page and
//! __collapse_huge_page_isolate), or from commit texts found with the search tool (named at each
//! rule; "not verified" where the commit or its release could not be read).

use super::state::{Folio, HoldKind, State, PIN_BIAS};
use super::version::KernelVersion;
use std::fmt;

/// A feature a scenario can need and an era may lack: a scenario with an op that needs a
/// feature its era lacks is `n/a` there (`Op::needs`), and nothing else is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    Ksm,
    Khugepaged,
    UffdWp,
    MremapDontunmap,
}

impl Feature {
    pub const ALL: [Feature; 4] = [
        Feature::Ksm,
        Feature::Khugepaged,
        Feature::UffdWp,
        Feature::MremapDontunmap,
    ];

    /// As `n/a` details name it ("4.4 has no MREMAP_DONTUNMAP").
    pub fn what(self) -> &'static str {
        match self {
            Feature::Ksm => "KSM",
            Feature::Khugepaged => "khugepaged",
            Feature::UffdWp => "userfaultfd write-protect",
            Feature::MremapDontunmap => "MREMAP_DONTUNMAP",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what())
    }
}

/// What a kernel of the era has at all. A scenario that needs a missing feature is `n/a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Transparent huge pages (2.6.38).
    pub thp: bool,
    /// PMD split leaves a PTE-mapped compound page (4.5, Kirill's refcount redesign); before, a
    /// PMD split splits the page too.
    pub pte_mapped_thp: bool,
    /// anon_vma chains (2.6.34): each forked VMA gets its own anon_vma.
    pub anon_vma_chains: bool,
    /// KSM (2.6.32) and khugepaged (2.6.38).
    pub ksm: bool,
    pub khugepaged: bool,
    /// FOLL_PIN with GUP_PIN_COUNTING_BIAS / `_pincount` (FOLL_PIN 5.6, exact large-folio
    /// pincounts 5.7; the model starts both at 5.7).
    pub foll_pin: bool,
    /// userfaultfd write-protect (5.7) and MREMAP_DONTUNMAP (5.7).
    pub uffd_wp: bool,
    pub mremap_dontunmap: bool,
    /// PG_anon_exclusive (5.19).
    pub anon_exclusive: bool,
}

impl Features {
    /// Whether the era has `f`.
    pub fn has(&self, f: Feature) -> bool {
        match f {
            Feature::Ksm => self.ksm,
            Feature::Khugepaged => self.khugepaged,
            Feature::UffdWp => self.uffd_wp,
            Feature::MremapDontunmap => self.mremap_dontunmap,
        }
    }
}

/// Reuse or copy, on a write fault to a write-protected anonymous PTE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wp {
    /// Make the PTE writable. `move_anon_vma`: page_move_anon_rmap to the faulting VMA's
    /// anon_vma (the whole compound page). `set_exclusive`: mark the page AnonExclusive.
    Reuse {
        move_anon_vma: bool,
        set_exclusive: bool,
        free_swapcache: bool,
    },
    Copy,
}

/// On a write fault to a write-protected huge PMD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WpPmd {
    Reuse {
        set_exclusive: bool,
    },
    /// Copy the whole THP into a new THP.
    CopyHuge,
    /// Split the PMD and handle the fault at PTE level (5.18+).
    SplitThenPte,
}

/// How try_to_unmap decides for reclaim/migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapRule {
    /// Unmap regardless of references (2.6.29, 4.x, 5.x before AnonExclusive).
    Always,
    /// KOSAKI (seed 000): check `page_count == mapcount + 2` for a swapcache page, THEN unmap.
    CountThenUnmap,
    /// 5.19+: clear the PTE and flush, THEN `folio_try_share_anon_rmap_pte` refuses a possibly
    /// pinned exclusive page (mm/rmap.c try_to_unmap_one).
    ClearThenShare,
}

/// How KSM and khugepaged order the clear/flush and the count check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClearOrder {
    /// Clear the PTE/PMD and flush the TLB, then check the count (seed 004; the kernel).
    ClearThenCheck,
    /// Check, then clear: the order seed 004 explains is unsafe against gup_fast.
    CheckBeforeClear,
}

/// What gup_fast rechecks after taking its reference, before it keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recheck {
    /// The PTE it read (a huge PMD: the PMD): the generic RCU gup_fast (2667f50e8b81, 3.18;
    /// not verified) and every era here. x86's own gup_fast before 4.13 did not recheck; the
    /// model does not tell them apart, because while a flush IPI waits for gup_fast the
    /// recheck decides nothing ("The pte check is also meaningless on x86", Andrea Arcangeli,
    /// in "powerpc: get_hugepte() don't put_page() the wrong page"). Checked: with and without
    /// it, every config's verdict and state count are the same on every era.
    Pte,
    /// The PMD too (mm/gup.c gup_pte_range, 70cbc3cc78a9 "mm: gup: fix the fast GUP race
    /// against THP collapse"): a page table khugepaged detached makes gup_fast back off.
    PmdAndPte,
}

/// How mremap keeps an rmap walk from missing an entry that move_ptes carries from the old VMA
/// to the new one (seed 003): the walk must visit the old VMA first, or be excluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MremapRmap {
    /// Nothing: the new VMA stays where copy_vma's vma_merge put it on the anon_vma list, and
    /// move_ptes takes no anon_vma lock (before 3.2).
    Unordered,
    /// anon_vma_moveto_tail moves the new VMA to the tail of the list, after the old one
    /// (948f017b093a "mremap: enforce rmap src/dst vma ordering in case of vma_merge()
    /// succeeding in copy_vma()", 3.2).
    MoveToTail,
    /// need_rmap_locks: when the new VMA may be walked before the old one, move_ptes holds
    /// the anon_vma lock (108d6642ad81 "mm anon rmap: remove anon_vma_moveto_tail",
    /// 38a76013ad80 "mm: avoid taking rmap locks in move_ptes()", 3.7).
    RmapLocks,
}

/// An era: its name, the first kernel version it covers, what changed there, its features,
/// and its rules. An era covers [`since`, the next ranged era's `since`); a patch that was
/// never merged (KOSAKI's, Andrea's first) has no range.
pub struct Rules {
    pub name: &'static str,
    /// The first kernel release with these rules; `None` for an unmerged patch.
    pub since: Option<KernelVersion>,
    /// What changed at `since` (or what the patch does), with the commit.
    pub change: &'static str,
    pub features: Features,
    /// do_wp_page on an anonymous page mapped by a PTE (possibly a subpage of a THP).
    pub wp_pte: fn(&State, u8, u8) -> Wp,
    /// do_huge_pmd_wp_page.
    pub wp_pmd: fn(&State, u8) -> WpPmd,
    /// do_swap_page on a write fault: reuse the swapcache page writable?
    pub swapin_reuse: fn(&State, u8, u8, bool) -> bool,
    /// copy_page_range at fork: copy this page for the child instead of sharing it?
    pub fork_copy: fn(&State, u8, u8, u8) -> bool,
    /// GUP must fault for write (break COW / unshare) before taking its reference?
    /// Arguments: FOLL_PIN, FOLL_WRITE, the PTE is writable, the page is AnonExclusive.
    pub gup_fault_first: fn(bool, bool, bool, bool) -> bool,
    pub unmap: UnmapRule,
    /// write_protect_page's check, after the PTE is cleared: may KSM merge this page?
    pub may_merge: fn(&State, u8, u8) -> bool,
    /// split_huge_page: may the folio be split?
    pub may_split: fn(&State, u8) -> bool,
    /// __collapse_huge_page_isolate: may this page be collapsed?
    pub may_collapse: fn(&State, u8) -> bool,
    /// Migration: may this folio move (refcount freeze)?
    pub may_migrate: fn(&State, u8) -> bool,
    /// mprotect(PROT_WRITE) / UFFDIO_WRITEPROTECT(0): may the PTE be made writable at once?
    pub make_writable: fn(&State, u8, u8) -> bool,
    /// page_maybe_dma_pinned.
    pub maybe_pinned: fn(&Folio) -> bool,
    /// What gup_fast rechecks after taking its reference.
    pub gup_fast_recheck: Recheck,
    /// How mremap orders or locks against rmap walks.
    pub mremap_rmap: MremapRmap,
}

impl Rules {
    /// (refcount, pincount) a device hold adds: FOLL_PIN adds GUP_PIN_COUNTING_BIAS to a small
    /// page and one reference plus one `_pincount` to a large folio (mm/gup.c try_grab_folio,
    /// 5.7+); before FOLL_PIN, and for FOLL_GET, one reference per hold.
    pub fn hold_refs(&self, large: bool, kind: HoldKind, count: u16) -> (u16, u16) {
        match kind {
            HoldKind::Pin if self.features.foll_pin => {
                if large {
                    (count, count)
                } else {
                    (count.saturating_mul(PIN_BIAS), 0)
                }
            }
            _ => (count, 0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Write-fault rules.

/// 2.6.29 mm/memory.c do_wp_page -> mm/swapfile.c reuse_swap_page: `count = page_mapcount(page);
/// if (count <= 1 && PageSwapCache(page)) count += page_swapcount(page); return count == 1;`
/// Extra GUP references are not looked at (per kernel-eras.md / seed 000). 2.6.29 has no
/// page_move_anon_rmap (one anon_vma per fork family).
fn wp_mapcount_2629(s: &State, f: u8, sub: u8) -> Wp {
    let folio = s.folio(f);
    if !folio.ksm && mapcount_plus_swap(s, f, sub) == 1 {
        Wp::Reuse {
            move_anon_vma: false,
            set_exclusive: false,
            free_swapcache: false,
        }
    } else {
        Wp::Copy
    }
}

fn mapcount_plus_swap(s: &State, f: u8, sub: u8) -> u16 {
    let folio = s.folio(f);
    let mut count = folio.trans_huge_mapcount(sub as usize);
    if count <= 1 && folio.swapcache {
        count += s.swapcount(f, sub);
    }
    count
}

/// 2.6.29 + KOSAKI's RFC (seed 000 quotes it): reuse_swap_page ends in
/// `return count + page_count(page) == 2;` — the page is reused only when the mapping is its
/// only user: any GUP reference forces a copy.
fn wp_kosaki(s: &State, f: u8, sub: u8) -> Wp {
    let folio = s.folio(f);
    if !folio.ksm && mapcount_plus_swap(s, f, sub) == 1 && folio.extra_refs() == 0 {
        Wp::Reuse {
            move_anon_vma: false,
            set_exclusive: false,
            free_swapcache: false,
        }
    } else {
        Wp::Copy
    }
}

/// 4.4 mm/memory.c do_wp_page: `if (reuse_swap_page(old_page)) { page_move_anon_rmap(...);
/// wp_page_reuse }`; reuse_swap_page returns 0 for PageKsm, else `page_mapcount(page) <= 1`
/// (+swapcount). 4.4 never has PTE-mapped compound pages (old THP refcounting). Used from
/// 2.6.34, where page_move_anon_rmap arrived with anon_vma chains (c44b674323f4 "rmap: move
/// exclusively owned pages to own anon_vma in do_wp_page()"; not verified); whether
/// reuse_swap_page said `<= 1` or 2.6.29's `== 1` in between is not verified either, and no
/// write fault meets a page with mapcount 0.
fn wp_mapcount_44(s: &State, f: u8, sub: u8) -> Wp {
    let folio = s.folio(f);
    if !folio.ksm && mapcount_plus_swap(s, f, sub) <= 1 {
        Wp::Reuse {
            move_anon_vma: true,
            set_exclusive: false,
            free_swapcache: false,
        }
    } else {
        Wp::Copy
    }
}

/// 4.5 include/linux/swap.h / mm/swapfile.c reuse_swap_page (seed 002 quotes the hunk):
/// `/* The page is part of THP and cannot be reused */ if (PageTransCompound(page)) return 0;`
/// — a subpage of a PTE-mapped THP is always copied, pinned or not.
fn wp_45(s: &State, f: u8, sub: u8) -> Wp {
    if s.folio(f).large() {
        return Wp::Copy;
    }
    wp_mapcount_44(s, f, sub)
}

/// 4.5 + Andrea's first patch (seed 002): `reuse_swap_page(page) (page_trans_huge_mapcount(page)
/// == 1)`, and do_wp_page then calls page_move_anon_rmap on the (compound) page unconditionally:
/// Kirill's counterexample moves the whole THP to the child's anon_vma.
fn wp_andrea_v1(s: &State, f: u8, sub: u8) -> Wp {
    let folio = s.folio(f);
    if !folio.ksm && mapcount_plus_swap(s, f, sub) == 1 {
        Wp::Reuse {
            move_anon_vma: true,
            set_exclusive: false,
            free_swapcache: false,
        }
    } else {
        Wp::Copy
    }
}

/// 4.6 (6d0a07edd17c) mm/memory.c do_wp_page: `if (reuse_swap_page(old_page, &total_mapcount))
/// { if (total_mapcount == 1) page_move_anon_rmap(old_page, vma); ... }` (per kernel-eras.md /
/// seed 002). Unchanged through 5.8.
fn wp_46(s: &State, f: u8, sub: u8) -> Wp {
    let folio = s.folio(f);
    if !folio.ksm && mapcount_plus_swap(s, f, sub) == 1 {
        Wp::Reuse {
            move_anon_vma: folio.total_mapcount() == 1,
            set_exclusive: false,
            free_swapcache: false,
        }
    } else {
        Wp::Copy
    }
}

/// 5.9 (09854ba94c6a) mm/memory.c do_wp_page: `if (PageKsm(page) || page_count(page) != 1) goto
/// copy; ... if (PageKsm(page) || page_mapcount(page) != 1 || page_count(page) != 1) goto copy;`
/// page_count of a subpage is the head's: any pin, any reference, any other mapped subpage
/// means a copy. (Per kernel-eras.md; the 5.9 source text as quoted in the 2020 threads.)
fn wp_59(s: &State, f: u8, sub: u8) -> Wp {
    let folio = s.folio(f);
    if !folio.ksm && folio.refcount == 1 && folio.subs[sub as usize].mapcount == 1 {
        Wp::Reuse {
            move_anon_vma: true,
            set_exclusive: false,
            free_swapcache: false,
        }
    } else {
        Wp::Copy
    }
}

/// 5.19+ mm/memory.c do_wp_page: `if (PageAnonExclusive(vmf->page)) goto reuse;` then
/// wp_can_reuse_anon_folio: a large folio is not reused (6.18 adds an exclusive-large-folio case,
/// __wp_can_reuse_large_anon_folio, not modelled: it never reuses a page with extra references,
/// so no verdict changes); a small one only if `folio_ref_count(folio) == 1` after freeing the
/// swapcache (`folio_ref_count(folio) > 1 + folio_test_swapcache(folio)` -> copy); a reused
/// page is marked exclusive and moved to the faulting VMA's anon_vma.
fn wp_519(s: &State, f: u8, sub: u8) -> Wp {
    let folio = s.folio(f);
    if folio.subs[sub as usize].exclusive {
        return Wp::Reuse {
            move_anon_vma: false,
            set_exclusive: false,
            free_swapcache: false,
        };
    }
    if !folio.large() && !folio.ksm && folio.refcount <= 1 + folio.swapcache as u16 {
        Wp::Reuse {
            move_anon_vma: true,
            set_exclusive: true,
            free_swapcache: true,
        }
    } else {
        Wp::Copy
    }
}

/// 4.4 mm/huge_memory.c do_huge_pmd_wp_page: `if (page_mapcount(page) == 1)` reuse (old THP
/// refcounting; per kernel-eras.md).
fn wp_pmd_44(s: &State, f: u8) -> WpPmd {
    if s.folio(f).cmap == 1 {
        WpPmd::Reuse {
            set_exclusive: false,
        }
    } else {
        WpPmd::CopyHuge
    }
}

/// 4.5 do_huge_pmd_wp_page (seed 002 quotes the removed line):
/// `if (page_mapcount(page) == 1 && page_count(page) == 1)` — any pin forces a copy.
fn wp_pmd_45(s: &State, f: u8) -> WpPmd {
    let folio = s.folio(f);
    if folio.total_mapcount() == 1 && folio.refcount == 1 {
        WpPmd::Reuse {
            set_exclusive: false,
        }
    } else {
        WpPmd::CopyHuge
    }
}

/// 5.18 mm/huge_memory.c do_huge_pmd_wp_page (3bff7e3f1f16 "mm/huge_memory: streamline COW
/// logic in do_huge_pmd_wp_page()", COW fixes part 1; the rule per kernel-eras.md): reuse only
/// if `page_count == 1`, else `__split_huge_pmd` and COW at the PTE level. (The same series
/// changed do_wp_page and do_swap_page for swapcache pages, 53a05ad9f21d and c145e0b47c77;
/// not modelled: 5.18 keeps 5.9's PTE rules here.)
fn wp_pmd_518(s: &State, f: u8) -> WpPmd {
    if s.folio(f).refcount == 1 {
        WpPmd::Reuse {
            set_exclusive: false,
        }
    } else {
        WpPmd::SplitThenPte
    }
}

/// 4.5+Andrea v1 .. 5.17 do_huge_pmd_wp_page: `if (page_trans_huge_mapcount(page, NULL) == 1)`
/// (seed 002 hunk; 5.9 kept the mapcount rule for PMDs, per kernel-eras.md).
fn wp_pmd_mapcount(s: &State, f: u8) -> WpPmd {
    if s.folio(f).trans_huge_mapcount(0) == 1 {
        WpPmd::Reuse {
            set_exclusive: false,
        }
    } else {
        WpPmd::CopyHuge
    }
}

/// 5.19+ mm/huge_memory.c do_huge_pmd_wp_page: `if (PageAnonExclusive(page)) goto reuse;` ...
/// `if (folio_ref_count(folio) == 1) { folio_move_anon_rmap; SetPageAnonExclusive; reuse }`
/// else `__split_huge_pmd(...); return VM_FAULT_FALLBACK;` (COW at PTE level).
fn wp_pmd_519(s: &State, f: u8) -> WpPmd {
    let folio = s.folio(f);
    if folio.subs[0].exclusive {
        WpPmd::Reuse {
            set_exclusive: false,
        }
    } else if folio.refcount == 1 {
        WpPmd::Reuse {
            set_exclusive: true,
        }
    } else {
        WpPmd::SplitThenPte
    }
}

// ---------------------------------------------------------------------------------------------
// Swap-in rules.

/// do_swap_page: `if ((flags & FAULT_FLAG_WRITE) && reuse_swap_page(page))` — the mapcount rule
/// (mm/memory.c, 2.6.29 .. 5.18; 5.9 changed do_wp_page only). Evaluated with the new mapping
/// counted and the consumed swap entry not.
fn swapin_mapcount(s: &State, f: u8, sub: u8, _excl: bool) -> bool {
    mapcount_plus_swap(s, f, sub) == 1
}

/// KOSAKI's reuse_swap_page: the mapping must also be the only reference (seed 000).
fn swapin_kosaki(s: &State, f: u8, sub: u8, excl: bool) -> bool {
    swapin_mapcount(s, f, sub, excl) && s.folio(f).extra_refs() == 0
}

/// 5.19+ mm/memory.c do_swap_page: `exclusive = pte_swp_exclusive(vmf->orig_pte)`, else reuse
/// only `if (folio_ref_count(folio) == 1)` after freeing the swapcache.
fn swapin_519(s: &State, f: u8, _sub: u8, excl: bool) -> bool {
    let folio = s.folio(f);
    excl || (!folio.large() && folio.extra_refs() == 0 && folio.total_mapcount() <= 1)
}

// ---------------------------------------------------------------------------------------------
// Fork rules.

/// Before 5.9 (mm/memory.c copy_one_pte): every anonymous page is COW-shared, pinned or not.
fn fork_share(_s: &State, _proc: u8, _f: u8, _sub: u8) -> bool {
    false
}

/// 5.9 (70e806e4e645) mm/memory.c copy_present_page: copy for the child when
/// `atomic_read(&src_mm->has_pinned) && page_maybe_dma_pinned(page)`.
fn fork_59(s: &State, proc: u8, f: u8, _sub: u8) -> bool {
    s.procs[proc as usize].has_pinned && maybe_pinned_bias(s.folio(f))
}

/// 5.19+ mm/rmap.h folio_try_dup_anon_rmap -> `if (PageAnonExclusive(page) &&
/// folio_needs_cow_for_dma(vma, folio))` copy; otherwise ClearPageAnonExclusive and share.
/// folio_needs_cow_for_dma: `test_bit(MMF_HAS_PINNED) && folio_maybe_dma_pinned(folio)`.
fn fork_519(s: &State, proc: u8, f: u8, sub: u8) -> bool {
    s.folio(f).subs[sub as usize].exclusive
        && s.procs[proc as usize].has_pinned
        && maybe_pinned_bias(s.folio(f))
}

/// include/linux/mm.h page_maybe_dma_pinned / folio_maybe_dma_pinned: a large folio has an
/// exact `_pincount`; a small page "may be pinned" when `refcount >= GUP_PIN_COUNTING_BIAS`, so
/// 1024 plain references look like a pin (seed 001).
fn maybe_pinned_bias(f: &Folio) -> bool {
    if f.large() {
        f.pincount > 0
    } else {
        f.refcount >= PIN_BIAS
    }
}

/// Before FOLL_PIN nothing can tell.
fn maybe_pinned_never(_f: &Folio) -> bool {
    false
}

// ---------------------------------------------------------------------------------------------
// GUP rules.

/// 2.6.29 .. 5.7, 5.9 .. 5.18 mm/gup.c: only FOLL_WRITE faults a write-protected PTE for write.
fn gup_write_only(_pin: bool, write: bool, pte_write: bool, _excl: bool) -> bool {
    write && !pte_write
}

/// 5.8 (17839856fd58): "GUP on a COW mapping breaks COW at GUP time, even for reads"
/// (`should_force_cow_break`: FOLL_WRITE is forced on is_cow_mapping), reverted in 5.9.
fn gup_58(_pin: bool, _write: bool, pte_write: bool, _excl: bool) -> bool {
    !pte_write
}

/// 5.19+ mm/gup.c gup_must_unshare (a7f226604170): FOLL_PIN, R/O included, on a page that is
/// not AnonExclusive unshares first (FAULT_FLAG_UNSHARE); FOLL_GET R/O does not.
fn gup_519(pin: bool, write: bool, pte_write: bool, excl: bool) -> bool {
    (write && !pte_write) || (pin && !excl)
}

// ---------------------------------------------------------------------------------------------
// KSM, split, collapse, migration.

/// mm/ksm.c write_protect_page (all eras with KSM; seed 004 quotes it, the current tree has it):
/// `if (folio_mapcount(folio) + 1 + swapped != folio_ref_count(folio))` -> restore the PTE and
/// give up. (The `+ 1` is KSM's own reference, which the model does not take.)
fn merge_count(s: &State, f: u8, _sub: u8) -> bool {
    s.folio(f).extra_refs() == 0
}

/// 5.19+ write_protect_page adds `if (anon_exclusive && folio_try_share_anon_rmap_pte(folio,
/// page))` -> give up (fails when folio_maybe_dma_pinned).
fn merge_519(s: &State, f: u8, sub: u8) -> bool {
    let folio = s.folio(f);
    merge_count(s, f, sub) && !(folio.subs[sub as usize].exclusive && maybe_pinned_bias(folio))
}

/// 4.4 split_huge_page (old THP refcounting): pins on tail pages are carried over
/// (__split_huge_page_refcount); the split always succeeds.
fn split_always(_s: &State, _f: u8) -> bool {
    true
}

/// 4.5+ mm/huge_memory.c split_huge_page_to_list: `if (!can_split_huge_page(head, &extra_pins))
/// return -EBUSY;` — `total_mapcount(page) == page_count(page) - extra_pins - 1`: any pin or
/// reference refuses (modern: can_split_folio, same rule).
fn split_count(s: &State, f: u8) -> bool {
    s.folio(f).extra_refs() == 0
}

/// mm/khugepaged.c __collapse_huge_page_isolate (seed 004 quotes it):
/// `if (page_count(page) != 1 + PageSwapCache(page))` -> SCAN_PAGE_COUNT; modern
/// is_refcount_suitable: `folio_ref_count == folio_mapcount + swapcache` (same for our pages).
fn collapse_count(s: &State, f: u8) -> bool {
    s.folio(f).extra_refs() == 0
}

/// mm/migrate.c folio_migrate_mapping: the refcount must be frozen at the expected value, so a
/// page with GUP references is never migrated (all eras); modern compaction skips it earlier
/// (isolate_migratepages_block: `(folio_ref_count(folio) - 1) > folio_mapcount(folio)`).
fn migrate_count(s: &State, f: u8) -> bool {
    s.folio(f).extra_refs() == 0
}

/// Before 6.0, mm/mprotect.c change_pte_range only makes a PTE writable for
/// `dirty_accountable` (shared, write-notify) mappings; for uffd-wp resolve: "Leave the write bit
/// to be handled by PF interrupt handler, then things like COW could be properly handled."
/// (5.7-5.x text read via the search tool.) A private anon PTE stays write-protected.
fn writable_never(_s: &State, _f: u8, _sub: u8) -> bool {
    false
}

/// Modern mm/mprotect.c change_pte_range with MM_CP_TRY_CHANGE_WRITABLE ->
/// can_change_pte_writable: a private anonymous page may be made writable only if
/// `PageAnonExclusive(page)` (same for UFFDIO_WRITEPROTECT resolve).
fn writable_exclusive(s: &State, f: u8, sub: u8) -> bool {
    s.folio(f).subs[sub as usize].exclusive
}

// ---------------------------------------------------------------------------------------------
// The eras, oldest first. Each `change` names what its first version changed.

const OLD: Features = Features {
    thp: false,
    pte_mapped_thp: false,
    anon_vma_chains: false,
    ksm: false,
    khugepaged: false,
    foll_pin: false,
    uffd_wp: false,
    mremap_dontunmap: false,
    anon_exclusive: false,
};

const F2_6_32: Features = Features { ksm: true, ..OLD };

const F2_6_34: Features = Features {
    anon_vma_chains: true,
    ..F2_6_32
};

const F2_6_38: Features = Features {
    thp: true,
    khugepaged: true,
    ..F2_6_34
};

const F4_5: Features = Features {
    pte_mapped_thp: true,
    ..F2_6_38
};

const F5_7: Features = Features {
    foll_pin: true,
    uffd_wp: true,
    mremap_dontunmap: true,
    ..F4_5
};

const F5_19: Features = Features {
    anon_exclusive: true,
    ..F5_7
};

const fn v(major: u16, minor: u16, sub: u16) -> Option<KernelVersion> {
    Some(KernelVersion::new(major, minor, sub))
}

pub static R2_6_29: Rules = Rules {
    name: "2.6.29-2.6.31",
    since: v(2, 6, 29),
    change: "seed 000's kernel: GUP takes plain references, gup_fast is lockless, \
             do_wp_page reuses by mapcount (reuse_swap_page)",
    features: OLD,
    wp_pte: wp_mapcount_2629,
    wp_pmd: wp_pmd_44,
    swapin_reuse: swapin_mapcount,
    fork_copy: fork_share,
    gup_fault_first: gup_write_only,
    unmap: UnmapRule::Always,
    may_merge: merge_count,
    may_split: split_always,
    may_collapse: collapse_count,
    may_migrate: migrate_count,
    make_writable: writable_never,
    maybe_pinned: maybe_pinned_never,
    gup_fast_recheck: Recheck::Pte,
    mremap_rmap: MremapRmap::Unordered,
};

pub static R2_6_29_KOSAKI: Rules = Rules {
    name: "2.6.29+kosaki",
    since: None,
    change: "KOSAKI Motohiro's 2009 patch (seed 000, not merged): reuse_swap_page and \
             try_to_unmap_one count page_count against mapcount",
    wp_pte: wp_kosaki,
    swapin_reuse: swapin_kosaki,
    // mm/rmap.c try_to_unmap_one with KOSAKI's hunk (seed 000): `if (PageSwapCache(page) &&
    // page_count(page) != page_mapcount(page) + 2) { ret = SWAP_FAIL; goto out_unmap; }`,
    // checked before ptep_clear_flush.
    unmap: UnmapRule::CountThenUnmap,
    ..R2_6_29
};

pub static R2_6_32: Rules = Rules {
    name: "2.6.32-2.6.33",
    since: v(2, 6, 32),
    change: "KSM (f8af4da3b4c1 \"ksm: the mm interface to ksm\"; MADV_MERGEABLE since 2.6.32 \
             per madvise(2))",
    features: F2_6_32,
    ..R2_6_29
};

pub static R2_6_34: Rules = Rules {
    name: "2.6.34-2.6.37",
    since: v(2, 6, 34),
    change: "anon_vma chains (5beb49305251) and page_move_anon_rmap in do_wp_page \
             (c44b674323f4) (not verified)",
    features: F2_6_34,
    wp_pte: wp_mapcount_44,
    ..R2_6_32
};

pub static R2_6_38: Rules = Rules {
    name: "2.6.38-3.1",
    since: v(2, 6, 38),
    change: "THP and khugepaged with the old refcounting (ba76149f47d8 \"thp: khugepaged\"; \
             MADV_HUGEPAGE since 2.6.38 per madvise(2))",
    features: F2_6_38,
    ..R2_6_34
};

pub static R3_2: Rules = Rules {
    name: "3.2-3.6",
    since: v(3, 2, 0),
    change: "mremap: anon_vma_moveto_tail walks the old VMA before the new one (948f017b093a, \
             seed 003; the release per the seed's date, not verified)",
    mremap_rmap: MremapRmap::MoveToTail,
    ..R2_6_38
};

pub static R3_7: Rules = Rules {
    name: "3.7-4.4",
    since: v(3, 7, 0),
    change: "mremap: move_ptes takes the anon_vma lock when the new VMA may be walked first \
             (108d6642ad81, 38a76013ad80; the release not verified)",
    mremap_rmap: MremapRmap::RmapLocks,
    ..R3_2
};

pub static R4_5: Rules = Rules {
    name: "4.5",
    since: v(4, 5, 0),
    change: "Kirill Shutemov's THP refcounting: PTE-mapped THPs, split_huge_page refuses \
             pinned pages, a THP subpage is always copied (seed 002)",
    features: F4_5,
    wp_pte: wp_45,
    wp_pmd: wp_pmd_45,
    may_split: split_count,
    ..R3_7
};

pub static R4_5_ANDREA_V1: Rules = Rules {
    name: "4.5+andrea-v1",
    since: None,
    change: "Andrea Arcangeli's first fix (seed 002, superseded by 6d0a07edd17c): \
             page_trans_huge_mapcount, page_move_anon_rmap of the whole THP",
    wp_pte: wp_andrea_v1,
    wp_pmd: wp_pmd_mapcount,
    ..R4_5
};

pub static R4_6: Rules = Rules {
    name: "4.6-5.6",
    since: v(4, 6, 0),
    change: "Andrea's fix as merged (6d0a07edd17c): the anon_vma moves only when \
             total_mapcount is 1",
    wp_pte: wp_46,
    ..R4_5_ANDREA_V1
};

pub static R5_7: Rules = Rules {
    name: "5.7",
    since: v(5, 7, 0),
    change: "FOLL_PIN accounting (bias 1024, exact large-folio pincounts), \
             UFFDIO_WRITEPROTECT (5.7 per its man page), MREMAP_DONTUNMAP (e346b3813067, \
             5.7 per mremap(2))",
    features: F5_7,
    ..R4_6
};

pub static R5_8: Rules = Rules {
    name: "5.8",
    since: v(5, 8, 0),
    change: "GUP breaks COW at GUP time, even for reads (17839856fd58, CVE-2020-29374)",
    gup_fault_first: gup_58,
    ..R5_7
};

pub static R5_9: Rules = Rules {
    name: "5.9-5.17",
    since: v(5, 9, 0),
    change: "do_wp_page reuses only a page with page_count 1 (09854ba94c6a); fork copies a \
             maybe-pinned page for the child (70e806e4e645)",
    wp_pte: wp_59,
    fork_copy: fork_59,
    gup_fault_first: gup_write_only,
    maybe_pinned: maybe_pinned_bias,
    ..R5_8
};

pub static R5_18: Rules = Rules {
    name: "5.18",
    since: v(5, 18, 0),
    change: "COW fixes part 1: do_huge_pmd_wp_page reuses only page_count 1, else splits the \
             PMD (3bff7e3f1f16)",
    wp_pmd: wp_pmd_518,
    ..R5_9
};

pub static R5_19: Rules = Rules {
    name: "5.19-6.0",
    since: v(5, 19, 0),
    change: "PG_anon_exclusive (6c287605fd56), FAULT_FLAG_UNSHARE (c89357e27f20), R/O pins \
             unshare (a7f226604170)",
    features: F5_19,
    wp_pte: wp_519,
    wp_pmd: wp_pmd_519,
    swapin_reuse: swapin_519,
    fork_copy: fork_519,
    gup_fault_first: gup_519,
    unmap: UnmapRule::ClearThenShare,
    may_merge: merge_519,
    make_writable: writable_exclusive,
    ..R5_18
};

pub static R6_1: Rules = Rules {
    name: "6.1+",
    since: v(6, 1, 0),
    change: "gup_fast rechecks the PMD (70cbc3cc78a9): khugepaged is safe where the TLB flush \
             sends no IPI (seed 004; the mainline release not verified, stable 5.10.148 and 5.15.y \
             carry it)",
    gup_fast_recheck: Recheck::PmdAndPte,
    ..R5_19
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::era::Era;
    use crate::model::state::{Folio, Sub};

    fn one(f: Folio) -> State {
        let mut s = State::default();
        s.folios[0] = f;
        s
    }

    fn small(refcount: u16, mapcount: u8, exclusive: bool) -> Folio {
        let mut f = Folio {
            live: true,
            nr: 1,
            refcount,
            ..Folio::default()
        };
        f.subs[0] = Sub {
            mapcount,
            exclusive,
            version: 0,
        };
        f
    }

    /// Each row: era, a page mapped once with or without a pin, expected reuse. What a bug
    /// would look like: a pinned page copied on an era that reuses (the 2016/2020 regressions),
    /// or reused on 5.9, which copies.
    #[test]
    fn write_fault_on_pinned_small_page() {
        // (era, refcount, exclusive, reuse?)
        let rows = [
            (Era::V2_6_29, 2, false, true), // mapcount rule ignores the GUP ref
            (Era::V2_6_29Kosaki, 2, false, false), // count rule: the ref forces a copy
            (Era::V3_7, 2, false, true),
            (Era::V4_6, 2, false, true),
            (Era::V5_9, 1 + PIN_BIAS, false, false), // page_count != 1
            (Era::V5_19, 1 + PIN_BIAS, true, true),  // AnonExclusive
            (Era::V5_19, 2, false, false),           // shared + reference: copy
        ];
        for (era, rc, excl, reuse) in rows {
            let s = one(small(rc, 1, excl));
            let got = (era.rules().wp_pte)(&s, 0, 0);
            assert_eq!(
                matches!(got, Wp::Reuse { .. }),
                reuse,
                "{era}: refcount {rc}, exclusive {excl}: {got:?}"
            );
        }
    }

    /// Each row: era, a write fault on a THP mapped once by a PMD with or without a pin. What a
    /// bug would look like: 5.18 reusing a pinned THP (it splits), 4.6 copying an unpinned one.
    #[test]
    fn write_fault_on_huge_pmd() {
        // (era, refcount, the decision)
        let reuse = WpPmd::Reuse {
            set_exclusive: false,
        };
        let rows = [
            (Era::V4_6, 1, reuse),
            (Era::V4_6, 1 + 1, reuse), // mapcount rule: the pin is not looked at
            (Era::V4_5, 1 + 1, WpPmd::CopyHuge),
            (Era::V5_18, 1, reuse),
            (Era::V5_18, 1 + 1, WpPmd::SplitThenPte),
        ];
        for (era, rc, want) in rows {
            let thp = Folio {
                live: true,
                nr: 4,
                refcount: rc,
                cmap: 1,
                ..Folio::default()
            };
            assert_eq!(
                (era.rules().wp_pmd)(&one(thp), 0),
                want,
                "{era}: refcount {rc}"
            );
        }
    }

    /// 1024 plain references look pinned to a small page, not to a THP (seed 001).
    #[test]
    fn maybe_pinned_bias_is_for_small_pages() {
        assert!(maybe_pinned_bias(&small(1 + PIN_BIAS, 1, false)));
        let thp = Folio {
            live: true,
            nr: 4,
            refcount: 1 + PIN_BIAS,
            cmap: 1,
            ..Folio::default()
        };
        assert!(!maybe_pinned_bias(&thp));
    }
}
