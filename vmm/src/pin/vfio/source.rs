//! Which VFIO device a scenario means, and where the host keeps it.
//!
//! Owns the `[device] vfio` vocabulary — a PCI address (`0000:01:00.0`, or `01:00.0` in domain
//! 0), a VFIO group (`/dev/vfio/12`) or an iommufd device cdev (`/dev/vfio/devices/vfio0`) — and
//! its resolution against sysfs and /dev to the device's sysfs directory, its IOMMU group, its
//! driver and the backend that will map it. Resolution only reads files and links under a root
//! (`/` on a host, a temporary tree in tests); it opens no device and changes nothing. When a
//! piece is missing it says which, and the fix, in one line ([`Missing`]).
//!
//! It must not import the scenario or the rest of `pin` (the scenario's validation uses the
//! parser here).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Why a `[device] vfio` value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not `DDDD:BB:DD.F` / `BB:DD.F` in hex, or a field out of range.
    #[error("`{value}` is not a PCI address ({why}); want DDDD:BB:DD.F, e.g. 0000:01:00.0")]
    BadPciAddress { value: String, why: &'static str },
    /// A path under /dev/vfio that is neither `/dev/vfio/N` nor `/dev/vfio/devices/vfioN`.
    #[error(
        "`{value}` is not a VFIO group (/dev/vfio/N) or device cdev (/dev/vfio/devices/vfioN)"
    )]
    BadVfioPath { value: String },
}

/// A PCI address: domain, bus, device (slot) and function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why| Error::BadPciAddress {
            value: s.to_string(),
            why,
        };
        let hex = |t: &str, max_digits: usize| -> Option<u32> {
            (!t.is_empty() && t.len() <= max_digits && t.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(t, 16).ok())
                .flatten()
        };
        let (slot, function) = s.rsplit_once('.').ok_or(bad("no `.function`"))?;
        let parts: Vec<&str> = slot.split(':').collect();
        let (domain, bus, device) = match parts[..] {
            [d, b, dev] => (hex(d, 8).ok_or(bad("bad domain"))?, b, dev),
            [b, dev] => (0, b, dev),
            _ => return Err(bad("want domain:bus:device.function")),
        };
        let bus = hex(bus, 2).ok_or(bad("bad bus"))? as u8;
        let device = hex(device, 2).ok_or(bad("bad device"))?;
        if device > 0x1f {
            return Err(bad("device above 1f"));
        }
        let function = hex(function, 1).ok_or(bad("bad function"))?;
        if function > 7 {
            return Err(bad("function above 7"));
        }
        Ok(PciAddress {
            domain,
            bus,
            device: device as u8,
            function: function as u8,
        })
    }
}

/// What `[device] vfio` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfioSource {
    /// A PCI device by address; the backend is chosen at resolution.
    Pci(PciAddress),
    /// A VFIO group, `/dev/vfio/N`: the type1 container backend.
    Group(u32),
    /// A VFIO device cdev, `/dev/vfio/devices/vfioN`: the iommufd backend.
    Cdev(u32),
}

impl fmt::Display for VfioSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VfioSource::Pci(a) => write!(f, "{a}"),
            VfioSource::Group(n) => write!(f, "/dev/vfio/{n}"),
            VfioSource::Cdev(n) => write!(f, "/dev/vfio/devices/vfio{n}"),
        }
    }
}

fn decimal(t: &str) -> Option<u32> {
    (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .then(|| t.parse().ok())
        .flatten()
}

impl FromStr for VfioSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if !s.starts_with('/') {
            return s.parse().map(VfioSource::Pci);
        }
        let bad = || Error::BadVfioPath {
            value: s.to_string(),
        };
        if let Some(n) = s.strip_prefix("/dev/vfio/devices/vfio") {
            return decimal(n).map(VfioSource::Cdev).ok_or_else(bad);
        }
        s.strip_prefix("/dev/vfio/")
            .and_then(decimal)
            .map(VfioSource::Group)
            .ok_or_else(bad)
    }
}

