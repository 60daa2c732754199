//! Fork actions: the COW cases of seeds 000 and 002, Kirill's split-then-fork sequence, and the
//! GUP_PIN_COUNTING_BIAS false positive of seed 001.
//!
//! The VMM is multi-threaded, so a fork child may only run async-signal-safe code. The child
//! executes a plan of steps prepared before the fork (every path, buffer and fd allocated in the
//! parent): read its own pagemap into shared memory, write a range, unmap a range, signal a
//! pipe, wait for a pipe to close, then `_exit`. It never allocates or takes a lock. Every
//! child is registered with `host` (reaped on SIGINT/SIGTERM) and reaped here with a deadline.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{huge_page_of, last_os, madvise, split_pmd_by_mprotect, Ctx, Done, Error, Result};
use crate::addr::{Hva, Pfn, HUGE_PAGE_SIZE, PAGE_SIZE};
use crate::evidence::{
    AtFork, Bias1024, BiasFinding, Details, Fork, Kirill, LaterHalf, PageKind, PageList,
};
use crate::mmap::{self, Mapping};
use crate::scenario::{Action, PinKind};

/// Shared memory the child reports into (MAP_SHARED, so the parent sees the child's writes).
struct Shared {
    map: Mapping,
}

impl Shared {
    fn new(action: Action, len: usize) -> Result<Shared> {
        let len = len
            .next_multiple_of(PAGE_SIZE as usize)
            .max(PAGE_SIZE as usize);
        let map = Mapping::shared(len as u64).map_err(|e| match e {
            mmap::Error::Mmap { source, .. } => Error::Syscall {
                action,
                call: "mmap(MAP_SHARED)",
                source,
            },
            other => Error::Failed {
                action,
                why: other.to_string(),
            },
        })?;
        Ok(Shared { map })
    }

    /// Where the child writes byte `off` (the caller keeps `off` inside the mapping).
    fn at(&self, off: usize) -> *mut u8 {
        self.map.as_ptr().wrapping_add(off)
    }

    /// The pagemap entries the child stored at byte offset `off`, decoded to PFNs.
    fn pfns(&self, off: usize, pages: usize) -> Vec<Option<Pfn>> {
        (0..pages)
            .map(|i| {
                let at = off + i * 8;
                if at + 8 > self.map.len() {
                    return None;
                }
                // SAFETY: inside the mapping (checked above), 8-byte aligned (`off` is a multiple
                // of 8 in every caller and the mapping is page aligned); the child wrote it
                // before signalling or exiting, and it is read volatile because it did so from
                // another process.
                let e = unsafe { std::ptr::read_volatile(self.at(at) as *const u64) };
                (e >> 63 == 1 && e & ((1 << 55) - 1) != 0).then_some(Pfn(e & ((1 << 55) - 1)))
            })
            .collect()
    }
}

/// One step of a child's plan. Everything it needs is allocated before the fork.
enum Step {
    /// pread this process's pagemap entries for `[hva, hva+pages*4K)` into shared memory.
    ReadPagemap { hva: Hva, pages: usize, into: usize },
    /// Write `byte` over `[hva, hva+len)`.
    Write { hva: Hva, len: u64, byte: u8 },
    /// munmap `[hva, hva+len)` in the child.
    Munmap { hva: Hva, len: u64 },
    /// Write one byte to `fd`.
    Signal { fd: i32 },
    /// Close `fd`.
    Close { fd: i32 },
    /// Block until `fd` reads EOF.
    WaitEof { fd: i32 },
}

