//! The scenario: what one pinlab run means, as data.
//!
//! A scenario is written once (a TOML file in `configs/`) and read by both executors: the live one
//! (a real KVM guest, real pins, real host actions) and the model (`replay`, each kernel era's
//! rules). This module owns the typed vocabulary — VM shape, pin mechanism, workload, host
//! perturbations, expected verdicts — and the validation that runs after parsing. It does not
//! read files (that is `config`) and does not run anything.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::layout::{self, Layout};
use crate::units::{ByteSize, Duration};

/// Why a scenario is not valid, after it parsed. `key` is the dotted TOML key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("key `{key}`: {reason}")]
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

/// A validation error. Its reason quotes values from the file, which may hold line breaks or
/// other control characters: they are escaped (`\n`), so every error stays one line (found by
/// libFuzzer: a `device.vfio` value with line breaks made a multi-line error).
fn invalid(key: &str, reason: impl Into<String>) -> Invalid {
    let mut one_line = String::new();
    for c in reason.into().chars() {
        match c.is_control() {
            true => one_line.extend(c.escape_debug()),
            false => one_line.push(c),
        }
    }
    Invalid {
        key: key.to_string(),
        reason: one_line,
    }
}

/// A name that is none of a vocabulary's words (`--pin dma-buf`, `--perturb fork`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown {what} `{name}` (one of: {choices})")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
    pub choices: String,
}

fn unknown<'a>(
    what: &'static str,
    name: &str,
    choices: impl Iterator<Item = &'a str>,
) -> UnknownName {
    UnknownName {
        what,
        name: name.to_string(),
        choices: choices.collect::<Vec<_>>().join(", "),
    }
}

/// A verdict about the kernel, or about the lab's ability to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every device write was seen by the guest and every guest write by the device.
    Coherent,
    /// Device and guest saw different memory.
    Diverged,
    /// The host lacks what the scenario needs.
    Skipped,
    /// The lab itself failed; never a statement about the kernel.
    Error,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Coherent => "coherent",
            Verdict::Diverged => "diverged",
            Verdict::Skipped => "skipped",
            Verdict::Error => "error",
        })
    }
}

/// How the device holds guest pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinKind {
    /// io_uring registered buffers: FOLL_PIN | FOLL_LONGTERM, the class of pin VFIO takes.
    #[default]
    IoUring,
    /// Page references held by pipes (FOLL_GET). Device reads only.
    Vmsplice,
    /// No pin: the device goes through the VMM's own mapping. The control group.
    Mapping,
    /// VFIO passthrough: all of guest RAM mapped with VFIO_IOMMU_MAP_DMA at IOVA = GPA (a real
    /// type1 or iommufd pin) for the device `[device] vfio` names. The lab cannot make that
    /// device DMA, so its transfers are `unsupported` and the verdict rests on PFN evidence.
    Vfio,
}

impl PinKind {
    /// The mechanisms every host with KVM can run (the emulated device's); `Vfio` needs a
    /// device bound to vfio-pci and is not among them.
    pub const ALL: [PinKind; 3] = [PinKind::IoUring, PinKind::Vmsplice, PinKind::Mapping];

    pub fn name(self) -> &'static str {
        match self {
            PinKind::IoUring => "io-uring",
            PinKind::Vmsplice => "vmsplice",
            PinKind::Mapping => "mapping",
            PinKind::Vfio => "vfio",
        }
    }
}

impl fmt::Display for PinKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PinKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        let all = || PinKind::ALL.into_iter().chain([PinKind::Vfio]);
        all()
            .find(|k| k.name() == s)
            .ok_or_else(|| unknown("pin mechanism", s, all().map(PinKind::name)))
    }
}

/// What the guest program does. `Dma` is the real workload; the others exist for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestMode {
    /// Map the DMA region, run write/DMA/verify rounds, report results.
    #[default]
    Dma,
    /// Boot, print a line, report done: the smallest useful guest.
    Boot,
    /// Spin forever without a doorbell: the watchdog must stop it.
    Spin,
    /// Send malformed requests of every class; the VMM must reject and count each.
    Hostile,
    /// Print console lines forever: the VMM's console must stay bounded and the watchdog fire.
    ConsoleFlood,
    /// The DMA workload with every rounds-start and round-done marker repeated: each host action
    /// must run once.
    PhaseRepeat,
    /// Seeded random hostile traffic (`workload.ops` operations: descriptors, doorbells, maps,
    /// unmaps, DMA, setups, phase markers, console records, port I/O) interleaved with valid
    /// traffic the guest checks; the VMM must survive and the valid traffic stay correct.
    Fuzz,
}

