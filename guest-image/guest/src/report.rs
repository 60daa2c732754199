//! The final report: results the guest accumulates, handed to the VMM with the done port.
//!
//! The report is one static. `with` lends it to a closure, never twice at once (a nested call
//! panics, which aborts the guest); `done` writes the status, hands the report's address to the
//! VMM and never returns. No function hands out a reference that outlives a call.

use core::cell::{Cell, UnsafeCell};

use pinlab_abi as abi;

use crate::rt::{outl, pause};

struct ReportCell {
    report: UnsafeCell<abi::Report>,
    /// Whether `with` has lent the report (its `&mut` is alive).
    lent: Cell<bool>,
}

// SAFETY: the guest has one vCPU and takes no interrupts: no two threads ever touch the cell.
unsafe impl Sync for ReportCell {}

static REPORT: ReportCell = ReportCell {
    report: UnsafeCell::new(abi::Report {
        magic: abi::REPORT_MAGIC,
        status: 0,
        rounds_done: 0,
        region_pages: 0,
        write_lost_pages: 0,
        read_stale_pages: 0,
        dma_errors: 0,
        first_write_lost: [u32::MAX; 2],
        first_read_stale: [u32::MAX; 2],
        first_error_status: 0,
        round_records: 0,
        rounds: [abi::RoundRecord {
            round: 0,
            write_lost_pages: 0,
            read_stale_pages: 0,
            dma_errors: 0,
        }; abi::MAX_ROUND_RECORDS],
        write_lost_bitmap: [0; abi::MAX_REGION_PAGES / 64],
        read_stale_bitmap: [0; abi::MAX_REGION_PAGES / 64],
        hostile_status: [0; abi::HOSTILE_CLASSES.len()],
        hostile_recovered: 0,
        unsupported: 0,
        fuzz: abi::FuzzTally::NONE,
    }),
    lent: Cell::new(false),
};

/// Runs `f` with the report. Panics (the guest aborts) when called inside another `with`.
pub fn with<T>(f: impl FnOnce(&mut abi::Report) -> T) -> T {
    assert!(!REPORT.lent.replace(true), "the report is already lent");
    // SAFETY: `lent` was false, so no other reference to the report is alive (only this
    // function makes one, and it clears `lent` when that reference's life ends); one thread.
    let out = f(unsafe { &mut *REPORT.report.get() });
    REPORT.lent.set(false);
    out
}

/// Hands the report to the VMM with `status`. Does not return: the VMM stops the vCPU.
pub fn done(status: u32) -> ! {
    let p = REPORT.report.get();
    // SAFETY: a raw write of one field of the static. If `done` is reached inside `with` (an
    // abort or a panic in the closure), the reference `with` lent is never used again: nothing
    // here returns, so that closure never resumes.
    unsafe { core::ptr::addr_of_mut!((*p).status).write_volatile(status) };
    // SAFETY: `p` is the report, a static; the VMM only reads it.
    unsafe { outl(abi::PORT_DONE, p as u64 as u32) };
    loop {
        pause();
    }
}

pub fn abort() -> ! {
    done(abi::GUEST_ABORTED)
}
