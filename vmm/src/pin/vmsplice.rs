//! Pipes holding vmspliced pages as the device's hold on guest RAM.
//!
//! vmsplice(2) without SPLICE_F_GIFT takes a plain reference (FOLL_GET, through
//! `iov_iter_get_pages2`) on every page of the range and parks it in a pipe buffer: the class of
//! reference the pre-5.x COW rules were written for, and which modern kernels (5.19+,
//! AnonExclusive) do not protect the way they protect FOLL_PIN. The references live from
//! [`VmsplicePin::new`] until drop, when the pipes are closed.
//!
//! A pipe holds at most /proc/sys/fs/pipe-max-size bytes (1 MiB here: 256 page slots; raising it
//! needs CAP_SYS_RESOURCE), so the range is spread over as many pipes as needed, each sized with
//! F_SETPIPE_SZ: pipe `i` holds bytes `i * pipe_len .. (i + 1) * pipe_len` of the range. The write
//! ends are closed once filled (the buffers stay), so a range costs one fd per pipe plus three.
//!
//! A device read must not consume the pipes: tee(2) duplicates the first `offset_in_pipe + len`
//! bytes of the pipe into an empty scratch pipe (zero copy: it takes more references on the same
//! pages), the prefix is spliced to /dev/null, and the wanted bytes are read(2) into staging: the
//! one copy, from the referenced pages. A device write is impossible through page references
//! held by a pipe: it returns [`super::Error::Unsupported`].
//!
//! Owns the pipes and /dev/null. It must not touch the VMM mapping of the range after pinning and
//! records no PFNs.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{validate, Pin, PinKind, Staging, Transfer};
use crate::addr::{Hva, PAGE_SIZE};

const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";

