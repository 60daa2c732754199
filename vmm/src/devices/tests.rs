//! The request path end to end without KVM: a "guest" (this test) writes queues into guest RAM,
//! the devices service them, and the completions, counters, progress and timeline are checked.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use pinlab_abi as abi;

use super::*;
use crate::timeline::Event;

const RAM: u64 = 16 << 20;
const SETUP_GPA: u64 = 0xe000;
const IOMMU_Q: u64 = 0x10_0000;
const DMA_Q: u64 = 0x11_0000;
const ENTRIES: u32 = 8;
const REGION_GPA: u64 = 0x20_0000;
const REGION_IOVA: u64 = 0x100_0000;
const REGION_LEN: u64 = 16 * abi::PAGE_SIZE;
const OUT_GPA: u64 = 0x40_0000;
const RW: u32 = abi::PERM_READ | abi::PERM_WRITE;

/// Guest RAM, devices recording on their own timeline, and queues set up as the guest would.
fn setup_devices() -> (Devices, Arc<Timeline>) {
    let ram = GuestRam::new(RAM, false, false).unwrap();
    let timeline = Arc::new(Timeline::new());
    let devices = Devices::new(
        Arc::new(RwLock::new(ram)),
        PinKind::Mapping,
        timeline.clone(),
    );
    let record = abi::DeviceSetup {
        iommu_queue_gpa: IOMMU_Q,
        iommu_entries: ENTRIES,
        dma_entries: ENTRIES,
        dma_queue_gpa: DMA_Q,
        ..Default::default()
    };
    devices.ram().write_obj(Gpa(SETUP_GPA), record).unwrap();
    devices.setup(SETUP_GPA);
    let answer: abi::DeviceSetup = devices.ram().read_obj(Gpa(SETUP_GPA)).unwrap();
    assert_eq!(abi::status_name(answer.status), "ok", "setup");
    (devices, timeline)
}

/// Writes `ds` into the queue at `q` after `already` entries, publishes the tail, and returns
/// the statuses and results of their completions once `service` has run.
fn submit(
    devices: &Devices,
    q: u64,
    already: u32,
    ds: &[abi::Descriptor],
    service: fn(&Devices),
) -> Vec<(&'static str, u64)> {
    {
        let ram = devices.ram();
        for (i, d) in ds.iter().enumerate() {
            let n = already + i as u32;
            let slot = Gpa(q + abi::descriptor_offset(n % ENTRIES));
            let d = abi::Descriptor {
                tag: n as u64,
                ..*d
            };
            ram.write_obj(slot, d).unwrap();
        }
        let tail = already + ds.len() as u32;
        ram.atomic_u32(Gpa(q))
            .unwrap()
            .store(tail, Ordering::Release);
    }
    service(devices);
    let ram = devices.ram();
    (0..ds.len() as u32)
        .map(|i| {
            let n = already + i;
            let c: abi::Completion = ram
                .read_obj(Gpa(q + abi::completion_offset(ENTRIES, n % ENTRIES)))
                .unwrap();
            assert_eq!(c.tag, n as u64, "completion {n} echoes its tag");
            (abi::status_name(c.status), c.result)
        })
        .collect()
}

fn desc(op: u32, iova: u64, arg: u64, len: u64, flags: u32) -> abi::Descriptor {
    abi::Descriptor {
        op,
        flags,
        iova,
        arg,
        len,
        ..Default::default()
    }
}

fn device_events(t: &Timeline) -> Vec<What> {
    t.snapshot()
        .into_iter()
        .filter(|e: &Event| e.thread == THREAD)
        .map(|e| e.what)
        .collect()
}

