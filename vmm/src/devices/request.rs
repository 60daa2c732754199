//! Typed device requests: a queue descriptor decoded into what its opcode means.
//!
//! `abi::Descriptor` has one shape for every opcode, and its `arg` is a GPA (MAP), a pattern seed
//! (TO_GUEST) or the GPA of an output array (FROM_GUEST). [`IommuRequest::parse`] and
//! [`DmaRequest::parse`] turn it into a request whose fields have their own types and whose
//! guest-supplied arithmetic has all been checked: zero length, `start + len` overflow,
//! alignment, ranges against guest RAM and the IOVA space, permission bits. A malformed
//! descriptor is a [`RequestError`]; the ABI status the guest is answered with comes from
//! [`RequestError::status`], called only where the completion is written.
//!
//! The checks run in a fixed order because the ABI's answers depend on it (a hostile guest's
//! output array at `ram_size - 4` is both outside RAM and misaligned, and `abi::HOSTILE_CLASSES`
//! says the answer is out-of-range): length, overflow, alignment, range, permission. That is also
//! why parsing takes the size of guest RAM.
//!
//! What needs device state (overlap with live mappings, the table's size, whether an IOVA is
//! mapped, aliasing with the queues) is checked by the IOMMU and the DMA engine. This module reads
//! no guest memory and owns no state.

use std::fmt;
use std::ops::Range;

use pinlab_abi as abi;

use crate::addr::{Gpa, Iova, PAGE_SIZE};
use crate::timeline::DmaDirection;

/// Which guest-supplied field a [`RequestError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Iova,
    Gpa,
    Len,
    /// The GPA of a device read's checksum array.
    Output,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Iova => "iova",
            Field::Gpa => "gpa",
            Field::Len => "length",
            Field::Output => "output array",
        })
    }
}

/// Why a descriptor is not a valid request. Carries the offending values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("opcode {0:#x} is not a request of this queue")]
    BadOp(u32),
    #[error("zero length")]
    ZeroLength,
    #[error("{field} {start:#x} + length {len:#x} overflows")]
    Overflow { field: Field, start: u64, len: u64 },
    #[error("{field} {value:#x} is not a multiple of {align:#x}")]
    Misaligned {
        field: Field,
        value: u64,
        align: u64,
    },
    #[error("{field} range ends at {end:#x}, past {limit:#x}")]
    OutOfRange { field: Field, end: u64, limit: u64 },
    #[error("output array at {out} for {pages} pages runs past the address space")]
    OutputWraps { out: Gpa, pages: u64 },
    #[error("permission bits {0:#x} are not a non-empty subset of read|write")]
    BadPermission(u32),
}

impl RequestError {
    /// The ABI status the guest is answered with.
    pub fn status(&self) -> u32 {
        match self {
            RequestError::BadOp(_) => abi::STATUS_BAD_OP,
            RequestError::ZeroLength | RequestError::Overflow { .. } => abi::STATUS_BAD_LENGTH,
            RequestError::Misaligned { .. } => abi::STATUS_MISALIGNED,
            RequestError::OutOfRange { .. } | RequestError::OutputWraps { .. } => {
                abi::STATUS_OUT_OF_RANGE
            }
            RequestError::BadPermission(_) => abi::STATUS_PERMISSION,
        }
    }
}

type Result<T> = std::result::Result<T, RequestError>;

/// What a mapping allows the device: a non-empty subset of read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm(u32);

impl Perm {
    pub const READ: Perm = Perm(abi::PERM_READ);
    pub const WRITE: Perm = Perm(abi::PERM_WRITE);
    pub const RW: Perm = Perm(abi::PERM_READ | abi::PERM_WRITE);

    /// The permission `bits` encode (`abi::PERM_*`), or `None` if empty or unknown bits are set.
    pub fn from_bits(bits: u32) -> Option<Perm> {
        (bits != 0 && bits & !Perm::RW.0 == 0).then_some(Perm(bits))
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every permission in `need` is in `self`.
    pub fn allows(self, need: Perm) -> bool {
        self.0 & need.0 == need.0
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match *self {
            Perm::READ => "read",
            Perm::WRITE => "write",
            _ => "read|write",
        })
    }
}

/// A non-empty, page-aligned IOVA range whose end does not overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRange {
    start: Iova,
    len: u64,
}

