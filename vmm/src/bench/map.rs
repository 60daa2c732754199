//! The cost of an IOMMU map (pin + PFN evidence) against a raw registration of the same memory.
//!
//! Each trial, interleaved: a raw [`FixedRing`] registration of the range (ring setup + one
//! IORING_REGISTER_BUFFERS) and its release; `Iommu::map` of the same range (validation, the
//! pin, the pagemap PFNs read after it) and its unmap; the pagemap read alone.
//!
//! Owns the guest RAM it maps; changes no host knob.

use std::time::Instant;

use pinlab::devices::iommu::Iommu;
use pinlab::memory::GuestRam;
use pinlab::pin::io_uring::{FixedRing, MAX_BUFFER_LEN};
use pinlab::scenario::PinKind;
use pinlab_abi as abi;
use serde::Serialize;

use super::stat::{ms, ratio, Stat, MIB};

const RW: u32 = abi::PERM_READ | abi::PERM_WRITE;

/// Errors of the map benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--map-size` out of range.
    #[error("--map-size {0:#x}: must be a non-zero multiple of 2 MiB up to 1 GiB")]
    Size(u64),
    /// Guest RAM could not be mapped or faulted in.
    #[error("guest RAM of {size:#x} bytes: {source}")]
    GuestRam {
        size: u64,
        #[source]
        source: pinlab::memory::Error,
    },
    /// The raw registration failed.
    #[error("raw registration of {len:#x} bytes: {source}")]
    RawRegister {
        len: u64,
        #[source]
        source: pinlab::pin::io_uring::Error,
    },
    /// The IOMMU refused the map.
    #[error("Iommu::map of {len:#x} bytes: {status}")]
    IommuMap { len: u64, status: &'static str },
    /// The map pinned but recorded no PFNs.
    #[error("Iommu::map recorded no PFNs: {0}")]
    NoPfns(String),
    /// The pagemap read alone failed.
    #[error("pfn::pfns of {len:#x} bytes: {source}")]
    Pagemap {
        len: u64,
        #[source]
        source: pinlab::pfn::Error,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// IOMMU map cost, milliseconds. Goal: map / raw registration <= 1.5.
#[derive(Clone, Debug, Serialize)]
pub struct MapReport {
    pub size: u64,
    pub thp_coverage: Option<f64>,
    /// `Iommu::map`: ring setup, buffer registration (the pin), pagemap PFN evidence.
    pub iommu_map: Option<Stat>,
    /// `pfn::pfns` (the pagemap read `Iommu::map` makes) of the same range alone.
    pub pagemap: Option<Stat>,
    /// `IoUring::new` + one `register_buffers` of the range.
    pub raw_register: Option<Stat>,
    /// Unpin (unregister) after `Iommu::map`, for completeness.
    pub unmap: Option<Stat>,
    pub map_vs_raw: Option<f64>,
    pub pagemap_vs_raw: Option<f64>,
}

/// Refuses a size the benchmark cannot map, before anything is allocated.
pub fn validate(size: u64) -> Result<()> {
    if size == 0 || size > MAX_BUFFER_LEN || !size.is_multiple_of(2 * MIB) {
        return Err(Error::Size(size));
    }
    Ok(())
}

/// Runs the map benchmark over `size` bytes of THP guest RAM, `trials` timed trials.
pub fn run(size: u64, trials: usize) -> Result<MapReport> {
    validate(size)?;
    let ram_error = |source| Error::GuestRam { size, source };
    let ram = GuestRam::new(size, true, false).map_err(ram_error)?;
    ram.populate().map_err(ram_error)?;
    let thp_coverage = pinlab::pfn::thp_coverage(ram.hva(), size).ok();
    let mut iommu = Iommu::new(PinKind::IoUring);
    let mut s: [Vec<f64>; 4] = Default::default();
    for trial in 0..=trials {
        let t = Instant::now();
        // SAFETY: guest RAM outlives the ring (dropped at the end of this statement's scope);
        // no transfer is made through it.
        let raw = unsafe { FixedRing::register(ram.hva(), size) }
            .map_err(|source| Error::RawRegister { len: size, source })?;
        let raw_ms = ms(t);
        drop(raw);

        let t = Instant::now();
        iommu
            .map(&ram, 0, 0, size, RW)
            .map_err(|st| Error::IommuMap {
                len: size,
                status: abi::status_name(st),
            })?;
        let map_ms = ms(t);
        if let Some(e) = iommu.mappings().find_map(|m| m.pfn_error.clone()) {
            return Err(Error::NoPfns(e));
        }
        let t = Instant::now();
        iommu.clear();
        let unmap_ms = ms(t);

        let t = Instant::now();
        let pages = pinlab::pfn::pfns(ram.hva(), size)
            .map_err(|source| Error::Pagemap { len: size, source })?;
        std::hint::black_box(&pages);
        let pagemap_ms = ms(t);
        drop(pages);
        if trial > 0 {
            for (v, x) in s.iter_mut().zip([map_ms, pagemap_ms, raw_ms, unmap_ms]) {
                v.push(x);
            }
        }
    }
    let [iommu_map, pagemap, raw_register, unmap] = std::array::from_fn(|i| Stat::of(&s[i]));
    Ok(MapReport {
        size,
        thp_coverage,
        map_vs_raw: ratio(iommu_map, raw_register),
        pagemap_vs_raw: ratio(pagemap, raw_register),
        iommu_map,
        pagemap,
        raw_register,
        unmap,
    })
}
