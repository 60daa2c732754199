//! Details of `ksm-shadow` (finding F1, issue 16): does one pinned page stop KSM from merging
//! every other process's pages with its content?

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::Interval;
use crate::scenario::KsmOrder;

counters!(
    /// KSM's own counters (/sys/kernel/mm/ksm) and /proc/vmstat's `cow_ksm`, as deltas over the
    /// action's KSM interval. System-wide: they bound what the action caused from above.
    KsmShadowCounters {
        full_scans,
        /// KSM pages in use (one per merged content).
        pages_shared,
        /// Further mappings sharing them (the saving).
        pages_sharing,
        /// Pages KSM checked and found unique this scan (or could not merge).
        pages_unshared,
        /// Write faults that copied a KSM page: with a poisoned content, each victim page is
        /// made a KSM page and broken again (`break_cow`) on every scan that processes it.
        cow_ksm,
    }
);

impl KsmShadowCounters {
    /// The counter names read from /sys/kernel/mm/ksm (the rest come from /proc/vmstat).
    pub const KSM_NAMES: &'static [&'static str] = &[
        "full_scans",
        "pages_shared",
        "pages_sharing",
        "pages_unshared",
    ];
}

/// What the helper's pages did, and what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShadowFinding {
    /// KSM merged the helper's control pages but none of its copies of the pinned pages:
    /// every pinned page blocked the other process's pages with its content.
    Poisoned,
    /// Every copy merged: the pinned pages harmed nobody.
    Merged,
    /// Some copies merged, some did not (smart_scan let some escape).
    Partial,
    /// Not even the control pages merged: KSM did not scan the helper; nothing is known.
    Inconclusive,
}

impl ShadowFinding {
    pub fn of(x_merged: u64, x_pages: u64, y_merged: u64) -> Self {
        match (y_merged, x_merged) {
            (0, _) => ShadowFinding::Inconclusive,
            (_, 0) => ShadowFinding::Poisoned,
            (_, x) if x >= x_pages => ShadowFinding::Merged,
            _ => ShadowFinding::Partial,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ShadowFinding::Poisoned => "poisoned",
            ShadowFinding::Merged => "merged",
            ShadowFinding::Partial => "partial",
            ShadowFinding::Inconclusive => "inconclusive",
        }
    }
}

impl fmt::Display for ShadowFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShadowFinding::Poisoned => "poisoned: the control pages merged, no copy of a pinned page did: each pinned page, reached first, blocked the other process's identical pages",
            ShadowFinding::Merged => "merged: every copy of the pinned pages merged in the other process",
            ShadowFinding::Partial => "partial: some copies of the pinned pages merged, some did not",
            ShadowFinding::Inconclusive => "inconclusive: not even the control pages merged (KSM did not scan the helper)",
        })
    }
}

/// ksm-shadow: a helper process (another VM) holds `copies` copies of each region page and as
/// many control pages of one other content; both processes enter KSM in `order` while ksmd is
/// stopped, then ksmd runs `full_scans` full scans.
#[derive(Clone, Debug, Serialize)]
pub struct KsmShadow {
    pub order: KsmOrder,
    /// /sys/kernel/mm/ksm/smart_scan during the run (`None`: the kernel has none, before 6.7).
    pub smart_scan: Option<bool>,
    /// The helper's PID.
    pub helper: i32,
    /// Its exit status once released (0: every step succeeded).
    pub helper_exit: i32,
    pub region_pages: u64,
    /// Region pages with distinct content (by a 64-bit hash): the number of contents the
    /// pinned pages hold, each held by `copies` helper pages.
    pub region_distinct_pages: u64,
    pub copies: u64,
    /// The helper's copies of the region pages (X), `copies * region_pages`.
    pub x_pages: u64,
    /// Copies whose frame is a KSM page after the scans (kpageflags, /proc/<pid>/pagemap).
    pub x_merged: u64,
    /// Copies whose frame changed between the helper's report and the end: merged, or made a
    /// KSM page and broken again.
    pub x_pfns_changed: u64,
    /// Distinct frames behind the copies at the end (`x_pages` when none merged; one per
    /// content when every copy of it merged).
    pub x_frames: u64,
    /// The helper's control pages (Y), of one content no region page has.
    pub y_pages: u64,
    pub y_merged: u64,
    /// Region pages whose frame is a KSM page after the scans.
    pub region_ksm_pages: u64,
    /// Every region page kept its frame from before MADV_MERGEABLE to the end.
    pub region_pfns_kept: bool,
    /// /sys/kernel/mm/ksm/full_scans when ksmd was stopped again.
    pub full_scans_reached: u64,
    /// From before the first MADV_MERGEABLE to ksmd stopped again: what `counters` and the
    /// page counts cover.
    pub interval: Interval,
    pub counters: KsmShadowCounters,
    pub finding: ShadowFinding,
}

impl fmt::Display for KsmShadow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let smart = match self.smart_scan {
            Some(true) => "smart_scan 1",
            Some(false) => "smart_scan 0",
            None => "no smart_scan",
        };
        write!(
            f,
            "{} ({smart}), KSM to full scan {}: helper {} copies merged {}/{} ({} changed frame, {} frames), control pages merged {}/{}; pinned region pages KSM {}/{} ({} contents), frames {}; {} over {}; finding {}",
            self.order,
            self.full_scans_reached,
            self.helper,
            self.x_merged,
            self.x_pages,
            self.x_pfns_changed,
            self.x_frames,
            self.y_merged,
            self.y_pages,
            self.region_ksm_pages,
            self.region_pages,
            self.region_distinct_pages,
            if self.region_pfns_kept { "kept" } else { "changed" },
            self.counters,
            self.interval,
            self.finding.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: (copies merged, of, control merged) -> finding. A bug would call a run where
    /// KSM never scanned "poisoned", the finding's false positive.
    #[test]
    fn finding_from_counts() {
        let rows = [
            ((0, 1024, 512), ShadowFinding::Poisoned),
            ((1024, 1024, 512), ShadowFinding::Merged),
            ((3, 1024, 512), ShadowFinding::Partial),
            ((0, 1024, 0), ShadowFinding::Inconclusive),
            ((1024, 1024, 0), ShadowFinding::Inconclusive),
        ];
        for ((x, of, y), want) in rows {
            assert_eq!(ShadowFinding::of(x, of, y), want, "{x}/{of}, control {y}");
        }
        assert_eq!(
            serde_json::to_value(ShadowFinding::Poisoned).unwrap(),
            "poisoned"
        );
    }
}
