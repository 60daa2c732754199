//! mm/memory.c, the fault half: handle_mm_fault for one slot, do_anonymous_page, do_swap_page
//! (a write fault may reuse the swapcache page) and do_wp_page (reuse or copy, the era's
//! `wp_pte` rule). A huge PMD's write fault goes to `huge_memory::do_huge_pmd_wp_page`, a
//! uffd-wp marker first to the userfaultfd handler.
//!
//! Seeds and commits: seed 000 (2.6.29's `reuse_swap_page` mapcount rule and KOSAKI's count
//! rule), seed 002 (4.5's PTE-mapped THP subpage is always copied; Andrea's
//! `page_move_anon_rmap` of the whole compound page, 4.6's 6d0a07edd17c), 5.9's 09854ba94c6a
//! (`page_count == 1`), 5.19's PG_anon_exclusive (6c287605fd56). The rules themselves are in
//! `era.rs`; this file only applies the decision.

use super::super::rules::{Rules, Wp};
use super::super::state::{Lookup, Pmd, Pte, State, SUBS};
use super::huge_memory::{do_huge_pmd_wp_page, PmdFault};
use super::rmap::{anon_vma_prepare, map_pte};
use super::userfaultfd::uffd_resolve;
use super::vma::vma_of;
use super::{err, page_desc, Ctx, Flow, Log, R};

