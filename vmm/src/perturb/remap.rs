//! Actions that move or discard guest RAM: mremap (as a VMM would, re-pointing the KVM memslot)
//! and MADV_DONTNEED on the DMA region itself.

use serde_json::json;

use super::{madvise, Ctx, Done, Error, Result};
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
    let mut done = Done::new(
        format!(
            "guest RAM moved {old} -> {new}{}; memslot re-pointed; {same}/{} region pages kept their PFN",
            if dontunmap { " (MREMAP_DONTUNMAP)" } else { "" },
            after.pfns.len()
        ),
        json!({ "old_hva": old, "new_hva": new, "region_pages_same_pfn": same }),
    );
    if old == new {
        done.no_effect = Some("mremap returned the same address".into());
    }
    Ok(done)
}

/// MADV_DONTNEED on the DMA region: the pin keeps the old pages; the guest gets new ones.
pub fn dontneed(ctx: &Ctx) -> Result<Done> {
    let a = Action::Dontneed;
    let (hva, len) = ctx.region();
    let before = ctx.probe();
    madvise(a, hva, len, libc::MADV_DONTNEED, "madvise(MADV_DONTNEED)")?;
    let after = ctx.probe();
    let gone = after.pfns.iter().filter(|p| p.is_none()).count();
    let changed = crate::pfn::diff_pfns(&before.pfns, &after.pfns).len();
    let mut done = Done::new(
        format!(
            "MADV_DONTNEED on the region ({len:#x} bytes at {hva}): {gone} pages no longer mapped"
        ),
        json!({ "unmapped_pages": gone }),
    );
    if changed == 0 {
        done.no_effect = Some("no region page changed".into());
    }
    Ok(done)
}
