//! The KVM virtual machine: one memslot over guest RAM, one vCPU in long mode at CPL3.
//!
//! This is the one place that assembles a VM: it creates the VM and vCPU, registers guest RAM,
//! loads the guest ELF, writes the page tables, GDT and boot info the guest expects
//! (`pinlab_abi`'s layout), and sets the vCPU's registers. It does not run the vCPU (`vcpu`)
//! and knows nothing of devices beyond registering their doorbell eventfds.
//!
//! `Vm` owns what KVM refers to, in the order KVM needs them gone: the vCPU fd, the VM fd, then
//! its share of guest RAM (see the struct), so the memslot never names unmapped memory.
//!
//! Why CPL3 with IOPL=3: on this host's KVM-PVM, CPL0 guest code is emulated instruction by
//! instruction and SSE fails there; CPL3 runs natively and port I/O still exits to the VMM
//! (the host facts in docs/architecture.md). The same state works on VT-x hosts.

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use kvm_bindings::{kvm_fpu, kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use linux_loader::loader::{elf::Elf, KernelLoader};
use pinlab_abi as abi;
use vmm_sys_util::eventfd::EventFd;

use crate::addr::{Gpa, Hva};
use crate::memory::GuestRam;

/// The guest ELF, built from `guest-image/guest` by build.rs.
pub const GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.elf"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening /dev/kvm failed: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0} is not 12")]
    KvmVersion(i32),
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION failed: {0}")]
    SetUserMemoryRegion(kvm_ioctls::Error),
    #[error("KVM_CREATE_VCPU failed: {0}")]
    CreateVcpu(kvm_ioctls::Error),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    GetSupportedCpuid(kvm_ioctls::Error),
    #[error("KVM_SET_CPUID2 failed: {0}")]
    SetCpuid(kvm_ioctls::Error),
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(kvm_ioctls::Error),
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(kvm_ioctls::Error),
    #[error("KVM_IOEVENTFD for port {port:#x} failed: {source}")]
    RegisterIoevent {
        port: u16,
        source: kvm_ioctls::Error,
    },
    #[error("loading the guest ELF failed: {0}")]
    LoadElf(linux_loader::loader::Error),
    #[error("the guest image ends at {end:#x}, past its stack at {stack:#x}")]
    ImageTooLarge { end: u64, stack: u64 },
    #[error("writing boot structures into guest RAM failed: {0}")]
    BootWrite(crate::memory::Error),
    #[error("moving guest RAM failed: {0}")]
    Remap(crate::memory::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The memslot guest RAM lives in.
const RAM_SLOT: u32 = 0;

/// A KVM VM with its RAM registered and its one vCPU.
///
/// Field order is drop order, and it is the order KVM needs:
/// 1. `vcpu`: a vCPU fd holds a reference on the VM inside the kernel, so the VM (and its
///    memslot) lives until the vCPU fd is closed too;
/// 2. `fd`: closing the VM fd, the last reference, destroys the VM, its memslot and its MMU
///    notifier (the /dev/kvm fd it came from is closed at the end of `create`; the VM does not
///    need it);
/// 3. `ram`: this share of guest RAM is released only then, so while any fd KVM could reach
///    guest RAM through is open, the memory behind memslot 0 stays mapped (other shares, the
///    devices', can only keep it longer).
pub struct Vm {
    vcpu: Mutex<VcpuFd>,
    fd: VmFd,
    ram: Arc<RwLock<GuestRam>>,
}

/// KVM_CREATE_VM retries after EINTR (see `Vm::create`).
const CREATE_VM_ATTEMPTS: u32 = 8;

fn read(ram: &RwLock<GuestRam>) -> RwLockReadGuard<'_, GuestRam> {
    ram.read().unwrap_or_else(|p| p.into_inner())
}