/// Errors of the vmsplice pin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /proc/sys/fs/pipe-max-size could not be read.
    #[error("read {PIPE_MAX_SIZE}: {0}")]
    PipeMaxSize(#[source] io::Error),
    /// /proc/sys/fs/pipe-max-size did not hold a usable size.
    #[error("{PIPE_MAX_SIZE} holds {0:?}, not a size of at least one page")]
    PipeMaxSizeValue(String),
    /// pipe2(2) failed (EMFILE: one fd per pipe_len bytes of pinned range).
    #[error("pipe2: {0}")]
    Pipe(#[source] io::Error),
    /// fcntl(F_SETPIPE_SZ) failed.
    #[error("fcntl(F_SETPIPE_SZ, {size:#x}): {source}")]
    SetPipeSize {
        size: u64,
        #[source]
        source: io::Error,
    },
    /// F_SETPIPE_SZ gave a smaller pipe than asked.
    #[error("F_SETPIPE_SZ({asked:#x}) gave {got:#x}")]
    PipeTooSmall { asked: u64, got: u64 },
    /// vmsplice(2) failed (EAGAIN: the pipe filled up before the range did).
    #[error("vmsplice at pin offset {offset:#x}: {source}")]
    Vmsplice {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// vmsplice(2) returned 0 with bytes left.
    #[error("vmsplice at pin offset {offset:#x} made no progress")]
    VmspliceNoProgress { offset: u64 },
    /// tee(2) from a pin pipe into the scratch pipe failed.
    #[error("tee {len:#x} bytes from pipe {pipe}: {source}")]
    Tee {
        pipe: usize,
        len: u64,
        #[source]
        source: io::Error,
    },
    /// tee(2) duplicated fewer bytes than the pipe holds up to the wanted end.
    #[error("tee from pipe {pipe}: wanted {want:#x} bytes, got {got:#x}")]
    TeeShort { pipe: usize, want: u64, got: u64 },
    /// splice(2) of the skipped prefix into /dev/null failed.
    #[error("splice {len:#x} bytes to /dev/null: {source}")]
    Discard {
        len: u64,
        #[source]
        source: io::Error,
    },
    /// read(2) from the scratch pipe into staging failed.
    #[error("read {len:#x} bytes from scratch pipe: {source}")]
    Read {
        len: u64,
        #[source]
        source: io::Error,
    },
    /// The scratch pipe ran dry before the wanted bytes were read.
    #[error("scratch pipe empty with {len:#x} bytes left")]
    ScratchEmpty { len: u64 },
    /// /dev/null could not be opened.
    #[error("open /dev/null: {0}")]
    OpenDevNull(#[source] io::Error),
}

type Result<T> = std::result::Result<T, Error>;

/// Retries a syscall returning a byte count on EINTR.
fn retry(mut f: impl FnMut() -> isize) -> io::Result<u64> {
    loop {
        let n = f();
        if n >= 0 {
            return Ok(n as u64);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The largest pipe size to use: pipe-max-size rounded down to a power of two (F_SETPIPE_SZ
/// rounds up to a power of two pages, which must not exceed the limit).
fn pipe_len_limit() -> Result<u64> {
    let s = std::fs::read_to_string(PIPE_MAX_SIZE).map_err(Error::PipeMaxSize)?;
    let max: u64 = s
        .trim()
        .parse()
        .map_err(|_| Error::PipeMaxSizeValue(s.clone()))?;
    if max < PAGE_SIZE {
        return Err(Error::PipeMaxSizeValue(s));
    }
    Ok(1 << max.ilog2())
}

/// A pipe: (read end, write end), both non-blocking so no call here can hang.
fn pipe_pair(size: u64) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(Error::Pipe(io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and owned by nothing else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let arg = libc::c_int::try_from(size).map_err(|_| Error::PipeTooSmall {
        asked: size,
        got: 0,
    })?;
    // SAFETY: fcntl(F_SETPIPE_SZ) on a pipe we own.
    let got = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, arg) };
    if got < 0 {
        return Err(Error::SetPipeSize {
            size,
            source: io::Error::last_os_error(),
        });
    }
    if (got as u64) < size {
        return Err(Error::PipeTooSmall {
            asked: size,
            got: got as u64,
        });
    }
    Ok((r, w))
}

/// A range of guest RAM referenced page by page from pipes. Drop closes the pipes (drops the
/// references).
#[derive(Debug)]
pub struct VmsplicePin {
    len: u64,
    /// Bytes per pipe (the last pipe may hold less).
    pipe_len: u64,
    /// Read ends of the pipes holding the references.
    pipes: Vec<OwnedFd>,
    scratch_r: OwnedFd,
    scratch_w: OwnedFd,
    devnull: File,
}

impl VmsplicePin {
    /// References every page of `hva..hva+len` (page aligned, checked by [`super::pin`]).
    ///
    /// The kernel faults missing pages in for reading (an untouched anonymous page is referenced
    /// as the shared zero page). Safe: the kernel only reads the range, and an unmapped range
    /// fails with EFAULT.
    pub fn new(hva: Hva, len: u64) -> Result<Self> {
        Self::with_pipe_len(hva, len, pipe_len_limit()?)
    }

    /// As [`Self::new`] with pipes of `pipe_len` bytes (a power of two, at least a page).
    pub(crate) fn with_pipe_len(hva: Hva, len: u64, pipe_len: u64) -> Result<Self> {
        let devnull = File::options()
            .write(true)
            .open("/dev/null")
            .map_err(Error::OpenDevNull)?;
        let (scratch_r, scratch_w) = pipe_pair(pipe_len)?;
        let mut pipes = Vec::with_capacity(len.div_ceil(pipe_len) as usize);
        let mut offset = 0;
        while offset < len {
            let chunk = pipe_len.min(len - offset);
            let (r, w) = pipe_pair(chunk)?;
            let mut done = 0;
            while done < chunk {
                let iov = libc::iovec {
                    iov_base: hva.as_ptr().wrapping_add((offset + done) as usize).cast(),
                    iov_len: (chunk - done) as usize,
                };
                // SAFETY: vmsplice reads the iovec we pass (one entry) and takes references on
                // the user pages it names; an unmapped range fails with EFAULT.
                let n = retry(|| unsafe { libc::vmsplice(w.as_raw_fd(), &iov, 1, 0) }).map_err(
                    |source| Error::Vmsplice {
                        offset: offset + done,
                        source,
                    },
                )?;
                if n == 0 {
                    return Err(Error::VmspliceNoProgress {
                        offset: offset + done,
                    });
                }
                done += n;
            }
            drop(w);
            pipes.push(r);
            offset += chunk;
        }
        Ok(VmsplicePin {
            len,
            pipe_len,
            pipes,
            scratch_r,
            scratch_w,
            devnull,
        })
    }

    /// Number of pipes holding references.
    pub fn pipes(&self) -> usize {
        self.pipes.len()
    }

    /// Splices up to `len` bytes of the scratch pipe into /dev/null.
    fn discard(&self, len: u64) -> Result<()> {
        let mut left = len;
        while left > 0 {
            // SAFETY: splice between two fds we own, no offsets.
            let n = retry(|| unsafe {
                libc::splice(
                    self.scratch_r.as_raw_fd(),
                    std::ptr::null_mut(),
                    self.devnull.as_raw_fd(),
                    std::ptr::null_mut(),
                    left as usize,
                    libc::SPLICE_F_NONBLOCK,
                )
            })
            .map_err(|source| Error::Discard { len: left, source })?;
            if n == 0 {
                return Err(Error::ScratchEmpty { len: left });
            }
            left -= n;
        }
        Ok(())
    }

    /// Empties the scratch pipe after a failed read, so the next read starts clean.
    fn drain_scratch(&self) {
        while matches!(self.discard(self.pipe_len), Ok(())) {}
    }

    /// Copies bytes `in_pipe..in_pipe+len` of pipe `pipe` to `dst` without consuming the pipe.
    fn read_segment(&self, pipe: usize, in_pipe: u64, len: u64, dst: *mut u8) -> Result<()> {
        let want = in_pipe + len;
        // SAFETY: tee between two pipes we own; it only takes page references.
        let got = retry(|| unsafe {
            libc::tee(
                self.pipes[pipe].as_raw_fd(),
                self.scratch_w.as_raw_fd(),
                want as usize,
                libc::SPLICE_F_NONBLOCK,
            )
        })
        .map_err(|source| Error::Tee {
            pipe,
            len: want,
            source,
        })?;
        // tee always starts at the head of the pipe, so a second call cannot fetch the rest.
        if got != want {
            self.drain_scratch();
            return Err(Error::TeeShort { pipe, want, got });
        }
        self.discard(in_pipe)
            .inspect_err(|_| self.drain_scratch())?;
        let mut done = 0;
        while done < len {
            // SAFETY: `dst..dst+len` lies inside the staging mapping, which the caller borrows
            // mutably for this call; read(2) writes at most `len - done` bytes there.
            let n = retry(|| unsafe {
                libc::read(
                    self.scratch_r.as_raw_fd(),
                    dst.wrapping_add(done as usize).cast(),
                    (len - done) as usize,
                )
            })
            .map_err(|source| Error::Read {
                len: len - done,
                source,
            })
            .inspect_err(|_| self.drain_scratch())?;
            if n == 0 {
                return Err(Error::ScratchEmpty { len: len - done });
            }
            done += n;
        }
        Ok(())
    }
}

impl Pin for VmsplicePin {
    fn kind(&self) -> PinKind {
        PinKind::Vmsplice
    }

    fn len(&self) -> u64 {
        self.len
    }

    /// Always [`super::Error::Unsupported`]: pipe buffers cannot be written through.
    fn write_to_guest(&mut self, _staging: &Staging, _ops: &[Transfer]) -> super::Result<()> {
        Err(super::Error::Unsupported {
            kind: PinKind::Vmsplice,
            op: "write to guest",
        })
    }

    fn read_from_guest(&mut self, staging: &mut Staging, ops: &[Transfer]) -> super::Result<()> {
        validate(ops, self.len, staging.len())?;
        for t in ops {
            let mut done = 0;
            while done < t.len {
                let offset = t.pin_offset + done;
                let (pipe, in_pipe) = ((offset / self.pipe_len) as usize, offset % self.pipe_len);
                let seg = (t.len - done).min(self.pipe_len - in_pipe);
                let dst = staging.ptr_at(t.staging_offset + done);
                self.read_segment(pipe, in_pipe, seg, dst)?;
                done += seg;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pfn::test_support::AnonRegion;

    const MIB: u64 = 1 << 20;

    #[test]
    fn pipe_len_follows_pipe_max_size() {
        let limit = pipe_len_limit().unwrap();
        assert!(limit.is_power_of_two() && limit >= PAGE_SIZE);
        let r = AnonRegion::new(4 * MIB, libc::MADV_NOHUGEPAGE);
        let p = VmsplicePin::new(r.hva, 3 * MIB + PAGE_SIZE).unwrap();
        assert_eq!(p.pipes() as u64, (3 * MIB + PAGE_SIZE).div_ceil(limit));
    }

    /// Reads repeat: the pipes keep their references (tee does not consume them).
    #[test]
    fn reads_do_not_consume_the_pipes() {
        let mut r = AnonRegion::new(2 * MIB, libc::MADV_HUGEPAGE);
        r.fill(|i| (i / 7) as u8);
        // Small pipes, so a read crosses several of them.
        let mut p = VmsplicePin::with_pipe_len(r.hva, r.len, 64 * 1024).unwrap();
        assert_eq!(p.pipes(), 32);
        let ops = [Transfer {
            pin_offset: 100_000,
            staging_offset: 3,
            len: 500_000,
        }];
        let mut staging = Staging::new(MIB).unwrap();
        for round in 0..3 {
            staging.as_mut_slice().fill(0);
            p.read_from_guest(&mut staging, &ops).unwrap();
            assert!(
                staging.as_slice()[3..500_003] == r.bytes()[100_000..600_000],
                "round {round}"
            );
        }
    }

    #[test]
    fn unmapped_memory_fails_vmsplice() {
        // Not munmap: another test thread's mmap could take the freed range meanwhile.
        let r = AnonRegion::new(2 * MIB, libc::MADV_NOHUGEPAGE);
        let hva = r.hva;
        // SAFETY: the region is ours and nothing else touches it; PROT_NONE makes any access
        // to it fault, which is what vmsplice must then report.
        let rc =
            unsafe { libc::mprotect(hva.as_ptr() as *mut libc::c_void, 2 << 20, libc::PROT_NONE) };
        assert_eq!(rc, 0);
        let res = VmsplicePin::new(hva, 2 * MIB);
        assert!(
            matches!(&res, Err(Error::Vmsplice { offset: 0, source }) if source.raw_os_error() == Some(libc::EFAULT)),
            "{res:?}"
        );
    }
}
