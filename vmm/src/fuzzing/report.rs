//! Target `report`: the guest report decoder (`oracle::GuestSummary::from_report`,
//! `FuzzSummary::from_report`, `hostile_rows`) and the verdict (`oracle::judge`) on an arbitrary
//! `abi::Report` (its bytes from the input, then counters, indices and statuses pushed to their
//! extremes) and arbitrary facts.
//!
//! The rules: nothing panics or overflows (every counter may be u32::MAX, `round_records` may be
//! anything, statuses out of range); the summary lists exactly the failing rounds among the
//! records the report holds (first 32), exactly the pages whose bits are set (first 64, in
//! order); and a verdict follows from the report: no report or a failure is `error`, a
//! `coherent` DMA run has no lost, stale or failed page or descriptor and all its rounds, a
//! `coherent` fuzz run has every valid check passed and every operation sent.

use arbitrary::Unstructured;
use pinlab_abi as abi;

use super::{record, run, u32_near, u64_near, U32_EDGES};
use crate::addr::{Gpa, Iova, Pfn};
use crate::devices::iommu::{PfnChange, PinEvidence};
use crate::oracle::{self, Facts, FuzzSummary, GuestSummary};
use crate::scenario::{GuestMode, Verdict};

const MODES: [GuestMode; 7] = [
    GuestMode::Dma,
    GuestMode::Boot,
    GuestMode::Spin,
    GuestMode::Hostile,
    GuestMode::ConsoleFlood,
    GuestMode::PhaseRepeat,
    GuestMode::Fuzz,
];

fn counter(u: &mut Unstructured<'_>) -> arbitrary::Result<u32> {
    if u.ratio(1, 2)? {
        Ok(0)
    } else {
        u32_near(u, U32_EDGES)
    }
}

/// A report from the input, with its counters and indices pushed to the edges.
fn arbitrary_report(u: &mut Unstructured<'_>) -> arbitrary::Result<Box<abi::Report>> {
    let mut r: Box<abi::Report> = Box::new(record(u)?);
    r.magic = abi::REPORT_MAGIC;
    r.status = u32_near(u, &[abi::GUEST_OK, abi::GUEST_OK, abi::GUEST_ABORTED, 0])?;
    r.rounds_done = u32_near(u, &[8, 7, 100])?;
    for c in [
        &mut r.write_lost_pages,
        &mut r.read_stale_pages,
        &mut r.dma_errors,
        &mut r.unsupported,
        &mut r.hostile_recovered,
    ] {
        *c = counter(u)?;
    }
    r.first_error_status = u32_near(u, &[0, abi::STATUS_IO_ERROR, 15, u32::MAX])?;
    for pair in [&mut r.first_write_lost, &mut r.first_read_stale] {
        pair[0] = u32_near(u, &[u32::MAX, 1, 0])?;
        pair[1] = u32_near(u, &[u32::MAX, 0, abi::MAX_REGION_PAGES as u32])?;
    }
    let max = abi::MAX_ROUND_RECORDS as u32;
    r.round_records = u32_near(u, &[0, 1, max - 1, max, max + 1, u32::MAX])?;
    for rec in r.rounds.iter_mut().take(u.int_in_range(0..=8)?) {
        rec.write_lost_pages = counter(u)?;
        rec.read_stale_pages = counter(u)?;
        rec.dma_errors = counter(u)?;
    }
    if u.ratio(1, 2)? {
        r.write_lost_bitmap.fill(0);
        r.read_stale_bitmap.fill(0);
    }
    for s in r.hostile_status.iter_mut() {
        if u.ratio(3, 4)? {
            *s = abi::HOSTILE_CLASSES[0].1;
        }
    }
    if u.ratio(3, 4)? {
        for (s, &(_, want)) in r.hostile_status.iter_mut().zip(&abi::HOSTILE_CLASSES) {
            *s = want;
        }
    }
    let f = &mut r.fuzz;
    f.ops = u64_near(u, &[0, 20_000, u64::MAX])?;
    f.valid_passed = counter(u)?;
    f.valid_failed = counter(u)?;
    f.first_failed_check = u32_near(u, &[0, 1, abi::FUZZ_CHECKS.len() as u32 + 1, u32::MAX])?;
    f.first_failed_status = u32_near(u, &[0, abi::STATUS_ALIASED, 99])?;
    Ok(r)
}

fn pins(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<PinEvidence>> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let changed = if u.ratio(1, 2)? {
            0
        } else {
            u.arbitrary::<usize>()?
        };
        out.push(PinEvidence {
            iova: Iova(u.arbitrary()?),
            gpa: Gpa(u.arbitrary()?),
            len: u.arbitrary()?,
            pages: u.arbitrary()?,
            pinned_pfns_changed_pages: changed,
            changed: (0..u.int_in_range(0..=2)?)
                .map(|_| {
                    Ok(PfnChange {
                        page: u.arbitrary()?,
                        gpa: Gpa(u.arbitrary()?),
                        pinned: u.arbitrary::<Option<u64>>()?.map(Pfn),
                        mapped: u.arbitrary::<Option<u64>>()?.map(Pfn),
                    })
                })
                .collect::<arbitrary::Result<_>>()?,
            changed_left_out: u.arbitrary()?,
            changed_runs: (0..u.int_in_range(0..=3)?)
                .map(|_| Ok([u.int_in_range(0..=1024)?, u.arbitrary()?]))
                .collect::<arbitrary::Result<_>>()?,
            unreadable: if u.ratio(1, 4)? {
                Some(u.arbitrary::<String>()?)
            } else {
                None
            },
        });
    }
    Ok(out)
}