impl Vm {
    /// Creates the VM, registers `ram` as slot 0, loads the guest, prepares the vCPU. The VM
    /// keeps `ram` (a share of it) until it is dropped.
    ///
    /// `ram` is read-locked while the guest is loaded, so a prefault may run beside this (it
    /// only reads the lock too) but nothing can move RAM meanwhile.
    pub fn create(ram: Arc<RwLock<GuestRam>>, boot: &abi::BootInfo) -> Result<Vm> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(Error::KvmVersion(version));
        }
        // KVM_CREATE_VM registers an MMU notifier, and the first registration on an mm takes
        // `mm_take_all_locks`, which gives up with EINTR whenever `signal_pending(current)`:
        // TIF_NOTIFY_SIGNAL counts, and io_uring task work (a ring closed just before, as the
        // capability probe does) sets it. Nothing was created; the next attempt, after the
        // return to user space ran the task work, goes through.
        let mut attempts = 0;
        let fd = loop {
            match kvm.create_vm() {
                Err(e) if e.errno() == libc::EINTR && attempts < CREATE_VM_ATTEMPTS => {
                    attempts += 1;
                }
                r => break r.map_err(Error::CreateVm)?,
            }
        };
        // On an error below, the locals drop in reverse order of declaration: the vCPU fd (if
        // made), the VM fd, then `ram`, the order `Vm`'s fields give.
        let entry = {
            let guest = read(&ram);
            set_ram(&fd, &guest)?;
            let entry = load_guest(&guest)?;
            write_boot_structures(&guest, boot)?;
            entry
        };
        let vcpu = fd.create_vcpu(0).map_err(Error::CreateVcpu)?;
        setup_vcpu(&kvm, &vcpu, entry)?;
        Ok(Vm {
            vcpu: Mutex::new(vcpu),
            fd,
            ram,
        })
    }

    /// The VM fd (for devices KVM must know about, e.g. the KVM VFIO device).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest RAM, as the devices share it.
    pub fn ram(&self) -> &Arc<RwLock<GuestRam>> {
        &self.ram
    }

    /// The vCPU, for the thread that runs it. Only that thread takes it, for the whole run (the
    /// lock is what lets the `Vm` be shared with the device thread and the host actions
    /// meanwhile); a second taker would wait until the run is over.
    pub fn vcpu(&self) -> MutexGuard<'_, VcpuFd> {
        self.vcpu.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves guest RAM (`GuestRam::remap`) and memslot 0 with it; returns the old address.
    /// `ram` is this VM's RAM, write-locked by the caller (`self.ram().write()`), so no device
    /// reads it meanwhile.
    ///
    /// The slot is deleted before the move and created again after it (KVM refuses to change a
    /// slot's userspace address in place). While it is gone, a vCPU that runs (a storm) finds no
    /// RAM (its accesses exit as MMIO, or the guest fails) and never reaches the range the move
    /// frees, which another mapping of this process may take at once. If the move fails, the slot comes back where RAM is.
    pub fn remap_ram(&self, ram: &mut GuestRam, dontunmap: bool) -> Result<Hva> {
        let delete = kvm_userspace_memory_region {
            slot: RAM_SLOT,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: 0,
            userspace_addr: 0,
        };
        // SAFETY: deleting a slot names no memory; before the ioctl returns, KVM zaps the
        // slot's guest mappings and waits (SRCU) until no vCPU uses the old memslot array, so
        // nothing in KVM refers to the old host range afterwards.
        unsafe { self.fd.set_user_memory_region(delete) }.map_err(Error::SetUserMemoryRegion)?;
        let moved = ram.remap(dontunmap);
        set_ram(&self.fd, ram)?;
        moved.map_err(Error::Remap)
    }

    /// Registers `fd` to be signalled by a guest write to `port`, with no exit to the VMM.
    pub fn register_doorbell(&self, port: u16, fd: &EventFd) -> Result<()> {
        self.fd
            .register_ioevent(fd, &IoEventAddress::Pio(port as u64), NoDatamatch)
            .map_err(|source| Error::RegisterIoevent { port, source })
    }
}

/// Points memslot 0 at `ram`'s current host mapping.
fn set_ram(fd: &VmFd, ram: &GuestRam) -> Result<()> {
    let region = kvm_userspace_memory_region {
        slot: RAM_SLOT,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: ram.size(),
        userspace_addr: ram.hva().raw(),
    };
    // SAFETY: the region is guest RAM's whole mapping, live now, and it stays mapped for as long
    // as KVM may use the slot: the `Vm` (or, inside `Vm::create`, the order of its locals)
    // holds a share of the RAM and releases it only after the vCPU and VM fds are closed, and
    // the mapping only moves inside `Vm::remap_ram`, with the slot deleted.
    unsafe { fd.set_user_memory_region(region) }.map_err(Error::SetUserMemoryRegion)
}

fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, entry: u64) -> Result<()> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::GetSupportedCpuid)?;
    vcpu.set_cpuid2(&cpuid).map_err(Error::SetCpuid)?;

    let mut sregs = vcpu.get_sregs().map_err(Error::GetSregs)?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: abi::USER_CS,
        type_: 0xb, // execute/read, accessed
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: abi::USER_DS,
        type_: 0x3, // read/write, accessed
        l: 0,
        db: 1,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS_GPA,
        limit: TSS_LIMIT as u32,
        selector: abi::TSS_SEL,
        type_: 0xb, // busy 64-bit TSS
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = abi::GDT_GPA;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = 0x8000_0033; // PG | NE | ET | MP | PE; EM and TS clear (SSE usable)
    sregs.cr3 = abi::PML4_GPA;
    sregs.cr4 = 0x620; // PAE | OSFXSR | OSXMMEXCPT
    sregs.efer = 0x500; // LME | LMA
    vcpu.set_sregs(&sregs).map_err(Error::SetSregs)?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::SetFpu)?;

    let regs = kvm_bindings::kvm_regs {
        rip: entry,
        rsp: abi::STACK_TOP_GPA,
        rflags: 0x3002, // IOPL 3, reserved bit 1, interrupts off
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::SetRegs)?;
    if let Ok(r) = vcpu.get_regs() {
        tracing::debug!("vcpu rflags after set: {:#x}", r.rflags);
    }
    Ok(())
}

/// The TSS: never used for stacks (no interrupts), but its I/O bitmap is what lets the guest's
/// port I/O through KVM-PVM's emulator (see `abi::TSS_GPA`).
const TSS_GPA: u64 = abi::TSS_GPA;
const TSS_LIMIT: u64 = abi::TSS_SIZE - 1;

/// GDT entries: null, ring-0 code and data, ring-3 code (0x1b) and data (0x23), then the
/// 16-byte TSS descriptor (filled in at boot with its base).
const GDT: [u64; 7] = [
    0,
    0x00af_9a00_0000_ffff, // ring-0 64-bit code
    0x00cf_9200_0000_ffff, // ring-0 data
    0x00af_fa00_0000_ffff, // ring-3 64-bit code
    0x00cf_f200_0000_ffff, // ring-3 data
    0,                     // TSS low (filled in)
    0,                     // TSS high
];

fn load_guest(ram: &GuestRam) -> Result<u64> {
    let mut image = Cursor::new(GUEST_ELF);
    let loaded = Elf::load(ram.memory(), None, &mut image, None).map_err(Error::LoadElf)?;
    if loaded.kernel_end > abi::STACK_TOP_GPA - 0x10000 {
        return Err(Error::ImageTooLarge {
            end: loaded.kernel_end,
            stack: abi::STACK_TOP_GPA,
        });
    }
    Ok(loaded.kernel_load.0)
}

fn write_boot_structures(ram: &GuestRam, boot: &abi::BootInfo) -> Result<()> {
    let w = |gpa: u64, v: u64| ram.write_obj(Gpa(gpa), v).map_err(Error::BootWrite);
    // Page tables: a 4 GiB identity map with 2 MiB pages, user bit at every level.
    const PRESENT_RW_USER: u64 = 0x7;
    const HUGE: u64 = 0x80;
    w(abi::PML4_GPA, abi::PDPT_GPA | PRESENT_RW_USER)?;
    for gib in 0..4u64 {
        let pd = abi::PD_GPA + gib * 0x1000;
        w(abi::PDPT_GPA + gib * 8, pd | PRESENT_RW_USER)?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            w(pd + i * 8, addr | PRESENT_RW_USER | HUGE)?;
        }
    }
    // GDT with the TSS descriptor: type 0x9 (available 64-bit TSS), present.
    let mut gdt = GDT;
    gdt[5] = (TSS_LIMIT & 0xffff)
        | ((TSS_GPA & 0xff_ffff) << 16)
        | (0x89 << 40)
        | ((TSS_LIMIT >> 16 & 0xf) << 48)
        | ((TSS_GPA >> 24 & 0xff) << 56);
    gdt[6] = TSS_GPA >> 32;
    for (i, e) in gdt.iter().enumerate() {
        w(abi::GDT_GPA + i as u64 * 8, *e)?;
    }
    // TSS: I/O map base right after the 0x68-byte header; the bitmap is zero (every port
    // allowed: guest RAM starts zeroed, but say it) and ends with the required all-ones byte.
    let tss = vec![0u8; abi::TSS_SIZE as usize];
    ram.write_slice(Gpa(TSS_GPA), &tss)
        .map_err(Error::BootWrite)?;
    ram.write_obj(Gpa(TSS_GPA + 0x66), 0x68u16)
        .map_err(Error::BootWrite)?;
    ram.write_obj(Gpa(TSS_GPA + abi::TSS_SIZE - 1), 0xffu8)
        .map_err(Error::BootWrite)?;
    ram.write_obj(Gpa(abi::BOOT_INFO_GPA), *boot)
        .map_err(Error::BootWrite)
}
