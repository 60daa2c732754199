//! mm/ksm.c: merging one page in steps, try_to_merge_one_page (a THP is split first) ->
//! write_protect_page (clear the PTE and flush | check `mapcount + 1 + swapped ==
//! page_count`, the era's `may_merge`) -> replace_page (map the KSM page read-only), or, as
//! the variant `check-before-clear`, the unsafe order that checks before it clears.
//!
//! Seed 004: "we clear the pte and flush the tlb before the check": the flush IPI cannot
//! complete while gup_fast runs with interrupts off, so no reference can appear after the
//! check; checking first lets gup_fast take one in between. 5.19+ write_protect_page also
//! refuses an exclusive, maybe-pinned page (`folio_try_share_anon_rmap_pte`).

use super::super::rules::ClearOrder;
use super::super::state::{Lookup, Pte, Regs, State, NONE};
use super::huge_memory::split_folio_now;
use super::rmap::map_pte;
use super::{err, flush_blocked, flush_note, lock_free, page_desc, Ctx, Flow, Log, R};

pub(super) fn ksm(s: &mut State, ctx: &Ctx, r: &mut Regs, slot: u8, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    let order = ctx.variant.clear_order;
    let tid1 = ctx.tid as u8 + 1;
    let clear = |s: &mut State, r: &mut Regs| {
        if let Pte::Present {
            folio, sub, write, ..
        } = s.procs[0].pte[slot as usize]
        {
            r.reg = [folio, sub, write as u8];
            s.procs[0].pte[slot as usize] = Pte::None;
        }
    };
    let restore = |s: &mut State, r: &Regs| {
        s.procs[0].pte[slot as usize] = Pte::Present {
            folio: r.reg[0],
            sub: r.reg[1],
            write: r.reg[2] != 0,
            uffd: false,
        };
    };
    match r.phase {
        0 => {
            if !lock_free(s.ptl, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            if let Some((f, _)) = s.mapped_page(0, slot) {
                if s.folio(f).large() {
                    // try_to_merge_one_page: a THP is split first.
                    if !(rules.may_split)(s, f) {
                        log.note(|| {
                            format!(
                                "ksm: split_huge_page of {} refused: not merged",
                                page_desc(s, f, 0)
                            )
                        });
                        return Ok(Flow::Done);
                    }
                    split_folio_now(s, rules, f, log)?;
                }
            }
            let Some((f, sub)) = (match s.lookup(0, slot) {
                Lookup::Pte(Pte::Present { folio, sub, .. }) => Some((folio, sub)),
                _ => None,
            }) else {
                return Ok(Flow::Done);
            };
            match order {
                ClearOrder::ClearThenCheck => {
                    if flush_blocked(s, ctx) {
                        return Ok(Flow::Blocked);
                    }
                    s.ptl = tid1;
                    clear(s, r);
                    log.note(|| {
                        format!(
                            "ksm write_protect_page: ptep_clear_flush on slot {slot} ({}); {}",
                            page_desc(s, f, sub),
                            flush_note(ctx)
                        )
                    });
                }
                ClearOrder::CheckBeforeClear => {
                    s.ptl = tid1;
                    r.reg = [f, sub, 0];
                    if !(rules.may_merge)(s, f, sub) {
                        s.ptl = 0;
                        log.note(|| {
                            format!(
                                "ksm (check first): {}: count check fails -> not merged",
                                page_desc(s, f, sub)
                            )
                        });
                        return Ok(Flow::Done);
                    }
                    log.note(|| {
                        format!(
                            "ksm (check BEFORE clear): {}: count check passes, PTE still present",
                            page_desc(s, f, sub)
                        )
                    });
                }
            }
            r.phase = 1;
            Ok(Flow::Next)
        }
        1 => {
            let (f, sub) = (r.reg[0], r.reg[1]);
            match order {
                ClearOrder::ClearThenCheck => {
                    if !(rules.may_merge)(s, f, sub) {
                        restore(s, r);
                        s.ptl = 0;
                        log.note(|| format!("ksm: mapcount + 1 + swapped != page_count for {} -> PTE restored, not merged", page_desc(s, f, sub)));
                        return Ok(Flow::Done);
                    }
                    log.note(|| format!("ksm: count check passes on {}", page_desc(s, f, sub)));
                }
                ClearOrder::CheckBeforeClear => {
                    if flush_blocked(s, ctx) {
                        return Ok(Flow::Blocked);
                    }
                    clear(s, r);
                    log.note(|| format!("ksm: ptep_clear_flush on slot {slot} (after the check)"));
                }
            }
            r.phase = 2;
            Ok(Flow::Next)
        }
        _ => {
            let (f, sub) = (r.reg[0], r.reg[1]);
            let version = s.folio(f).subs[sub as usize].version;
            let k = s
                .alloc_folio(1, NONE)
                .ok_or_else(|| err("replace_page", "no free folio"))?;
            s.folio_mut(k).ksm = true;
            s.folio_mut(k).subs[0].version = version;
            map_pte(s, 0, slot, k, 0, false);
            s.folio_mut(f).subs[sub as usize].mapcount -= 1;
            s.put(f, 1);
            s.ptl = 0;
            log.note(|| format!("ksm replace_page: slot {slot} now maps KSM page #{k} read-only; old page #{f} refcount {}", if s.folio(f).live { s.folio(f).refcount } else { 0 }));
            Ok(Flow::Done)
        }
    }
}
