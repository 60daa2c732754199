//! VFIO passthrough as a pin mechanism: the real type1 (or iommufd) pin on guest RAM.
//!
//! Owns `pin = "vfio"`: which device (`source`), the map plan (`plan`), the IOMMU's limits
//! (`info`), the owner of the DMA maps (`dma`) and the attachment that ties them to the VM
//! (`attach`). All of guest RAM is mapped once, at attach, at IOVA = GPA; the emulated IOMMU's
//! maps then hand out a [`VfioPin`] over the part the guest asked for, so every host action runs
//! against it unchanged.
//!
//! What the lab cannot do: make the passed-through device DMA. pinlab has no driver for whatever
//! device is bound to vfio-pci, so a [`VfioPin`] moves no data; its transfers answer
//! [`super::Error::Unsupported`] (the guest counts them, as it does vmsplice's device writes) and
//! the verdict rests on PFN evidence alone: the PFNs pagemap showed right after MAP_DMA against
//! the PFNs guest RAM maps at the end, with kpageflags ([`evidence`]). Every report of a vfio
//! run says "PFN evidence only".
//!
//! It must not touch guest RAM's contents; it reads pagemap and kpageflags only.

pub mod attach;
pub mod dma;
pub mod info;
pub mod plan;
pub mod source;

use std::sync::Arc;

use serde::Serialize;

use crate::addr::{Gpa, Hva, Pfn, PAGE_SIZE};
use crate::memory::GuestRam;
use crate::pfn::{self, Summary};
use crate::scenario::{PinKind, Scenario};

pub use attach::Attachment;
pub use source::{Backend, VfioSource};

/// Errors of the VFIO pin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `[device] vfio` does not parse (validation should have said so).
    #[error(transparent)]
    Source(#[from] source::Error),
    /// The host lacks a piece (the runner skips before this can happen).
    #[error("{0}")]
    Unavailable(String),
    /// The attach failed.
    #[error(transparent)]
    Attach(#[from] attach::Error),
    /// A VFIO pin was asked for with no device attached.
    #[error(
        "a vfio pin needs an attached VFIO device (pin = \"vfio\" runs only through the runner)"
    )]
    NotAttached,
    /// The range is not inside one of the attachment's DMA maps.
    #[error("{hva} + {len:#x} is not inside a VFIO DMA map")]
    NotMapped { hva: Hva, len: u64 },
}

/// What a transfer through a VFIO pin answers (see the module header).
pub const CANNOT_MOVE_DATA: &str =
    "move data: pinlab has no driver for the passed-through device (PFN evidence only)";

/// The words every vfio verdict and report carries.
pub const PFN_EVIDENCE_ONLY: &str = "PFN evidence only";

/// The device's hold on one IOVA range of the emulated IOMMU: a view of the attachment's DMA
/// map that covers it. The kernel holds the pin for as long as the attachment lives; this keeps
/// the attachment alive and remembers the PFNs its pages had right after MAP_DMA.
pub struct VfioPin {
    /// Keeps the attachment (and so the kernel's pin) alive.
    _hold: Arc<dyn Send + Sync>,
    len: u64,
    pinned: Vec<Option<Pfn>>,
}

impl VfioPin {
    /// A pin over `hva..hva+len`, which must lie inside one of `attachment`'s maps.
    pub fn new(attachment: Arc<Attachment>, hva: Hva, len: u64) -> Result<Self, Error> {
        let pinned = attachment
            .pinned_at_map(hva, len)
            .ok_or(Error::NotMapped { hva, len })?
            .to_vec();
        Ok(VfioPin {
            _hold: attachment,
            len,
            pinned,
        })
    }
}

