//! Details of the fork actions: fork-parent-write / -child-write / -child-exit, kirill, bias-1024.

use std::fmt;

use serde::Serialize;

use super::{HugePage, PageList};
use crate::addr::{Hva, Pfn};

/// What a fork child's pagemap, read right after the fork, says of the region.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AtFork {
    /// Region pages whose PFN in the child differs from the parent's: copied at fork (what a
    /// pinned anonymous page gets, so the pin stays the parent's).
    pub copied_at_fork: usize,
    /// Region pages with the same PFN in both: shared copy-on-write.
    pub shared_at_fork: usize,
    /// Region pages not present in the child or the parent (MADV_DONTFORK, discarded).
    pub absent_in_child: usize,
    /// Which region pages were copied (4 KiB index from the region's start).
    pub copied_pages: PageList,
}

impl fmt::Display for AtFork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at fork {} region pages copied for the child, {} shared COW, {} not in the child",
            self.copied_at_fork, self.shared_at_fork, self.absent_in_child
        )
    }
}

/// fork-parent-write / fork-child-write / fork-child-exit.
#[derive(Clone, Debug, Serialize)]
pub struct Fork {
    /// PID of the forked child.
    pub child: i32,
    #[serde(flatten)]
    pub at_fork: AtFork,
    /// Guest RAM is MADV_DONTFORK: the child has none of it.
    pub dontfork: bool,
    /// fork-child-write: the child wrote its whole copy of the region.
    pub child_wrote: bool,
    /// After the child's write, from its pagemap read again: pages it has of its own (copied
    /// on its write fault) and pages still shared with the parent.
    pub child_own_after_write: Option<usize>,
    pub child_shared_after_write: Option<usize>,
    /// The child's exit status when it exited within the action (child-write, child-exit);
    /// fork-parent-write's child exits in the later half.
    pub child_exit: Option<i32>,
}

impl fmt::Display for Fork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "forked child {}", self.child)?;
        if self.dontfork {
            write!(f, " (guest RAM is MADV_DONTFORK: the child has none of it)")?;
        }
        write!(f, ": {}", self.at_fork)?;
        if let (Some(own), Some(shared)) =
            (self.child_own_after_write, self.child_shared_after_write)
        {
            write!(
                f,
                "; after writing its copy the child has {own} pages of its own, {shared} still shared"
            )?;
        }
        match self.child_exit {
            Some(s) => write!(f, "; child exited {s}"),
            None => write!(f, "; the child lives until after the guest's next round"),
        }
    }
}

/// kirill: seed 002's split-then-fork sequence.
#[derive(Clone, Debug, Serialize)]
pub struct Kirill {
    /// PID of the forked child.
    pub child: i32,
    /// The page whose mprotect round trip split the PMD (the second half's first page).
    pub split_at: Hva,
    /// The huge page before the split, and right before the fork.
    pub huge_before: HugePage,
    pub huge_at_fork: HugePage,
    #[serde(flatten)]
    pub at_fork: AtFork,
    /// The half the child unmapped (the one holding the region): start and length.
    pub child_unmapped: Hva,
    pub child_unmapped_len: u64,
    /// The half the parent discarded (MADV_DONTNEED): start and length.
    pub parent_discarded: Hva,
    pub parent_discarded_len: u64,
}

impl fmt::Display for Kirill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PMD split at {} (huge page {} before, {} at fork); forked child {} ({}); child unmapped the first half {}+{:#x}; parent discarded the second half {}+{:#x}",
            self.split_at,
            self.huge_before,
            self.huge_at_fork,
            self.child,
            self.at_fork,
            self.child_unmapped,
            self.child_unmapped_len,
            self.parent_discarded,
            self.parent_discarded_len
        )
    }
}

/// The kind of page bias-1024 referenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PageKind {
    /// A small (order-0) page.
    Small,
    /// A subpage of a large folio (kpageflags THP or compound).
    ThpSubpage,
}

/// What bias-1024's fork did with the page, and what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BiasFinding {
    /// Fork copied a small page with >= 1024 plain references as if it were DMA-pinned.
    SmallCopiedFalsePositive,
    /// Fork shared the small page.
    SmallShared,
    /// Fork shared the THP subpage: a large folio keeps an exact pin count.
    ThpSubpageShared,
    /// Fork copied a THP subpage that is not pinned.
    ThpSubpageCopied,
}

impl BiasFinding {
    pub fn of(kind: PageKind, copied_at_fork: bool) -> Self {
        match (kind, copied_at_fork) {
            (PageKind::Small, true) => BiasFinding::SmallCopiedFalsePositive,
            (PageKind::Small, false) => BiasFinding::SmallShared,
            (PageKind::ThpSubpage, false) => BiasFinding::ThpSubpageShared,
            (PageKind::ThpSubpage, true) => BiasFinding::ThpSubpageCopied,
        }
    }
}

impl fmt::Display for BiasFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BiasFinding::SmallCopiedFalsePositive => "fork copied the small page as if it were DMA-pinned: refcount >= 1024 (GUP_PIN_COUNTING_BIAS) from plain references is a false positive",
            BiasFinding::SmallShared => "fork shared the small page: no false positive",
            BiasFinding::ThpSubpageShared => "fork shared the THP subpage: a large folio keeps an exact pin count, no false positive",
            BiasFinding::ThpSubpageCopied => "fork copied a THP subpage that is not pinned",
        })
    }
}

/// bias-1024: seed 001's GUP_PIN_COUNTING_BIAS false positive.
#[derive(Clone, Debug, Serialize)]
pub struct Bias1024 {
    /// Plain page references taken on the page (vmsplice into pipes).
    pub references: usize,
    /// The page referenced (beside the pinned region).
    pub page: Hva,
    pub page_kind: PageKind,
    /// The process holds a FOLL_PIN pin elsewhere (io-uring pin kind).
    pub process_holds_foll_pin: bool,
    /// The child's PFN for the page differs from the parent's.
    pub copied_at_fork: bool,
    pub parent_pfn: Option<Pfn>,
    pub child_pfn: Option<Pfn>,
    pub finding: BiasFinding,
}

impl fmt::Display for Bias1024 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.page_kind {
            PageKind::Small => "small",
            PageKind::ThpSubpage => "thp-subpage",
        };
        write!(
            f,
            "{} vmsplice references on a {kind} page at {}; process holds a FOLL_PIN pin: {}; {}",
            self.references, self.page, self.process_holds_foll_pin, self.finding
        )
    }
}
