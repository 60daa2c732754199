//! The device side of a guest queue: validation of where the guest put it, and consumption.
//!
//! The guest owns `tail`; the device owns its consumer index, kept here and only published to
//! the guest (never read back: a guest that scribbles on `head` changes nothing). A `tail` more
//! than `entries` ahead of the device is a malformed queue: the device flags it in the header's
//! `fault` and ignores the queue until the guest clears it. Failures are typed ([`Error`]); the ABI
//! status is produced at the edge ([`Error::status`]).

use std::ops::Range;
use std::sync::atomic::Ordering;

use pinlab_abi as abi;

use crate::addr::Gpa;
use crate::memory::GuestRam;

/// Why a queue is refused, or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{entries} entries (want a power of two up to {})",
        abi::QUEUE_MAX_ENTRIES
    )]
    BadEntries { entries: u32 },
    #[error(
        "a queue of {entries} entries at {gpa} does not fit in guest RAM ({ram_size:#x} bytes)"
    )]
    OutsideRam {
        gpa: Gpa,
        entries: u32,
        ram_size: u64,
    },
    #[error("the queue at {gpa} is not 16-byte aligned")]
    Misaligned { gpa: Gpa },
    #[error("the queue at {gpa} overlaps the VMM's reserved low area")]
    OverReserved { gpa: Gpa },
    #[error("tail {tail} is more than {entries} entries ahead of the device's {consumed}")]
    ForgedTail {
        tail: u32,
        consumed: u32,
        entries: u32,
    },
    #[error("reading the queue at {gpa}: {source}")]
    Access {
        gpa: Gpa,
        #[source]
        source: crate::memory::Error,
    },
}

