//! VFIO_IOMMU_GET_INFO on a type1 container: the IOMMU's page sizes, its valid IOVA ranges and
//! how many more DMA mappings it takes — what the map plan must respect.
//!
//! vfio-ioctls 0.10 does not wrap this ioctl, so this module does: one call to learn the size
//! the capability chain needs, a second with a buffer that large, then a parser that checks
//! every offset of the chain against the buffer before reading (crosvm's `vfio.rs` walks the
//! same chain for `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`). The parser is a pure function over
//! bytes and is tested without a container. It must not map anything.

use std::io;
use std::os::fd::AsRawFd;

use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, VFIO_TYPE,
};

use super::plan::Limits;

vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);

/// Errors of the info query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ioctl failed.
    #[error("VFIO_IOMMU_GET_INFO failed: {0}")]
    GetInfo(#[source] io::Error),
    /// The kernel kept asking for a larger buffer.
    #[error("VFIO_IOMMU_GET_INFO asked for {argsz} bytes after a buffer of {had}")]
    Growing { argsz: u32, had: usize },
    /// The answer is malformed: a field or capability lies outside what the kernel returned.
    #[error("VFIO_IOMMU_GET_INFO answer malformed: {0}")]
    Malformed(&'static str),
    /// The kernel did not report page sizes (VFIO_IOMMU_INFO_PGSIZES clear).
    #[error("VFIO_IOMMU_GET_INFO reported no page sizes (flags {flags:#x})")]
    NoPageSizes { flags: u32 },
}

/// Size of `struct vfio_iommu_type1_info` (argsz, flags, iova_pgsizes, cap_offset, pad).
const INFO_LEN: usize = 24;
/// Size of `struct vfio_info_cap_header` (id, version, next).
const CAP_HEADER_LEN: usize = 8;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Parses a VFIO_IOMMU_GET_INFO answer (`bytes` is the whole buffer the kernel filled). The
/// result keeps [`Limits::default`]'s longest map.
pub fn parse(bytes: &[u8]) -> Result<Limits, Error> {
    let bad = Error::Malformed;
    let flags = u32_at(bytes, 4).ok_or(bad("shorter than the info header"))?;
    if flags & VFIO_IOMMU_INFO_PGSIZES == 0 {
        return Err(Error::NoPageSizes { flags });
    }
    let mut limits = Limits {
        pgsizes: u64_at(bytes, 8).ok_or(bad("no iova_pgsizes"))?,
        ..Limits::default()
    };
    let mut off = u32_at(bytes, 16).ok_or(bad("no cap_offset"))? as usize;
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        off = 0;
    }
    // Each capability must start after the previous one: a chain that loops is malformed.
    let mut floor = INFO_LEN;
    while off != 0 {
        if off < floor || off + CAP_HEADER_LEN > bytes.len() {
            return Err(bad("capability offset outside the answer"));
        }
        let id = u16_at(bytes, off).ok_or(bad("capability header"))?;
        let next = u32_at(bytes, off + 4).ok_or(bad("capability header"))? as usize;
        match u32::from(id) {
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                let n = u32_at(bytes, off + 8).ok_or(bad("nr_iovas"))? as usize;
                let first = off + 16;
                if n.checked_mul(16)
                    .and_then(|l| l.checked_add(first))
                    .is_none_or(|end| end > bytes.len())
                {
                    return Err(bad("IOVA ranges past the answer"));
                }
                for i in 0..n {
                    let at = first + i * 16;
                    let (lo, hi) = (u64_at(bytes, at), u64_at(bytes, at + 8));
                    match (lo, hi) {
                        (Some(lo), Some(hi)) if lo <= hi => limits.iova_ranges.push((lo, hi)),
                        _ => return Err(bad("an IOVA range ends before it starts")),
                    }
                }
            }
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                limits.dma_avail = Some(u32_at(bytes, off + 8).ok_or(bad("dma avail"))?);
            }
            _ => {}
        }
        floor = off + CAP_HEADER_LEN;
        off = next;
    }
    Ok(limits)
}

