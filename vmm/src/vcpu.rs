//! The vCPU thread: runs the guest and handles the few exits that must be synchronous.
//!
//! Console messages, device setup, phase markers and "done" are port writes whose value is the
//! GPA of a record; everything in a record is validated before use. The doorbells never reach
//! this loop (they are ioeventfds, serviced by the device thread).
//!
//! Three parts, so that what a guest can make the VMM do is tested without KVM:
//! - `decode` turns `VcpuFd::run`'s borrowed exit into an owned `KvmExit` (and answers port and
//!   MMIO reads with all ones: there is no device behind them);
//! - `handle_exit` is pure: a `KvmExit` and guest RAM in, an `Action` out (records are read and
//!   checked here);
//! - `Context::act` carries the action out: console, device setup, the phase hook and its ack,
//!   the end of the run.
//!
//! Only phases the hook accepts count as the guest's progress for the watchdog; an exit is not
//! progress (a guest spinning on port writes or flooding the console must still be stopped).
//!
//! `VcpuHandle` stops the loop from another thread: `kick` sets `immediate_exit` in the vCPU's
//! `kvm_run` and then sends `kick_signal`, so a kick that lands just before KVM_RUN is entered
//! is not lost (KVM_RUN then returns EINTR at once). On EINTR the loop clears `immediate_exit`
//! and looks at `stop`. This module does not own the vCPU fd (`vm::Vm` does) nor the devices.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{VcpuExit, VcpuFd};
use pinlab_abi as abi;

use crate::addr::Gpa;
use crate::console::Console;
use crate::devices::Devices;
use crate::memory::{self, GuestRam};

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

/// A KVM exit, decoded and owned (no borrow of `kvm_run` left).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmExit {
    /// `out` to `port`; `value` is the written bytes, little endian, zero extended.
    IoOut {
        port: u16,
        value: u32,
    },
    /// `in` from `port` (answered with all ones).
    IoIn {
        port: u16,
    },
    /// An MMIO read (answered with all ones).
    MmioRead {
        addr: u64,
    },
    /// An MMIO write (ignored).
    MmioWrite {
        addr: u64,
    },
    /// Triple fault.
    Shutdown,
    Hlt,
    /// KVM_EXIT_INTERNAL_ERROR with its suberror.
    InternalError {
        suberror: u32,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        reason: u64,
        cpu: u32,
    },
    /// KVM_RUN returned EINTR (a kick, or `immediate_exit`) or EAGAIN.
    Interrupted,
    /// KVM_RUN failed with this errno.
    RunFailed {
        errno: i32,
    },
    /// Any other exit, by name.
    Unexpected(String),
}

/// What the run loop does about one exit.
pub enum Action {
    /// Nothing: enter the guest again.
    Resume,
    /// KVM_RUN was interrupted: clear `immediate_exit`, look at `stop`.
    Interrupted,
    /// One console line, decoded.
    Console(String),
    /// A console record the VMM could not read: counted, the guest resumes.
    BadConsoleRecord(Gpa),
    /// The guest says where its queues are (validated by `Devices::setup`).
    Setup(Gpa),
    /// A phase marker, read from `gpa`; the VMM acknowledges it there.
    Phase { gpa: Gpa, phase: abi::Phase },
    /// The guest's final report (magic checked).
    Done(Box<abi::Report>),
    /// A write to a port the VMM does not serve: ignored.
    UnknownPort { port: u16, value: u32 },
    /// The guest did what no correct guest does: the run ends.
    Guest(GuestError),
    /// KVM failed: the run ends.
    Kvm(KvmError),
}

/// How the guest broke the ABI (or the machine).
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("the guest shut down (triple fault)")]
    Shutdown,
    #[error("the guest executed hlt")]
    Hlt,
    #[error(
        "KVM internal error, suberror {suberror} (1: emulation failure, e.g. a privileged or SSE instruction at CPL0)"
    )]
    InternalError { suberror: u32 },
    #[error("unexpected exit {0}")]
    UnexpectedExit(String),
    #[error("phase record at {gpa}: {source}")]
    PhaseRecord { gpa: Gpa, source: memory::Error },
    #[error("phase ack at {gpa}: {source}")]
    PhaseAck { gpa: Gpa, source: memory::Error },
    #[error("done record at {gpa}: {source}")]
    DoneRecord { gpa: Gpa, source: memory::Error },
    #[error("report magic {magic:#x} at {gpa} is wrong")]
    ReportMagic { gpa: Gpa, magic: u64 },
}