impl Error {
    /// The ABI status the guest is answered with (or that is flagged in the header's `fault`).
    pub fn status(&self) -> u32 {
        match self {
            Error::BadEntries { .. } | Error::ForgedTail { .. } => abi::STATUS_BAD_RING,
            Error::OutsideRam { .. } | Error::Access { .. } => abi::STATUS_OUT_OF_RANGE,
            Error::Misaligned { .. } => abi::STATUS_MISALIGNED,
            Error::OverReserved { .. } => abi::STATUS_ALIASED,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Whether two half-open guest ranges overlap.
pub fn overlaps(a: &Range<Gpa>, b: &Range<Gpa>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The VMM-owned low area (GDT, page tables, boot info, TSS): no guest buffer may overlap it.
pub fn reserved() -> Range<Gpa> {
    Gpa(0)..Gpa(abi::RESERVED_END_GPA)
}

/// Where a queue is, validated, and how far the device has consumed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    gpa: Gpa,
    entries: u32,
    consumed: u32,
}

impl Queue {
    /// Validates a queue at `gpa` with `entries` slots in guest RAM of `ram_size` bytes.
    pub fn validate(gpa: Gpa, entries: u32, ram_size: u64) -> Result<Queue> {
        if entries == 0 || !entries.is_power_of_two() || entries > abi::QUEUE_MAX_ENTRIES {
            return Err(Error::BadEntries { entries });
        }
        let outside = Error::OutsideRam {
            gpa,
            entries,
            ram_size,
        };
        let end = match gpa.checked_add(abi::queue_bytes(entries)) {
            Some(end) if end.raw() <= ram_size => end,
            _ => return Err(outside),
        };
        if !gpa.is_aligned(16) {
            return Err(Error::Misaligned { gpa });
        }
        if overlaps(&(gpa..end), &reserved()) {
            return Err(Error::OverReserved { gpa });
        }
        Ok(Queue {
            gpa,
            entries,
            consumed: 0,
        })
    }

    /// The guest-physical range the queue occupies.
    pub fn range(&self) -> Range<Gpa> {
        self.gpa..Gpa(self.gpa.raw() + abi::queue_bytes(self.entries))
    }

    fn at(&self, offset: u64) -> Gpa {
        // Inside the queue, which was validated to lie inside RAM.
        Gpa(self.gpa.raw() + offset)
    }

    fn access(&self, gpa: Gpa) -> impl FnOnce(crate::memory::Error) -> Error {
        move |source| Error::Access { gpa, source }
    }

    /// The entries the guest has published and the device has not consumed, in order, or why
    /// not (a forged tail is then flagged in the header's `fault`).
    pub fn pending(&mut self, ram: &GuestRam) -> Result<Vec<(u32, abi::Descriptor)>> {
        let fault_at = self.at(8);
        let fault = ram.atomic_u32(fault_at).map_err(self.access(fault_at))?;
        if fault.load(Ordering::Acquire) != 0 {
            // The guest has not cleared the last fault: nothing to do until it does.
            return Ok(Vec::new());
        }
        let tail = ram
            .atomic_u32(self.gpa)
            .map_err(self.access(self.gpa))?
            .load(Ordering::Acquire);
        let ready = tail.wrapping_sub(self.consumed);
        if ready > self.entries {
            let e = Error::ForgedTail {
                tail,
                consumed: self.consumed,
                entries: self.entries,
            };
            fault.store(e.status(), Ordering::Release);
            return Err(e);
        }
        let mut out = Vec::with_capacity(ready as usize);
        for i in 0..ready {
            let n = self.consumed.wrapping_add(i);
            let slot = self.at(abi::descriptor_offset(n % self.entries));
            let d: abi::Descriptor = ram.read_obj(slot).map_err(self.access(slot))?;
            out.push((n, d));
        }
        Ok(out)
    }

    /// Writes entry `n`'s completion.
    pub fn complete(&self, ram: &GuestRam, n: u32, tag: u64, status: u32, result: u64) {
        let slot = n % self.entries;
        let c = abi::Completion {
            tag,
            status,
            _pad: 0,
            result,
            _reserved: 0,
        };
        // The queue was validated to lie inside RAM; a failure here would be a VMM bug, and a
        // lost completion is what the guest would see, so it is only logged.
        if let Err(e) = ram.write_obj(self.at(abi::completion_offset(self.entries, slot)), c) {
            tracing::error!("writing a completion failed: {e}");
        }
    }

    /// Marks entries up to `n` (inclusive) consumed and publishes `head` (release: the
    /// completions are visible before it).
    pub fn publish(&mut self, ram: &GuestRam, n: u32) {
        self.consumed = n.wrapping_add(1);
        if let Ok(head) = ram.atomic_u32(self.at(4)) {
            head.store(self.consumed, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: gpa, entries, expected status (None: accepted).
    #[test]
    fn queue_validation() {
        let ram = 64 << 20;
        let ok = 0x10_0000;
        let rows: &[(&str, u64, u32, Option<u32>)] = &[
            ("a good queue", ok, 256, None),
            ("zero entries", ok, 0, Some(abi::STATUS_BAD_RING)),
            ("not a power of two", ok, 100, Some(abi::STATUS_BAD_RING)),
            ("too many entries", ok, 2048, Some(abi::STATUS_BAD_RING)),
            (
                "past the end of RAM",
                ram - 64,
                256,
                Some(abi::STATUS_OUT_OF_RANGE),
            ),
            (
                "wraps the address space",
                u64::MAX - 8,
                1,
                Some(abi::STATUS_OUT_OF_RANGE),
            ),
            ("misaligned", ok + 4, 256, Some(abi::STATUS_MISALIGNED)),
            (
                "over the boot info",
                abi::BOOT_INFO_GPA,
                4,
                Some(abi::STATUS_ALIASED),
            ),
            ("over the page tables", 0x2000, 4, Some(abi::STATUS_ALIASED)),
            (
                "ends exactly at the end of RAM",
                ram - abi::queue_bytes(256),
                256,
                None,
            ),
        ];
        for &(what, gpa, entries, want) in rows {
            let got = Queue::validate(Gpa(gpa), entries, ram).err();
            assert_eq!(got.map(|e| e.status()), want, "{what}");
        }
    }

    /// Decoding a queue the guest wrote: descriptors come back in order from the device's own
    /// consumer index, completions land in their slots, `head` is published; a forged `tail`
    /// is flagged as a fault, not walked.
    #[test]
    fn pending_decodes_and_faults_on_a_forged_tail() {
        let ram = GuestRam::new(16 << 20, false, false).unwrap();
        let base = 0x10_0000u64;
        let mut q = Queue::validate(Gpa(base), 4, ram.size()).unwrap();
        for i in 0..3u32 {
            let d = abi::Descriptor {
                op: abi::OP_NOP,
                tag: 100 + i as u64,
                ..Default::default()
            };
            ram.write_obj(Gpa(base + abi::descriptor_offset(i)), d)
                .unwrap();
        }
        ram.atomic_u32(Gpa(base))
            .unwrap()
            .store(3, Ordering::Release);
        let got = q.pending(&ram).unwrap();
        assert_eq!(
            got.iter().map(|(n, d)| (*n, d.tag)).collect::<Vec<_>>(),
            [(0, 100), (1, 101), (2, 102)]
        );
        for (n, d) in &got {
            q.complete(&ram, *n, d.tag, abi::STATUS_OK, 7);
            q.publish(&ram, *n);
        }
        let c: abi::Completion = ram
            .read_obj(Gpa(base + abi::completion_offset(4, 2)))
            .unwrap();
        assert_eq!((c.tag, c.status, c.result), (102, abi::STATUS_OK, 7));
        assert_eq!(
            ram.atomic_u32(Gpa(base + 4))
                .unwrap()
                .load(Ordering::Acquire),
            3
        );
        // The guest scribbling on `head` changes nothing: the device keeps its own index.
        ram.atomic_u32(Gpa(base + 4))
            .unwrap()
            .store(0, Ordering::Release);
        assert!(q.pending(&ram).unwrap().is_empty());
        // A tail more than `entries` ahead: fault, flagged in the header, nothing decoded.
        ram.atomic_u32(Gpa(base))
            .unwrap()
            .store(3 + 5, Ordering::Release);
        assert!(
            matches!(
                q.pending(&ram),
                Err(Error::ForgedTail {
                    tail: 8,
                    consumed: 3,
                    entries: 4
                })
            ),
            "a forged tail is refused"
        );
        let fault = ram
            .atomic_u32(Gpa(base + 8))
            .unwrap()
            .load(Ordering::Acquire);
        assert_eq!(fault, abi::STATUS_BAD_RING);
        // Until the guest clears the fault the queue is ignored.
        ram.atomic_u32(Gpa(base))
            .unwrap()
            .store(4, Ordering::Release);
        assert!(q.pending(&ram).unwrap().is_empty());
    }

    #[test]
    fn overlap_is_half_open() {
        let r = |a, b| Gpa(a)..Gpa(b);
        assert!(overlaps(&r(0, 10), &r(9, 20)));
        assert!(!overlaps(&r(0, 10), &r(10, 20)));
        assert!(overlaps(&r(5, 6), &r(0, 100)));
    }
}
