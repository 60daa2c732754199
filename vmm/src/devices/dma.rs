//! The DMA engine: executes descriptors through the pin of the IOVA range, never through the
//! VMM's mapping of guest RAM (except with the `mapping` mechanism, the control group).
//!
//! Device writes (`OP_TO_GUEST`) fill a staging file with the pattern and move it into the
//! pinned pages; device reads (`OP_FROM_GUEST`) move the pinned pages into staging and checksum
//! each 4 KiB page, writing the checksums to an output array in guest RAM (a control-plane
//! write, like a completion record). The engine takes typed requests (`request.rs` checked the
//! guest's arithmetic); what needs state is checked here: the output array may not overlap the
//! reserved low area or a queue, and the IOVA range must be mapped with the right permission.
//! Failures are typed ([`Error`]); the ABI status is produced at the edge ([`Error::status`]).
//!
//! A device read is pipelined: each staging-sized chunk is asked of the pin as
//! [`PIPELINE_PIECE`]-sized transfers ([`pin::Pin::read_from_guest_each`]), and each piece is
//! checksummed as soon as it lands, while the kernel still copies the next ones. Checksums are
//! per page, so the output is exactly `abi::page_checksums` over the whole descriptor. A device
//! write likewise: each piece is filled just before it moves, the next while the kernel copies
//! it ([`pin::Pin::write_to_guest_each`]).
//!
//! The descriptors of one doorbell go through [`DmaEngine::execute_batch`]: a run of them in
//! one direction, on one mapping, over guest bytes no earlier one of the run writes, is one
//! *stream*: their [`STREAM_PIECE`]-sized pieces go through the pin in one call, round-robin
//! over the staging file, so the ring does not drain between descriptors. The answers are what
//! executing them one at a time gives: a stream that fails is replayed one descriptor at a time.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use pinlab_abi as abi;

use crate::addr::{Gpa, Iova, PAGE_SIZE};
use crate::devices::iommu::{self, Iommu};
use crate::devices::queue::overlaps;
use crate::devices::request::{DmaRequest, FromGuest, IovaRange, Perm, ToGuest};
use crate::memory::GuestRam;
use crate::pin::{self, Staging, Transfer};

/// Largest staging area; longer descriptors are moved in pieces of this size.
pub const STAGING_MAX: u64 = 8 << 20;

/// Bytes per transfer of a pipelined device read: the checksum of one piece overlaps the copy of
/// the next (WRITE_FIXED into the memfd runs on an io-wq worker). Measured here (`pinlab bench
/// --only dma`, 8 MiB descriptors, release, medians of 7, five interleaved rounds, another
/// session compiling on one of the 2 cores), engine/raw from-guest: one transfer per chunk
/// 0.58-0.67 (median 0.62), 1 MiB pieces 0.52-0.75 (0.59), 2 MiB pieces 0.60-0.76 (0.65). A
/// per-piece trace shows why the spread: with a free core a 1 MiB piece lands every 75-100 µs
/// (copy bound); when the worker and the checksum share a core, every 175 µs (serial again).
pub const PIPELINE_PIECE: u64 = 2 << 20;

/// Pieces a stream moves in: one 4 MiB SQE each, so the staging file holds two, one filled
/// (or checksummed) while the kernel moves the other. Measured on the session-7 host (`pinlab
/// bench --only dma`): 0.96-0.97 of the best raw loop to guest, 0.98-0.99 from guest; 2 MiB
/// pieces 0.89-0.90 and 0.91-0.92; 8 MiB (one slot, nothing overlaps) 0.65 and 0.63.
pub const STREAM_PIECE: u64 = 4 << 20;

/// Most bytes one stream of descriptors moves (bounds its list of pieces).
pub const STREAM_MAX: u64 = 1 << 30;

