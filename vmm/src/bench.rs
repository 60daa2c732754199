//! Benchmarks of the live paths: DMA throughput through io_uring pins, the cost of an IOMMU map,
//! and launch timings of the `pinlab` binary.
//!
//! Timing lives here (and in `benches/`), never in pass/fail tests. The machine is shared and
//! noisy, so every figure is a set of trials (median, min, max) and every goal is a ratio against
//! a raw baseline measured in the same run, interleaved trial by trial:
//! - DMA: `DmaEngine::execute` over a THP-backed, prefaulted region mapped by an io-uring
//!   `Iommu`, against a raw IORING_OP_READ_FIXED / WRITE_FIXED loop (same chunk size, same
//!   queue depth, same staging size) over the same bytes, and against a plain memcpy. The
//!   engine's own extra work (pattern fill for device writes, page checksums for device reads)
//!   is measured alone so the ratio of the transfer itself can be read apart from it.
//! - Map: `Iommu::map` (pin + pagemap PFN evidence) against one raw buffer registration of the
//!   same range; the pagemap read is also timed alone.
//! - Launch: the `pinlab` binary spawned N times (`run --json`, `run --mode boot --json`), and
//!   the startup steps of a run timed in-process (guest RAM, prefault, VM creation, THP coverage).
//!
//! It owns only what it allocates for a measurement (guest RAM, rings, staging, children it
//! spawns and always reaps); it changes no host knob.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use io_uring::{opcode, squeue, types, IoUring};
use pinlab_abi as abi;
use serde::Serialize;

use crate::addr::{Gpa, Hva, Iova};
use crate::devices::dma::{DmaEngine, STAGING_MAX};
use crate::devices::iommu::Iommu;
use crate::devices::request::{DmaRequest, IovaRange, Map, Perm};
use crate::memory::GuestRam;
use crate::pin::io_uring::{CHUNK_LEN, MAX_BUFFER_LEN, RING_ENTRIES};
use crate::pin::{Staging, Transfer};
use crate::scenario::PinKind;

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
const RW: u32 = abi::PERM_READ | abi::PERM_WRITE;

/// What to measure and how often.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Bytes of guest RAM the DMA benchmark maps and moves (at most 1 GiB: one raw buffer).
    pub region: u64,
    /// Bytes per DMA descriptor (a multiple of 4 KiB).
    pub descriptor: u64,
    /// Bytes the map benchmark maps (1 GiB: the largest single registered buffer).
    pub map_size: u64,
    /// Timed trials per measurement (one untimed warm-up comes first).
    pub trials: usize,
    /// Spawns of the `pinlab` binary per launch measurement.
    pub launches: usize,
    /// The `pinlab` binary to spawn.
    pub pinlab: PathBuf,
    /// The caller wants JSON (the report is the same; `render` is for humans).
    pub json: bool,
    /// Which sections run.
    pub dma: bool,
    pub map: bool,
    pub launch: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            region: 256 * MIB,
            descriptor: 8 * MIB,
            map_size: 1 << 30,
            trials: 7,
            launches: 20,
            pinlab: default_pinlab(),
            json: false,
            dma: true,
            map: true,
            launch: true,
        }
    }
}

/// The `pinlab` binary next to the running executable: itself when it is `pinlab`, else a
/// sibling, else one directory up (test and bench executables live in `target/*/deps/`).
pub fn default_pinlab() -> PathBuf {
    let Ok(exe) = std::env::current_exe() else {
        return PathBuf::from("pinlab");
    };
    if exe.file_name().is_some_and(|n| n == "pinlab") {
        return exe;
    }
    let dir = exe.parent().unwrap_or(Path::new("."));
    [dir.join("pinlab"), dir.join("../pinlab")]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join("pinlab"))
}

/// Median, min and max of a set of trials.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    /// The summary of `samples`, or `None` when there are none (NaNs sort last).
    pub fn of(samples: &[f64]) -> Option<Stat> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: s[0],
            max: s[n - 1],
            n,
        })
    }
}

