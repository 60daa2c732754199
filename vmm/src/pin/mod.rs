//! The device's hold on guest pages: one trait, several mechanisms.
//!
//! Owns the pins (and references) a device keeps on a range of guest RAM, the transfers a device
//! makes through them, and the host-side staging area those transfers copy from and to:
//! - [`PinKind::IoUring`]: io_uring registered buffers (FOLL_PIN | FOLL_LONGTERM, the class of pin
//!   VFIO type1 takes). Device writes are READ_FIXED into the buffer, device reads WRITE_FIXED.
//! - [`PinKind::Vmsplice`]: page references (FOLL_GET) held by pipes filled with vmsplice(2).
//!   Device reads only: a device write returns [`Error::Unsupported`].
//! - [`PinKind::Mapping`]: no pin; copies through the VMM's own mapping. The control group.
//! - [`PinKind::Vfio`]: the VFIO type1/iommufd pin on all of guest RAM, taken at attach by
//!   [`vfio::Attachment`]; a [`vfio::VfioPin`] is the device's view of one range of it. It moves
//!   no data (the lab has no driver for the passed-through device): both directions return
//!   [`Error::Unsupported`], and the verdict rests on PFN evidence only.
//!
//! It must not touch the VMM mapping of guest RAM except in `Mapping`: the other kinds move data
//! only through what they hold, as a device behind an IOMMU would. It records no evidence: PFNs
//! are read by [`crate::pfn`] by whoever pins, at pin time.
//!
//! Every [`Transfer`] comes from a (possibly hostile) guest: each is checked against the pinned
//! length and the staging length with checked arithmetic before any byte moves, and an
//! out-of-range one is an error, never a panic.

use std::io;

use serde::{Deserialize, Serialize};

use crate::addr::Hva;

pub mod io_uring;
pub mod mapping;
mod staging;
pub mod vfio;
pub mod vmsplice;

pub use staging::{Backing, Staging};