impl super::Pin for VfioPin {
    fn kind(&self) -> PinKind {
        PinKind::Vfio
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn write_to_guest(&mut self, _: &super::Staging, _: &[super::Transfer]) -> super::Result<()> {
        Err(super::Error::Unsupported {
            kind: PinKind::Vfio,
            op: CANNOT_MOVE_DATA,
        })
    }
    fn read_from_guest(
        &mut self,
        _: &mut super::Staging,
        _: &[super::Transfer],
    ) -> super::Result<()> {
        Err(super::Error::Unsupported {
            kind: PinKind::Vfio,
            op: CANNOT_MOVE_DATA,
        })
    }
    fn take_pinned_pfns(&mut self) -> Option<pfn::Result<crate::pfn_runs::PfnRuns>> {
        Some(Ok(self.pinned.iter().copied().collect()))
    }
}

/// Why this host cannot run scenario `s`'s VFIO device, in one line (`None`: it can, or `s` is
/// not a vfio scenario). Reads sysfs and /dev only.
pub fn missing(s: &Scenario) -> Option<String> {
    if s.device.pin != PinKind::Vfio {
        return None;
    }
    let Some(text) = &s.device.vfio else {
        return Some("VFIO: pin = \"vfio\" without [device] vfio".into());
    };
    match text.parse::<VfioSource>() {
        Err(e) => Some(format!("VFIO: {e}")),
        Ok(src) => source::resolve(&src, &source::HostPaths::default())
            .err()
            .map(|m| m.to_string()),
    }
}

/// For a vfio scenario: attaches its device to `vm` with all of `ram` mapped (the one memslot,
/// GPA 0 .. size). `None` for any other pin.
///
/// # Safety
///
/// `ram` must outlive the returned attachment (and every pin taken from it), and guest RAM must
/// be accessed only through raw pointers, volatile accesses and system calls meanwhile.
pub unsafe fn attach_for(
    s: &Scenario,
    vm: &kvm_ioctls::VmFd,
    ram: &GuestRam,
) -> Result<Option<Arc<Attachment>>, Error> {
    if s.device.pin != PinKind::Vfio {
        return Ok(None);
    }
    let text = s.device.vfio.as_deref().unwrap_or_default();
    let src: VfioSource = text.parse()?;
    let resolved = source::resolve(&src, &source::HostPaths::default())
        .map_err(|m| Error::Unavailable(m.to_string()))?;
    let regions = [plan::Region {
        gpa: Gpa(0),
        len: ram.size(),
        hva: ram.hva(),
    }];
    // SAFETY: forwarded from this function's contract.
    let a = unsafe { Attachment::attach(resolved, vm, &regions) }?;
    tracing::info!(
        "vfio: {} attached through {}, {} DMA maps over {:#x} bytes",
        a.resolved().address,
        a.backend(),
        a.ranges().len(),
        ram.size()
    );
    Ok(Some(Arc::new(a)))
}

/// A page whose PFN changed since MAP_DMA.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Change {
    pub gpa: Gpa,
    pub at_map: Option<Pfn>,
    pub now: Option<Pfn>,
}

/// The attachment's PFN evidence over all of guest RAM: right after MAP_DMA against now.
#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    /// "vfio", for the report's evidence list.
    pub action: &'static str,
    /// One line for the human report.
    pub summary: String,
    /// Always [`PFN_EVIDENCE_ONLY`].
    pub basis: &'static str,
    pub backend: Backend,
    pub device: String,
    pub group: u32,
    pub maps: Vec<plan::DmaRange>,
    pub iommu_pgsizes: u64,
    pub iova_ranges: Vec<(u64, u64)>,
    pub pages: usize,
    pub at_map: Summary,
    pub now: Option<Summary>,
    pub pinned_pfns_changed_pages: usize,
    /// The first few changed pages.
    pub changed: Vec<Change>,
    /// Why `now` could not be read, if it could not.
    pub unreadable: Option<String>,
}

/// Compares what every map held right after MAP_DMA with what guest RAM maps at the same GPAs
/// now.
pub fn evidence(a: &Attachment, ram: &GuestRam) -> Evidence {
    let mut ev = Evidence {
        action: "vfio",
        summary: String::new(),
        basis: PFN_EVIDENCE_ONLY,
        backend: a.backend(),
        device: a.resolved().address.clone(),
        group: a.resolved().group,
        maps: a.ranges().to_vec(),
        iommu_pgsizes: a.limits().pgsizes,
        iova_ranges: a.limits().iova_ranges.clone(),
        pages: 0,
        at_map: Summary::default(),
        now: None,
        pinned_pfns_changed_pages: 0,
        changed: Vec::new(),
        unreadable: None,
    };
    let mut now_total = Summary::default();
    for (r, held) in a.ranges().iter().zip(a.at_map()) {
        ev.pages += held.pfns.len();
        add(&mut ev.at_map, &held.summary);
        let now = ram
            .translate(r.gpa, r.len)
            .map_err(|e| e.to_string())
            .and_then(|hva| pfn::snapshot(hva, r.len).map_err(|e| e.to_string()));
        match now {
            Err(e) => {
                ev.unreadable.get_or_insert(e);
            }
            Ok(s) => {
                add(&mut now_total, &s.summary);
                let mapped = s.pfns();
                let diff = pfn::diff_pfns(&held.pfns, &mapped);
                ev.pinned_pfns_changed_pages += diff.len();
                for &i in diff.iter().take(8usize.saturating_sub(ev.changed.len())) {
                    ev.changed.push(Change {
                        gpa: Gpa(r.gpa.raw() + i as u64 * PAGE_SIZE),
                        at_map: held.pfns.get(i).copied().flatten(),
                        now: mapped.get(i).copied().flatten(),
                    });
                }
            }
        }
    }
    if ev.unreadable.is_none() {
        ev.now = Some(now_total);
    }
    ev.summary = format!(
        "{} {} through {}: {} maps, {} pages at IOVA = GPA; at MAP_DMA {} THP, {} present; {}; {PFN_EVIDENCE_ONLY}",
        ev.device,
        format_args!("(group {})", ev.group),
        ev.backend,
        ev.maps.len(),
        ev.pages,
        ev.at_map.thp,
        ev.at_map.present,
        match (&ev.unreadable, ev.pinned_pfns_changed_pages) {
            (Some(e), _) => format!("PFNs now unreadable: {e}"),
            (None, 0) => "every page still maps the PFN pinned at MAP_DMA".into(),
            (None, n) => format!("{n} pages no longer map the PFN pinned at MAP_DMA"),
        }
    );
    ev
}