impl GuestMode {
    /// Whether the guest program of this mode rings the device doorbells. The VMM registers
    /// the doorbells (KVM_IOEVENTFD) and readies the device thread only then: each registration
    /// leaves KVM an SRCU grace period of 7-15 ms to wait for before the VM can be destroyed
    /// (`srcu_barrier` in `kvm_destroy_vm`), which a run that ends within it pays at exit. A
    /// write to a doorbell port without one exits to the VMM as an unknown port, and resumes.
    pub fn rings_doorbells(self) -> bool {
        match self {
            GuestMode::Dma | GuestMode::Hostile | GuestMode::PhaseRepeat | GuestMode::Fuzz => true,
            GuestMode::Boot | GuestMode::Spin | GuestMode::ConsoleFlood => false,
        }
    }
}

/// Which DMA directions each round exercises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Directions {
    #[default]
    Both,
    /// Device reads only (guest writes, device checksums).
    FromGuest,
    /// Device writes only (device fills, guest verifies).
    ToGuest,
}

/// A host action on guest RAM. The names are the CLI's and the configs'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Fork; the child stays alive until after the guest's next round; the guest's writes fault
    /// in the parent (COW).
    ForkParentWrite,
    /// Fork; the child writes its copy of the pinned range, then exits.
    ForkChildWrite,
    /// Fork; the child exits at once; then the guest writes (a write fault on a page that was
    /// shared).
    ForkChildExit,
    /// PROT_READ then PROT_READ|PROT_WRITE on part of a THP (PMD split + write-protect).
    MprotectRoundtrip,
    /// MADV_DONTNEED on one 4 KiB page of the THP outside the DMA region (PMD split).
    SplitPmd,
    /// Try to split the compound page itself.
    SplitFolio,
    /// Seed 002: fork, PMD split, the child unmaps one half and the parent the other, then write.
    Kirill,
    /// MADV_COLLAPSE after a split.
    Collapse,
    /// KSM merge of identical content.
    Ksm,
    /// Finding F1 (issue 16): a helper process standing for another VM holds copies of the
    /// region's pages and control pages; KSM runs with the mms entering in `perturb.ksm_order`.
    KsmShadow,
    /// /proc/sys/vm/compact_memory.
    Compact,
    /// MADV_PAGEOUT (needs swap).
    Pageout,
    /// Move guest RAM with mremap and re-point the memslot.
    Mremap,
    /// mremap with MREMAP_DONTUNMAP.
    MremapDontunmap,
    /// userfaultfd write-protect; a handler removes the protection on fault.
    UffdWp,
    /// MADV_DONTNEED on the DMA region itself.
    Dontneed,
    /// Seed 001: >= 1024 plain references on a small page, then fork.
    #[serde(rename = "bias-1024")]
    Bias1024,
}

impl Action {
    pub const ALL: [Action; 17] = [
        Action::ForkParentWrite,
        Action::ForkChildWrite,
        Action::ForkChildExit,
        Action::MprotectRoundtrip,
        Action::SplitPmd,
        Action::SplitFolio,
        Action::Kirill,
        Action::Collapse,
        Action::Ksm,
        Action::KsmShadow,
        Action::Compact,
        Action::Pageout,
        Action::Mremap,
        Action::MremapDontunmap,
        Action::UffdWp,
        Action::Dontneed,
        Action::Bias1024,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::ForkParentWrite => "fork-parent-write",
            Action::ForkChildWrite => "fork-child-write",
            Action::ForkChildExit => "fork-child-exit",
            Action::MprotectRoundtrip => "mprotect-roundtrip",
            Action::SplitPmd => "split-pmd",
            Action::SplitFolio => "split-folio",
            Action::Kirill => "kirill",
            Action::Collapse => "collapse",
            Action::Ksm => "ksm",
            Action::KsmShadow => "ksm-shadow",
            Action::Compact => "compact",
            Action::Pageout => "pageout",
            Action::Mremap => "mremap",
            Action::MremapDontunmap => "mremap-dontunmap",
            Action::UffdWp => "uffd-wp",
            Action::Dontneed => "dontneed",
            Action::Bias1024 => "bias-1024",
        }
    }

    /// Whether, off the vCPU thread (a storm), the action would race the running guest: it
    /// writes guest RAM (KSM's content fill), changes the memslot (mremap) or changes the
    /// protection of guest RAM under it (an mprotect round trip splits a PMD). Such actions run
    /// with the vCPU paused, as a VMM pauses vCPUs around a memory-map change.
    pub fn races_guest(self) -> bool {
        matches!(
            self,
            Action::Ksm
                | Action::Mremap
                | Action::MremapDontunmap
                | Action::MprotectRoundtrip
                | Action::Kirill
                | Action::Collapse
                | Action::SplitFolio
        )
    }

    /// Whether the action destroys the region's data as the guest sees it (KSM's content fill,
    /// a discard): harmless between rounds, where the guest writes every page afresh, but in a
    /// storm it must put the guest's data back (see perturb's `storm_action`).
    pub fn destroys_guest_data(self) -> bool {
        matches!(self, Action::Ksm | Action::Dontneed)
    }

    /// Whether the action changes a system-wide knob (runs are serialized across processes).
    pub fn touches_system_knobs(self) -> bool {
        matches!(
            self,
            Action::Ksm
                | Action::KsmShadow
                | Action::Compact
                | Action::Pageout
                | Action::SplitFolio
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Action {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Action::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| unknown("action", s, Action::ALL.iter().map(|a| a.name())))
    }
}

