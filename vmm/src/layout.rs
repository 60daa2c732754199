//! Where things are in guest-physical memory, for the VMM side.
//!
//! The fixed addresses are the ABI crate's; this module derives the scenario-dependent ones
//! (the DMA region) so the VMM, the validation and the perturbations agree on them.

use pinlab_abi as abi;

use crate::addr::Gpa;
use crate::scenario::Scenario;

/// The IOVA at which the guest maps its DMA region (distinct from the GPA on purpose, so a
/// device that confused the two would fail).
pub const REGION_IOVA: u64 = 0x40_0000_0000;

/// The first huge page of DMA RAM.
pub fn dma_region_base(_scenario: &Scenario) -> Gpa {
    Gpa(abi::DMA_BASE_GPA)
}

/// The DMA region: `region_offset` into the first DMA huge page, `region` long.
pub fn dma_region(scenario: &Scenario) -> (Gpa, u64) {
    let base = dma_region_base(scenario).raw() + scenario.workload.region_offset.0;
    (Gpa(base), scenario.workload.region.0)
}

/// The huge pages the region touches: `[first, end)` in GPA, 2 MiB aligned.
pub fn region_huge_pages(scenario: &Scenario) -> (Gpa, Gpa) {
    let (gpa, len) = dma_region(scenario);
    let first = gpa.raw() & !(abi::HUGE_PAGE_SIZE - 1);
    let end = (gpa.raw() + len).div_ceil(abi::HUGE_PAGE_SIZE) * abi::HUGE_PAGE_SIZE;
    (Gpa(first), Gpa(end))
}
