//! `ksm-shadow` (finding F1, issue 16): does one pinned page stop KSM from merging the pages of
//! every other process that hold its content?
//!
//! A helper process (`shadow::ShadowVm`, another VM as far as KSM can tell) holds [`COPIES`]
//! copies of each region page and as many control pages of one other content. With ksmd
//! stopped, the VMM's region and the helper's memory become mergeable in `perturb.ksm_order`:
//! mms that enter KSM while it is stopped are scanned in that order, so `pinned-first` makes
//! each pinned page the first copy of its content that ksmd reaches, and so the unstable tree's
//! node for it (docs/findings.md F1). (Before that, ksmd runs one scan over nothing of ours, so
//! KSM's counters forget processes that exited since its last scan.) Then ksmd runs [`SCANS`] full scans and is stopped again
//! for a still picture: the helper's copies and control pages merged (KSM bit), the region's
//! frames, KSM's counters over the same interval. The control pages merging proves ksmd scanned
//! the helper; if they did not, the action provably did nothing and fails the run.
//!
//! Two copies per page, because the guest's pages all differ: with one copy, a page whose only
//! twin is pinned could never merge in either order, and the order would show nothing.
//!
//! It changes KSM's knobs only through `host` guards (run stopped while the mms enter, then
//! `host::Ksm`), undoes MADV_MERGEABLE on the region on every path (`Mergeable`), and owns the
//! helper through `ShadowVm` (killed and reaped on every path).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{madvise, moved, vmstat_now, Ctx, Done, Error, Judged, Result};
use crate::addr::{Hva, PAGE_SIZE};
use crate::evidence::{Details, Interval, KsmShadow, KsmShadowCounters, ShadowFinding};
use crate::host::{self, KnobGuard, Ksm};
use crate::scenario::{Action, KsmOrder};
use crate::shadow::{self, ShadowVm};
use crate::timeline::Mono;

/// Copies of each region page in the helper.
pub const COPIES: u64 = 2;
/// Full scans ksmd runs. smart_scan processes an unmerged page at ages 0, 1, 2, 3, 5, 8, 13 and
/// then every 9th scan, so 100 scans process each page about 15 times.
pub const SCANS: u64 = 100;
/// How long [`settle`] waits for its scan.
const SETTLE_WITHIN: Duration = Duration::from_secs(2);
/// How long the scans may take.
const SCANS_WITHIN: Duration = Duration::from_secs(120);

const A: Action = Action::KsmShadow;

fn failed(why: impl Into<String>) -> Error {
    Error::Failed {
        action: A,
        why: why.into(),
    }
}

/// MADV_MERGEABLE on a range of guest RAM, undone (MADV_UNMERGEABLE) on drop.
struct Mergeable {
    hva: Hva,
    len: u64,
}

impl Mergeable {
    fn new(hva: Hva, len: u64) -> Result<Mergeable> {
        madvise(A, hva, len, libc::MADV_MERGEABLE, "madvise(MADV_MERGEABLE)")?;
        Ok(Mergeable { hva, len })
    }
}

impl Drop for Mergeable {
    fn drop(&mut self) {
        if let Err(e) = madvise(
            A,
            self.hva,
            self.len,
            libc::MADV_UNMERGEABLE,
            "madvise(MADV_UNMERGEABLE)",
        ) {
            tracing::warn!("{e}");
        }
    }
}

/// KSM's counters at one instant.
fn ksm_counters() -> Result<Vec<u64>> {
    KsmShadowCounters::KSM_NAMES
        .iter()
        .map(|n| host::ksm_counter(n).map_err(|e| failed(format!("reading KSM counter {n}: {e}"))))
        .collect()
}

/// Runs ksmd for one full scan before anything of ours is mergeable, then stops it. KSM's
/// counters still count the pages of processes that exited (or unmerged everything) since its
/// last scan, a previous run's helper among them, until a scan reaches their mm and drops it.
/// With no mm left on KSM's list ksmd completes no scan at all: then there is nothing stale,
/// and the wait ends at its deadline.
fn settle() -> Result<()> {
    let ksm = Ksm::start(host::KsmSettings::COUNTED_SCANS)
        .map_err(|e| failed(format!("starting KSM: {e}")))?;
    let scans = ksm.wait_full_scans(1, Instant::now() + SETTLE_WITHIN);
    ksm.restore()
        .map_err(|e| failed(format!("restoring KSM knobs: {e}")))?;
    match scans {
        Ok(_) | Err(host::errors::KsmError::Timeout { .. }) => Ok(()),
        Err(e) => Err(failed(format!("settling KSM: {e}"))),
    }
}

/// The region's bytes (the guest is stopped at a phase: they do not change under us).
fn copy_region(hva: Hva, len: u64) -> Vec<u8> {
    // SAFETY: the DMA region of guest RAM, which GuestRam keeps mapped for the whole run; the
    // guest is stopped at a phase marker and the device only moves data on the guest's
    // doorbells, so nothing writes it while it is read.
    unsafe { std::slice::from_raw_parts(hva.as_ptr() as *const u8, len as usize) }.to_vec()
}