/// How KVM failed (never the guest's doing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvmError {
    #[error("KVM_RUN failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Run { errno: i32 },
    #[error("VM entry failed: reason {reason:#x} on cpu {cpu}")]
    FailEntry { reason: u64, cpu: u32 },
}

/// Where the guest was when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registers {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cs: u16,
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
}

impl Registers {
    fn of(vcpu: &VcpuFd) -> Option<Self> {
        let (r, s) = (vcpu.get_regs().ok()?, vcpu.get_sregs().ok()?);
        Some(Registers {
            rip: r.rip,
            rsp: r.rsp,
            rflags: r.rflags,
            cs: s.cs.selector,
            cr0: s.cr0,
            cr4: s.cr4,
            efer: s.efer,
        })
    }
}

impl std::fmt::Display for Registers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at rip {:#x} rsp {:#x} rflags {:#x} (cs {:#x}, cr0 {:#x}, cr4 {:#x}, efer {:#x})",
            self.rip, self.rsp, self.rflags, self.cs, self.cr0, self.cr4, self.efer
        )
    }
}

/// A guest failure and where the guest was.
#[derive(Debug)]
pub struct GuestFailure {
    pub error: GuestError,
    pub at: Option<Registers>,
}

impl std::fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.at {
            Some(at) => write!(f, "{} {at}", self.error),
            None => write!(f, "{} (registers unreadable)", self.error),
        }
    }
}

/// How the guest's run ended. `E` is the phase hook's error.
pub enum Exit<E> {
    /// The guest wrote its report and said done.
    Done(Box<abi::Report>),
    /// The guest stopped in a way no correct guest does (fault, shutdown, bad record).
    GuestFailed(GuestFailure),
    /// `stop` was set (the watchdog).
    Stopped,
    /// KVM itself failed.
    Kvm(KvmError),
    /// The phase hook failed (a host action at a phase): the lab's error.
    Hook(E),
}

/// A report in debug output: its header, not its bitmaps.
fn report_summary(r: &abi::Report) -> String {
    format!(
        "Report {{ status: {}, rounds_done: {}, .. }}",
        r.status, r.rounds_done
    )
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Resume => f.write_str("Resume"),
            Action::Interrupted => f.write_str("Interrupted"),
            Action::Console(l) => f.debug_tuple("Console").field(l).finish(),
            Action::BadConsoleRecord(g) => f.debug_tuple("BadConsoleRecord").field(g).finish(),
            Action::Setup(g) => f.debug_tuple("Setup").field(g).finish(),
            Action::Phase { gpa, phase } => f
                .debug_struct("Phase")
                .field("gpa", gpa)
                .field("phase", phase)
                .finish(),
            Action::Done(r) => write!(f, "Done({})", report_summary(r)),
            Action::UnknownPort { port, value } => f
                .debug_struct("UnknownPort")
                .field("port", port)
                .field("value", value)
                .finish(),
            Action::Guest(e) => f.debug_tuple("Guest").field(e).finish(),
            Action::Kvm(e) => f.debug_tuple("Kvm").field(e).finish(),
        }
    }
}

impl<E: std::fmt::Debug> std::fmt::Debug for Exit<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Done(r) => write!(f, "Done({})", report_summary(r)),
            Exit::GuestFailed(g) => f.debug_tuple("GuestFailed").field(g).finish(),
            Exit::Stopped => f.write_str("Stopped"),
            Exit::Kvm(e) => f.debug_tuple("Kvm").field(e).finish(),
            Exit::Hook(e) => f.debug_tuple("Hook").field(e).finish(),
        }
    }
}

/// What the phase hook made of a marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseAnswer {
    /// The next phase in order: its actions ran. Counts as the guest's progress.
    Accepted,
    /// Repeated or out of order: counted by the hook, acknowledged, nothing ran.
    Refused,
}

