//! pinlab: a hypervisor-backed lab for DMA pinning on Linux.
//!
//! See `DESIGN.md` for the architecture. This file is the module list.

pub mod addr;
pub mod config;
pub mod devices;
pub mod host;
pub mod layout;
pub mod matrix;
pub mod memory;
pub mod model;
pub mod oracle;
pub mod perturb;
pub mod pfn;
pub mod pin;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod units;
pub mod vcpu;
pub mod vm;
