//! Typed evidence of what each host action did, measured.
//!
//! Every action records /proc/vmstat deltas over a CLOCK_MONOTONIC interval, the region's PFNs
//! and THP flags before and after, and details of its own (pages copied at fork, pages merged by
//! KSM, faults handled ...), with how its effect was judged given the state earlier actions left.
//! The types here are what the JSON result, the human summary and the reports are rendered from;
//! nothing is erased to untyped JSON and read back by key: each details type renders its own one
//! line (`Display`), and that line is the evidence's `summary`. `perturb` produces them; this
//! module depends only on the address, scenario and timeline vocabularies, so the phase hook can
//! name them.
//!
//! This file holds the shared vocabulary (the evidence record, intervals, page lists, huge page
//! and VMA observations, typed counters, `Details` and the later halves); each action family's
//! details live in a submodule named as in `perturb/` (fork, thp, reclaim, ksm_shadow, remap,
//! uffd). Nothing here measures or decides: `perturb` observes and judges, this only holds and
//! renders.
//!
//! vmstat counters are system-wide: a delta bounds what the action caused from above and is
//! read together with the per-page observations beside it, never alone.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};

use crate::addr::Hva;
use crate::scenario::Action;
use crate::timeline::Mono;

/// What one action changed.
#[derive(Clone, Debug, Serialize)]
pub struct ActionEvidence {
    pub action: Action,
    /// The guest round after which it ran (0 in a storm).
    pub after_round: u32,
    /// Storm iteration (1-based), when run as a storm.
    pub storm_iteration: Option<u32>,
    /// One line rendered from `details` (what the human summary prints).
    pub summary: String,
    /// When the action ran, on CLOCK_MONOTONIC: `vmstat` and the region fields cover exactly it.
    pub interval: Interval,
    /// /proc/vmstat (and KSM) counters that moved across the action.
    pub vmstat: BTreeMap<String, i64>,
    /// How many region pages have a PFN after the action different from before it.
    pub region_pfns_changed: usize,
    /// Which region pages (4 KiB index from the region's start) changed PFN.
    pub region_pages_changed: PageList,
    /// Region pages kpageflags marked THP before the action.
    pub region_thp_pages_before: usize,
    /// Region pages kpageflags marked THP after the action.
    pub region_thp_pages_after: usize,
    pub details: Details,
    /// What the action's later half found (fork child reaped, uffd faults handled).
    pub finish: Option<LaterHalf>,
}

/// A span of time on CLOCK_MONOTONIC (the clock tracefs calls `mono`), in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Interval {
    pub start: Mono,
    pub end: Mono,
}

impl Interval {
    /// From `start` to now.
    pub fn since(start: Mono) -> Self {
        Interval {
            start,
            end: Mono::now(),
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mono {:.6}..{:.6} s ({:.1} ms)",
            self.start.as_secs_f64(),
            self.end.as_secs_f64(),
            self.end.since(self.start) as f64 / 1e6
        )
    }
}

/// A set of page indices, bounded: ascending runs `[start, end)` of consecutive pages, at most
/// [`PageList::MAX`] of them, and how many pages did not fit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PageList {
    /// How many pages the full set has.
    pub total: usize,
    /// The first runs of it, each `[start, end)`.
    pub runs: Vec<[usize; 2]>,
    /// Pages of the full set in no run here.
    pub left_out: usize,
}

impl PageList {
    /// Runs kept; pages past them are counted in `left_out`.
    pub const MAX: usize = 32;

    /// From page indices in ascending order.
    pub fn new(all: &[usize]) -> Self {
        let mut runs: Vec<[usize; 2]> = Vec::new();
        let mut kept = 0;
        for &p in all {
            match runs.last_mut() {
                Some(r) if r[1] == p => r[1] += 1,
                _ => {
                    if runs.len() == Self::MAX {
                        break;
                    }
                    runs.push([p, p + 1]);
                }
            }
            kept += 1;
        }
        PageList {
            total: all.len(),
            runs,
            left_out: all.len() - kept,
        }
    }
}

