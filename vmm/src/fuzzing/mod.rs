//! Fuzz targets: each a plain `pub fn target(data: &[u8])` that decodes its input with
//! `arbitrary::Unstructured`, drives one of pinlab's parsers or decoders, and panics when an
//! invariant breaks.
//!
//! The same functions are called by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, libFuzzer
//! on nightly) and by `tests/fuzz.rs` on stable (a bounded number of inputs from a seeded PRNG),
//! so a regression a long libFuzzer run would find fails CI too. Every target checks more than
//! "does not panic": a reference written from the ABI's or the format's rules (requests,
//! queues, IOMMU table, phase order), or a round trip (configs, KTAP, trace lines).
//!
//! What this module owns: the targets and the value generators they share. It must not touch
//! the host beyond anonymous guest RAM of its own (no KVM, no knobs) and keeps no state between
//! inputs, so a crashing input reproduces alone.

mod config;
mod devices;
mod iommu;
mod ktap;
mod phase;
mod queue;
mod report;
mod request;
mod trace;

use arbitrary::{Arbitrary, Unstructured};

pub use config::config;
pub use devices::devices;
pub use iommu::iommu;
pub use ktap::ktap;
pub use phase::phase_order;
pub use queue::queue;
pub use report::report;
pub use request::request;
pub use trace::trace;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("queue", queue),
    ("request", request),
    ("iommu", iommu),
    ("devices", devices),
    ("report", report),
    ("phase_order", phase_order),
    ("ktap", ktap),
    ("trace", trace),
];

/// Runs `f` over `data`; running out of input ends the case quietly (it is not a failure).
fn run(data: &[u8], f: impl FnOnce(&mut Unstructured<'_>) -> arbitrary::Result<()>) {
    let mut u = Unstructured::new(data);
    let _ = f(&mut u);
}

/// A u64 drawn toward `edges`: an edge itself, an edge nudged by a few units, or anything.
fn u64_near(u: &mut Unstructured<'_>, edges: &[u64]) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => u64::arbitrary(u)?,
        1 | 2 if !edges.is_empty() => *u.choose(edges)?,
        3 if !edges.is_empty() => u
            .choose(edges)?
            .wrapping_add_signed(u.int_in_range(-8i64..=8)?),
        4 => u.int_in_range(0..=64u64)? * crate::addr::PAGE_SIZE,
        _ => u.int_in_range(0..=16u64)?,
    })
}

/// A u32 drawn toward `edges` (see [`u64_near`]).
fn u32_near(u: &mut Unstructured<'_>, edges: &[u32]) -> arbitrary::Result<u32> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => u32::arbitrary(u)?,
        1 | 2 if !edges.is_empty() => *u.choose(edges)?,
        3 if !edges.is_empty() => u
            .choose(edges)?
            .wrapping_add_signed(u.int_in_range(-4i32..=4)?),
        _ => u.int_in_range(0..=16u32)?,
    })
}

/// Edges every guest-supplied u64 is tried at.
const U64_EDGES: &[u64] = &[
    0,
    1,
    u64::MAX,
    u64::MAX - 0xfff,
    1 << 63,
    pinlab_abi::IOVA_LIMIT,
    pinlab_abi::RESERVED_END_GPA,
    pinlab_abi::DMA_BASE_GPA,
    pinlab_abi::IDENTITY_MAP_SIZE,
];

/// Edges every guest-supplied u32 is tried at.
const U32_EDGES: &[u32] = &[0, 1, 2, u32::MAX, u32::MAX - 1, 1 << 31];

/// A plain-data ABI record filled from the input (zeros once it runs out).
fn record<T: vm_memory::ByteValued>(u: &mut Unstructured<'_>) -> arbitrary::Result<T> {
    // SAFETY: a `ByteValued` type is valid for every byte pattern, all zeros included.
    let mut value: T = unsafe { std::mem::zeroed() };
    u.fill_buffer(value.as_mut_slice())?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generators reach their edges: without that, the stable run would never try u32::MAX
    /// counters or u64::MAX lengths. A bug would be a generator that ignores its edge list.
    #[test]
    fn generators_reach_the_edges() {
        let mut seen_max = false;
        let mut seen_edge = false;
        for i in 0u64..2000 {
            let bytes: Vec<u8> = (0..16)
                .map(|k| (i.wrapping_mul(31) + k * 7) as u8)
                .collect();
            let mut u = Unstructured::new(&bytes);
            seen_max |= u32_near(&mut u, U32_EDGES).unwrap() == u32::MAX;
            seen_edge |= u64_near(&mut u, U64_EDGES).unwrap() == pinlab_abi::IOVA_LIMIT;
        }
        assert!(seen_max && seen_edge);
    }

    /// Every target is listed once, and each survives empty and tiny inputs.
    #[test]
    fn every_target_takes_empty_input() {
        let mut names: Vec<_> = TARGETS.iter().map(|t| t.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TARGETS.len());
        for (_, target) in TARGETS {
            target(&[]);
            target(&[0xff; 7]);
        }
    }
}