/// Errors of the pin layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An io_uring pin failed.
    #[error(transparent)]
    IoUring(#[from] io_uring::Error),
    /// A vmsplice pin failed.
    #[error(transparent)]
    Vmsplice(#[from] vmsplice::Error),
    /// A VFIO pin failed (or was asked for with no device attached).
    #[error(transparent)]
    Vfio(#[from] vfio::Error),
    /// The mechanism cannot move data in this direction (vmsplice cannot write to guest).
    #[error("{kind} pin cannot {op}")]
    Unsupported { kind: PinKind, op: &'static str },
    /// A transfer lies outside the pinned range or the staging area.
    #[error(
        "transfer {index} out of range: pin_offset {pin_offset:#x}, staging_offset \
         {staging_offset:#x}, len {len:#x} (pin len {pin_len:#x}, staging len {staging_len:#x})"
    )]
    TransferOutOfRange {
        index: usize,
        pin_offset: u64,
        staging_offset: u64,
        len: u64,
        pin_len: u64,
        staging_len: u64,
    },
    /// The pinned range is empty.
    #[error("empty pin at {hva}")]
    EmptyPin { hva: Hva },
    /// The pinned range is not page aligned (pins work on whole pages).
    #[error("pin range {hva} + {len:#x} is not page aligned")]
    Unaligned { hva: Hva, len: u64 },
    /// `hva + len` overflows.
    #[error("pin range {hva} + {len:#x} overflows")]
    RangeOverflow { hva: Hva, len: u64 },
    /// memfd_create(2) for the staging area failed.
    #[error("memfd_create for staging: {0}")]
    StagingMemfd(#[source] io::Error),
    /// ftruncate(2) of the staging file failed.
    #[error("ftruncate staging file to {len:#x}: {source}")]
    StagingTruncate {
        len: u64,
        #[source]
        source: io::Error,
    },
    /// Sealing the staging memfd's size failed.
    #[error("seal staging memfd: {0}")]
    StagingSeal(#[source] io::Error),
    /// mmap(2) of the staging file failed.
    #[error("mmap staging file of {len:#x} bytes: {source}")]
    StagingMmap {
        len: u64,
        #[source]
        source: io::Error,
    },
    /// A staging area must have a non-zero length that fits the address space.
    #[error("invalid staging length {len:#x}")]
    StagingLen { len: u64 },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The mechanism a device uses to hold guest pages: the scenario vocabulary's type.
pub use crate::scenario::PinKind;

/// One batched transfer between the staging area and the pinned range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Byte offset into the pinned range.
    pub pin_offset: u64,
    /// Byte offset into the staging area.
    pub staging_offset: u64,
    /// Bytes to move.
    pub len: u64,
}

/// Checks every transfer against the pinned length and the staging length.
pub fn validate(ops: &[Transfer], pin_len: u64, staging_len: u64) -> Result<()> {
    for (index, t) in ops.iter().enumerate() {
        let pin_end = t.pin_offset.checked_add(t.len);
        let staging_end = t.staging_offset.checked_add(t.len);
        let fits = matches!(pin_end, Some(e) if e <= pin_len)
            && matches!(staging_end, Some(e) if e <= staging_len);
        if !fits {
            return Err(Error::TransferOutOfRange {
                index,
                pin_offset: t.pin_offset,
                staging_offset: t.staging_offset,
                len: t.len,
                pin_len,
                staging_len,
            });
        }
    }
    Ok(())
}

/// A device's hold on a range of guest RAM.
///
/// `write_to_guest` takes `&Staging` (it only reads staging), `read_from_guest` takes
/// `&mut Staging` because the kernel writes into the staging pages: no Rust borrow of them may be
/// alive meanwhile.
pub trait Pin: Send {
    /// The mechanism.
    fn kind(&self) -> PinKind;
    /// Length of the pinned range in bytes.
    fn len(&self) -> u64;
    /// Whether the pinned range is empty (never true for a pin that was created).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The PFN of each page as read when the pin was taken, if the pin read them itself (VFIO:
    /// right after MAP_DMA, possibly long before this range was handed out; io-uring: each
    /// part's PFNs read right after that part was pinned, while the next part pinned). Taken
    /// once: a second call may say `None`. `None`: the caller reads pagemap now, after the pin.
    fn take_pinned_pfns(&mut self) -> Option<crate::pfn::Result<crate::pfn_runs::PfnRuns>> {
        None
    }
    /// Device write ("to guest"): copy `staging[staging_offset..+len]` into the pinned pages at
    /// `pin_offset`, through the pin, never through the VMM mapping (except `Mapping`).
    fn write_to_guest(&mut self, staging: &Staging, ops: &[Transfer]) -> Result<()>;
    /// Device write that asks for each transfer's bytes just before they move: `fill(i, bytes)`
    /// is called once per non-empty `ops[i]`, in order, with `staging[staging_offset..+len]` to
    /// write, and that transfer moves after it returns; io-uring fills transfer k+1 while the
    /// kernel copies k. On error, some transfers may have been filled and moved and others not.
    /// The default fills and moves one transfer at a time.
    fn write_to_guest_each(
        &mut self,
        staging: &mut Staging,
        ops: &[Transfer],
        fill: &mut dyn FnMut(usize, &mut [u8]),
    ) -> Result<()> {
        validate(ops, self.len(), staging.len())?;
        for (i, t) in ops.iter().enumerate().filter(|(_, t)| t.len > 0) {
            // In range: validated above.
            fill(
                i,
                &mut staging.as_mut_slice()[t.staging_offset as usize..][..t.len as usize],
            );
            self.write_to_guest(staging, std::slice::from_ref(t))?;
        }
        Ok(())
    }
    /// Device read ("from guest"): copy the pinned pages at `pin_offset` into
    /// `staging[staging_offset..+len]`.
    fn read_from_guest(&mut self, staging: &mut Staging, ops: &[Transfer]) -> Result<()>;
    /// Device read that hands over each transfer as soon as its bytes are in staging:
    /// `done(i, bytes)` is called once per `ops[i]` with `staging[staging_offset..+len]`, in
    /// completion order, while later transfers may still be in flight (io-uring), so a caller can
    /// consume piece k while piece k+1 moves. Transfers may reuse staging bytes: each one's
    /// bytes are handed over before a later transfer overwrites them. On error, `done` may have
    /// been called for some transfers and not others. The default reads everything, then calls
    /// `done` in order; when transfers share staging bytes, it reads and hands over one at a time.
    fn read_from_guest_each(
        &mut self,
        staging: &mut Staging,
        ops: &[Transfer],
        done: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<()> {
        if staging_disjoint(ops) {
            self.read_from_guest(staging, ops)?;
            let bytes = staging.as_slice();
            for (i, t) in ops.iter().enumerate() {
                // In range: `read_from_guest` validated every transfer against staging's length.
                done(i, &bytes[t.staging_offset as usize..][..t.len as usize]);
            }
            return Ok(());
        }
        for (i, t) in ops.iter().enumerate() {
            self.read_from_guest(staging, std::slice::from_ref(t))?;
            // In range: `read_from_guest` validated the transfer against staging's length.
            done(
                i,
                &staging.as_slice()[t.staging_offset as usize..][..t.len as usize],
            );
        }
        Ok(())
    }
}

/// Whether no two transfers overlap in staging (so one can be read while another is written).
pub(crate) fn staging_disjoint(ops: &[Transfer]) -> bool {
    let mut spans: Vec<(u64, u64)> = ops
        .iter()
        .filter(|t| t.len > 0)
        .map(|t| (t.staging_offset, t.staging_offset.saturating_add(t.len)))
        .collect();
    spans.sort_unstable();
    spans.windows(2).all(|w| w[0].1 <= w[1].0)
}

/// Checks that `hva..hva+len` is a non-empty, page-aligned range that fits the address space.
pub(crate) fn check_range(hva: Hva, len: u64) -> Result<()> {
    use crate::addr::PAGE_SIZE;
    if len == 0 {
        return Err(Error::EmptyPin { hva });
    }
    if !hva.is_aligned(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(Error::Unaligned { hva, len });
    }
    hva.checked_add(len)
        .ok_or(Error::RangeOverflow { hva, len })?;
    Ok(())
}

/// Pins `hva..hva+len` (page aligned) with the given mechanism.
///
/// io-uring faults the range in and pins it at once; vmsplice faults it in (read faults: an
/// untouched page is referenced as the shared zero page) and references every page. VFIO pins
/// exist only over an attachment's maps ([`vfio::VfioPin::new`]): here it is refused with
/// [`vfio::Error::NotAttached`].
///
/// # Safety
///
/// `hva..hva+len` must be a mapping of this process that stays mapped for the lifetime of the
/// returned pin, and while the pin is alive no Rust reference may be held to that memory across
/// a call of `write_to_guest` (the kernel, or for `Mapping` a raw copy, writes to it; guest RAM is
/// accessed through raw pointers or volatile accesses only).
pub unsafe fn pin(kind: PinKind, hva: Hva, len: u64) -> Result<Box<dyn Pin>> {
    check_range(hva, len)?;
    Ok(match kind {
        // SAFETY: forwarded from this function's contract.
        PinKind::IoUring => Box::new(unsafe { io_uring::IoUringPin::new(hva, len) }?),
        PinKind::Vmsplice => Box::new(vmsplice::VmsplicePin::new(hva, len)?),
        // SAFETY: forwarded from this function's contract.
        PinKind::Mapping => Box::new(unsafe { mapping::MappingPin::new(hva, len) }),
        PinKind::Vfio => return Err(vfio::Error::NotAttached.into()),
    })
}

/// Readies the calling thread to drive pins of `kind` before the first one is asked for: for
/// io-uring, starts the thread's io-wq worker ([`io_uring::start_worker`]), which the first
/// device transfer would otherwise wait for; for the others, nothing is needed (`None`). Does
/// not wait: the device thread calls it while the guest boots, and serves the guest's doorbells
/// right after. Keep what it returns while the thread drives pins.
pub fn prepare_thread(kind: PinKind) -> Result<Option<io_uring::WorkerStart>> {
    match kind {
        PinKind::IoUring => Ok(Some(io_uring::start_worker()?)),
        PinKind::Vmsplice | PinKind::Mapping | PinKind::Vfio => Ok(None),
    }
}

/// How a pin is taken and driven (what `[device]` configures beyond the mechanism).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinOptions {
    /// io-uring: most SQEs in flight per call (1..=[`io_uring::RING_ENTRIES`]).
    pub queue_depth: u32,
}

impl Default for PinOptions {
    fn default() -> Self {
        PinOptions::from(&crate::scenario::DeviceSpec::default())
    }
}

impl From<&crate::scenario::DeviceSpec> for PinOptions {
    fn from(d: &crate::scenario::DeviceSpec) -> Self {
        PinOptions {
            queue_depth: d.queue_depth,
        }
    }
}

/// As [`pin`], driven with `options` (io-uring: its queue depth).
///
/// # Safety
///
/// As [`pin`].
pub unsafe fn pin_with(
    kind: PinKind,
    hva: Hva,
    len: u64,
    options: PinOptions,
) -> Result<Box<dyn Pin>> {
    check_range(hva, len)?;
    if kind == PinKind::IoUring {
        let depth = options.queue_depth as usize;
        // SAFETY: forwarded from this function's contract.
        return Ok(Box::new(unsafe {
            io_uring::IoUringPin::reading_pfns(hva, len, depth)
        }?));
    }
    // SAFETY: forwarded from this function's contract.
    unsafe { pin(kind, hva, len) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PAGE_SIZE;
    use crate::pfn::test_support::{thp_setup, AnonRegion};
    use crate::pfn::{self, diff_pfns};

    const MIB: u64 = 1 << 20;
    const LEN: u64 = 4 * MIB;

    fn old_pattern(i: usize) -> u8 {
        (i as u8) ^ ((i >> 12) as u8)
    }
    fn new_pattern(i: usize) -> u8 {
        !old_pattern(i).wrapping_mul(3)
    }
    fn device_pattern(i: usize) -> u8 {
        (i >> 9) as u8 ^ 0x5a
    }

    fn whole(len: u64) -> [Transfer; 1] {
        [Transfer {
            pin_offset: 0,
            staging_offset: 0,
            len,
        }]
    }

    /// Pins a THP-backed region of `LEN` bytes filled with `old_pattern`.
    fn setup_pinned(kind: PinKind) -> (AnonRegion, Box<dyn Pin>) {
        let mut r = AnonRegion::new(LEN, libc::MADV_HUGEPAGE);
        r.fill(old_pattern);
        // SAFETY: `r` outlives the pin in every test (declared first, dropped last); the tests
        // hold no reference into it across pin calls.
        let p = unsafe { pin(kind, r.hva, r.len) }.unwrap();
        (r, p)
    }

    #[test]
    fn kind_names_round_trip() {
        for k in PinKind::ALL {
            assert_eq!(k.to_string().parse::<PinKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!("vfio".parse::<PinKind>().unwrap(), PinKind::Vfio);
        assert!(
            !PinKind::ALL.contains(&PinKind::Vfio),
            "ALL needs no device"
        );
        assert!("vfio-pci".parse::<PinKind>().is_err());
    }

    /// Per kind: what a device read and a device write see on a freshly pinned THP range.
    /// A bug: a read that does not match the CPU's pattern, or a write the CPU does not see.
    #[test]
    fn read_and_write_through_each_kind() {
        // (kind, device write supported)
        let table = [
            (PinKind::IoUring, true),
            (PinKind::Vmsplice, false),
            (PinKind::Mapping, true),
        ];
        for (kind, writes) in table {
            let (mut r, mut p) = setup_pinned(kind);
            assert_eq!((p.kind(), p.len()), (kind, LEN));
            assert!(
                pfn::thp_coverage(r.hva, LEN).unwrap() >= 0.9,
                "{}",
                thp_setup()
            );

            let mut staging = Staging::new(LEN).unwrap();
            p.read_from_guest(&mut staging, &whole(LEN)).unwrap();
            assert!(
                staging.as_slice() == r.bytes(),
                "{kind}: device read differs from CPU content"
            );

            for (i, b) in staging.as_mut_slice().iter_mut().enumerate() {
                *b = device_pattern(i);
            }
            let res = p.write_to_guest(&staging, &whole(LEN));
            if writes {
                res.unwrap();
                assert!(
                    staging.as_slice() == r.bytes(),
                    "{kind}: CPU does not see device write"
                );
            } else {
                assert!(
                    matches!(res, Err(Error::Unsupported { kind: k, .. }) if k == kind),
                    "{kind}: {res:?}"
                );
            }
        }
    }

    /// `read_from_guest_each` per kind, with disjoint pieces (the io-uring early hand-over) and
    /// with overlapping ones (its fallback): every transfer is handed over exactly once, with the
    /// bytes the CPU sees at its pin offset. A bug: a piece handed over before its bytes landed
    /// (wrong contents), twice, or not at all.
    #[test]
    fn read_each_hands_over_every_transfer_once() {
        let t = |pin_offset, staging_offset, len| Transfer {
            pin_offset,
            staging_offset,
            len,
        };
        // (description, transfers)
        let table = [
            (
                "disjoint 1 MiB pieces",
                (0..4).map(|i| t(i * MIB, i * MIB, MIB)).collect::<Vec<_>>(),
            ),
            (
                "unaligned, with an empty one",
                vec![t(5, 0, 3 * MIB), t(LEN - 7, 3 * MIB, 7), t(0, 9, 0)],
            ),
            (
                "overlapping in staging",
                vec![t(0, 0, 2 * MIB), t(MIB, MIB, 2 * MIB)],
            ),
        ];
        assert!(staging_disjoint(&table[0].1) && staging_disjoint(&table[1].1));
        assert!(!staging_disjoint(&table[2].1));
        for kind in PinKind::ALL {
            let (mut r, mut p) = setup_pinned(kind);
            let cpu = r.bytes().to_vec();
            for (desc, ops) in &table {
                let mut staging = Staging::new(LEN).unwrap();
                let mut seen = vec![0usize; ops.len()];
                p.read_from_guest_each(&mut staging, ops, &mut |i, bytes| {
                    seen[i] += 1;
                    let (po, l) = (ops[i].pin_offset as usize, ops[i].len as usize);
                    assert!(bytes == &cpu[po..po + l], "{kind} {desc}: transfer {i}");
                })
                .unwrap();
                assert!(seen.iter().all(|&n| n == 1), "{kind} {desc}: {seen:?}");
            }
        }
    }

    /// `write_to_guest_each` per kind: every non-empty transfer is filled once, in order, with
    /// its own staging bytes, and the CPU then sees each fill at its pin offset (vmsplice cannot
    /// write: `Unsupported`). A bug: a fill handed the wrong staging range, skipped, repeated,
    /// or a transfer moved before its fill.
    #[test]
    fn write_each_fills_then_moves_every_transfer() {
        let t = |pin_offset, staging_offset, len| Transfer {
            pin_offset,
            staging_offset,
            len,
        };
        let ops = [
            t(0, 0, MIB),
            t(3 * MIB, MIB, MIB - 8),
            t(5, 0, 0),
            t(MIB + 4096, 2 * MIB, 2 * MIB - 8192),
        ];
        for kind in PinKind::ALL {
            let (mut r, mut p) = setup_pinned(kind);
            let mut staging = Staging::new(LEN).unwrap();
            let mut order = Vec::new();
            let res = p.write_to_guest_each(&mut staging, &ops, &mut |i, bytes| {
                assert_eq!(bytes.len() as u64, ops[i].len, "{kind}: transfer {i}");
                bytes.fill(0x10 + i as u8);
                order.push(i);
            });
            if kind == PinKind::Vmsplice {
                assert!(matches!(res, Err(Error::Unsupported { .. })), "{res:?}");
                continue;
            }
            res.unwrap();
            assert_eq!(order, [0, 1, 3], "{kind}");
            let bytes = r.bytes();
            for i in [0, 1, 3] {
                let (po, l) = (ops[i].pin_offset as usize, ops[i].len as usize);
                assert!(
                    bytes[po..po + l].iter().all(|&b| b == 0x10 + i as u8),
                    "{kind}: transfer {i}"
                );
            }
            assert_eq!(bytes[MIB as usize], old_pattern(MIB as usize), "{kind}");
        }
    }

    /// Scattered transfers, unaligned, crossing pipe (1 MiB) and THP (2 MiB) boundaries.
    #[test]
    fn scattered_transfers_land_where_asked() {
        let ops = [
            Transfer {
                pin_offset: MIB - 100,
                staging_offset: 7,
                len: 300,
            },
            Transfer {
                pin_offset: 2 * MIB - 5000,
                staging_offset: 10_000,
                len: MIB + 12_345,
            },
            Transfer {
                pin_offset: LEN - 1,
                staging_offset: 5,
                len: 1,
            },
            Transfer {
                pin_offset: 0,
                staging_offset: 0,
                len: 0,
            },
        ];
        for kind in PinKind::ALL {
            let (mut r, mut p) = setup_pinned(kind);
            let mut staging = Staging::new(2 * MIB).unwrap();
            p.read_from_guest(&mut staging, &ops).unwrap();
            let cpu = r.bytes().to_vec();
            for t in &ops {
                let (po, so, l) = (
                    t.pin_offset as usize,
                    t.staging_offset as usize,
                    t.len as usize,
                );
                assert!(
                    staging.as_slice()[so..so + l] == cpu[po..po + l],
                    "{kind}: read {t:?}"
                );
            }
            if kind == PinKind::Vmsplice {
                continue;
            }
            staging.as_mut_slice().fill(0xee);
            p.write_to_guest(&staging, &ops[1..2]).unwrap();
            let t = ops[1];
            let bytes = r.bytes();
            let (po, l) = (t.pin_offset as usize, t.len as usize);
            assert!(bytes[po..po + l].iter().all(|&b| b == 0xee), "{kind}");
            assert!(
                bytes[..po] == cpu[..po] && bytes[po + l..] == cpu[po + l..],
                "{kind}"
            );
        }
    }

    /// The oracle can fail: after MADV_DONTNEED and a CPU write, a real pin still holds the old
    /// pages (the device reads the OLD content and the PFNs differ), while the control group
    /// reads the NEW content. A bug in the lab would be a pin that reads the new content (it is
    /// not really holding pages), or a mapping read that returns the old one.
    #[test]
    fn discard_leaves_the_pin_on_old_pages() {
        // (kind, device read after discard sees the old content)
        let table = [
            (PinKind::IoUring, true),
            (PinKind::Vmsplice, true),
            (PinKind::Mapping, false),
        ];
        for (kind, sees_old) in table {
            let (mut r, mut p) = setup_pinned(kind);
            let before = pfn::snapshot(r.hva, LEN).unwrap().pfns();
            r.madvise(0, LEN, libc::MADV_DONTNEED);
            r.fill(new_pattern);
            let after = pfn::snapshot(r.hva, LEN).unwrap().pfns();
            assert_eq!(
                diff_pfns(&before, &after).len() as u64,
                LEN / PAGE_SIZE,
                "{kind}"
            );

            let mut staging = Staging::new(LEN).unwrap();
            p.read_from_guest(&mut staging, &whole(LEN)).unwrap();
            let got_old = staging
                .as_slice()
                .iter()
                .enumerate()
                .all(|(i, &b)| b == old_pattern(i));
            let got_new = staging.as_slice() == r.bytes();
            assert_eq!((got_old, got_new), (sees_old, !sees_old), "{kind}");
        }
    }

    /// Hostile transfers: every row must be refused before any byte moves, by every kind.
    #[test]
    fn out_of_range_transfers_are_errors() {
        let t = |pin_offset, staging_offset, len| Transfer {
            pin_offset,
            staging_offset,
            len,
        };
        // (description, transfer)
        let table = [
            ("past the pin end", t(LEN - 10, 0, 11)),
            ("starts past the pin", t(LEN + 1, 0, 0)),
            ("past the staging end", t(0, MIB - 1, 2)),
            ("pin offset overflows", t(u64::MAX, 0, 2)),
            ("staging offset overflows", t(0, u64::MAX - 1, 4)),
            ("len overflows", t(1, 1, u64::MAX)),
        ];
        for kind in PinKind::ALL {
            let (_r, mut p) = setup_pinned(kind);
            let mut staging = Staging::new(MIB).unwrap();
            for (desc, bad) in table {
                let ops = [t(0, 0, 16), bad];
                let res = p.read_from_guest(&mut staging, &ops);
                assert!(
                    matches!(res, Err(Error::TransferOutOfRange { index: 1, .. })),
                    "{kind} read, {desc}: {res:?}"
                );
                let res = p.write_to_guest(&staging, &ops);
                assert!(
                    matches!(
                        res,
                        Err(Error::TransferOutOfRange { index: 1, .. } | Error::Unsupported { .. })
                    ),
                    "{kind} write, {desc}: {res:?}"
                );
            }
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        let r = AnonRegion::new(2 * MIB, libc::MADV_NOHUGEPAGE);
        for kind in PinKind::ALL {
            // SAFETY: the ranges are refused before anything is pinned.
            let res = unsafe { pin(kind, r.hva, 0) };
            assert!(matches!(res, Err(Error::EmptyPin { .. })), "{kind}");
            // SAFETY: as above.
            let res = unsafe { pin(kind, Hva(r.hva.raw() + 1), PAGE_SIZE) };
            assert!(matches!(res, Err(Error::Unaligned { .. })), "{kind}");
            // SAFETY: as above.
            let res = unsafe { pin(kind, Hva(!(PAGE_SIZE - 1)), PAGE_SIZE) };
            assert!(matches!(res, Err(Error::RangeOverflow { .. })), "{kind}");
        }
    }
}
