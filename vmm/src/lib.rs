//! pinlab: a hypervisor-backed lab for DMA pinning on Linux.
//!
//! See `DESIGN.md` for the architecture. This file is the module list.

pub mod addr;
pub mod config;
pub mod layout;
pub mod model;
pub mod scenario;
pub mod units;
