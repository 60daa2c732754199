//! THP actions: PMD split (mprotect round trip, a partial discard), folio split, collapse.
//!
//! Each judges its own effect from the state it found: the huge page's mapping (PMD or PTEs,
//! PAGEMAP_SCAN) and its folio (kpageflags) before and after, so an action that runs after
//! another one already split the PMD reports "already split" instead of "did nothing". The
//! decisions are pure functions, tested as tables at the bottom.

use super::{
    huge_page_of, madvise, moved, moved_one, mprotect_round_trip, observed, split_pmd_by_mprotect,
    vmstat_now, Ctx, Done, Error, Judged, Result,
};
use crate::addr::{Hva, HUGE_PAGE_SIZE, PAGE_SIZE};
use crate::evidence::{
    Collapse, CollapseCounters, Details, DeviceHold, FolioOutcome, HugePage, MprotectRoundtrip,
    SplitCounters, SplitFolio, SplitMethod, SplitPmd, SplitStep, Vma,
};
use crate::scenario::Action;

/// PROT_READ then PROT_READ|PROT_WRITE on the region's first page. Its own effect is the VMA
/// change, seen in /proc/self/maps: read-only between the two calls, read-write after. The PMD
/// split it causes on a PMD-mapped THP (the guest's next write is then a write fault on a pinned
/// page mapped by PTE) is recorded, not judged: an earlier action may have split it already.
pub fn mprotect_roundtrip(ctx: &Ctx) -> Result<Done> {
    let a = Action::MprotectRoundtrip;
    let (hva, _) = ctx.region();
    let huge_before = huge_page_of(a, hva)?;
    let before = vmstat_now();
    let vma_read_only = mprotect_round_trip(a, hva, true)?;
    let vma_after = observed(a, "read /proc/self/maps", super::observe::vma_at(hva))?;
    let thp_split_pmd = moved_one(&before, "thp_split_pmd");
    let huge_after = huge_page_of(a, hva)?;
    let judged = judge_mprotect(hva, vma_read_only, vma_after);
    let d = MprotectRoundtrip {
        page: hva,
        vma_read_only,
        vma_after,
        huge_before,
        huge_after,
        thp_split_pmd,
        effect: judged.effect(),
    };
    Done::judged(a, Details::MprotectRoundtrip(d), judged)
}

/// mprotect-roundtrip's check: the page's VMA was read-only between the calls and is writable
/// again after.
fn judge_mprotect(page: Hva, read_only: Option<Vma>, after: Option<Vma>) -> Judged {
    let holds = |v: &Vma| v.start <= page && page < v.end;
    match read_only {
        Some(v) if holds(&v) && v.perms.read && !v.perms.write => {}
        _ => {
            return Judged::NoEffect(
                "the page's VMA was not read-only between the two mprotect calls",
            )
        }
    }
    match after {
        Some(v) if holds(&v) && v.perms.write => Judged::Done,
        _ => Judged::Broken(
            "the page's VMA is not writable again after mprotect(PROT_READ|PROT_WRITE)",
        ),
    }
}

/// MADV_DONTNEED on one 4 KiB page of the region's huge pages, outside the region: a page of a
/// still PMD-mapped huge page if there is one, else a fresh (still present) one. On a huge page
/// already mapped by PTEs (an earlier action split it) it reports "already split".
pub fn split_pmd(ctx: &Ctx) -> Result<Done> {
    let a = Action::SplitPmd;
    let cands = beside_pages(ctx);
    let Some(&first) = cands.first() else {
        return Err(Error::Failed {
            action: a,
            why: "the region fills its huge pages: no page beside it to discard (use a smaller region or an offset)".into(),
        });
    };
    let page = pick_beside(ctx, a, &cands)?;
    let huge_before = huge_page_of(a, page.unwrap_or(first))?;
    let before = vmstat_now();
    if let Some(p) = page {
        discard(a, p)?;
    }
    let thp_split_pmd = moved_one(&before, "thp_split_pmd");
    let huge_after = huge_page_of(a, page.unwrap_or(first))?;
    let judged = judge_split_pmd(ctx.scenario.vm.thp, huge_before, huge_after);
    let d = SplitPmd {
        page,
        huge_before,
        huge_after,
        thp_split_pmd,
        effect: judged.effect(),
    };
    Done::judged(a, Details::SplitPmd(d), judged)
}

