//! `Caps`: what this host can do for the lab, probed once, each answer with its evidence and, when
//! missing, one line saying what to do.
//!
//! It owns the probes. Probes only look: they read files, open devices and close them, create an
//! io_uring and a userfaultfd and close them. They never write a knob, mount anything, or add swap
//! (opening a sysfs/debugfs file for writing and closing it without a write changes nothing).
//! `Caps::probe` never panics: a probe that fails is a capability marked unavailable with the
//! error in its detail.
//!
//! KVM flavour: `/sys/module/kvm_pvm` present means KVM-PVM (a software, paravirtualized KVM: it
//! runs where there is no VT-x/SVM, e.g. inside a cloud VM, and emulates guest CPL0 code; see
//! docs/architecture.md, host facts); else `kvm_intel` means VT-x and `kvm_amd` SVM; with no vendor module (built in)
//! the `vmx`/`svm` flags of `/proc/cpuinfo` decide; else unknown. The module check wins over the
//! flags because a nested or PVM host may show a flag it does not use, and PVM cannot be loaded
//! alongside a hardware vendor module.
//!
//! VFIO is four entries: `vfio` (the container `/dev/vfio/vfio` and the VFIO modules), `iommu`
//! (the IOMMU type from `/sys/class/iommu`, the groups in `/sys/kernel/iommu_groups` and their
//! default domain type), `vfio_groups` (every group, its devices and their drivers from
//! `/sys/bus/pci/devices/*/driver`, and whether `/dev/vfio/N` exists: available when one group
//! is usable by `pin = "vfio"`), and `iommufd` (`/dev/iommu` and `/dev/vfio/devices`). They are
//! probed under a root (`/` on a host) so tests can build a fake tree.
//!
//! Limits: debugfs is judged only where it is mounted (`/sys/kernel/debug`); probing an unmounted
//! one would need a mount, which a probe does not do. "swap" is available when swap is active *or*
//! a swapfile can be added (swap support in the kernel and CAP_SYS_ADMIN); whether the chosen
//! directory's filesystem accepts a swapfile is known only by `Swapfile::create`. "tracefs" is
//! available when mounted or mountable (listed in /proc/filesystems, CAP_SYS_ADMIN).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use serde::Serialize;

use crate::pin::vfio::source::{self as vfio_source, HostPaths};

/// Errors of this module. `probe` never fails; these are for the JSON rendering.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serializing capabilities to JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One capability: stable name, whether the lab can use it, why, and what to do when not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capability {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// Which KVM implementation serves `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KvmFlavor {
    /// KVM-PVM: software virtualization, no VT-x/SVM.
    Pvm,
    /// Intel VT-x (`kvm_intel`).
    Vmx,
    /// AMD SVM (`kvm_amd`).
    Svm,
    Unknown,
}

/// Capability bits we care about, from `linux/capability.h`.
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;

/// The host's capabilities; see the module header.
#[derive(Debug, Clone, Serialize)]
pub struct Caps {
    pub kvm_flavor: KvmFlavor,
    pub euid: u32,
    pub cap_sys_admin: bool,
    pub cap_ipc_lock: bool,
    pub cap_sys_resource: bool,
    /// `[bracketed]` value of `transparent_hugepage/enabled`, if the file exists.
    pub thp_enabled: Option<String>,
    /// `[bracketed]` value of `transparent_hugepage/defrag`, if the file exists.
    pub thp_defrag: Option<String>,
    /// Active swap (SwapTotal), KiB.
    pub swap_total_kib: u64,
    /// Mount point of tracefs, if mounted.
    pub tracefs_mount: Option<String>,
    entries: Vec<Capability>,
}

/// The order and names of [`Caps::report`].
pub const NAMES: [&str; 13] = [
    "kvm",
    "vfio",
    "iommu",
    "vfio_groups",
    "iommufd",
    "io_uring",
    "root",
    "thp",
    "ksm",
    "swap",
    "tracefs",
    "debugfs",
    "userfaultfd",
];

fn cap(name: &'static str, available: bool, detail: String, fix: Option<&str>) -> Capability {
    Capability {
        name,
        available,
        detail,
        fix: if available {
            None
        } else {
            fix.map(str::to_string)
        },
    }
}

