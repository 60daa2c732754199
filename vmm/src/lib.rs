//! pinlab: a hypervisor-backed lab for DMA pinning on Linux.
//!
//! See `docs/architecture.md` for the architecture. This file is the module list.

pub mod action_notes;
pub mod addr;
pub mod config;
pub mod console;
pub mod detached_mount;
pub mod devices;
pub mod diff;
pub mod evidence;
pub mod fuzzing;
pub mod host;
pub mod html;
pub mod identity;
pub mod kselftest;
pub mod layout;
pub mod matrix;
pub mod memory;
pub mod mmap;
pub mod model;
pub mod oracle;
pub mod pagemap_scan;
pub mod pause;
pub mod perturb;
pub mod pfn;
pub mod pfn_runs;
pub mod phase;
pub mod pin;
pub mod prefault;
pub mod report;
pub mod results;
pub mod runner;
pub mod scenario;
pub mod shadow;
pub mod sweep;
pub mod timeline;
pub mod trace;
pub mod units;
pub mod vcpu;
pub mod vm;
