//! The cost of an IOMMU map (pin + PFN evidence) against a raw registration of the same memory.
//!
//! For each size and page kind (THP, 4 KiB), each trial, interleaved: a raw [`FixedRing`]
//! registration of the range (ring setup + one IORING_REGISTER_BUFFERS of 1 GiB buffers) and its
//! release; the same pin `Iommu::map` makes (in parts through a staging ring where
//! `io_uring::stages` says so, `FixedRing::register_staged`) without the PFN read;
//! `Iommu::map` of the same range (validation, the pin, each part's PFNs read after that part
//! is pinned while the next part pins) and its unmap; the PFN read of the whole range alone.
//!
//! Owns the guest RAM it maps, one size at a time, unmapped before the next (8 GiB on a shared
//! machine: it checks MemAvailable first); changes no host knob.

use std::time::Instant;

use pinlab::addr::{Gpa, Iova};
use pinlab::devices::iommu::Iommu;
use pinlab::devices::request::Map;
use pinlab::memory::GuestRam;
use pinlab::pin::io_uring::{pfn_part, stages, FixedRing};
use pinlab::scenario::PinKind;
use pinlab_abi as abi;
use serde::Serialize;

use super::stat::{ms, ratio, Stat, GIB, MIB};

const RW: u32 = abi::PERM_READ | abi::PERM_WRITE;
/// Largest size the benchmark maps.
pub const MAX_SIZE: u64 = 16 * GIB;
/// Memory left to others when the benchmark maps: a size is refused unless this much more is
/// available.
const HEADROOM: u64 = 2 * GIB;

