//! Details of the THP actions: mprotect-roundtrip, split-pmd, split-folio, collapse.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::{errno_name, Effect, HugePage, Vma};
use crate::addr::Hva;

counters!(
    /// THP split counters across a folio split attempt.
    SplitCounters {
        /// PMD mappings split into PTEs.
        thp_split_pmd,
        /// Large folios split into small ones.
        thp_split_page,
        /// Folio splits the kernel refused (an extra reference: a pin, a GUP, a pipe).
        thp_split_page_failed,
        /// Folios queued for deferred split (partially unmapped).
        thp_deferred_split_page,
    }
);

counters!(
    /// Counters across MADV_COLLAPSE.
    CollapseCounters {
        /// PMD mappings split (by the split step before the collapse).
        thp_split_pmd,
        /// Huge pages allocated for a collapse.
        thp_collapse_alloc,
        /// Collapse allocations that failed.
        thp_collapse_alloc_failed,
    }
);

/// mprotect-roundtrip: PROT_READ then PROT_READ|PROT_WRITE on the region's first page.
///
/// Its own effect is the VMA change: the page's VMA is read-only between the two calls and
/// read-write again after. Whether that split the PMD depends on the state earlier actions left,
/// so the huge page before and after is recorded, not judged.
#[derive(Clone, Debug, Serialize)]
pub struct MprotectRoundtrip {
    /// The page whose protection went to PROT_READ and back.
    pub page: Hva,
    /// The VMA holding the page between the two calls (from /proc/self/maps).
    pub vma_read_only: Option<Vma>,
    /// The VMA holding the page after the second call.
    pub vma_after: Option<Vma>,
    /// The huge page holding the page, before and after.
    pub huge_before: HugePage,
    pub huge_after: HugePage,
    /// thp_split_pmd delta across the round trip (system-wide).
    pub thp_split_pmd: i64,
    pub effect: Effect,
}

impl fmt::Display for MprotectRoundtrip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Vma>| v.map_or("no VMA".to_string(), |v| v.to_string());
        write!(
            f,
            "mprotect(PROT_READ) and back on the region's first page at {}: its VMA was {} while read-only, {} after; huge page {} before, {} after (thp_split_pmd +{})",
            self.page,
            show(&self.vma_read_only),
            show(&self.vma_after),
            self.huge_before,
            self.huge_after,
            self.thp_split_pmd
        )
    }
}

/// split-pmd: MADV_DONTNEED on a page beside the region, inside its huge page.
#[derive(Clone, Debug, Serialize)]
pub struct SplitPmd {
    /// The page discarded, or `None` when no page beside the region was still present.
    pub page: Option<Hva>,
    /// The huge page the discard hit, before and after.
    pub huge_before: HugePage,
    pub huge_after: HugePage,
    /// thp_split_pmd delta across the discard (system-wide).
    pub thp_split_pmd: i64,
    /// `done`: the huge page was PMD-mapped before and is PTE-mapped after. `already-done`: it
    /// was already mapped by PTEs before (an earlier action split it).
    pub effect: Effect,
}

impl fmt::Display for SplitPmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.page {
            Some(p) => write!(f, "MADV_DONTNEED on the page at {p} beside the region")?,
            None => write!(f, "no page beside the region was still present to discard")?,
        }
        write!(
            f,
            "; huge page {} before, {} after; thp_split_pmd +{}",
            self.huge_before, self.huge_after, self.thp_split_pmd
        )?;
        if self.effect == Effect::AlreadyDone {
            write!(
                f,
                "; already split by an earlier action, nothing left to split"
            )?;
        }
        Ok(())
    }
}

/// How split-folio asked the kernel to split the folio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitMethod {
    /// A write to debugfs `split_huge_pages` for the region's huge pages.
    Debugfs,
    /// MADV_DONTNEED of a page beside the region (queues the folio for deferred split) and
    /// `drop_caches=2` (runs the deferred-split shrinker).
    PartialDiscard,
}

/// What the kernel did with the region's folio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FolioOutcome {
    /// The region's pages are no longer THP.
    Split,
    /// The region's pages are still THP and `thp_split_page_failed` moved: the kernel refused
    /// the split (a folio with extra references, a pinned one, cannot be split).
    Refused,
    /// The region's pages are still THP and no split was attempted on them that a counter saw.
    Untouched,
    /// The region's pages were not THP before the action: there was no folio to split.
    NotThp,
}

/// What the device holds on the region's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceHold {
    /// A FOLL_PIN | FOLL_LONGTERM pin (io_uring registered buffers, a VFIO type1 DMA map).
    Pin,
    /// Plain page references (FOLL_GET, vmsplice pipes).
    References,
    /// Nothing: the device goes through the VMM's mapping.
    Nothing,
}

impl DeviceHold {
    pub fn of(pin: crate::scenario::PinKind) -> Self {
        use crate::scenario::PinKind;
        match pin {
            PinKind::IoUring | PinKind::Vfio => DeviceHold::Pin,
            PinKind::Vmsplice => DeviceHold::References,
            PinKind::Mapping => DeviceHold::Nothing,
        }
    }
}

