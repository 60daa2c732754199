//! The coherence oracle: one verdict from three sources that must agree or be explained.
//!
//! The guest's per-page checks (device writes it did not see, device reads that disagree with
//! what it wrote), the device's completion statuses, and PFN evidence (pinned PFN at map time vs
//! the PFN guest RAM maps now). A divergence says in which direction and for which pages; when
//! data and PFNs disagree, the reason says so. The lab's own failures are `error`, never a
//! verdict about the kernel.

use pinlab_abi as abi;
use serde::Serialize;

use crate::devices::iommu::PinEvidence;
use crate::scenario::{GuestMode, Verdict};

/// What the guest reported, in the VMM's terms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GuestSummary {
    pub status: &'static str,
    pub rounds_done: u32,
    pub region_pages: u32,
    pub write_lost_pages: u32,
    pub read_stale_pages: u32,
    pub dma_errors: u32,
    pub unsupported_descriptors: u32,
    pub first_error_status: Option<&'static str>,
    /// (round, page) of the first failure per direction.
    pub first_write_lost: Option<(u32, u32)>,
    pub first_read_stale: Option<(u32, u32)>,
    /// Pages that ever failed, per direction (page indices in the region, first 64).
    pub write_lost_page_list: Vec<u32>,
    pub read_stale_page_list: Vec<u32>,
    /// Rounds with a failure (round, lost, stale, errors), first 32.
    pub failing_rounds: Vec<(u32, u32, u32, u32)>,
}

fn pages_of(bitmap: &[u64], limit: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for (w, &bits) in bitmap.iter().enumerate() {
        let mut b = bits;
        while b != 0 && out.len() < limit {
            let i = b.trailing_zeros();
            out.push(w as u32 * 64 + i);
            b &= b - 1;
        }
    }
    out
}

fn first(pair: [u32; 2]) -> Option<(u32, u32)> {
    (pair[0] != u32::MAX).then_some((pair[0], pair[1]))
}

impl GuestSummary {
    pub fn from_report(r: &abi::Report) -> Self {
        let n = (r.round_records as usize).min(abi::MAX_ROUND_RECORDS);
        GuestSummary {
            status: if r.status == abi::GUEST_OK {
                "ok"
            } else {
                "aborted"
            },
            rounds_done: r.rounds_done,
            region_pages: r.region_pages,
            write_lost_pages: r.write_lost_pages,
            read_stale_pages: r.read_stale_pages,
            dma_errors: r.dma_errors,
            unsupported_descriptors: r.unsupported,
            first_error_status: (r.first_error_status != 0)
                .then(|| abi::status_name(r.first_error_status)),
            first_write_lost: first(r.first_write_lost),
            first_read_stale: first(r.first_read_stale),
            write_lost_page_list: pages_of(&r.write_lost_bitmap, 64),
            read_stale_page_list: pages_of(&r.read_stale_bitmap, 64),
            failing_rounds: r.rounds[..n]
                .iter()
                .filter(|x| x.write_lost_pages + x.read_stale_pages + x.dma_errors > 0)
                .take(32)
                .map(|x| {
                    (
                        x.round,
                        x.write_lost_pages,
                        x.read_stale_pages,
                        x.dma_errors,
                    )
                })
                .collect(),
        }
    }
}

/// One hostile class: what the VMM answered against what it must answer.
#[derive(Clone, Debug, Serialize)]
pub struct HostileRow {
    pub class: &'static str,
    pub expected: &'static str,
    pub answered: &'static str,
    pub rejected: bool,
}

pub fn hostile_rows(r: &abi::Report) -> Vec<HostileRow> {
    abi::HOSTILE_CLASSES
        .iter()
        .zip(r.hostile_status.iter())
        .map(|(&(class, want), &got)| HostileRow {
            class,
            expected: abi::status_name(want),
            answered: abi::status_name(got),
            rejected: got == want,
        })
        .collect()
}

/// The facts a verdict is drawn from.
pub struct Facts<'a> {
    pub mode: GuestMode,
    pub rounds_wanted: u32,
    pub guest: Option<&'a abi::Report>,
    /// Why the run did not reach the guest's report, if it did not.
    pub failure: Option<String>,
    pub pins: &'a [PinEvidence],
    /// Where the guest's region page 0 is: the guest's per-page bitmaps count from here.
    pub region_gpa: crate::addr::Gpa,
    /// The control group holds no pin: its "pinned" PFNs are only where the pages were at map
    /// time, and the device follows the mapping when they move.
    pub control_group: bool,
    /// The pin cannot move data (VFIO with no driver for the device): every descriptor answers
    /// `unsupported`, and the verdict rests on the PFN evidence alone.
    pub pfn_evidence_only: bool,
}