/// How guest RAM under the DMA region is backed when the device pins it: the memory axis of the
/// kernel's `tools/testing/selftests/mm/cow.c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryKind {
    /// THP mapped by one PMD (`vm.thp = true`).
    Thp,
    /// 4 KiB pages (`vm.thp = false`).
    Small,
    /// THP whose PMD was split before pinning: the compound page is kept, mapped by 512 PTEs.
    PteMappedThp,
}

impl MemoryKind {
    pub const ALL: [MemoryKind; 3] = [MemoryKind::Thp, MemoryKind::Small, MemoryKind::PteMappedThp];

    pub fn name(self) -> &'static str {
        match self {
            MemoryKind::Thp => "thp",
            MemoryKind::Small => "small",
            MemoryKind::PteMappedThp => "pte-mapped-thp",
        }
    }

    /// Whether guest RAM gets MADV_HUGEPAGE.
    pub fn thp(self) -> bool {
        self != MemoryKind::Small
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which process enters KSM first in `ksm-shadow` (`[perturb] ksm_order`). Processes that
/// become mergeable while ksmd is stopped are scanned in that order, and within one scan the
/// first copy of a content reached becomes the unstable tree's node for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KsmOrder {
    /// The VMM (the pinned region) first, the helper after it.
    #[default]
    PinnedFirst,
    /// The helper first, the VMM after it.
    ShadowFirst,
}

impl KsmOrder {
    pub fn name(self) -> &'static str {
        match self {
            KsmOrder::PinnedFirst => "pinned-first",
            KsmOrder::ShadowFirst => "shadow-first",
        }
    }
}

impl fmt::Display for KsmOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MemoryKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        MemoryKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| unknown("memory kind", s, MemoryKind::ALL.iter().map(|k| k.name())))
    }
}

/// `[vm]`: the guest's shape.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VmSpec {
    /// Guest RAM size; a multiple of 2 MiB, 8 MiB .. 4 GiB.
    pub memory: ByteSize,
    /// `MADV_HUGEPAGE` on guest RAM.
    pub thp: bool,
    /// `MADV_DONTFORK` on guest RAM (QEMU's mitigation).
    pub dontfork: bool,
    /// A guest that makes no progress for this long is stopped.
    pub watchdog: Duration,
    /// Fault all of guest RAM in before boot (MADV_POPULATE_WRITE), as a VMM that preallocates
    /// or a VFIO type1 map of all RAM would; THP coverage is measured over all of it.
    pub prefault: bool,
    /// How the region's RAM is backed when pinned; unset: `thp` decides (THP or small pages).
    /// Must agree with `thp` (`small` needs `thp = false`, the others `thp = true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_kind: Option<MemoryKind>,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            memory: ByteSize::mib(64),
            thp: true,
            dontfork: false,
            watchdog: Duration::from_secs(10),
            prefault: true,
            memory_kind: None,
        }
    }
}

