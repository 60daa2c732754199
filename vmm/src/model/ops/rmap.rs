//! mm/rmap.c: anon_vmas and their chains (anon_vma_prepare, anon_vma_chain_link, the ordered
//! VMA list an rmap walk visits), the PTE mapping primitive (set_pte_at with
//! page_add_anon_rmap: mapcount and refcount), and try_to_unmap for reclaim as each era orders
//! its check and its unmap.
//!
//! Seeds and commits: seed 000 (KOSAKI's `try_to_unmap_one` hunk: the swapcache count check
//! before `ptep_clear_flush`, and Nick Piggin's gup_fast objection); 5.19+ `try_to_unmap_one`
//! clears and flushes, then `folio_try_share_anon_rmap_pte` refuses a possibly pinned exclusive
//! page (6c287605fd56, PG_anon_exclusive). The anon_vma list order is what seed 003's mremap
//! race turns on (`mremap` inserts before or after the source VMA).

use super::super::rules::UnmapRule;
use super::super::state::{Pmd, Pte, Regs, State, NONE, PROCS, SLOTS, SUBS};
use super::{err, flush_blocked, flush_note, lock_free, page_desc, Ctx, Flow, Log, R};

pub(super) fn av_entry(proc: u8, vma: usize) -> u8 {
    (proc << 4) | vma as u8
}

pub(super) fn av_insert(s: &mut State, av: u8, entry: u8, before: Option<u8>) -> R<()> {
    let a = &mut s.anon_vmas[av as usize];
    if a.entries().contains(&entry) {
        return Ok(());
    }
    if a.len as usize >= a.list.len() {
        return Err(err("anon_vma_chain_link", "anon_vma list full"));
    }
    let pos = before
        .and_then(|b| a.entries().iter().position(|&e| e == b))
        .unwrap_or(a.len as usize);
    let len = a.len as usize;
    a.list.copy_within(pos..len, pos + 1);
    a.list[pos] = entry;
    a.len += 1;
    Ok(())
}

pub(super) fn av_remove(s: &mut State, av: u8, entry: u8) {
    let a = &mut s.anon_vmas[av as usize];
    if let Some(pos) = a.entries().iter().position(|&e| e == entry) {
        let len = a.len as usize;
        a.list.copy_within(pos + 1..len, pos);
        a.len -= 1;
        a.list[a.len as usize] = 0;
    }
}

pub(super) fn chain_avs(chain: u8) -> impl Iterator<Item = u8> {
    (0..8u8).filter(move |i| chain & (1 << i) != 0)
}

/// anon_vma_prepare: the VMA's own anon_vma, created on the first fault.
pub(super) fn anon_vma_prepare(s: &mut State, proc: u8, vi: usize) -> R<u8> {
    let v = s.procs[proc as usize].vmas[vi];
    if v.anon_vma != NONE {
        return Ok(v.anon_vma);
    }
    let av = s
        .alloc_anon_vma()
        .ok_or_else(|| err("anon_vma_prepare", "no free anon_vma"))?;
    let vma = &mut s.procs[proc as usize].vmas[vi];
    vma.anon_vma = av;
    vma.chain |= 1 << av;
    av_insert(s, av, av_entry(proc, vi), None)?;
    Ok(av)
}

pub(super) fn map_pte(s: &mut State, proc: u8, slot: u8, folio: u8, sub: u8, write: bool) {
    let p = &mut s.procs[proc as usize];
    if p.pmd[slot as usize / SUBS] == Pmd::None {
        p.pmd[slot as usize / SUBS] = Pmd::Table;
    }
    p.pte[slot as usize] = Pte::Present {
        folio,
        sub,
        write,
        uffd: false,
    };
    let f = s.folio_mut(folio);
    f.subs[sub as usize].mapcount += 1;
    f.refcount += 1;
}

/// Replaces every PTE mapping `f` with a swap entry (the unmap half of try_to_unmap).
pub(super) fn unmap_to_swap(s: &mut State, f: u8) {
    for p in 0..PROCS {
        for slot in 0..SLOTS {
            if let Pte::Present { folio, sub, .. } = s.procs[p].pte[slot] {
                if folio == f {
                    let excl = s.folio(f).subs[sub as usize].exclusive;
                    s.procs[p].pte[slot] = Pte::Swap {
                        folio,
                        sub,
                        exclusive: excl,
                    };
                    let fo = s.folio_mut(f);
                    fo.subs[sub as usize].mapcount -= 1;
                    fo.subs[sub as usize].exclusive = false;
                    s.put(f, 1);
                }
            }
        }
    }
}

/// try_to_unmap for reclaim, as the era orders its check and its unmap.
pub(super) fn try_to_unmap(
    s: &mut State,
    ctx: &Ctx,
    r: &mut Regs,
    slot: u8,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    let f = if r.phase == 0 {
        match s.mapped_page(0, slot) {
            Some((f, _)) => f,
            None => return Ok(Flow::Done),
        }
    } else {
        r.reg[0]
    };
    match (rules.unmap, r.phase) {
        (UnmapRule::Always, _) | (UnmapRule::CountThenUnmap, 1) => {
            if flush_blocked(s, ctx) {
                return Ok(Flow::Blocked);
            }
            let before = if log.on {
                page_desc(s, f, 0)
            } else {
                String::new()
            };
            unmap_to_swap(s, f);
            log.note(|| {
                format!(
                    "try_to_unmap: ptep_clear_flush ({}) and install swap entries for {before}",
                    flush_note(ctx)
                )
            });
            Ok(Flow::Done)
        }
        (UnmapRule::CountThenUnmap, _) => {
            let fo = *s.folio(f);
            if fo.swapcache && fo.extra_refs() != 0 {
                log.note(|| format!("try_to_unmap (KOSAKI): page_count {} != page_mapcount {} + 2 -> SWAP_FAIL, page stays mapped", fo.refcount + 1, fo.subs[0].mapcount));
                return Ok(Flow::Done);
            }
            r.reg[0] = f;
            r.phase = 1;
            log.note(|| format!("try_to_unmap (KOSAKI): page_count {} == page_mapcount {} + 2 -> OK to unmap (no GUP reference yet)", fo.refcount + 1, fo.subs[0].mapcount));
            Ok(Flow::Next)
        }
        (UnmapRule::ClearThenShare, _) => {
            // ptep_clear_flush, then folio_try_share_anon_rmap_pte, under the PT lock: one step,
            // since gup_fast sees a cleared PTE and the slow path waits for the lock.
            if flush_blocked(s, ctx) || !lock_free(s.ptl, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            let fo = *s.folio(f);
            if fo.subs[0].exclusive && (rules.maybe_pinned)(&fo) {
                log.note(|| format!("try_to_unmap: clear+flush, then folio_try_share_anon_rmap_pte fails on {} (maybe pinned) -> PTE restored, abort", page_desc(s, f, 0)));
                return Ok(Flow::Done);
            }
            unmap_to_swap(s, f);
            log.note(|| {
                format!(
                    "try_to_unmap: clear+flush, share check passes -> swap entries for page #{f}"
                )
            });
            Ok(Flow::Done)
        }
    }
}
