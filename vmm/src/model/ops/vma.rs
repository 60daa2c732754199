//! VMA bookkeeping: find_vma (mm/mmap.c), __split_vma and VMA removal (mm/vma.c, mm/mmap.c
//! before 6.1's split). A split VMA is linked on every anon_vma of its chain (anon_vma_clone);
//! a removed one is unlinked (unlink_anon_vmas). No seed argues about these; every range
//! operation (munmap, mprotect, mremap) goes through them.

use super::super::state::{State, Vma, VMAS};
use super::rmap::{av_entry, av_insert, av_remove, chain_avs};
use super::{err, R};

pub(super) fn vma_of(s: &State, proc: u8, slot: u8, op: &'static str) -> R<usize> {
    s.procs[proc as usize].vma_at(slot).ok_or_else(|| {
        err(
            op,
            format!("slot {slot} of process {proc} is not in a VMA (SIGSEGV)"),
        )
    })
}

/// __split_vma: `[start, at)` stays, `[at, end)` becomes a new VMA on the same anon_vmas.
fn vma_split(s: &mut State, proc: u8, vi: usize, at: u8) -> R<Option<usize>> {
    let v = s.procs[proc as usize].vmas[vi];
    if at <= v.start || at >= v.end {
        return Ok(None);
    }
    let ni = s.procs[proc as usize]
        .vmas
        .iter()
        .position(|v| !v.live)
        .ok_or_else(|| err("split_vma", "no free VMA slot"))?;
    s.procs[proc as usize].vmas[ni] = Vma { start: at, ..v };
    s.procs[proc as usize].vmas[vi].end = at;
    for av in chain_avs(v.chain) {
        av_insert(s, av, av_entry(proc, ni), None)?;
    }
    Ok(Some(ni))
}

pub(super) fn vma_remove(s: &mut State, proc: u8, vi: usize) {
    let v = s.procs[proc as usize].vmas[vi];
    for av in chain_avs(v.chain) {
        av_remove(s, av, av_entry(proc, vi));
    }
    s.procs[proc as usize].vmas[vi] = Vma::default();
}

/// Splits VMAs at `start` and `end` and returns those fully inside.
pub(super) fn vmas_in(s: &mut State, proc: u8, start: u8, end: u8) -> R<Vec<usize>> {
    for at in [start, end] {
        if let Some(vi) = s.procs[proc as usize].vma_at(at) {
            vma_split(s, proc, vi, at)?;
        }
    }
    Ok((0..VMAS)
        .filter(|&i| {
            let v = s.procs[proc as usize].vmas[i];
            v.live && v.start >= start && v.end <= end
        })
        .collect())
}