/// Which kernel interface maps guest RAM for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The VFIO container (`/dev/vfio/vfio`) with the type1v2 IOMMU: VFIO_IOMMU_MAP_DMA.
    Type1,
    /// iommufd (`/dev/iommu`) with the device's cdev bound to an IOAS: IOMMU_IOAS_MAP.
    Iommufd,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Type1 => "type1 (VFIO container, VFIO_IOMMU_MAP_DMA)",
            Backend::Iommufd => "iommufd (IOMMU_IOAS_MAP)",
        })
    }
}

/// One missing piece of the host, with its fix: the skip reason of a vfio scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub what: String,
    pub fix: &'static str,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VFIO unavailable: {} ({})", self.what, self.fix)
    }
}

/// The fixes, one per missing piece (the host report uses the same words).
pub const FIX_KERNEL: &str =
    "the kernel needs CONFIG_VFIO and CONFIG_VFIO_PCI: modprobe vfio-pci, or use a kernel with VFIO";
pub const FIX_IOMMU: &str =
    "enable the IOMMU: boot with intel_iommu=on (or amd_iommu=on) iommu=pt, and VT-d/AMD-Vi on in firmware";
pub const FIX_BIND: &str =
    "bind it to vfio-pci: modprobe vfio-pci; echo vfio-pci > /sys/bus/pci/devices/ADDR/driver_override; echo ADDR > /sys/bus/pci/drivers_probe";
pub const FIX_GROUP: &str =
    "every device of the IOMMU group must be bound to vfio-pci (or to no driver)";
pub const FIX_CDEV: &str =
    "the kernel needs CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV for /dev/iommu and /dev/vfio/devices";

/// Where the host keeps what resolution reads: `/` on a host.
#[derive(Debug, Clone)]
pub struct HostPaths {
    root: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths { root: "/".into() }
    }
}

impl HostPaths {
    /// Resolution under `root` instead of `/` (tests build a fake sysfs and /dev there).
    pub fn under(root: impl Into<PathBuf>) -> Self {
        HostPaths { root: root.into() }
    }

