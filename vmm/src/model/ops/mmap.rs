//! mmap of an anonymous private range, populated by write faults (MAP_POPULATE, or the guest's
//! first touch: do_anonymous_page, or do_huge_pmd_anonymous_page per PMD with MADV_HUGEPAGE on
//! an era with THP), and munmap (mm/mmap.c do_mmap / __do_munmap; mm/vma.c from 6.1): zap the
//! range, split the VMAs at its ends, remove those inside. No seed argues about these; every
//! program starts with an mmap.

use super::super::state::{State, Vma, NONE, SLOTS, SUBS};
use super::fault::new_page;
use super::huge_memory::do_huge_pmd_anonymous_page;
use super::rmap::map_pte;
use super::vma::{vma_remove, vmas_in};
use super::zap::zap_range;
use super::{err, Ctx, Flow, Log, R};

pub(super) fn mmap(
    s: &mut State,
    ctx: &Ctx,
    (start, end): (u8, u8),
    thp: bool,
    dontfork: bool,
    populate: bool,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    if end as usize > SLOTS || start >= end {
        return Err(err(
            "mmap",
            format!("range [{start}, {end}) outside 0..{SLOTS}"),
        ));
    }
    let vi = s.procs[0]
        .vmas
        .iter()
        .position(|v| !v.live)
        .ok_or_else(|| err("mmap", "no free VMA slot"))?;
    s.procs[0].live = true;
    s.procs[0].vmas[vi] = Vma {
        live: true,
        start,
        end,
        write: true,
        dontfork,
        anon_vma: NONE,
        chain: 0,
    };
    let huge = thp && rules.features.thp;
    if populate {
        let mut slot = start;
        while slot < end {
            if huge && (slot as usize).is_multiple_of(SUBS) && slot + SUBS as u8 <= end {
                do_huge_pmd_anonymous_page(s, rules, vi, slot)?;
                slot += SUBS as u8;
            } else {
                let f = new_page(s, rules, 0, vi, 0)?;
                map_pte(s, 0, slot, f, 0, true);
                slot += 1;
            }
        }
    }
    log.note(|| {
        format!(
            "mmap [{start}, {end}){}{}, populated by write faults{}",
            if huge { " MADV_HUGEPAGE" } else { "" },
            if dontfork { " MADV_DONTFORK" } else { "" },
            if huge { " (a THP per PMD)" } else { "" }
        )
    });
    Ok(Flow::Done)
}

pub(super) fn munmap(
    s: &mut State,
    ctx: &Ctx,
    proc: u8,
    start: u8,
    end: u8,
    log: &mut Log,
) -> R<Flow> {
    zap_range(s, ctx.rules, proc, start, end, log)?;
    for vi in vmas_in(s, proc, start, end)? {
        vma_remove(s, proc, vi);
    }
    log.note(|| format!("P{proc} munmap [{start}, {end})"));
    Ok(Flow::Done)
}
