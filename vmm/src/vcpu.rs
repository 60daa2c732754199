//! The vCPU thread: runs the guest and handles the few exits that must be synchronous.
//!
//! Console messages, device setup, phase markers and "done" are port writes whose value is the
//! GPA of a record; everything in a record is validated before use. The doorbells never reach
//! this loop (they are ioeventfds, serviced by the device thread). A watchdog stops the loop by
//! setting `stop` and kicking the thread with `KICK_SIGNAL`, which makes KVM_RUN return EINTR.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::{VcpuExit, VcpuFd};
use pinlab_abi as abi;

use crate::addr::Gpa;
use crate::devices::Devices;

/// The signal that kicks the vCPU thread out of KVM_RUN (its handler does nothing).
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the no-op handler for `kick_signal` (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// How the guest's run ended.
pub enum Exit {
    /// The guest wrote its report and said done.
    Done(Box<abi::Report>),
    /// The guest stopped in a way no correct guest does (fault, shutdown, bad record).
    GuestFailed(String),
    /// The watchdog stopped it.
    Stopped,
    /// KVM itself failed.
    Kvm(String),
}

/// What the vCPU thread needs from the rest of the VMM.
pub struct Context<'a> {
    pub devices: Arc<Devices>,
    pub stop: Arc<AtomicBool>,
    /// Runs what is scheduled at a phase; an `Err` ends the run as a lab error.
    pub on_phase: &'a mut dyn FnMut(&abi::Phase) -> Result<(), String>,
    pub console: Vec<String>,
    /// When the guest first rang a doorbell that did DMA (set by the runner via phases).
    pub first_phase_at: Option<Instant>,
}

fn read_record<T: vm_memory::ByteValued>(devices: &Devices, gpa: u64) -> Result<T, String> {
    let ram = devices.ram.read().unwrap_or_else(|p| p.into_inner());
    ram.read_obj::<T>(Gpa(gpa))
        .map_err(|e| format!("guest record at {gpa:#x}: {e}"))
}

fn write_record<T: vm_memory::ByteValued>(devices: &Devices, gpa: u64, v: T) -> Result<(), String> {
    let ram = devices.ram.read().unwrap_or_else(|p| p.into_inner());
    ram.write_obj(Gpa(gpa), v)
        .map_err(|e| format!("guest record at {gpa:#x}: {e}"))
}

/// Where the guest was, for failure reports.
fn where_is(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "at rip {:#x} rsp {:#x} rflags {:#x} (cs {:#x}, cr0 {:#x}, cr4 {:#x}, efer {:#x})",
            r.rip, r.rsp, r.rflags, s.cs.selector, s.cr0, s.cr4, s.efer
        ),
        _ => "(registers unreadable)".to_string(),
    }
}

/// Runs the guest until it is done, fails, or is stopped.
pub fn run(vcpu: &mut VcpuFd, ctx: &mut Context<'_>) -> Exit {
    loop {
        if ctx.stop.load(Ordering::Acquire) {
            return Exit::Stopped;
        }
        let exit = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                let mut v = [0u8; 4];
                let n = data.len().min(4);
                v[..n].copy_from_slice(&data[..n]);
                Some((port, u32::from_le_bytes(v) as u64))
            }
            Ok(VcpuExit::IoIn(_, data)) => {
                data.fill(0xff);
                None
            }
            Ok(VcpuExit::MmioRead(_, data)) => {
                data.fill(0xff);
                None
            }
            Ok(VcpuExit::MmioWrite(..)) => None,
            Ok(VcpuExit::Shutdown) => {
                return Exit::GuestFailed(format!(
                    "the guest shut down (triple fault) {}",
                    where_is(vcpu)
                ))
            }
            Ok(VcpuExit::Hlt) => {
                return Exit::GuestFailed(format!("the guest executed hlt {}", where_is(vcpu)))
            }
            Ok(VcpuExit::InternalError) => {
                let run = vcpu.get_kvm_run();
                // SAFETY: for KVM_EXIT_INTERNAL_ERROR the kernel fills the `internal` member.
                let sub = unsafe { run.__bindgen_anon_1.internal.suberror };
                return Exit::GuestFailed(format!(
                    "KVM internal error, suberror {sub} (1: emulation failure, e.g. a privileged or SSE instruction at CPL0)"
                ));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Exit::Kvm(format!("VM entry failed: reason {reason:#x} on cpu {cpu}"))
            }
            Ok(other) => return Exit::GuestFailed(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => return Exit::Kvm(format!("KVM_RUN failed: {e}")),
        };
        let Some((port, value)) = exit else { continue };
        match port {
            abi::PORT_CONSOLE => match read_record::<abi::ConsoleMsg>(&ctx.devices, value) {
                Ok(msg) => {
                    let len = (msg.len as usize).min(abi::CONSOLE_MAX);
                    let line = String::from_utf8_lossy(&msg.bytes[..len]).into_owned();
                    tracing::info!(target: "guest", "{line}");
                    ctx.console.push(line);
                }
                Err(e) => tracing::warn!("console: {e}"),
            },
            abi::PORT_SETUP => ctx.devices.setup(value),
            abi::PORT_PHASE => {
                let mut phase = match read_record::<abi::Phase>(&ctx.devices, value) {
                    Ok(p) => p,
                    Err(e) => return Exit::GuestFailed(format!("phase: {e}")),
                };
                ctx.first_phase_at.get_or_insert_with(Instant::now);
                if let Err(e) = (ctx.on_phase)(&phase) {
                    return Exit::Kvm(e);
                }
                phase.ack = 1;
                if let Err(e) = write_record(&ctx.devices, value, phase) {
                    return Exit::GuestFailed(format!("phase ack: {e}"));
                }
            }
            abi::PORT_DONE => {
                return match read_record::<abi::Report>(&ctx.devices, value) {
                    Ok(r) if r.magic == abi::REPORT_MAGIC => Exit::Done(Box::new(r)),
                    Ok(r) => Exit::GuestFailed(format!("report magic {:#x} is wrong", r.magic)),
                    Err(e) => Exit::GuestFailed(format!("done: {e}")),
                };
            }
            other => tracing::debug!("guest wrote {value:#x} to unknown port {other:#x}"),
        }
    }
}
