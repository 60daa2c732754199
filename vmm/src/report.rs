//! The run's report: one JSON object (`--json`) or a short human summary.
//!
//! This module only shapes and prints what the runner and the oracle found; it decides nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::devices::iommu::PinEvidence;
use crate::oracle::{GuestSummary, HostileRow};
use crate::scenario::{PinKind, Verdict};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// From process start (the launch) to the guest's "done".
    pub launch_to_guest_done: Option<f64>,
    /// From the launch to the end of the first verified DMA round.
    pub launch_to_first_dma: Option<f64>,
    /// From the launch to the vCPU's first instruction (VM built, RAM faulted in).
    pub launch_to_guest_start: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DmaCounters {
    pub descriptors: u64,
    pub bytes_to_guest: u64,
    pub bytes_from_guest: u64,
    pub maps: u64,
    pub unmaps: u64,
    /// Rejected requests per status name.
    pub rejects: BTreeMap<&'static str, u64>,
}

/// THP-backed 4 KiB pages in each 2 MiB block of the prefaulted span of guest RAM (0 ..= 512),
/// measured at boot (after the prefault) and at the end: what `thp_coverage` and
/// `thp_coverage_end` sum. The span is `Outcome::prefaulted_bytes` from GPA 0: all of RAM when
/// the run needed it (a host action, the PTE split, VFIO), else the hot part alone.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ThpBlocks {
    pub boot: Option<Vec<u16>>,
    pub end: Option<Vec<u16>>,
}

impl ThpBlocks {
    /// Fraction of `ram_bytes` THP-backed at boot.
    pub fn coverage_at_boot(&self, ram_bytes: u64) -> Option<f64> {
        let pages = ram_bytes / crate::addr::PAGE_SIZE;
        self.boot
            .as_ref()
            .map(|b| crate::pfn::coverage_of_blocks(b, pages))
    }

    /// Fraction of `ram_bytes` THP-backed at the end.
    pub fn coverage_at_end(&self, ram_bytes: u64) -> Option<f64> {
        let pages = ram_bytes / crate::addr::PAGE_SIZE;
        self.end
            .as_ref()
            .map(|b| crate::pfn::coverage_of_blocks(b, pages))
    }
}

/// Everything one live run found.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub scenario: String,
    /// Always false: this is the live executor, not the model.
    pub model: bool,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub expected: Verdict,
    /// Where the expectation comes from: "scenario", "command line", or "model 5.19" (an
    /// ad-hoc composition the scenario's own expectation does not cover).
    pub expected_from: String,
    pub pin: PinKind,
    pub mode: crate::scenario::GuestMode,
    pub rounds: u32,
    pub memory_bytes: u64,
    pub thp: bool,
    /// Bytes of guest RAM, from GPA 0, the prefault faulted in (`None`: no prefault): all of
    /// RAM when the run needed it, else the part the guest touches first (`prefault`).
    pub prefaulted_bytes: Option<u64>,
    /// Fraction of the prefaulted span backed by THP at boot (measured: pagemap + kpageflags).
    pub thp_coverage: Option<f64>,
    /// The same at the end of the run (after any perturbation), over the same span.
    pub thp_coverage_end: Option<f64>,
    /// The same, per 2 MiB block of guest RAM.
    pub thp_blocks: ThpBlocks,
    pub device_write_lost_pages: u32,
    pub device_read_stale_pages: u32,
    pub pinned_pfns_changed_pages: usize,
    pub timings_ms: Timings,
    pub dma: DmaCounters,
    pub pins: Vec<PinEvidence>,
    pub guest: Option<GuestSummary>,
    pub hostile: Option<Vec<HostileRow>>,
    pub perturb: Vec<crate::scenario::Action>,
    pub evidence: Vec<crate::evidence::ActionEvidence>,
    pub console: Vec<String>,
    /// What the bounded console did not keep (lines, bytes, unreadable records).
    pub console_dropped: crate::console::Dropped,
    /// What happened when, on CLOCK_MONOTONIC.
    pub timeline: crate::timeline::Recorded,
    /// The kernel, its settings and the pinlab this was measured with.
    pub identity: crate::identity::Identity,
    /// How the storm went, when the actions ran as one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<crate::evidence::StormRun>,
    /// With `pin = "vfio"`: all of guest RAM's PFNs at MAP_DMA time against now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vfio: Option<crate::pin::vfio::Evidence>,
    /// Host perf tracing, when the run was traced (`--trace FILE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::TraceReport>,
}

impl Outcome {
    /// A run that never started: what the host lacks, in one line.
    pub fn skipped(scenario: &crate::scenario::Scenario, reason: String) -> Self {
        let mut o = Outcome::empty(scenario);
        o.verdict = Verdict::Skipped;
        o.reason = Some(reason);
        o
    }