/// Runs in the child after fork: async-signal-safe syscalls only, then `_exit`.
fn run_child(plan: &[Step], pagemap_path: &CString, shared: &Shared) -> ! {
    for (i, step) in plan.iter().enumerate() {
        let ok = match *step {
            Step::ReadPagemap { hva, pages, into } => {
                // SAFETY: open/pread/close on a path and into shared memory prepared before
                // the fork; `into + pages*8` was sized by the parent.
                unsafe {
                    let fd = libc::open(pagemap_path.as_ptr(), libc::O_RDONLY);
                    let want = pages * 8;
                    let got = libc::pread(
                        fd,
                        shared.at(into) as *mut libc::c_void,
                        want,
                        (hva.raw() / PAGE_SIZE * 8) as libc::off_t,
                    );
                    libc::close(fd);
                    fd >= 0 && got == want as isize
                }
            }
            Step::Write { hva, len, byte } => {
                let mut p = hva.as_ptr();
                // SAFETY: the range is the child's copy of guest RAM (it exists: the plan only
                // has this step when guest RAM is not MADV_DONTFORK).
                unsafe {
                    let end = p.add(len as usize);
                    while p < end {
                        std::ptr::write_volatile(p, byte);
                        p = p.add(1);
                    }
                }
                true
            }
            // SAFETY: unmapping part of the child's own address space.
            Step::Munmap { hva, len } => unsafe {
                libc::munmap(hva.as_ptr() as *mut libc::c_void, len as usize) == 0
            },
            Step::Signal { fd } => {
                let b = 1u8;
                // SAFETY: a one-byte write from a local.
                unsafe { libc::write(fd, &b as *const u8 as *const libc::c_void, 1) == 1 }
            }
            // SAFETY: closing an inherited fd.
            Step::Close { fd } => unsafe { libc::close(fd) == 0 },
            Step::WaitEof { fd } => {
                let mut b = 0u8;
                loop {
                    // SAFETY: a one-byte read into a local.
                    let r = unsafe { libc::read(fd, &mut b as *mut u8 as *mut libc::c_void, 1) };
                    if r == 0 {
                        break true;
                    }
                    if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
                    {
                        break false;
                    }
                }
            }
        };
        if !ok {
            // SAFETY: _exit is async-signal-safe; the status names the failed step.
            unsafe { libc::_exit(10 + i as i32) };
        }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

fn pipe(action: Action) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_os(action, "pipe2"));
    }
    // SAFETY: two new fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The parent/child handshake of a child that outlives the action: the child signals `ready`
/// (it has read its pagemap and done its part), then blocks until the parent closes `release`.
struct Handshake {
    ready_r: OwnedFd,
    ready_w: Option<OwnedFd>,
    release_r: Option<OwnedFd>,
    release_w: OwnedFd,
}

impl Handshake {
    fn new(action: Action) -> Result<Handshake> {
        let (ready_r, ready_w) = pipe(action)?;
        let (release_r, release_w) = pipe(action)?;
        Ok(Handshake {
            ready_r,
            ready_w: Some(ready_w),
            release_r: Some(release_r),
            release_w,
        })
    }

    /// The child's last steps: signal ready, drop its copy of the release write end, wait.
    fn child_steps(&self) -> [Step; 3] {
        let fd = |f: &Option<OwnedFd>| f.as_ref().map_or(-1, |f| f.as_raw_fd());
        [
            Step::Signal {
                fd: fd(&self.ready_w),
            },
            Step::Close {
                fd: self.release_w.as_raw_fd(),
            },
            Step::WaitEof {
                fd: fd(&self.release_r),
            },
        ]
    }

    /// After the fork: close the child's ends here, wait for the child's signal.
    fn wait_ready(&mut self, action: Action) -> Result<()> {
        self.ready_w = None;
        self.release_r = None;
        wait_signal(action, &self.ready_r)
    }

    /// Lets the child exit (its `WaitEof` sees EOF).
    fn release(self) {
        drop(self);
    }
}

/// A forked child: reaped (with a deadline, then SIGKILL) when waited or dropped.
struct Child {
    pid: i32,
    action: Action,
}

impl Child {
    fn spawn(action: Action, plan: &[Step], shared: &Shared) -> Result<Child> {
        let path = CString::new("/proc/self/pagemap").expect("no NUL");
        // SAFETY: fork in a multi-threaded process; the child runs only `run_child`, which
        // uses async-signal-safe syscalls on memory prepared before the fork (see module doc).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(last_os(action, "fork"));
        }
        if pid == 0 {
            run_child(plan, &path, shared);
        }
        crate::host::register_child(pid);
        Ok(Child { pid, action })
    }

    /// Waits for the child's exit status (10 s, then SIGKILL).
    fn wait(mut self) -> Result<i32> {
        let r = self.reap(Duration::from_secs(10));
        self.pid = 0;
        r
    }

    fn reap(&self, limit: Duration) -> Result<i32> {
        let deadline = Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                crate::host::unregister_child(self.pid);
                return if libc::WIFEXITED(status) {
                    Ok(libc::WEXITSTATUS(status))
                } else {
                    Err(Error::Failed {
                        action: self.action,
                        why: format!("fork child died with wait status {status:#x}"),
                    })
                };
            }
            if r < 0 {
                return Err(last_os(self.action, "waitpid"));
            }
            if Instant::now() > deadline {
                // SAFETY: our own child, which has not been reaped.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                let mut st = 0;
                // SAFETY: as above.
                unsafe { libc::waitpid(self.pid, &mut st, 0) };
                crate::host::unregister_child(self.pid);
                return Err(Error::Failed {
                    action: self.action,
                    why: "fork child did not exit in 10 s; killed".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.pid > 0 {
            let _ = self.reap(Duration::from_secs(2));
        }
    }
}

fn wait_signal(action: Action, fd: &OwnedFd) -> Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, 10 s.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    if n != 1 {
        return Err(Error::Failed {
            action,
            why: "the fork child did not report in 10 s".into(),
        });
    }
    Ok(())
}