/// Diverged pages (lost device writes or stale device reads) that no PFN change explains.
#[derive(Debug, Default, PartialEq, Eq)]
struct Unexplained {
    count: usize,
    first: Option<usize>,
}

fn unexplained_pages(
    r: &abi::Report,
    pins: &[PinEvidence],
    region: crate::addr::Gpa,
) -> Unexplained {
    let pages = (r.region_pages as usize).min(abi::MAX_REGION_PAGES);
    let mut out = Unexplained::default();
    for page in 0..pages {
        let (w, bit) = (page / 64, 1u64 << (page % 64));
        if (r.write_lost_bitmap[w] | r.read_stale_bitmap[w]) & bit == 0 {
            continue;
        }
        let gpa = region
            .checked_add(page as u64 * crate::addr::PAGE_SIZE)
            .unwrap_or(region);
        if !pins.iter().any(|p| p.changed_at(gpa)) {
            out.count += 1;
            out.first.get_or_insert(page);
        }
    }
    out
}

/// The verdict and its one-line reason.
pub fn judge(f: &Facts<'_>) -> (Verdict, Option<String>) {
    if let Some(why) = &f.failure {
        return (Verdict::Error, Some(why.clone()));
    }
    let Some(r) = f.guest else {
        return (Verdict::Error, Some("the guest sent no report".into()));
    };
    if r.status != abi::GUEST_OK {
        return (
            Verdict::Error,
            Some("the guest aborted (see its console output)".into()),
        );
    }
    match f.mode {
        GuestMode::Boot => return (Verdict::Coherent, None),
        GuestMode::Spin => {
            return (
                Verdict::Error,
                Some("a spinning guest reported done".into()),
            )
        }
        GuestMode::ConsoleFlood => {
            return (
                Verdict::Error,
                Some("a flooding guest reported done".into()),
            )
        }
        GuestMode::Hostile => {
            let rows = hostile_rows(r);
            let missed: Vec<_> = rows.iter().filter(|x| !x.rejected).collect();
            return if missed.is_empty() && r.hostile_recovered == 1 {
                (Verdict::Coherent, None)
            } else if !missed.is_empty() {
                let list: Vec<String> = missed
                    .iter()
                    .map(|x| format!("{} answered {} (want {})", x.class, x.answered, x.expected))
                    .collect();
                (
                    Verdict::Error,
                    Some(format!(
                        "hostile requests not rejected as they must be: {}",
                        list.join("; ")
                    )),
                )
            } else {
                (
                    Verdict::Error,
                    Some("after the hostile requests a valid map and DMA did not work".into()),
                )
            };
        }
        // The repeats were refused by the VMM (counted on the timeline): judged as DMA.
        GuestMode::Dma | GuestMode::PhaseRepeat => {}
    }
    if r.rounds_done < f.rounds_wanted {
        return (
            Verdict::Error,
            Some(format!(
                "the guest finished {} of {} rounds",
                r.rounds_done, f.rounds_wanted
            )),
        );
    }
    if r.dma_errors > 0 {
        return (
            Verdict::Error,
            Some(format!(
                "{} DMA descriptors failed (first status: {})",
                r.dma_errors,
                abi::status_name(r.first_error_status)
            )),
        );
    }
    let changed: usize = f.pins.iter().map(|p| p.pinned_pfns_changed_pages).sum();
    let unreadable = f.pins.iter().find_map(|p| p.unreadable.clone());
    let pfn_note = match (&unreadable, changed) {
        (Some(why), _) => format!("PFN evidence unavailable: {why}"),
        (None, 0) => "pinned PFNs are still the mapped ones".to_string(),
        (None, n) if f.control_group => format!(
            "{n} pages moved since map time; the control group holds no pin and follows them"
        ),
        (None, n) => {
            let first = f.pins.iter().find_map(|p| p.changed.first());
            match first {
                Some(c) => format!(
                    "{n} pinned pages are no longer mapped (first: region page {} at {}: pinned {}, mapped {})",
                    c.page,
                    c.gpa,
                    c.pinned.map_or("none".into(), |p| p.to_string()),
                    c.mapped.map_or("none".into(), |p| p.to_string())
                ),
                None => format!("{n} pinned pages are no longer mapped"),
            }
        }
    };
    if f.pfn_evidence_only {
        return judge_pfn_only(r, changed, unreadable, &pfn_note);
    }
    let unsupported = if r.unsupported > 0 {
        format!(
            "; {} device-write descriptors answered 'unsupported' (this pin mechanism cannot write), so only device reads were checked",
            r.unsupported
        )
    } else {
        String::new()
    };
    if r.write_lost_pages > 0 || r.read_stale_pages > 0 {
        let mut dirs = Vec::new();
        if r.write_lost_pages > 0 {
            dirs.push(format!(
                "device writes lost on {} pages (first: round {}, page {})",
                r.write_lost_pages, r.first_write_lost[0], r.first_write_lost[1]
            ));
        }
        if r.read_stale_pages > 0 {
            dirs.push(format!(
                "device reads stale on {} pages (first: round {}, page {})",
                r.read_stale_pages, r.first_read_stale[0], r.first_read_stale[1]
            ));
        }
        // A divergence is a statement about the kernel only when PFN evidence explains it:
        // every page whose data diverged must be a page whose pinned PFN is no longer mapped.
        let summary = format!("{}; {pfn_note}{unsupported}", dirs.join("; "));
        if let Some(why) = &unreadable {
            return (
                Verdict::Error,
                Some(format!(
                    "{summary}; the lab is suspect: the data diverged but the PFN evidence that could explain it is unavailable ({why})"
                )),
            );
        }
        let unexplained = unexplained_pages(r, f.pins, f.region_gpa);
        if unexplained.count > 0 && !f.control_group {
            return (
                Verdict::Error,
                Some(format!(
                    "{summary}; the lab is suspect, not the kernel: data and PFN evidence disagree on {} of the diverged pages (first: region page {}), whose pinned PFN is still the mapped one",
                    unexplained.count,
                    unexplained.first.unwrap_or(0)
                )),
            );
        }
        if f.control_group {
            return (
                Verdict::Error,
                Some(format!(
                    "{summary}; the lab is suspect: the control group has no pin, so its device follows the mapping and cannot diverge"
                )),
            );
        }
        return (Verdict::Diverged, Some(summary));
    }
    if changed > 0 {
        // Coherent data over remapped pages can happen (the pin moved with the data, or the
        // guest never touched the page again); say it rather than hide it.
        return (
            Verdict::Coherent,
            Some(format!("data coherent, but {pfn_note}{unsupported}")),
        );
    }
    (
        Verdict::Coherent,
        (!unsupported.is_empty()).then(|| unsupported.trim_start_matches("; ").to_string()),
    )
}

