//! The pinlab guest: a freestanding program the VMM boots at CPL3 in long mode.
//!
//! It reads its boot info, tells the devices where its queues are, and runs the mode the VMM
//! asked for: the DMA workload, a minimal boot, a spin (for the watchdog), or hostile requests.

#![no_std]
#![no_main]

mod console;
mod device;
mod hostile;
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
            println!("pinlab guest: up at CPL3, {} MiB of RAM", info.ram_size >> 20);
            report::done(abi::GUEST_OK)
        }
        abi::MODE_SPIN => loop {
            rt::pause();
        },
        abi::MODE_HOSTILE => {
            hostile::run(&info, iq, dq);
            report::done(abi::GUEST_OK)
        }
        abi::MODE_DMA => {
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
            workload::run(&info, &mut iommu, &mut dma);
            report::done(abi::GUEST_OK)
        }
        other => {
            println!("guest: unknown mode {other}");
            report::abort()
        }
    }
}