/// What the vCPU thread needs from the rest of the VMM.
pub struct Context<'a, E> {
    pub devices: Arc<Devices>,
    /// Set (then `handle.kick()`) to end the run.
    pub stop: Arc<AtomicBool>,
    /// The handle other threads kick this vCPU with; `run` registers itself in it.
    pub handle: VcpuHandle,
    /// Runs what is scheduled at a phase; an `Err` ends the run as `Exit::Hook`.
    pub on_phase: &'a mut dyn FnMut(&abi::Phase) -> Result<PhaseAnswer, E>,
    /// The guest's console, bounded.
    pub console: Console,
}

/// The little-endian value of an `out`'s bytes (1, 2 or 4 of them), zero extended.
fn port_value(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(v)
}

/// Runs KVM_RUN once and decodes the exit.
fn decode(vcpu: &mut VcpuFd) -> KvmExit {
    let exit = match vcpu.run() {
        Ok(VcpuExit::IoOut(port, data)) => KvmExit::IoOut {
            port,
            value: port_value(data),
        },
        Ok(VcpuExit::IoIn(port, data)) => {
            data.fill(0xff);
            KvmExit::IoIn { port }
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            data.fill(0xff);
            KvmExit::MmioRead { addr }
        }
        Ok(VcpuExit::MmioWrite(addr, _)) => KvmExit::MmioWrite { addr },
        Ok(VcpuExit::Shutdown) => KvmExit::Shutdown,
        Ok(VcpuExit::Hlt) => KvmExit::Hlt,
        Ok(VcpuExit::InternalError) => KvmExit::InternalError { suberror: 0 },
        Ok(VcpuExit::FailEntry(reason, cpu)) => KvmExit::FailEntry { reason, cpu },
        Ok(other) => KvmExit::Unexpected(format!("{other:?}")),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => KvmExit::Interrupted,
        Err(e) => KvmExit::RunFailed { errno: e.errno() },
    };
    match exit {
        KvmExit::InternalError { .. } => {
            let run = vcpu.get_kvm_run();
            // SAFETY: for KVM_EXIT_INTERNAL_ERROR the kernel fills the `internal` member of the
            // exit union, and nothing has run since.
            let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
            KvmExit::InternalError { suberror }
        }
        other => other,
    }
}

/// What to do about `exit`, reading any record it names from `ram`. Pure: no KVM, no devices.
pub fn handle_exit(exit: &KvmExit, ram: &GuestRam) -> Action {
    match *exit {
        KvmExit::IoOut { port, value } => port_write(port, Gpa(value as u64), ram),
        KvmExit::IoIn { .. } | KvmExit::MmioRead { .. } | KvmExit::MmioWrite { .. } => {
            Action::Resume
        }
        KvmExit::Shutdown => Action::Guest(GuestError::Shutdown),
        KvmExit::Hlt => Action::Guest(GuestError::Hlt),
        KvmExit::InternalError { suberror } => {
            Action::Guest(GuestError::InternalError { suberror })
        }
        KvmExit::FailEntry { reason, cpu } => Action::Kvm(KvmError::FailEntry { reason, cpu }),
        KvmExit::Interrupted => Action::Interrupted,
        KvmExit::RunFailed { errno } => Action::Kvm(KvmError::Run { errno }),
        KvmExit::Unexpected(ref name) => Action::Guest(GuestError::UnexpectedExit(name.clone())),
    }
}

/// A write of `gpa` (a record's address) to `port`.
fn port_write(port: u16, gpa: Gpa, ram: &GuestRam) -> Action {
    match port {
        abi::PORT_CONSOLE => match ram.read_obj::<abi::ConsoleMsg>(gpa) {
            Ok(msg) => {
                let len = (msg.len as usize).min(abi::CONSOLE_MAX);
                Action::Console(String::from_utf8_lossy(&msg.bytes[..len]).into_owned())
            }
            Err(_) => Action::BadConsoleRecord(gpa),
        },
        abi::PORT_SETUP => Action::Setup(gpa),
        abi::PORT_PHASE => match ram.read_obj::<abi::Phase>(gpa) {
            Ok(phase) => Action::Phase { gpa, phase },
            Err(source) => Action::Guest(GuestError::PhaseRecord { gpa, source }),
        },
        abi::PORT_DONE => match ram.read_obj::<abi::Report>(gpa) {
            Ok(r) if r.magic == abi::REPORT_MAGIC => Action::Done(Box::new(r)),
            Ok(r) => Action::Guest(GuestError::ReportMagic {
                gpa,
                magic: r.magic,
            }),
            Err(source) => Action::Guest(GuestError::DoneRecord { gpa, source }),
        },
        port => Action::UnknownPort {
            port,
            value: gpa.raw() as u32,
        },
    }
}

