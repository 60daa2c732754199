//! Actions that move or merge pages behind the process's back: KSM, compaction, page-out.
//!
//! Each acts on the region and on a decoy huge page of unpinned guest RAM, so the evidence
//! shows both halves: the mechanism really ran (the decoy was merged / swapped), and what it
//! did or did not do to the pinned region. They change system-wide state: the runner holds the
//! cross-process system lock for the whole run of a scenario that uses them.

use std::time::{Duration, Instant};

use super::{madvise, moved, vmstat_now, Ctx, Done, Error, Judged, Result};
use crate::addr::{Hva, HUGE_PAGE_SIZE};
use crate::evidence::{
    Compact, CompactCounters, Details, Interval, Ksm as KsmDetails, KsmCounters, Pageout,
    PageoutCounters,
};
use crate::host::{self, Ksm};
use crate::scenario::Action;
use crate::timeline::Mono;

fn fill(hva: Hva, len: u64, value: u64) {
    // SAFETY: guest RAM (region or decoy) owned by GuestRam; the guest is stopped at a phase
    // and rewrites the region before it reads it again (its rounds start with a CPU write).
    unsafe {
        let words = std::slice::from_raw_parts_mut(hva.as_ptr() as *mut u64, (len / 8) as usize);
        for w in words {
            std::ptr::write_volatile(w, value);
        }
    }
}

/// KSM with fast scanning over identical content in the region and a decoy huge page.
pub fn ksm(ctx: &Ctx) -> Result<Done> {
    let a = Action::Ksm;
    let decoy = ctx.decoy_huge_page().ok_or_else(|| Error::Failed {
        action: a,
        why: "guest RAM has no huge page beside the region for the decoy: raise vm.memory".into(),
    })?;
    let (region, len) = ctx.region();
    // KSM merges base pages: split the decoy's PMD first (an mprotect round trip on one page),
    // so a PMD-mapped THP does not hide it from the scanner. The region is left as it is.
    super::split_pmd_by_mprotect(a, decoy)?;
    // The region's pages are identical among themselves; the control and the decoy share a
    // different content. (With one content for all, a pinned region page that becomes the
    // unstable tree's node for it makes every identical page's merge fail against it.)
    const SAME: u64 = 0x6b73_6d5f_7069_6e21;
    const OTHER: u64 = 0x636f_6e74_726f_6c21;
    // The control: identical pages in a private mapping outside guest RAM. If KSM merges
    // them it ran over this process; guest RAM's decoy shows what it does to guest memory
    // (measured here: nothing; see the issue note), the region what it does to pinned pages.
    let control =
        crate::memory::GuestRam::new(HUGE_PAGE_SIZE, false, false).map_err(|e| Error::Failed {
            action: a,
            why: format!("control mapping: {e}"),
        })?;
    fill(control.hva(), HUGE_PAGE_SIZE, OTHER);
    madvise(
        a,
        control.hva(),
        HUGE_PAGE_SIZE,
        libc::MADV_MERGEABLE,
        "madvise(MADV_MERGEABLE)",
    )?;
    fill(region, len, SAME);
    fill(decoy, HUGE_PAGE_SIZE, OTHER);
    let start = Mono::now();
    let before = vmstat_now();
    let sharing_before = Ksm::pages_sharing().unwrap_or(0);
    madvise(
        a,
        region,
        len,
        libc::MADV_MERGEABLE,
        "madvise(MADV_MERGEABLE)",
    )?;
    madvise(
        a,
        decoy,
        HUGE_PAGE_SIZE,
        libc::MADV_MERGEABLE,
        "madvise(MADV_MERGEABLE)",
    )?;
    let ksm = Ksm::start_fast().map_err(|e| Error::Failed {
        action: a,
        why: format!("starting KSM: {e}"),
    })?;
    // A page merges on its third scan at the earliest (checksum, unstable tree, merge), and
    // smart_scan backs off from pages that did not merge, so poll: until the unpinned decoy
    // has merged (the proof KSM ran over our memory) and a few more scans have passed for the
    // region, or a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut scans = Ok(0);
    let mut after_merge = 0;
    while Instant::now() < deadline {
        match ksm.wait_full_scans(1, deadline) {
            Ok(n) => scans = Ok(scans.unwrap_or(0) + n),
            Err(e) => {
                scans = Err(e);
                break;
            }
        }
        if merged_pages(control.hva(), HUGE_PAGE_SIZE) > 0 {
            after_merge += 1;
            if after_merge >= 3 {
                break;
            }
        }
    }
    let sharing = Ksm::pages_sharing().unwrap_or(0);
    let region_ksm = merged_pages(region, len);
    let decoy_ksm = merged_pages(decoy, HUGE_PAGE_SIZE);
    let control_ksm = merged_pages(control.hva(), HUGE_PAGE_SIZE);
    let sharing_interval = Interval::since(start);
    // Unmerge what we merged and put every KSM knob back.
    let _ = madvise(
        a,
        region,
        len,
        libc::MADV_UNMERGEABLE,
        "madvise(MADV_UNMERGEABLE)",
    );
    let _ = madvise(
        a,
        decoy,
        HUGE_PAGE_SIZE,
        libc::MADV_UNMERGEABLE,
        "madvise(MADV_UNMERGEABLE)",
    );
    ksm.restore().map_err(|e| Error::Failed {
        action: a,
        why: format!("restoring KSM knobs: {e}"),
    })?;
    let scans = scans.map_err(|e| Error::Failed {
        action: a,
        why: format!("waiting for KSM scans: {e}"),
    })?;
    let counters = KsmCounters::from_deltas(&moved(&before, KsmCounters::NAMES));
    let counters_interval = Interval::since(start);
    let judged = if control_ksm == 0 && decoy_ksm == 0 && region_ksm == 0 {
        Judged::NoEffect("KSM merged nothing, not even the control mapping")
    } else {
        Judged::Done
    };
    let d = KsmDetails {
        full_scans: scans,
        pages_sharing_before: sharing_before,
        pages_sharing: sharing,
        sharing_interval,
        control_ksm_pages: control_ksm,
        decoy_ksm_pages: decoy_ksm,
        region_ksm_pages: region_ksm,
        counters_interval,
        counters,
    };
    Done::judged(a, Details::Ksm(d), judged)
}