    /// `path` (absolute, as on a host) under the root.
    pub fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn link_name(&self, path: &Path) -> Option<String> {
        fs::read_link(path)
            .ok()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// The driver a PCI device is bound to, if any.
    pub fn driver(&self, addr: &str) -> Option<String> {
        self.link_name(&self.at(&format!("/sys/bus/pci/devices/{addr}/driver")))
    }

    /// The IOMMU group of a PCI device, if it has one.
    pub fn group_of(&self, addr: &str) -> Option<u32> {
        self.link_name(&self.at(&format!("/sys/bus/pci/devices/{addr}/iommu_group")))
            .and_then(|n| decimal(&n))
    }

    /// The devices of IOMMU group `n`, sorted.
    pub fn group_devices(&self, n: u32) -> Vec<String> {
        let dir = self.at(&format!("/sys/kernel/iommu_groups/{n}/devices"));
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every IOMMU group, sorted by number.
    pub fn groups(&self) -> Vec<u32> {
        let mut v: Vec<u32> = fs::read_dir(self.at("/sys/kernel/iommu_groups"))
            .map(|d| {
                d.filter_map(|e| decimal(&e.ok()?.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Whether `path` (as on a host) exists under the root.
    pub fn exists(&self, path: &str) -> bool {
        self.at(path).exists()
    }
}

/// A device ready to be opened: everything the attach needs, all checked present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The PCI address (`0000:01:00.0`).
    pub address: String,
    /// Its sysfs directory, as on the host (`/sys/bus/pci/devices/0000:01:00.0`).
    pub sysfs: PathBuf,
    pub group: u32,
    pub backend: Backend,
}

/// Resolves `source` on the host under `paths`: the first missing piece, with its fix, if any.
///
/// A PCI address uses type1 where `/dev/vfio/vfio` exists, else iommufd where `/dev/iommu` and
/// the device's cdev exist; a group path always means type1, a cdev path always iommufd.
pub fn resolve(source: &VfioSource, paths: &HostPaths) -> Result<Resolved, Missing> {
    let missing = |what: String, fix| Err(Missing { what, fix });
    let container = paths.exists("/dev/vfio/vfio");
    let iommufd = paths.exists("/dev/iommu");
    let address = match source {
        VfioSource::Pci(a) => a.to_string(),
        VfioSource::Group(n) => {
            if !container {
                return missing("/dev/vfio/vfio is missing".into(), FIX_KERNEL);
            }
            let devices = paths.group_devices(*n);
            if devices.is_empty() {
                return missing(format!("IOMMU group {n} does not exist"), FIX_IOMMU);
            }
            match devices
                .iter()
                .find(|d| paths.driver(d).as_deref() == Some("vfio-pci"))
            {
                Some(d) => d.clone(),
                None => {
                    return missing(
                        format!("no device of IOMMU group {n} is bound to vfio-pci"),
                        FIX_BIND,
                    )
                }
            }
        }
        VfioSource::Cdev(n) => {
            if !iommufd {
                return missing("/dev/iommu is missing".into(), FIX_CDEV);
            }
            let link = paths.at(&format!("/sys/class/vfio-dev/vfio{n}/device"));
            match fs::canonicalize(&link)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            {
                Some(a) => a,
                None => {
                    return missing(
                        format!("/dev/vfio/devices/vfio{n} has no device in /sys/class/vfio-dev"),
                        FIX_CDEV,
                    )
                }
            }
        }
    };
    if !container && !iommufd {
        return missing(
            "neither /dev/vfio/vfio nor /dev/iommu exists".into(),
            FIX_KERNEL,
        );
    }
    let sysfs_host = format!("/sys/bus/pci/devices/{address}");
    if !paths.exists(&sysfs_host) {
        return missing(
            format!("no PCI device {address} ({sysfs_host} missing)"),
            "name a device that `lspci -D` lists",
        );
    }
    let Some(group) = paths.group_of(&address) else {
        return missing(format!("{address} has no IOMMU group"), FIX_IOMMU);
    };
    match paths.driver(&address) {
        Some(d) if d == "vfio-pci" => {}
        Some(d) => return missing(format!("{address} is bound to {d}, not vfio-pci"), FIX_BIND),
        None => return missing(format!("{address} is bound to no driver"), FIX_BIND),
    }
    if let Some(other) = paths
        .group_devices(group)
        .into_iter()
        .find(|d| !matches!(paths.driver(d).as_deref(), None | Some("vfio-pci")))
    {
        return missing(
            format!(
                "IOMMU group {group} is not viable: {other} is bound to {}",
                paths.driver(&other).unwrap_or_default()
            ),
            FIX_GROUP,
        );
    }
    let cdev = paths
        .at(&format!("{sysfs_host}/vfio-dev"))
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some());
    let backend = match source {
        VfioSource::Cdev(_) => Backend::Iommufd,
        VfioSource::Group(_) => Backend::Type1,
        VfioSource::Pci(_) if container => Backend::Type1,
        VfioSource::Pci(_) if cdev => Backend::Iommufd,
        VfioSource::Pci(_) => {
            return missing(
                format!("/dev/vfio/vfio is missing and {address} has no iommufd cdev"),
                FIX_CDEV,
            )
        }
    };
    if backend == Backend::Type1 && !paths.exists(&format!("/dev/vfio/{group}")) {
        return missing(
            format!("/dev/vfio/{group} (the group of {address}) is missing"),
            FIX_BIND,
        );
    }
    Ok(Resolved {
        sysfs: PathBuf::from(sysfs_host),
        address,
        group,
        backend,
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// A fake host tree: PCI devices with groups and drivers, /dev/vfio nodes (plain files).
    pub struct FakeHost {
        pub dir: tempfile::TempDir,
    }

    impl FakeHost {
        pub fn new() -> Self {
            FakeHost {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        pub fn root(&self) -> &Path {
            self.dir.path()
        }

        pub fn file(&self, path: &str) {
            let p = self.root().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }

        /// A PCI device in `group` (if any), bound to `driver` (if any).
        pub fn device(&self, addr: &str, group: Option<u32>, driver: Option<&str>) {
            let r = self.root();
            let dev = r.join(format!("sys/devices/pci0000:00/{addr}"));
            std::fs::create_dir_all(&dev).unwrap();
            let devices = r.join("sys/bus/pci/devices");
            std::fs::create_dir_all(&devices).unwrap();
            symlink(&dev, devices.join(addr)).unwrap();
            if let Some(g) = group {
                let gdir = r.join(format!("sys/kernel/iommu_groups/{g}/devices"));
                std::fs::create_dir_all(&gdir).unwrap();
                symlink(&dev, gdir.join(addr)).unwrap();
                symlink(
                    r.join(format!("sys/kernel/iommu_groups/{g}")),
                    dev.join("iommu_group"),
                )
                .unwrap();
            }
            if let Some(d) = driver {
                let ddir = r.join(format!("sys/bus/pci/drivers/{d}"));
                std::fs::create_dir_all(&ddir).unwrap();
                symlink(&ddir, dev.join("driver")).unwrap();
            }
        }

        /// The iommufd cdev `vfio{n}` of `addr`.
        pub fn cdev(&self, addr: &str, n: u32) {
            let r = self.root();
            let dev = r.join(format!("sys/devices/pci0000:00/{addr}"));
            std::fs::create_dir_all(dev.join(format!("vfio-dev/vfio{n}"))).unwrap();
            let class = r.join(format!("sys/class/vfio-dev/vfio{n}"));
            std::fs::create_dir_all(&class).unwrap();
            symlink(&dev, class.join("device")).unwrap();
            self.file(&format!("/dev/vfio/devices/vfio{n}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::FakeHost;
    use super::*;

    /// Each row: the text, what it must parse to (None: refused). A bug would accept a device
    /// above 1f or a function above 7 (sysfs would then be asked for a device that cannot exist)
    /// or refuse the short form.
    #[test]
    fn parse_table() {
        let pci = |domain, bus, device, function| {
            Some(VfioSource::Pci(PciAddress {
                domain,
                bus,
                device,
                function,
            }))
        };
        let rows: &[(&str, Option<VfioSource>)] = &[
            ("0000:01:00.0", pci(0, 1, 0, 0)),
            ("01:00.0", pci(0, 1, 0, 0)),
            ("0001:FF:1f.7", pci(1, 0xff, 0x1f, 7)),
            ("10000:00:02.0", pci(0x10000, 0, 2, 0)),
            ("0000:01:20.0", None),
            ("0000:01:00.8", None),
            ("0000:01:00", None),
            ("0000:100:00.0", None),
            ("0000:01:00.0.1", None),
            ("x0000:01:00.0", None),
            ("", None),
            ("/dev/vfio/12", Some(VfioSource::Group(12))),
            ("/dev/vfio/devices/vfio3", Some(VfioSource::Cdev(3))),
            ("/dev/vfio/vfio", None),
            ("/dev/vfio/", None),
            ("/dev/vfio/devices/vfio", None),
            ("/dev/vfio/1/2", None),
            ("/sys/bus/pci/devices/0000:01:00.0", None),
        ];
        for (text, want) in rows {
            let got = text.parse::<VfioSource>().ok();
            assert_eq!(&got, want, "{text:?}");
            if let Some(src) = got {
                // Display is canonical and parses back to the same source.
                assert_eq!(src.to_string().parse::<VfioSource>().unwrap(), src);
            }
        }
    }

    /// Each row: a host tree, the source, and the piece resolution must blame (or the backend
    /// it must pick). A bug would pick a backend whose device node is missing, or run a device
    /// still bound to its host driver.
    #[test]
    fn resolution_table() {
        const A: &str = "0000:01:00.0";
        type Setup = fn(&FakeHost);
        let rows: &[(&str, Setup, &str, Result<Backend, &str>)] = &[
            (
                "no VFIO in the kernel",
                |_| {},
                A,
                Err("neither /dev/vfio/vfio nor /dev/iommu"),
            ),
            (
                "no such device",
                |h| h.file("/dev/vfio/vfio"),
                A,
                Err("no PCI device 0000:01:00.0"),
            ),
            (
                "IOMMU off",
                |h| {
                    h.file("/dev/vfio/vfio");
                    h.device(A, None, Some("nvme"));
                },
                A,
                Err("has no IOMMU group"),
            ),
            (
                "bound to its host driver",
                |h| {
                    h.file("/dev/vfio/vfio");
                    h.device(A, Some(7), Some("nvme"));
                },
                A,
                Err("bound to nvme, not vfio-pci"),
            ),
            (
                "unbound",
                |h| {
                    h.file("/dev/vfio/vfio");
                    h.device(A, Some(7), None);
                },
                A,
                Err("bound to no driver"),
            ),
            (
                "group not viable",
                |h| {
                    h.file("/dev/vfio/vfio");
                    h.device(A, Some(7), Some("vfio-pci"));
                    h.device("0000:01:00.1", Some(7), Some("snd_hda_intel"));
                },
                A,
                Err("group 7 is not viable"),
            ),
            (
                "group node missing",
                |h| {
                    h.file("/dev/vfio/vfio");
                    h.device(A, Some(7), Some("vfio-pci"));
                },
                A,
                Err("/dev/vfio/7"),
            ),
            (
                "type1",
                |h| {
                    h.file("/dev/vfio/vfio");
                    h.file("/dev/vfio/7");
                    h.device(A, Some(7), Some("vfio-pci"));
                    h.device("0000:01:00.1", Some(7), None);
                },
                A,
                Ok(Backend::Type1),
            ),
            (
                "type1 by group",
                |h| {
                    h.file("/dev/vfio/vfio");
                    h.file("/dev/vfio/7");
                    h.device(A, Some(7), Some("vfio-pci"));
                },
                "/dev/vfio/7",
                Ok(Backend::Type1),
            ),
            (
                "group with no vfio-pci device",
                |h| {
                    h.file("/dev/vfio/vfio");
                    h.device(A, Some(7), Some("nvme"));
                },
                "/dev/vfio/7",
                Err("no device of IOMMU group 7 is bound to vfio-pci"),
            ),
            (
                "iommufd only, by address",
                |h| {
                    h.file("/dev/iommu");
                    h.device(A, Some(7), Some("vfio-pci"));
                    h.cdev(A, 0);
                },
                A,
                Ok(Backend::Iommufd),
            ),
            (
                "iommufd by cdev, even with a container",
                |h| {
                    h.file("/dev/iommu");
                    h.file("/dev/vfio/vfio");
                    h.device(A, Some(7), Some("vfio-pci"));
                    h.cdev(A, 0);
                },
                "/dev/vfio/devices/vfio0",
                Ok(Backend::Iommufd),
            ),
            (
                "iommufd without a cdev",
                |h| {
                    h.file("/dev/iommu");
                    h.device(A, Some(7), Some("vfio-pci"));
                },
                A,
                Err("has no iommufd cdev"),
            ),
        ];
        for (what, setup, source, want) in rows {
            let host = FakeHost::new();
            setup(&host);
            let got = resolve(&source.parse().unwrap(), &HostPaths::under(host.root()));
            match (want, got) {
                (Ok(b), Ok(r)) => {
                    assert_eq!(r.backend, *b, "{what}");
                    assert_eq!(
                        (r.address.as_str(), r.group),
                        (A, 7),
                        "{what}: resolved the wrong device"
                    );
                }
                (Err(needle), Err(m)) => {
                    assert!(m.to_string().contains(needle), "{what}: {m}")
                }
                (want, got) => panic!("{what}: want {want:?}, got {got:?}"),
            }
        }
    }
}