impl<E> Context<'_, E> {
    /// Carries out `action` (anything but `Interrupted`, which `run` handles); `Some` ends the
    /// run. `at` says where the guest is, for a failure.
    fn act(&mut self, action: Action, at: impl FnOnce() -> Option<Registers>) -> Option<Exit<E>> {
        match action {
            Action::Resume | Action::Interrupted => {}
            Action::Console(line) => {
                let was_full = self.console.is_full();
                if self.console.push(line) {
                    let line = self.console.lines().last().map_or("", String::as_str);
                    tracing::info!(target: "guest", "{line}");
                } else if !was_full {
                    tracing::warn!(
                        "the guest console is full ({} lines kept); further lines are only counted",
                        self.console.lines().len()
                    );
                }
            }
            Action::BadConsoleRecord(gpa) => {
                self.console.bad_record();
                tracing::debug!("console record at {gpa} is not inside guest RAM");
            }
            Action::Setup(gpa) => self.devices.setup(gpa.raw()),
            Action::Phase { gpa, mut phase } => {
                match (self.on_phase)(&phase) {
                    Ok(PhaseAnswer::Accepted) => {
                        self.devices.progress.bump();
                    }
                    Ok(PhaseAnswer::Refused) => {}
                    Err(e) => return Some(Exit::Hook(e)),
                }
                phase.ack = 1;
                // The action may have moved guest RAM: the ack goes through the current mapping.
                let ram = self.devices.ram.read().unwrap_or_else(|p| p.into_inner());
                if let Err(source) = ram.write_obj(gpa, phase) {
                    return Some(Exit::GuestFailed(GuestFailure {
                        error: GuestError::PhaseAck { gpa, source },
                        at: at(),
                    }));
                }
            }
            Action::Done(report) => return Some(Exit::Done(report)),
            Action::UnknownPort { port, value } => {
                tracing::debug!("guest wrote {value:#x} to unknown port {port:#x}");
            }
            Action::Guest(error) => {
                return Some(Exit::GuestFailed(GuestFailure { error, at: at() }));
            }
            Action::Kvm(e) => return Some(Exit::Kvm(e)),
        }
        None
    }
}

/// Runs the guest until it is done, fails, or is stopped.
pub fn run<E>(vcpu: &mut VcpuFd, ctx: &mut Context<'_, E>) -> Exit<E> {
    let running = ctx.handle.register(vcpu);
    loop {
        if ctx.stop.load(Ordering::Acquire) {
            return Exit::Stopped;
        }
        // A host action that must not race the guest holds it here (see `VcpuHandle::pause`);
        // a kick that parked it may have left `immediate_exit` set.
        if ctx.handle.gate.park_while_requested() {
            running.clear_immediate_exit();
            continue;
        }
        let exit = decode(vcpu);
        let action = {
            let ram = ctx.devices.ram.read().unwrap_or_else(|p| p.into_inner());
            handle_exit(&exit, &ram)
        };
        // The RAM lock is released: a phase action may take it for writing (mremap).
        if let Action::Interrupted = action {
            // Whoever kicks sets `stop` first and `immediate_exit` after it, so clearing
            // `immediate_exit` here and then looking at `stop` (at the top of the loop) cannot
            // miss a stop: a kick that lands after the clear leaves `immediate_exit` set again.
            running.clear_immediate_exit();
            continue;
        }
        if let Some(end) = ctx.act(action, || Registers::of(vcpu)) {
            return end;
        }
    }
}