/// Why the engine failed a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Iommu(#[from] iommu::Error),
    #[error("the output array [{}, {}) overlaps the guest range [{}, {})",
        out.start, out.end, with.start, with.end)]
    OutputAliased { out: Range<Gpa>, with: Range<Gpa> },
    #[error("allocating {len:#x} bytes of DMA staging: {source}")]
    Staging {
        len: u64,
        #[source]
        source: pin::Error,
    },
    #[error("device write at {iova}: {source}")]
    WriteToGuest {
        iova: Iova,
        #[source]
        source: pin::Error,
    },
    #[error("device read at {iova}: {source}")]
    ReadFromGuest {
        iova: Iova,
        #[source]
        source: pin::Error,
    },
    #[error("writing the checksums to {out}: {source}")]
    WriteOutput {
        out: Gpa,
        #[source]
        source: crate::memory::Error,
    },
}

impl Error {
    /// The ABI status the guest is answered with.
    pub fn status(&self) -> u32 {
        match self {
            Error::Iommu(e) => e.status(),
            Error::OutputAliased { .. } => abi::STATUS_ALIASED,
            Error::WriteToGuest {
                source: pin::Error::Unsupported { .. },
                ..
            }
            | Error::ReadFromGuest {
                source: pin::Error::Unsupported { .. },
                ..
            } => abi::STATUS_UNSUPPORTED,
            Error::Staging { .. } | Error::WriteToGuest { .. } | Error::ReadFromGuest { .. } => {
                abi::STATUS_IO_ERROR
            }
            Error::WriteOutput { .. } => abi::STATUS_OUT_OF_RANGE,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Counters, readable from any thread.
#[derive(Default)]
pub struct Stats {
    pub descriptors: AtomicU64,
    pub bytes_to_guest: AtomicU64,
    pub bytes_from_guest: AtomicU64,
    /// Rejected requests (IOMMU and DMA) per ABI status code.
    pub rejects: [AtomicU64; abi::STATUS_NAMES.len()],
    pub maps: AtomicU64,
    pub unmaps: AtomicU64,
}

impl Stats {
    pub fn reject(&self, status: u32) {
        let i = (status as usize).min(self.rejects.len() - 1);
        self.rejects[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejects_total(&self) -> u64 {
        self.rejects.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }
}

/// The engine's own state: its staging area and what it holds.
#[derive(Default)]
pub struct DmaEngine {
    staging: Option<Staging>,
    /// (seed, iova, len) of the pattern staging holds, so a repeated fill is not recomputed.
    staged_pattern: Option<(u64, Iova, u64)>,
}

impl DmaEngine {
    /// The staging area, once a request has needed one.
    pub fn staging(&self) -> Option<&Staging> {
        self.staging.as_ref()
    }

    fn staging_for(&mut self, len: u64) -> Result<&mut Staging> {
        let want = len.clamp(PAGE_SIZE, STAGING_MAX);
        if self.staging.as_ref().is_none_or(|s| s.len() < want) {
            self.staged_pattern = None;
            let staging =
                Staging::new(want).map_err(|source| Error::Staging { len: want, source })?;
            self.staging = Some(staging);
        }
        Ok(self.staging.as_mut().expect("allocated above"))
    }

    /// Executes one request. `forbidden` are guest ranges an output array may not overlap (the
    /// reserved low area, the queues). Returns the bytes moved.
    pub fn execute(
        &mut self,
        ram: &GuestRam,
        iommu: &mut Iommu,
        req: &DmaRequest,
        forbidden: &[Range<Gpa>],
    ) -> Result<u64> {
        match req {
            DmaRequest::Nop => Ok(0),
            DmaRequest::ToGuest(t) => {
                self.dma_to_guest(iommu, t)?;
                Ok(t.range.len())
            }
            DmaRequest::FromGuest(f) => {
                let out = f.out_range();
                if let Some(with) = forbidden.iter().find(|r| overlaps(&out, r)) {
                    return Err(Error::OutputAliased {
                        out,
                        with: with.clone(),
                    });
                }
                self.dma_from_guest(ram, iommu, f)?;
                Ok(f.range().len())
            }
        }
    }

    /// Executes `reqs` in order, answering each with `answer(i, result)`, in order, with what
    /// [`Self::execute`] gives it. Runs of two or more that [`stream_members`] accepts move as
    /// one stream (the ring stays full across descriptors); a stream that fails is replayed
    /// one descriptor at a time, so each answer is its own (device writes and reads are
    /// idempotent: moving a descriptor's bytes twice leaves what moving them once does).
    pub fn execute_batch(
        &mut self,
        ram: &GuestRam,
        iommu: &mut Iommu,
        reqs: &[DmaRequest],
        forbidden: &[Range<Gpa>],
        answer: &mut dyn FnMut(usize, Result<u64>),
    ) {
        let mut i = 0;
        while i < reqs.len() {
            let members = stream_members(iommu, &reqs[i..], forbidden);
            if members.len() < 2 {
                answer(i, self.execute(ram, iommu, &reqs[i], forbidden));
                i += 1;
                continue;
            }
            let n = members.len();
            match self.stream(ram, iommu, &members) {
                Ok(results) => {
                    for (k, r) in results.into_iter().enumerate() {
                        answer(i + k, r);
                    }
                }
                Err(e) => {
                    tracing::warn!("a stream of {n} DMA descriptors failed ({e}); replaying each");
                    for (k, req) in reqs.iter().enumerate().skip(i).take(n) {
                        answer(k, self.execute(ram, iommu, req, forbidden));
                    }
                }
            }
            i += n;
        }
    }

    /// Moves `members` (all on one mapping) as one list of pieces through the pin. `Err`: the
    /// pin failed part way (which members moved is unknown); `Ok`: each member's answer (a
    /// device read can still fail to write its checksums).
    fn stream(
        &mut self,
        ram: &GuestRam,
        iommu: &mut Iommu,
        members: &[Member],
    ) -> Result<Vec<Result<u64>>> {
        let first = &members[0];
        let (m, _) = iommu.lookup(&first.range, first.work.perm())?;
        let total: u64 = members.iter().map(|x| x.range.len()).sum();
        self.staged_pattern = None;
        let staging = self.staging_for(total)?;
        let piece = STREAM_PIECE.min(staging.len());
        let slots = staging.len() / piece;
        // Piece k of the stream goes to staging slot k % slots; `owner[k]`: (member, offset).
        let mut ops = Vec::new();
        let mut owner = Vec::new();
        for (d, x) in members.iter().enumerate() {
            let len = x.range.len();
            for off in (0..len).step_by(piece as usize) {
                ops.push(Transfer {
                    pin_offset: x.base + off,
                    staging_offset: (ops.len() as u64 % slots) * piece,
                    len: piece.min(len - off),
                });
                owner.push((d, off));
            }
        }
        let at = first.range.start();
        if let Work::Fill { .. } = first.work {
            m.pin
                .write_to_guest_each(staging, &ops, &mut |k, bytes| {
                    let (d, off) = owner[k];
                    let Work::Fill { seed } = members[d].work else {
                        unreachable!("a stream is one direction")
                    };
                    let word = (members[d].range.start().raw() + off) / 8;
                    abi::fill_pattern(as_words(bytes), seed, word);
                })
                .map_err(|source| Error::WriteToGuest { iova: at, source })?;
            return Ok(members.iter().map(|x| Ok(x.range.len())).collect());
        }
        let mut sums: Vec<Vec<u64>> = members
            .iter()
            .map(|x| vec![0; x.range.pages() as usize])
            .collect();
        m.pin
            .read_from_guest_each(staging, &ops, &mut |k, bytes| {
                let (d, off) = owner[k];
                let page = (off / PAGE_SIZE) as usize;
                abi::page_checksums(as_words_ref(bytes), &mut sums[d][page..]);
            })
            .map_err(|source| Error::ReadFromGuest { iova: at, source })?;
        Ok(members
            .iter()
            .zip(&sums)
            .map(|(x, sums)| {
                let Work::Sums { out } = x.work else {
                    unreachable!("a stream is one direction")
                };
                write_sums(ram, out, sums).map(|()| x.range.len())
            })
            .collect())
    }

    fn dma_to_guest(&mut self, iommu: &mut Iommu, req: &ToGuest) -> Result<()> {
        let (iova, len, seed) = (req.range.start(), req.range.len(), req.seed);
        let (m, base) = iommu.lookup(&req.range, Perm::WRITE)?;
        let mut done = 0;
        while done < len {
            let chunk = (len - done).min(STAGING_MAX);
            let at = Iova(iova.raw() + done);
            let key = (seed, at, chunk);
            let cached = self.staged_pattern == Some(key);
            self.staged_pattern = None;
            let staging = self.staging_for(chunk)?;
            let r = if cached {
                let whole = Transfer {
                    pin_offset: base + done,
                    staging_offset: 0,
                    len: chunk,
                };
                m.pin.write_to_guest(staging, &[whole])
            } else {
                // Piece k+1 is filled while the kernel copies piece k.
                let ops = pieces(base + done, chunk);
                let first_word = at.raw() / 8;
                m.pin.write_to_guest_each(staging, &ops, &mut |i, bytes| {
                    let word = first_word + ops[i].staging_offset / 8;
                    abi::fill_pattern(as_words(bytes), seed, word);
                })
            };
            r.map_err(|source| Error::WriteToGuest { iova: at, source })?;
            // Only a complete fill is reused (a failed one may have stopped part way).
            self.staged_pattern = Some(key);
            done += chunk;
        }
        Ok(())
    }

    fn dma_from_guest(&mut self, ram: &GuestRam, iommu: &mut Iommu, req: &FromGuest) -> Result<()> {
        let range = req.range();
        let (iova, len) = (range.start(), range.len());
        let (m, base) = iommu.lookup(&range, Perm::READ)?;
        let mut done = 0;
        let mut sums = Vec::with_capacity(range.pages() as usize);
        while done < len {
            let chunk = (len - done).min(STAGING_MAX);
            self.staged_pattern = None;
            let staging = self.staging_for(chunk)?;
            let ops = pieces(base + done, chunk);
            let first = sums.len();
            sums.resize(first + (chunk / PAGE_SIZE) as usize, 0);
            let chunk_sums = &mut sums[first..];
            m.pin
                .read_from_guest_each(staging, &ops, &mut |i, bytes| {
                    let page = (ops[i].staging_offset / PAGE_SIZE) as usize;
                    abi::page_checksums(as_words_ref(bytes), &mut chunk_sums[page..]);
                })
                .map_err(|source| Error::ReadFromGuest {
                    iova: Iova(iova.raw() + done),
                    source,
                })?;
            done += chunk;
        }
        write_sums(ram, req.out(), &sums)
    }
}

/// Writes a device read's checksums to its output array in guest RAM.
fn write_sums(ram: &GuestRam, out: Gpa, sums: &[u64]) -> Result<()> {
    let bytes: Vec<u8> = sums.iter().flat_map(|s| s.to_le_bytes()).collect();
    ram.write_slice(out, &bytes)
        .map_err(|source| Error::WriteOutput { out, source })
}

/// One descriptor of a stream: where its bytes are in the pin and what the device does.
struct Member {
    range: IovaRange,
    /// Offset of `range` in the mapping's pin.
    base: u64,
    work: Work,
}

/// What the device does with a stream member's bytes.
#[derive(Clone, Copy)]
enum Work {
    /// A device write: the pattern of `seed`.
    Fill { seed: u64 },
    /// A device read: checksums to the array at `out`.
    Sums { out: Gpa },
}

impl Work {
    /// The permission the mapping must grant for it.
    fn perm(self) -> Perm {
        match self {
            Work::Fill { .. } => Perm::WRITE,
            Work::Sums { .. } => Perm::READ,
        }
    }
}

/// The longest run at the start of `reqs` that can move as one stream with the same answers
/// as one at a time: device writes, or device reads, all on the mapping of the first, each
/// looked up with the right permission (a refusal ends the run: `execute` answers it), each
/// read's output array clear of `forbidden`, no member's guest bytes overlapping an earlier
/// member's guest bytes or output array (so no member sees or undoes an earlier one's effect),
/// and at most [`STREAM_MAX`] bytes in all.
fn stream_members(iommu: &mut Iommu, reqs: &[DmaRequest], forbidden: &[Range<Gpa>]) -> Vec<Member> {
    let mut members: Vec<Member> = Vec::new();
    // Guest bytes the members move, and the output arrays they write.
    let mut claimed: Vec<Range<Gpa>> = Vec::new();
    let mut mapping: Option<Iova> = None;
    let mut total = 0u64;
    let to_guest = matches!(reqs.first(), Some(DmaRequest::ToGuest(_)));
    for r in reqs {
        let (range, work, out) = match (r, to_guest) {
            (DmaRequest::ToGuest(t), true) => (t.range, Work::Fill { seed: t.seed }, None),
            (DmaRequest::FromGuest(f), false) => {
                (f.range(), Work::Sums { out: f.out() }, Some(f.out_range()))
            }
            _ => break,
        };
        let Ok((m, base)) = iommu.lookup(&range, work.perm()) else {
            break;
        };
        if mapping.is_some_and(|at| at != m.iova) {
            break;
        }
        mapping = Some(m.iova);
        let gpa = Gpa(m.gpa.raw() + base);
        let moved = gpa..Gpa(gpa.raw() + range.len());
        let clash = |x: &Range<Gpa>| claimed.iter().any(|c| overlaps(c, x));
        if total + range.len() > STREAM_MAX
            || clash(&moved)
            || out
                .as_ref()
                .is_some_and(|o| forbidden.iter().any(|f| overlaps(o, f)))
        {
            break;
        }
        total += range.len();
        claimed.push(moved);
        claimed.extend(out);
        members.push(Member { range, base, work });
    }
    members
}

/// `chunk` bytes from pin offset `pin_offset` as [`PIPELINE_PIECE`]-sized transfers from
/// staging offset 0 on.
fn pieces(pin_offset: u64, chunk: u64) -> Vec<Transfer> {
    (0..chunk)
        .step_by(PIPELINE_PIECE as usize)
        .map(|off| Transfer {
            pin_offset: pin_offset + off,
            staging_offset: off,
            len: PIPELINE_PIECE.min(chunk - off),
        })
        .collect()
}

/// The staging area as words: it is a page-aligned mapping, so the cast never has a prefix.
fn as_words(bytes: &mut [u8]) -> &mut [u64] {
    // SAFETY: any bit pattern is a valid u64; align_to_mut only yields the aligned middle part.
    let (head, words, _) = unsafe { bytes.align_to_mut::<u64>() };
    debug_assert!(head.is_empty(), "staging is page aligned");
    words
}

/// A staging piece as words (read only; see [`as_words`]).
fn as_words_ref(bytes: &[u8]) -> &[u64] {
    // SAFETY: any bit pattern is a valid u64; align_to only yields the aligned middle part.
    let (head, words, _) = unsafe { bytes.align_to::<u64>() };
    debug_assert!(head.is_empty(), "staging pieces are page aligned");
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::request::Map;
    use crate::scenario::PinKind;

    const MIB: u64 = 1 << 20;

    /// A device write of several pipelined pieces (more than one staging chunk, a short last
    /// piece), per kind, then the same descriptor again (the staged pattern reused) and with
    /// another seed: guest RAM holds exactly the pattern of the last seed, and nothing past the
    /// descriptor changed. A bug: a piece filled at the wrong word index, moved before its fill,
    /// or a stale staged pattern reused for another seed.
    #[test]
    fn pipelined_write_lands_the_whole_pattern() {
        let len = STAGING_MAX + 3 * PIPELINE_PIECE + 5 * PAGE_SIZE;
        let iova = 4 * MIB;
        for kind in [PinKind::IoUring, PinKind::Mapping] {
            let ram = GuestRam::new(64 * MIB, true, false).unwrap();
            let mut iommu = Iommu::new(kind);
            let rw = abi::PERM_READ | abi::PERM_WRITE;
            let map = Map::new(Iova(0), Gpa(0), 32 * MIB, rw, ram.size()).unwrap();
            iommu.map(&ram, &map).unwrap();
            let mut engine = DmaEngine::default();
            for seed in [7u64, 7, 8] {
                let d = abi::Descriptor {
                    op: abi::OP_TO_GUEST,
                    iova,
                    arg: seed,
                    len,
                    ..Default::default()
                };
                let req = DmaRequest::parse(&d, ram.size()).unwrap();
                assert_eq!(engine.execute(&ram, &mut iommu, &req, &[]).unwrap(), len);
                let words: Vec<u64> = (0..len / 8)
                    .map(|i| ram.read_obj::<u64>(Gpa(iova + i * 8)).unwrap())
                    .collect();
                assert!(
                    abi::pattern_matches(&words, seed, iova / 8),
                    "{kind} seed {seed}: guest RAM is not the pattern"
                );
                assert_eq!(ram.read_obj::<u64>(Gpa(iova + len)).unwrap(), 0, "{kind}");
            }
            iommu.clear();
        }
    }

    /// A device read of several pipelined pieces (and more than one staging chunk) writes exactly
    /// `abi::page_checksums` of the region to the output array, per kind. A bug: a piece's sums
    /// at the wrong index, a piece summed before it landed, or a chunk boundary off by one.
    #[test]
    fn pipelined_read_checksums_match_page_checksums() {
        let len = STAGING_MAX + 3 * PIPELINE_PIECE + 5 * PAGE_SIZE;
        let out = 32 * MIB;
        for kind in PinKind::ALL {
            let ram = GuestRam::new(64 * MIB, true, false).unwrap();
            let words: Vec<u64> = (0..len / 8).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            ram.write_slice(Gpa(0), &bytes).unwrap();
            let mut want = vec![0u64; (len / PAGE_SIZE) as usize];
            abi::page_checksums(&words, &mut want);

            let mut iommu = Iommu::new(kind);
            let map = Map::new(
                Iova(0),
                Gpa(0),
                16 * MIB,
                abi::PERM_READ | abi::PERM_WRITE,
                ram.size(),
            );
            iommu.map(&ram, &map.unwrap()).unwrap();
            let mut engine = DmaEngine::default();
            let d = abi::Descriptor {
                op: abi::OP_FROM_GUEST,
                iova: 0,
                arg: out,
                len,
                ..Default::default()
            };
            let req = DmaRequest::parse(&d, ram.size()).unwrap();
            assert_eq!(engine.execute(&ram, &mut iommu, &req, &[]).unwrap(), len);
            let got: Vec<u64> = (0..want.len() as u64)
                .map(|i| ram.read_obj::<u64>(Gpa(out + i * 8)).unwrap())
                .collect();
            assert!(got == want, "{kind}: checksums differ");
            iommu.clear();
        }
    }

    /// The statuses the engine's failures answer with. A bug: a vmsplice device write answered
    /// as an I/O error (the guest would count a DMA error, not "unsupported"), or a write through
    /// a read-only mapping allowed.
    #[test]
    fn failures_answer_their_status() {
        let ram = GuestRam::new(16 * MIB, false, false).unwrap();
        let to_guest = abi::Descriptor {
            op: abi::OP_TO_GUEST,
            iova: 0,
            len: PAGE_SIZE,
            ..Default::default()
        };
        let req = DmaRequest::parse(&to_guest, ram.size()).unwrap();
        let rows: &[(&str, PinKind, u32, u32)] = &[
            (
                "vmsplice cannot write",
                PinKind::Vmsplice,
                abi::PERM_READ | abi::PERM_WRITE,
                abi::STATUS_UNSUPPORTED,
            ),
            (
                "a read-only mapping",
                PinKind::Mapping,
                abi::PERM_READ,
                abi::STATUS_PERMISSION,
            ),
        ];
        for &(what, kind, perm, want) in rows {
            let mut iommu = Iommu::new(kind);
            let map = Map::new(Iova(0), Gpa(0x20_0000), PAGE_SIZE, perm, ram.size()).unwrap();
            iommu.map(&ram, &map).unwrap();
            let mut engine = DmaEngine::default();
            let got = engine
                .execute(&ram, &mut iommu, &req, &[])
                .map_err(|e| e.status());
            assert_eq!(
                got.map_err(abi::status_name),
                Err(abi::status_name(want)),
                "{what}"
            );
            iommu.clear();
        }
    }

    /// Descriptors as a guest could post them in one doorbell, each (op, iova, arg, len).
    type Posted = &'static [(u32, u64, u64, u64)];

    const TG: u32 = abi::OP_TO_GUEST;
    const FG: u32 = abi::OP_FROM_GUEST;
    const OUT: u64 = 20 * MIB;

    /// 32 MiB of guest RAM, a recognisable word in every slot, with three mappings: IOVA 0 ->
    /// GPA 0 (12 MiB, rw), IOVA 16 MiB -> GPA 12 MiB (4 MiB, rw), IOVA 24 MiB -> GPA 16 MiB
    /// (2 MiB, read only). Outputs go at GPA 20 MiB; [30, 31) MiB is forbidden.
    fn rig(kind: PinKind) -> (GuestRam, Iommu) {
        let ram = GuestRam::new(32 * MIB, true, false).unwrap();
        let words: Vec<u8> = (0..ram.size() / 8)
            .flat_map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a).to_le_bytes())
            .collect();
        ram.write_slice(Gpa(0), &words).unwrap();
        let mut iommu = Iommu::new(kind);
        let rw = abi::PERM_READ | abi::PERM_WRITE;
        for (iova, gpa, len, perm) in [
            (0, 0, 12 * MIB, rw),
            (16 * MIB, 12 * MIB, 4 * MIB, rw),
            (24 * MIB, 16 * MIB, 2 * MIB, abi::PERM_READ),
        ] {
            let map = Map::new(Iova(iova), Gpa(gpa), len, perm, ram.size()).unwrap();
            iommu.map(&ram, &map).unwrap();
        }
        (ram, iommu)
    }

    fn forbidden() -> Vec<Range<Gpa>> {
        vec![Gpa(30 * MIB)..Gpa(31 * MIB)]
    }

    fn requests(posted: Posted, ram: &GuestRam) -> Vec<DmaRequest> {
        posted
            .iter()
            .map(|&(op, iova, arg, len)| {
                let d = abi::Descriptor {
                    op,
                    iova,
                    arg,
                    len,
                    ..Default::default()
                };
                DmaRequest::parse(&d, ram.size()).unwrap()
            })
            .collect()
    }

    fn snapshot(ram: &GuestRam) -> Vec<u64> {
        (0..ram.size() / 8)
            .map(|i| ram.read_obj::<u64>(Gpa(i * 8)).unwrap())
            .collect()
    }

    // (description, descriptors, lengths of the streams `stream_members` cuts them into)
    const BATCHES: [(&str, Posted, &[usize]); 5] = [
        (
            "writes: a stream, another mapping, an overlap",
            &[
                (TG, 0, 1, 3 * MIB),
                (TG, 3 * MIB, 2, 5 * MIB + 8192),
                (TG, 8 * MIB + 8192, 3, 2 * MIB),
                (TG, 16 * MIB, 4, MIB),
                (TG, MIB, 5, MIB),
            ],
            &[3, 1, 1],
        ),
        (
            "reads on three mappings (one read only)",
            &[
                (FG, 0, OUT, 4 * MIB),
                (FG, 4 * MIB, OUT + 8192, 4 * MIB),
                (FG, 16 * MIB, OUT + 16384, 2 * MIB),
                (FG, 24 * MIB, OUT + 20480, MIB),
            ],
            &[2, 1, 1],
        ),
        (
            "a read of an earlier read's checksums",
            &[(FG, 0, 6 * MIB, 2 * MIB), (FG, 6 * MIB, OUT, 2 * MIB)],
            &[1, 1],
        ),
        (
            "refusals between members: unmapped, read only, forbidden output, a NOP",
            &[
                (TG, 0, 1, 2 * MIB),
                (TG, 28 * MIB, 2, MIB),
                (TG, 24 * MIB, 3, MIB),
                (FG, 0, 30 * MIB, MIB),
                (FG, 2 * MIB, OUT, MIB),
                (FG, 3 * MIB, OUT + 4096, MIB),
                (abi::OP_NOP, 0, 0, 0),
                (TG, 2 * MIB, 9, MIB),
                (TG, 4 * MIB, 10, 2 * MIB),
            ],
            &[1, 1, 1, 1, 2, 1, 2],
        ),
        (
            "directions alternate over the same bytes",
            &[
                (TG, 0, 1, 4 * MIB),
                (FG, 0, OUT, 4 * MIB),
                (TG, 0, 2, 4 * MIB),
                (FG, 0, OUT + 8192, 4 * MIB),
            ],
            &[1, 1, 1, 1],
        ),
    ];

    /// A doorbell's descriptors through `execute_batch` give each the answer, and guest RAM
    /// the bytes, of `execute` one at a time, whatever the streams they are cut into.
    /// A bug: a stream reordering a member's effect (a read before an earlier write's output,
    /// a write undone by an earlier one), or one refusal failing its neighbours.
    #[test]
    fn batches_answer_and_write_as_one_at_a_time() {
        for kind in PinKind::ALL {
            for (desc, posted, _) in BATCHES {
                let (ram, mut iommu) = rig(kind);
                let reqs = requests(posted, &ram);
                let mut engine = DmaEngine::default();
                let one_by_one: Vec<std::result::Result<u64, u32>> = reqs
                    .iter()
                    .map(|r| {
                        engine
                            .execute(&ram, &mut iommu, r, &forbidden())
                            .map_err(|e| e.status())
                    })
                    .collect();
                let want = snapshot(&ram);
                iommu.clear();

                let (ram, mut iommu) = rig(kind);
                let mut engine = DmaEngine::default();
                let mut got: Vec<(usize, std::result::Result<u64, u32>)> = Vec::new();
                engine.execute_batch(&ram, &mut iommu, &reqs, &forbidden(), &mut |i, r| {
                    got.push((i, r.map_err(|e| e.status())));
                });
                let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
                assert_eq!(order, (0..reqs.len()).collect::<Vec<_>>(), "{kind} {desc}");
                let answers: Vec<std::result::Result<u64, u32>> =
                    got.into_iter().map(|(_, r)| r).collect();
                assert_eq!(answers, one_by_one, "{kind} {desc}: answers");
                assert!(snapshot(&ram) == want, "{kind} {desc}: guest RAM differs");
                iommu.clear();
            }
        }
    }

    /// Where a doorbell's descriptors are cut into streams (see `stream_members`).
    /// A bug: a stream across mappings, directions, overlapping bytes or a refusal.
    #[test]
    fn streams_end_where_one_at_a_time_would_differ() {
        let (ram, mut iommu) = rig(PinKind::Mapping);
        for (desc, posted, want) in BATCHES {
            let reqs = requests(posted, &ram);
            let mut cuts = Vec::new();
            let mut i = 0;
            while i < reqs.len() {
                let n = stream_members(&mut iommu, &reqs[i..], &forbidden())
                    .len()
                    .max(1);
                cuts.push(n);
                i += n;
            }
            assert_eq!(cuts, want, "{desc}");
        }
        iommu.clear();
    }
}
