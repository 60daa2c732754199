//! THP actions: PMD split (mprotect round trip, a partial discard), folio split, collapse.

use serde_json::json;

use super::{madvise, moved, split_pmd_by_mprotect, vmstat_now, Ctx, Done, Error, Result};
use crate::addr::{Hva, PAGE_SIZE};
use crate::scenario::Action;

/// PROT_READ then PROT_READ|PROT_WRITE on the region's first page: the PMD is split and the
/// page write-protected, so the guest's next write to it is a write fault on a pinned page.
pub fn mprotect_roundtrip(ctx: &Ctx) -> Result<Done> {
    let a = Action::MprotectRoundtrip;
    let (hva, _) = ctx.region();
    let before = vmstat_now();
    split_pmd_by_mprotect(a, hva)?;
    let counters = moved(&before, &["thp_split_pmd"]);
    let split = counters.get("thp_split_pmd").copied().unwrap_or(0);
    let mut done = Done::new(
        format!("mprotect(PROT_READ) and back on the region's first page at {hva}; thp_split_pmd +{split}"),
        json!({ "page": hva, "thp_split_pmd": split }),
    );
    if split == 0 && ctx.scenario.vm.thp {
        done.no_effect = Some("thp_split_pmd did not move: the page was not PMD-mapped".into());
    }
    Ok(done)
}

/// MADV_DONTNEED on one 4 KiB page of the region's huge page, outside the region.
pub fn split_pmd(ctx: &Ctx) -> Result<Done> {
    let a = Action::SplitPmd;
    let before = vmstat_now();
    let page = discard_page_beside_region(ctx, a, || {
        "the region fills its huge pages: no page beside it to discard (use a smaller region or an offset)".into()
    })?;
    let counters = moved(&before, &["thp_split_pmd"]);
    let split = counters.get("thp_split_pmd").copied().unwrap_or(0);
    let mut done = Done::new(
        format!("MADV_DONTNEED on the page at {page} beside the region; thp_split_pmd +{split}"),
        json!({ "page": page, "thp_split_pmd": split }),
    );
    if split == 0 {
        done.no_effect = Some("thp_split_pmd did not move".into());
    }
    Ok(done)
}

/// Tries to split the compound page itself. debugfs `split_huge_pages` where writable; else a
/// partial MADV_DONTNEED (queues the folio for deferred split) and `drop_caches=2` (runs the
/// deferred-split shrinker). kpageflags says whether the region's pages are still THP: a
/// pinned folio must not be split.
pub fn split_folio(ctx: &Ctx) -> Result<Done> {
    let a = Action::SplitFolio;
    let before = vmstat_now();
    let (huge, huge_len) = ctx.region_huge_range();
    let debugfs = std::fs::OpenOptions::new()
        .write(true)
        .open("/sys/kernel/debug/split_huge_pages")
        .and_then(|mut f| {
            use std::io::Write;
            let cmd = format!(
                "{},{:#x},{:#x}",
                std::process::id(),
                huge.raw(),
                huge.raw() + huge_len
            );
            f.write_all(cmd.as_bytes())
        });
    let method = match &debugfs {
        Ok(()) => "debugfs split_huge_pages".to_string(),
        Err(e) => {
            // Lockdown: debugfs is read-only (EPERM) or absent. Fall back.
            discard_page_beside_region(ctx, a, || {
                format!("debugfs split_huge_pages unusable ({e}) and the region fills its huge pages, so no partial discard is possible")
            })?;
            crate::host::trigger(std::path::Path::new("/proc/sys/vm/drop_caches"), "2").map_err(
                |e| Error::Failed {
                    action: a,
                    why: format!("drop_caches: {e}"),
                },
            )?;
            format!("partial MADV_DONTNEED + drop_caches=2 (debugfs: {e})")
        }
    };
    let counters = moved(
        &before,
        &[
            "thp_split_pmd",
            "thp_split_page",
            "thp_split_page_failed",
            "thp_deferred_split_page",
        ],
    );
    let probe = ctx.probe();
    let pages = probe.pfns.len();
    let mut done = Done::new(
        format!(
            "{method}; region pages still THP: {}/{pages}; {}",
            probe.thp,
            counters
                .iter()
                .map(|(k, v)| format!("{k} +{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        json!({
            "method": method,
            "region_pages": pages,
            "region_thp_pages": probe.thp,
            "folio_split": probe.thp == 0 && ctx.scenario.vm.thp,
            "counters": counters,
        }),
    );
    if counters.values().all(|&v| v == 0) {
        done.no_effect =
            Some("no split counter moved (thp_split_*, thp_deferred_split_page)".into());
    }
    Ok(done)
}

/// MADV_COLLAPSE of the region's huge pages after a PMD split. A pinned page must not be
/// collapsed (it would be copied into a new huge page the device does not hold).
pub fn collapse(ctx: &Ctx) -> Result<Done> {
    let before = vmstat_now();
    let split = split_first(ctx)?;
    let (huge, len) = ctx.region_huge_range();
    // SAFETY: guest RAM's own huge pages; MADV_COLLAPSE only changes their backing.
    let rc = unsafe {
        libc::madvise(
            huge.as_ptr() as *mut libc::c_void,
            len as usize,
            libc::MADV_COLLAPSE,
        )
    };
    let result = if rc == 0 {
        "ok".to_string()
    } else {
        std::io::Error::last_os_error().to_string()
    };
    let counters = moved(
        &before,
        &[
            "thp_split_pmd",
            "thp_collapse_alloc",
            "thp_collapse_alloc_failed",
        ],
    );
    let mut done = Done::new(
        format!("{split}; MADV_COLLAPSE over {len:#x} bytes at {huge}: {result}"),
        json!({ "split": split, "collapse": result, "counters": counters }),
    );
    if counters.values().all(|&v| v == 0) && rc != 0 {
        done.no_effect = Some(format!("nothing split and MADV_COLLAPSE failed: {result}"));
    }
    Ok(done)
}

/// MADV_DONTNEED on a 4 KiB page of the region's huge page outside the region (a PMD split
/// that leaves the region's pages mapped), or `Failed` with `why_none` when the region fills it.
fn discard_page_beside_region(
    ctx: &Ctx,
    action: Action,
    why_none: impl FnOnce() -> String,
) -> Result<Hva> {
    let page = ctx.page_beside_region().ok_or_else(|| Error::Failed {
        action,
        why: why_none(),
    })?;
    madvise(
        action,
        page,
        PAGE_SIZE,
        libc::MADV_DONTNEED,
        "madvise(MADV_DONTNEED)",
    )?;
    Ok(page)
}

/// A PMD split of the region's huge page, by discarding a page beside the region, or by an
/// mprotect round trip when the region fills it.
fn split_first(ctx: &Ctx) -> Result<String> {
    let a = Action::Collapse;
    if ctx.page_beside_region().is_some() {
        let page = discard_page_beside_region(ctx, a, String::new)?;
        return Ok(format!("split: MADV_DONTNEED of {page}"));
    }
    let (hva, _) = ctx.region();
    split_pmd_by_mprotect(a, hva)?;
    Ok(format!("split: mprotect round trip of {hva}"))
}