/// split-folio: an attempt to split the region's large folio itself.
#[derive(Clone, Debug, Serialize)]
pub struct SplitFolio {
    pub method: SplitMethod,
    /// The errno of the debugfs write when it was refused (ENOENT: no debugfs; EPERM: locked
    /// down), which is why `method` is the partial discard.
    pub debugfs_errno: Option<i32>,
    /// The page discarded beside the region (partial-discard method).
    pub discarded_page: Option<Hva>,
    /// Region pages.
    pub region_pages: usize,
    /// Region pages kpageflags marked THP before and after.
    pub region_thp_pages_before: u64,
    pub region_thp_pages: u64,
    /// The region's pages are no longer THP (THP on).
    pub folio_split: bool,
    pub outcome: FolioOutcome,
    /// What the device holds on the region's folio, which is why a split must be refused.
    pub device_hold: DeviceHold,
    pub counters: SplitCounters,
    pub effect: Effect,
}

impl fmt::Display for SplitFolio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.method {
            SplitMethod::Debugfs => write!(f, "debugfs split_huge_pages")?,
            SplitMethod::PartialDiscard => write!(
                f,
                "partial MADV_DONTNEED + drop_caches=2 (debugfs split_huge_pages not usable here)"
            )?,
        }
        let (thp, n) = (self.region_thp_pages, self.region_pages);
        match self.outcome {
            FolioOutcome::Split => write!(f, "; the folio was split: region pages still THP {thp}/{n}")?,
            FolioOutcome::Refused => write!(
                f,
                "; the kernel refused to split the folio{} (thp_split_page_failed +{}): region pages still THP {thp}/{n}",
                match self.device_hold {
                    DeviceHold::Pin => " because it is pinned (FOLL_PIN)",
                    DeviceHold::References => " because the device holds page references on it",
                    DeviceHold::Nothing => "",
                },
                self.counters.thp_split_page_failed
            )?,
            FolioOutcome::Untouched => write!(f, "; region pages still THP {thp}/{n}, no split attempt counted")?,
            FolioOutcome::NotThp => write!(f, "; the region's pages were not THP before: no folio to split")?,
        }
        write!(f, "; {}", self.counters)
    }
}

/// How collapse split the PMD before collapsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "by")]
pub enum SplitStep {
    /// MADV_DONTNEED of a page beside the region.
    Discard { page: Hva },
    /// No page beside the region was present: an mprotect round trip of the region's first page.
    MprotectRoundtrip { page: Hva },
}

/// collapse: a PMD split, then MADV_COLLAPSE of the region's huge pages.
#[derive(Clone, Debug, Serialize)]
pub struct Collapse {
    pub split: SplitStep,
    /// The huge page split, before the split and after the collapse.
    pub huge_before: HugePage,
    pub huge_after: HugePage,
    /// MADV_COLLAPSE returned 0.
    pub collapsed: bool,
    /// Its errno when it did not (EAGAIN: a page could not be collapsed, a pinned one for one).
    pub collapse_errno: Option<i32>,
    pub counters: CollapseCounters,
    /// `already-done`: the huge page was already mapped by PTEs before (the split step had
    /// nothing to split) and the collapse was refused.
    pub effect: Effect,
}

impl fmt::Display for Collapse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.split {
            SplitStep::Discard { page } => write!(f, "split: MADV_DONTNEED of {page}")?,
            SplitStep::MprotectRoundtrip { page } => {
                write!(f, "split: mprotect round trip of {page}")?
            }
        }
        write!(f, "; MADV_COLLAPSE: ")?;
        match self.collapse_errno {
            None => write!(f, "ok")?,
            Some(e) => write!(f, "refused ({})", errno_name(e))?,
        }
        write!(
            f,
            "; huge page {} before, {} after; {}",
            self.huge_before, self.huge_after, self.counters
        )?;
        if self.effect == Effect::AlreadyDone {
            write!(f, "; the PMD was already split by an earlier action")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split-folio summary names a pinned refusal plainly and carries no OS error string.
    #[test]
    fn split_folio_refusal_is_plain() {
        let d = SplitFolio {
            method: SplitMethod::PartialDiscard,
            debugfs_errno: Some(libc::ENOENT),
            discarded_page: Some(Hva(0x20_0000)),
            region_pages: 256,
            region_thp_pages_before: 256,
            region_thp_pages: 256,
            folio_split: false,
            outcome: FolioOutcome::Refused,
            device_hold: DeviceHold::Pin,
            counters: SplitCounters {
                thp_split_page_failed: 2,
                ..Default::default()
            },
            effect: Effect::Done,
        };
        let s = d.to_string();
        assert!(
            s.contains(
                "refused to split the folio because it is pinned (FOLL_PIN) (thp_split_page_failed +2)"
            ),
            "{s}"
        );
        assert!(!s.contains("os error"), "{s}");
    }
}
