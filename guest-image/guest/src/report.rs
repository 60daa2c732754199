//! The final report: results the guest accumulates, handed to the VMM with the done port.

use core::cell::UnsafeCell;

use pinlab_abi as abi;

use crate::rt::outl;

pub struct ReportCell(UnsafeCell<abi::Report>);

// SAFETY: the guest has one vCPU and no interrupts: there is never concurrent access.
unsafe impl Sync for ReportCell {}

pub static REPORT: ReportCell = ReportCell(UnsafeCell::new(abi::Report {
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
}));

/// The report, for the one thread of the guest.
pub fn get() -> &'static mut abi::Report {
    // SAFETY: single-threaded guest, and callers never hold two of these at once across a call
    // that takes another.
    unsafe { &mut *REPORT.0.get() }
}

/// Hand the report to the VMM. Does not return: the VMM stops the vCPU.
pub fn done(status: u32) -> ! {
    let r = get();
    r.status = status;
    outl(abi::PORT_DONE, r as *mut abi::Report as u64 as u32);
    loop {
        crate::rt::pause();
    }
}

pub fn abort() -> ! {
    done(abi::GUEST_ABORTED)
}
