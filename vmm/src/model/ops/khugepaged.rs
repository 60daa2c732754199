//! mm/khugepaged.c: collapsing a PMD's small pages into a THP in steps, collapse_huge_page with
//! mmap_lock held: pmdp_collapse_flush detaches the PMD and flushes | __collapse_huge_page_isolate
//! checks `page_count == 1 + PageSwapCache` on every page (the era's `may_collapse`) | copy
//! into a new THP and map it by the PMD; or, as the variant `check-before-clear`, the unsafe
//! order that checks first.
//!
//! Seed 004: "At that point the pmd has been zapped (pmdp_collapse_flush already run) and like
//! for KSM case that is enough to ensure get_user_pages_fast can't succeed". khugepaged exists
//! from 2.6.38 (the era feature `khugepaged`).

use super::super::rules::ClearOrder;
use super::super::state::{Pmd, Pte, Regs, State, SUBS};
use super::rmap::anon_vma_prepare;
use super::vma::vma_of;
use super::zap::zap_pte;
use super::{err, flush_blocked, flush_note, lock_free, Ctx, Flow, Log, R};

pub(super) fn collapse(s: &mut State, ctx: &Ctx, r: &mut Regs, slot: u8, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    let pmd = slot as usize / SUBS;
    let base = (pmd * SUBS) as u8;
    let tid1 = ctx.tid as u8 + 1;
    let pages = |s: &State| -> Vec<u8> {
        let mut v: Vec<u8> = (0..SUBS)
            .filter_map(|i| s.procs[0].pte[base as usize + i].page().map(|p| p.0))
            .collect();
        v.dedup();
        v
    };
    let check = |s: &State| pages(s).into_iter().all(|f| (rules.may_collapse)(s, f));
    let order = ctx.variant.clear_order;
    match r.phase {
        0 => {
            if !lock_free(s.mmap_lock, ctx.tid) || !lock_free(s.ptl, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            if s.procs[0].pmd[pmd] != Pmd::Table
                || (0..SUBS).any(|i| {
                    !matches!(
                        s.procs[0].pte[base as usize + i],
                        Pte::Present { .. } | Pte::None
                    )
                })
            {
                log.note(|| {
                    format!("collapse: PMD {pmd} is not a table of present pages: nothing to do")
                });
                return Ok(Flow::Done);
            }
            match order {
                ClearOrder::ClearThenCheck => {
                    if flush_blocked(s, ctx) {
                        return Ok(Flow::Blocked);
                    }
                    s.mmap_lock = tid1;
                    s.procs[0].pmd[pmd] = Pmd::Detached;
                    log.note(|| format!("khugepaged: mmap_lock taken, pmdp_collapse_flush detaches PMD {pmd} ({})", flush_note(ctx)));
                }
                ClearOrder::CheckBeforeClear => {
                    s.mmap_lock = tid1;
                    if !check(s) {
                        s.mmap_lock = 0;
                        log.note(|| {
                            "khugepaged (check first): page_count check fails -> no collapse"
                                .to_string()
                        });
                        return Ok(Flow::Done);
                    }
                    log.note(|| "khugepaged (check BEFORE clear): page_count == 1 + swapcache for every page, PMD still mapped".to_string());
                }
            }
            r.phase = 1;
            Ok(Flow::Next)
        }
        1 => {
            match order {
                ClearOrder::ClearThenCheck => {
                    if !check(s) {
                        s.procs[0].pmd[pmd] = Pmd::Table;
                        s.mmap_lock = 0;
                        log.note(|| "khugepaged __collapse_huge_page_isolate: page_count != 1 + PageSwapCache -> SCAN_PAGE_COUNT, PMD restored".to_string());
                        return Ok(Flow::Done);
                    }
                    log.note(|| "khugepaged: count check passes on every page".to_string());
                }
                ClearOrder::CheckBeforeClear => {
                    if flush_blocked(s, ctx) {
                        return Ok(Flow::Blocked);
                    }
                    s.procs[0].pmd[pmd] = Pmd::Detached;
                    log.note(|| {
                        format!(
                            "khugepaged: pmdp_collapse_flush detaches PMD {pmd} (after the check)"
                        )
                    });
                }
            }
            r.phase = 2;
            Ok(Flow::Next)
        }
        _ => {
            let vi = vma_of(s, 0, base, "collapse_huge_page")?;
            let av = anon_vma_prepare(s, 0, vi)?;
            let n = s
                .alloc_folio(SUBS as u8, av)
                .ok_or_else(|| err("collapse_huge_page", "no free folio"))?;
            for i in 0..SUBS {
                let e = s.procs[0].pte[base as usize + i];
                let version = e
                    .page()
                    .map(|(f, sub)| s.folio(f).subs[sub as usize].version)
                    .unwrap_or(0);
                s.folio_mut(n).subs[i].version = version;
                s.folio_mut(n).subs[i].exclusive = rules.features.anon_exclusive;
                zap_pte(s, 0, base + i as u8);
            }
            s.folio_mut(n).cmap = 1;
            s.folio_mut(n).refcount = 1;
            let write = s.procs[0].vmas[vi].write;
            s.procs[0].pmd[pmd] = Pmd::Huge {
                folio: n,
                write,
                uffd: false,
            };
            s.mmap_lock = 0;
            log.note(|| format!("khugepaged: contents copied into new THP #{n}, mapped by PMD {pmd}; old pages unmapped"));
            Ok(Flow::Done)
        }
    }
}
