//! mm/huge_memory.c: the huge-PMD paths. __split_huge_pmd (a PMD becomes a table of PTEs on
//! the same compound page, 4.5+), split_huge_page (the compound page becomes small pages, as
//! the era allows), the old refcounting's split_huge_page_pmd (4.4: page and PMD split
//! together), zap_huge_pmd, do_huge_pmd_anonymous_page, do_huge_pmd_wp_page, and the splits of
//! PMDs a range covers only in part (vma_adjust_trans_huge).
//!
//! Seeds and commits: seed 002 (4.5's `do_huge_pmd_wp_page` with `page_mapcount == 1 &&
//! page_count == 1`, Kirill's THP refcount redesign that left PTE-mapped THPs, Andrea's
//! `page_trans_huge_mapcount`); 5.18+ `do_huge_pmd_wp_page` splits a PMD it may not reuse and
//! falls back to the PTE level (COW fixes part 1, per kernel-eras.md; `era.rs` wp_pmd_519);
//! split_huge_page refuses a folio with extra references from 4.5 (`can_split_huge_page`).

use super::super::rules::{Rules, WpPmd};
use super::super::state::{HoldKind, Pmd, Pte, State, PMDS, PROCS, SUBS};
use super::rmap::anon_vma_prepare;
use super::{err, page_desc, Ctx, Flow, Log, R};

/// Zaps a huge PMD (zap_huge_pmd).
pub(super) fn zap_pmd(s: &mut State, proc: u8, pmd: usize) {
    if let Pmd::Huge { folio, .. } = s.procs[proc as usize].pmd[pmd] {
        s.procs[proc as usize].pmd[pmd] = Pmd::None;
        s.folio_mut(folio).cmap -= 1;
        s.put(folio, 1);
    }
}

/// __split_huge_pmd on a PTE-mapped-THP kernel (4.5+): the PMD becomes a table of PTEs mapping
/// the same compound page; each PTE mapping holds a reference (`page_ref_add(page,
/// HPAGE_PMD_NR - 1)`); the write and uffd-wp bits and AnonExclusive are kept per PTE.
pub(super) fn split_pmd_ptes(s: &mut State, proc: u8, pmd: usize) {
    let Pmd::Huge { folio, write, uffd } = s.procs[proc as usize].pmd[pmd] else {
        return;
    };
    let p = &mut s.procs[proc as usize];
    p.pmd[pmd] = Pmd::Table;
    for i in 0..SUBS {
        p.pte[pmd * SUBS + i] = Pte::Present {
            folio,
            sub: i as u8,
            write,
            uffd,
        };
    }
    let f = s.folio_mut(folio);
    f.cmap -= 1;
    for i in 0..SUBS {
        f.subs[i].mapcount += 1;
    }
    f.refcount += SUBS as u16 - 1;
}

/// PMD split as the era does it: 4.5+ leaves a PTE-mapped THP; 4.4 (split_huge_page_pmd)
/// splits the page itself, always successfully.
pub(super) fn split_pmd(
    s: &mut State,
    rules: &Rules,
    proc: u8,
    pmd: usize,
    log: &mut Log,
) -> R<()> {
    let Pmd::Huge { folio, .. } = s.procs[proc as usize].pmd[pmd] else {
        return Ok(());
    };
    if rules.features.pte_mapped_thp {
        split_pmd_ptes(s, proc, pmd);
        log.note(|| format!("split_huge_pmd: PMD {pmd} of P{proc} -> {SUBS} PTEs mapping THP #{folio} (refcount {})", s.folio(folio).refcount));
        Ok(())
    } else {
        log.note(|| {
            format!("split_huge_page_pmd (old THP refcounting): splits THP #{folio} itself")
        });
        split_folio_now(s, rules, folio, log)
    }
}

/// split_huge_page once allowed: every PMD mapping becomes PTEs, then each subpage becomes a
/// small folio carrying its own mapcount, holders and AnonExclusive bit.
pub(super) fn split_folio_now(s: &mut State, rules: &Rules, folio: u8, log: &mut Log) -> R<()> {
    for p in 0..PROCS as u8 {
        for pmd in 0..PMDS {
            if matches!(s.procs[p as usize].pmd[pmd], Pmd::Huge { folio: f, .. } if f == folio) {
                split_pmd_ptes(s, p, pmd);
            }
        }
    }
    let old = *s.folio(folio);
    let mut ids = [folio; SUBS];
    for (i, id) in ids.iter_mut().enumerate().skip(1) {
        *id = s
            .alloc_folio(1, old.anon_vma)
            .ok_or_else(|| err("split_huge_page", "no free folio"))?;
        let _ = i;
    }
    for (i, &id) in ids.iter().enumerate() {
        let sub = old.subs[i];
        let holders: Vec<(HoldKind, u16)> = s
            .holders
            .iter()
            .filter(|h| h.live && h.folio == folio && h.sub == i as u8)
            .map(|h| (h.kind, h.count))
            .collect();
        let mut refcount = sub.mapcount as u16 + old.swapcache as u16;
        for (kind, count) in holders {
            refcount += rules.hold_refs(false, kind, count).0;
        }
        let f = s.folio_mut(id);
        f.live = true;
        f.nr = 1;
        f.refcount = refcount;
        f.pincount = 0;
        f.cmap = 0;
        f.swapcache = old.swapcache;
        f.ksm = false;
        f.anon_vma = old.anon_vma;
        f.subs = Default::default();
        f.subs[0] = sub;
    }
    for p in 0..PROCS {
        for e in s.procs[p].pte.iter_mut() {
            match e {
                Pte::Present { folio: f, sub, .. }
                | Pte::Swap { folio: f, sub, .. }
                | Pte::Migration { folio: f, sub, .. }
                    if *f == folio =>
                {
                    *f = ids[*sub as usize];
                    *sub = 0;
                }
                _ => {}
            }
        }
    }
    for h in s.holders.iter_mut() {
        if h.live && h.folio == folio {
            h.folio = ids[h.sub as usize];
            h.sub = 0;
        }
    }
    log.note(|| format!("split_huge_page: THP #{folio} -> small pages {ids:?}"));
    Ok(())
}