/// Kicks the vCPU thread out of KVM_RUN from any thread. Cloning shares the same vCPU.
///
/// A vCPU is reachable only while `run` is inside its loop (it registers itself on entry and
/// deregisters, under the same lock `kick` takes, before it returns); a kick at any other time
/// does nothing, and `run` looks at `stop` before its first KVM_RUN.
#[derive(Clone, Debug, Default)]
pub struct VcpuHandle {
    running: Arc<Mutex<Option<Running>>>,
    /// Where the vCPU parks while a host action needs it stopped.
    gate: Arc<crate::pause::PauseGate>,
}

/// The registered vCPU: its thread and its `kvm_run.immediate_exit` byte.
#[derive(Debug)]
struct Running {
    thread: libc::pthread_t,
    immediate_exit: *mut u8,
}

// SAFETY: `Running` is a thread id and an address; they are used only under the handle's lock,
// while the `run` that registered them keeps both alive (see `VcpuHandle::kick`).
unsafe impl Send for Running {}

impl VcpuHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the vCPU leave KVM_RUN and look at its `stop` flag: sets `immediate_exit` (a
    /// KVM_RUN about to start returns EINTR at once), then sends `kick_signal` (a KVM_RUN in
    /// progress returns EINTR). Set `stop` first.
    pub fn kick(&self) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = running.as_ref() else {
            return;
        };
        // SAFETY: while `r` is registered, the `run` that registered it holds `&mut VcpuFd`, so
        // the kvm_run page is mapped, and that run deregisters under this lock before it
        // returns. `kvm_run` is memory the kernel writes too; of it we only touch this byte,
        // and only atomically (here and in `clear_immediate_exit`).
        unsafe { AtomicU8::from_ptr(r.immediate_exit) }.store(1, Ordering::SeqCst);
        // SAFETY: the thread is inside `run` (registered, see above), so it is alive; its
        // handler for `kick_signal` does nothing.
        unsafe { libc::pthread_kill(r.thread, kick_signal()) };
    }

    /// Stops the vCPU before its next KVM_RUN until the guard is dropped (kicking it out of a
    /// KVM_RUN in progress); `cancel` gives up the wait. For host actions that write guest RAM
    /// or change memslots while the guest would otherwise run.
    pub fn pause(
        &self,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<crate::pause::Paused, crate::pause::Error> {
        self.gate.pause(&|| self.kick(), cancel)
    }

    /// Registers the calling thread and `vcpu` until the result is dropped.
    fn register(&self, vcpu: &mut VcpuFd) -> Registration {
        let immediate_exit = std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit);
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(Running {
            thread,
            immediate_exit,
        });
        Registration {
            handle: self.clone(),
            immediate_exit,
        }
    }
}

/// `run`'s registration in a `VcpuHandle`; dropping it deregisters.
struct Registration {
    handle: VcpuHandle,
    immediate_exit: *mut u8,
}