impl fmt::Display for PageList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self
            .runs
            .iter()
            .map(|&[s, e]| {
                if e == s + 1 {
                    s.to_string()
                } else {
                    format!("{s}..{e}")
                }
            })
            .collect();
        write!(f, "{} pages [{}", self.total, list.join(", "))?;
        if self.left_out > 0 {
            write!(f, "; {} more left out", self.left_out)?;
        }
        write!(f, "]")
    }
}

/// How an action's own effect was judged, given the state the earlier actions left. (An action
/// that provably did nothing has no evidence: it fails the run as `error`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// The action changed what it names, seen in the state after it (not only in a return code).
    Done,
    /// What the action makes was already there when it ran (an earlier action made it): it ran,
    /// and there was nothing left for it to change. Its details say what it found.
    AlreadyDone,
}

/// One 2 MiB huge page of guest RAM as the host maps it at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HugePage {
    /// Its first byte (2 MiB aligned).
    pub hva: Hva,
    /// One PMD maps all of it (PAGEMAP_SCAN reports `PAGE_IS_HUGE` over the 2 MiB), rather
    /// than PTEs.
    pub pmd_mapped: bool,
    /// Its 4 KiB pages that are present (pagemap), of 512.
    pub present_pages: u64,
    /// Its 4 KiB pages that kpageflags marks THP (part of a large folio), of 512.
    pub thp_pages: u64,
}

impl fmt::Display for HugePage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = if self.pmd_mapped {
            "PMD-mapped"
        } else if self.thp_pages > 0 {
            "PTE-mapped THP"
        } else {
            "not THP"
        };
        write!(
            f,
            "{map} ({} present, {} THP of 512)",
            self.present_pages, self.thp_pages
        )
    }
}

/// A VMA's protection, as /proc/pid/maps prints it (`rw-p`). Serializes as that string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaPerms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` (shared) rather than `p` (private).
    pub shared: bool,
}

impl fmt::Display for VmaPerms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |on: bool, ch: char| if on { ch } else { '-' };
        write!(
            f,
            "{}{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.exec, 'x'),
            if self.shared { 's' } else { 'p' }
        )
    }
}

impl Serialize for VmaPerms {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One VMA of the VMM process, from /proc/self/maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Vma {
    pub start: Hva,
    /// One past its last byte.
    pub end: Hva,
    pub perms: VmaPerms,
}

impl fmt::Display for Vma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}..{}", self.perms, self.start, self.end)
    }
}

/// Counters of /proc/vmstat, as typed fields: `name: delta` over the action's own step.
macro_rules! counters {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: i64,)+
        }

        impl $name {
            /// The /proc/vmstat names, in field order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),+];

            /// From a `name -> delta` map (a counter this kernel lacks reads as 0).
            pub fn from_deltas(m: &BTreeMap<String, i64>) -> Self {
                $name { $($field: m.get(stringify!($field)).copied().unwrap_or(0),)+ }
            }

            /// Whether every counter stayed put.
            pub fn all_zero(&self) -> bool {
                true $(&& self.$field == 0)+
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let parts = [$(format!("{} +{}", stringify!($field), self.$field)),+];
                write!(f, "{}", parts.join(", "))
            }
        }
    };
}

mod fork;
mod ksm_shadow;
mod reclaim;
mod remap;
mod thp;
mod uffd;

pub use fork::{AtFork, Bias1024, BiasFinding, Fork, Kirill, PageKind};
pub use ksm_shadow::{KsmShadow, KsmShadowCounters, ShadowFinding};
pub use reclaim::{Compact, CompactCounters, Ksm, KsmCounters, Pageout, PageoutCounters};
pub use remap::{Dontneed, Mremap};
pub use thp::{
    Collapse, CollapseCounters, DeviceHold, FolioOutcome, MprotectRoundtrip, SplitCounters,
    SplitFolio, SplitMethod, SplitPmd, SplitStep,
};
pub use uffd::{HandlerEnd, UffdWp};