/// The KVM flavour from loaded modules and CPU flags (see the module header).
pub fn decide_kvm_flavor(modules: &[&str], cpu_flags: &[&str]) -> (KvmFlavor, String) {
    let has = |m: &str| modules.contains(&m);
    if has("kvm_pvm") {
        return (KvmFlavor::Pvm, "module kvm_pvm loaded".into());
    }
    if has("kvm_intel") {
        return (KvmFlavor::Vmx, "module kvm_intel loaded".into());
    }
    if has("kvm_amd") {
        return (KvmFlavor::Svm, "module kvm_amd loaded".into());
    }
    if cpu_flags.contains(&"vmx") {
        return (KvmFlavor::Vmx, "no vendor module; cpu flag vmx".into());
    }
    if cpu_flags.contains(&"svm") {
        return (KvmFlavor::Svm, "no vendor module; cpu flag svm".into());
    }
    (
        KvmFlavor::Unknown,
        "no kvm_pvm/kvm_intel/kvm_amd module, no vmx/svm flag".into(),
    )
}

/// The effective capability set from `/proc/self/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn bracketed(path: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| super::knobs::normalize(&s))
}

fn probe_kvm() -> (Capability, KvmFlavor) {
    let modules: Vec<&str> = ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .collect();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .map(|l| {
            l.trim_start_matches([' ', '\t', ':'])
                .split_whitespace()
                .collect()
        })
        .unwrap_or_default();
    let (flavor, why) = decide_kvm_flavor(&modules, &flags);
    let fix = "load a KVM module (modprobe kvm_intel / kvm_amd, or kvm_pvm on a host without VT-x) and run as root";
    if !Path::new("/dev/kvm").exists() {
        let detail = format!("/dev/kvm missing ({why})");
        return (cap("kvm", false, detail, Some(fix)), flavor);
    }
    match kvm_ioctls::Kvm::new() {
        Ok(kvm) => {
            let detail = format!(
                "/dev/kvm opens, API {}, {flavor:?} ({why})",
                kvm.get_api_version()
            );
            (cap("kvm", true, detail, None), flavor)
        }
        Err(e) => {
            let detail = format!("/dev/kvm exists but does not open: {e} ({why})");
            (cap("kvm", false, detail, Some(fix)), flavor)
        }
    }
}