/// VFIO_IOMMU_GET_INFO on `container` (after VFIO_SET_IOMMU), parsed.
pub fn query(container: &impl AsRawFd) -> Result<Limits, Error> {
    let mut buf = vec![0u64; INFO_LEN / 8];
    for _ in 0..3 {
        let had = buf.len() * 8;
        // argsz: how much the kernel may fill.
        buf[0] = had as u64;
        // SAFETY: the ioctl writes at most `argsz` bytes (the buffer's length, set above) into
        // our buffer, which outlives the call; the container fd is valid for the call.
        let rc = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                container,
                VFIO_IOMMU_GET_INFO(),
                buf.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(Error::GetInfo(io::Error::last_os_error()));
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let argsz = u32_at(&bytes, 0).ok_or(Error::Malformed("no argsz"))?;
        if argsz as usize > had {
            buf = vec![0u64; (argsz as usize).div_ceil(8)];
            continue;
        }
        return parse(&bytes[..(argsz as usize).max(INFO_LEN).min(had)]);
    }
    Err(Error::Growing {
        argsz: u32::try_from(buf.len() * 8).unwrap_or(u32::MAX),
        had: buf.len() * 8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an answer: header, then the given capabilities chained in order.
    fn answer(flags: u32, pgsizes: u64, caps: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; INFO_LEN];
        b[4..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..16].copy_from_slice(&pgsizes.to_ne_bytes());
        let mut off = INFO_LEN;
        if !caps.is_empty() {
            b[16..20].copy_from_slice(&(off as u32).to_ne_bytes());
        }
        for (i, (id, body)) in caps.iter().enumerate() {
            let next = if i + 1 < caps.len() {
                off + CAP_HEADER_LEN + body.len()
            } else {
                0
            };
            b.extend_from_slice(&id.to_ne_bytes());
            b.extend_from_slice(&1u16.to_ne_bytes());
            b.extend_from_slice(&(next as u32).to_ne_bytes());
            b.extend_from_slice(body);
            off = next;
        }
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    fn iova_cap(ranges: &[(u64, u64)]) -> (u16, Vec<u8>) {
        let mut body = Vec::new();
        body.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        for (lo, hi) in ranges {
            body.extend_from_slice(&lo.to_ne_bytes());
            body.extend_from_slice(&hi.to_ne_bytes());
        }
        (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16, body)
    }

    fn avail_cap(n: u32) -> (u16, Vec<u8>) {
        (
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL as u16,
            n.to_ne_bytes().to_vec(),
        )
    }

    const BOTH: u32 = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS;

    /// An x86 VT-d answer: page sizes, the MSI hole, the mapping budget, an unknown cap between.
    /// A bug would drop the hole (then a map over it fails in the kernel) or misread the budget.
    #[test]
    fn parses_ranges_and_budget_through_the_chain() {
        let b = answer(
            BOTH,
            0x4020_1000,
            &[
                iova_cap(&[(0, 0xfedf_ffff), (0xfef0_0000, (1 << 48) - 1)]),
                (2, vec![0; 16]),
                avail_cap(65535),
            ],
        );
        let l = parse(&b).unwrap();
        assert_eq!(l.pgsizes, 0x4020_1000);
        assert_eq!(
            l.iova_ranges,
            vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 48) - 1)]
        );
        assert_eq!(l.dma_avail, Some(65535));
        assert_eq!(l.align().unwrap(), 0x1000);
    }

    /// Each row: an answer the parser must refuse (or read as no caps), and why.
    #[test]
    fn refuses_malformed_answers() {
        let mut looping = answer(BOTH, 0x1000, &[avail_cap(1)]);
        // The only capability points back at itself.
        looping[INFO_LEN + 4..INFO_LEN + 8].copy_from_slice(&(INFO_LEN as u32).to_ne_bytes());
        let mut past = answer(BOTH, 0x1000, &[iova_cap(&[(0, 0xffff)])]);
        // nr_iovas says 2; only one is there.
        past[INFO_LEN + 8..INFO_LEN + 12].copy_from_slice(&2u32.to_ne_bytes());
        let mut outside = answer(BOTH, 0x1000, &[]);
        outside[16..20].copy_from_slice(&4096u32.to_ne_bytes());
        let rows: Vec<(&str, Vec<u8>)> = vec![
            ("capability chain loops", looping),
            ("IOVA ranges past the end", past),
            ("cap_offset past the end", outside),
            (
                "inverted range",
                answer(BOTH, 0x1000, &[iova_cap(&[(0x2000, 0x1000)])]),
            ),
            ("no page sizes", answer(VFIO_IOMMU_INFO_CAPS, 0x1000, &[])),
            ("truncated header", vec![0; 6]),
        ];
        for (what, b) in rows {
            assert!(parse(&b).is_err(), "{what}: {:?}", parse(&b));
        }
        // CAPS clear: a stale cap_offset is ignored.
        let mut no_caps = answer(VFIO_IOMMU_INFO_PGSIZES, 0x1000, &[]);
        no_caps[16..20].copy_from_slice(&4096u32.to_ne_bytes());
        let l = parse(&no_caps).unwrap();
        assert!(l.iova_ranges.is_empty() && l.dma_avail.is_none());
    }
}