fn bits(bitmap: &[u64]) -> Vec<u32> {
    let mut out = Vec::new();
    // Bit by bit, one word at a time (the decoder under test pops bits with trailing_zeros);
    // all-zero words are skipped, so an input of a few bytes does not test 17,000 zero bits.
    for (w, &word) in bitmap.iter().enumerate().filter(|(_, &word)| word != 0) {
        for b in 0..64 {
            if out.len() == 64 {
                return out;
            }
            if word & (1 << b) != 0 {
                out.push((w * 64 + b) as u32);
            }
        }
    }
    out
}

fn check_summary(r: &abi::Report) {
    let s = GuestSummary::from_report(r);
    let held = (r.round_records as usize).min(abi::MAX_ROUND_RECORDS);
    let failing: Vec<_> = r.rounds[..held]
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
        .collect();
    assert_eq!(
        s.failing_rounds, failing,
        "every failing round held, and only those"
    );
    assert_eq!(s.write_lost_page_list, bits(&r.write_lost_bitmap));
    assert_eq!(s.read_stale_page_list, bits(&r.read_stale_bitmap));
    let first = |p: [u32; 2]| (p[0] != u32::MAX).then_some((p[0], p[1]));
    assert_eq!(s.first_write_lost, first(r.first_write_lost));
    assert_eq!(s.first_read_stale, first(r.first_read_stale));
    let want_status = match r.status {
        abi::GUEST_OK => "ok",
        abi::GUEST_ABORTED => "aborted",
        _ => "invalid",
    };
    assert_eq!(s.status, want_status);
    let f = FuzzSummary::from_report(r);
    assert_eq!(f.per_kind.len(), abi::FUZZ_KINDS.len());
    assert_eq!(f.first_failure.is_some(), r.fuzz.first_failed_check != 0);
    assert_eq!(oracle::hostile_rows(r).len(), abi::HOSTILE_CLASSES.len());
    serde_json::to_string(&s).expect("the summary serializes");
    serde_json::to_string(&f).expect("the fuzz summary serializes");
}

fn check_verdict(f: &Facts<'_>, verdict: Verdict, reason: &Option<String>) {
    let why = || format!("{verdict} ({reason:?})");
    if let Some(r) = reason {
        assert!(!r.is_empty(), "an empty reason");
    }
    if f.failure.is_some() {
        assert_eq!(verdict, Verdict::Error, "a failure is an error: {}", why());
        assert_eq!(reason, &f.failure);
        return;
    }
    let Some(r) = f.guest else {
        assert_eq!(verdict, Verdict::Error, "no report: {}", why());
        return;
    };
    if r.status != abi::GUEST_OK {
        assert_eq!(verdict, Verdict::Error, "status {}: {}", r.status, why());
        return;
    }
    assert_ne!(verdict, Verdict::Skipped, "a run that ran is never skipped");
    let clean = r.write_lost_pages == 0 && r.read_stale_pages == 0;
    match f.mode {
        GuestMode::Boot => assert_eq!(verdict, Verdict::Coherent),
        GuestMode::Spin | GuestMode::ConsoleFlood => assert_eq!(verdict, Verdict::Error),
        GuestMode::Hostile => {
            let all = oracle::hostile_rows(r).iter().all(|x| x.rejected);
            assert_eq!(
                verdict == Verdict::Coherent,
                all && r.hostile_recovered == 1,
                "{}",
                why()
            );
        }
        GuestMode::Fuzz => {
            let t = &r.fuzz;
            let ok = t.valid_failed == 0
                && t.first_failed_check == 0
                && t.valid_passed > 0
                && t.ops == f.fuzz_ops
                && r.rounds_done >= f.rounds_wanted;
            assert_eq!(verdict == Verdict::Coherent, ok, "{}", why());
            assert_ne!(verdict, Verdict::Diverged);
        }
        GuestMode::Dma | GuestMode::PhaseRepeat => {
            if verdict == Verdict::Coherent {
                assert!(
                    r.rounds_done >= f.rounds_wanted && r.dma_errors == 0 && clean,
                    "{}",
                    why()
                );
            }
            if verdict == Verdict::Diverged && !f.pfn_evidence_only {
                assert!(!clean, "diverged with clean data: {}", why());
            }
            if f.pfn_evidence_only && verdict != Verdict::Error {
                assert!(clean, "PFN-only verdict over data checks: {}", why());
            }
        }
    }
}

/// Decodes an arbitrary report and judges it under arbitrary facts.
pub fn report(data: &[u8]) {
    run(data, |u| {
        let r = arbitrary_report(u)?;
        check_summary(&r);
        let pins = pins(u)?;
        let failure = if u.ratio(1, 8)? {
            Some(u.arbitrary::<String>()?).filter(|s| !s.is_empty())
        } else {
            None
        };
        let facts = Facts {
            mode: *u.choose(&MODES)?,
            rounds_wanted: u32_near(u, &[8, 7, 100, u32::MAX])?,
            fuzz_ops: u64_near(u, &[0, 20_000, u64::MAX])?,
            guest: if u.ratio(7, 8)? { Some(&*r) } else { None },
            failure,
            pins: &pins,
            region_gpa: Gpa(u64_near(u, &[0x20_0000, u64::MAX])?),
            control_group: u.arbitrary()?,
            pfn_evidence_only: u.arbitrary()?,
        };
        let (verdict, reason) = oracle::judge(&facts);
        check_verdict(&facts, verdict, &reason);
        Ok(())
    });
}
