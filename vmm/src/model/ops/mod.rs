//! Operations on the model's memory: the op vocabulary ([`Op`]), what a step needs and how it
//! ends ([`Ctx`], [`Log`], [`Flow`], [`Stop`]), and the dispatch ([`step`]) to the kernel paths,
//! one file per kernel source file they stand for. A SIMULATION of mm code paths: each path does
//! what the kernel path does to the counts and entries the model keeps, and asks the era's
//! [`Rules`] whenever the kernel makes a decision; no path tests the era itself.
//!
//! Where each path lives (the kernel file it models):
//! - `fault`: mm/memory.c handle_mm_fault, do_anonymous_page, do_wp_page, do_swap_page;
//! - `huge_memory`: mm/huge_memory.c do_huge_pmd_wp_page, __split_huge_pmd, split_huge_page,
//!   zap_huge_pmd, do_huge_pmd_anonymous_page;
//! - `gup`: mm/gup.c __get_user_pages (slow path) and gup_fast;
//! - `fork`: kernel/fork.c dup_mmap with mm/memory.c copy_page_range, and the child's exit;
//! - `rmap`: mm/rmap.c anon_vma_prepare and chains, page_add_anon_rmap, try_to_unmap;
//! - `vma`: find_vma, __split_vma and VMA removal (mm/mmap.c, mm/vma.c);
//! - `mmap`: mmap + populate, munmap; `zap`: mm/memory.c zap_pte_range and MADV_DONTNEED;
//! - `mprotect`: mm/mprotect.c; `userfaultfd`: mm/userfaultfd.c write-protect and resolve;
//! - `vmscan`: add_to_swap and MADV_PAGEOUT reclaim (mm/swap_state.c, mm/vmscan.c);
//! - `migrate`: mm/migrate.c and compaction; `ksm`: mm/ksm.c; `khugepaged`: mm/khugepaged.c;
//! - `mremap`: mm/mremap.c; `device`: the guest's and the DMA device's accesses (pinlab's own
//!   device, not a kernel file: where the data invariants are checked);
//! - `syntax`: the text grammar of `[model]` steps and the names traces use.
//!
//! Most operations are one atomic step (a fault, fork, munmap, mprotect...). The ones the seeds
//! argue about are split, with the shared state each step touches:
//! - `gup-fast`: read the PTE (interrupts off) | take the reference | recheck the PTE and leave
//!   the interrupts-off window; a TLB-flush IPI cannot complete while another thread is inside
//!   that window (seed 004: "get_user_pages_fast runs with irq disabled"); a miss falls back to
//!   the slow path, which takes the page-table lock;
//! - `try-to-unmap` under KOSAKI's rule: the count check | the unmap (seed 000);
//! - `ksm` and `collapse`: clear the PTE/PMD and flush | check the count | install the result
//!   (seed 004), or the swapped order as a variant;
//! - `migrate`: unmap to migration entries | copy | remove_migration_ptes, one VMA per step of the
//!   anon_vma's list (seed 003); `mremap`: link the new VMA | move each PTE | unlink the old VMA.
//!
//! Steps log what they do (kernel function names, counts before and after) only when the
//! explorer replays a trace; while exploring, the closures are never called.
//!
//! The files below this one import only this file's types, `state`, `era` and `invariant`, and
//! each other downwards (fault -> huge_memory -> rmap, never back): no cycle.

mod device;
mod fault;
mod fork;
mod gup;
mod huge_memory;
mod khugepaged;
mod ksm;
mod migrate;
mod mmap;
mod mprotect;
mod mremap;
mod rmap;
mod syntax;
mod userfaultfd;
mod vma;
mod vmscan;
mod zap;

pub use syntax::{op_name, parse_op, Error as SyntaxError};

use super::invariant::{self, Invariant};
use super::rules::{ClearOrder, Feature, Rules};
use super::state::{State, NONE, SUBS};

/// An operation, as parsed from a `[model]` step or derived from a live scenario. Slots are
/// absolute virtual page numbers; `proc` 0 is the VMM, 1 the child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// mmap an anonymous private range and populate it (a THP per PMD with `thp`).
    Mmap {
        start: u8,
        end: u8,
        thp: bool,
        dontfork: bool,
        populate: bool,
    },
    Write {
        proc: u8,
        slot: u8,
    },
    Read {
        proc: u8,
        slot: u8,
    },
    /// Slow GUP (get_user_pages / pin_user_pages).
    Gup {
        slot: u8,
        pin: bool,
        write: bool,
        count: u16,
    },
    GupFast {
        slot: u8,
        pin: bool,
        write: bool,
    },
    Fork,
    ChildExit,
    Munmap {
        proc: u8,
        start: u8,
        end: u8,
    },
    Mprotect {
        start: u8,
        end: u8,
        write: bool,
    },
    SplitPmd {
        slot: u8,
    },
    SplitFolio {
        slot: u8,
    },
    Ksm {
        slot: u8,
    },
    Collapse {
        slot: u8,
    },
    /// add_to_swap: the page enters the swapcache.
    Swapout {
        slot: u8,
    },
    /// try_to_unmap for reclaim.
    TryToUnmap {
        slot: u8,
    },
    /// Reclaim a range (MADV_PAGEOUT): split, add to swap, try_to_unmap, as one step.
    Pageout {
        start: u8,
        end: u8,
    },
    Migrate {
        slot: u8,
    },
    /// Migrate every folio in a range (compaction), as one step.
    Compact {
        start: u8,
        end: u8,
    },
    Mremap {
        start: u8,
        end: u8,
        dst: u8,
        dontunmap: bool,
        /// The VMM re-points its memslot: guest RAM now starts at `dst`.
        repoint: bool,
    },
    Dontneed {
        start: u8,
        end: u8,
    },
    UffdWp {
        start: u8,
        end: u8,
    },
    /// One workload round over the DMA offsets.
    Round,
    DeviceWrite {
        off: u8,
    },
    DeviceRead {
        off: u8,
    },
}

