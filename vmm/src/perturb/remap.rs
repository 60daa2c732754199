//! Actions that move or discard guest RAM: mremap (as a VMM would, re-pointing the KVM memslot)
//! and MADV_DONTNEED on the DMA region itself.

use super::{madvise, Ctx, Done, Error, Judged, Result};
use crate::evidence::{Details, Dontneed, Mremap, PageList};
use crate::scenario::Action;

/// Moves all of guest RAM with mremap(2) (optionally MREMAP_DONTUNMAP), re-points the memslot,
/// and lets the IOMMU re-take pins that are only addresses (the control group). Holds guest
/// RAM's write lock: no device touches RAM while it moves.
pub fn mremap(ctx: &Ctx, dontunmap: bool) -> Result<Done> {
    let a = if dontunmap {
        Action::MremapDontunmap
    } else {
        Action::Mremap
    };
    let before = ctx.probe();
    let (old, new) = {
        let mut ram = ctx.devices.ram.write().unwrap_or_else(|p| p.into_inner());
        let old = ctx
            .vm
            .remap_ram(&mut ram, dontunmap)
            .map_err(|e| Error::Failed {
                action: a,
                why: e.to_string(),
            })?;
        ctx.devices
            .state()
            .iommu
            .rebase(&ram)
            .map_err(|e| Error::Failed {
                action: a,
                why: format!("re-taking the control group's pins: {e}"),
            })?;
        (old, ram.hva())
    };
    let after = ctx.probe();
    let same = before
        .pfns
        .iter()
        .zip(&after.pfns)
        .filter(|(b, a)| b.is_some() && b == a)
        .count();
    let judged = if old == new {
        Judged::NoEffect("mremap returned the same address")
    } else {
        Judged::Done
    };
    let d = Mremap {
        old_hva: old,
        new_hva: new,
        dontunmap,
        region_pages_same_pfn: same,
        region_pages: after.pfns.len(),
    };
    Done::judged(a, Details::Mremap(d), judged)
}

/// MADV_DONTNEED on the DMA region: the pin keeps the old pages; the guest gets new ones.
pub fn dontneed(ctx: &Ctx) -> Result<Done> {
    let a = Action::Dontneed;
    let (hva, len) = ctx.region();
    let before = ctx.probe();
    madvise(a, hva, len, libc::MADV_DONTNEED, "madvise(MADV_DONTNEED)")?;
    let after = ctx.probe();
    let gone = after.pfns.iter().filter(|p| p.is_none()).count();
    let present_before = before.pfns.iter().filter(|p| p.is_some()).count();
    let changed = crate::pfn::diff_pfns(&before.pfns, &after.pfns);
    let judged = judge_dontneed(present_before, changed.len());
    let d = Dontneed {
        region: hva,
        len,
        present_before,
        unmapped_pages: gone,
        changed_pages: PageList::new(&changed),
        effect: judged.effect(),
    };
    Done::judged(a, Details::Dontneed(d), judged)
}

/// dontneed's check: a page present before must have gone (or changed); with none present
/// before (an earlier action discarded them, the guest has not written since) there was
/// nothing to discard.
fn judge_dontneed(present_before: usize, changed: usize) -> Judged {
    match (present_before, changed) {
        (0, _) => Judged::AlreadyDone,
        (_, 0) => Judged::NoEffect("no region page changed"),
        _ => Judged::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (present before, changed) -> judgement; a bug would call a second discard "no effect".
    #[test]
    fn dontneed_judgement_table() {
        let rows = [
            (256, 256, Judged::Done, "discarded"),
            (
                256,
                0,
                Judged::NoEffect("no region page changed"),
                "nothing went",
            ),
            (
                0,
                0,
                Judged::AlreadyDone,
                "already discarded by an earlier action",
            ),
        ];
        for (present, changed, want, what) in rows {
            assert_eq!(judge_dontneed(present, changed), want, "{what}");
        }
    }
}
