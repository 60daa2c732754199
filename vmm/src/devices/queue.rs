//! The device side of a guest queue: validation of where the guest put it, and consumption.
//!
//! The guest owns `tail`; the device owns its consumer index, kept here and only published to
//! the guest (never read back: a guest that scribbles on `head` changes nothing). A `tail` more
//! than `entries` ahead of the device is a malformed queue: the device flags it in the header's
//! `fault` and ignores the queue until the guest clears it.

use std::sync::atomic::Ordering;

use pinlab_abi as abi;

use crate::addr::Gpa;
use crate::memory::GuestRam;

/// A guest-supplied range that must not overlap another: `[start, end)`.
pub fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Where a queue is, validated, and how far the device has consumed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    gpa: Gpa,
    entries: u32,
    consumed: u32,
}

impl Queue {
    /// Validates a queue at `gpa` with `entries` slots in guest RAM of `ram_size` bytes; on
    /// failure returns the ABI status to answer.
    pub fn validate(gpa: u64, entries: u32, ram_size: u64) -> Result<Queue, u32> {
        if entries == 0 || !entries.is_power_of_two() || entries > abi::QUEUE_MAX_ENTRIES {
            return Err(abi::STATUS_BAD_RING);
        }
        let end = gpa
            .checked_add(abi::queue_bytes(entries))
            .ok_or(abi::STATUS_OUT_OF_RANGE)?;
        if end > ram_size {
            return Err(abi::STATUS_OUT_OF_RANGE);
        }
        if !gpa.is_multiple_of(16) {
            return Err(abi::STATUS_MISALIGNED);
        }
        if overlaps((gpa, end), (0, abi::RESERVED_END_GPA)) {
            return Err(abi::STATUS_ALIASED);
        }
        Ok(Queue {
            gpa: Gpa(gpa),
            entries,
            consumed: 0,
        })
    }

    /// The guest-physical range the queue occupies.
    pub fn range(&self) -> (u64, u64) {
        (
            self.gpa.raw(),
            self.gpa.raw() + abi::queue_bytes(self.entries),
        )
    }

    /// The entries the guest has published and the device has not consumed, in order, or the
    /// fault status when the queue is malformed (the fault is then flagged in the header).
    pub fn pending(&mut self, ram: &GuestRam) -> Result<Vec<(u32, abi::Descriptor)>, u32> {
        let fault = ram
            .atomic_u32(Gpa(self.gpa.raw() + 8))
            .map_err(|_| abi::STATUS_OUT_OF_RANGE)?;
        if fault.load(Ordering::Acquire) != 0 {
            // The guest has not cleared the last fault: nothing to do until it does.
            return Ok(Vec::new());
        }
        let tail = ram
            .atomic_u32(self.gpa)
            .map_err(|_| abi::STATUS_OUT_OF_RANGE)?
            .load(Ordering::Acquire);
        let ready = tail.wrapping_sub(self.consumed);
        if ready > self.entries {
            fault.store(abi::STATUS_BAD_RING, Ordering::Release);
            return Err(abi::STATUS_BAD_RING);
        }
        let mut out = Vec::with_capacity(ready as usize);
        for i in 0..ready {
            let n = self.consumed.wrapping_add(i);
            let slot = n % self.entries;
            let d: abi::Descriptor = ram
                .read_obj(Gpa(self.gpa.raw() + abi::descriptor_offset(slot)))
                .map_err(|_| abi::STATUS_OUT_OF_RANGE)?;
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
        if let Err(e) = ram.write_obj(
            Gpa(self.gpa.raw() + abi::completion_offset(self.entries, slot)),
            c,
        ) {
            tracing::error!("writing a completion failed: {e}");
        }
    }

    /// Marks entries up to `n` (inclusive) consumed and publishes `head` (release: the
    /// completions are visible before it).
    pub fn publish(&mut self, ram: &GuestRam, n: u32) {
        self.consumed = n.wrapping_add(1);
        if let Ok(head) = ram.atomic_u32(Gpa(self.gpa.raw() + 4)) {
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
            let got = Queue::validate(gpa, entries, ram).err();
            assert_eq!(got, want, "{what}");
        }
    }

    /// Decoding a queue the guest wrote: descriptors come back in order from the device's own
    /// consumer index, completions land in their slots, `head` is published; a forged `tail`
    /// is flagged as a fault, not walked.
    #[test]
    fn pending_decodes_and_faults_on_a_forged_tail() {
        let ram = GuestRam::new(16 << 20, false, false).unwrap();
        let base = 0x10_0000u64;
        let mut q = Queue::validate(base, 4, ram.size()).unwrap();
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
        assert_eq!(q.pending(&ram), Err(abi::STATUS_BAD_RING));
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
        assert!(overlaps((0, 10), (9, 20)));
        assert!(!overlaps((0, 10), (10, 20)));
        assert!(overlaps((5, 6), (0, 100)));
    }
}
