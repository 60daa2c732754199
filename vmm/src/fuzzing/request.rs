//! Target `request`: `IommuRequest::parse` and `DmaRequest::parse` on an arbitrary descriptor and
//! guest RAM size, against a reference decoder written from the ABI's rules (`abi::OP_*`, the
//! order of checks in `devices/request.rs`'s header). Both must agree on accept or reject, on the
//! decoded fields, and on the status the guest is answered with.

use arbitrary::Unstructured;
use pinlab_abi as abi;

use super::{run, u32_near, u64_near, U64_EDGES};
use crate::devices::request::{DmaRequest, IommuRequest};

const P: u64 = abi::PAGE_SIZE;

/// What a correct decoder makes of a descriptor: the decoded fields, or the ABI status.
#[derive(Debug, PartialEq, Eq)]
enum Want {
    Map {
        iova: u64,
        gpa: u64,
        len: u64,
        perm: u32,
    },
    Unmap {
        iova: u64,
        len: u64,
    },
    Nop,
    ToGuest {
        iova: u64,
        len: u64,
        seed: u64,
    },
    FromGuest {
        iova: u64,
        len: u64,
        out: u64,
    },
    Status(u32),
}

/// Length, overflow and alignment of an IOVA range, in the ABI's order.
fn iova_range(iova: u64, len: u64) -> Result<(), u32> {
    if len == 0 || iova.checked_add(len).is_none() {
        return Err(abi::STATUS_BAD_LENGTH);
    }
    if !iova.is_multiple_of(P) || !len.is_multiple_of(P) {
        return Err(abi::STATUS_MISALIGNED);
    }
    Ok(())
}

fn want_iommu(d: &abi::Descriptor, ram: u64) -> Want {
    let r = match d.op {
        abi::OP_MAP => (|| {
            let (iova, gpa, len) = (d.iova, d.arg, d.len);
            if len == 0 || gpa.checked_add(len).is_none() || iova.checked_add(len).is_none() {
                return Err(abi::STATUS_BAD_LENGTH);
            }
            if !iova.is_multiple_of(P) || !gpa.is_multiple_of(P) || !len.is_multiple_of(P) {
                return Err(abi::STATUS_MISALIGNED);
            }
            if gpa + len > ram || iova + len > abi::IOVA_LIMIT {
                return Err(abi::STATUS_OUT_OF_RANGE);
            }
            let rw = abi::PERM_READ | abi::PERM_WRITE;
            if d.flags == 0 || d.flags & !rw != 0 {
                return Err(abi::STATUS_PERMISSION);
            }
            Ok(Want::Map {
                iova,
                gpa,
                len,
                perm: d.flags,
            })
        })(),
        abi::OP_UNMAP => iova_range(d.iova, d.len).map(|()| Want::Unmap {
            iova: d.iova,
            len: d.len,
        }),
        _ => Err(abi::STATUS_BAD_OP),
    };
    r.unwrap_or_else(Want::Status)
}

fn want_dma(d: &abi::Descriptor, ram: u64) -> Want {
    let r = match d.op {
        abi::OP_NOP => Ok(Want::Nop),
        abi::OP_TO_GUEST => iova_range(d.iova, d.len).map(|()| Want::ToGuest {
            iova: d.iova,
            len: d.len,
            seed: d.arg,
        }),
        abi::OP_FROM_GUEST => iova_range(d.iova, d.len).and_then(|()| {
            // One u64 checksum per page; the array must fit in RAM before its alignment counts.
            let bytes = (d.len / P) as u128 * 8;
            if d.arg as u128 + bytes > ram as u128 {
                return Err(abi::STATUS_OUT_OF_RANGE);
            }
            if !d.arg.is_multiple_of(8) {
                return Err(abi::STATUS_MISALIGNED);
            }
            Ok(Want::FromGuest {
                iova: d.iova,
                len: d.len,
                out: d.arg,
            })
        }),
        _ => Err(abi::STATUS_BAD_OP),
    };
    r.unwrap_or_else(Want::Status)
}

fn got_iommu(d: &abi::Descriptor, ram: u64) -> Want {
    match IommuRequest::parse(d, ram) {
        Ok(IommuRequest::Map(m)) => Want::Map {
            iova: m.iova().raw(),
            gpa: m.gpa().raw(),
            len: m.len(),
            perm: m.perm().bits(),
        },
        Ok(IommuRequest::Unmap(u)) => Want::Unmap {
            iova: u.range.start().raw(),
            len: u.range.len(),
        },
        Err(e) => {
            let _ = e.to_string();
            Want::Status(e.status())
        }
    }
}