/// split-pmd's check, from the huge page before and after the discard.
fn judge_split_pmd(thp: bool, before: HugePage, after: HugePage) -> Judged {
    match (before.pmd_mapped, after.pmd_mapped) {
        (true, false) => Judged::Done,
        (true, true) => Judged::NoEffect(
            "the huge page is still PMD-mapped after MADV_DONTNEED of a page in it",
        ),
        // Mapped by PTEs before: a PTE-mapped THP (split by an earlier action) or, THP being
        // on, a huge page whose folio an earlier action split. Nothing left to split.
        (false, _) if thp => Judged::AlreadyDone,
        (false, _) => Judged::NoEffect("guest RAM is not THP-backed: there is no PMD to split"),
    }
}

/// Tries to split the compound page itself. debugfs `split_huge_pages` where writable; else a
/// partial MADV_DONTNEED (queues the folio for deferred split) and `drop_caches=2` (runs the
/// deferred-split shrinker). kpageflags says whether the region's pages are still THP: a
/// pinned folio must not be split, and the kernel counts its refusal in
/// `thp_split_page_failed`.
pub fn split_folio(ctx: &Ctx) -> Result<Done> {
    let a = Action::SplitFolio;
    let thp_before = ctx.probe().thp as u64;
    let before = vmstat_now();
    let (huge, huge_len) = ctx.region_huge_range();
    let debugfs = std::fs::OpenOptions::new()
        .write(true)
        .open("/sys/kernel/debug/split_huge_pages")
        .and_then(|mut f| {
            use std::io::Write;
            let cmd = format!(
                "{},{:#x},{:#x}",
                std::process::id(),
                huge.raw(),
                huge.raw() + huge_len
            );
            f.write_all(cmd.as_bytes())
        });
    let (method, debugfs_errno, discarded_page) = match debugfs {
        Ok(()) => (SplitMethod::Debugfs, None, None),
        Err(e) => {
            // Lockdown: debugfs is read-only (EPERM) or absent (ENOENT). Fall back.
            let cands = beside_pages(ctx);
            if cands.is_empty() {
                return Err(Error::Failed {
                    action: a,
                    why: "debugfs split_huge_pages is not usable and the region fills its huge pages, so no partial discard is possible".into(),
                });
            }
            let page = pick_beside(ctx, a, &cands)?;
            if let Some(p) = page {
                discard(a, p)?;
            }
            crate::host::trigger(std::path::Path::new("/proc/sys/vm/drop_caches"), "2").map_err(
                |e| Error::Failed {
                    action: a,
                    why: format!("drop_caches: {e}"),
                },
            )?;
            (SplitMethod::PartialDiscard, e.raw_os_error(), page)
        }
    };
    let counters = SplitCounters::from_deltas(&moved(&before, SplitCounters::NAMES));
    let probe = ctx.probe();
    let thp_after = probe.thp as u64;
    let outcome = folio_outcome(thp_before, thp_after, &counters);
    let judged = judge_split_folio(ctx.scenario.vm.thp, outcome, &counters);
    let d = SplitFolio {
        method,
        debugfs_errno,
        discarded_page,
        region_pages: probe.pfns.len(),
        region_thp_pages_before: thp_before,
        region_thp_pages: thp_after,
        folio_split: outcome == FolioOutcome::Split,
        outcome,
        device_hold: DeviceHold::of(ctx.scenario.device.pin),
        counters,
        effect: judged.effect(),
    };
    Done::judged(a, Details::SplitFolio(d), judged)
}

/// What happened to the region's folio, from its THP pages before and after and the counters.
fn folio_outcome(thp_before: u64, thp_after: u64, c: &SplitCounters) -> FolioOutcome {
    if thp_before == 0 {
        FolioOutcome::NotThp
    } else if thp_after == 0 {
        FolioOutcome::Split
    } else if c.thp_split_page_failed > 0 {
        FolioOutcome::Refused
    } else {
        FolioOutcome::Untouched
    }
}

/// split-folio's check. A refusal is an effect: the kernel was asked and said no.
fn judge_split_folio(thp: bool, outcome: FolioOutcome, c: &SplitCounters) -> Judged {
    match outcome {
        FolioOutcome::Split | FolioOutcome::Refused => Judged::Done,
        FolioOutcome::NotThp if thp => Judged::AlreadyDone,
        FolioOutcome::NotThp => {
            Judged::NoEffect("guest RAM is not THP-backed: there is no folio to split")
        }
        FolioOutcome::Untouched if c.all_zero() => {
            Judged::NoEffect("no split counter moved (thp_split_*, thp_deferred_split_page)")
        }
        FolioOutcome::Untouched => Judged::Done,
    }
}

