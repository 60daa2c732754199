//! userfaultfd write-protection of the DMA region, with a handler thread that removes the
//! protection on each write fault (the guest's, taken by KVM on its behalf, or the VMM's).
//!
//! Hand-rolled over libc: five ioctls and three structs from <linux/userfaultfd.h>. The
//! `userfaultfd` crate generates its bindings with bindgen (libclang at build time) and would
//! bring that into every build for one action.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{last_os, observed, Ctx, Done, Error, Judged, Result};
use crate::addr::Hva;
use crate::evidence::{Details, HandlerEnd, LaterHalf, UffdWp};
use crate::scenario::Action;

const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
// _IOWR(0xAA, nr, size)
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xaa << 8) | nr
}
const UFFDIO_API: u64 = iowr(0x3f, 24);
const UFFDIO_REGISTER: u64 = iowr(0x00, 32);
const UFFDIO_UNREGISTER: u64 = (2 << 30) | (16 << 16) | (0xaa << 8) | 0x01; // _IOR
const UFFDIO_WRITEPROTECT: u64 = iowr(0x06, 24);

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg`: 32 bytes; for a page fault, flags at 8 and address at 16.
#[repr(C)]
#[derive(Default)]
struct UffdMsg {
    event: u8,
    _reserved: [u8; 7],
    flags: u64,
    address: u64,
    _rest: u64,
}

fn ioctl<T>(fd: i32, req: u64, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `req` is a userfaultfd ioctl whose argument is `T` (checked by the caller's
    // choice of struct, sized as the kernel's), and `arg` is a valid exclusive reference.
    let rc = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn writeprotect(fd: i32, hva: Hva, len: u64, protect: bool) -> std::io::Result<()> {
    let mut wp = UffdioWriteprotect {
        range: UffdioRange {
            start: hva.raw(),
            len,
        },
        mode: if protect {
            UFFDIO_WRITEPROTECT_MODE_WP
        } else {
            0
        },
    };
    ioctl(fd, UFFDIO_WRITEPROTECT, &mut wp)
}

/// Write-protects the region; a handler thread unprotects on fault until the run ends.
pub fn write_protect(ctx: &Ctx) -> Result<Done> {
    let a = Action::UffdWp;
    // SAFETY: userfaultfd(2) creates a new fd; no memory is touched.
    let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if raw < 0 {
        return Err(last_os(a, "userfaultfd"));
    }
    // SAFETY: `raw` is a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_PAGEFAULT_FLAG_WP,
        ioctls: 0,
    };
    ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api).map_err(|source| Error::Syscall {
        action: a,
        call: "UFFDIO_API",
        source,
    })?;
    let (hva, len) = ctx.region();
    let mut reg = UffdioRegister {
        range: UffdioRange {
            start: hva.raw(),
            len,
        },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    ioctl(fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg).map_err(|source| Error::Syscall {
        action: a,
        call: "UFFDIO_REGISTER",
        source,
    })?;
    writeprotect(fd.as_raw_fd(), hva, len, true).map_err(|source| Error::Syscall {
        action: a,
        call: "UFFDIO_WRITEPROTECT",
        source,
    })?;

    let faults = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let fd = Arc::new(fd);
    let handler = {
        let (faults, stop, fd) = (faults.clone(), stop.clone(), fd.clone());
        std::thread::Builder::new()
            .name("pinlab-uffd".into())
            .spawn(move || handle_faults(&fd, &faults, &stop))
            .map_err(|e| Error::Failed {
                action: a,
                why: format!("spawning the fault handler: {e}"),
            })?
    };
    let protected_pages = observed(a, "PAGEMAP_SCAN", super::observe::uffd_wp_pages(hva, len))?;
    let later = ctx.clone();
    let finish = Box::new(move || -> Result<LaterHalf> {
        stop.store(true, Ordering::Release);
        let handled = handler.join().map_err(|_| Error::Failed {
            action: a,
            why: "the fault handler panicked".into(),
        })?;
        // What the protection looks like now, before it is removed: pages nobody wrote since.
        let (now, _) = later.region();
        let still_protected = super::observe::uffd_wp_pages(now, len).unwrap_or(0);
        // Unprotect and unregister (the range may have moved; errors here are only logged).
        let _ = writeprotect(fd.as_raw_fd(), hva, len, false);
        let mut range = UffdioRange {
            start: hva.raw(),
            len,
        };
        let _ = ioctl(fd.as_raw_fd(), UFFDIO_UNREGISTER, &mut range);
        let n = faults.load(Ordering::Relaxed);
        if let Judged::NoEffect(why) = judge_handler(n, still_protected) {
            return Err(Error::NoEffect {
                action: a,
                why: why.into(),
            });
        }
        Ok(LaterHalf::UffdHandler {
            write_faults_handled: n,
            still_protected_pages: still_protected,
            handler: handled,
        })
    });
    let judged = if protected_pages == 0 {
        Judged::NoEffect("UFFDIO_WRITEPROTECT returned 0 but no region page carries uffd-wp")
    } else {
        Judged::Done
    };
    let d = UffdWp {
        region: hva,
        len,
        protected_pages,
    };
    let mut done = Done::judged(a, Details::UffdWp(d), judged)?;
    done.finish = Some(finish);
    Ok(done)
}

/// The later half's check: a write fault reached the handler, or the protection still holds
/// (nothing wrote the region while it was protected: a storm stops the handler right after
/// protecting). Protection gone without a fault means writes bypassed the handler.
fn judge_handler(faults: u64, still_protected: u64) -> Judged {
    match (faults, still_protected) {
        (0, 0) => Judged::NoEffect(
            "no write fault reached the handler, and no region page is still write-protected",
        ),
        _ => Judged::Done,
    }
}

/// Polls the uffd; on each write-protect fault removes the protection of the faulting page and
/// wakes the faulting thread.
fn handle_faults(fd: &OwnedFd, faults: &AtomicU64, stop: &AtomicBool) -> HandlerEnd {
    let raw = fd.as_raw_fd();
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd: raw,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, 50 ms timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 50) };
        if n <= 0 {
            continue;
        }
        let mut msg = UffdMsg::default();
        // SAFETY: reading one uffd_msg (32 bytes) into a local of that size.
        let r = unsafe {
            libc::read(
                raw,
                &mut msg as *mut UffdMsg as *mut libc::c_void,
                std::mem::size_of::<UffdMsg>(),
            )
        };
        if r != std::mem::size_of::<UffdMsg>() as isize {
            continue;
        }
        if msg.event == UFFD_EVENT_PAGEFAULT && msg.flags & UFFD_PAGEFAULT_FLAG_WP != 0 {
            let page = Hva(msg.address & !(crate::addr::PAGE_SIZE - 1));
            if let Err(e) = writeprotect(raw, page, crate::addr::PAGE_SIZE, false) {
                return HandlerEnd::UnprotectFailed {
                    page,
                    errno: e.raw_os_error().unwrap_or(0),
                };
            }
            faults.fetch_add(1, Ordering::Relaxed);
        }
    }
    HandlerEnd::Stopped
}

const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

#[cfg(test)]
mod tests {
    use super::*;

    /// (faults handled, pages still protected) -> judgement; a bug that lost faults while the
    /// protection vanished must fail, a storm that stopped before any write must not.
    #[test]
    fn handler_judgement_table() {
        let lost = Judged::NoEffect(
            "no write fault reached the handler, and no region page is still write-protected",
        );
        let rows = [
            (512, 0, Judged::Done, "every page written and resolved"),
            (3, 509, Judged::Done, "some written"),
            (
                0,
                512,
                Judged::Done,
                "stopped before any write: the protection held",
            ),
            (0, 0, lost, "protection gone, no fault seen"),
        ];
        for (faults, still, want, what) in rows {
            assert_eq!(judge_handler(faults, still), want, "{what}");
        }
    }
}