impl Registration {
    fn clear_immediate_exit(&self) {
        // SAFETY: as in `VcpuHandle::kick`: the registration lives inside `run`, which holds the
        // vCPU fd, so the byte is mapped; it is only accessed atomically.
        unsafe { AtomicU8::from_ptr(self.immediate_exit) }.store(0, Ordering::SeqCst);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.handle.gate.gone();
        *self
            .handle
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use super::*;
    use crate::scenario::PinKind;

    const RAM: u64 = 8 << 20;
    /// A GPA inside RAM where the tests put records.
    const REC: u64 = 0x10_0000;

    fn setup_ram() -> GuestRam {
        GuestRam::new(RAM, false, false).unwrap()
    }

    fn out(port: u16, gpa: u64) -> KvmExit {
        KvmExit::IoOut {
            port,
            value: gpa as u32,
        }
    }

    fn console_msg(text: &[u8], len: u32) -> abi::ConsoleMsg {
        let mut m = abi::ConsoleMsg {
            len,
            _pad: 0,
            bytes: [0; abi::CONSOLE_MAX],
        };
        m.bytes[..text.len()].copy_from_slice(text);
        m
    }

    fn report(magic: u64) -> abi::Report {
        // SAFETY: Report is plain old data (ByteValued): all-zero is a valid value.
        let mut r: abi::Report = unsafe { std::mem::zeroed() };
        r.magic = magic;
        r.rounds_done = 7;
        r
    }

    /// GPAs a hostile guest can name for a record: the last byte, past the end, far past it.
    const BAD_GPAS: [u64; 3] = [RAM - 1, RAM, u32::MAX as u64];

    #[test]
    fn console_records_become_lines_or_are_refused() {
        let ram = setup_ram();
        ram.write_obj(Gpa(REC), console_msg(b"hello", 5)).unwrap();
        assert!(matches!(
            handle_exit(&out(abi::PORT_CONSOLE, REC), &ram),
            Action::Console(l) if l == "hello"
        ));
        // A length past the buffer is clamped to it, never read beyond the record.
        ram.write_obj(Gpa(REC), console_msg(b"ab", u32::MAX))
            .unwrap();
        match handle_exit(&out(abi::PORT_CONSOLE, REC), &ram) {
            Action::Console(l) => assert_eq!(l.len(), abi::CONSOLE_MAX),
            other => panic!("{other:?}"),
        }
        for gpa in BAD_GPAS {
            assert!(
                matches!(
                    handle_exit(&out(abi::PORT_CONSOLE, gpa), &ram),
                    Action::BadConsoleRecord(g) if g == Gpa(gpa)
                ),
                "{gpa:#x}"
            );
        }
    }

    #[test]
    fn phase_records_are_read_or_fail_the_guest() {
        let ram = setup_ram();
        let p = abi::Phase {
            phase: abi::PHASE_ROUND_DONE,
            round: 3,
            ..Default::default()
        };
        ram.write_obj(Gpa(REC), p).unwrap();
        assert!(matches!(
            handle_exit(&out(abi::PORT_PHASE, REC), &ram),
            Action::Phase { gpa: Gpa(REC), phase } if phase == p
        ));
        for gpa in BAD_GPAS {
            assert!(
                matches!(
                    handle_exit(&out(abi::PORT_PHASE, gpa), &ram),
                    Action::Guest(GuestError::PhaseRecord { gpa: g, .. }) if g == Gpa(gpa)
                ),
                "{gpa:#x}"
            );
        }
    }

    #[test]
    fn done_needs_a_readable_report_with_its_magic() {
        let ram = setup_ram();
        ram.write_obj(Gpa(REC), report(abi::REPORT_MAGIC)).unwrap();
        assert!(matches!(
            handle_exit(&out(abi::PORT_DONE, REC), &ram),
            Action::Done(r) if r.rounds_done == 7
        ));
        ram.write_obj(Gpa(REC), report(0x1234)).unwrap();
        assert!(matches!(
            handle_exit(&out(abi::PORT_DONE, REC), &ram),
            Action::Guest(GuestError::ReportMagic { magic: 0x1234, .. })
        ));
        // A report that starts inside RAM but runs past its end.
        let tail = RAM - (std::mem::size_of::<abi::Report>() as u64) / 2;
        for gpa in BAD_GPAS.into_iter().chain([tail]) {
            assert!(
                matches!(
                    handle_exit(&out(abi::PORT_DONE, gpa), &ram),
                    Action::Guest(GuestError::DoneRecord { .. })
                ),
                "{gpa:#x}"
            );
        }
    }

    /// Setup is passed on whatever its GPA (the devices validate it); other ports, reads and
    /// MMIO never end the run.
    #[test]
    fn other_port_and_mmio_exits_resume() {
        let ram = setup_ram();
        for gpa in [REC, RAM] {
            assert!(matches!(
                handle_exit(&out(abi::PORT_SETUP, gpa), &ram),
                Action::Setup(g) if g == Gpa(gpa)
            ));
        }
        for port in [0x80, abi::PORT_IOMMU_DOORBELL, abi::PORT_DMA_DOORBELL] {
            assert!(matches!(
                handle_exit(&out(port, 5), &ram),
                Action::UnknownPort { port: p, value: 5 } if p == port
            ));
        }
        for exit in [
            KvmExit::IoIn {
                port: abi::PORT_CONSOLE,
            },
            KvmExit::MmioRead { addr: 0xfee0_0000 },
            KvmExit::MmioWrite { addr: RAM },
        ] {
            assert!(
                matches!(handle_exit(&exit, &ram), Action::Resume),
                "{exit:?}"
            );
        }
    }

    /// Each row: an exit, and whether it must end the run as the guest's failure, as KVM's, or
    /// not at all. A bug: a KVM failure blamed on the guest (or the reverse), or EINTR ending
    /// the run instead of making the loop look at `stop`.
    #[test]
    fn machine_exits_are_classified() {
        let ram = setup_ram();
        type Row = (KvmExit, fn(&Action) -> bool);
        let rows: [Row; 7] = [
            (KvmExit::Shutdown, |a| {
                matches!(a, Action::Guest(GuestError::Shutdown))
            }),
            (KvmExit::Hlt, |a| {
                matches!(a, Action::Guest(GuestError::Hlt))
            }),
            (KvmExit::InternalError { suberror: 1 }, |a| {
                matches!(a, Action::Guest(GuestError::InternalError { suberror: 1 }))
            }),
            (
                KvmExit::FailEntry {
                    reason: 0x21,
                    cpu: 1,
                },
                |a| {
                    matches!(
                        a,
                        Action::Kvm(KvmError::FailEntry {
                            reason: 0x21,
                            cpu: 1
                        })
                    )
                },
            ),
            (KvmExit::Interrupted, |a| matches!(a, Action::Interrupted)),
            (
                KvmExit::RunFailed {
                    errno: libc::EFAULT,
                },
                |a| {
                    matches!(
                        a,
                        Action::Kvm(KvmError::Run {
                            errno: libc::EFAULT
                        })
                    )
                },
            ),
            (
                KvmExit::Unexpected("Debug".into()),
                |a| matches!(a, Action::Guest(GuestError::UnexpectedExit(n)) if n == "Debug"),
            ),
        ];
        for (exit, ok) in rows {
            let a = handle_exit(&exit, &ram);
            assert!(ok(&a), "{exit:?} -> {a:?}");
        }
    }

    #[test]
    fn port_values_are_little_endian_and_zero_extended() {
        assert_eq!(port_value(&[0x78]), 0x78);
        assert_eq!(port_value(&[0x78, 0x56]), 0x5678);
        assert_eq!(port_value(&[0x78, 0x56, 0x34, 0x12]), 0x1234_5678);
        assert_eq!(port_value(&[]), 0);
    }

    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("hook failed")]
    struct HookFailed;