/// Pages of a range that share their frame with another page of it (KSM merged them): the
/// range's present pages minus its distinct PFNs, plus one per shared frame.
fn merged_pages(hva: Hva, len: u64) -> u64 {
    let Ok(pages) = crate::pfn::pagemap(hva, len) else {
        return 0;
    };
    let mut count = std::collections::BTreeMap::new();
    for p in pages.iter().filter_map(|p| p.pfn) {
        *count.entry(p).or_insert(0u64) += 1;
    }
    count.values().filter(|&&n| n > 1).sum()
}

/// /proc/sys/vm/compact_memory.
pub fn compact(ctx: &Ctx) -> Result<Done> {
    let a = Action::Compact;
    let _ = ctx;
    let before = vmstat_now();
    host::trigger(std::path::Path::new("/proc/sys/vm/compact_memory"), "1").map_err(|e| {
        Error::Failed {
            action: a,
            why: format!("compact_memory: {e}"),
        }
    })?;
    let counters = CompactCounters::from_deltas(&moved(&before, CompactCounters::NAMES));
    let judged = if counters.all_zero() {
        Judged::NoEffect("no compaction counter moved")
    } else {
        Judged::Done
    };
    Done::judged(a, Details::Compact(Compact { counters }), judged)
}

/// MADV_PAGEOUT of the region and a decoy huge page (needs swap).
pub fn pageout(ctx: &Ctx) -> Result<Done> {
    let a = Action::Pageout;
    let decoy = ctx.decoy_huge_page().ok_or_else(|| Error::Failed {
        action: a,
        why: "guest RAM has no huge page beside the region for the decoy: raise vm.memory".into(),
    })?;
    let (region, len) = ctx.region();
    fill(decoy, HUGE_PAGE_SIZE, 0x7061_6765_6f75_7421);
    let before = vmstat_now();
    madvise(a, region, len, libc::MADV_PAGEOUT, "madvise(MADV_PAGEOUT)")?;
    madvise(
        a,
        decoy,
        HUGE_PAGE_SIZE,
        libc::MADV_PAGEOUT,
        "madvise(MADV_PAGEOUT)",
    )?;
    let counters = PageoutCounters::from_deltas(&moved(&before, PageoutCounters::NAMES));
    let decoy_swapped = crate::pfn::snapshot(decoy, HUGE_PAGE_SIZE)
        .map(|s| s.summary.swapped)
        .unwrap_or(0);
    let region_swapped = crate::pfn::snapshot(region, len)
        .map(|s| s.summary.swapped)
        .unwrap_or(0);
    let judged = if counters.pswpout == 0 && decoy_swapped == 0 {
        Judged::NoEffect("nothing was swapped out, not even the unpinned decoy")
    } else {
        Judged::Done
    };
    let d = Pageout {
        decoy_swapped_pages: decoy_swapped,
        region_swapped_pages: region_swapped,
        counters,
    };
    Done::judged(a, Details::Pageout(d), judged)
}