/// Errors of the map benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--map-size` out of range.
    #[error("--map-size {0:#x}: must be a non-zero multiple of 2 MiB up to 16 GiB")]
    Size(u64),
    /// The host has not enough free memory for the size (and others' headroom).
    #[error("mapping {size:#x} bytes needs {HEADROOM:#x} more than MemAvailable ({available:#x})")]
    NoMemory { size: u64, available: u64 },
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
    #[error("Iommu::map of {len:#x} bytes: {source}")]
    IommuMap {
        len: u64,
        #[source]
        source: pinlab::devices::iommu::Error,
    },
    /// The map request the bench built was refused (a size the parser does not take).
    #[error("map request of {len:#x} bytes: {source}")]
    Request {
        len: u64,
        #[source]
        source: pinlab::devices::request::RequestError,
    },
    /// The map pinned but recorded no PFNs.
    #[error("Iommu::map recorded no PFNs: {0}")]
    NoPfns(String),
    /// The map recorded fewer or more PFNs than the range has pages.
    #[error("Iommu::map of {len:#x} bytes recorded {recorded} PFNs")]
    PfnsMissing { len: u64, recorded: usize },
    /// The pagemap read alone failed.
    #[error("reading the PFNs of {len:#x} bytes: {source}")]
    Pagemap {
        len: u64,
        #[source]
        source: pinlab::pfn::Error,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// IOMMU map cost, milliseconds. Goal: map / raw registration <= 1.25.
#[derive(Clone, Debug, Serialize)]
pub struct MapReport {
    pub size: u64,
    /// THP-advised guest RAM (else 4 KiB pages: MADV_NOHUGEPAGE).
    pub thp: bool,
    pub thp_coverage: Option<f64>,
    /// `Iommu::map`: ring setup, buffer registration (the pin, in parts where
    /// `io_uring::stages` says so), PFN evidence.
    pub iommu_map: Option<Stat>,
    /// `pfn_runs::read` (the PFN evidence read `Iommu::map` makes) of the same range alone.
    pub pagemap: Option<Stat>,
    /// `IoUring::new` + one `register_buffers` of the range.
    pub raw_register: Option<Stat>,
    /// The pin `Iommu::map` makes, without the PFN read: registration in parts through a
    /// staging ring where `io_uring::stages` says so, else as `raw_register`; `None` when the
    /// kernel cannot clone buffers between rings (the map then registers at once).
    pub pin_alone: Option<Stat>,
    /// Unpin (unregister) after `Iommu::map`, for completeness.
    pub unmap: Option<Stat>,
    pub map_vs_raw: Option<f64>,
    /// What the PFN evidence adds to the same pin.
    pub map_vs_pin: Option<f64>,
    pub pagemap_vs_raw: Option<f64>,
    /// Pages whose PFN recorded by the (warm-up) map differs from the pagemap read while it is
    /// mapped (0 unless the host moved the RAM between the two reads).
    pub recorded_pfns_moved: usize,
}

/// Refuses a size the benchmark cannot map, before anything is allocated.
pub fn validate(size: u64) -> Result<()> {
    if size == 0 || size > MAX_SIZE || !size.is_multiple_of(2 * MIB) {
        return Err(Error::Size(size));
    }
    Ok(())
}

/// MemAvailable from /proc/meminfo, bytes (`None`: unreadable).
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Runs the map benchmark over `size` bytes of guest RAM (THP-advised or 4 KiB pages),
/// `trials` timed trials. The guest RAM is unmapped when this returns.
pub fn run(size: u64, thp: bool, trials: usize) -> Result<MapReport> {
    validate(size)?;
    if let Some(available) = mem_available() {
        if size.saturating_add(HEADROOM) > available {
            return Err(Error::NoMemory { size, available });
        }
    }
    let ram_error = |source| Error::GuestRam { size, source };
    let ram = GuestRam::new(size, thp, false).map_err(ram_error)?;
    ram.populate().map_err(ram_error)?;
    let thp_coverage = pinlab::pfn::thp_coverage(ram.hva(), size).ok();
    let mut iommu = Iommu::new(PinKind::IoUring);
    let mut s: [Vec<f64>; 5] = Default::default();
    let mut staged = stages(ram.hva(), size);
    let mut moved_pages = 0;
    let req = Map::new(Iova(0), Gpa(0), size, RW, ram.size())
        .map_err(|source| Error::Request { len: size, source })?;
    for trial in 0..=trials {
        let t = Instant::now();
        // SAFETY: guest RAM outlives the ring (dropped at the end of this statement's scope);
        // no transfer is made through it.
        let raw = unsafe { FixedRing::register(ram.hva(), size) }
            .map_err(|source| Error::RawRegister { len: size, source })?;
        let raw_ms = ms(t);
        drop(raw);

        let t = Instant::now();
        let pin_ms = if staged {
            // SAFETY: as the raw registration's.
            match unsafe { FixedRing::register_parts(ram.hva(), size, pfn_part(size)) } {
                Ok(pin) => {
                    let pin_ms = ms(t);
                    drop(pin);
                    Some(pin_ms)
                }
                Err(pinlab::pin::io_uring::Error::CloneBuffers { part: 0, .. }) => {
                    staged = false;
                    None
                }
                Err(source) => return Err(Error::RawRegister { len: size, source }),
            }
        } else {
            Some(raw_ms)
        };

        let t = Instant::now();
        iommu
            .map(&ram, &req)
            .map_err(|source| Error::IommuMap { len: size, source })?;
        let map_ms = ms(t);
        // The evidence the map recorded: one PFN per page, the same the pagemap shows (checked
        // on the untimed warm-up only: a copy of the list in every trial would change what the
        // allocator hands the next map, and so its time).
        if trial == 0 {
            let recorded = match iommu.mappings().next() {
                Some(m) if m.pfn_error.is_none() => &m.pinned_pfns,
                Some(m) => return Err(Error::NoPfns(m.pfn_error.clone().unwrap_or_default())),
                None => return Err(Error::NoPfns("no mapping".into())),
            };
            let pages = pinlab::pfn::pfns(ram.hva(), size)
                .map_err(|source| Error::Pagemap { len: size, source })?;
            if recorded.pages() != pages.len() as u64 {
                return Err(Error::PfnsMissing {
                    len: size,
                    recorded: recorded.pages() as usize,
                });
            }
            moved_pages = recorded.diff(&pages).len();
        }
        let t = Instant::now();
        iommu.clear();
        let unmap_ms = ms(t);

        let t = Instant::now();
        let pages = pinlab::pfn_runs::read(ram.hva(), size)
            .map_err(|source| Error::Pagemap { len: size, source })?;
        std::hint::black_box(&pages);
        let pagemap_ms = ms(t);
        drop(pages);
        if trial > 0 {
            for (v, x) in s.iter_mut().zip([map_ms, pagemap_ms, raw_ms, unmap_ms]) {
                v.push(x);
            }
            s[4].extend(pin_ms);
        }
    }
    let [iommu_map, pagemap, raw_register, unmap, pin_alone] =
        std::array::from_fn(|i| Stat::of(&s[i]));
    Ok(MapReport {
        size,
        thp,
        thp_coverage,
        map_vs_raw: ratio(iommu_map, raw_register),
        map_vs_pin: ratio(iommu_map, pin_alone),
        pagemap_vs_raw: ratio(pagemap, raw_register),
        iommu_map,
        pagemap,
        raw_register,
        pin_alone,
        unmap,
        recorded_pfns_moved: moved_pages,
    })
}