impl Op {
    /// The era feature this op needs at all: without it the scenario is `n/a` under that era
    /// (checked by [`step`] before the op runs, and statically by `Program::needs`).
    pub fn needs(&self) -> Option<Feature> {
        match self {
            Op::Ksm { .. } => Some(Feature::Ksm),
            Op::Collapse { .. } => Some(Feature::Khugepaged),
            Op::UffdWp { .. } => Some(Feature::UffdWp),
            Op::Mremap {
                dontunmap: true, ..
            } => Some(Feature::MremapDontunmap),
            _ => None,
        }
    }
}

/// How the device reaches guest RAM and which directions a round runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundSpec {
    pub offs: Vec<u8>,
    pub from_guest: bool,
    pub to_guest: bool,
    /// The device goes through the VMM mapping (pin kind `mapping`), not a hold.
    pub via_mapping: bool,
}

impl Default for RoundSpec {
    fn default() -> Self {
        RoundSpec {
            offs: vec![0, 1],
            from_guest: true,
            to_guest: true,
            via_mapping: false,
        }
    }
}

/// Rule variants a scenario can ask for (the orders the seeds argue about).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    pub clear_order: ClearOrder,
    /// copy_vma links the new (dst) VMA before the old one on the anon_vma, so an rmap walk
    /// visits dst first (seed 003's vma_merge case; what the era does about it is its
    /// `mremap_rmap`).
    pub mremap_dst_first: bool,
    /// The platform frees page tables by RCU and its TLB flush sends no IPI (as with
    /// CONFIG_MMU_GATHER_RCU_TABLE_FREE and a flush that does not interrupt other CPUs), so a
    /// flush does not wait for gup_fast (seed 004's RCU remark; 70cbc3cc78a9).
    pub rcu_table_free: bool,
}

impl Default for Variant {
    fn default() -> Self {
        Variant {
            clear_order: ClearOrder::ClearThenCheck,
            mremap_dst_first: false,
            rcu_table_free: false,
        }
    }
}

/// What a step needs from outside the state.
pub struct Ctx<'a> {
    pub rules: &'static Rules,
    pub variant: Variant,
    pub round: &'a RoundSpec,
    pub tid: usize,
}

/// The trace of a replayed step: one line, built only when `on`.
#[derive(Default)]
pub struct Log {
    pub on: bool,
    pub notes: Vec<String>,
}

impl Log {
    pub fn note(&mut self, f: impl FnOnce() -> String) {
        if self.on {
            self.notes.push(f());
        }
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// The operation finished.
    Done,
    /// The operation moved to its next phase.
    Next,
    /// The step cannot run now (a lock, an IPI, a migration entry); nothing changed.
    Blocked,
}

/// Why a run stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    #[error("invariant {0} broken")]
    Broken(Invariant),
    /// The era lacks a feature the op needs ([`Op::needs`]): the scenario is `n/a`.
    #[error("not applicable: the era has no {0}")]
    NotApplicable(Feature),
    #[error("model error in {op}: {reason}")]
    Model { op: &'static str, reason: String },
}

fn err(op: &'static str, reason: impl Into<String>) -> Stop {
    Stop::Model {
        op,
        reason: reason.into(),
    }
}

type R<T> = Result<T, Stop>;

/// A page as traces describe it: which folio, and the counts the kernel would look at.
fn page_desc(s: &State, f: u8, sub: u8) -> String {
    let fo = s.folio(f);
    let kind = if fo.nr > 1 {
        format!("THP #{f} subpage {sub}")
    } else if fo.ksm {
        format!("KSM page #{f}")
    } else {
        format!("page #{f}")
    };
    format!(
        "{kind} (refcount {}, mapcount {}{}{}{}{})",
        fo.refcount,
        fo.subs[sub as usize].mapcount,
        if fo.nr > 1 {
            format!(", compound mapcount {}", fo.cmap)
        } else {
            String::new()
        },
        if fo.pincount > 0 {
            format!(", pincount {}", fo.pincount)
        } else {
            String::new()
        },
        if fo.subs[sub as usize].exclusive {
            ", AnonExclusive"
        } else {
            ""
        },
        if fo.swapcache { ", swapcache" } else { "" },
    )
}

/// A TLB-flush IPI from thread `ctx.tid` cannot complete while another thread is inside
/// gup_fast's interrupts-off window (seed 004). With the variant `rcu-table-free` the flush
/// sends no IPI and never waits.
fn flush_blocked(s: &State, ctx: &Ctx) -> bool {
    !ctx.variant.rcu_table_free && s.irqoff & !(1u8 << ctx.tid) != 0
}

/// How a trace says what the flush waited for.
fn flush_note(ctx: &Ctx) -> &'static str {
    if ctx.variant.rcu_table_free {
        "no IPI: page tables are RCU-freed, gup_fast is not waited for"
    } else {
        "the IPI has waited for any gup_fast"
    }
}