/// A guest's whole program: map, device writes and reads (with a NOP and a malformed read in
/// the batch), unmap. A bug would show as a wrong completion, bytes not moved, a counter that
/// counts rejects as progress, or a timeline that misses or merges a batch.
#[test]
fn a_guest_program_completes_counts_progress_and_is_recorded() {
    let (devices, timeline) = setup_devices();
    let map = desc(abi::OP_MAP, REGION_IOVA, REGION_GPA, REGION_LEN, RW);
    let got = submit(&devices, IOMMU_Q, 0, &[map], Devices::service_iommu);
    assert_eq!(got, [("ok", 0)]);
    assert_eq!(devices.progress.count(), 1, "a map is progress");

    let half = REGION_LEN / 2;
    let seed = 0x5eed;
    let batch = [
        desc(abi::OP_TO_GUEST, REGION_IOVA, seed, half, 0),
        desc(abi::OP_TO_GUEST, REGION_IOVA + half, seed, half, 0),
        desc(abi::OP_FROM_GUEST, REGION_IOVA, OUT_GPA, REGION_LEN, 0),
        desc(abi::OP_FROM_GUEST, REGION_IOVA, OUT_GPA + 4, REGION_LEN, 0),
        desc(abi::OP_NOP, 0, 0, 0, 0),
    ];
    let got = submit(&devices, DMA_Q, 0, &batch, Devices::service_dma);
    assert_eq!(
        got,
        [
            ("ok", half),
            ("ok", half),
            ("ok", REGION_LEN),
            ("misaligned", 0),
            ("ok", 0),
        ]
    );
    // The device wrote the pattern, and read back checksums of exactly that.
    let ram = devices.ram();
    let words: Vec<u64> = (0..REGION_LEN / 8)
        .map(|i| ram.read_obj::<u64>(Gpa(REGION_GPA + i * 8)).unwrap())
        .collect();
    assert!(abi::pattern_matches(&words, seed, REGION_IOVA / 8));
    let mut want = vec![0u64; (REGION_LEN / abi::PAGE_SIZE) as usize];
    abi::page_checksums(&words, &mut want);
    let sums: Vec<u64> = (0..want.len() as u64)
        .map(|i| ram.read_obj::<u64>(Gpa(OUT_GPA + i * 8)).unwrap())
        .collect();
    assert_eq!(sums, want);
    drop(ram);
    assert_eq!(
        devices.progress.count(),
        4,
        "three transfers moved data; a NOP and a reject are not progress"
    );

    let unmap = desc(abi::OP_UNMAP, REGION_IOVA, 0, REGION_LEN, 0);
    let got = submit(&devices, IOMMU_Q, 1, &[unmap], Devices::service_iommu);
    assert_eq!(got, [("ok", 0)]);
    assert_eq!(devices.progress.count(), 5);

    let s = &devices.stats;
    assert_eq!(s.maps.load(Ordering::Relaxed), 1);
    assert_eq!(s.unmaps.load(Ordering::Relaxed), 1);
    assert_eq!(s.descriptors.load(Ordering::Relaxed), 5);
    assert_eq!(s.bytes_to_guest.load(Ordering::Relaxed), REGION_LEN);
    assert_eq!(s.bytes_from_guest.load(Ordering::Relaxed), REGION_LEN);
    assert_eq!(
        s.rejects[abi::STATUS_MISALIGNED as usize].load(Ordering::Relaxed),
        1
    );
    assert_eq!(s.rejects_total(), 1);

    let (iova, gpa) = (crate::addr::Iova(REGION_IOVA), Gpa(REGION_GPA));
    assert_eq!(
        device_events(&timeline),
        [
            What::IommuMap {
                iova,
                gpa,
                len: REGION_LEN,
                status: "ok"
            },
            What::DmaBatch {
                direction: DmaDirection::ToGuest,
                descriptors: 2,
                bytes: REGION_LEN,
                failed: 0
            },
            What::DmaBatch {
                direction: DmaDirection::FromGuest,
                descriptors: 2,
                bytes: REGION_LEN,
                failed: 1
            },
            What::IommuUnmap {
                iova,
                len: REGION_LEN,
                status: "ok"
            },
        ]
    );
    assert_eq!(devices.state().iommu.retired.len(), 1);
}