/// Pages with distinct content, by a 64-bit hash of each.
fn distinct_pages(bytes: &[u8]) -> u64 {
    let mut seen = HashSet::new();
    for page in bytes.chunks_exact(PAGE_SIZE as usize) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        page.hash(&mut h);
        seen.insert(h.finish());
    }
    seen.len() as u64
}

/// ksm-shadow: see the module header.
pub fn ksm_shadow(ctx: &Ctx) -> Result<Done> {
    let order = ctx.scenario.perturb.ksm_order;
    let (region, len) = ctx.region();
    let region_pages = len / PAGE_SIZE;
    let ksm_dir = Path::new(host::KSM_DIR);
    let run = host::read_knob(&ksm_dir.join("run"))
        .map_err(|e| failed(format!("reading KSM's run: {e}")))?;
    // ksmd stays stopped while the two mms enter KSM, so their order on its list is ours.
    let stopped = if run == "0" {
        None
    } else {
        Some(
            KnobGuard::set(ksm_dir.join("run"), "0")
                .map_err(|e| failed(format!("stopping ksmd: {e}")))?,
        )
    };
    let smart_scan = host::read_knob(&ksm_dir.join("smart_scan"))
        .ok()
        .map(|v| v == "1");
    let content = copy_region(region, len);
    let region_distinct = distinct_pages(&content);
    let pfns_before = super::observed(
        A,
        "read /proc/self/pagemap",
        crate::pfn::pfns(region, len).map_err(std::io::Error::other),
    )?;

    settle()?;
    let start = Mono::now();
    let vm_before = vmstat_now();
    let ksm_before = ksm_counters()?;
    let spawn = || ShadowVm::spawn(&content, COPIES).map_err(|e| failed(e.to_string()));
    let (mergeable, helper) = match order {
        KsmOrder::PinnedFirst => {
            let m = Mergeable::new(region, len)?;
            (m, spawn()?)
        }
        KsmOrder::ShadowFirst => {
            let h = spawn()?;
            (Mergeable::new(region, len)?, h)
        }
    };
    let at_ready = helper.frames().map_err(|e| failed(e.to_string()))?;

    let ksm = Ksm::start(host::KsmSettings::COUNTED_SCANS)
        .map_err(|e| failed(format!("starting KSM: {e}")))?;
    let scans = ksm.wait_full_scans(SCANS, Instant::now() + SCANS_WITHIN);
    // Stopping ksmd (run back to 0) waits for its batch in progress: the picture below is still.
    ksm.restore()
        .map_err(|e| failed(format!("restoring KSM knobs: {e}")))?;
    let reached = scans.map_err(|e| failed(format!("waiting for {SCANS} KSM full scans: {e}")))?;
    let ksm_after = ksm_counters()?;
    let cow = moved(&vm_before, &["cow_ksm"]);
    let interval = Interval::since(start);
    let end = helper.frames().map_err(|e| failed(e.to_string()))?;
    let region_now = super::observed(
        A,
        "read the region's pagemap and kpageflags",
        crate::pfn::snapshot(region, len).map_err(std::io::Error::other),
    )?;
    drop(mergeable);
    let pid = helper.pid();
    let ready = helper.ready();
    let helper_exit = helper.finish().map_err(|e| failed(e.to_string()))?;
    drop(stopped);
    if helper_exit != 0 {
        return Err(failed(format!("the helper exited {helper_exit}")));
    }

    let mut deltas: std::collections::BTreeMap<String, i64> = KsmShadowCounters::KSM_NAMES
        .iter()
        .zip(ksm_before.iter().zip(&ksm_after))
        .map(|(n, (b, a))| (n.to_string(), *a as i64 - *b as i64))
        .collect();
    deltas.extend(cow);
    let counters = KsmShadowCounters::from_deltas(&deltas);
    let x_pfns_changed = crate::pfn::diff_pfns(&at_ready.x_pfns, &end.x_pfns).len() as u64;
    let finding = ShadowFinding::of(end.x_ksm, ready.x_pages, end.y_ksm);
    let judged = if finding == ShadowFinding::Inconclusive {
        Judged::NoEffect(
            "KSM merged none of the helper's control pages: it did not scan the helper",
        )
    } else {
        Judged::Done
    };
    let d = KsmShadow {
        order,
        smart_scan,
        helper: pid,
        helper_exit,
        region_pages,
        region_distinct_pages: region_distinct,
        copies: COPIES,
        x_pages: ready.x_pages,
        x_merged: end.x_ksm,
        x_pfns_changed,
        x_frames: shadow::distinct_frames(&end.x_pfns),
        y_pages: ready.y_pages,
        y_merged: end.y_ksm,
        region_ksm_pages: region_now.summary.ksm,
        region_pfns_kept: crate::pfn::diff_pfns(&pfns_before, &region_now.pfns()).is_empty(),
        full_scans_reached: reached,
        interval,
        counters,
        finding,
    };
    Done::judged(A, Details::KsmShadow(d), judged)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identical pages count once, a page differing in one byte counts again.
    #[test]
    fn distinct_pages_counts_contents() {
        let mut bytes = vec![7u8; 4 * PAGE_SIZE as usize];
        assert_eq!(distinct_pages(&bytes), 1);
        bytes[PAGE_SIZE as usize * 2 + 9] = 8;
        assert_eq!(distinct_pages(&bytes), 2);
    }
}