impl VmSpec {
    /// The memory kind this VM has: `memory_kind`, or what `thp` means without it.
    pub fn memory_kind(&self) -> MemoryKind {
        self.memory_kind.unwrap_or(if self.thp {
            MemoryKind::Thp
        } else {
            MemoryKind::Small
        })
    }
}

/// `[device]`: how the device holds guest RAM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceSpec {
    pub pin: PinKind,
    /// With `pin = "vfio"`: the device, as a PCI address (`0000:01:00.0`), a VFIO group
    /// (`/dev/vfio/12`) or an iommufd device cdev (`/dev/vfio/devices/vfio0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vfio: Option<String>,
    /// io-uring: most SQEs the device keeps in flight per request (1..=MAX_QUEUE_DEPTH).
    pub queue_depth: u32,
}

/// Largest `[device] queue_depth`: the io-uring pin's ring holds this many entries.
pub const MAX_QUEUE_DEPTH: u32 = 64;
/// `[device] queue_depth` when a scenario does not say.
pub const DEFAULT_QUEUE_DEPTH: u32 = 64;

impl Default for DeviceSpec {
    fn default() -> Self {
        DeviceSpec::with_pin(PinKind::default())
    }
}

impl DeviceSpec {
    /// A device pinning with `pin`, everything else as a scenario that does not say.
    pub fn with_pin(pin: PinKind) -> Self {
        DeviceSpec {
            pin,
            vfio: None,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        }
    }
}

/// `[workload]`: what the guest does.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadSpec {
    pub mode: GuestMode,
    /// Write/DMA/verify rounds.
    pub rounds: u32,
    /// Size of the DMA region (a multiple of 4 KiB).
    pub region: ByteSize,
    /// Offset of the DMA region inside its 2 MiB huge page (a multiple of 4 KiB).
    pub region_offset: ByteSize,
    pub directions: Directions,
    /// Seed of the guest's patterns and, in fuzz mode, of its PRNG (default: pinlab's fixed
    /// seed): the same seed sends the same operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Fuzz mode: hostile operations to send, spread over the rounds (default
    /// `DEFAULT_FUZZ_OPS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<u64>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            mode: GuestMode::Dma,
            rounds: 100,
            region: ByteSize::mib(2),
            region_offset: ByteSize(0),
            directions: Directions::Both,
            seed: None,
            ops: None,
        }
    }
}

/// Fuzz mode's hostile operations when `workload.ops` is not given.
pub const DEFAULT_FUZZ_OPS: u64 = 100_000;
/// The most hostile operations one fuzz run may ask for.
pub const MAX_FUZZ_OPS: u64 = 100_000_000;

impl WorkloadSpec {
    /// The hostile operations the guest sends (0 outside fuzz mode).
    pub fn fuzz_ops(&self) -> u64 {
        match self.mode {
            GuestMode::Fuzz => self.ops.unwrap_or(DEFAULT_FUZZ_OPS),
            _ => 0,
        }
    }
}

/// `[perturb]`: host actions on guest RAM during the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PerturbSpec {
    /// Actions, run in order.
    pub actions: Vec<Action>,
    /// The actions run at the guest's phase marker after this round (1-based), before the next.
    pub after_round: u32,
    /// With `storm > 0`, the actions run this many times on a timer while rounds run instead.
    pub storm: u32,
    /// Interval between storm repetitions.
    pub interval: Duration,
    /// `ksm-shadow`: which process becomes mergeable first.
    pub ksm_order: KsmOrder,
}

impl Default for PerturbSpec {
    fn default() -> Self {
        PerturbSpec {
            actions: Vec::new(),
            after_round: 1,
            storm: 0,
            interval: Duration::from_millis(5),
            ksm_order: KsmOrder::PinnedFirst,
        }
    }
}

/// `[host]`: what the lab may set up on the host for this scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostSpec {
    /// Create, enable and finally remove a swapfile of this size.
    pub swap: Option<ByteSize>,
}

/// `[trace]`: host perf tracing for the run (docs/tracing.md); `--trace FILE` sets `file`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TraceSpec {
    /// Where the Chrome trace-event JSON goes (the raw text beside it, `.ftrace.txt`); no file,
    /// no tracing.
    pub file: Option<std::path::PathBuf>,
    /// Per-CPU ring buffer (default: sized for guest RAM).
    pub buffer: Option<ByteSize>,
}

/// `[expect]`: what the scenario expects, per executor.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// The live kernel's verdict.
    pub live: Option<Verdict>,
    /// Per kernel era (the model's names, e.g. "4.5"): "coherent", "diverged", "n/a" or
    /// "invariant-broken:NAME". Checked by the model executor.
    pub model: BTreeMap<String, String>,
}