impl IovaRange {
    /// Checks, in the ABI's order: zero length, overflow, alignment of start and length.
    pub fn new(start: Iova, len: u64) -> Result<Self> {
        if len == 0 {
            return Err(RequestError::ZeroLength);
        }
        if start.checked_add(len).is_none() {
            return Err(RequestError::Overflow {
                field: Field::Iova,
                start: start.raw(),
                len,
            });
        }
        check_aligned(Field::Iova, start.raw(), PAGE_SIZE)?;
        check_aligned(Field::Len, len, PAGE_SIZE)?;
        Ok(IovaRange { start, len })
    }

    pub fn start(&self) -> Iova {
        self.start
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true (the length is checked); here because clippy asks for it beside `len`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first IOVA past the range (cannot overflow: checked at construction).
    pub fn end(&self) -> Iova {
        Iova(self.start.raw() + self.len)
    }

    /// How many 4 KiB pages it spans.
    pub fn pages(&self) -> u64 {
        self.len / PAGE_SIZE
    }
}

impl fmt::Display for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} + {:#x}", self.start, self.len)
    }
}

fn check_aligned(field: Field, value: u64, align: u64) -> Result<()> {
    if value.is_multiple_of(align) {
        Ok(())
    } else {
        Err(RequestError::Misaligned {
            field,
            value,
            align,
        })
    }
}

/// MAP: `[iova, iova+len)` onto guest RAM at `gpa`, with `perm`. The GPA range lies in guest RAM,
/// the IOVA range below `abi::IOVA_LIMIT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Map {
    range: IovaRange,
    gpa: Gpa,
    perm: Perm,
}

impl Map {
    /// Checks a map of `len` bytes for guest RAM of `ram_size` bytes, in the order the ABI
    /// answers: zero length; GPA, then IOVA overflow; alignment; range (RAM, then IOVA space);
    /// permission bits.
    pub fn new(iova: Iova, gpa: Gpa, len: u64, perm_bits: u32, ram_size: u64) -> Result<Self> {
        if len == 0 {
            return Err(RequestError::ZeroLength);
        }
        let overflow = |field, start| RequestError::Overflow { field, start, len };
        let gpa_end = gpa
            .checked_add(len)
            .ok_or(overflow(Field::Gpa, gpa.raw()))?;
        let iova_end = iova
            .checked_add(len)
            .ok_or(overflow(Field::Iova, iova.raw()))?;
        check_aligned(Field::Iova, iova.raw(), PAGE_SIZE)?;
        check_aligned(Field::Gpa, gpa.raw(), PAGE_SIZE)?;
        check_aligned(Field::Len, len, PAGE_SIZE)?;
        if gpa_end.raw() > ram_size {
            return Err(RequestError::OutOfRange {
                field: Field::Gpa,
                end: gpa_end.raw(),
                limit: ram_size,
            });
        }
        if iova_end.raw() > abi::IOVA_LIMIT {
            return Err(RequestError::OutOfRange {
                field: Field::Iova,
                end: iova_end.raw(),
                limit: abi::IOVA_LIMIT,
            });
        }
        let perm = Perm::from_bits(perm_bits).ok_or(RequestError::BadPermission(perm_bits))?;
        Ok(Map {
            range: IovaRange { start: iova, len },
            gpa,
            perm,
        })
    }

    pub fn range(&self) -> IovaRange {
        self.range
    }

    pub fn iova(&self) -> Iova {
        self.range.start
    }

    pub fn gpa(&self) -> Gpa {
        self.gpa
    }

    pub fn len(&self) -> u64 {
        self.range.len
    }

    /// Never true; see [`IovaRange::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    pub fn perm(&self) -> Perm {
        self.perm
    }
}

/// UNMAP: exactly a range mapped before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmap {
    pub range: IovaRange,
}

/// One IOMMU queue descriptor, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuRequest {
    Map(Map),
    Unmap(Unmap),
}

impl IommuRequest {
    /// Decodes `d` for guest RAM of `ram_size` bytes. `d.arg` is the GPA (MAP), `d.flags` the
    /// permission bits (MAP).
    pub fn parse(d: &abi::Descriptor, ram_size: u64) -> Result<Self> {
        match d.op {
            abi::OP_MAP => {
                Map::new(Iova(d.iova), Gpa(d.arg), d.len, d.flags, ram_size).map(Self::Map)
            }
            abi::OP_UNMAP => {
                IovaRange::new(Iova(d.iova), d.len).map(|range| Self::Unmap(Unmap { range }))
            }
            op => Err(RequestError::BadOp(op)),
        }
    }
}