fn got_dma(d: &abi::Descriptor, ram: u64) -> Want {
    match DmaRequest::parse(d, ram) {
        Ok(DmaRequest::Nop) => Want::Nop,
        Ok(DmaRequest::ToGuest(t)) => Want::ToGuest {
            iova: t.range.start().raw(),
            len: t.range.len(),
            seed: t.seed,
        },
        Ok(DmaRequest::FromGuest(f)) => {
            let out = f.out_range();
            assert_eq!(
                out.end.raw() - out.start.raw(),
                f.range().pages() * 8,
                "{d:?}: the output array is one u64 per page"
            );
            assert!(out.end.raw() <= ram, "{d:?}: output array past RAM");
            Want::FromGuest {
                iova: f.range().start().raw(),
                len: f.range().len(),
                out: f.out().raw(),
            }
        }
        Err(e) => {
            let _ = e.to_string();
            Want::Status(e.status())
        }
    }
}

pub(super) fn descriptor(u: &mut Unstructured<'_>, ram: u64) -> arbitrary::Result<abi::Descriptor> {
    let ops = [
        abi::OP_MAP,
        abi::OP_UNMAP,
        abi::OP_NOP,
        abi::OP_TO_GUEST,
        abi::OP_FROM_GUEST,
    ];
    let addr_edges = [
        ram,
        ram.wrapping_sub(P),
        ram.wrapping_sub(8),
        abi::IOVA_LIMIT - P,
        U64_EDGES[2],
        U64_EDGES[3],
        0x20_0000,
    ];
    let edges: Vec<u64> = U64_EDGES.iter().chain(&addr_edges).copied().collect();
    Ok(abi::Descriptor {
        op: u32_near(u, &ops)?,
        flags: u32_near(u, &[1, 2, 3, 4, 7, u32::MAX])?,
        iova: u64_near(u, &edges)?,
        arg: u64_near(u, &edges)?,
        len: u64_near(u, &edges)?,
        tag: u.arbitrary()?,
        _reserved: u.arbitrary()?,
    })
}

/// Parses one arbitrary descriptor on both queues, for an arbitrary RAM size.
pub fn request(data: &[u8]) {
    run(data, |u| {
        let ram = u64_near(u, &[8 << 20, 64 << 20, 4 << 30, u64::MAX, 0, P])?;
        let d = descriptor(u, ram)?;
        assert_eq!(
            got_iommu(&d, ram),
            want_iommu(&d, ram),
            "IOMMU {d:?}, RAM {ram:#x}"
        );
        assert_eq!(
            got_dma(&d, ram),
            want_dma(&d, ram),
            "DMA {d:?}, RAM {ram:#x}"
        );
        let dir = DmaRequest::direction_of(d.op);
        assert_eq!(
            dir.is_some(),
            matches!(d.op, abi::OP_TO_GUEST | abi::OP_FROM_GUEST),
            "{d:?}"
        );
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference agrees with the decoder on the hostile classes' own descriptors (if the
    /// reference were wrong there, the fuzzer would report the decoder).
    #[test]
    fn reference_matches_the_hostile_classes() {
        let ram = 64 << 20;
        let map = |iova, gpa, len| abi::Descriptor {
            op: abi::OP_MAP,
            flags: 3,
            iova,
            arg: gpa,
            len,
            ..Default::default()
        };
        let rows = [
            (map(0, ram, P), abi::STATUS_OUT_OF_RANGE),
            (map(abi::IOVA_LIMIT, 0, P), abi::STATUS_OUT_OF_RANGE),
            (map(0, 0x20_0000, u64::MAX - 4095), abi::STATUS_BAD_LENGTH),
            (map(0, 0, 0), abi::STATUS_BAD_LENGTH),
            (map(0, 1, P), abi::STATUS_MISALIGNED),
        ];
        for (d, status) in rows {
            assert_eq!(want_iommu(&d, ram), Want::Status(status), "{d:?}");
            assert_eq!(got_iommu(&d, ram), Want::Status(status), "{d:?}");
        }
        let out = abi::Descriptor {
            op: abi::OP_FROM_GUEST,
            iova: 0,
            arg: ram - 4,
            len: P,
            ..Default::default()
        };
        assert_eq!(want_dma(&out, ram), Want::Status(abi::STATUS_OUT_OF_RANGE));
    }
}