/// The four VFIO entries (see the module header), probed under `host`.
pub fn probe_vfio(host: &HostPaths) -> [Capability; 4] {
    let modules: Vec<String> = ["vfio", "vfio_pci", "vfio_iommu_type1", "iommufd"]
        .iter()
        .filter(|m| host.exists(&format!("/sys/module/{m}")))
        .map(|m| m.to_string())
        .collect();
    let modules = if modules.is_empty() {
        "no VFIO module loaded".to_string()
    } else {
        format!("modules: {}", modules.join(", "))
    };
    let container = {
        let path = host.at("/dev/vfio/vfio");
        if !path.exists() {
            cap(
                "vfio",
                false,
                format!("/dev/vfio/vfio missing; {modules}"),
                Some(vfio_source::FIX_KERNEL),
            )
        } else {
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(_) => cap(
                    "vfio",
                    true,
                    format!("/dev/vfio/vfio opens; {modules}"),
                    None,
                ),
                Err(e) => cap(
                    "vfio",
                    false,
                    format!("/dev/vfio/vfio: {e}; {modules}"),
                    Some("run as root (the container needs read-write access)"),
                ),
            }
        }
    };

    let groups = host.groups();
    let iommu = {
        let mut units: Vec<String> = fs::read_dir(host.at("/sys/class/iommu"))
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        units.sort();
        let kind = match units.first().map(String::as_str) {
            Some(u) if u.starts_with("dmar") => "Intel VT-d",
            Some(u) if u.starts_with("ivhd") => "AMD-Vi",
            Some(_) => "IOMMU",
            None => "no IOMMU unit in /sys/class/iommu",
        };
        let domain = groups
            .first()
            .and_then(|g| {
                fs::read_to_string(host.at(&format!("/sys/kernel/iommu_groups/{g}/type"))).ok()
            })
            .map(|t| format!(", default domain {}", t.trim()))
            .unwrap_or_default();
        let detail = format!(
            "{kind}{}; {} IOMMU groups{domain}",
            if units.is_empty() {
                String::new()
            } else {
                format!(" ({})", units.join(", "))
            },
            groups.len()
        );
        cap(
            "iommu",
            !groups.is_empty(),
            detail,
            Some(vfio_source::FIX_IOMMU),
        )
    };

    let group_list = {
        const SHOWN: usize = 32;
        let mut usable = Vec::new();
        let mut shown = Vec::new();
        for &g in &groups {
            let devices = host.group_devices(g);
            let drivers: Vec<Option<String>> = devices.iter().map(|d| host.driver(d)).collect();
            let node = host.exists(&format!("/dev/vfio/{g}"));
            let any_vfio = drivers.iter().any(|d| d.as_deref() == Some("vfio-pci"));
            let viable = drivers
                .iter()
                .all(|d| matches!(d.as_deref(), None | Some("vfio-pci")));
            if any_vfio && viable && node {
                usable.push(g);
            }
            if shown.len() < SHOWN {
                let devs: Vec<String> = devices
                    .iter()
                    .zip(&drivers)
                    .map(|(d, drv)| format!("{d}={}", drv.as_deref().unwrap_or("-")))
                    .collect();
                shown.push(format!(
                    "{g}: {}{}",
                    devs.join(" "),
                    if node { " [/dev/vfio]" } else { "" }
                ));
            }
        }
        let more = groups.len().saturating_sub(SHOWN);
        let detail = if groups.is_empty() {
            "no IOMMU groups".to_string()
        } else {
            format!(
                "usable by pin=vfio: {}; groups {}{}",
                if usable.is_empty() {
                    "none".to_string()
                } else {
                    usable
                        .iter()
                        .map(|g| g.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                shown.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            )
        };
        let fix = if groups.is_empty() {
            vfio_source::FIX_IOMMU
        } else {
            vfio_source::FIX_BIND
        };
        cap("vfio_groups", !usable.is_empty(), detail, Some(fix))
    };

    let iommufd = {
        let cdevs = fs::read_dir(host.at("/dev/vfio/devices"))
            .map(|d| d.count())
            .unwrap_or(0);
        let dev = host.exists("/dev/iommu");
        cap(
            "iommufd",
            dev,
            format!(
                "/dev/iommu {}; {cdevs} VFIO device cdevs in /dev/vfio/devices",
                if dev { "present" } else { "missing" }
            ),
            Some(vfio_source::FIX_CDEV),
        )
    };
    [container, iommu, group_list, iommufd]
}

fn probe_io_uring() -> Capability {
    let disabled = fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "absent".into());
    let fix = "set /proc/sys/kernel/io_uring_disabled to 0 (or run as root / in io_uring_group when it is 1)";
    match io_uring::IoUring::new(2) {
        Ok(_) => cap(
            "io_uring",
            true,
            format!("io_uring_setup works (io_uring_disabled={disabled})"),
            None,
        ),
        Err(e) => cap(
            "io_uring",
            false,
            format!("io_uring_setup: {e} (io_uring_disabled={disabled})"),
            Some(fix),
        ),
    }
}

fn probe_root() -> (Capability, u32, u64) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = parse_cap_eff(&status).unwrap_or(0);
    let bit = |b: u32| eff & (1 << b) != 0;
    let yn = |b: bool| if b { "yes" } else { "no" };
    let detail = format!(
        "euid {euid}, CapEff {eff:#x}: CAP_SYS_ADMIN {}, CAP_IPC_LOCK {}, CAP_SYS_RESOURCE {}",
        yn(bit(CAP_SYS_ADMIN)),
        yn(bit(CAP_IPC_LOCK)),
        yn(bit(CAP_SYS_RESOURCE))
    );
    let ok = bit(CAP_SYS_ADMIN) && bit(CAP_IPC_LOCK);
    let c = cap(
        "root",
        ok,
        detail,
        Some("run as root (sudo) with CAP_SYS_ADMIN and CAP_IPC_LOCK"),
    );
    (c, euid, eff)
}