/// `a.median / b.median`, when both exist and `b` is not zero.
pub fn ratio(a: Option<Stat>, b: Option<Stat>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median != 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

fn gib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / GIB / secs
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// DMA throughput, GiB/s, and the ratios the goals are stated in.
#[derive(Clone, Debug, Serialize)]
pub struct DmaReport {
    pub region: u64,
    pub descriptor: u64,
    /// Bytes per SQE (the pin's CHUNK_LEN) and SQEs in flight per descriptor.
    pub chunk: u64,
    pub queue_depth: u64,
    pub staging: u64,
    pub thp_coverage: Option<f64>,
    /// `execute(OP_TO_GUEST)` with a new seed every pass: pattern fill + READ_FIXED.
    pub engine_to_guest: Option<Stat>,
    /// `execute(OP_FROM_GUEST)`: WRITE_FIXED + a checksum per 4 KiB page.
    pub engine_from_guest: Option<Stat>,
    /// The engine's pin calls alone (`Pin::write_to_guest` / `read_from_guest`, same pieces).
    pub pin_to_guest: Option<Stat>,
    pub pin_from_guest: Option<Stat>,
    /// Raw io_uring, same chunks, same depth, a staging-sized memfd.
    pub raw_read_fixed: Option<Stat>,
    pub raw_write_fixed: Option<Stat>,
    /// Raw io_uring with the ring kept full (RING_ENTRIES in flight) across descriptors.
    pub raw_read_fixed_deep: Option<Stat>,
    pub raw_write_fixed_deep: Option<Stat>,
    /// `copy_from_slice` of `region` bytes between two prefaulted buffers.
    pub memcpy: Option<Stat>,
    /// The engine's CPU work alone, over `region` bytes in staging-sized pieces.
    pub fill_pattern: Option<Stat>,
    pub checksum: Option<Stat>,
    pub ratios: DmaRatios,
}

/// Ratios of medians. Goal: engine / raw >= 0.9.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DmaRatios {
    pub engine_to_guest_vs_raw: Option<f64>,
    pub engine_from_guest_vs_raw: Option<f64>,
    pub pin_to_guest_vs_raw: Option<f64>,
    pub pin_from_guest_vs_raw: Option<f64>,
    pub engine_to_guest_vs_memcpy: Option<f64>,
    pub engine_from_guest_vs_memcpy: Option<f64>,
    pub raw_vs_raw_deep_read: Option<f64>,
    pub raw_vs_raw_deep_write: Option<f64>,
}

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

/// Launch timings, milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchReport {
    pub pinlab: PathBuf,
    pub launches: usize,
    /// The first spawn (untimed warm-up: page cache, first THP allocation), on its own.
    pub first_spawn_ms: Option<f64>,
    /// `run --json`, the default scenario.
    pub run_spawn_to_exit: Option<Stat>,
    pub run_launch_to_guest_start: Option<Stat>,
    pub run_launch_to_first_dma: Option<Stat>,
    pub run_launch_to_guest_done: Option<Stat>,
    /// `run --mode boot --json`.
    pub boot_spawn_to_exit: Option<Stat>,
    pub boot_launch_to_guest_start: Option<Stat>,
    pub boot_launch_to_guest_done: Option<Stat>,
    /// The default scenario's startup steps, in this process.
    pub steps: StartupSteps,
}

/// In-process timings of the steps before a run's first guest instruction, milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct StartupSteps {
    pub memory: u64,
    pub guest_ram_new: Option<Stat>,
    pub populate: Option<Stat>,
    pub vm_create: Option<Stat>,
    pub thp_coverage: Option<Stat>,
}

/// Everything measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub trials: usize,
    pub dma: Option<DmaReport>,
    pub map: Option<MapReport>,
    pub launch: Option<LaunchReport>,
}

/// Runs the sections `opts` asks for.
pub fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    if opts.trials == 0 {
        bail!("trials must be at least 1");
    }
    Ok(BenchReport {
        trials: opts.trials,
        dma: opts.dma.then(|| dma(opts)).transpose()?,
        map: opts.map.then(|| map(opts)).transpose()?,
        launch: opts.launch.then(|| launch(opts)).transpose()?,
    })
}

// ---------------------------------------------------------------------------------------------
// DMA throughput