/// TO_GUEST (a device write): fill the range with `abi::fill_pattern(seed, ...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToGuest {
    pub range: IovaRange,
    pub seed: u64,
}

/// FROM_GUEST (a device read): checksum each page of the range into the u64 array at `out`.
/// The array lies in guest RAM and is 8-byte aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FromGuest {
    range: IovaRange,
    out: Gpa,
}

impl FromGuest {
    /// Checks the output array for guest RAM of `ram_size` bytes, in the order the ABI answers:
    /// it must not wrap, must end inside RAM, and must be 8-byte aligned.
    pub fn new(range: IovaRange, out: Gpa, ram_size: u64) -> Result<Self> {
        let pages = range.pages();
        let out_end = out
            .checked_add(pages * 8)
            .ok_or(RequestError::OutputWraps { out, pages })?;
        if out_end.raw() > ram_size {
            return Err(RequestError::OutOfRange {
                field: Field::Output,
                end: out_end.raw(),
                limit: ram_size,
            });
        }
        check_aligned(Field::Output, out.raw(), 8)?;
        Ok(FromGuest { range, out })
    }

    pub fn range(&self) -> IovaRange {
        self.range
    }

    pub fn out(&self) -> Gpa {
        self.out
    }

    /// The guest-physical range the checksums are written to.
    pub fn out_range(&self) -> Range<Gpa> {
        self.out..Gpa(self.out.raw() + self.range.pages() * 8)
    }
}

/// One DMA queue descriptor, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaRequest {
    /// Completes at once, moves nothing (its fields are not looked at).
    Nop,
    ToGuest(ToGuest),
    FromGuest(FromGuest),
}

impl DmaRequest {
    /// Decodes `d` for guest RAM of `ram_size` bytes. `d.arg` is the seed (TO_GUEST) or the GPA
    /// of the output array (FROM_GUEST).
    pub fn parse(d: &abi::Descriptor, ram_size: u64) -> Result<Self> {
        match d.op {
            abi::OP_NOP => Ok(DmaRequest::Nop),
            abi::OP_TO_GUEST => Ok(DmaRequest::ToGuest(ToGuest {
                range: IovaRange::new(Iova(d.iova), d.len)?,
                seed: d.arg,
            })),
            abi::OP_FROM_GUEST => Ok(DmaRequest::FromGuest(FromGuest::new(
                IovaRange::new(Iova(d.iova), d.len)?,
                Gpa(d.arg),
                ram_size,
            )?)),
            op => Err(RequestError::BadOp(op)),
        }
    }

