//! mm/mremap.c: moving a range in steps, copy_vma (the new VMA linked on the anon_vma, after
//! the old one or, as the variant `mremap-dst-first`, before it) | move_page_tables, one PTE
//! (or one whole huge PMD) per step | unlink the old VMA (kept, empty, with
//! MREMAP_DONTUNMAP, 5.7). The VMM may re-point its memslot to the new address.
//!
//! Seed 003: move_ptes can carry a migration entry from src to dst; an rmap walk that visits dst
//! before src misses it (the walk already passed dst when the entry arrives), so the order of
//! the anon_vma list decides. The era's `mremap_rmap` says what the kernel does about it: nothing
//! before 3.2; anon_vma_moveto_tail puts dst after src (948f017b093a, 3.2); move_ptes takes the
//! anon_vma lock when dst may be walked first (108d6642ad81, 38a76013ad80, 3.7), so no walk
//! runs while an entry moves.

use super::super::rules::MremapRmap;
use super::super::state::{Pmd, Pte, Regs, State, Vma, SLOTS, SUBS};
use super::huge_memory::split_pmd;
use super::rmap::{av_entry, av_insert, chain_avs};
use super::vma::{vma_of, vma_remove, vmas_in};
use super::{err, lock_free, Ctx, Flow, Log, R};

#[allow(clippy::too_many_arguments)]
pub(super) fn mremap(
    s: &mut State,
    ctx: &Ctx,
    r: &mut Regs,
    (start, end, dst): (u8, u8, u8),
    dontunmap: bool,
    repoint: bool,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    let len = end - start;
    // Where copy_vma links the new VMA, and whether move_ptes must exclude rmap walks.
    let dst_first = ctx.variant.mremap_dst_first && rules.mremap_rmap != MremapRmap::MoveToTail;
    let need_rmap_locks =
        ctx.variant.mremap_dst_first && rules.mremap_rmap == MremapRmap::RmapLocks;
    match r.phase {
        0 => {
            if !lock_free(s.anon_vma_lock, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            let src = vma_of(s, 0, start, "mremap")?;
            let v = s.procs[0].vmas[src];
            if v.start != start || v.end != end {
                vmas_in(s, 0, start, end)?;
            }
            let src = vma_of(s, 0, start, "mremap")?;
            let v = s.procs[0].vmas[src];
            if (dst..dst + len).any(|sl| s.procs[0].vma_at(sl).is_some())
                || dst as usize + len as usize > SLOTS
            {
                return Err(err("mremap", "destination busy or out of range"));
            }
            let ni = s.procs[0]
                .vmas
                .iter()
                .position(|v| !v.live)
                .ok_or_else(|| err("copy_vma", "no free VMA slot"))?;
            s.procs[0].vmas[ni] = Vma {
                start: dst,
                end: dst + len,
                ..v
            };
            let src_entry = av_entry(0, src);
            for av in chain_avs(v.chain) {
                let before = dst_first.then_some(src_entry);
                av_insert(s, av, av_entry(0, ni), before)?;
            }
            r.reg = [src as u8, ni as u8, 0];
            r.phase = 1;
            log.note(|| {
                format!(
                    "mremap copy_vma: new VMA [{dst}, {}) linked on the anon_vma {} the old one{}",
                    dst + len,
                    if dst_first { "BEFORE" } else { "after" },
                    match (ctx.variant.mremap_dst_first, rules.mremap_rmap) {
                        (true, MremapRmap::MoveToTail) => {
                            " (vma_merge put it first; anon_vma_moveto_tail moved it to the tail)"
                        }
                        (true, MremapRmap::RmapLocks) => {
                            " (need_rmap_locks: move_ptes will hold the anon_vma lock)"
                        }
                        _ => "",
                    }
                )
            });
            Ok(Flow::Next)
        }
        1 => {
            let i = r.reg[2];
            let (from, to) = (start + i, dst + i);
            let (fp, tp) = (from as usize / SUBS, to as usize / SUBS);
            if !lock_free(s.ptl, ctx.tid)
                || (need_rmap_locks && !lock_free(s.anon_vma_lock, ctx.tid))
            {
                return Ok(Flow::Blocked);
            }
            if (from as usize).is_multiple_of(SUBS)
                && (to as usize).is_multiple_of(SUBS)
                && i + SUBS as u8 <= len
            {
                if let Pmd::Huge { .. } = s.procs[0].pmd[fp] {
                    if s.procs[0].pmd[tp] == Pmd::None {
                        s.procs[0].pmd[tp] = s.procs[0].pmd[fp];
                        s.procs[0].pmd[fp] = Pmd::None;
                        r.reg[2] += SUBS as u8;
                        log.note(|| {
                            format!(
                                "move_page_tables: huge PMD moved from slot {from} to slot {to}"
                            )
                        });
                        if r.reg[2] >= len {
                            r.phase = 2;
                        }
                        return Ok(Flow::Next);
                    }
                }
            }
            if let Pmd::Huge { .. } = s.procs[0].pmd[fp] {
                split_pmd(s, rules, 0, fp, log)?;
            }
            let e = s.procs[0].pte[from as usize];
            if e != Pte::None {
                if s.procs[0].pmd[tp] == Pmd::None {
                    s.procs[0].pmd[tp] = Pmd::Table;
                }
                s.procs[0].pte[to as usize] = e;
                s.procs[0].pte[from as usize] = Pte::None;
            }
            r.reg[2] += 1;
            log.note(|| {
                format!(
                    "move_ptes: slot {from} -> slot {to} ({})",
                    match e {
                        Pte::Migration { .. } => "a MIGRATION ENTRY moves",
                        Pte::Present { .. } => "a present PTE moves",
                        Pte::Swap { .. } => "a swap entry moves",
                        Pte::None => "empty",
                    }
                )
            });
            if r.reg[2] >= len {
                r.phase = 2;
            }
            Ok(Flow::Next)
        }
        _ => {
            let src = r.reg[0] as usize;
            if !dontunmap {
                if !lock_free(s.anon_vma_lock, ctx.tid) {
                    return Ok(Flow::Blocked);
                }
                vma_remove(s, 0, src);
            }
            if repoint {
                s.guest_base = dst;
            }
            log.note(|| {
                format!(
                    "mremap: {}{}",
                    if dontunmap {
                        "old VMA kept, empty (MREMAP_DONTUNMAP)"
                    } else {
                        "old VMA unlinked"
                    },
                    if repoint {
                        "; the VMM re-points the memslot to the new address"
                    } else {
                        ""
                    }
                )
            });
            Ok(Flow::Done)
        }
    }
}