    pub fn empty(s: &crate::scenario::Scenario) -> Self {
        Outcome {
            scenario: s.name.clone(),
            model: false,
            verdict: Verdict::Error,
            reason: None,
            expected: s.expected_live(),
            expected_from: "scenario".into(),
            pin: s.device.pin,
            mode: s.workload.mode,
            rounds: s.workload.rounds,
            memory_bytes: s.vm.memory.0,
            thp: s.vm.thp,
            prefaulted_bytes: None,
            thp_coverage: None,
            thp_coverage_end: None,
            thp_blocks: ThpBlocks::default(),
            device_write_lost_pages: 0,
            device_read_stale_pages: 0,
            pinned_pfns_changed_pages: 0,
            timings_ms: Timings::default(),
            dma: DmaCounters::default(),
            pins: Vec::new(),
            guest: None,
            hostile: None,
            perturb: s.perturb.actions.clone(),
            evidence: Vec::new(),
            console: Vec::new(),
            console_dropped: Default::default(),
            timeline: Default::default(),
            identity: crate::identity::Identity::of_this_host(),
            vfio: None,
            storm: None,
            trace: None,
        }
    }

    /// Whether the verdict is what the scenario expects (a skipped run always is: it says why).
    pub fn as_expected(&self) -> bool {
        self.verdict == Verdict::Skipped || self.verdict == self.expected
    }

    /// The short human summary.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let pct = |c: Option<f64>| c.map_or("n/a".to_string(), |c| format!("{:.1}%", c * 100.0));
        out.push_str(&format!(
            "pinlab run: scenario {} | pin {} | {} rounds | {} MiB RAM, THP {} (coverage {} at boot, {} at end)\n",
            self.scenario,
            self.pin,
            self.rounds,
            self.memory_bytes >> 20,
            if self.thp { "on" } else { "off" },
            pct(self.thp_coverage),
            pct(self.thp_coverage_end),
        ));
        if let Some(b) = self.prefaulted_bytes.filter(|&b| b < self.memory_bytes) {
            out.push_str(&format!(
                "  coverage of the first {} MiB, the part the guest touches first: nothing in this run needed the rest of RAM faulted in (no host action, PTE split or VFIO), so it stayed untouched\n",
                b >> 20
            ));
        }
        if !self.perturb.is_empty() {
            let names: Vec<_> = self.perturb.iter().map(|a| a.name()).collect();
            out.push_str(&format!("  perturbations: {}\n", names.join(", ")));
        }
        for (i, e) in self.evidence.iter().enumerate() {
            let when = match e.storm_iteration {
                Some(i) => format!("storm iteration {i}"),
                None => format!("after round {}", e.after_round),
            };
            out.push_str(&format!("  {} ({when}): {}\n", e.action, e.details));
            if let Some(f) = &e.finish {
                out.push_str(&format!("    then: {f}\n"));
            }
            // The kernel's own account of the same window, when the run was traced.
            let accounts = self.trace.iter().flat_map(|t| &t.accounts);
            for a in accounts.filter(|a| a.evidence == Some(i)) {
                out.push_str(&format!("    kernel (trace): {}\n", a.account));
                if let Some(d) = &a.disagreement {
                    out.push_str(&format!("    trace and pagemap DISAGREE: {d}\n"));
                }
            }
        }
        if let Some(st) = &self.storm {
            out.push_str(&format!(
                "  storm: ran {} of {} iterations ({}; {} paused the vCPU)\n",
                st.ran, st.planned, st.ended, st.paused_vcpu
            ));
        }
        if let Some(v) = &self.vfio {
            out.push_str(&format!("  vfio: {}\n", v.summary));
        }
        for line in &self.console {
            out.push_str(&format!("  guest: {line}\n"));
        }
        let d = &self.console_dropped;
        if d.any() {
            out.push_str(&format!(
                "  guest console: {} more lines ({} bytes) not kept, {} unreadable records\n",
                d.lines, d.bytes, d.bad_records
            ));
        }
        out.push_str(&format!(
            "  DMA: {} descriptors, {} MiB to guest, {} MiB from guest, {} rejected\n",
            self.dma.descriptors,
            self.dma.bytes_to_guest >> 20,
            self.dma.bytes_from_guest >> 20,
            self.dma.rejects.values().sum::<u64>()
        ));
        out.push_str(&format!(
            "  lost device writes: {} pages | stale device reads: {} pages | pinned PFNs changed: {} pages\n",
            self.device_write_lost_pages, self.device_read_stale_pages, self.pinned_pfns_changed_pages
        ));
        if let Some(t) = self.timings_ms.launch_to_guest_done {
            out.push_str(&format!("  launch -> guest done: {t:.2} ms\n"));
        }
        if let Some(t) = &self.trace {
            out.push_str(&format!("  {}\n", t.summary()));
        }
        out.push_str(&format!(
            "verdict: {} (expected {}, from the {}){}\n",
            self.verdict,
            self.expected,
            self.expected_from,
            self.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ));
        out
    }
}