/// A new anonymous page for a fault or a copy (AnonExclusive on 5.19+).
pub(super) fn new_page(s: &mut State, rules: &Rules, proc: u8, vi: usize, version: u8) -> R<u8> {
    let av = anon_vma_prepare(s, proc, vi)?;
    let f = s
        .alloc_folio(1, av)
        .ok_or_else(|| err("alloc_page", "no free folio"))?;
    let fo = s.folio_mut(f);
    fo.subs[0].version = version;
    fo.subs[0].exclusive = rules.features.anon_exclusive;
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// Faults.

/// handle_mm_fault for one slot. Returns `Blocked` on a migration entry or a detached table.
pub(super) fn fault(
    s: &mut State,
    ctx: &Ctx,
    proc: u8,
    slot: u8,
    write: bool,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    let vi = vma_of(s, proc, slot, "handle_mm_fault")?;
    let vma = s.procs[proc as usize].vmas[vi];
    if write && !vma.write {
        return Err(err(
            "handle_mm_fault",
            format!("write to read-only slot {slot} (SIGSEGV)"),
        ));
    }
    if s.procs[proc as usize].pmd[slot as usize / SUBS] == Pmd::Detached {
        return Ok(Flow::Blocked);
    }
    match s.lookup(proc, slot) {
        Lookup::None | Lookup::Pte(Pte::None) => {
            let f = new_page(s, rules, proc, vi, 0)?;
            map_pte(s, proc, slot, f, 0, vma.write);
            log.note(|| {
                format!("P{proc} fault at slot {slot}: do_anonymous_page maps new page #{f}")
            });
            Ok(Flow::Done)
        }
        Lookup::Huge {
            folio,
            write: w,
            uffd,
            ..
        } => {
            if !write || w {
                return Ok(Flow::Done);
            }
            let pmd = slot as usize / SUBS;
            if uffd {
                uffd_resolve(s, ctx, proc, slot, log);
                if matches!(
                    s.procs[proc as usize].pmd[pmd],
                    Pmd::Huge { write: true, .. }
                ) {
                    return Ok(Flow::Done);
                }
            }
            match do_huge_pmd_wp_page(s, rules, (proc, vi, pmd), folio, log)? {
                PmdFault::Handled => Ok(Flow::Done),
                PmdFault::Fallback => wp_pte(s, ctx, proc, slot, vi, log),
            }
        }
        Lookup::Pte(Pte::Present { write: w, uffd, .. }) => {
            if !write || w {
                return Ok(Flow::Done);
            }
            if uffd {
                uffd_resolve(s, ctx, proc, slot, log);
                if matches!(
                    s.procs[proc as usize].pte[slot as usize],
                    Pte::Present { write: true, .. }
                ) {
                    return Ok(Flow::Done);
                }
            }
            wp_pte(s, ctx, proc, slot, vi, log)
        }
        Lookup::Pte(Pte::Swap {
            folio,
            sub,
            exclusive,
        }) => {
            // do_swap_page: the page is still in the swapcache; map it back.
            s.procs[proc as usize].pte[slot as usize] = Pte::None;
            map_pte(s, proc, slot, folio, sub, false);
            s.folio_mut(folio).subs[sub as usize].exclusive = exclusive;
            log.note(|| {
                format!(
                    "P{proc} fault at slot {slot}: do_swap_page maps back {}",
                    page_desc(s, folio, sub)
                )
            });
            if write {
                if (rules.swapin_reuse)(s, folio, sub, exclusive) {
                    if let Pte::Present { write, .. } =
                        &mut s.procs[proc as usize].pte[slot as usize]
                    {
                        *write = true;
                    }
                    if rules.features.anon_exclusive {
                        s.folio_mut(folio).subs[sub as usize].exclusive = true;
                    }
                    log.note(|| format!("{}: do_swap_page reuses it writable", rules.name));
                    Ok(Flow::Done)
                } else {
                    log.note(|| {
                        format!(
                            "{}: do_swap_page may not reuse it -> write fault",
                            rules.name
                        )
                    });
                    wp_pte(s, ctx, proc, slot, vi, log)
                }
            } else {
                Ok(Flow::Done)
            }
        }
        Lookup::Pte(Pte::Migration { .. }) => Ok(Flow::Blocked),
    }
}

/// do_wp_page on an anonymous PTE: the era's reuse-or-copy rule.
fn wp_pte(s: &mut State, ctx: &Ctx, proc: u8, slot: u8, vi: usize, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    let Pte::Present { folio, sub, .. } = s.procs[proc as usize].pte[slot as usize] else {
        return Err(err("do_wp_page", "no present PTE"));
    };
    let before = if log.on {
        page_desc(s, folio, sub)
    } else {
        String::new()
    };
    match (rules.wp_pte)(s, folio, sub) {
        Wp::Reuse {
            move_anon_vma,
            set_exclusive,
            free_swapcache,
        } => {
            if free_swapcache && s.folio(folio).swapcache {
                s.folio_mut(folio).swapcache = false;
                s.put(folio, 1);
            }
            if let Pte::Present { write, .. } = &mut s.procs[proc as usize].pte[slot as usize] {
                *write = true;
            }
            if set_exclusive {
                s.folio_mut(folio).subs[sub as usize].exclusive = true;
            }
            let mut moved = String::new();
            if move_anon_vma {
                let av = anon_vma_prepare(s, proc, vi)?;
                if s.folio(folio).anon_vma != av {
                    s.folio_mut(folio).anon_vma = av;
                    if log.on {
                        moved = format!("; page_move_anon_rmap moves the whole folio #{folio} to P{proc}'s anon_vma {av}");
                    }
                }
            }
            log.note(|| format!("P{proc} write fault at slot {slot} on {before}: {} do_wp_page REUSES it{moved}", rules.name));
            Ok(Flow::Done)
        }
        Wp::Copy => {
            let version = s.folio(folio).subs[sub as usize].version;
            let n = new_page(s, rules, proc, vi, version)?;
            s.procs[proc as usize].pte[slot as usize] = Pte::None;
            s.folio_mut(folio).subs[sub as usize].mapcount -= 1;
            s.put(folio, 1);
            map_pte(s, proc, slot, n, 0, true);
            log.note(|| format!("P{proc} write fault at slot {slot} on {before}: {} do_wp_page COPIES it to new page #{n}", rules.name));
            Ok(Flow::Done)
        }
    }
}
