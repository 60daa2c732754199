//! The coherence oracle: one verdict from three sources that must agree or be explained.
//!
//! The guest's per-page checks (device writes it did not see, device reads that disagree with
//! what it wrote), the device's completion statuses, and PFN evidence (pinned PFN at map time vs
//! the PFN guest RAM maps now). A divergence says in which direction and for which pages; when
//! data and PFNs disagree, the reason says so. The lab's own failures are `error`, never a
//! verdict about the kernel.
//!
//! Everything in the guest's report is untrusted: counters may be anything a u32 holds, indices
//! and status codes may be out of range, the record count may exceed what the report holds.
//! Decoding never does arithmetic that can overflow on them (it compares, or saturates) and
//! never indexes with them unchecked.

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
    /// Fuzz mode: the hostile operations sent and the valid checks made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuzz: Option<FuzzSummary>,
}

/// The first valid check that failed in fuzz mode.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FuzzFailure {
    /// Which check (`abi::FUZZ_CHECKS`, or "unknown").
    pub check: &'static str,
    /// Hostile operations sent before it.
    pub after_ops: u64,
    /// The status the device answered the check's request with.
    pub status: &'static str,
}

/// What a fuzz-mode guest reported, in the VMM's terms.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FuzzSummary {
    pub ops: u64,
    /// Hostile operations per kind (`abi::FUZZ_KINDS`).
    pub per_kind: Vec<(&'static str, u64)>,
    pub valid_passed: u32,
    pub valid_failed: u32,
    pub first_failure: Option<FuzzFailure>,
    pub phases_sent: u32,
    pub hostile_accepted: u32,
    /// The hash of every answer the VMM gave, as hex: equal for equal seeds.
    pub digest: String,
}

/// The name of fuzz check `n` (1-based, as the guest numbers them), or "unknown".
fn fuzz_check_name(n: u32) -> &'static str {
    n.checked_sub(1)
        .and_then(|i| abi::FUZZ_CHECKS.get(i as usize))
        .copied()
        .unwrap_or("unknown")
}

impl FuzzSummary {
    pub fn from_report(r: &abi::Report) -> Self {
        let t = &r.fuzz;
        FuzzSummary {
            ops: t.ops,
            per_kind: abi::FUZZ_KINDS
                .iter()
                .copied()
                .zip(t.per_kind.iter().copied())
                .collect(),
            valid_passed: t.valid_passed,
            valid_failed: t.valid_failed,
            first_failure: (t.first_failed_check != 0).then(|| FuzzFailure {
                check: fuzz_check_name(t.first_failed_check),
                after_ops: t.first_failed_op,
                status: abi::status_name(t.first_failed_status),
            }),
            phases_sent: t.phases_sent,
            hostile_accepted: t.hostile_accepted,
            digest: format!("{:#018x}", t.digest),
        }
    }
}

/// The guest's outcome code, by name ("invalid" for a code the ABI does not define).
fn guest_status_name(status: u32) -> &'static str {
    match status {
        abi::GUEST_OK => "ok",
        abi::GUEST_ABORTED => "aborted",
        _ => "invalid",
    }
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
            status: guest_status_name(r.status),
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
            // Any nonzero counter fails the round: no sum of guest counters (a wrapping sum of
            // u32::MAX and 1 would hide the round).
            failing_rounds: r.rounds[..n]
                .iter()
                .filter(|x| x.write_lost_pages != 0 || x.read_stale_pages != 0 || x.dma_errors != 0)
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
            fuzz: None,
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
    /// Fuzz mode: the hostile operations the guest was told to send.
    pub fuzz_ops: u64,
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
        GuestMode::Fuzz => return judge_fuzz(r, f.rounds_wanted, f.fuzz_ops),
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
    let changed = f
        .pins
        .iter()
        .fold(0usize, |n, p| n.saturating_add(p.pinned_pfns_changed_pages));
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

