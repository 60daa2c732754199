//! The host side of the lab: what this machine can do (`caps`), and every system-wide change the
//! lab makes to it, each held by an owner that undoes it: knobs (`knob_guard`, `ksm`), swapfiles
//! (`swapfile`), children; undone on drop, on panic and on SIGINT/SIGTERM (`signals`), and after a
//! SIGKILL from the on-disk journal (`journal`). `lock` serializes all of this across processes;
//! `vmstat` reads the kernel's counters as evidence.
//!
//! Layers, each using only the ones above it (no module calls up):
//! 1. primitives that know nothing of records: `knobs` (read/write a knob file), `swap` (swap
//!    areas, swapon/swapoff);
//! 2. `journal`: the on-disk record and its recovery, on the primitives;
//! 3. `registry`: the in-process record of what to undo, mirrored to the journal;
//! 4. owners: `knob_guard` (`KnobGuard`), `swapfile` (`Swapfile`), `ksm`; `signals` (panic hook,
//!    SIGINT/SIGTERM) and `lock` (`SystemLock`) beside them.
//!
//! It must not touch guest memory, the VM or pins: those belong to `vm`, `devices` and `pin`. It
//! changes host state only through the owners here, and only for callers holding `SystemLock`.
//!
//! Start-up order for a command that touches knobs: `install_restore_handlers()` (before spawning
//! threads), `SystemLock::acquire()` (which recovers dead runs' journals first), then take guards.

mod caps;
mod journal;
mod knob_guard;
mod knobs;
mod ksm;
mod lock;
#[cfg(test)]
mod races;
mod registry;
mod signals;
mod swap;
mod swapfile;
mod vmstat;

pub use caps::{Capability, Caps, KvmFlavor, NAMES as CAPABILITY_NAMES};
pub use journal::{recover_stale_journals, recover_stale_journals_in, Journal, Recovered, RUN_DIR};
pub use knob_guard::KnobGuard;
pub use knobs::{read_knob, trigger, write_knob};
pub use ksm::{counter as ksm_counter, Ksm, KsmSettings, KSM_DIR};
pub use lock::{Holder as LockHolder, SystemLock};
pub use registry::{register_child, unregister_child};
pub use signals::{defer_to_pending_signal, install_restore_handlers, restore_and_exit};
pub use swap::{active_swaps, SwapEntry};
pub use swapfile::Swapfile;
pub use vmstat::{delta, delta_of, VmstatSnapshot};

/// Each module's own error type, re-exported under its module's name.
pub mod errors {
    pub use super::caps::Error as CapsError;
    pub use super::journal::Error as JournalError;
    pub use super::knob_guard::Error as KnobGuardError;
    pub use super::knobs::Error as KnobError;
    pub use super::ksm::Error as KsmError;
    pub use super::lock::Error as LockError;
    pub use super::registry::Error as RegistryError;
    pub use super::signals::Error as SignalError;
    pub use super::swap::Error as SwapError;
    pub use super::swapfile::Error as SwapfileError;
    pub use super::vmstat::Error as VmstatError;
}