    /// The direction an opcode moves data in (`None`: a NOP or not a DMA opcode). Known even when
    /// the rest of the descriptor is malformed, so a failed request is counted where it belongs.
    pub fn direction_of(op: u32) -> Option<DmaDirection> {
        match op {
            abi::OP_TO_GUEST => Some(DmaDirection::ToGuest),
            abi::OP_FROM_GUEST => Some(DmaDirection::FromGuest),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 64 << 20;
    const P: u64 = PAGE_SIZE;
    const RW: u32 = abi::PERM_READ | abi::PERM_WRITE;

    fn desc(op: u32, iova: u64, arg: u64, len: u64, flags: u32) -> abi::Descriptor {
        abi::Descriptor {
            op,
            flags,
            iova,
            arg,
            len,
            tag: 0xfeed,
            ..Default::default()
        }
    }

    fn range(iova: u64, len: u64) -> IovaRange {
        IovaRange::new(Iova(iova), len).unwrap()
    }

    fn map(iova: u64, gpa: u64, len: u64, perm: Perm) -> IommuRequest {
        IommuRequest::Map(Map {
            range: range(iova, len),
            gpa: Gpa(gpa),
            perm,
        })
    }

    /// Each row: what the descriptor tries, the descriptor, the request or error a correct
    /// decoder returns. A bug would show as a wrong field (a GPA read from the wrong place), a
    /// malformed request accepted (`Ok` where an error is due, which the IOMMU would then pin),
    /// or the wrong error class (the guest answered with the wrong status).
    #[test]
    fn iommu_descriptors_decode_or_name_their_defect() {
        use RequestError::*;
        let ov = |field, start, len| Overflow { field, start, len };
        let mis = |field, value| Misaligned {
            field,
            value,
            align: P,
        };
        type Row = (&'static str, abi::Descriptor, Result<IommuRequest>);
        let rows: &[Row] = &[
            (
                "a map",
                desc(abi::OP_MAP, 0x1000, 0x30_0000, 2 * P, RW),
                Ok(map(0x1000, 0x30_0000, 2 * P, Perm::RW)),
            ),
            (
                "a read-only map",
                desc(abi::OP_MAP, 0, 0, P, abi::PERM_READ),
                Ok(map(0, 0, P, Perm::READ)),
            ),
            (
                "a write-only map",
                desc(abi::OP_MAP, 0, 0, P, abi::PERM_WRITE),
                Ok(map(0, 0, P, Perm::WRITE)),
            ),
            (
                "an unmap",
                desc(abi::OP_UNMAP, 0x10_0000, 0, 16 * P, 0),
                Ok(IommuRequest::Unmap(Unmap {
                    range: range(0x10_0000, 16 * P),
                })),
            ),
            (
                "a DMA opcode on the IOMMU queue",
                desc(abi::OP_TO_GUEST, 0, 0, P, 0),
                Err(BadOp(abi::OP_TO_GUEST)),
            ),
            ("opcode 0", desc(0, 0, 0, P, RW), Err(BadOp(0))),
            (
                "opcode u32::MAX",
                desc(u32::MAX, 0, 0, P, RW),
                Err(BadOp(u32::MAX)),
            ),
            (
                "map: zero length",
                desc(abi::OP_MAP, 0x1000, 0x30_0000, 0, RW),
                Err(ZeroLength),
            ),
            (
                "map: gpa + len overflows (hostile map-length-overflow)",
                desc(abi::OP_MAP, 0x1000, 0x30_0000, u64::MAX - 0xfff, RW),
                Err(ov(Field::Gpa, 0x30_0000, u64::MAX - 0xfff)),
            ),
            (
                "map: iova + len overflows",
                desc(abi::OP_MAP, u64::MAX - 0xfff, 0x30_0000, 0x2000, RW),
                Err(ov(Field::Iova, u64::MAX - 0xfff, 0x2000)),
            ),
            (
                "map: len u64::MAX",
                desc(abi::OP_MAP, 0, P, u64::MAX, RW),
                Err(ov(Field::Gpa, P, u64::MAX)),
            ),
            (
                "map: overflow wins over misalignment",
                desc(abi::OP_MAP, 0x1001, u64::MAX, P, RW),
                Err(ov(Field::Gpa, u64::MAX, P)),
            ),
            (
                "map: misaligned iova",
                desc(abi::OP_MAP, 0x1001, 0x30_0000, P, RW),
                Err(mis(Field::Iova, 0x1001)),
            ),
            (
                "map: misaligned gpa (hostile map-misaligned)",
                desc(abi::OP_MAP, 0x1000, 0x30_0001, P, RW),
                Err(mis(Field::Gpa, 0x30_0001)),
            ),
            (
                "map: misaligned len",
                desc(abi::OP_MAP, 0x1000, 0x30_0000, P + 1, RW),
                Err(mis(Field::Len, P + 1)),
            ),
            (
                "map: the last page of RAM",
                desc(abi::OP_MAP, 0x1000, RAM - P, P, RW),
                Ok(map(0x1000, RAM - P, P, Perm::RW)),
            ),
            (
                "map: one page past RAM (hostile map-gpa-outside-ram)",
                desc(abi::OP_MAP, 0x1000, RAM, P, RW),
                Err(OutOfRange {
                    field: Field::Gpa,
                    end: RAM + P,
                    limit: RAM,
                }),
            ),
            (
                "map: straddles the end of RAM",
                desc(abi::OP_MAP, 0x1000, RAM - P, 2 * P, RW),
                Err(OutOfRange {
                    field: Field::Gpa,
                    end: RAM + P,
                    limit: RAM,
                }),
            ),
            (
                "map: the last IOVA page",
                desc(abi::OP_MAP, abi::IOVA_LIMIT - P, 0x30_0000, P, RW),
                Ok(map(abi::IOVA_LIMIT - P, 0x30_0000, P, Perm::RW)),
            ),
            (
                "map: past the IOVA space (hostile map-iova-outside-space)",
                desc(abi::OP_MAP, abi::IOVA_LIMIT, 0x30_0000, P, RW),
                Err(OutOfRange {
                    field: Field::Iova,
                    end: abi::IOVA_LIMIT + P,
                    limit: abi::IOVA_LIMIT,
                }),
            ),
            (
                "map: outside RAM wins over bad permissions",
                desc(abi::OP_MAP, 0x1000, RAM, P, 0),
                Err(OutOfRange {
                    field: Field::Gpa,
                    end: RAM + P,
                    limit: RAM,
                }),
            ),
            (
                "map: no permission",
                desc(abi::OP_MAP, 0x1000, 0x30_0000, P, 0),
                Err(BadPermission(0)),
            ),
            (
                "map: an unknown permission bit",
                desc(abi::OP_MAP, 0x1000, 0x30_0000, P, RW | 4),
                Err(BadPermission(RW | 4)),
            ),
            (
                "unmap: zero length",
                desc(abi::OP_UNMAP, 0x1000, 0, 0, 0),
                Err(ZeroLength),
            ),
            (
                "unmap: iova + len overflows",
                desc(abi::OP_UNMAP, u64::MAX - 0xfff, 0, 0x2000, 0),
                Err(ov(Field::Iova, u64::MAX - 0xfff, 0x2000)),
            ),
            (
                "unmap: len u64::MAX",
                desc(abi::OP_UNMAP, P, 0, u64::MAX, 0),
                Err(ov(Field::Iova, P, u64::MAX)),
            ),
            (
                "unmap: misaligned",
                desc(abi::OP_UNMAP, 0x1800, 0, P, 0),
                Err(mis(Field::Iova, 0x1800)),
            ),
        ];
        for (what, d, want) in rows {
            assert_eq!(&IommuRequest::parse(d, RAM), want, "{what}");
        }
    }

    /// As above for the DMA queue. The hostile guest's classes are marked; `out` here is a GPA
    /// inside RAM unless the row says otherwise.
    #[test]
    fn dma_descriptors_decode_or_name_their_defect() {
        use RequestError::*;
        let out = 0x40_0000;
        let from = |iova, len, out| {
            DmaRequest::FromGuest(FromGuest {
                range: range(iova, len),
                out: Gpa(out),
            })
        };
        type Row = (&'static str, abi::Descriptor, Result<DmaRequest>);
        let rows: &[Row] = &[
            ("a nop", desc(abi::OP_NOP, 0, 0, 0, 0), Ok(DmaRequest::Nop)),
            (
                "a nop with garbage fields",
                desc(abi::OP_NOP, u64::MAX, u64::MAX, u64::MAX, u32::MAX),
                Ok(DmaRequest::Nop),
            ),
            (
                "a device write: arg is the seed",
                desc(abi::OP_TO_GUEST, 0x20_0000, u64::MAX, 4 * P, 0),
                Ok(DmaRequest::ToGuest(ToGuest {
                    range: range(0x20_0000, 4 * P),
                    seed: u64::MAX,
                })),
            ),
            (
                "a device read: arg is the output array",
                desc(abi::OP_FROM_GUEST, 0x20_0000, out, 4 * P, 0),
                Ok(from(0x20_0000, 4 * P, out)),
            ),
            (
                "bad opcode (hostile bad-opcode)",
                desc(0xdead, 0x20_0000, 0, P, 0),
                Err(BadOp(0xdead)),
            ),
            (
                "an IOMMU opcode on the DMA queue",
                desc(abi::OP_MAP, 0, 0, P, RW),
                Err(BadOp(abi::OP_MAP)),
            ),
            (
                "write: zero length",
                desc(abi::OP_TO_GUEST, 0, 0, 0, 0),
                Err(ZeroLength),
            ),
            (
                "read: zero length",
                desc(abi::OP_FROM_GUEST, 0, out, 0, 0),
                Err(ZeroLength),
            ),
            (
                "write: iova + len overflows",
                desc(abi::OP_TO_GUEST, u64::MAX - 0xfff, 0, 0x2000, 0),
                Err(Overflow {
                    field: Field::Iova,
                    start: u64::MAX - 0xfff,
                    len: 0x2000,
                }),
            ),
            (
                "read: len u64::MAX",
                desc(abi::OP_FROM_GUEST, P, out, u64::MAX, 0),
                Err(Overflow {
                    field: Field::Iova,
                    start: P,
                    len: u64::MAX,
                }),
            ),
            (
                "write: misaligned iova",
                desc(abi::OP_TO_GUEST, 0x20_0008, 0, P, 0),
                Err(Misaligned {
                    field: Field::Iova,
                    value: 0x20_0008,
                    align: P,
                }),
            ),
            (
                "read: misaligned len",
                desc(abi::OP_FROM_GUEST, 0x20_0000, out, P + 8, 0),
                Err(Misaligned {
                    field: Field::Len,
                    value: P + 8,
                    align: P,
                }),
            ),
            (
                "read: output array wraps the address space",
                desc(abi::OP_FROM_GUEST, 0, u64::MAX - 7, 2 * P, 0),
                Err(OutputWraps {
                    out: Gpa(u64::MAX - 7),
                    pages: 2,
                }),
            ),
            (
                "read: output array ends exactly at the end of RAM",
                desc(abi::OP_FROM_GUEST, 0, RAM - 16, 2 * P, 0),
                Ok(from(0, 2 * P, RAM - 16)),
            ),
            (
                "read: output array past RAM, and misaligned (hostile output-outside-ram)",
                desc(abi::OP_FROM_GUEST, 0x20_0000, RAM - 4, P, 0),
                Err(OutOfRange {
                    field: Field::Output,
                    end: RAM + 4,
                    limit: RAM,
                }),
            ),
            (
                "read: misaligned output array",
                desc(abi::OP_FROM_GUEST, 0x20_0000, out + 4, P, 0),
                Err(Misaligned {
                    field: Field::Output,
                    value: out + 4,
                    align: 8,
                }),
            ),
        ];
        for (what, d, want) in rows {
            assert_eq!(&DmaRequest::parse(d, RAM), want, "{what}");
        }
    }

    /// The status each error class answers with: the ABI's table for the hostile classes. A bug
    /// answers a malformed request with the wrong status (the hostile row then fails).
    #[test]
    fn statuses_at_the_edge() {
        let st = |d: abi::Descriptor| IommuRequest::parse(&d, RAM).unwrap_err().status();
        let dst = |d: abi::Descriptor| DmaRequest::parse(&d, RAM).unwrap_err().status();
        let rows: &[(&str, u32, u32)] = &[
            (
                "map-gpa-outside-ram",
                st(desc(abi::OP_MAP, 0, RAM, P, RW)),
                abi::STATUS_OUT_OF_RANGE,
            ),
            (
                "map-iova-outside-space",
                st(desc(abi::OP_MAP, abi::IOVA_LIMIT, 0, P, RW)),
                abi::STATUS_OUT_OF_RANGE,
            ),
            (
                "map-length-overflow",
                st(desc(abi::OP_MAP, 0, 0x20_0000, u64::MAX - 4095, RW)),
                abi::STATUS_BAD_LENGTH,
            ),
            (
                "map-zero-length",
                st(desc(abi::OP_MAP, 0, 0, 0, RW)),
                abi::STATUS_BAD_LENGTH,
            ),
            (
                "map-misaligned",
                st(desc(abi::OP_MAP, 0, 1, P, RW)),
                abi::STATUS_MISALIGNED,
            ),
            (
                "map-bad-permission",
                st(desc(abi::OP_MAP, 0, 0, P, 8)),
                abi::STATUS_PERMISSION,
            ),
            (
                "bad-opcode",
                dst(desc(0xdead, 0, 0, P, 0)),
                abi::STATUS_BAD_OP,
            ),
            (
                "output-outside-ram",
                dst(desc(abi::OP_FROM_GUEST, 0, RAM - 4, P, 0)),
                abi::STATUS_OUT_OF_RANGE,
            ),
            (
                "output-wraps",
                dst(desc(abi::OP_FROM_GUEST, 0, u64::MAX, P, 0)),
                abi::STATUS_OUT_OF_RANGE,
            ),
        ];
        for &(what, got, want) in rows {
            assert_eq!(abi::status_name(got), abi::status_name(want), "{what}");
        }
    }

    #[test]
    fn ranges_and_permissions() {
        let r = range(u64::MAX - 2 * P + 1, P);
        assert_eq!(r.end(), Iova(u64::MAX - P + 1));
        assert_eq!(r.pages(), 1);
        let f = FromGuest::new(range(0, 3 * P), Gpa(0x1000), RAM).unwrap();
        assert_eq!(f.out_range(), Gpa(0x1000)..Gpa(0x1000 + 24));
        assert_eq!(Perm::from_bits(0), None);
        assert_eq!(Perm::from_bits(4), None);
        assert!(Perm::RW.allows(Perm::WRITE));
        assert!(!Perm::READ.allows(Perm::WRITE));
        assert!(!Perm::READ.allows(Perm::RW));
        assert_eq!(
            DmaRequest::direction_of(abi::OP_FROM_GUEST),
            Some(DmaDirection::FromGuest)
        );
        assert_eq!(DmaRequest::direction_of(abi::OP_NOP), None);
    }
}