/// A raw io_uring ring with one registered buffer; unregistered on drop.
struct RawRing {
    ring: IoUring,
    hva: Hva,
    len: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RawDir {
    /// READ_FIXED: file -> buffer (a device write).
    Read,
    /// WRITE_FIXED: buffer -> file (a device read).
    Write,
}

impl RawRing {
    /// Registers `hva..hva+len` (at most 1 GiB) as buffer 0 of a fresh ring.
    ///
    /// # Safety
    ///
    /// `hva..hva+len` must stay mapped for the ring's lifetime, and no Rust reference to it may be
    /// alive across a READ_FIXED pass (the kernel writes into it).
    unsafe fn new(hva: Hva, len: u64) -> anyhow::Result<Self> {
        if len > MAX_BUFFER_LEN {
            bail!("a raw registered buffer holds at most {MAX_BUFFER_LEN:#x} bytes, not {len:#x}");
        }
        let ring = IoUring::new(RING_ENTRIES)
            .with_context(|| format!("io_uring_setup({RING_ENTRIES})"))?;
        let iov = [libc::iovec {
            iov_base: hva.as_ptr().cast(),
            iov_len: len as usize,
        }];
        // SAFETY: the iovec is the caller's mapping, kept alive for our lifetime (contract);
        // the kernel pins its pages until `Drop` unregisters them.
        unsafe { ring.submitter().register_buffers(&iov) }
            .with_context(|| format!("IORING_REGISTER_BUFFERS of {len:#x} bytes at {hva}"))?;
        Ok(RawRing { ring, hva, len })
    }