/// The action's own details: one variant per action family. Serializes with a `kind` tag beside
/// the variant's fields.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Details {
    /// fork-parent-write, fork-child-write, fork-child-exit.
    Fork(Fork),
    Kirill(Kirill),
    #[serde(rename = "bias-1024")]
    Bias1024(Bias1024),
    MprotectRoundtrip(MprotectRoundtrip),
    SplitPmd(SplitPmd),
    SplitFolio(SplitFolio),
    Collapse(Collapse),
    Ksm(Ksm),
    KsmShadow(KsmShadow),
    Compact(Compact),
    Pageout(Pageout),
    /// mremap and mremap-dontunmap.
    Mremap(Mremap),
    Dontneed(Dontneed),
    UffdWp(UffdWp),
}

impl Details {
    /// How the action's effect was judged, for the actions whose check can find the work
    /// already done (`None`: the action has no such state to find).
    pub fn effect(&self) -> Option<Effect> {
        match self {
            Details::MprotectRoundtrip(d) => Some(d.effect),
            Details::SplitPmd(d) => Some(d.effect),
            Details::SplitFolio(d) => Some(d.effect),
            Details::Collapse(d) => Some(d.effect),
            Details::Dontneed(d) => Some(d.effect),
            _ => None,
        }
    }
}

impl fmt::Display for Details {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Details::Fork(d) => d.fmt(f),
            Details::Kirill(d) => d.fmt(f),
            Details::Bias1024(d) => d.fmt(f),
            Details::MprotectRoundtrip(d) => d.fmt(f),
            Details::SplitPmd(d) => d.fmt(f),
            Details::SplitFolio(d) => d.fmt(f),
            Details::Collapse(d) => d.fmt(f),
            Details::Ksm(d) => d.fmt(f),
            Details::KsmShadow(d) => d.fmt(f),
            Details::Compact(d) => d.fmt(f),
            Details::Pageout(d) => d.fmt(f),
            Details::Mremap(d) => d.fmt(f),
            Details::Dontneed(d) => d.fmt(f),
            Details::UffdWp(d) => d.fmt(f),
        }
    }
}

/// What an action's later half found.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LaterHalf {
    /// A fork child released and reaped (fork-parent-write, kirill).
    ChildReaped {
        child: i32,
        /// Its exit status (0: every step of its plan succeeded).
        child_exit: i32,
    },
    /// The uffd-wp handler stopped and the region unprotected.
    UffdHandler {
        /// Write-protect faults the handler resolved (the guest's, taken by KVM, or the VMM's).
        write_faults_handled: u64,
        /// Region pages still uffd-wp when the handler stopped (no write reached them while
        /// protected), from PAGEMAP_SCAN before the protection is removed.
        still_protected_pages: u64,
        handler: HandlerEnd,
    },
}

impl fmt::Display for LaterHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaterHalf::ChildReaped { child, child_exit } => {
                write!(f, "child {child} released and reaped: exit {child_exit}")
            }
            LaterHalf::UffdHandler {
                write_faults_handled,
                still_protected_pages,
                handler,
            } => {
                write!(
                    f,
                    "the handler resolved {write_faults_handled} write-protect faults ({still_protected_pages} pages still protected, not written since), then "
                )?;
                match handler {
                    HandlerEnd::Stopped => write!(f, "stopped"),
                    HandlerEnd::UnprotectFailed { page, errno } => {
                        write!(f, "failed unprotecting {page} ({})", errno_name(*errno))
                    }
                }
            }
        }
    }
}