fn parent_pfns(hva: Hva, len: u64) -> Vec<Option<Pfn>> {
    crate::pfn::pagemap(hva, len)
        .map(|v| v.iter().map(|p| p.pfn).collect())
        .unwrap_or_default()
}

/// The child's pages against the parent's: copied (different PFN), shared (same PFN), absent.
fn at_fork(parent: &[Option<Pfn>], child: &[Option<Pfn>]) -> AtFork {
    let mut copied = Vec::new();
    let mut shared = 0;
    let mut absent = 0;
    for (i, (p, c)) in parent.iter().zip(child).enumerate() {
        match (p, c) {
            (Some(p), Some(c)) if p == c => shared += 1,
            (Some(_), Some(_)) => copied.push(i),
            _ => absent += 1,
        }
    }
    AtFork {
        copied_at_fork: copied.len(),
        shared_at_fork: shared,
        absent_in_child: absent,
        copied_pages: PageList::new(&copied),
    }
}

/// The later half of an action whose child outlives it: release the child, reap it, and fail
/// unless every step of its plan succeeded.
fn reap_later(
    action: Action,
    shared: Shared,
    handshake: Handshake,
    child: Child,
) -> Result<LaterHalf> {
    let _shared = shared;
    handshake.release();
    let pid = child.pid;
    let status = child.wait()?;
    if status != 0 {
        return Err(Error::Failed {
            action,
            why: format!("fork child exited {status}"),
        });
    }
    Ok(LaterHalf::ChildReaped {
        child: pid,
        child_exit: status,
    })
}

/// fork-parent-write, fork-child-write, fork-child-exit.
pub fn fork_action(ctx: &Ctx, action: Action) -> Result<Done> {
    let (hva, len) = ctx.region();
    let pages = (len / PAGE_SIZE) as usize;
    let dontfork = ctx.scenario.vm.dontfork;
    let shared = Shared::new(action, pages * 16)?;
    let parent = parent_pfns(hva, len);
    let mut handshake = Handshake::new(action)?;
    let mut plan = vec![Step::ReadPagemap {
        hva,
        pages,
        into: 0,
    }];
    match action {
        Action::ForkParentWrite => plan.extend(handshake.child_steps()),
        Action::ForkChildWrite if !dontfork => plan.extend([
            Step::Write {
                hva,
                len,
                byte: 0xc5,
            },
            Step::ReadPagemap {
                hva,
                pages,
                into: pages * 8,
            },
        ]),
        _ => {}
    }
    let child = Child::spawn(action, &plan, &shared)?;
    match action {
        Action::ForkParentWrite => {
            handshake.wait_ready(action)?;
            let d = Fork {
                child: child.pid,
                at_fork: at_fork(&parent, &shared.pfns(0, pages)),
                dontfork,
                child_wrote: false,
                child_own_after_write: None,
                child_shared_after_write: None,
                child_exit: None,
            };
            let mut done = Done::new(Details::Fork(d));
            done.finish = Some(Box::new(move || {
                reap_later(action, shared, handshake, child)
            }));
            Ok(done)
        }
        _ => {
            handshake.release();
            let pid = child.pid;
            let status = child.wait()?;
            if status != 0 {
                return Err(Error::Failed {
                    action,
                    why: format!("fork child exited {status} (step {} failed)", status - 10),
                });
            }
            let wrote = action == Action::ForkChildWrite && !dontfork;
            let after_write = wrote.then(|| at_fork(&parent, &shared.pfns(pages * 8, pages)));
            Ok(Done::new(Details::Fork(Fork {
                child: pid,
                at_fork: at_fork(&parent, &shared.pfns(0, pages)),
                dontfork,
                child_wrote: wrote,
                child_own_after_write: after_write.as_ref().map(|w| w.copied_at_fork),
                child_shared_after_write: after_write.as_ref().map(|w| w.shared_at_fork),
                child_exit: Some(status),
            })))
        }
    }
}

