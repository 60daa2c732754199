//! Details of the actions that move or discard guest RAM: mremap, dontneed.

use std::fmt;

use serde::Serialize;

use super::{Effect, PageList};
use crate::addr::Hva;

/// mremap / mremap-dontunmap: guest RAM moved and its memslot re-pointed.
#[derive(Clone, Debug, Serialize)]
pub struct Mremap {
    pub old_hva: Hva,
    pub new_hva: Hva,
    /// MREMAP_DONTUNMAP: the old range stays mapped (empty).
    pub dontunmap: bool,
    /// Region pages with the same PFN at the new address as at the old one.
    pub region_pages_same_pfn: usize,
    pub region_pages: usize,
}

impl fmt::Display for Mremap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guest RAM moved {} -> {}{}; memslot re-pointed; {}/{} region pages kept their PFN",
            self.old_hva,
            self.new_hva,
            if self.dontunmap {
                " (MREMAP_DONTUNMAP)"
            } else {
                ""
            },
            self.region_pages_same_pfn,
            self.region_pages
        )
    }
}

/// dontneed: MADV_DONTNEED on the DMA region itself.
#[derive(Clone, Debug, Serialize)]
pub struct Dontneed {
    pub region: Hva,
    pub len: u64,
    /// Region pages present before the call.
    pub present_before: usize,
    /// Region pages not mapped after the call.
    pub unmapped_pages: usize,
    /// Region pages whose PFN changed (or went away).
    pub changed_pages: PageList,
    /// `already-done`: no region page was present before (an earlier action discarded them).
    pub effect: Effect,
}

impl fmt::Display for Dontneed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MADV_DONTNEED on the region ({:#x} bytes at {}): {} pages present before, {} no longer mapped",
            self.len, self.region, self.present_before, self.unmapped_pages
        )?;
        if self.effect == Effect::AlreadyDone {
            write!(f, "; already discarded by an earlier action")?;
        }
        Ok(())
    }
}
