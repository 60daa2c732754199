//! The pinlab guest: a freestanding program the VMM boots at CPL3 in long mode.
//!
//! It reads its boot info, tells the devices where its queues are, and runs the mode the VMM
//! asked for: the DMA workload, a minimal boot, a spin (for the watchdog), hostile requests, a
//! console flood, the workload with its phase markers repeated, or seeded random hostile
//! traffic with valid traffic checked between (fuzz).

#![no_std]
#![no_main]

mod console;
mod device;
mod fuzz;
mod hostile;
mod panic;
mod report;
mod rt;
mod workload;

use pinlab_abi as abi;

use device::{Queue, QueueMem};

static mut IOMMU_QUEUE: QueueMem = QueueMem([0; device::QUEUE_BYTES]);
static mut DMA_QUEUE: QueueMem = QueueMem([0; device::QUEUE_BYTES]);

pub extern "C" fn guest_main() -> ! {
    // SAFETY: the VMM wrote the boot info before the first instruction; it is never written
    // again, and the page is identity-mapped.
    let info = unsafe { (abi::BOOT_INFO_GPA as *const abi::BootInfo).read_volatile() };
    if info.magic != abi::BOOT_INFO_MAGIC || info.abi_version != abi::ABI_VERSION {
        println!("guest: bad boot info (magic {:#x})", info.magic);
        report::abort();
    }
    let iq = core::ptr::addr_of_mut!(IOMMU_QUEUE);
    let dq = core::ptr::addr_of_mut!(DMA_QUEUE);
    match info.mode {
        abi::MODE_BOOT => {
            println!(
                "pinlab guest: up at CPL3, {} MiB of RAM",
                info.ram_size >> 20
            );
            report::done(abi::GUEST_OK)
        }
        abi::MODE_SPIN => loop {
            rt::pause();
        },
        abi::MODE_HOSTILE => {
            report::with(|r| hostile::run(&info, iq, dq, r));
            report::done(abi::GUEST_OK)
        }
        abi::MODE_FUZZ => {
            report::with(|r| fuzz::run(&info, iq, dq, r));
            report::done(abi::GUEST_OK)
        }
        abi::MODE_CONSOLE_FLOOD => {
            let mut n: u64 = 0;
            loop {
                println!(
                    "flood {n:>20}: a hostile guest prints without end; the VMM keeps a bounded console and counts the rest"
                );
                n = n.wrapping_add(1);
            }
        }
        abi::MODE_DMA | abi::MODE_PHASE_REPEAT => {
            let st = device::setup(iq as u64, device::ENTRIES, dq as u64, device::ENTRIES);
            if st != abi::STATUS_OK {
                println!("guest: device setup refused: {}", abi::status_name(st));
                report::abort();
            }
            // SAFETY: the queue memories are this program's statics, handed to the device only.
            let (mut iommu, mut dma) = unsafe {
                (
                    Queue::new(iq, abi::PORT_IOMMU_DOORBELL),
                    Queue::new(dq, abi::PORT_DMA_DOORBELL),
                )
            };
            let repeat = if info.mode == abi::MODE_PHASE_REPEAT {
                abi::PHASE_REPEAT_EXTRA
            } else {
                0
            };
            report::with(|r| workload::run(&info, &mut iommu, &mut dma, r, repeat));
            report::done(abi::GUEST_OK)
        }
        other => {
            println!("guest: unknown mode {other}");
            report::abort()
        }
    }
}