    fn setup_devices() -> Arc<Devices> {
        Arc::new(Devices::new(
            Arc::new(RwLock::new(setup_ram())),
            PinKind::Mapping,
            Arc::new(crate::timeline::Timeline::new()),
        ))
    }

    fn phase_at(devices: &Devices, phase: u32, round: u32) -> Action {
        let p = abi::Phase {
            phase,
            round,
            ..Default::default()
        };
        let ram = devices.ram.read().unwrap();
        ram.write_obj(Gpa(REC), p).unwrap();
        handle_exit(&out(abi::PORT_PHASE, REC), &ram)
    }

    fn ack(devices: &Devices) -> u32 {
        let ram = devices.ram.read().unwrap();
        ram.read_obj::<abi::Phase>(Gpa(REC)).unwrap().ack
    }

    /// Progress is what the hook accepted, never an exit: a refused (repeated) phase and a
    /// console line leave the watchdog's counter alone; both phases are acknowledged; a hook
    /// error ends the run as the hook's, without an ack.
    #[test]
    fn only_accepted_phases_count_as_progress() {
        let devices = setup_devices();
        let mut answers = vec![
            Err(HookFailed),
            Ok(PhaseAnswer::Refused),
            Ok(PhaseAnswer::Accepted),
        ];
        let mut on_phase = |_: &abi::Phase| answers.pop().expect("one answer per phase");
        let mut ctx = Context {
            devices: devices.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            handle: VcpuHandle::new(),
            on_phase: &mut on_phase,
            console: Console::new(),
        };
        let progress = || devices.progress.count();
        let before = progress();

        let a = phase_at(&devices, abi::PHASE_MAPPED, 0);
        assert!(ctx.act(a, || None).is_none());
        assert_eq!(progress(), before + 1, "accepted");
        assert_eq!(ack(&devices), 1);

        let a = phase_at(&devices, abi::PHASE_MAPPED, 0);
        assert!(ctx.act(a, || None).is_none());
        assert_eq!(progress(), before + 1, "refused: no progress");
        assert_eq!(ack(&devices), 1, "refused phases are acknowledged too");

        assert!(ctx.act(Action::Console("x".into()), || None).is_none());
        assert_eq!(progress(), before + 1, "a console line is not progress");

        let a = phase_at(&devices, abi::PHASE_ROUNDS_START, 0);
        assert!(matches!(ctx.act(a, || None), Some(Exit::Hook(HookFailed))));
        assert_eq!(ack(&devices), 0, "no ack after a failed hook");
    }

