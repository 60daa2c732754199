//! The one io_uring submission/completion loop of the codebase, and the ring that owns the
//! registration it moves bytes through ([`FixedRing`]).
//!
//! Owns the ring fd, the registered buffers (unregistered on drop) and the SQEs it submits (every
//! one reaped before a call returns). It must not touch the registered memory itself: the kernel
//! copies to and from it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};

use super::{
    plan, split_buffers, BufferSpan, Chunk, Error, CHUNK_LEN, MAX_BUFFERS, MAX_BUFFER_LEN,
    RING_ENTRIES,
};
use crate::addr::Hva;
use crate::pin::{validate, Staging, Transfer};

/// Which fixed-buffer opcode moves the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Device write: READ_FIXED from the file into the buffer.
    ToGuest,
    /// Device read: WRITE_FIXED from the buffer into the file.
    FromGuest,
}

impl Direction {
    fn op(self) -> &'static str {
        match self {
            Direction::ToGuest => "READ_FIXED",
            Direction::FromGuest => "WRITE_FIXED",
        }
    }
    fn error(self, c: &Chunk, source: io::Error) -> Error {
        let (pin_offset, len) = (c.pin_offset, u64::from(c.len));
        match self {
            Direction::ToGuest => Error::ReadFixed {
                pin_offset,
                len,
                source,
            },
            Direction::FromGuest => Error::WriteFixed {
                pin_offset,
                len,
                source,
            },
        }
    }
}

/// An io_uring ring with a range of memory registered as fixed buffers, and the one
/// submission/completion loop of the codebase that moves bytes between that range and a
/// [`Staging`] file. [`IoUringPin`] is one (over guest RAM); the raw baseline of `pinlab bench`
/// is another, over its own memory and its own staging file. Drop unregisters the buffers
/// (unpins).
pub struct FixedRing {
    ring: IoUring,
    hva: Hva,
    len: u64,
    max_buffer: u64,
    buffers: usize,
}

impl std::fmt::Debug for FixedRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedRing")
            .field("hva", &self.hva)
            .field("len", &self.len)
            .field("buffers", &self.buffers)
            .finish()
    }
}