/// Seed 002's sequence: PMD split, fork, the child unmaps the half of the THP holding the
/// region, the parent discards the other half; the guest's next write faults on a page of a
/// PTE-mapped THP whose every subpage is mapped once.
pub fn kirill(ctx: &Ctx) -> Result<Done> {
    let a = Action::Kirill;
    let (huge, _) = ctx.region_huge_range();
    let (hva, len) = ctx.region();
    let half = HUGE_PAGE_SIZE / 2;
    if hva.raw() + len > huge.raw() + half {
        return Err(Error::Failed {
            action: a,
            why: "kirill needs the region inside the first half of its huge page (region + offset <= 1MiB)".into(),
        });
    }
    // PMD split, keeping every page: an mprotect round trip on the second half's first page.
    let second = Hva(huge.raw() + half);
    let huge_before = huge_page_of(a, huge)?;
    split_pmd_by_mprotect(a, second)?;
    let huge_at_fork = huge_page_of(a, huge)?;
    let pages = (len / PAGE_SIZE) as usize;
    let shared = Shared::new(a, pages * 8)?;
    let parent = parent_pfns(hva, len);
    let mut handshake = Handshake::new(a)?;
    let mut plan = vec![
        Step::ReadPagemap {
            hva,
            pages,
            into: 0,
        },
        Step::Munmap {
            hva: huge,
            len: half,
        },
    ];
    plan.extend(handshake.child_steps());
    let child = Child::spawn(a, &plan, &shared)?;
    handshake.wait_ready(a)?;
    // The parent cannot munmap guest RAM (KVM maps it); it discards its half instead.
    madvise(
        a,
        second,
        half,
        libc::MADV_DONTNEED,
        "madvise(MADV_DONTNEED)",
    )?;
    let d = Kirill {
        child: child.pid,
        split_at: second,
        huge_before,
        huge_at_fork,
        at_fork: at_fork(&parent, &shared.pfns(0, pages)),
        child_unmapped: huge,
        child_unmapped_len: half,
        parent_discarded: second,
        parent_discarded_len: half,
    };
    let mut done = Done::new(Details::Kirill(d));
    done.finish = Some(Box::new(move || reap_later(a, shared, handshake, child)));
    Ok(done)
}

/// Seed 001: >= 1024 plain references (vmsplice) on one page beside the pinned region while
/// the process holds a FOLL_PIN pin, then fork: does fork copy the page as if it were pinned?
/// On a small page refcount >= GUP_PIN_COUNTING_BIAS looks pinned (a false positive); a large
/// folio keeps an exact pin count. A finding, not a data verdict.
pub fn bias_1024(ctx: &Ctx) -> Result<Done> {
    let a = Action::Bias1024;
    let page = ctx
        .hva_of(ctx.layout.region.end(), PAGE_SIZE)
        .ok_or_else(|| Error::Failed {
            action: a,
            why: "no guest page after the region: raise vm.memory".into(),
        })?;
    // Touch it so it is present.
    // SAFETY: one byte of guest RAM beside the region, which the guest does not use.
    unsafe { std::ptr::write_volatile(page.as_ptr(), 0x42) };
    const REFS: usize = 1100;
    let mut pipes = Vec::new();
    let mut taken = 0;
    while taken < REFS {
        let (r, w) = pipe(a)?;
        // SAFETY: F_SETPIPE_SZ on our own pipe; capped by pipe-max-size (1 MiB = 256 slots).
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        let mut in_pipe = 0;
        loop {
            let iov = libc::iovec {
                iov_base: page.as_ptr() as *mut libc::c_void,
                iov_len: PAGE_SIZE as usize,
            };
            // SAFETY: vmsplice of one page of our memory into our pipe (takes a reference).
            let n = unsafe { libc::vmsplice(w.as_raw_fd(), &iov, 1, libc::SPLICE_F_NONBLOCK) };
            if n != PAGE_SIZE as isize {
                break;
            }
            in_pipe += 1;
            taken += 1;
            if taken == REFS {
                break;
            }
        }
        if in_pipe == 0 {
            return Err(last_os(a, "vmsplice"));
        }
        pipes.push((r, w));
    }
    let flags = crate::pfn::snapshot(page, PAGE_SIZE)
        .ok()
        .and_then(|s| s.flags.first().copied().flatten());
    let page_kind = match flags {
        Some(f) if f.thp() || f.compound_head() || f.compound_tail() => PageKind::ThpSubpage,
        _ => PageKind::Small,
    };
    let parent = parent_pfns(page, PAGE_SIZE);
    let shared = Shared::new(a, 8)?;
    let child = Child::spawn(
        a,
        &[Step::ReadPagemap {
            hva: page,
            pages: 1,
            into: 0,
        }],
        &shared,
    )?;
    let status = child.wait()?;
    let child_pfn = shared.pfns(0, 1)[0];
    drop(pipes);
    if status != 0 {
        return Err(Error::Failed {
            action: a,
            why: format!("fork child exited {status}"),
        });
    }
    let parent_pfn = parent.first().copied().flatten();
    let copied_at_fork = match (parent_pfn, child_pfn) {
        (Some(p), Some(c)) => p != c,
        _ => false,
    };
    Ok(Done::new(Details::Bias1024(Bias1024 {
        references: REFS,
        page,
        page_kind,
        process_holds_foll_pin: ctx.scenario.device.pin == PinKind::IoUring,
        copied_at_fork,
        parent_pfn,
        child_pfn,
        finding: BiasFinding::of(page_kind, copied_at_fork),
    })))
}