/// Splits huge PMDs that `[start, end)` covers only in part.
pub(super) fn split_partial_pmds(
    s: &mut State,
    rules: &Rules,
    proc: u8,
    start: u8,
    end: u8,
    log: &mut Log,
) -> R<()> {
    for pmd in 0..PMDS {
        let (ps, pe) = ((pmd * SUBS) as u8, ((pmd + 1) * SUBS) as u8);
        let overlaps = start < pe && end > ps;
        let whole = start <= ps && end >= pe;
        if overlaps && !whole && matches!(s.procs[proc as usize].pmd[pmd], Pmd::Huge { .. }) {
            split_pmd(s, rules, proc, pmd, log)?;
        }
    }
    Ok(())
}

pub(super) fn split_folio_op(s: &mut State, ctx: &Ctx, slot: u8, log: &mut Log) -> R<Flow> {
    let Some((f, _)) = s.mapped_page(0, slot) else {
        return Ok(Flow::Done);
    };
    if !s.folio(f).large() {
        log.note(|| {
            format!("split_huge_page: page #{f} at slot {slot} is not a THP; nothing to split")
        });
        return Ok(Flow::Done);
    }
    if (ctx.rules.may_split)(s, f) {
        split_folio_now(s, ctx.rules, f, log)?;
    } else {
        log.note(|| {
            format!(
                "split_huge_page on {}: {} refuses (extra references: -EBUSY)",
                page_desc(s, f, 0),
                ctx.rules.name
            )
        });
    }
    Ok(Flow::Done)
}

/// What do_huge_pmd_wp_page left to its caller: the fault is handled, or (5.18+) the PMD was
/// split and the fault falls back to the PTE level (`VM_FAULT_FALLBACK`).
pub(super) enum PmdFault {
    Handled,
    Fallback,
}

/// mm/huge_memory.c do_huge_pmd_wp_page: a write fault on the write-protected huge PMD `pmd`
/// of process `proc`, mapping THP `folio`; the era's `wp_pmd` rule decides reuse, copy or
/// split-and-fall-back.
pub(super) fn do_huge_pmd_wp_page(
    s: &mut State,
    rules: &Rules,
    (proc, vi, pmd): (u8, usize, usize),
    folio: u8,
    log: &mut Log,
) -> R<PmdFault> {
    match (rules.wp_pmd)(s, folio) {
        WpPmd::Reuse { set_exclusive } => {
            if let Pmd::Huge { write, .. } = &mut s.procs[proc as usize].pmd[pmd] {
                *write = true;
            }
            if set_exclusive {
                for sub in s.folio_mut(folio).subs.iter_mut() {
                    sub.exclusive = true;
                }
            }
            log.note(|| format!("P{proc} write fault on huge PMD {pmd}: {} do_huge_pmd_wp_page reuses THP #{folio}", rules.name));
            Ok(PmdFault::Handled)
        }
        WpPmd::CopyHuge => {
            let av = anon_vma_prepare(s, proc, vi)?;
            let n = s
                .alloc_folio(SUBS as u8, av)
                .ok_or_else(|| err("do_huge_pmd_wp_page", "no free folio"))?;
            let old = *s.folio(folio);
            let nf = s.folio_mut(n);
            for i in 0..SUBS {
                nf.subs[i].version = old.subs[i].version;
                nf.subs[i].exclusive = rules.features.anon_exclusive;
            }
            nf.cmap = 1;
            nf.refcount = 1;
            s.procs[proc as usize].pmd[pmd] = Pmd::Huge {
                folio: n,
                write: true,
                uffd: false,
            };
            s.folio_mut(folio).cmap -= 1;
            s.put(folio, 1);
            log.note(|| format!("P{proc} write fault on huge PMD {pmd}: {} do_huge_pmd_wp_page copies THP #{folio} to new THP #{n}", rules.name));
            Ok(PmdFault::Handled)
        }
        WpPmd::SplitThenPte => {
            log.note(|| format!("P{proc} write fault on huge PMD {pmd}: {} do_huge_pmd_wp_page: THP #{folio} not exclusive, refcount {} -> split PMD, fault at PTE level", rules.name, s.folio(folio).refcount));
            split_pmd_ptes(s, proc, pmd);
            Ok(PmdFault::Fallback)
        }
    }
}

/// mm/huge_memory.c do_huge_pmd_anonymous_page: a new THP mapped by the huge PMD that holds
/// `slot` of the VMM's VMA `vi`, writable (AnonExclusive on 5.19+).
pub(super) fn do_huge_pmd_anonymous_page(
    s: &mut State,
    rules: &Rules,
    vi: usize,
    slot: u8,
) -> R<()> {
    let av = anon_vma_prepare(s, 0, vi)?;
    let f = s
        .alloc_folio(SUBS as u8, av)
        .ok_or_else(|| err("do_huge_pmd_anonymous_page", "no free folio"))?;
    let fo = s.folio_mut(f);
    fo.cmap = 1;
    fo.refcount = 1;
    for sub in fo.subs.iter_mut() {
        sub.exclusive = rules.features.anon_exclusive;
    }
    s.procs[0].pmd[slot as usize / SUBS] = Pmd::Huge {
        folio: f,
        write: true,
        uffd: false,
    };
    Ok(())
}