fn probe_thp() -> (Capability, Option<String>, Option<String>) {
    let enabled = bracketed("/sys/kernel/mm/transparent_hugepage/enabled");
    let defrag = bracketed("/sys/kernel/mm/transparent_hugepage/defrag");
    let fix = "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (kernel needs CONFIG_TRANSPARENT_HUGEPAGE)";
    let c = match &enabled {
        None => cap(
            "thp",
            false,
            "transparent_hugepage not in sysfs".into(),
            Some(fix),
        ),
        Some(mode) => cap(
            "thp",
            mode != "never",
            format!(
                "enabled={mode} defrag={}",
                defrag.as_deref().unwrap_or("absent")
            ),
            Some(fix),
        ),
    };
    (c, enabled, defrag)
}

fn probe_ksm() -> Capability {
    let run = Path::new(super::ksm::KSM_DIR).join("run");
    let fix = "needs CONFIG_KSM and root (/sys/kernel/mm/ksm/run writable)";
    if !run.exists() {
        return cap(
            "ksm",
            false,
            format!("{} missing", run.display()),
            Some(fix),
        );
    }
    let state = bracketed(&run.to_string_lossy()).unwrap_or_default();
    // Opening for write and closing without writing changes nothing.
    match OpenOptions::new().write(true).open(&run) {
        Ok(_) => cap("ksm", true, format!("run={state}, writable"), None),
        Err(e) => cap(
            "ksm",
            false,
            format!("run={state}, not writable: {e}"),
            Some(fix),
        ),
    }
}

fn probe_swap(cap_sys_admin: bool) -> (Capability, u64) {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let areas = super::swap::active_swaps().map(|v| v.len()).unwrap_or(0);
    let kernel_swap = Path::new("/proc/swaps").exists();
    let addable = kernel_swap && cap_sys_admin;
    let detail = format!(
        "{total} kB active in {areas} area(s); swapfile can be added: {}",
        if addable {
            "yes (kernel swap, CAP_SYS_ADMIN)"
        } else if kernel_swap {
            "no (needs CAP_SYS_ADMIN)"
        } else {
            "no (kernel without CONFIG_SWAP)"
        }
    );
    let c = cap(
        "swap",
        total > 0 || addable,
        detail,
        Some("run as root on a kernel with CONFIG_SWAP (pinlab adds its own swapfile)"),
    );
    (c, total)
}

fn probe_tracefs(cap_sys_admin: bool) -> (Capability, Option<String>) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mount = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "tracefs").then(|| f[1].to_string())
    });
    let known = fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("tracefs"));
    let fix = "mount -t tracefs nodev /sys/kernel/tracing (kernel needs CONFIG_TRACING)";
    let c = match &mount {
        Some(m) => cap("tracefs", true, format!("mounted at {m}"), None),
        None if known && cap_sys_admin => cap(
            "tracefs",
            true,
            "not mounted; mountable (in /proc/filesystems, CAP_SYS_ADMIN)".into(),
            None,
        ),
        None => cap(
            "tracefs",
            false,
            format!("not mounted; in /proc/filesystems: {known}"),
            Some(fix),
        ),
    };
    (c, mount)
}

fn probe_debugfs() -> Capability {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/kernel/debug" && f[2] == "debugfs"
    });
    let lockdown = bracketed("/sys/kernel/security/lockdown");
    let lock_note = match &lockdown {
        Some(l) => format!("lockdown={l}"),
        None => "lockdown state unknown (securityfs not mounted)".into(),
    };
    if !mounted {
        return cap(
            "debugfs",
            false,
            format!("not mounted at /sys/kernel/debug; {lock_note}"),
            Some("mount -t debugfs none /sys/kernel/debug; under kernel lockdown it stays read-only (boot with lockdown=none)"),
        );
    }
    let target = "/sys/kernel/debug/split_huge_pages";
    // Opening for write and closing without writing splits nothing.
    match OpenOptions::new().write(true).open(target) {
        Ok(_) => cap("debugfs", true, format!("{target} opens for write"), None),
        Err(e) => cap(
            "debugfs",
            false,
            format!("{target}: {e}; {lock_note}"),
            Some(if e.raw_os_error() == Some(libc::EPERM) {
                "kernel lockdown makes debugfs read-only: boot with lockdown=none (folio-split scenarios skip)"
            } else {
                "kernel needs CONFIG_DEBUG_FS and CONFIG_TRANSPARENT_HUGEPAGE"
            }),
        ),
    }
}