/// The symbolic name of an errno the actions meet (the number otherwise), for summaries that
/// must not carry raw OS error strings.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::EROFS => "EROFS",
        libc::EFAULT => "EFAULT",
        libc::ENOSYS => "ENOSYS",
        libc::EEXIST => "EEXIST",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Pfn;

    /// A truncated list says how many pages it left out; a bug would drop them silently.
    #[test]
    fn page_list_counts_what_it_leaves_out() {
        let all: Vec<usize> = (0..256).collect();
        let l = PageList::new(&all);
        assert_eq!(
            (l.total, l.runs.clone(), l.left_out),
            (256, vec![[0, 256]], 0)
        );
        assert_eq!(l.to_string(), "256 pages [0..256]");
        // Every other page: one run each, the list stops at MAX runs and counts the rest.
        let sparse: Vec<usize> = (0..100).map(|i| 2 * i).collect();
        let l = PageList::new(&sparse);
        assert_eq!(
            (l.total, l.runs.len(), l.left_out),
            (100, PageList::MAX, 100 - PageList::MAX)
        );
        assert!(l.to_string().ends_with("; 68 more left out]"), "{l}");
        let short = PageList::new(&[3, 7, 8]);
        assert_eq!((short.total, short.left_out), (3, 0));
        assert_eq!(short.to_string(), "3 pages [3, 7..9]");
    }

    /// Counter structs read their own names from a delta map and render every field.
    #[test]
    fn counters_from_deltas() {
        let m: BTreeMap<String, i64> = [("thp_split_page_failed".to_string(), 6)].into();
        let c = SplitCounters::from_deltas(&m);
        assert_eq!(c.thp_split_page_failed, 6);
        assert_eq!(c.thp_split_pmd, 0);
        assert!(!c.all_zero());
        assert!(SplitCounters::default().all_zero());
        assert!(c.to_string().contains("thp_split_page_failed +6"), "{c}");
        assert_eq!(SplitCounters::NAMES.len(), 4);
    }

    /// The JSON shape: a `kind` tag beside the fields, and the field names the tests and tools
    /// read (`page_kind`, `copied_at_fork`).
    #[test]
    fn details_serialize_with_a_kind_tag() {
        let d = Details::Bias1024(Bias1024 {
            references: 1100,
            page: Hva(0x1000),
            page_kind: PageKind::ThpSubpage,
            process_holds_foll_pin: true,
            copied_at_fork: false,
            parent_pfn: Some(Pfn(5)),
            child_pfn: Some(Pfn(5)),
            finding: BiasFinding::of(PageKind::ThpSubpage, false),
        });
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["kind"], "bias-1024");
        assert_eq!(v["page_kind"], "thp-subpage");
        assert_eq!(v["copied_at_fork"], false);
        assert_eq!(v["finding"], "thp-subpage-shared");
        let f = Details::Fork(Fork {
            child: 7,
            at_fork: AtFork {
                copied_at_fork: 3,
                ..AtFork::default()
            },
            dontfork: false,
            child_wrote: false,
            child_own_after_write: None,
            child_shared_after_write: None,
            child_exit: None,
        });
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["kind"], "fork");
        assert_eq!(v["copied_at_fork"], 3, "AtFork is flattened: {v}");
        let l = LaterHalf::ChildReaped {
            child: 7,
            child_exit: 0,
        };
        assert_eq!(serde_json::to_value(&l).unwrap()["child_exit"], 0);
    }

    #[test]
    fn vma_perms_render_as_maps_does() {
        let p = VmaPerms {
            read: true,
            write: false,
            exec: false,
            shared: false,
        };
        assert_eq!(p.to_string(), "r--p");
        assert_eq!(serde_json::to_value(p).unwrap(), "r--p");
    }
}

/// How a storm went: iterations planned and run, and why it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StormRun {
    pub planned: u32,
    pub ran: u32,
    /// Iterations whose actions paused the vCPU (they write guest RAM or change its mappings).
    pub paused_vcpu: u32,
    /// `all-ran`, `rounds-ended` (the guest finished first) or `failed`.
    pub ended: &'static str,
}
