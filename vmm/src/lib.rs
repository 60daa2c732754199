//! pinlab: a hypervisor-backed lab for DMA pinning on Linux.
//!
//! See `DESIGN.md` for the architecture. This file is the module list.

pub mod addr;
pub mod host;