    /// Moves the whole buffer to or from `file` (of `file_len` bytes) in CHUNK_LEN SQEs:
    /// `batch` bytes at a time, each batch at file offset 0 and fully reaped before the next
    /// (as the engine does per descriptor), at most `depth` SQEs in flight.
    fn pass(
        &mut self,
        dir: RawDir,
        file: i32,
        file_len: u64,
        batch: u64,
        depth: usize,
    ) -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut start = 0;
        while start < self.len {
            let end = (start + batch).min(self.len);
            let (mut next, mut in_flight) = (start, 0usize);
            while next < end || in_flight > 0 {
                while next < end && in_flight < depth {
                    let foff = (next - start) % file_len;
                    let n = CHUNK_LEN.min(end - next).min(file_len - foff);
                    let buf = self.hva.as_ptr().wrapping_add(next as usize);
                    let fd = types::Fd(file);
                    let e: squeue::Entry = match dir {
                        RawDir::Read => opcode::ReadFixed::new(fd, buf, n as u32, 0)
                            .offset(foff)
                            .build(),
                        RawDir::Write => opcode::WriteFixed::new(fd, buf, n as u32, 0)
                            .offset(foff)
                            .build(),
                    }
                    .user_data(n);
                    // SAFETY: `buf..buf+n` lies inside registered buffer 0 (next + n <= len) and
                    // the file range inside the file; both outlive the SQE, which is reaped
                    // before this function returns (the loop runs until nothing is in flight).
                    unsafe { self.ring.submission().push(&e) }
                        .map_err(|_| anyhow!("io_uring submission queue full"))?;
                    next += n;
                    in_flight += 1;
                }
                self.ring
                    .submit_and_wait(1)
                    .context("io_uring_enter (submit and wait)")?;
                let done: Vec<(u64, i32)> = self
                    .ring
                    .completion()
                    .map(|c| (c.user_data(), c.result()))
                    .collect();
                for (want, got) in done {
                    in_flight -= 1;
                    if got < 0 || got as u64 != want {
                        let op = match dir {
                            RawDir::Read => "READ_FIXED",
                            RawDir::Write => "WRITE_FIXED",
                        };
                        // Reap what is still in flight before failing: no SQE outlives us.
                        while in_flight > 0 {
                            let _ = self.ring.submit_and_wait(in_flight);
                            in_flight -= self.ring.completion().count().min(in_flight);
                        }
                        let why = if got < 0 {
                            std::io::Error::from_raw_os_error(-got).to_string()
                        } else {
                            format!("short: {got} of {want} bytes")
                        };
                        bail!("raw {op} of {want:#x} bytes: {why}");
                    }
                }
            }
            start = end;
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

impl Drop for RawRing {
    fn drop(&mut self) {
        // Unpins now (closing the ring, next, would too).
        let _ = self.ring.submitter().unregister_buffers();
    }
}

/// One pass of `execute` over the region, one descriptor per `descriptor` bytes.
fn engine_pass(
    engine: &mut DmaEngine,
    ram: &GuestRam,
    iommu: &mut Iommu,
    op: u32,
    arg: u64,
    opts: &BenchOptions,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    for iova in (0..opts.region).step_by(opts.descriptor as usize) {
        let d = abi::Descriptor {
            op,
            iova,
            arg,
            len: opts.descriptor.min(opts.region - iova),
            ..Default::default()
        };
        let req = DmaRequest::parse(&d, ram.size())
            .with_context(|| format!("DmaRequest::parse(op {op:#x}, iova {iova:#x})"))?;
        engine
            .execute(ram, iommu, &req, &[])
            .with_context(|| format!("DmaEngine::execute(op {op:#x}, iova {iova:#x})"))?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// One pass of the mapping's pin over the region, in staging-sized pieces (the engine's calls
/// without its fill and checksum).
fn pin_pass(
    iommu: &mut Iommu,
    staging: &mut Staging,
    to_guest: bool,
    region: u64,
) -> anyhow::Result<f64> {
    let (m, base) = iommu
        .lookup(&IovaRange::new(Iova(0), region)?, Perm::RW)
        .context("Iommu::lookup")?;
    let piece = staging.len();
    let t = Instant::now();
    for off in (0..region).step_by(piece as usize) {
        let op = [Transfer {
            pin_offset: base + off,
            staging_offset: 0,
            len: piece.min(region - off),
        }];
        if to_guest {
            m.pin.write_to_guest(staging, &op)
        } else {
            m.pin.read_from_guest(staging, &op)
        }
        .with_context(|| format!("Pin transfer at offset {off:#x}"))?;
    }
    Ok(t.elapsed().as_secs_f64())
}

fn dma(opts: &BenchOptions) -> anyhow::Result<DmaReport> {
    let (region, desc) = (opts.region, opts.descriptor);
    if region == 0 || region > MAX_BUFFER_LEN || !region.is_multiple_of(2 * MIB) {
        bail!("region must be a non-zero multiple of 2 MiB up to 1 GiB, not {region:#x}");
    }
    if desc == 0 || !desc.is_multiple_of(crate::addr::PAGE_SIZE) {
        bail!("descriptor must be a non-zero multiple of 4 KiB, not {desc:#x}");
    }
    let piece = desc.min(STAGING_MAX);
    // Guest RAM: the region at GPA 0, then room for the checksum arrays of from-guest descriptors.
    let out_gpa = region;
    let ram = GuestRam::new(region + 2 * MIB, true, false)
        .with_context(|| format!("GuestRam::new({:#x})", region + 2 * MIB))?;
    ram.populate().context("GuestRam::populate")?;
    let thp_coverage = crate::pfn::thp_coverage(ram.hva(), region).ok();
    let mut iommu = Iommu::new(PinKind::IoUring);
    iommu
        .map(&ram, &Map::new(Iova(0), Gpa(0), region, RW, ram.size())?)
        .with_context(|| format!("Iommu::map of {region:#x}"))?;
    let mut engine = DmaEngine::default();
    let mut staging = Staging::new(piece).context("Staging::new")?;
    let mut raw_file = Staging::new(piece).context("Staging::new (raw memfd)")?;
    raw_file.as_mut_slice().fill(0x5a);
    // SAFETY: guest RAM outlives the ring (declared after `ram`, dropped first); nothing holds a
    // Rust reference into guest RAM across a pass.
    let mut raw = unsafe { RawRing::new(ram.hva(), region) }?;
    let depth = desc.div_ceil(CHUNK_LEN).min(RING_ENTRIES as u64) as usize;
    let raw_fd = std::os::fd::AsRawFd::as_raw_fd(&raw_file.fd());
    let src = vec![0x3cu8; region as usize];
    let mut dst = vec![0xc3u8; region as usize];
    let mut words = vec![0u64; (piece / 8) as usize];

    let mut s: [Vec<f64>; 11] = Default::default();
    for trial in 0..=opts.trials {
        let seed = 0x5eed ^ trial as u64;
        let t = [
            engine_pass(&mut engine, &ram, &mut iommu, abi::OP_TO_GUEST, seed, opts)?,
            engine_pass(
                &mut engine,
                &ram,
                &mut iommu,
                abi::OP_FROM_GUEST,
                out_gpa,
                opts,
            )?,
            pin_pass(&mut iommu, &mut staging, true, region)?,
            pin_pass(&mut iommu, &mut staging, false, region)?,
            raw.pass(RawDir::Read, raw_fd, piece, desc, depth)?,
            raw.pass(RawDir::Write, raw_fd, piece, desc, depth)?,
            raw.pass(RawDir::Read, raw_fd, piece, region, RING_ENTRIES as usize)?,
            raw.pass(RawDir::Write, raw_fd, piece, region, RING_ENTRIES as usize)?,
            {
                let t = Instant::now();
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
                t.elapsed().as_secs_f64()
            },
            {
                let t = Instant::now();
                for off in (0..region).step_by(piece as usize) {
                    abi::fill_pattern(&mut words, seed, off / 8);
                    std::hint::black_box(&mut words);
                }
                t.elapsed().as_secs_f64()
            },
            {
                let t = Instant::now();
                let mut acc = 0u64;
                for _ in (0..region).step_by(piece as usize) {
                    for page in std::hint::black_box(&words).chunks_exact(512) {
                        acc ^= abi::page_checksum(page);
                    }
                }
                std::hint::black_box(acc);
                t.elapsed().as_secs_f64()
            },
        ];
        if trial > 0 {
            for (v, secs) in s.iter_mut().zip(t) {
                v.push(gib_per_s(region, secs));
            }
        }
    }
    drop(raw);
    iommu.clear();
    let st = |i: usize| Stat::of(&s[i]);
    let [e_to, e_from, p_to, p_from, r_rd, r_wr, d_rd, d_wr, mc, fill, sum] =
        std::array::from_fn(st);
    Ok(DmaReport {
        region,
        descriptor: desc,
        chunk: CHUNK_LEN,
        queue_depth: depth as u64,
        staging: piece,
        thp_coverage,
        ratios: DmaRatios {
            engine_to_guest_vs_raw: ratio(e_to, r_rd),
            engine_from_guest_vs_raw: ratio(e_from, r_wr),
            pin_to_guest_vs_raw: ratio(p_to, r_rd),
            pin_from_guest_vs_raw: ratio(p_from, r_wr),
            engine_to_guest_vs_memcpy: ratio(e_to, mc),
            engine_from_guest_vs_memcpy: ratio(e_from, mc),
            raw_vs_raw_deep_read: ratio(r_rd, d_rd),
            raw_vs_raw_deep_write: ratio(r_wr, d_wr),
        },
        engine_to_guest: e_to,
        engine_from_guest: e_from,
        pin_to_guest: p_to,
        pin_from_guest: p_from,
        raw_read_fixed: r_rd,
        raw_write_fixed: r_wr,
        raw_read_fixed_deep: d_rd,
        raw_write_fixed_deep: d_wr,
        memcpy: mc,
        fill_pattern: fill,
        checksum: sum,
    })
}

// ---------------------------------------------------------------------------------------------
// IOMMU map

fn map(opts: &BenchOptions) -> anyhow::Result<MapReport> {
    let size = opts.map_size;
    if size == 0 || size > MAX_BUFFER_LEN || !size.is_multiple_of(2 * MIB) {
        bail!("map size must be a non-zero multiple of 2 MiB up to 1 GiB, not {size:#x}");
    }
    let ram =
        GuestRam::new(size, true, false).with_context(|| format!("GuestRam::new({size:#x})"))?;
    ram.populate().context("GuestRam::populate")?;
    let thp_coverage = crate::pfn::thp_coverage(ram.hva(), size).ok();
    let mut iommu = Iommu::new(PinKind::IoUring);
    let mut s: [Vec<f64>; 4] = Default::default();
    for trial in 0..=opts.trials {
        let t = Instant::now();
        // SAFETY: guest RAM outlives the ring (dropped at the end of this iteration); no
        // transfer is made through it.
        let raw = unsafe { RawRing::new(ram.hva(), size) }?;
        let raw_ms = ms(t);
        drop(raw);

        let t = Instant::now();
        iommu
            .map(&ram, &Map::new(Iova(0), Gpa(0), size, RW, ram.size())?)
            .with_context(|| format!("Iommu::map of {size:#x}"))?;
        let map_ms = ms(t);
        if let Some(e) = iommu.mappings().find_map(|m| m.pfn_error.clone()) {
            bail!("Iommu::map recorded no PFNs: {e}");
        }
        let t = Instant::now();
        iommu.clear();
        let unmap_ms = ms(t);

        let t = Instant::now();
        let pages = crate::pfn::pfns(ram.hva(), size).context("pfn::pfns")?;
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

// ---------------------------------------------------------------------------------------------
// Launch

/// One run of the binary: wall-clock spawn -> exit and its JSON report. The child is always
/// reaped (`output` waits); a failure carries its stderr.
fn spawn_once(pinlab: &Path, args: &[&str]) -> anyhow::Result<(f64, serde_json::Value)> {
    let t = Instant::now();
    let out = Command::new(pinlab)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {} {}", pinlab.display(), args.join(" ")))?;
    let wall = ms(t);
    if !out.status.success() {
        bail!(
            "{} {} exited with {}: {}",
            pinlab.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing the JSON of `pinlab {}`", args.join(" ")))?;
    Ok((wall, v))
}

fn timing(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get("timings_ms")?.get(key)?.as_f64()
}

fn launch(opts: &BenchOptions) -> anyhow::Result<LaunchReport> {
    let run_args = ["run", "--json"];
    let boot_args = ["run", "--mode", "boot", "--json"];
    let (first, _) = spawn_once(&opts.pinlab, &run_args)?;
    let mut run: [Vec<f64>; 4] = Default::default();
    let mut boot: [Vec<f64>; 3] = Default::default();
    for _ in 0..opts.launches {
        let (wall, v) = spawn_once(&opts.pinlab, &run_args)?;
        run[0].push(wall);
        for (dst, key) in run[1..].iter_mut().zip([
            "launch_to_guest_start",
            "launch_to_first_dma",
            "launch_to_guest_done",
        ]) {
            dst.extend(timing(&v, key));
        }
        let (wall, v) = spawn_once(&opts.pinlab, &boot_args)?;
        boot[0].push(wall);
        boot[1].extend(timing(&v, "launch_to_guest_start"));
        boot[2].extend(timing(&v, "launch_to_guest_done"));
    }
    Ok(LaunchReport {
        pinlab: opts.pinlab.clone(),
        launches: opts.launches,
        first_spawn_ms: Some(first),
        run_spawn_to_exit: Stat::of(&run[0]),
        run_launch_to_guest_start: Stat::of(&run[1]),
        run_launch_to_first_dma: Stat::of(&run[2]),
        run_launch_to_guest_done: Stat::of(&run[3]),
        boot_spawn_to_exit: Stat::of(&boot[0]),
        boot_launch_to_guest_start: Stat::of(&boot[1]),
        boot_launch_to_guest_done: Stat::of(&boot[2]),
        steps: startup_steps(opts.trials)?,
    })
}

/// The default scenario's steps before its first guest instruction, as `runner` takes them.
fn startup_steps(trials: usize) -> anyhow::Result<StartupSteps> {
    let s = crate::config::load(None).context("loading the default scenario")?;
    let layout = s.layout().context("laying out the default scenario")?;
    let boot = crate::runner::boot_info(&s, &layout);
    let mut v: [Vec<f64>; 4] = Default::default();
    for trial in 0..=trials {
        let t = Instant::now();
        let ram = GuestRam::new(s.vm.memory.0, s.vm.thp, s.vm.dontfork)
            .with_context(|| format!("GuestRam::new({:#x})", s.vm.memory.0))?;
        let new_ms = ms(t);
        let t = Instant::now();
        ram.populate().context("GuestRam::populate")?;
        let populate_ms = ms(t);
        let (hva, size) = (ram.hva(), ram.size());
        let t = Instant::now();
        let vm = crate::vm::Vm::create(std::sync::Arc::new(std::sync::RwLock::new(ram)), &boot)
            .context("Vm::create")?;
        let create_ms = ms(t);
        let t = Instant::now();
        let cov = crate::pfn::thp_coverage(hva, size).context("pfn::thp_coverage")?;
        std::hint::black_box(cov);
        let cov_ms = ms(t);
        // The vCPU, then the VM, then guest RAM (`Vm`'s field order).
        drop(vm);
        if trial > 0 {
            for (dst, x) in v.iter_mut().zip([new_ms, populate_ms, create_ms, cov_ms]) {
                dst.push(x);
            }
        }
    }
    Ok(StartupSteps {
        memory: s.vm.memory.0,
        guest_ram_new: Stat::of(&v[0]),
        populate: Stat::of(&v[1]),
        vm_create: Stat::of(&v[2]),
        thp_coverage: Stat::of(&v[3]),
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn stat_line(name: &str, st: Option<Stat>, unit: &str) -> String {
    match st {
        Some(s) => format!(
            "  {name:<34} {:>9.2} {unit}  (min {:.2}, max {:.2}, n {})\n",
            s.median, s.min, s.max, s.n
        ),
        None => format!("  {name:<34} {:>9} {unit}\n", "-"),
    }
}

fn ratio_line(name: &str, r: Option<f64>, goal: &str) -> String {
    match r {
        Some(r) => format!("  {name:<34} {r:>9.2}   {goal}\n"),
        None => format!("  {name:<34} {:>9}   {goal}\n", "-"),
    }
}

impl BenchReport {
    /// The report for humans: medians first, then min/max and the ratios against their goals.
    pub fn render(&self) -> String {
        let mut o = String::new();
        if let Some(d) = &self.dma {
            o += &format!(
                "DMA through io-uring pins: {} MiB region, {} MiB descriptors, {} MiB SQEs x {} \
                 in flight, {} MiB staging, THP {}\n",
                d.region / MIB,
                d.descriptor / MIB,
                d.chunk / MIB,
                d.queue_depth,
                d.staging / MIB,
                d.thp_coverage
                    .map_or("?".into(), |c| format!("{:.0}%", c * 100.0))
            );
            for (name, st) in [
                ("engine to-guest (fill + READ)", d.engine_to_guest),
                ("engine from-guest (WRITE + sums)", d.engine_from_guest),
                ("pin to-guest (READ_FIXED)", d.pin_to_guest),
                ("pin from-guest (WRITE_FIXED)", d.pin_from_guest),
                ("raw READ_FIXED", d.raw_read_fixed),
                ("raw WRITE_FIXED", d.raw_write_fixed),
                ("raw READ_FIXED, ring full", d.raw_read_fixed_deep),
                ("raw WRITE_FIXED, ring full", d.raw_write_fixed_deep),
                ("memcpy", d.memcpy),
                ("pattern fill alone", d.fill_pattern),
                ("page checksums alone", d.checksum),
            ] {
                o += &stat_line(name, st, "GiB/s");
            }
            let r = &d.ratios;
            o += &ratio_line(
                "engine/raw to-guest",
                r.engine_to_guest_vs_raw,
                "goal >= 0.9",
            );
            o += &ratio_line(
                "engine/raw from-guest",
                r.engine_from_guest_vs_raw,
                "goal >= 0.9",
            );
            o += &ratio_line("pin/raw to-guest", r.pin_to_guest_vs_raw, "transfer alone");
            o += &ratio_line(
                "pin/raw from-guest",
                r.pin_from_guest_vs_raw,
                "transfer alone",
            );
            o += &ratio_line("engine/memcpy to-guest", r.engine_to_guest_vs_memcpy, "");
            o += &ratio_line(
                "engine/memcpy from-guest",
                r.engine_from_guest_vs_memcpy,
                "",
            );
            o += &ratio_line(
                "raw/raw-ring-full read",
                r.raw_vs_raw_deep_read,
                "depth cost",
            );
            o += &ratio_line(
                "raw/raw-ring-full write",
                r.raw_vs_raw_deep_write,
                "depth cost",
            );
        }
        if let Some(m) = &self.map {
            o += &format!(
                "IOMMU map of {} MiB THP guest RAM (THP {})\n",
                m.size / MIB,
                m.thp_coverage
                    .map_or("?".into(), |c| format!("{:.0}%", c * 100.0))
            );
            o += &stat_line("Iommu::map (pin + pagemap)", m.iommu_map, "ms");
            o += &stat_line("pfn::pfns (pagemap) alone", m.pagemap, "ms");
            o += &stat_line("raw ring + register_buffers", m.raw_register, "ms");
            o += &stat_line("unmap (unpin)", m.unmap, "ms");
            o += &ratio_line("map/raw", m.map_vs_raw, "goal <= 1.5");
            o += &ratio_line("pagemap/raw", m.pagemap_vs_raw, "");
        }
        if let Some(l) = &self.launch {
            o += &format!(
                "Launch: {} x {} (first spawn, not counted: {})\n",
                l.launches,
                l.pinlab.display(),
                l.first_spawn_ms
                    .map_or("-".into(), |t| format!("{t:.1} ms"))
            );
            o += &stat_line("run: spawn -> exit", l.run_spawn_to_exit, "ms");
            o += &stat_line(
                "run: launch -> guest start",
                l.run_launch_to_guest_start,
                "ms",
            );
            o += &stat_line("run: launch -> first DMA", l.run_launch_to_first_dma, "ms");
            o += &stat_line(
                "run: launch -> guest done",
                l.run_launch_to_guest_done,
                "ms",
            );
            o += &stat_line("boot: spawn -> exit", l.boot_spawn_to_exit, "ms");
            o += &stat_line(
                "boot: launch -> guest start",
                l.boot_launch_to_guest_start,
                "ms",
            );
            o += &stat_line(
                "boot: launch -> guest done",
                l.boot_launch_to_guest_done,
                "ms",
            );
            let st = &l.steps;
            o += &format!("  startup steps, in process ({} MiB):\n", st.memory / MIB);
            o += &stat_line("GuestRam::new", st.guest_ram_new, "ms");
            o += &stat_line("populate (MADV_POPULATE_WRITE)", st.populate, "ms");
            o += &stat_line("Vm::create", st.vm_create, "ms");
            o += &stat_line("pfn::thp_coverage", st.thp_coverage, "ms");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: samples, expected (median, min, max). A bug: the median of an even count taken
    /// as one middle element, or unsorted input summarised as given.
    #[test]
    fn stat_of_table() {
        type Row = (&'static [f64], (f64, f64, f64));
        let table: [Row; 4] = [
            (&[3.0], (3.0, 3.0, 3.0)),
            (&[5.0, 1.0, 3.0], (3.0, 1.0, 5.0)),
            (&[4.0, 1.0, 2.0, 3.0], (2.5, 1.0, 4.0)),
            (&[2.0, 2.0, 9.0, 2.0, 1.0], (2.0, 1.0, 9.0)),
        ];
        for (samples, (median, min, max)) in table {
            let s = Stat::of(samples).unwrap();
            assert_eq!(
                (s.median, s.min, s.max, s.n),
                (median, min, max, samples.len())
            );
        }
        assert_eq!(Stat::of(&[]), None);
    }

    #[test]
    fn ratio_of_medians() {
        let s = |m| Stat::of(&[m]);
        assert_eq!(ratio(s(3.0), s(2.0)), Some(1.5));
        assert_eq!(ratio(s(3.0), s(0.0)), None);
        assert_eq!(ratio(None, s(1.0)), None);
    }

    #[test]
    fn gib_per_s_of_one_gib_in_half_a_second() {
        assert_eq!(gib_per_s(1 << 30, 0.5), 2.0);
    }

    #[test]
    fn render_without_sections_is_empty() {
        let r = BenchReport {
            trials: 1,
            dma: None,
            map: None,
            launch: None,
        };
        assert!(r.render().is_empty());
    }
}