fn probe_userfaultfd() -> Capability {
    const UFFD_USER_MODE_ONLY: libc::c_long = 1;
    let dev = Path::new("/dev/userfaultfd").exists();
    // SAFETY: userfaultfd(2) takes flags only and returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC as libc::c_long | UFFD_USER_MODE_ONLY,
        )
    };
    if fd >= 0 {
        // SAFETY: the descriptor was just returned to us and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let n = owned.as_raw_fd();
        drop(owned);
        cap(
            "userfaultfd",
            true,
            format!("userfaultfd(2) works (fd {n}); /dev/userfaultfd present: {dev}"),
            None,
        )
    } else {
        let e = std::io::Error::last_os_error();
        cap(
            "userfaultfd",
            false,
            format!("userfaultfd(2): {e}; /dev/userfaultfd present: {dev}"),
            Some("kernel needs CONFIG_USERFAULTFD; unprivileged use needs vm.unprivileged_userfaultfd=1"),
        )
    }
}

impl Caps {
    /// Probes everything once. Never panics; see the module header for what probing touches.
    pub fn probe() -> Caps {
        let (kvm, kvm_flavor) = probe_kvm();
        let (root, euid, eff) = probe_root();
        let bit = |b: u32| eff & (1 << b) != 0;
        let (thp, thp_enabled, thp_defrag) = probe_thp();
        let (swap, swap_total_kib) = probe_swap(bit(CAP_SYS_ADMIN));
        let (tracefs, tracefs_mount) = probe_tracefs(bit(CAP_SYS_ADMIN));
        let [vfio, iommu, vfio_groups, iommufd] = probe_vfio(&HostPaths::default());
        let entries = vec![
            kvm,
            vfio,
            iommu,
            vfio_groups,
            iommufd,
            probe_io_uring(),
            root,
            thp,
            probe_ksm(),
            swap,
            tracefs,
            probe_debugfs(),
            probe_userfaultfd(),
        ];
        Caps {
            kvm_flavor,
            euid,
            cap_sys_admin: bit(CAP_SYS_ADMIN),
            cap_ipc_lock: bit(CAP_IPC_LOCK),
            cap_sys_resource: bit(CAP_SYS_RESOURCE),
            thp_enabled,
            thp_defrag,
            swap_total_kib,
            tracefs_mount,
            entries,
        }
    }

    /// One entry per capability, in the order of [`NAMES`].
    pub fn report(&self) -> Vec<Capability> {
        self.entries.clone()
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&Capability> {
        self.entries.iter().find(|c| c.name == name)
    }

    /// Whether `name` is available (false for an unknown name).
    pub fn available(&self, name: &str) -> bool {
        self.get(name).is_some_and(|c| c.available)
    }

    /// The report as a JSON array.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(&self.entries)?)
    }

