//! Details of the actions that merge or move pages behind the process: ksm, compact, pageout.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::Interval;

counters!(
    /// KSM fault counters.
    KsmCounters {
        /// Write faults that copied a KSM page (this includes the copies MADV_UNMERGEABLE makes).
        cow_ksm,
        ksm_swpin_copy,
    }
);

counters!(
    /// Compaction counters across /proc/sys/vm/compact_memory.
    CompactCounters {
        compact_migrate_scanned,
        compact_free_scanned,
        compact_isolated,
        pgmigrate_success,
        pgmigrate_fail,
    }
);

counters!(
    /// Reclaim counters across MADV_PAGEOUT.
    PageoutCounters {
        /// Pages written to swap.
        pswpout,
        thp_swpout,
        thp_swpout_fallback,
        pgpgout,
    }
);

/// ksm: fast KSM scanning over identical content in the region, a guest-RAM decoy huge page
/// and a control mapping outside guest RAM.
#[derive(Clone, Debug, Serialize)]
pub struct Ksm {
    /// The /sys/kernel/mm/ksm/full_scans value reached when the wait ended.
    pub full_scans: u64,
    /// /sys/kernel/mm/ksm/pages_sharing at `sharing_interval.start` and at its end.
    pub pages_sharing_before: u64,
    pub pages_sharing: u64,
    /// From before MADV_MERGEABLE to after the last scan (before unmerging): what
    /// `pages_sharing_before` .. `pages_sharing` and the `*_ksm_pages` counts cover.
    pub sharing_interval: Interval,
    /// Pages of the control mapping (outside guest RAM) that share a frame, of 512.
    pub control_ksm_pages: u64,
    /// Pages of the guest-RAM decoy huge page that share a frame, of 512.
    pub decoy_ksm_pages: u64,
    /// Region pages that share a frame.
    pub region_ksm_pages: u64,
    /// From before MADV_MERGEABLE to after MADV_UNMERGEABLE and the knobs' restore: what
    /// `counters` covers (so `cow_ksm` includes the copies unmerging made).
    pub counters_interval: Interval,
    pub counters: KsmCounters,
}

impl fmt::Display for Ksm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KSM ran to full scan {}: control pages merged {}/512, guest-RAM decoy pages merged {}/512, pinned region pages merged {}; pages_sharing {} -> {} over {}; {} over {}",
            self.full_scans,
            self.control_ksm_pages,
            self.decoy_ksm_pages,
            self.region_ksm_pages,
            self.pages_sharing_before,
            self.pages_sharing,
            self.sharing_interval,
            self.counters,
            self.counters_interval
        )
    }
}

/// compact: /proc/sys/vm/compact_memory.
#[derive(Clone, Debug, Serialize)]
pub struct Compact {
    pub counters: CompactCounters,
}

impl fmt::Display for Compact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "compact_memory: {}", self.counters)
    }
}

/// pageout: MADV_PAGEOUT of the region and a decoy huge page.
#[derive(Clone, Debug, Serialize)]
pub struct Pageout {
    /// Decoy pages swapped out after the call, of 512.
    pub decoy_swapped_pages: u64,
    /// Region pages swapped out after the call.
    pub region_swapped_pages: u64,
    pub counters: PageoutCounters,
}

impl fmt::Display for Pageout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MADV_PAGEOUT: decoy pages swapped {}/512, region pages swapped {}; {}",
            self.decoy_swapped_pages, self.region_swapped_pages, self.counters
        )
    }
}