/// Refused requests: answered with their status, counted as rejects, recorded with the status
/// (IOMMU), and never progress. A bug would let a hostile guest keep the watchdog quiet.
#[test]
fn refused_requests_are_answered_counted_and_not_progress() {
    let (devices, timeline) = setup_devices();
    let iommu = [
        desc(abi::OP_MAP, REGION_IOVA, RAM, abi::PAGE_SIZE, RW),
        desc(abi::OP_MAP, REGION_IOVA, REGION_GPA, 0, RW),
        desc(abi::OP_UNMAP, 0x7000_0000, 0, abi::PAGE_SIZE, 0),
        desc(0x77, 0, 0, abi::PAGE_SIZE, 0),
    ];
    let got = submit(&devices, IOMMU_Q, 0, &iommu, Devices::service_iommu);
    let statuses: Vec<_> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses,
        ["out-of-range", "bad-length", "not-mapped", "bad-op"]
    );
    let dma = [
        desc(abi::OP_FROM_GUEST, 0x7000_0000, OUT_GPA, abi::PAGE_SIZE, 0),
        desc(
            abi::OP_FROM_GUEST,
            REGION_IOVA,
            DMA_Q + 64,
            abi::PAGE_SIZE,
            0,
        ),
    ];
    let got = submit(&devices, DMA_Q, 0, &dma, Devices::service_dma);
    let statuses: Vec<_> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, ["not-mapped", "aliased"]);
    assert_eq!(devices.progress.count(), 0);
    assert_eq!(devices.stats.rejects_total(), 6);
    let recorded: Vec<_> = device_events(&timeline)
        .into_iter()
        .map(|w| match w {
            What::IommuMap { status, .. } | What::IommuUnmap { status, .. } => status,
            What::DmaBatch {
                descriptors,
                failed,
                ..
            } => {
                assert_eq!((descriptors, failed), (2, 2));
                "dma-batch"
            }
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(
        recorded,
        ["out-of-range", "bad-length", "not-mapped", "dma-batch"],
        "an unknown opcode is counted, not recorded as a map"
    );
}

/// A doorbell before setup, and a forged tail: rejects, no completions walked, no progress.
#[test]
fn malformed_queues_are_rejects() {
    let ram = GuestRam::new(RAM, false, false).unwrap();
    let devices = Devices::new(
        Arc::new(RwLock::new(ram)),
        PinKind::Mapping,
        Arc::new(Timeline::new()),
    );
    devices.service_dma();
    assert_eq!(
        devices.stats.rejects[abi::STATUS_BAD_RING as usize].load(Ordering::Relaxed),
        1,
        "a doorbell before setup"
    );
    let (devices, _) = setup_devices();
    devices
        .ram()
        .atomic_u32(Gpa(DMA_Q))
        .unwrap()
        .store(ENTRIES + 1, Ordering::Release);
    devices.service_dma();
    let fault = devices
        .ram()
        .atomic_u32(Gpa(DMA_Q + 8))
        .unwrap()
        .load(Ordering::Acquire);
    assert_eq!(abi::status_name(fault), "bad-ring");
    assert_eq!(devices.stats.descriptors.load(Ordering::Relaxed), 0);
    assert_eq!(devices.progress.count(), 0);
}

/// Setup refusals carry the ABI's statuses (the hostile guest's setup classes).
#[test]
fn setup_refusals() {
    let (devices, _) = setup_devices();
    type Row = (&'static str, (u64, u32, u64, u32), &'static str);
    let rows: &[Row] = &[
        ("queue past RAM", (IOMMU_Q, 8, RAM - 64, 8), "out-of-range"),
        (
            "over the boot info",
            (IOMMU_Q, 8, abi::BOOT_INFO_GPA, 8),
            "aliased",
        ),
        (
            "queues over each other",
            (IOMMU_Q, 8, IOMMU_Q + 64, 8),
            "aliased",
        ),
        ("bad entries", (IOMMU_Q, 8, DMA_Q, 100), "bad-ring"),
        ("good again", (IOMMU_Q, 8, DMA_Q, 8), "ok"),
    ];
    for &(what, (iq, ie, dq, de), want) in rows {
        let record = abi::DeviceSetup {
            iommu_queue_gpa: iq,
            iommu_entries: ie,
            dma_entries: de,
            dma_queue_gpa: dq,
            ..Default::default()
        };
        devices.ram().write_obj(Gpa(SETUP_GPA), record).unwrap();
        devices.setup(SETUP_GPA);
        let answer: abi::DeviceSetup = devices.ram().read_obj(Gpa(SETUP_GPA)).unwrap();
        assert_eq!(abi::status_name(answer.status), want, "{what}");
    }
    devices.setup(RAM - 8);
    assert_eq!(
        devices.stats.rejects[abi::STATUS_OUT_OF_RANGE as usize].load(Ordering::Relaxed),
        2,
        "a setup record straddling the end of RAM is refused, not read"
    );
}