    /// One line per capability: name, yes/no, detail, and the fix when missing.
    pub fn render_text(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.entries {
            write!(
                f,
                "{:<12} {:<3} {}",
                c.name,
                if c.available { "yes" } else { "no" },
                c.detail
            )?;
            if let Some(fix) = &c.fix {
                write!(f, " -- fix: {fix}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_flavor_table() {
        // (modules, cpu flags, flavour): a bug would call a PVM host hardware-virtualized
        // (and expect CPL0 guest code to run natively) or the reverse.
        let cases: [(&[&str], &[&str], KvmFlavor); 6] = [
            (&["kvm_pvm"], &[], KvmFlavor::Pvm),
            (&["kvm_pvm"], &["vmx"], KvmFlavor::Pvm),
            (&["kvm_intel"], &["vmx"], KvmFlavor::Vmx),
            (&["kvm_amd"], &["svm"], KvmFlavor::Svm),
            (&[], &["fpu", "svm"], KvmFlavor::Svm),
            (&[], &["fpu", "hypervisor"], KvmFlavor::Unknown),
        ];
        for (modules, flags, want) in cases {
            assert_eq!(
                decide_kvm_flavor(modules, flags).0,
                want,
                "{modules:?} {flags:?}"
            );
        }
    }

    #[test]
    fn cap_eff_table() {
        let cases = [
            ("Name:\tx\nCapEff:\t000001fffeffffff\n", Some(0x1fffeffffff)),
            ("CapEff:\t0000000000000000\n", Some(0)),
            ("CapPrm:\t00ff\n", None),
            ("CapEff:\tzz\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_cap_eff(text), want, "{text:?}");
        }
    }

    #[test]
    fn probe_reports_every_name_once_in_order_and_fix_only_when_missing() {
        let caps = Caps::probe();
        let names: Vec<&str> = caps.report().iter().map(|c| c.name).collect();
        assert_eq!(names, NAMES);
        for c in caps.report() {
            assert_eq!(c.fix.is_some(), !c.available, "{c:?}");
        }
        let text = caps.render_text();
        eprintln!("{text}");
        assert_eq!(text.lines().count(), NAMES.len());
        let json: serde_json::Value = serde_json::from_str(&caps.to_json().unwrap()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), NAMES.len());
        assert!(!caps.available("no-such-capability"));
    }

    /// A fake host with VT-d, one group usable by pin=vfio and one still owned by its host
    /// driver. A bug would call the second usable, miss the first, or report an IOMMU without
    /// groups as available.
    #[test]
    fn vfio_entries_on_a_fake_host() {
        use crate::pin::vfio::source::test_support::FakeHost;
        let h = FakeHost::new();
        let paths = HostPaths::under(h.root());
        let [c, i, g, f] = probe_vfio(&paths);
        assert!(!c.available && !i.available && !g.available && !f.available);
        assert_eq!(c.fix.as_deref(), Some(vfio_source::FIX_KERNEL));
        assert_eq!(i.fix.as_deref(), Some(vfio_source::FIX_IOMMU));

        h.file("/dev/vfio/vfio");
        h.file("/dev/vfio/7");
        std::fs::create_dir_all(h.root().join("sys/class/iommu/dmar0")).unwrap();
        std::fs::create_dir_all(h.root().join("sys/module/vfio_pci")).unwrap();
        h.device("0000:01:00.0", Some(7), Some("vfio-pci"));
        h.device("0000:01:00.1", Some(7), None);
        h.device("0000:02:00.0", Some(8), Some("nvme"));
        std::fs::write(h.root().join("sys/kernel/iommu_groups/7/type"), "DMA\n").unwrap();
        let [c, i, g, f] = probe_vfio(&paths);
        assert!(c.available, "{c:?}");
        assert!(c.detail.contains("vfio_pci"), "{c:?}");
        assert!(
            i.available && i.detail.contains("Intel VT-d") && i.detail.contains("2 IOMMU groups"),
            "{i:?}"
        );
        assert!(i.detail.contains("default domain DMA"), "{i:?}");
        assert!(g.available, "{g:?}");
        assert!(g.detail.starts_with("usable by pin=vfio: 7;"), "{g:?}");
        assert!(g.detail.contains("0000:02:00.0=nvme"), "{g:?}");
        assert!(g.detail.contains("0000:01:00.1=-"), "{g:?}");
        assert!(!f.available && f.fix.is_some(), "{f:?}");
    }

    #[test]
    fn probe_agrees_with_this_host() {
        // Facts of the lab machine (docs/architecture.md, host facts); each is checked only where its evidence exists.
        let caps = Caps::probe();
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(caps.kvm_flavor, KvmFlavor::Pvm);
        }
        if !Path::new("/dev/vfio/vfio").exists() {
            assert!(!caps.available("vfio"));
            assert!(!caps.available("vfio_groups"));
        }
        if !Path::new("/dev/iommu").exists() {
            assert!(!caps.available("iommufd"));
        }
        if Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            assert!(caps.thp_enabled.is_some());
        }
    }
}