/// The verdict of a fuzz run: the VMM survived (the report arrived, checked by the caller), the
/// guest sent what it was told to, and every valid check it made between the hostile operations
/// passed. Anything else is the lab's failure: a VMM that let hostile traffic break valid traffic.
fn judge_fuzz(r: &abi::Report, rounds_wanted: u32, ops_wanted: u64) -> (Verdict, Option<String>) {
    let s = FuzzSummary::from_report(r);
    if s.ops != ops_wanted || r.rounds_done < rounds_wanted {
        return (
            Verdict::Error,
            Some(format!(
                "the fuzzing guest sent {} of {ops_wanted} hostile operations over {} of {rounds_wanted} rounds",
                s.ops, r.rounds_done
            )),
        );
    }
    if let Some(first) = &s.first_failure {
        return (
            Verdict::Error,
            Some(format!(
                "{} valid checks failed among the hostile traffic (first: {} after {} hostile operations, status {}); {} passed",
                s.valid_failed, first.check, first.after_ops, first.status, s.valid_passed
            )),
        );
    }
    if s.valid_failed != 0 || s.valid_passed == 0 {
        return (
            Verdict::Error,
            Some(format!(
                "the fuzzing guest's valid checks are not usable: {} passed, {} failed, no first failure",
                s.valid_passed, s.valid_failed
            )),
        );
    }
    (
        Verdict::Coherent,
        Some(format!(
            "{} hostile operations answered ({} accepted, {} of them phase markers); all {} valid checks passed; digest {}",
            s.ops, s.hostile_accepted, s.phases_sent, s.valid_passed, s.digest
        )),
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

    fn facts<'a>(mode: GuestMode, r: &'a abi::Report, pins: &'a [PinEvidence]) -> Facts<'a> {
        Facts {
            mode,
            rounds_wanted: 8,
            fuzz_ops: 20_000,
            guest: Some(r),
            failure: None,
            pins,
            region_gpa: Gpa(0x40_0000),
            control_group: false,
            pfn_evidence_only: false,
        }
    }

    /// Issue 10 item 7: every guest-supplied counter at its extremes. Each row edits a clean
    /// report and says what the decoding must show. A bug: a round whose counters sum to 0 by
    /// wrapping (u32::MAX + 1) hidden from the failing rounds (a release build used to), a panic
    /// on overflow (a debug build used to: exit 101), records read past what the report holds,
    /// or an out-of-range code taken for a valid one.
    #[test]
    fn report_decoding_survives_extreme_counters() {
        type Edit = fn(&mut abi::Report);
        type Check = fn(&GuestSummary) -> bool;
        let max = u32::MAX;
        let rows: &[(&str, Edit, Check)] = &[
            (
                "a round of u32::MAX + 1 failing pages",
                |r| {
                    r.round_records = 1;
                    r.rounds[0] = abi::RoundRecord {
                        round: 3,
                        write_lost_pages: u32::MAX,
                        read_stale_pages: 1,
                        dma_errors: 0,
                    };
                },
                |s| s.failing_rounds == [(3, u32::MAX, 1, 0)],
            ),
            (
                "every counter of a round at u32::MAX",
                |r| {
                    r.round_records = 2;
                    r.rounds[1] = abi::RoundRecord {
                        round: 9,
                        write_lost_pages: u32::MAX,
                        read_stale_pages: u32::MAX,
                        dma_errors: u32::MAX,
                    };
                },
                |s| s.failing_rounds == [(9, u32::MAX, u32::MAX, u32::MAX)],
            ),
            (
                "round_records u32::MAX: only the records the report holds, first 32",
                |r| {
                    r.round_records = u32::MAX;
                    for (i, x) in r.rounds.iter_mut().enumerate() {
                        *x = abi::RoundRecord {
                            round: i as u32,
                            write_lost_pages: 0,
                            read_stale_pages: 0,
                            dma_errors: (i >= abi::MAX_ROUND_RECORDS - 2) as u32,
                        };
                    }
                },
                |s| {
                    let last = abi::MAX_ROUND_RECORDS as u32 - 1;
                    s.failing_rounds == [(last - 1, 0, 0, 1), (last, 0, 0, 1)]
                },
            ),
            (
                "round_records one past the report's capacity",
                |r| {
                    r.round_records = abi::MAX_ROUND_RECORDS as u32 + 1;
                    for x in r.rounds.iter_mut() {
                        x.dma_errors = 1;
                    }
                },
                |s| s.failing_rounds.len() == 32,
            ),
            (
                "status out of range",
                |r| r.status = 7,
                |s| s.status == "invalid",
            ),
            (
                "status 0 (never set)",
                |r| r.status = 0,
                |s| s.status == "invalid",
            ),
            (
                "first failures: u32::MAX is the sentinel of the round only",
                |r| {
                    r.first_write_lost = [u32::MAX, 5];
                    r.first_read_stale = [5, u32::MAX];
                },
                |s| s.first_write_lost.is_none() && s.first_read_stale == Some((5, u32::MAX)),
            ),
            (
                "first error status past the ABI's codes",
                |r| r.first_error_status = u32::MAX,
                |s| s.first_error_status == Some("unknown"),
            ),
        ];
        for (what, edit, check) in rows {
            let mut r = report(0, 0, 0);
            r.first_write_lost = [max; 2];
            r.first_read_stale = [max; 2];
            edit(&mut r);
            let summary = GuestSummary::from_report(&r);
            assert!(check(&summary), "{what}: {summary:?}");
            // Judging the same report never panics either, in any mode.
            for mode in [GuestMode::Dma, GuestMode::Fuzz, GuestMode::Hostile] {
                let _ = judge(&facts(mode, &r, &[]));
            }
        }
    }

    /// Totals at u32::MAX reach the verdict as they are: no wrap to "no failure". Each row:
    /// the edit, the verdict, a word the reason must hold.
    #[test]
    fn extreme_totals_reach_the_verdict() {
        type Edit = fn(&mut abi::Report);
        let rows: &[(&str, GuestMode, Edit, Verdict, &str)] = &[
            (
                "u32::MAX failed descriptors",
                GuestMode::Dma,
                |r| r.dma_errors = u32::MAX,
                Verdict::Error,
                "4294967295 DMA descriptors failed (first status: pending)",
            ),
            (
                "u32::MAX lost pages",
                GuestMode::Dma,
                |r| r.write_lost_pages = u32::MAX,
                Verdict::Diverged,
                "device writes lost on 4294967295 pages",
            ),
            (
                "a status the ABI does not define",
                GuestMode::Dma,
                |r| r.status = u32::MAX,
                Verdict::Error,
                "aborted",
            ),
            (
                "fuzz: a first failed check past the list",
                GuestMode::Fuzz,
                |r| {
                    r.fuzz.ops = 20_000;
                    r.fuzz.valid_passed = u32::MAX;
                    r.fuzz.valid_failed = u32::MAX;
                    r.fuzz.first_failed_check = u32::MAX;
                    r.fuzz.first_failed_status = u32::MAX;
                },
                Verdict::Error,
                "first: unknown after",
            ),
            (
                "fuzz: failures counted without a first one",
                GuestMode::Fuzz,
                |r| {
                    r.fuzz.ops = 20_000;
                    r.fuzz.valid_passed = 10;
                    r.fuzz.valid_failed = 1;
                },
                Verdict::Error,
                "not usable",
            ),
            (
                "fuzz: u64::MAX operations, not the ones asked",
                GuestMode::Fuzz,
                |r| {
                    r.fuzz.ops = u64::MAX;
                    r.fuzz.valid_passed = 10;
                },
                Verdict::Error,
                "sent 18446744073709551615 of 20000",
            ),
            (
                "fuzz: all passed",
                GuestMode::Fuzz,
                |r| {
                    r.fuzz.ops = 20_000;
                    r.fuzz.valid_passed = 10;
                },
                Verdict::Coherent,
                "all 10 valid checks passed",
            ),
        ];
        for &(what, mode, edit, want, word) in rows {
            let mut r = report(0, 0, 0);
            r.fuzz = abi::FuzzTally::NONE;
            edit(&mut r);
            let huge = pins(usize::MAX, None);
            let (verdict, reason) = judge(&facts(mode, &r, &[huge[0].clone(), huge[0].clone()]));
            let reason = reason.unwrap_or_default();
            assert_eq!(verdict, want, "{what}: {reason}");
            assert!(reason.contains(word), "{what}: {reason}");
        }
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
            fuzz_ops: 0,
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
                fuzz_ops: 0,
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