impl FixedRing {
    /// A ring of [`RING_ENTRIES`] with `hva..hva+len` registered (pinned, FOLL_LONGTERM) as
    /// consecutive buffers of at most [`MAX_BUFFER_LEN`] bytes, in one IORING_REGISTER_BUFFERS.
    ///
    /// # Safety
    ///
    /// `hva..hva+len` must be a page-aligned mapping of this process that stays mapped for the
    /// ring's lifetime, and no Rust reference to it may be alive across [`Self::read_fixed`]
    /// (the kernel writes into it).
    pub unsafe fn register(hva: Hva, len: u64) -> Result<Self, Error> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Self::with_max_buffer(hva, len, MAX_BUFFER_LEN) }
    }

    /// A ring with no buffers yet, for `len` bytes in buffers of at most `max_buffer` bytes.
    fn empty(hva: Hva, len: u64, max_buffer: u64) -> Result<(Self, Vec<BufferSpan>), Error> {
        let spans = split_buffers(hva, len, max_buffer);
        if spans.len() > MAX_BUFFERS {
            return Err(Error::TooManyBuffers {
                len,
                buffers: spans.len(),
            });
        }
        let ring = IoUring::new(RING_ENTRIES).map_err(|source| Error::Setup {
            entries: RING_ENTRIES,
            source,
        })?;
        let ring = FixedRing {
            ring,
            hva,
            len,
            max_buffer,
            buffers: spans.len(),
        };
        Ok((ring, spans))
    }

    /// As [`Self::register`] with buffers of at most `max_buffer` bytes (a multiple of the page
    /// size).
    ///
    /// # Safety
    ///
    /// As [`Self::register`].
    pub(crate) unsafe fn with_max_buffer(
        hva: Hva,
        len: u64,
        max_buffer: u64,
    ) -> Result<Self, Error> {
        let (ring, spans) = Self::empty(hva, len, max_buffer)?;
        let iovecs: Vec<libc::iovec> = spans.iter().map(BufferSpan::iovec).collect();
        // SAFETY: the iovecs describe `hva..hva+len`, which the caller keeps mapped for our
        // lifetime; the kernel pins the pages, so even an unmap would leave it holding valid
        // pages. The buffers are unregistered in `Drop`.
        unsafe { ring.ring.submitter().register_buffers(&iovecs) }.map_err(|source| {
            Error::RegisterBuffers {
                hva,
                len,
                buffers: iovecs.len(),
                source,
            }
        })?;
        Ok(ring)
    }

    /// As [`Self::with_max_buffer`], one buffer per part of at most `part` bytes, pinned one part
    /// at a time while a second thread calls `pinned(part's hva, part's len)` on each part
    /// already pinned: the caller's work on part k (reading its PFNs) overlaps the kernel
    /// pinning part k+1, and always starts after part k is pinned. Returns `pinned`'s results in
    /// part order.
    ///
    /// Each part is registered alone in a second, staging ring (IORING_REGISTER_BUFFERS, one
    /// iovec), cloned into slot k of this ring (IORING_REGISTER_CLONE_BUFFERS, Linux 6.13 for
    /// an offset into a table already holding buffers) and unregistered from the staging ring,
    /// which leaves this ring the only holder of the pin. Registering into this ring's own
    /// table part by part (a sparse table, then IORING_REGISTER_BUFFERS_UPDATE) would cost more
    /// than the pin itself on THP RAM: the kernel looks for every new huge page among the
    /// folios of every buffer the ring already holds, before it accounts it
    /// (`headpage_already_acct` in io_uring/rsrc.c), and a table being registered is not yet
    /// the ring's. Measured here, 8 GiB of THP RAM: 52-57 ms that way, 10-14 ms staged, 12-17 ms
    /// in one IORING_REGISTER_BUFFERS (docs/performance.md).
    ///
    /// [`Error::CloneBuffers`] with `part: 0` says the kernel cannot clone buffers between
    /// rings; nothing is registered then.
    ///
    /// # Safety
    ///
    /// As [`Self::register`].
    pub(crate) unsafe fn register_staged<T: Send>(
        hva: Hva,
        len: u64,
        part: u64,
        pinned: impl Fn(Hva, u64) -> T + Sync,
    ) -> Result<(Self, Vec<T>), Error> {
        let (ring, spans) = Self::empty(hva, len, part)?;
        let staging = IoUring::new(1).map_err(|source| Error::Setup { entries: 1, source })?;
        // If a part fails, `ring`'s `Drop` unregisters the parts it holds.
        let results = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel::<BufferSpan>();
            let worker = std::thread::Builder::new()
                .name("pinlab-pin-pfns".into())
                .spawn_scoped(scope, {
                    let pinned = &pinned;
                    move || rx.iter().map(|b| pinned(b.hva, b.len)).collect()
                })
                .map_err(Error::SpawnReader)?;
            let mut registered = Ok(());
            for (k, span) in spans.iter().enumerate() {
                if let Err(e) = ring.stage(&staging, k, span) {
                    registered = Err(e);
                    break;
                }
                // The reader is gone only if it panicked; `join` below says so.
                let _ = tx.send(*span);
            }
            drop(tx);
            let results: Vec<T> = worker
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            registered.map(|()| results)
        })?;
        Ok((ring, results))
    }

    /// The registration of [`Self::register_staged`] with nothing done beside it: what the
    /// pin in parts costs alone (`pinlab bench --only map`).
    ///
    /// # Safety
    ///
    /// As [`Self::register`].
    pub unsafe fn register_parts(hva: Hva, len: u64, part: u64) -> Result<Self, Error> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Self::register_staged(hva, len, part, |_, _| ()) }.map(|(ring, _)| ring)
    }

    /// Pins `span` into `staging` alone, clones it into slot `k` of this ring and unregisters
    /// it from `staging`.
    fn stage(&self, staging: &IoUring, k: usize, span: &BufferSpan) -> Result<(), Error> {
        // SAFETY: the iovec describes part k of the range `register_staged`'s caller keeps
        // mapped for this ring's lifetime; the kernel pins its pages. The staging ring's table
        // is unregistered below, this ring's in `Drop`.
        unsafe { staging.submitter().register_buffers(&[span.iovec()]) }.map_err(|source| {
            Error::RegisterBuffers {
                hva: span.hva,
                len: span.len,
                buffers: 1,
                source,
            }
        })?;
        let flags = if k == 0 {
            types::CloneBuffersFlags::empty()
        } else {
            types::CloneBuffersFlags::DST_REPLACE
        };
        let cloned = self.ring.submitter().register_buffers_clone_offset(
            staging.as_raw_fd(),
            0,
            k as u32,
            1,
            flags,
        );
        // This ring holds its own reference to the pinned pages now (or nothing, on failure);
        // the staging ring lets go of its own either way.
        let unregistered = staging.submitter().unregister_buffers();
        cloned.map_err(|source| Error::CloneBuffers { part: k, source })?;
        unregistered.map_err(Error::UnregisterStaging)
    }

    /// Bytes registered.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is registered (never: registration of an empty range fails).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of registered buffers.
    pub fn buffers(&self) -> usize {
        self.buffers
    }

    /// READ_FIXED: `from[staging_offset..+len]` into the registered range at `pin_offset`, for
    /// each transfer, in [`CHUNK_LEN`] SQEs with at most `depth` in flight (clamped to
    /// 1..=RING_ENTRIES). Every transfer is checked against both lengths before any SQE.
    pub fn read_fixed(
        &mut self,
        from: &Staging,
        ops: &[Transfer],
        depth: usize,
    ) -> crate::pin::Result<()> {
        self.plain(Direction::ToGuest, from, ops, depth)
    }

    /// As [`Self::read_fixed`], asking for each transfer's bytes just before it moves:
    /// `fill(i, bytes)` writes `from[staging_offset..+len]` of transfer `i`, then its SQEs are
    /// submitted at once, so the fill of transfer `i + 1` overlaps the kernel's copy of `i`
    /// (READ_FIXED from a shmem file may run on an io-wq worker). Transfers may reuse staging
    /// bytes: a transfer is filled only once every earlier one sharing its staging bytes (or
    /// its guest bytes) has moved (see [`FixedRing::run`]). Transfers of no bytes are not filled.
    pub fn read_fixed_each(
        &mut self,
        from: &mut Staging,
        ops: &[Transfer],
        depth: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]),
    ) -> crate::pin::Result<()> {
        validate(ops, self.len, from.len())?;
        let chunks = plan(ops, self.max_buffer, CHUNK_LEN);
        let fd = from.fd().as_raw_fd();
        let base = from.ptr_at(0);
        let mut prepare = |i: usize| {
            let t = &ops[i];
            // SAFETY: `t` lies inside staging (validated above), which `&mut from` keeps mapped
            // and unaliased for this call. No SQE reading these bytes is in flight: `run` calls
            // this before any chunk of transfer `i` is pushed, only once every earlier transfer
            // overlapping `t` in staging has moved, and later transfers are not pushed yet.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(
                    base.wrapping_add(t.staging_offset as usize),
                    t.len as usize,
                )
            };
            fill(i, bytes);
        };
        Ok(self.run(
            Direction::ToGuest,
            fd,
            ops,
            chunks,
            depth,
            Order::StagingShared,
            Some(&mut prepare),
            &mut |_| {},
        )?)
    }

    /// WRITE_FIXED: the registered range at `pin_offset` into `into[staging_offset..+len]`, for
    /// each transfer, at most `depth` SQEs in flight.
    pub fn write_fixed(
        &mut self,
        into: &mut Staging,
        ops: &[Transfer],
        depth: usize,
    ) -> crate::pin::Result<()> {
        self.plain(Direction::FromGuest, into, ops, depth)
    }

    /// `ops` moved in `dir` with nothing asked of the caller in between (see [`Self::run`]).
    fn plain(
        &mut self,
        dir: Direction,
        staging: &Staging,
        ops: &[Transfer],
        depth: usize,
    ) -> crate::pin::Result<()> {
        validate(ops, self.len, staging.len())?;
        let chunks = plan(ops, self.max_buffer, CHUNK_LEN);
        let fd = staging.fd().as_raw_fd();
        let (order, prepare) = (Order::Independent, None);
        Ok(self.run(dir, fd, ops, chunks, depth, order, prepare, &mut |_| {})?)
    }

    /// As [`Self::write_fixed`], handing each transfer to `done(i, bytes)` (with
    /// `into[staging_offset..+len]`) from the completion loop as soon as it has landed, in
    /// completion order, while later ones may still be in flight: WRITE_FIXED into a shmem file
    /// may run on an io-wq worker, so the caller's work on transfer k overlaps the kernel's copy
    /// of k+1. Transfers may reuse staging bytes: one sharing bytes with an earlier transfer is
    /// submitted only after that one was handed over (see [`FixedRing::run`]).
    pub fn write_fixed_each(
        &mut self,
        into: &mut Staging,
        ops: &[Transfer],
        depth: usize,
        done: &mut dyn FnMut(usize, &[u8]),
    ) -> crate::pin::Result<()> {
        validate(ops, self.len, into.len())?;
        for (i, _) in ops.iter().enumerate().filter(|(_, t)| t.len == 0) {
            done(i, &[]);
        }
        let chunks = plan(ops, self.max_buffer, CHUNK_LEN);
        let fd = into.fd().as_raw_fd();
        let base = into.ptr_at(0);
        let mut op_done = |i: usize| {
            let t = &ops[i];
            // SAFETY: `t` lies inside staging (validated above), which `&mut into` keeps mapped
            // and unaliased for this call. Every SQE writing its bytes has completed, and no SQE
            // writing them can be in flight while the slice lives: `run` calls this from its
            // completion loop, and pushes a later transfer overlapping `t` in staging only after
            // this call returned.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    base.wrapping_add(t.staging_offset as usize),
                    t.len as usize,
                )
            };
            done(i, bytes);
        };
        Ok(self.run(
            Direction::FromGuest,
            fd,
            ops,
            chunks,
            depth,
            Order::StagingShared,
            None,
            &mut op_done,
        )?)
    }

    /// Runs every chunk, at most `depth` in flight; a short completion is resubmitted for the
    /// rest. On the first error no new chunk is submitted, the in-flight ones are reaped, and the
    /// error is returned (so no SQE outlives the call). `op_done(i)` is called (until the first
    /// error) when the last byte of transfer `i` has moved, with the later chunks still in flight.
    /// With `prepare`, transfer `i` is prepared (once, until the first error) before its first
    /// chunk is pushed, and what was pushed is submitted before the next one is prepared.
    ///
    /// Ordering: transfer `i` starts (is prepared, or has its first chunk pushed) only once
    /// every earlier transfer it conflicts with has moved all its bytes (and had `op_done`):
    /// moving into guest RAM, one sharing guest bytes with it; with [`Order::StagingShared`],
    /// also one sharing staging bytes. So the caller's callbacks may reuse staging across
    /// transfers, and of two writes to the same guest bytes the later lands last, as if the
    /// transfers ran one by one.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        dir: Direction,
        staging_fd: i32,
        ops: &[Transfer],
        chunks: Vec<Chunk>,
        depth: usize,
        order: Order,
        mut prepare: Option<&mut dyn FnMut(usize)>,
        op_done: &mut dyn FnMut(usize),
    ) -> Result<(), Error> {
        // Bytes still to move per transfer.
        let mut left: Vec<u64> = vec![0; ops.len()];
        for c in &chunks {
            left[c.op] += u64::from(c.len);
        }
        let conflict = |i: usize, j: usize| {
            let (a, b) = (&ops[i], &ops[j]);
            let meet = |x: u64, y: u64| x < y.saturating_add(b.len) && y < x.saturating_add(a.len);
            (order == Order::StagingShared && meet(a.staging_offset, b.staging_offset))
                || (dir == Direction::ToGuest && meet(a.pin_offset, b.pin_offset))
        };
        // Transfers `..started` may move; `unfinished` is the first with bytes left.
        let mut started = 0usize;
        let mut unfinished = 0usize;
        let mut pending: VecDeque<Chunk> = chunks.into();
        let mut slots: Vec<Option<Chunk>> = vec![None; depth.clamp(1, RING_ENTRIES as usize)];
        let mut in_flight = 0usize;
        let mut first_error: Option<Error> = None;
        // Transfers `..prepared` are ready to move.
        let mut prepared = if prepare.is_some() { 0 } else { usize::MAX };
        loop {
            while unfinished < ops.len() && left[unfinished] == 0 {
                unfinished += 1;
            }
            let may_start = |i: usize, started: &mut usize| {
                if i < *started {
                    return true;
                }
                let free = (unfinished..i).all(|j| left[j] == 0 || !conflict(i, j));
                if free {
                    *started = i + 1;
                }
                free
            };
            let mut pushed = false;
            while first_error.is_none() && in_flight < slots.len() {
                match pending.front() {
                    Some(c) if c.op < prepared && may_start(c.op, &mut started) => {}
                    _ => break,
                }
                let Some(c) = pending.pop_front() else { break };
                let slot = slots.iter().position(Option::is_none).unwrap_or(0);
                let buf = self.hva.as_ptr().wrapping_add(c.pin_offset as usize);
                let fd = types::Fd(staging_fd);
                let entry: squeue::Entry = match dir {
                    Direction::ToGuest => opcode::ReadFixed::new(fd, buf, c.len, c.buf_index)
                        .offset(c.staging_offset)
                        .build(),
                    Direction::FromGuest => opcode::WriteFixed::new(fd, buf, c.len, c.buf_index)
                        .offset(c.staging_offset)
                        .build(),
                }
                .user_data(slot as u64);
                // SAFETY: the buffer lies inside registered buffer `buf_index` (plan splits at
                // buffer boundaries, offsets validated against our length); the staging file
                // offset range was validated against its sealed length. Both outlive the SQE:
                // this function reaps every SQE it submits before returning.
                if unsafe { self.ring.submission().push(&entry) }.is_err() {
                    first_error = Some(Error::QueueFull);
                    break;
                }
                slots[slot] = Some(c);
                in_flight += 1;
                pushed = true;
            }
            if let (Some(p), None, Some(next)) = (&mut prepare, &first_error, pending.front()) {
                let next = next.op;
                if next >= prepared && may_start(next, &mut started) {
                    if pushed {
                        // Start the kernel on what was pushed before preparing the next. A
                        // failed submit leaves the entries queued for `submit_and_wait`
                        // below, which reports the error.
                        let _ = self.ring.submit();
                    }
                    p(next);
                    prepared = next + 1;
                    continue;
                }
            }
            if in_flight == 0 {
                break;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Nothing more can be reaped safely; io_uring teardown on drop waits for
                    // the in-flight SQEs.
                    return Err(first_error.unwrap_or(Error::Submit(e)));
                }
            }
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result()))
                .collect();
            for (slot, res) in done {
                let Some(c) = slots.get_mut(slot as usize).and_then(Option::take) else {
                    continue;
                };
                in_flight -= 1;
                if res < 0 {
                    first_error.get_or_insert(dir.error(&c, io::Error::from_raw_os_error(-res)));
                } else if res == 0 {
                    first_error.get_or_insert(Error::NoProgress {
                        op: dir.op(),
                        pin_offset: c.pin_offset,
                        len: u64::from(c.len),
                    });
                } else if (res as u32) < c.len {
                    let n = res as u32;
                    left[c.op] -= u64::from(n);
                    pending.push_front(Chunk {
                        op: c.op,
                        buf_index: c.buf_index,
                        pin_offset: c.pin_offset + u64::from(n),
                        staging_offset: c.staging_offset + u64::from(n),
                        len: c.len - n,
                    });
                } else {
                    left[c.op] -= u64::from(c.len);
                    if left[c.op] == 0 && first_error.is_none() {
                        op_done(c.op);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Which earlier transfers a transfer waits for, besides those writing the same guest bytes
/// (see [`FixedRing::run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// Nothing reads or writes staging between transfers: transfers sharing staging bytes may
    /// be in flight together (the raw loops, and plain reads and writes).
    Independent,
    /// The caller fills or reads each transfer's staging bytes: a transfer waits for every
    /// earlier one sharing them.
    StagingShared,
}

impl Drop for FixedRing {
    fn drop(&mut self) {
        // Unpins the pages; closing the ring (next) would too, but only once every reference to
        // the ring is gone, so do it explicitly.
        let _ = self.ring.submitter().unregister_buffers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pfn::test_support::AnonRegion;

    const MIB: u64 = 1 << 20;

    /// The loop at every depth, in the raw baseline's shape (many transfers from one staging
    /// range, more chunks than the depth): each depth moves exactly the bytes asked, and the
    /// completion hand-over names every transfer once. A bug: a depth that drops or repeats a
    /// chunk, a slot reused while still in flight, or a transfer reported before it landed.
    #[test]
    fn fixed_ring_moves_the_same_bytes_at_every_depth() {
        const LEN: u64 = 8 * MIB;
        const PIECE: u64 = MIB + 4096;
        let mut r = AnonRegion::new(LEN, libc::MADV_HUGEPAGE);
        r.fill(|_| 0);
        // SAFETY: `r` outlives the ring; no reference into it is held across ring calls.
        let mut ring = unsafe { FixedRing::register(r.hva, LEN) }.unwrap();
        assert_eq!((ring.len(), ring.buffers()), (LEN, 1));
        let ops: Vec<Transfer> = (0..LEN / PIECE)
            .map(|i| Transfer {
                pin_offset: i * PIECE,
                staging_offset: 0,
                len: PIECE,
            })
            .collect();
        let mut staging = Staging::new(PIECE).unwrap();
        for depth in [1, 2, 5, RING_ENTRIES as usize, 1000] {
            let tag = depth as u8;
            staging.as_mut_slice().fill(tag);
            ring.read_fixed(&staging, &ops, depth).unwrap();
            let covered = (LEN / PIECE * PIECE) as usize;
            let bytes = r.bytes();
            assert!(bytes[..covered].iter().all(|&b| b == tag), "depth {depth}");
            assert!(bytes[covered..].iter().all(|&b| b == 0), "depth {depth}");
            bytes[..PIECE as usize].fill(tag ^ 0xff);
            let one = [ops[0]];
            let mut seen = Vec::new();
            ring.write_fixed_each(&mut staging, &one, depth, &mut |i, _| seen.push(i))
                .unwrap();
            assert_eq!(seen, [0], "depth {depth}");
            assert!(
                staging.as_slice().iter().all(|&b| b == tag ^ 0xff),
                "depth {depth}"
            );
        }
        let past = [Transfer {
            pin_offset: LEN - 4096,
            staging_offset: 0,
            len: 8192,
        }];
        let res = ring.read_fixed(&staging, &past, 2);
        assert!(
            matches!(res, Err(crate::pin::Error::TransferOutOfRange { .. })),
            "{res:?}"
        );
    }

    /// Fill-before-submit, with transfers disjoint in staging (fills overlap the copies) and
    /// with every transfer at staging offset 0 (each fill must wait for an empty ring): each
    /// guest range gets exactly its own fill. A bug: a fill while an SQE still reads the same
    /// staging bytes (a range landing with the next transfer's bytes), a fill skipped or
    /// repeated, or fills out of order.
    #[test]
    fn read_fixed_each_fills_each_transfer_before_it_moves() {
        const LEN: u64 = 8 * MIB;
        const PIECE: u64 = MIB;
        let mut r = AnonRegion::new(LEN, libc::MADV_HUGEPAGE);
        r.fill(|_| 0);
        // SAFETY: `r` outlives the ring; no reference into it is held across ring calls.
        let mut ring = unsafe { FixedRing::register(r.hva, LEN) }.unwrap();
        let n = LEN / PIECE;
        // (description, staging offset of transfer i, staging length)
        type Row = (&'static str, fn(u64) -> u64, u64);
        let table: [Row; 3] = [
            ("disjoint", |i| i * PIECE, LEN),
            ("all at offset 0", |_| 0, PIECE),
            ("round-robin over 3 slots", |i| i % 3 * PIECE, 3 * PIECE),
        ];
        for (desc, at, staging_len) in table {
            let mut ops: Vec<Transfer> = (0..n)
                .map(|i| Transfer {
                    pin_offset: i * PIECE,
                    staging_offset: at(i),
                    len: PIECE,
                })
                .collect();
            ops.push(Transfer {
                pin_offset: 0,
                staging_offset: 0,
                len: 0,
            });
            let mut staging = Staging::new(staging_len).unwrap();
            for depth in [1, 3, RING_ENTRIES as usize] {
                let mut order = Vec::new();
                let tag = |i: usize| (i as u8).wrapping_mul(37) ^ depth as u8;
                ring.read_fixed_each(&mut staging, &ops, depth, &mut |i, bytes| {
                    assert_eq!(bytes.len() as u64, PIECE, "{desc}");
                    bytes.fill(tag(i));
                    order.push(i);
                })
                .unwrap();
                let want: Vec<usize> = (0..n as usize).collect();
                assert_eq!(order, want, "{desc} depth {depth}");
                let bytes = r.bytes();
                for i in 0..n as usize {
                    let range = &bytes[i * PIECE as usize..][..PIECE as usize];
                    assert!(
                        range.iter().all(|&b| b == tag(i)),
                        "{desc} depth {depth}: transfer {i}"
                    );
                }
            }
        }
    }

    /// Device reads through staging slots reused round-robin: each transfer is handed over with
    /// its own bytes, before a later one overwrites its slot.
    /// A bug: `done(i)` seeing a later transfer's bytes (a checksum of the wrong guest page).
    #[test]
    fn write_fixed_each_hands_over_before_a_slot_is_reused() {
        const LEN: u64 = 8 * MIB;
        const PIECE: u64 = MIB;
        let mut r = AnonRegion::new(LEN, libc::MADV_HUGEPAGE);
        r.fill(|off| (off as u64 / PIECE) as u8 ^ 0xa5);
        // SAFETY: `r` outlives the ring; no reference into it is held across ring calls.
        let mut ring = unsafe { FixedRing::register(r.hva, LEN) }.unwrap();
        let ops: Vec<Transfer> = (0..LEN / PIECE)
            .map(|i| Transfer {
                pin_offset: i * PIECE,
                staging_offset: i % 3 * PIECE,
                len: PIECE,
            })
            .collect();
        let mut staging = Staging::new(3 * PIECE).unwrap();
        for depth in [1, 3, RING_ENTRIES as usize] {
            let mut seen = vec![false; ops.len()];
            ring.write_fixed_each(&mut staging, &ops, depth, &mut |i, bytes| {
                let want = i as u8 ^ 0xa5;
                assert!(
                    bytes.iter().all(|&b| b == want),
                    "depth {depth}: transfer {i}"
                );
                seen[i] = true;
            })
            .unwrap();
            assert!(
                seen.iter().all(|&s| s),
                "depth {depth}: every transfer handed over"
            );
        }
    }

    /// Device writes to the same guest bytes, from different staging bytes: each is prepared
    /// only once the one before has landed, so the last lands last, as if one by one.
    /// A bug: two in flight at once (the earlier may complete last: the guest sees stale data).
    #[test]
    fn read_fixed_each_orders_writes_to_the_same_guest_bytes() {
        const PIECE: u64 = 2 * MIB;
        let mut r = AnonRegion::new(PIECE, libc::MADV_HUGEPAGE);
        r.fill(|_| 0);
        // SAFETY: `r` outlives the ring; no reference into it is held across ring calls.
        let mut ring = unsafe { FixedRing::register(r.hva, PIECE) }.unwrap();
        let ops: Vec<Transfer> = (0..8u64)
            .map(|i| Transfer {
                pin_offset: 0,
                staging_offset: i * PIECE,
                len: PIECE,
            })
            .collect();
        let mut staging = Staging::new(8 * PIECE).unwrap();
        for round in 0..4u8 {
            ring.read_fixed_each(
                &mut staging,
                &ops,
                RING_ENTRIES as usize,
                &mut |i, bytes| {
                    // Nothing writes the guest bytes now: the one before has landed.
                    let before = match (i, round) {
                        (0, 0) => 0,
                        (0, _) => (round - 1) * 16 + ops.len() as u8,
                        _ => round * 16 + i as u8,
                    };
                    assert!(
                        r.bytes().iter().all(|&b| b == before),
                        "round {round} transfer {i}"
                    );
                    bytes.fill(round * 16 + i as u8 + 1);
                },
            )
            .unwrap();
            let last = round * 16 + ops.len() as u8;
            assert!(r.bytes().iter().all(|&b| b == last), "round {round}");
        }
    }
}