/// MADV_COLLAPSE of the region's huge pages after a PMD split. A pinned page must not be
/// collapsed (it would be copied into a new huge page the device does not hold).
pub fn collapse(ctx: &Ctx) -> Result<Done> {
    let a = Action::Collapse;
    let before = vmstat_now();
    let cands = beside_pages(ctx);
    let page = if cands.is_empty() {
        None
    } else {
        pick_beside(ctx, a, &cands)?
    };
    let (region, _) = ctx.region();
    let huge_before = huge_page_of(a, page.unwrap_or(region))?;
    let split = match page {
        Some(p) => {
            discard(a, p)?;
            SplitStep::Discard { page: p }
        }
        None => {
            split_pmd_by_mprotect(a, region)?;
            SplitStep::MprotectRoundtrip { page: region }
        }
    };
    let (huge, len) = ctx.region_huge_range();
    // SAFETY: guest RAM's own huge pages; MADV_COLLAPSE only changes their backing.
    let rc = unsafe {
        libc::madvise(
            huge.as_ptr() as *mut libc::c_void,
            len as usize,
            libc::MADV_COLLAPSE,
        )
    };
    let collapse_errno =
        (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    let counters = CollapseCounters::from_deltas(&moved(&before, CollapseCounters::NAMES));
    let huge_after = huge_page_of(a, page.unwrap_or(region))?;
    let judged = judge_collapse(ctx.scenario.vm.thp, huge_before, rc == 0, &counters);
    let d = Collapse {
        split,
        huge_before,
        huge_after,
        collapsed: rc == 0,
        collapse_errno,
        counters,
        effect: judged.effect(),
    };
    Done::judged(a, Details::Collapse(d), judged)
}

/// collapse's check: it split a PMD-mapped huge page, or collapsed, or found the PMD already
/// split (and the collapse refused).
fn judge_collapse(thp: bool, before: HugePage, collapsed: bool, c: &CollapseCounters) -> Judged {
    if collapsed || !c.all_zero() {
        return Judged::Done;
    }
    match (before.pmd_mapped, thp) {
        (true, _) => Judged::NoEffect("nothing split and MADV_COLLAPSE failed"),
        (false, true) => Judged::AlreadyDone,
        (false, false) => {
            Judged::NoEffect("guest RAM is not THP-backed, nothing split and MADV_COLLAPSE failed")
        }
    }
}

/// The 4 KiB pages inside the region's huge pages but outside the region, in the order a
/// discard should take them: from the end of the huge pages back to the region's end, then from
/// their start up to the region's start (the layout's `beside` page first).
fn beside_pages(ctx: &Ctx) -> Vec<Hva> {
    let (huge, huge_len) = ctx.region_huge_range();
    let (region, len) = ctx.region();
    beside_offsets(huge_len, region.raw() - huge.raw(), len)
        .into_iter()
        .map(|off| Hva(huge.raw() + off))
        .collect()
}

/// [`beside_pages`] as offsets from the huge pages' start.
fn beside_offsets(huge_len: u64, region_off: u64, region_len: u64) -> Vec<u64> {
    let end = region_off + region_len;
    let after = (end / PAGE_SIZE..huge_len / PAGE_SIZE).rev();
    let before = 0..region_off / PAGE_SIZE;
    after.chain(before).map(|p| p * PAGE_SIZE).collect()
}

/// The page of `cands` to discard now: the first one in a huge page still PMD-mapped, else the
/// first one still present, else `None` (every page beside the region is already discarded).
fn pick_beside(ctx: &Ctx, action: Action, cands: &[Hva]) -> Result<Option<Hva>> {
    let (huge, huge_len) = ctx.region_huge_range();
    let present: Vec<bool> = observed(
        action,
        "pread /proc/self/pagemap",
        crate::pfn::pagemap(huge, huge_len).map_err(std::io::Error::other),
    )?
    .iter()
    .map(|p| p.state == crate::pfn::PageState::Present)
    .collect();
    let mut pmd = Vec::new();
    for i in 0..huge_len / HUGE_PAGE_SIZE {
        let h = Hva(huge.raw() + i * HUGE_PAGE_SIZE);
        pmd.push(observed(
            action,
            "PAGEMAP_SCAN",
            super::observe::pmd_mapped(h),
        )?);
    }
    let offsets: Vec<u64> = cands.iter().map(|c| c.raw() - huge.raw()).collect();
    Ok(pick(&offsets, &pmd, &present).map(|off| Hva(huge.raw() + off)))
}

/// [`pick_beside`]'s choice over offsets: `pmd[i]` says whether huge page `i` is PMD-mapped,
/// `present[j]` whether page `j` is present.
fn pick(cands: &[u64], pmd: &[bool], present: &[bool]) -> Option<u64> {
    let page = |off: u64| (off / PAGE_SIZE) as usize;
    let huge = |off: u64| (off / HUGE_PAGE_SIZE) as usize;
    cands
        .iter()
        .copied()
        .find(|&o| pmd.get(huge(o)).copied().unwrap_or(false))
        .or_else(|| {
            cands
                .iter()
                .copied()
                .find(|&o| present.get(page(o)).copied().unwrap_or(false))
        })
}

/// MADV_DONTNEED on one 4 KiB page.
fn discard(action: Action, page: Hva) -> Result<()> {
    madvise(
        action,
        page,
        PAGE_SIZE,
        libc::MADV_DONTNEED,
        "madvise(MADV_DONTNEED)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::VmaPerms;

    const MIB: u64 = 1 << 20;

    fn huge(pmd_mapped: bool, thp_pages: u64) -> HugePage {
        HugePage {
            hva: Hva(0x20_0000),
            pmd_mapped,
            present_pages: 512,
            thp_pages,
        }
    }

    /// split-pmd, cow.c style: (THP on, huge page before, after) -> judgement.
    #[test]
    fn split_pmd_judgement_table() {
        let rows = [
            // A PMD-mapped THP split by the discard: the action's own effect.
            (
                true,
                huge(true, 512),
                huge(false, 512),
                Judged::Done,
                "split here",
            ),
            // Still PMD-mapped after: a bug (or a kernel that ignored the discard) must fail.
            (
                true,
                huge(true, 512),
                huge(true, 512),
                Judged::NoEffect(
                    "the huge page is still PMD-mapped after MADV_DONTNEED of a page in it",
                ),
                "no split",
            ),
            // Storm iteration 2, or after a fork of a pinned THP: already PTE-mapped.
            (
                true,
                huge(false, 511),
                huge(false, 510),
                Judged::AlreadyDone,
                "already split",
            ),
            // Its folio split by an earlier split-folio: still nothing to split, THP on.
            (
                true,
                huge(false, 0),
                huge(false, 0),
                Judged::AlreadyDone,
                "folio gone",
            ),
            // THP off: the premise is absent, and the run must not pass as if it split.
            (
                false,
                huge(false, 0),
                huge(false, 0),
                Judged::NoEffect("guest RAM is not THP-backed: there is no PMD to split"),
                "THP off",
            ),
        ];
        for (thp, before, after, want, what) in rows {
            assert_eq!(judge_split_pmd(thp, before, after), want, "{what}");
        }
    }

    fn vma(start: u64, end: u64, write: bool) -> Option<Vma> {
        Some(Vma {
            start: Hva(start),
            end: Hva(end),
            perms: VmaPerms {
                read: true,
                write,
                exec: false,
                shared: false,
            },
        })
    }

    /// mprotect-roundtrip judges the VMA change, whatever the PMD's state: a fork that already
    /// split the PMD no longer makes it "do nothing".
    #[test]
    fn mprotect_judgement_table() {
        let page = Hva(0x7f00_0020_0000);
        let p = page.raw();
        let rows = [
            (
                vma(p, p + 4096, false),
                vma(p - MIB, p + MIB, true),
                Judged::Done,
                "read-only while protected, merged back after",
            ),
            (
                vma(p - MIB, p + MIB, true),
                vma(p - MIB, p + MIB, true),
                Judged::NoEffect("the page's VMA was not read-only between the two mprotect calls"),
                "never read-only",
            ),
            (
                vma(p + 4096, p + 8192, false),
                vma(p, p + MIB, true),
                Judged::NoEffect("the page's VMA was not read-only between the two mprotect calls"),
                "a read-only VMA that does not hold the page",
            ),
            (
                vma(p, p + 4096, false),
                vma(p, p + 4096, false),
                Judged::Broken(
                    "the page's VMA is not writable again after mprotect(PROT_READ|PROT_WRITE)",
                ),
                "protection not restored",
            ),
            (
                None,
                None,
                Judged::NoEffect("the page's VMA was not read-only between the two mprotect calls"),
                "no VMA",
            ),
        ];
        for (ro, after, want, what) in rows {
            assert_eq!(judge_mprotect(page, ro, after), want, "{what}");
        }
    }

    /// split-folio: (THP before, after, failed counter, any counter) -> outcome and judgement.
    #[test]
    fn split_folio_judgement_table() {
        let failed = SplitCounters {
            thp_split_page_failed: 1,
            thp_split_pmd: 1,
            ..Default::default()
        };
        let split = SplitCounters {
            thp_split_page: 1,
            ..Default::default()
        };
        let quiet = SplitCounters::default();
        let deferred = SplitCounters {
            thp_deferred_split_page: 1,
            ..Default::default()
        };
        let rows = [
            (
                true,
                256,
                256,
                failed,
                FolioOutcome::Refused,
                Judged::Done,
                "pinned: refused",
            ),
            (
                true,
                256,
                0,
                split,
                FolioOutcome::Split,
                Judged::Done,
                "unpinned: split",
            ),
            (
                true,
                0,
                0,
                quiet,
                FolioOutcome::NotThp,
                Judged::AlreadyDone,
                "storm iteration 2 after a split",
            ),
            (
                false,
                0,
                0,
                quiet,
                FolioOutcome::NotThp,
                Judged::NoEffect("guest RAM is not THP-backed: there is no folio to split"),
                "THP off",
            ),
            (
                true,
                256,
                256,
                quiet,
                FolioOutcome::Untouched,
                Judged::NoEffect("no split counter moved (thp_split_*, thp_deferred_split_page)"),
                "nothing happened",
            ),
            (
                true,
                256,
                256,
                deferred,
                FolioOutcome::Untouched,
                Judged::Done,
                "queued, not tried",
            ),
        ];
        for (thp, before, after, c, outcome, judged, what) in rows {
            let o = folio_outcome(before, after, &c);
            assert_eq!(o, outcome, "{what}");
            assert_eq!(judge_split_folio(thp, o, &c), judged, "{what}");
        }
    }

    /// collapse: (THP on, huge page before, collapsed, counters) -> judgement.
    #[test]
    fn collapse_judgement_table() {
        let quiet = CollapseCounters::default();
        let split = CollapseCounters {
            thp_split_pmd: 1,
            ..Default::default()
        };
        let rows = [
            (
                true,
                huge(true, 512),
                false,
                split,
                Judged::Done,
                "split, collapse refused (pinned)",
            ),
            (
                true,
                huge(false, 512),
                true,
                quiet,
                Judged::Done,
                "collapsed",
            ),
            (
                true,
                huge(false, 512),
                false,
                quiet,
                Judged::AlreadyDone,
                "already split, refused",
            ),
            (
                true,
                huge(true, 512),
                false,
                quiet,
                Judged::NoEffect("nothing split and MADV_COLLAPSE failed"),
                "nothing at all",
            ),
        ];
        for (thp, before, collapsed, c, want, what) in rows {
            assert_eq!(judge_collapse(thp, before, collapsed, &c), want, "{what}");
        }
    }

    /// The pages beside a region, in discard order; a bug would offer a region page.
    #[test]
    fn beside_offsets_table() {
        let h = HUGE_PAGE_SIZE;
        // 1 MiB at offset 0: the back half, last page first.
        let v = beside_offsets(h, 0, MIB);
        assert_eq!(v.len(), 256);
        assert_eq!(v[0], h - PAGE_SIZE);
        assert_eq!(*v.last().unwrap(), MIB);
        // 1 MiB at offset 1 MiB: the front half, first page first.
        let v = beside_offsets(h, MIB, MIB);
        assert_eq!((v.len(), v[0]), (256, 0));
        // A full huge page: nothing.
        assert!(beside_offsets(h, 0, h).is_empty());
        // Straddling: after (end of the second huge page) then before.
        let v = beside_offsets(2 * h, MIB, h);
        assert_eq!(v.len(), 512);
        assert_eq!(v[0], 2 * h - PAGE_SIZE);
        assert!(v.iter().all(|&o| !(MIB..MIB + h).contains(&o)));
    }

    /// The choice of page: a PMD-mapped huge page first, then any present page, else none.
    #[test]
    fn pick_table() {
        let h = HUGE_PAGE_SIZE;
        let cands = beside_offsets(2 * h, MIB, h);
        let all_present = vec![true; 1024];
        // Both PMD-mapped: the layout's beside page (last page of the second).
        assert_eq!(
            pick(&cands, &[true, true], &all_present),
            Some(2 * h - PAGE_SIZE)
        );
        // Only the first still PMD-mapped: a page in it, not a fresh one in the split second.
        assert_eq!(pick(&cands, &[true, false], &all_present), Some(0));
        // Neither: the first present page, skipping the discarded one.
        let mut present = all_present.clone();
        present[1023] = false;
        assert_eq!(
            pick(&cands, &[false, false], &present),
            Some(2 * h - 2 * PAGE_SIZE)
        );
        // Nothing present beside the region: none.
        let none = vec![false; 1024];
        assert_eq!(pick(&cands, &[false, false], &none), None);
    }
}