    /// The console stays bounded however many lines arrive; unreadable records are counted.
    #[test]
    fn the_console_is_bounded_in_the_loop() {
        let devices = setup_devices();
        let mut on_phase = |_: &abi::Phase| Ok::<_, HookFailed>(PhaseAnswer::Accepted);
        let mut ctx = Context {
            devices,
            stop: Arc::new(AtomicBool::new(false)),
            handle: VcpuHandle::new(),
            on_phase: &mut on_phase,
            console: Console::new(),
        };
        let n = crate::console::MAX_LINES + 50;
        for i in 0..n {
            assert!(ctx.act(Action::Console(format!("{i}")), || None).is_none());
        }
        assert!(ctx
            .act(Action::BadConsoleRecord(Gpa(RAM)), || None)
            .is_none());
        assert_eq!(ctx.console.lines().len(), crate::console::MAX_LINES);
        assert_eq!(ctx.console.dropped().lines, 50);
        assert_eq!(ctx.console.dropped().bad_records, 1);
    }

    #[test]
    fn failures_say_where_the_guest_was() {
        let devices = setup_devices();
        let mut on_phase = |_: &abi::Phase| Ok::<_, HookFailed>(PhaseAnswer::Accepted);
        let mut ctx = Context {
            devices,
            stop: Arc::new(AtomicBool::new(false)),
            handle: VcpuHandle::new(),
            on_phase: &mut on_phase,
            console: Console::new(),
        };
        let at = Registers {
            rip: 0x40_1000,
            rsp: 0,
            rflags: 0x3002,
            cs: 0x1b,
            cr0: 0,
            cr4: 0,
            efer: 0,
        };
        match ctx.act(Action::Guest(GuestError::Hlt), || Some(at)) {
            Some(Exit::GuestFailed(f)) => {
                assert_eq!(f.at, Some(at));
                assert!(f.to_string().contains("hlt at rip 0x401000"), "{f}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ctx.act(
                Action::Kvm(KvmError::Run {
                    errno: libc::EFAULT
                }),
                || None
            ),
            Some(Exit::Kvm(KvmError::Run { .. }))
        ));
    }

    /// A kick with no vCPU registered does nothing (no signal to a thread that is not there);
    /// a registered thread gets `immediate_exit` set, and the signal (its no-op handler runs).
    #[test]
    fn kicks_reach_only_a_registered_vcpu() {
        install_kick_handler().unwrap();
        let handle = VcpuHandle::new();
        handle.kick();
        let mut byte = 0u8;
        let ptr = std::ptr::addr_of_mut!(byte);
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        *handle.running.lock().unwrap() = Some(Running {
            thread,
            immediate_exit: ptr,
        });
        let reg = Registration {
            handle: handle.clone(),
            immediate_exit: ptr,
        };
        handle.kick();
        // SAFETY: `byte` is a live local; only atomic accesses touch it while registered.
        assert_eq!(unsafe { AtomicU8::from_ptr(ptr) }.load(Ordering::SeqCst), 1);
        reg.clear_immediate_exit();
        // SAFETY: as above.
        assert_eq!(unsafe { AtomicU8::from_ptr(ptr) }.load(Ordering::SeqCst), 0);
        drop(reg);
        assert!(handle.running.lock().unwrap().is_none());
        handle.kick();
        assert_eq!(byte, 0, "a kick after deregistration touches nothing");
    }
}