/// One scenario, as written in `configs/*.toml`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Defaults to the file's stem.
    #[serde(default)]
    pub name: String,
    /// What the scenario shows and which seed it comes from, quoting the claim it tests.
    #[serde(default)]
    pub about: String,
    /// Whether the live executor can run it (`false`: model only).
    #[serde(default = "yes")]
    pub live: bool,
    #[serde(default)]
    pub vm: VmSpec,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub workload: WorkloadSpec,
    #[serde(default)]
    pub perturb: PerturbSpec,
    #[serde(default)]
    pub host: HostSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub trace: TraceSpec,
    #[serde(default)]
    pub expect: Expect,
    /// The model executor's own description (steps, threads); owned by `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<toml::Table>,
}

fn yes() -> bool {
    true
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// Largest region `ksm-shadow` copies into its helper (which holds several copies of it).
pub const KSM_SHADOW_MAX_REGION: u64 = 64 << 20;

/// Smallest guest RAM: page tables, the guest image, its stack and one DMA huge page.
pub const MIN_MEMORY: u64 = 8 << 20;
/// Largest guest RAM: the guest identity-maps the first 4 GiB and descriptors carry 32-bit GPAs.
pub const MAX_MEMORY: u64 = 4 << 30;

impl Scenario {
    /// Checks what the types cannot: ranges, alignment and combinations.
    pub fn validate(&self) -> Result<(), Invalid> {
        use crate::addr::HUGE_PAGE_SIZE;
        let mem = self.vm.memory.0;
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&mem) {
            return Err(invalid(
                "vm.memory",
                format!("{} is outside 8MiB..4GiB", self.vm.memory),
            ));
        }
        if !mem.is_multiple_of(HUGE_PAGE_SIZE) {
            return Err(invalid("vm.memory", "must be a multiple of 2MiB"));
        }
        if let Some(kind) = self.vm.memory_kind {
            if kind.thp() != self.vm.thp {
                return Err(invalid(
                    "vm.memory_kind",
                    format!(
                        "`{kind}` needs thp = {}, but thp = {}",
                        kind.thp(),
                        self.vm.thp
                    ),
                ));
            }
            if kind == MemoryKind::PteMappedThp && !self.vm.prefault {
                return Err(invalid(
                    "vm.memory_kind",
                    "`pte-mapped-thp` splits the PMDs of prefaulted huge pages: needs prefault = true",
                ));
            }
        }
        if self.vm.watchdog.is_zero() {
            return Err(invalid("vm.watchdog", "must be greater than zero"));
        }
        let w = &self.workload;
        if let Err(e) = self.layout() {
            let key = match e {
                layout::Error::RegionOffset(_) => "workload.region_offset",
                _ => "workload.region",
            };
            return Err(invalid(key, e.to_string()));
        }
        if matches!(
            w.mode,
            GuestMode::Dma | GuestMode::PhaseRepeat | GuestMode::Fuzz
        ) && w.rounds == 0
        {
            return Err(invalid("workload.rounds", "must be at least 1"));
        }
        match (w.mode, w.ops) {
            (GuestMode::Fuzz, Some(n)) if !(1..=MAX_FUZZ_OPS).contains(&n) => {
                return Err(invalid(
                    "workload.ops",
                    format!("is {n}: must be within 1..={MAX_FUZZ_OPS}"),
                ))
            }
            (GuestMode::Fuzz, _) | (_, None) => {}
            (_, Some(_)) => return Err(invalid(
                "workload.ops",
                "counts the hostile operations of mode = \"fuzz\"; set the mode or drop the key",
            )),
        }
        let p = &self.perturb;
        if !p.actions.is_empty()
            && p.storm == 0
            && (p.after_round == 0 || p.after_round >= w.rounds)
        {
            let why = if w.rounds < 2 {
                format!(
                    "is {}, but with {} round(s) no round follows the actions to see their effect: use at least 2 rounds (workload.rounds / --rounds) and after_round = 1",
                    p.after_round, w.rounds
                )
            } else {
                format!(
                    "is {}: must be within 1..={} (the guest needs a round after the actions to see their effect)",
                    p.after_round,
                    w.rounds - 1
                )
            };
            return Err(invalid("perturb.after_round", why));
        }
        if p.storm > 0 && p.interval.is_zero() {
            return Err(invalid("perturb.interval", "must be greater than zero"));
        }
        self.validate_ksm_shadow()?;
        if !(1..=MAX_QUEUE_DEPTH).contains(&self.device.queue_depth) {
            return Err(invalid(
                "device.queue_depth",
                format!("must be within 1..={MAX_QUEUE_DEPTH}"),
            ));
        }
        if self.device.pin == PinKind::Vmsplice && w.directions == Directions::ToGuest {
            return Err(invalid(
                "workload.directions",
                "vmsplice holds references for device reads only; to-guest needs io-uring or mapping",
            ));
        }
        if let Some(b) = self.trace.buffer {
            if !(64 << 10..=1 << 30).contains(&b.0) {
                return Err(invalid(
                    "trace.buffer",
                    format!("{b} is outside 64KiB..1GiB"),
                ));
            }
        }
        match (self.device.pin, &self.device.vfio) {
            (PinKind::Vfio, None) => {
                return Err(invalid(
                    "device.vfio",
                    "pin = \"vfio\" needs the device: a PCI address (0000:01:00.0) or a VFIO group path (/dev/vfio/N)",
                ))
            }
            (PinKind::Vfio, Some(v)) => {
                if let Err(e) = v.parse::<crate::pin::vfio::source::VfioSource>() {
                    return Err(invalid("device.vfio", e.to_string()));
                }
            }
            (other, Some(_)) => {
                return Err(invalid(
                    "device.vfio",
                    format!("names a VFIO device, but device.pin is `{other}`: set pin = \"vfio\""),
                ))
            }
            (_, None) => {}
        }
        if self.live && self.expect.live.is_none() && !p.actions.is_empty() {
            return Err(invalid(
                "expect.live",
                "a live scenario with perturbations must say what it expects",
            ));
        }
        // The model's one check of `expect.model` (era keys, values), for `run` and `replay`.
        if let Err(e) = crate::model::expect::check(&self.expect.model) {
            let key = format!("expect.model.\"{}\"", e.key);
            return Err(invalid(&key, e.source.to_string()));
        }
        Ok(())
    }

    /// What `ksm-shadow` needs of the rest of the scenario: it runs once, at a phase (it waits
    /// for many KSM scans), over a region the helper can copy; with `shadow-first` this process
    /// must enter KSM after the helper, so no `ksm` action may run before it (an mm stays on
    /// KSM's list once it has entered).
    fn validate_ksm_shadow(&self) -> Result<(), Invalid> {
        let p = &self.perturb;
        let at = p.actions.iter().position(|&a| a == Action::KsmShadow);
        let Some(at) = at else {
            if p.ksm_order != KsmOrder::default() {
                return Err(invalid(
                    "perturb.ksm_order",
                    "only ksm-shadow reads it, and the actions have none",
                ));
            }
            return Ok(());
        };
        if p.actions
            .iter()
            .filter(|&&a| a == Action::KsmShadow)
            .count()
            > 1
        {
            return Err(invalid("perturb.actions", "ksm-shadow may run only once"));
        }
        if p.storm > 0 {
            return Err(invalid(
                "perturb.storm",
                "ksm-shadow waits for many KSM scans: run it at a phase (storm = 0)",
            ));
        }
        if self.workload.region.0 > KSM_SHADOW_MAX_REGION {
            return Err(invalid(
                "workload.region",
                format!(
                    "ksm-shadow copies the region into a helper process: at most {}",
                    ByteSize(KSM_SHADOW_MAX_REGION)
                ),
            ));
        }
        if p.ksm_order == KsmOrder::ShadowFirst && p.actions[..at].contains(&Action::Ksm) {
            return Err(invalid(
                "perturb.ksm_order",
                "shadow-first needs this process to enter KSM after the helper, but a ksm action runs before ksm-shadow",
            ));
        }
        Ok(())
    }

    /// Where the workload's region and its neighbours are in guest RAM.
    pub fn layout(&self) -> Result<Layout, layout::Error> {
        Layout::new(
            self.vm.memory.0,
            self.workload.region.0,
            self.workload.region_offset.0,
        )
    }

    /// The live expectation: stated, or `coherent` for an unperturbed run.
    pub fn expected_live(&self) -> Verdict {
        self.expect.live.unwrap_or(Verdict::Coherent)
    }
}

#[cfg(test)]
mod tests;
