//! Target `devices`: the whole request path without KVM. An arbitrary "guest" sets up queues
//! (well-formed or not), writes descriptors, moves `tail` and `fault`, and rings either doorbell
//! (`Devices::setup`, `service_iommu`, `service_dma` over `PinKind::Mapping`).
//!
//! The rules, checked after every step: the devices wrote guest RAM only where the ABI lets them
//! (the `head` and `fault` words and the completion slots of the queues they were given, the
//! status of a setup record, the output arrays of device reads, the pages of writable mappings);
//! each descriptor consumed got a completion echoing its tag with a defined, non-pending status;
//! a queue not set up or faulted gets nothing written; the map and unmap counters agree with the
//! IOMMU's table, which never exceeds its bound.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use arbitrary::Unstructured;
use pinlab_abi as abi;

use super::{request, run, u32_near, u64_near};
use crate::addr::Gpa;
use crate::devices::Devices;
use crate::memory::GuestRam;
use crate::scenario::PinKind;
use crate::timeline::Timeline;

const RAM: u64 = 128 << 10;
const P: u64 = abi::PAGE_SIZE;
const STEPS: usize = 24;
/// Where a well-behaved guest puts things.
const SETUP_GPA: u64 = 0xe000;
const QUEUES: [u64; 2] = [0x1_0000, 0x1_8000];

/// A queue the devices were given, as the "guest" knows it.
#[derive(Clone, Copy, Debug)]
struct Q {
    gpa: u64,
    entries: u32,
    /// The device's consumer index, as the reference keeps it.
    consumed: u32,
}

impl Q {
    fn bytes(&self) -> u64 {
        abi::queue_bytes(self.entries)
    }
}

/// A copy of all of guest RAM from before a device call, compared with RAM itself after it. The
/// buffer is the thread's, reused from input to input (every `take` overwrites all of it, so
/// nothing carries over): a fresh 128 KiB buffer per step made page faults most of this
/// target's time, and a second copy for "after" a third of the rest.
struct Snapshots<'a> {
    before: &'a mut Vec<u8>,
}

thread_local! {
    static BEFORE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Snapshots<'_> {
    /// All of guest RAM, borrowed.
    fn now(ram: &GuestRam) -> &[u8] {
        let hva = ram.translate(Gpa(0), RAM).expect("all of RAM");
        // SAFETY: `[hva, hva+RAM)` is guest RAM, mapped while `ram` is borrowed (the slice
        // borrows it too); the devices touch it only inside the calls this target makes on this
        // thread, never while the slice is alive.
        unsafe { std::slice::from_raw_parts(hva.as_ptr() as *const u8, RAM as usize) }
    }

    /// Remembers guest RAM as it is before a device call.
    fn take(&mut self, ram: &GuestRam) {
        self.before.clear();
        self.before.extend_from_slice(Self::now(ram));
    }

    /// Asserts every byte that changed since [`Snapshots::take`] lies in one of `allowed`.
    fn only_wrote(&mut self, ram: &GuestRam, allowed: &[Range<u64>], what: &str) {
        let page = P as usize;
        let pages = self.before.chunks(page).zip(Self::now(ram).chunks(page));
        for (p, (a, b)) in pages.enumerate() {
            if a == b {
                continue;
            }
            for (i, _) in a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y) {
                let gpa = (p * page + i) as u64;
                assert!(
                    allowed.iter().any(|r| r.contains(&gpa)),
                    "{what}: the device wrote {gpa:#x}, outside {allowed:x?}"
                );
            }
        }
    }
}

/// The ranges a service of `q` may write: its head and fault words and its completions.
fn queue_writes(q: &Q) -> Vec<Range<u64>> {
    vec![
        q.gpa + 4..q.gpa + 12,
        q.gpa + abi::completion_offset(q.entries, 0)..q.gpa + q.bytes(),
    ]
}

fn descriptor(u: &mut Unstructured<'_>, dma: bool) -> arbitrary::Result<abi::Descriptor> {
    if u.ratio(1, 3)? {
        return request::descriptor(u, RAM);
    }
    let op = if dma {
        *u.choose(&[abi::OP_TO_GUEST, abi::OP_FROM_GUEST, abi::OP_NOP])?
    } else {
        *u.choose(&[abi::OP_MAP, abi::OP_UNMAP])?
    };
    Ok(abi::Descriptor {
        op,
        flags: u.int_in_range(0..=3)?,
        iova: u.int_in_range(0..=32u64)? * P,
        arg: match op {
            abi::OP_FROM_GUEST => u.int_in_range(0..=RAM / 8)? * 8,
            abi::OP_TO_GUEST => u.arbitrary()?,
            _ => u.int_in_range(0..=RAM / P)? * P,
        },
        len: u.int_in_range(1..=8u64)? * P,
        tag: u.arbitrary()?,
        _reserved: [0; 3],
    })
}

