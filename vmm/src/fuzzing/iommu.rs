//! Target `iommu`: an arbitrary sequence of map, unmap and lookup requests against
//! `devices::iommu::Iommu` (`PinKind::Mapping`: no host pin, so inputs stay cheap) over a small
//! guest RAM, against a reference table.
//!
//! The reference: a map is accepted exactly when it overlaps no live mapping and the table holds
//! fewer than `IOMMU_MAX_MAPPINGS`; an unmap exactly when a live mapping has its IOVA and length;
//! a lookup succeeds exactly when one live mapping wholly covers the range with the permission
//! asked, at the range's offset into it. After every step the table is the reference's: bounded,
//! no two mappings overlapping, each inside RAM.

use arbitrary::Unstructured;
use pinlab_abi as abi;

use super::{run, u64_near};
use crate::addr::{Gpa, Iova};
use crate::devices::iommu::{Error, Iommu};
use crate::devices::request::{IovaRange, Map, Perm, Unmap};
use crate::memory::GuestRam;
use crate::scenario::PinKind;

const RAM: u64 = 4 << 20;
const P: u64 = abi::PAGE_SIZE;
const STEPS: usize = 160;

/// A live mapping as the reference keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Live {
    iova: u64,
    len: u64,
    gpa: u64,
    perm: u32,
}

impl Live {
    fn end(&self) -> u64 {
        self.iova + self.len
    }
}

/// An IOVA from a small set of page slots (so requests collide), or near the top of the space.
fn iova(u: &mut Unstructured<'_>) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => abi::IOVA_LIMIT - u.int_in_range(1..=4u64)? * P,
        1 => u64_near(u, &[0, abi::IOVA_LIMIT])? & !(P - 1),
        _ => u.int_in_range(0..=96u64)? * P,
    })
}

fn len(u: &mut Unstructured<'_>) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => u64_near(u, &[RAM, P])? & !(P - 1),
        _ => u.int_in_range(1..=8u64)? * P,
    })
}

fn perm(u: &mut Unstructured<'_>) -> arbitrary::Result<Perm> {
    Ok(*u.choose(&[Perm::READ, Perm::WRITE, Perm::RW])?)
}

fn check_table(iommu: &Iommu, model: &[Live]) {
    let live: Vec<Live> = iommu
        .mappings()
        .map(|m| Live {
            iova: m.iova.raw(),
            len: m.len,
            gpa: m.gpa.raw(),
            perm: m.perm.bits(),
        })
        .collect();
    let mut want = model.to_vec();
    want.sort_by_key(|m| m.iova);
    assert_eq!(live, want, "the table is the reference's");
    assert!(live.len() <= abi::IOMMU_MAX_MAPPINGS as usize, "bounded");
    for w in live.windows(2) {
        assert!(w[0].end() <= w[1].iova, "{:?} overlaps {:?}", w[0], w[1]);
    }
    for m in &live {
        assert!(m.gpa + m.len <= RAM && m.end() <= abi::IOVA_LIMIT, "{m:?}");
    }
}

/// Plays an arbitrary sequence of requests against the IOMMU and the reference table.
pub fn iommu(data: &[u8]) {
    run(data, |u| {
        let ram = GuestRam::new(RAM, false, false).expect("guest RAM for the IOMMU target");
        let mut iommu = Iommu::new(PinKind::Mapping);
        let mut model: Vec<Live> = Vec::new();
        let mut unmapped = 0;
        let r = steps(u, &ram, &mut iommu, &mut model, &mut unmapped);
        let evidence = iommu.evidence(&ram);
        assert_eq!(
            evidence.len(),
            unmapped + model.len(),
            "evidence for every mapping"
        );
        iommu.clear();
        r
    });
}

fn steps(
    u: &mut Unstructured<'_>,
    ram: &GuestRam,
    iommu: &mut Iommu,
    model: &mut Vec<Live>,
    unmapped: &mut usize,
) -> arbitrary::Result<()> {
    for _ in 0..STEPS {
        if u.is_empty() {
            break;
        }
        let (start, len) = (iova(u)?, len(u)?);
        match u.int_in_range(0..=3u8)? {
            0 | 1 => {
                let gpa = u.int_in_range(0..=RAM / P)? * P;
                let p = perm(u)?;
                let Ok(req) = Map::new(Iova(start), Gpa(gpa), len, p.bits(), RAM) else {
                    continue;
                };
                let overlap = model
                    .iter()
                    .any(|m| start < m.end() && m.iova < start + len);
                let got = iommu.map(ram, &req);
                match got {
                    Ok(()) => {
                        assert!(!overlap, "{req:?} accepted over a live mapping");
                        assert!(
                            model.len() < abi::IOMMU_MAX_MAPPINGS as usize,
                            "past the bound"
                        );
                        model.push(Live {
                            iova: start,
                            len,
                            gpa,
                            perm: p.bits(),
                        });
                    }
                    Err(Error::Overlap { existing, .. }) => {
                        assert!(overlap, "{req:?} refused as overlapping");
                        assert!(
                            model.iter().any(|m| m.iova == existing.raw()
                                && start < m.end()
                                && m.iova < start + len),
                            "the overlap named is a live mapping that overlaps"
                        );
                    }
                    Err(Error::TooManyMappings { max }) => {
                        assert!(!overlap && model.len() >= max, "{req:?}: table not full");
                    }
                    Err(e) => panic!("{req:?}: unexpected {e}"),
                }
            }
            2 => {
                let Ok(range) = IovaRange::new(Iova(start), len) else {
                    continue;
                };
                let at = model.iter().position(|m| m.iova == start && m.len == len);
                match (iommu.unmap(ram, &Unmap { range }), at) {
                    (Ok(()), Some(i)) => {
                        model.swap_remove(i);
                        *unmapped += 1;
                    }
                    (Err(Error::NotMapped { .. }), None) => {}
                    (got, want) => panic!("unmap {range}: {got:?}, reference {want:?}"),
                }
                assert_eq!(iommu.retired.len(), *unmapped, "evidence kept per unmap");
            }
            _ => {
                let Ok(range) = IovaRange::new(Iova(start), len) else {
                    continue;
                };
                let need = perm(u)?;
                let cover = model
                    .iter()
                    .find(|m| m.iova <= start && start < m.end())
                    .filter(|m| start + len <= m.end());
                let got = iommu
                    .lookup(&range, need)
                    .map(|(m, off)| (m.iova.raw(), off));
                match (got, cover) {
                    (Ok((at, off)), Some(m)) => {
                        assert!(Perm::from_bits(m.perm).unwrap().allows(need));
                        assert_eq!((at, off), (m.iova, start - m.iova), "lookup {range}");
                    }
                    (Err(Error::Permission { have, need: n, .. }), Some(m)) => {
                        assert_eq!((have.bits(), n), (m.perm, need));
                        assert!(!have.allows(need));
                    }
                    (Err(Error::NotCovered { .. }), None) => {}
                    (got, want) => panic!("lookup {range} {need}: {got:?}, reference {want:?}"),
                }
            }
        }
        check_table(iommu, model);
    }
    Ok(())
}
