//! Target `queue`: `Queue::validate` on an arbitrary place and size, then `pending`, `complete`
//! and `publish` over guest RAM the input fills, with the guest moving `tail` and `fault` between
//! steps as it likes.
//!
//! The reference: a queue is accepted exactly when its entry count is a power of two up to
//! `QUEUE_MAX_ENTRIES`, it lies in RAM, is 16-byte aligned and clear of the reserved low area;
//! `pending` yields, from the device's own index, exactly the entries the guest published (the
//! bytes it wrote in each slot), or flags a tail more than a queue ahead in `fault` and yields
//! nothing until the guest clears it; completions land in their slot and `head` is published.

use std::sync::atomic::Ordering;

use arbitrary::Unstructured;
use pinlab_abi as abi;
use vm_memory::ByteValued;

use super::{run, u32_near, u64_near};
use crate::addr::Gpa;
use crate::devices::queue::{Error, Queue};
use crate::memory::GuestRam;

const RAM: u64 = 2 << 20;
/// Most steps (pending / complete / guest writes) one input drives.
const STEPS: usize = 32;

/// The status a correct validation answers, or `None` when it accepts.
fn want_validate(gpa: u64, entries: u32, ram: u64) -> Option<u32> {
    if entries == 0 || !entries.is_power_of_two() || entries > abi::QUEUE_MAX_ENTRIES {
        return Some(abi::STATUS_BAD_RING);
    }
    let end = gpa as u128 + abi::queue_bytes(entries) as u128;
    if end > ram as u128 {
        return Some(abi::STATUS_OUT_OF_RANGE);
    }
    if !gpa.is_multiple_of(16) {
        return Some(abi::STATUS_MISALIGNED);
    }
    if gpa < abi::RESERVED_END_GPA {
        return Some(abi::STATUS_ALIASED);
    }
    None
}

fn u32_at(ram: &GuestRam, gpa: u64) -> u32 {
    ram.atomic_u32(Gpa(gpa)).unwrap().load(Ordering::Acquire)
}

fn set_u32(ram: &GuestRam, gpa: u64, v: u32) {
    ram.atomic_u32(Gpa(gpa))
        .unwrap()
        .store(v, Ordering::Release);
}

/// Validates an arbitrary queue, then plays device against an arbitrary guest.
pub fn queue(data: &[u8]) {
    run(data, |u| {
        let entries = u32_near(u, &[1, 2, 4, 8, 256, 1024, 2048, 100, 3])?;
        let bytes = abi::queue_bytes(entries.min(abi::QUEUE_MAX_ENTRIES));
        let gpa = u64_near(
            u,
            &[
                abi::RESERVED_END_GPA,
                abi::RESERVED_END_GPA - 16,
                0x10_0000,
                RAM - bytes,
                RAM - 16,
                u64::MAX - 8,
            ],
        )?;
        let got = Queue::validate(Gpa(gpa), entries, RAM);
        assert_eq!(
            got.as_ref().err().map(Error::status),
            want_validate(gpa, entries, RAM),
            "queue at {gpa:#x} with {entries} entries: {got:?}"
        );
        let Ok(mut q) = got else {
            return Ok(());
        };
        assert_eq!(q.range(), Gpa(gpa)..Gpa(gpa + abi::queue_bytes(entries)));
        drive(u, &mut q, gpa, entries)
    });
}

fn drive(u: &mut Unstructured<'_>, q: &mut Queue, gpa: u64, entries: u32) -> arbitrary::Result<()> {
    let ram = GuestRam::new(RAM, false, false).expect("guest RAM for the queue target");
    // The guest's queue memory, as it wrote it: header, then descriptors (completions are the
    // device's to write).
    let desc_bytes = (entries as u64 * abi::DESCRIPTOR_SIZE) as usize;
    let mut image = vec![0u8; abi::QUEUE_HEADER_SIZE as usize + desc_bytes];
    u.fill_buffer(&mut image)?;
    ram.write_slice(Gpa(gpa), &image).unwrap();
    let descriptor = |n: u32| -> abi::Descriptor {
        let off = abi::descriptor_offset(n % entries) as usize;
        let mut d = abi::Descriptor::default();
        d.as_mut_slice()
            .copy_from_slice(&image[off..off + abi::DESCRIPTOR_SIZE as usize]);
        d
    };
    // The device's index, as the reference keeps it.
    let mut consumed: u32 = 0;
    for _ in 0..STEPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=4u8)? {
            // The guest moves its tail: near the device's index, far ahead, behind, or anywhere.
            0 => {
                let e = entries;
                let tail = u32_near(
                    u,
                    &[
                        consumed,
                        consumed.wrapping_add(e),
                        consumed.wrapping_add(e).wrapping_add(1),
                        consumed.wrapping_sub(1),
                    ],
                )?;
                set_u32(&ram, gpa, tail);
            }
            // The guest sets or clears `fault`, or scribbles on `head`.
            1 => set_u32(&ram, gpa + 8, u32_near(u, &[0, abi::STATUS_BAD_RING])?),
            2 => set_u32(&ram, gpa + 4, u.arbitrary()?),
            // The device looks at the queue.
            _ => {
                let (tail, fault) = (u32_at(&ram, gpa), u32_at(&ram, gpa + 8));
                let ready = tail.wrapping_sub(consumed);
                let got = q.pending(&ram);
                if fault != 0 {
                    assert!(
                        matches!(&got, Ok(v) if v.is_empty()),
                        "a faulted queue is ignored"
                    );
                    continue;
                }
                if ready > entries {
                    assert!(
                        matches!(got, Err(Error::ForgedTail { tail: t, consumed: c, entries: e })
                            if t == tail && c == consumed && e == entries),
                        "tail {tail} with {consumed} consumed of {entries}"
                    );
                    assert_eq!(u32_at(&ram, gpa + 8), abi::STATUS_BAD_RING, "fault flagged");
                    continue;
                }
                let got = got.expect("a well-formed queue decodes");
                assert_eq!(got.len(), ready as usize);
                for (i, (n, d)) in got.iter().enumerate() {
                    let want = consumed.wrapping_add(i as u32);
                    assert_eq!(*n, want, "entries in order from the device's index");
                    assert_eq!(*d, descriptor(want), "entry {want} is what the guest wrote");
                }
                // Complete a prefix, each with an arbitrary status and result.
                let k = u.int_in_range(0..=got.len())?;
                for (n, d) in &got[..k] {
                    let (status, result) = (u.arbitrary::<u32>()?, u.arbitrary::<u64>()?);
                    q.complete(&ram, *n, d.tag, status, result);
                    q.publish(&ram, *n);
                    let at = gpa + abi::completion_offset(entries, n % entries);
                    let c: abi::Completion = ram.read_obj(Gpa(at)).unwrap();
                    assert_eq!((c.tag, c.status, c.result), (d.tag, status, result));
                    consumed = n.wrapping_add(1);
                    assert_eq!(u32_at(&ram, gpa + 4), consumed, "head published");
                }
                // The header words the device may write are `head` and `fault` only.
                let tail_now = u32_at(&ram, gpa);
                assert_eq!(tail_now, tail, "the device never writes tail");
            }
        }
    }
    Ok(())
}