/// The verdict of a pin that moves no data: PFNs pinned at map time against PFNs mapped now.
fn judge_pfn_only(
    r: &abi::Report,
    changed: usize,
    unreadable: Option<String>,
    pfn_note: &str,
) -> (Verdict, Option<String>) {
    const ONLY: &str = "PFN evidence only";
    if r.write_lost_pages > 0 || r.read_stale_pages > 0 {
        return (
            Verdict::Error,
            Some(format!(
                "{ONLY}, yet the guest checked data ({} lost, {} stale pages) that no device moved",
                r.write_lost_pages, r.read_stale_pages
            )),
        );
    }
    let no_dma = format!(
        "the device was not made to DMA ({} descriptors answered 'unsupported': no driver for it)",
        r.unsupported
    );
    match (unreadable, changed) {
        (Some(_), _) => (Verdict::Error, Some(format!("{ONLY}: {pfn_note}"))),
        (None, 0) => (
            Verdict::Coherent,
            Some(format!("{ONLY}: {pfn_note}; {no_dma}")),
        ),
        (None, _) => (
            Verdict::Diverged,
            Some(format!("{ONLY}: {pfn_note}; {no_dma}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Gpa, Iova, Pfn};
    use crate::devices::iommu::PfnChange;

    fn report(unsupported: u32, lost: u32, stale: u32) -> abi::Report {
        // SAFETY: every field of the report is an integer or an array of integers, for which
        // all-zero bytes are a valid value.
        let mut r: abi::Report = unsafe { std::mem::zeroed() };
        r.status = abi::GUEST_OK;
        r.rounds_done = 8;
        r.unsupported = unsupported;
        r.write_lost_pages = lost;
        r.read_stale_pages = stale;
        r
    }

    fn pins(changed: usize, unreadable: Option<&str>) -> Vec<PinEvidence> {
        vec![PinEvidence {
            iova: Iova(0x10_0000),
            gpa: Gpa(0x40_0000),
            len: 2 << 20,
            pages: 512,
            pinned_pfns_changed_pages: changed,
            changed: (0..changed.min(1))
                .map(|_| PfnChange {
                    page: 0,
                    gpa: Gpa(0x40_0000),
                    pinned: Some(Pfn(5)),
                    mapped: Some(Pfn(6)),
                })
                .collect(),
            changed_left_out: changed.saturating_sub(1),
            changed_runs: if changed > 0 {
                vec![[0, changed]]
            } else {
                Vec::new()
            },
            unreadable: unreadable.map(str::to_string),
        }]
    }

    /// A DMA run whose guest saw `lost` pages lose device writes (pages 0..lost of the region
    /// at the pins' GPA), judged against pins with `changed` pages 0..changed moved.
    fn judge_dma(lost: u32, changed: usize, control_group: bool) -> (Verdict, String) {
        let mut r = report(0, lost, 0);
        r.region_pages = 512;
        for page in 0..lost as usize {
            r.write_lost_bitmap[page / 64] |= 1 << (page % 64);
        }
        let p = pins(changed, None);
        let (v, reason) = judge(&Facts {
            mode: GuestMode::Dma,
            rounds_wanted: 8,
            guest: Some(&r),
            failure: None,
            pins: &p,
            region_gpa: Gpa(0x40_0000),
            control_group,
            pfn_evidence_only: false,
        });
        (v, reason.unwrap_or_default())
    }

    /// `diverged` is a statement about the kernel only when PFN evidence explains the data.
    /// Each row: (what, lost pages, changed pages, control group, verdict). A bug would call
    /// the lab's own corruption (data diverged over pinned PFNs still mapped) a kernel
    /// divergence.
    #[test]
    fn divergence_needs_pfn_evidence_for_every_diverged_page() {
        let rows = [
            (
                "explained: every lost page moved",
                512,
                512,
                false,
                Verdict::Diverged,
            ),
            (
                "explained: more moved than lost",
                10,
                512,
                false,
                Verdict::Diverged,
            ),
            (
                "nothing moved: the lab is suspect",
                512,
                0,
                false,
                Verdict::Error,
            ),
            ("half unexplained", 512, 256, false, Verdict::Error),
            ("control group cannot diverge", 4, 4, true, Verdict::Error),
            (
                "coherent data over moved pages",
                0,
                512,
                false,
                Verdict::Coherent,
            ),
            ("coherent", 0, 0, false, Verdict::Coherent),
        ];
        for (what, lost, changed, control, want) in rows {
            let (v, reason) = judge_dma(lost, changed, control);
            assert_eq!(v, want, "{what}: {reason}");
            if want == Verdict::Error {
                assert!(reason.contains("suspect"), "{what}: {reason}");
            }
        }
        let (_, reason) = judge_dma(512, 256, false);
        assert!(
            reason.contains("256 of the diverged pages (first: region page 256)"),
            "{reason}"
        );
    }

    /// A pin that moves no data (vfio): each row is (what, changed pages, unreadable, lost,
    /// stale, verdict). The verdict follows the PFNs alone and always says so; a guest data
    /// check on such a pin is the lab's fault. A bug would call a discarded VFIO range coherent
    /// because no data check failed, or hide that nothing was DMAed.
    #[test]
    fn pfn_evidence_only_verdicts() {
        type Row = (&'static str, usize, Option<&'static str>, u32, u32, Verdict);
        let rows: &[Row] = &[
            ("PFNs unchanged", 0, None, 0, 0, Verdict::Coherent),
            (
                "pinned pages no longer mapped",
                512,
                None,
                0,
                0,
                Verdict::Diverged,
            ),
            (
                "PFNs unreadable",
                0,
                Some("pagemap: EPERM"),
                0,
                0,
                Verdict::Error,
            ),
            ("a data check ran anyway", 0, None, 3, 0, Verdict::Error),
            (
                "a stale read counted anyway",
                512,
                None,
                0,
                9,
                Verdict::Error,
            ),
        ];
        for &(what, changed, unreadable, lost, stale, want) in rows {
            let r = report(64, lost, stale);
            let p = pins(changed, unreadable);
            let (verdict, reason) = judge(&Facts {
                mode: GuestMode::Dma,
                rounds_wanted: 8,
                guest: Some(&r),
                failure: None,
                pins: &p,
                region_gpa: Gpa(0x40_0000),
                control_group: false,
                pfn_evidence_only: true,
            });
            let reason = reason.unwrap_or_default();
            assert_eq!(verdict, want, "{what}: {reason}");
            assert!(reason.starts_with("PFN evidence only"), "{what}: {reason}");
            if want != Verdict::Error {
                assert!(
                    reason.contains("64 descriptors answered 'unsupported'"),
                    "{what}: {reason}"
                );
            }
        }
    }
}