/// A model lock (0 = free, else the holder's tid + 1) is free or already held by `tid`.
fn lock_free(owner: u8, tid: usize) -> bool {
    owner == 0 || owner == tid as u8 + 1
}

/// Runs one step of `op` for thread `ctx.tid`.
pub fn step(s: &mut State, ctx: &Ctx, op: &Op, log: &mut Log) -> R<Flow> {
    if let Some(f) = op.needs().filter(|&f| !ctx.rules.features.has(f)) {
        return Err(Stop::NotApplicable(f));
    }
    let mut r = s.threads[ctx.tid];
    let flow = match *op {
        Op::Mmap {
            start,
            end,
            thp,
            dontfork,
            populate,
        } => mmap::mmap(s, ctx, (start, end), thp, dontfork, populate, log)?,
        Op::Write { proc, slot } => device::cpu_write(s, ctx, proc, slot, log)?,
        Op::Read { proc, slot } => device::cpu_read(s, ctx, proc, slot, log)?,
        Op::Gup {
            slot,
            pin,
            write,
            count,
        } => gup::gup_slow(s, ctx, slot, pin, write, count, log)?,
        Op::GupFast { slot, pin, write } => gup::gup_fast(s, ctx, &mut r, slot, pin, write, log)?,
        Op::Fork => fork::fork(s, ctx, log)?,
        Op::ChildExit => fork::child_exit(s, ctx, log)?,
        Op::Munmap { proc, start, end } => mmap::munmap(s, ctx, proc, start, end, log)?,
        Op::Mprotect { start, end, write } => mprotect::mprotect(s, ctx, start, end, write, log)?,
        Op::SplitPmd { slot } => {
            if !ctx.rules.features.thp {
                log.note(|| format!("{}: no THP, nothing to split", ctx.rules.name));
            }
            huge_memory::split_pmd(s, ctx.rules, 0, slot as usize / SUBS, log)?;
            Flow::Done
        }
        Op::SplitFolio { slot } => huge_memory::split_folio_op(s, ctx, slot, log)?,
        Op::Ksm { slot } => ksm::ksm(s, ctx, &mut r, slot, log)?,
        Op::Collapse { slot } => khugepaged::collapse(s, ctx, &mut r, slot, log)?,
        Op::Swapout { slot } => vmscan::swapout(s, slot, log)?,
        Op::TryToUnmap { slot } => rmap::try_to_unmap(s, ctx, &mut r, slot, log)?,
        Op::Pageout { start, end } => vmscan::pageout(s, ctx, start, end, log)?,
        Op::Migrate { slot } => migrate::migrate(s, ctx, &mut r, slot, log)?,
        Op::Compact { start, end } => migrate::compact(s, ctx, start, end, log)?,
        Op::Mremap {
            start,
            end,
            dst,
            dontunmap,
            repoint,
        } => mremap::mremap(s, ctx, &mut r, (start, end, dst), dontunmap, repoint, log)?,
        Op::Dontneed { start, end } => zap::dontneed(s, ctx, start, end, log)?,
        Op::UffdWp { start, end } => userfaultfd::uffd_wp(s, start, end, log)?,
        Op::Round => device::round(s, ctx, log)?,
        Op::DeviceWrite { off } => device::device_write(s, ctx, off, log)?,
        Op::DeviceRead { off } => device::device_read(s, ctx, off, log)?,
    };
    match flow {
        Flow::Done => {
            r.pc += 1;
            r.phase = 0;
            r.reg = [0; 3];
        }
        Flow::Next | Flow::Blocked => {}
    }
    if flow != Flow::Blocked {
        s.threads[ctx.tid] = r;
        if let Some((p, slot)) = invariant::anon_vma_reach(s) {
            log.note(|| {
                let (f, _) = s.procs[p as usize].pte[slot as usize].page().or_else(|| s.mapped_page(p, slot)).unwrap_or((NONE, 0));
                let av = if f != NONE { s.folio(f).anon_vma } else { NONE };
                format!("P{p} maps page #{f} at slot {slot}, but that page's anon_vma {av} does not list P{p}'s VMA: an rmap walk (migration, reclaim) would miss this PTE")
            });
            return Err(Stop::Broken(Invariant::AnonVmaReach));
        }
    }
    Ok(flow)
}
