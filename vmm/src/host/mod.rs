//! The host side of the lab: what this machine can do (`caps`), and every system-wide change the
//! lab makes to it, each held by an owner that undoes it: knobs (`knobs`, `ksm`), swapfiles
//! (`swap`), children; undone on drop, on panic and on SIGINT/SIGTERM (`signals`), and after a
//! SIGKILL from the on-disk journal (`journal`). `lock` serializes all of this across processes;
//! `vmstat` reads the kernel's counters as evidence.
//!
//! It must not touch guest memory, the VM or pins: those belong to `vm`, `devices` and `pin`. It
//! changes host state only through the owners here, and only for callers holding `SystemLock`.
//!
//! Start-up order for a command that touches knobs: `install_restore_handlers()` (before spawning
//! threads), `SystemLock::acquire()`, `recover_stale_journals()`, then take guards.

mod caps;
mod journal;
mod knobs;
mod ksm;
mod lock;
mod registry;
mod signals;
mod swap;
mod vmstat;

/// Where pinlab keeps its lock and journals.
pub const RUN_DIR: &str = "/run/pinlab";

pub use caps::{Capability, Caps, KvmFlavor, NAMES as CAPABILITY_NAMES};
pub use journal::{recover_stale_journals, recover_stale_journals_in, Journal, Recovered};
pub use knobs::{read_knob, trigger, write_knob, KnobGuard};
pub use ksm::{Ksm, KsmSettings};
pub use lock::SystemLock;
pub use registry::{
    make_tracefs_instance, register_child, remove_tracefs_instance, unregister_child,
};
pub use signals::{defer_to_pending_signal, install_restore_handlers, restore_and_exit};
pub use swap::{active_swaps, SwapEntry, Swapfile};
pub use vmstat::{delta, delta_of, VmstatSnapshot};

/// Each module's own error type, re-exported under its module's name.
pub mod errors {
    pub use super::caps::Error as CapsError;
    pub use super::journal::Error as JournalError;
    pub use super::knobs::Error as KnobError;
    pub use super::ksm::Error as KsmError;
    pub use super::lock::Error as LockError;
    pub use super::registry::Error as RegistryError;
    pub use super::signals::Error as SignalError;
    pub use super::swap::Error as SwapError;
    pub use super::vmstat::Error as VmstatError;
}