/// Drives the devices with an arbitrary guest.
pub fn devices(data: &[u8]) {
    run(data, |u| {
        let ram = GuestRam::new(RAM, false, false).expect("guest RAM for the devices target");
        let devices = Devices::new(
            Arc::new(RwLock::new(ram)),
            &crate::scenario::DeviceSpec::with_pin(PinKind::Mapping),
            Arc::new(Timeline::new()),
        );
        let r = BEFORE.with_borrow_mut(|before| steps(u, &devices, &mut Snapshots { before }));
        devices.state().iommu.clear();
        r
    });
}

fn steps(
    u: &mut Unstructured<'_>,
    devices: &Devices,
    snaps: &mut Snapshots<'_>,
) -> arbitrary::Result<()> {
    // The queues the devices hold: [iommu, dma].
    let mut queues: Option<[Q; 2]> = None;
    for _ in 0..STEPS {
        if u.is_empty() {
            break;
        }
        let ram = devices.ram.read().unwrap();
        match u.int_in_range(0..=6u8)? {
            0 => {
                let gpa = u64_near(u, &[SETUP_GPA, RAM - 32, RAM - 8, 0x9000])?;
                let pick = |u: &mut Unstructured<'_>| -> arbitrary::Result<(u64, u32)> {
                    Ok((u64_near(u, &QUEUES)?, u32_near(u, &[4, 8, 16, 3, 2048])?))
                };
                let ((ig, ie), (dg, de)) = (pick(u)?, pick(u)?);
                let record = abi::DeviceSetup {
                    iommu_queue_gpa: ig,
                    iommu_entries: ie,
                    dma_entries: de,
                    dma_queue_gpa: dg,
                    status: u.arbitrary()?,
                    _pad: 0,
                };
                let in_ram = gpa.checked_add(32).is_some_and(|e| e <= RAM);
                if in_ram {
                    ram.write_obj(Gpa(gpa), record).unwrap();
                }
                snaps.take(&ram);
                drop(ram);
                devices.setup(gpa);
                let ram = devices.ram.read().unwrap();
                // The status word (bytes 24..28 of the record), if the record's address has
                // one at all (found by libFuzzer: a GPA near u64::MAX overflowed here).
                let status: Vec<_> = gpa
                    .checked_add(28)
                    .map(|end| end - 4..end)
                    .into_iter()
                    .collect();
                snaps.only_wrote(&ram, &status, "setup");
                if !in_ram {
                    continue;
                }
                let back: abi::DeviceSetup = ram.read_obj(Gpa(gpa)).unwrap();
                assert!(
                    (1..abi::STATUS_NAMES.len() as u32).contains(&back.status),
                    "setup answered {}",
                    back.status
                );
                if back.status == abi::STATUS_OK {
                    let (i, d) = (
                        Q {
                            gpa: ig,
                            entries: ie,
                            consumed: 0,
                        },
                        Q {
                            gpa: dg,
                            entries: de,
                            consumed: 0,
                        },
                    );
                    assert!(i.gpa + i.bytes() <= d.gpa || d.gpa + d.bytes() <= i.gpa);
                    queues = Some([i, d]);
                }
            }
            // Descriptors, published, then the doorbell.
            1..=3 => {
                let which = u.int_in_range(0..=1usize)?;
                let Some(qs) = queues.as_mut() else {
                    snaps.take(&ram);
                    drop(ram);
                    devices.service_dma();
                    let ram = devices.ram.read().unwrap();
                    snaps.only_wrote(&ram, &[], "no queues");
                    continue;
                };
                let q = qs[which];
                let k = u.int_in_range(0..=q.entries.min(8))?;
                let mut sent = Vec::new();
                for i in 0..k {
                    let n = q.consumed.wrapping_add(i);
                    let d = descriptor(u, which == 1)?;
                    let slot = q.gpa + abi::descriptor_offset(n % q.entries);
                    ram.write_obj(Gpa(slot), d).unwrap();
                    sent.push((n, d));
                }
                let tail = q.consumed.wrapping_add(k);
                ram.atomic_u32(Gpa(q.gpa))
                    .unwrap()
                    .store(tail, Ordering::Release);
                let fault = ram
                    .atomic_u32(Gpa(q.gpa + 8))
                    .unwrap()
                    .load(Ordering::Acquire);
                // What the batch may write beyond the queues: device-read outputs, and the
                // pages of writable mappings (live before, or made by this batch).
                let mut allowed = queue_writes(&q);
                for (_, d) in &sent {
                    if d.op == abi::OP_FROM_GUEST {
                        let end = d.arg.saturating_add((d.len / P).saturating_mul(8));
                        allowed.push(d.arg..end);
                    }
                    if d.op == abi::OP_MAP && d.flags & abi::PERM_WRITE != 0 {
                        allowed.push(d.arg..d.arg.saturating_add(d.len));
                    }
                }
                for m in devices.state().iommu.mappings() {
                    if m.perm.bits() & abi::PERM_WRITE != 0 {
                        allowed.push(m.gpa.raw()..m.gpa.raw() + m.len);
                    }
                }
                // A guest may map its own queue for device writes; then its completions are
                // its own to lose, and only the bounds above are checked.
                let own_queue = q.gpa..q.gpa + q.bytes();
                let queue_writable = allowed[2..]
                    .iter()
                    .any(|r| r.start < own_queue.end && own_queue.start < r.end);
                snaps.take(&ram);
                drop(ram);
                if which == 0 {
                    devices.service_iommu();
                } else {
                    devices.service_dma();
                }
                let ram = devices.ram.read().unwrap();
                snaps.only_wrote(&ram, &allowed, "a batch");
                if fault != 0 {
                    continue;
                }
                qs[which].consumed = tail;
                if queue_writable {
                    continue;
                }
                for (n, d) in &sent {
                    let at = q.gpa + abi::completion_offset(q.entries, n % q.entries);
                    let c: abi::Completion = ram.read_obj(Gpa(at)).unwrap();
                    assert_eq!(c.tag, d.tag, "completion {n} echoes its tag");
                    assert!(
                        (1..abi::STATUS_NAMES.len() as u32).contains(&c.status),
                        "{d:?} answered {}",
                        c.status
                    );
                }
                let head = ram
                    .atomic_u32(Gpa(q.gpa + 4))
                    .unwrap()
                    .load(Ordering::Acquire);
                if k > 0 {
                    assert_eq!(head, tail, "head published");
                }
            }
            // The guest forges a tail, sets or clears fault, or rings with nothing new.
            4..=5 => {
                let Some(qs) = queues.as_mut() else {
                    continue;
                };
                let which = u.int_in_range(0..=1usize)?;
                let q = qs[which];
                let field = *u.choose(&[0u64, 8])?;
                let value = u32_near(u, &[q.consumed.wrapping_add(q.entries + 1), 0, 1])?;
                ram.atomic_u32(Gpa(q.gpa + field))
                    .unwrap()
                    .store(value, Ordering::Release);
                let tail = ram.atomic_u32(Gpa(q.gpa)).unwrap().load(Ordering::Acquire);
                let fault = ram
                    .atomic_u32(Gpa(q.gpa + 8))
                    .unwrap()
                    .load(Ordering::Acquire);
                snaps.take(&ram);
                let ready = tail.wrapping_sub(q.consumed);
                // Slots past the last batch hold old descriptors: only service a forged tail or
                // an empty queue here (replays are the batch step's business).
                if fault == 0 && (1..=q.entries).contains(&ready) {
                    ram.atomic_u32(Gpa(q.gpa))
                        .unwrap()
                        .store(q.consumed, Ordering::Release);
                    continue;
                }
                drop(ram);
                if which == 0 {
                    devices.service_iommu();
                } else {
                    devices.service_dma();
                }
                let ram = devices.ram.read().unwrap();
                snaps.only_wrote(
                    &ram,
                    std::slice::from_ref(&(q.gpa + 8..q.gpa + 12)),
                    "an empty or forged queue",
                );
                let now = ram
                    .atomic_u32(Gpa(q.gpa + 8))
                    .unwrap()
                    .load(Ordering::Acquire);
                if fault == 0 && ready > q.entries {
                    assert_eq!(now, abi::STATUS_BAD_RING, "a forged tail is flagged");
                }
                // Leave the queue usable for the next batch.
                ram.atomic_u32(Gpa(q.gpa))
                    .unwrap()
                    .store(q.consumed, Ordering::Release);
                ram.atomic_u32(Gpa(q.gpa + 8))
                    .unwrap()
                    .store(0, Ordering::Release);
            }
            _ => {
                drop(ram);
                let st = devices.state();
                let live = st.iommu.mappings().count() as u64;
                assert!(live <= abi::IOMMU_MAX_MAPPINGS as u64);
                let (maps, unmaps) = (
                    devices.stats.maps.load(Ordering::Relaxed),
                    devices.stats.unmaps.load(Ordering::Relaxed),
                );
                assert_eq!(maps - unmaps, live, "counters agree with the table");
            }
        }
    }
    Ok(())
}
