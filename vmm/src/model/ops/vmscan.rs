//! Reclaim: add_to_swap (mm/swap_state.c: the page enters the swapcache, one reference) and
//! MADV_PAGEOUT over a range in one step (mm/madvise.c -> mm/vmscan.c reclaim_pages /
//! shrink_folio_list: split a THP if it may be split, add to swap, try_to_unmap as the era
//! decides). The model never evicts: an unmapped page stays in the swapcache (a swap entry
//! points at it), which is what a page with GUP references does. Seed 000's race is the stepped
//! `try-to-unmap` in `rmap`.

use super::super::rules::UnmapRule;
use super::super::state::State;
use super::huge_memory::split_folio_now;
use super::rmap::unmap_to_swap;
use super::{err, page_desc, Ctx, Flow, Log, R};

pub(super) fn swapout(s: &mut State, slot: u8, log: &mut Log) -> R<Flow> {
    let (f, _) = s
        .mapped_page(0, slot)
        .ok_or_else(|| err("add_to_swap", format!("nothing mapped at slot {slot}")))?;
    if !s.folio(f).swapcache {
        let fo = s.folio_mut(f);
        fo.swapcache = true;
        fo.refcount += 1;
    }
    log.note(|| {
        format!(
            "add_to_swap: page #{f} enters the swapcache (refcount {})",
            s.folio(f).refcount
        )
    });
    Ok(Flow::Done)
}

/// MADV_PAGEOUT over a range, in one step.
pub(super) fn pageout(s: &mut State, ctx: &Ctx, start: u8, end: u8, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    let mut seen = Vec::new();
    for slot in start..end {
        let Some((f, _)) = s.mapped_page(0, slot) else {
            continue;
        };
        if seen.contains(&f) {
            continue;
        }
        seen.push(f);
        if s.folio(f).large() {
            if !(rules.may_split)(s, f) {
                log.note(|| {
                    format!(
                        "reclaim: {} cannot be split (extra references): not reclaimed",
                        page_desc(s, f, 0)
                    )
                });
                continue;
            }
            split_folio_now(s, rules, f, log)?;
        }
    }
    for slot in start..end {
        let Some((f, _)) = s.mapped_page(0, slot) else {
            continue;
        };
        swapout(s, slot, log)?;
        let fo = *s.folio(f);
        let ok = match rules.unmap {
            UnmapRule::Always => true,
            UnmapRule::CountThenUnmap => fo.extra_refs() == 0,
            UnmapRule::ClearThenShare => !(fo.subs[0].exclusive && (rules.maybe_pinned)(&fo)),
        };
        if ok {
            unmap_to_swap(s, f);
            log.note(|| format!("reclaim: page #{f} at slot {slot} unmapped to a swap entry (stays in the swapcache while referenced)"));
        } else {
            log.note(|| {
                format!(
                    "reclaim: try_to_unmap refuses page #{f} at slot {slot} ({})",
                    rules.name
                )
            });
        }
    }
    Ok(Flow::Done)
}
