//! mm/memory.c, the unmapping half: zap_pte_range for one PTE and unmap_page_range over a range
//! (a huge PMD covered whole is zapped by zap_huge_pmd, one covered in part is split first),
//! and MADV_DONTNEED (mm/madvise.c madvise_dontneed_single_vma), which is exactly such a zap:
//! the pages go from the page tables, a device's hold keeps its page (the live action
//! `dontneed`, diverged on every era).

use super::super::rules::Rules;
use super::super::state::{Pmd, Pte, State, SUBS};
use super::huge_memory::{split_pmd, zap_pmd};
use super::{Ctx, Flow, Log, R};

/// Zaps one PTE (zap_pte_range): the mapping's reference and mapcount go.
pub(super) fn zap_pte(s: &mut State, proc: u8, slot: u8) {
    let e = s.procs[proc as usize].pte[slot as usize];
    s.procs[proc as usize].pte[slot as usize] = Pte::None;
    if let Pte::Present { folio, sub, .. } = e {
        s.folio_mut(folio).subs[sub as usize].mapcount -= 1;
        s.put(folio, 1);
    }
}

pub(super) fn zap_range(
    s: &mut State,
    rules: &Rules,
    proc: u8,
    start: u8,
    end: u8,
    log: &mut Log,
) -> R<()> {
    let mut slot = start;
    while slot < end {
        let pmd = slot as usize / SUBS;
        let pmd_start = (pmd * SUBS) as u8;
        if let Pmd::Huge { .. } = s.procs[proc as usize].pmd[pmd] {
            if slot == pmd_start && end >= pmd_start + SUBS as u8 {
                zap_pmd(s, proc, pmd);
                slot += SUBS as u8;
                continue;
            }
            split_pmd(s, rules, proc, pmd, log)?;
        }
        zap_pte(s, proc, slot);
        slot += 1;
    }
    Ok(())
}

pub(super) fn dontneed(s: &mut State, ctx: &Ctx, start: u8, end: u8, log: &mut Log) -> R<Flow> {
    zap_range(s, ctx.rules, 0, start, end, log)?;
    log.note(|| format!("MADV_DONTNEED [{start}, {end}): pages unmapped; holds keep their pages"));
    Ok(Flow::Done)
}