fn add(total: &mut Summary, s: &Summary) {
    total.pages += s.pages;
    total.present += s.present;
    total.swapped += s.swapped;
    total.not_present += s.not_present;
    total.thp += s.thp;
    total.ksm += s.ksm;
    total.zero_page += s.zero_page;
    total.exclusive += s.exclusive;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Verdict;

    fn vfio_scenario(dev: &str) -> Scenario {
        toml::from_str(&format!(
            "[device]\npin = \"vfio\"\nvfio = \"{dev}\"\n[expect]\nlive = \"coherent\"\n"
        ))
        .unwrap()
    }

    /// On a host without /dev/vfio/vfio and /dev/iommu (this lab machine), every form of device
    /// is a one-line reason that names the missing piece and the fix; any other pin is never
    /// blamed on VFIO. A bug would let a vfio scenario through to an attach that cannot work,
    /// or block io-uring scenarios on VFIO.
    #[test]
    fn missing_names_the_piece_and_the_fix() {
        let mut other = vfio_scenario("0000:01:00.0");
        other.device.pin = PinKind::IoUring;
        other.device.vfio = None;
        assert_eq!(missing(&other), None);
        let host = source::HostPaths::default();
        if host.exists("/dev/vfio/vfio") || host.exists("/dev/iommu") {
            eprintln!("this host has VFIO: the no-VFIO rows do not apply");
            return;
        }
        for dev in ["0000:01:00.0", "/dev/vfio/3", "/dev/vfio/devices/vfio0"] {
            let why = missing(&vfio_scenario(dev)).expect(dev);
            assert!(why.starts_with("VFIO unavailable: "), "{dev}: {why}");
            assert!(!why.contains('\n'), "{dev}: one line");
            assert!(
                why.contains("CONFIG_VFIO") || why.contains("CONFIG_IOMMUFD"),
                "{dev}: the fix is missing: {why}"
            );
        }
        assert_eq!(vfio_scenario("01:00.0").expected_live(), Verdict::Coherent);
    }

    /// A VFIO pin moves no data in either direction and says why (the guest then counts the
    /// descriptors `unsupported` and verifies nothing), and hands out the PFNs of MAP_DMA time,
    /// not today's. A bug: a transfer that "succeeds" (the guest would check data no device
    /// moved) or PFNs read at pin time instead of at MAP_DMA.
    #[test]
    fn a_vfio_pin_moves_no_data_and_keeps_its_map_time_pfns() {
        use super::super::{Pin, Staging, Transfer};
        let pinned = vec![Some(Pfn(7)), None, Some(Pfn(9))];
        let mut p = VfioPin {
            _hold: Arc::new(()),
            len: 3 * PAGE_SIZE,
            pinned: pinned.clone(),
        };
        assert_eq!((p.kind(), p.len()), (PinKind::Vfio, 3 * PAGE_SIZE));
        assert_eq!(
            p.take_pinned_pfns()
                .map(|r| r.unwrap().iter().collect::<Vec<_>>()),
            Some(pinned)
        );
        let mut staging = Staging::new(PAGE_SIZE).unwrap();
        let ops = [Transfer {
            pin_offset: 0,
            staging_offset: 0,
            len: PAGE_SIZE,
        }];
        let unsupported = |r: super::super::Result<()>| matches!(r, Err(super::super::Error::Unsupported { kind: PinKind::Vfio, op }) if op == CANNOT_MOVE_DATA);
        assert!(unsupported(p.write_to_guest(&staging, &ops)));
        assert!(unsupported(p.read_from_guest(&mut staging, &ops)));
        let mut calls = 0;
        assert!(unsupported(p.read_from_guest_each(
            &mut staging,
            &ops,
            &mut |_, _| calls += 1
        )));
        assert_eq!(calls, 0, "no piece handed over");
    }

    /// Without an attachment there is no VFIO pin: the request is refused, not faked.
    #[test]
    fn no_pin_without_an_attachment() {
        let ram = GuestRam::new(8 << 20, false, false).unwrap();
        // SAFETY: refused before anything is pinned.
        let res = unsafe { super::super::pin(PinKind::Vfio, ram.hva(), PAGE_SIZE) };
        assert!(
            matches!(res, Err(super::super::Error::Vfio(Error::NotAttached))),
            "{:?}",
            res.err()
        );
    }
}
