//! Operations on the model's memory, and the atomic steps the racy ones are split into. A
//! SIMULATION of mm code paths: each function does what the kernel path does to the counts and
//! entries the model keeps, and asks the era's [`Rules`] whenever the kernel makes a decision.
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

use super::era::{ClearOrder, Rules, UnmapRule, Wp, WpPmd};
use super::invariant::{self, Invariant};
use super::state::{
    HoldKind, Holder, Lookup, Pmd, Pte, State, Vma, FINDING_BIAS_FALSE_POSITIVE, NONE, PIN_BIAS,
    PROCS, SLOTS, SUBS, VMAS,
};

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
    /// remove_migration_ptes walks the new (dst) VMA before the old one (the 2011 bug).
    pub mremap_dst_first: bool,
}

impl Default for Variant {
    fn default() -> Self {
        Variant {
            clear_order: ClearOrder::ClearThenCheck,
            mremap_dst_first: false,
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
    #[error("not applicable: {0}")]
    NotApplicable(String),
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

fn flush_blocked(s: &State, tid: usize) -> bool {
    s.irqoff & !(1u8 << tid) != 0
}

fn lock_free(owner: u8, tid: usize) -> bool {
    owner == 0 || owner == tid as u8 + 1
}

// ---------------------------------------------------------------------------------------------
// anon_vma and VMA bookkeeping.

fn av_entry(proc: u8, vma: usize) -> u8 {
    (proc << 4) | vma as u8
}

fn av_insert(s: &mut State, av: u8, entry: u8, before: Option<u8>) -> R<()> {
    let a = &mut s.anon_vmas[av as usize];
    if a.entries().contains(&entry) {
        return Ok(());
    }
    if a.len as usize >= a.list.len() {
        return Err(err("anon_vma_chain_link", "anon_vma list full"));
    }
    let pos = before
        .and_then(|b| a.entries().iter().position(|&e| e == b))
        .unwrap_or(a.len as usize);
    let len = a.len as usize;
    a.list.copy_within(pos..len, pos + 1);
    a.list[pos] = entry;
    a.len += 1;
    Ok(())
}

fn av_remove(s: &mut State, av: u8, entry: u8) {
    let a = &mut s.anon_vmas[av as usize];
    if let Some(pos) = a.entries().iter().position(|&e| e == entry) {
        let len = a.len as usize;
        a.list.copy_within(pos + 1..len, pos);
        a.len -= 1;
        a.list[a.len as usize] = 0;
    }
}

fn chain_avs(chain: u8) -> impl Iterator<Item = u8> {
    (0..8u8).filter(move |i| chain & (1 << i) != 0)
}

/// anon_vma_prepare: the VMA's own anon_vma, created on the first fault.
fn anon_vma_prepare(s: &mut State, proc: u8, vi: usize) -> R<u8> {
    let v = s.procs[proc as usize].vmas[vi];
    if v.anon_vma != NONE {
        return Ok(v.anon_vma);
    }
    let av = s
        .alloc_anon_vma()
        .ok_or_else(|| err("anon_vma_prepare", "no free anon_vma"))?;
    let vma = &mut s.procs[proc as usize].vmas[vi];
    vma.anon_vma = av;
    vma.chain |= 1 << av;
    av_insert(s, av, av_entry(proc, vi), None)?;
    Ok(av)
}

fn vma_of(s: &State, proc: u8, slot: u8, op: &'static str) -> R<usize> {
    s.procs[proc as usize].vma_at(slot).ok_or_else(|| {
        err(
            op,
            format!("slot {slot} of process {proc} is not in a VMA (SIGSEGV)"),
        )
    })
}

/// __split_vma: `[start, at)` stays, `[at, end)` becomes a new VMA on the same anon_vmas.
fn vma_split(s: &mut State, proc: u8, vi: usize, at: u8) -> R<Option<usize>> {
    let v = s.procs[proc as usize].vmas[vi];
    if at <= v.start || at >= v.end {
        return Ok(None);
    }
    let ni = s.procs[proc as usize]
        .vmas
        .iter()
        .position(|v| !v.live)
        .ok_or_else(|| err("split_vma", "no free VMA slot"))?;
    s.procs[proc as usize].vmas[ni] = Vma { start: at, ..v };
    s.procs[proc as usize].vmas[vi].end = at;
    for av in chain_avs(v.chain) {
        av_insert(s, av, av_entry(proc, ni), None)?;
    }
    Ok(Some(ni))
}

fn vma_remove(s: &mut State, proc: u8, vi: usize) {
    let v = s.procs[proc as usize].vmas[vi];
    for av in chain_avs(v.chain) {
        av_remove(s, av, av_entry(proc, vi));
    }
    s.procs[proc as usize].vmas[vi] = Vma::default();
}

/// Splits VMAs at `start` and `end` and returns those fully inside.
fn vmas_in(s: &mut State, proc: u8, start: u8, end: u8) -> R<Vec<usize>> {
    for at in [start, end] {
        if let Some(vi) = s.procs[proc as usize].vma_at(at) {
            vma_split(s, proc, vi, at)?;
        }
    }
    Ok((0..VMAS)
        .filter(|&i| {
            let v = s.procs[proc as usize].vmas[i];
            v.live && v.start >= start && v.end <= end
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Mapping primitives.

fn map_pte(s: &mut State, proc: u8, slot: u8, folio: u8, sub: u8, write: bool) {
    let p = &mut s.procs[proc as usize];
    if p.pmd[slot as usize / SUBS] == Pmd::None {
        p.pmd[slot as usize / SUBS] = Pmd::Table;
    }
    p.pte[slot as usize] = Pte::Present {
        folio,
        sub,
        write,
        uffd: false,
    };
    let f = s.folio_mut(folio);
    f.subs[sub as usize].mapcount += 1;
    f.refcount += 1;
}

/// (refcount, pincount) a hold adds: FOLL_PIN adds GUP_PIN_COUNTING_BIAS to a small page and
/// one reference plus one `_pincount` to a large folio (mm/gup.c try_grab_folio, 5.7+);
/// before FOLL_PIN, and for FOLL_GET, one reference per hold.
fn hold_refs(rules: &Rules, large: bool, kind: HoldKind, count: u16) -> (u16, u16) {
    match kind {
        HoldKind::Pin if rules.features.foll_pin => {
            if large {
                (count, count)
            } else {
                (count.saturating_mul(PIN_BIAS), 0)
            }
        }
        _ => (count, 0),
    }
}

fn take_refs(s: &mut State, rules: &Rules, f: u8, kind: HoldKind, count: u16) {
    let large = s.folio(f).large();
    let (r, p) = hold_refs(rules, large, kind, count);
    let fo = s.folio_mut(f);
    fo.refcount = fo.refcount.saturating_add(r);
    fo.pincount += p;
}

fn drop_refs(s: &mut State, rules: &Rules, f: u8, kind: HoldKind, count: u16) {
    let large = s.folio(f).large();
    let (r, p) = hold_refs(rules, large, kind, count);
    s.folio_mut(f).pincount -= p;
    s.put(f, r);
}

#[allow(clippy::too_many_arguments)]
fn add_holder(
    s: &mut State,
    proc: u8,
    slot: u8,
    f: u8,
    sub: u8,
    kind: HoldKind,
    write: bool,
    count: u16,
) -> R<()> {
    let off = slot.wrapping_sub(s.guest_base);
    if let Some(h) = s.holders.iter_mut().find(|h| {
        h.live && h.proc == proc && h.off == off && h.kind == kind && h.folio == f && h.sub == sub
    }) {
        h.count += count;
        return Ok(());
    }
    let h = s
        .holders
        .iter_mut()
        .find(|h| !h.live)
        .ok_or_else(|| err("gup", "no free holder"))?;
    *h = Holder {
        live: true,
        kind,
        write,
        count,
        proc,
        off,
        folio: f,
        sub,
    };
    Ok(())
}

/// Zaps one PTE (zap_pte_range): the mapping's reference and mapcount go.
fn zap_pte(s: &mut State, proc: u8, slot: u8) {
    let e = s.procs[proc as usize].pte[slot as usize];
    s.procs[proc as usize].pte[slot as usize] = Pte::None;
    if let Pte::Present { folio, sub, .. } = e {
        s.folio_mut(folio).subs[sub as usize].mapcount -= 1;
        s.put(folio, 1);
    }
}

/// Zaps a huge PMD (zap_huge_pmd).
fn zap_pmd(s: &mut State, proc: u8, pmd: usize) {
    if let Pmd::Huge { folio, .. } = s.procs[proc as usize].pmd[pmd] {
        s.procs[proc as usize].pmd[pmd] = Pmd::None;
        s.folio_mut(folio).cmap -= 1;
        s.put(folio, 1);
    }
}

/// __split_huge_pmd on a PTE-mapped-THP kernel (4.5+): the PMD becomes a table of PTEs mapping
/// the same compound page; each PTE mapping holds a reference (`page_ref_add(page,
/// HPAGE_PMD_NR - 1)`); the write and uffd-wp bits and AnonExclusive are kept per PTE.
fn split_pmd_ptes(s: &mut State, proc: u8, pmd: usize) {
    let Pmd::Huge { folio, write, uffd } = s.procs[proc as usize].pmd[pmd] else {
        return;
    };
    let p = &mut s.procs[proc as usize];
    p.pmd[pmd] = Pmd::Table;
    for i in 0..SUBS {
        p.pte[pmd * SUBS + i] = Pte::Present {
            folio,
            sub: i as u8,
            write,
            uffd,
        };
    }
    let f = s.folio_mut(folio);
    f.cmap -= 1;
    for i in 0..SUBS {
        f.subs[i].mapcount += 1;
    }
    f.refcount += SUBS as u16 - 1;
}

/// PMD split as the era does it: 4.5+ leaves a PTE-mapped THP; 4.4 (split_huge_page_pmd)
/// splits the page itself, always successfully.
fn split_pmd(s: &mut State, rules: &Rules, proc: u8, pmd: usize, log: &mut Log) -> R<()> {
    let Pmd::Huge { folio, .. } = s.procs[proc as usize].pmd[pmd] else {
        return Ok(());
    };
    if rules.features.pte_mapped_thp {
        split_pmd_ptes(s, proc, pmd);
        log.note(|| format!("split_huge_pmd: PMD {pmd} of P{proc} -> {SUBS} PTEs mapping THP #{folio} (refcount {})", s.folio(folio).refcount));
        Ok(())
    } else {
        log.note(|| {
            format!("split_huge_page_pmd (old THP refcounting): splits THP #{folio} itself")
        });
        split_folio_now(s, rules, folio, log)
    }
}

/// split_huge_page once allowed: every PMD mapping becomes PTEs, then each subpage becomes a
/// small folio carrying its own mapcount, holders and AnonExclusive bit.
fn split_folio_now(s: &mut State, rules: &Rules, folio: u8, log: &mut Log) -> R<()> {
    for p in 0..PROCS as u8 {
        for pmd in 0..super::state::PMDS {
            if matches!(s.procs[p as usize].pmd[pmd], Pmd::Huge { folio: f, .. } if f == folio) {
                split_pmd_ptes(s, p, pmd);
            }
        }
    }
    let old = *s.folio(folio);
    let mut ids = [folio; SUBS];
    for (i, id) in ids.iter_mut().enumerate().skip(1) {
        *id = s
            .alloc_folio(1, old.anon_vma)
            .ok_or_else(|| err("split_huge_page", "no free folio"))?;
        let _ = i;
    }
    for (i, &id) in ids.iter().enumerate() {
        let sub = old.subs[i];
        let holders: Vec<(HoldKind, u16)> = s
            .holders
            .iter()
            .filter(|h| h.live && h.folio == folio && h.sub == i as u8)
            .map(|h| (h.kind, h.count))
            .collect();
        let mut refcount = sub.mapcount as u16 + old.swapcache as u16;
        for (kind, count) in holders {
            refcount += hold_refs(rules, false, kind, count).0;
        }
        let f = s.folio_mut(id);
        f.live = true;
        f.nr = 1;
        f.refcount = refcount;
        f.pincount = 0;
        f.cmap = 0;
        f.swapcache = old.swapcache;
        f.ksm = false;
        f.anon_vma = old.anon_vma;
        f.subs = Default::default();
        f.subs[0] = sub;
    }
    for p in 0..PROCS {
        for e in s.procs[p].pte.iter_mut() {
            match e {
                Pte::Present { folio: f, sub, .. }
                | Pte::Swap { folio: f, sub, .. }
                | Pte::Migration { folio: f, sub, .. }
                    if *f == folio =>
                {
                    *f = ids[*sub as usize];
                    *sub = 0;
                }
                _ => {}
            }
        }
    }
    for h in s.holders.iter_mut() {
        if h.live && h.folio == folio {
            h.folio = ids[h.sub as usize];
            h.sub = 0;
        }
    }
    log.note(|| format!("split_huge_page: THP #{folio} -> small pages {ids:?}"));
    Ok(())
}

/// A new anonymous page for a fault or a copy (AnonExclusive on 5.19+).
fn new_page(s: &mut State, rules: &Rules, proc: u8, vi: usize, version: u8) -> R<u8> {
    let av = anon_vma_prepare(s, proc, vi)?;
    let f = s
        .alloc_folio(1, av)
        .ok_or_else(|| err("alloc_page", "no free folio"))?;
    let fo = s.folio_mut(f);
    fo.subs[0].version = version;
    fo.subs[0].exclusive = rules.features.anon_exclusive;
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// Faults.

/// handle_mm_fault for one slot. Returns `Blocked` on a migration entry or a detached table.
pub fn fault(s: &mut State, ctx: &Ctx, proc: u8, slot: u8, write: bool, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    let vi = vma_of(s, proc, slot, "handle_mm_fault")?;
    let vma = s.procs[proc as usize].vmas[vi];
    if write && !vma.write {
        return Err(err(
            "handle_mm_fault",
            format!("write to read-only slot {slot} (SIGSEGV)"),
        ));
    }
    if s.procs[proc as usize].pmd[slot as usize / SUBS] == Pmd::Detached {
        return Ok(Flow::Blocked);
    }
    match s.lookup(proc, slot) {
        Lookup::None | Lookup::Pte(Pte::None) => {
            let f = new_page(s, rules, proc, vi, 0)?;
            map_pte(s, proc, slot, f, 0, vma.write);
            log.note(|| {
                format!("P{proc} fault at slot {slot}: do_anonymous_page maps new page #{f}")
            });
            Ok(Flow::Done)
        }
        Lookup::Huge {
            folio,
            write: w,
            uffd,
            ..
        } => {
            if !write || w {
                return Ok(Flow::Done);
            }
            let pmd = slot as usize / SUBS;
            if uffd {
                uffd_resolve(s, ctx, proc, slot, log);
                if matches!(
                    s.procs[proc as usize].pmd[pmd],
                    Pmd::Huge { write: true, .. }
                ) {
                    return Ok(Flow::Done);
                }
            }
            match (rules.wp_pmd)(s, folio) {
                WpPmd::Reuse { set_exclusive } => {
                    if let Pmd::Huge { write, .. } = &mut s.procs[proc as usize].pmd[pmd] {
                        *write = true;
                    }
                    if set_exclusive {
                        for sub in s.folio_mut(folio).subs.iter_mut() {
                            sub.exclusive = true;
                        }
                    }
                    log.note(|| format!("P{proc} write fault on huge PMD {pmd}: {} do_huge_pmd_wp_page reuses THP #{folio}", rules.name));
                    Ok(Flow::Done)
                }
                WpPmd::CopyHuge => {
                    let av = anon_vma_prepare(s, proc, vi)?;
                    let n = s
                        .alloc_folio(SUBS as u8, av)
                        .ok_or_else(|| err("do_huge_pmd_wp_page", "no free folio"))?;
                    let old = *s.folio(folio);
                    let nf = s.folio_mut(n);
                    for i in 0..SUBS {
                        nf.subs[i].version = old.subs[i].version;
                        nf.subs[i].exclusive = rules.features.anon_exclusive;
                    }
                    nf.cmap = 1;
                    nf.refcount = 1;
                    s.procs[proc as usize].pmd[pmd] = Pmd::Huge {
                        folio: n,
                        write: true,
                        uffd: false,
                    };
                    s.folio_mut(folio).cmap -= 1;
                    s.put(folio, 1);
                    log.note(|| format!("P{proc} write fault on huge PMD {pmd}: {} do_huge_pmd_wp_page copies THP #{folio} to new THP #{n}", rules.name));
                    Ok(Flow::Done)
                }
                WpPmd::SplitThenPte => {
                    log.note(|| format!("P{proc} write fault on huge PMD {pmd}: {} do_huge_pmd_wp_page: THP #{folio} not exclusive, refcount {} -> split PMD, fault at PTE level", rules.name, s.folio(folio).refcount));
                    split_pmd_ptes(s, proc, pmd);
                    wp_pte(s, ctx, proc, slot, vi, log)
                }
            }
        }
        Lookup::Pte(Pte::Present { write: w, uffd, .. }) => {
            if !write || w {
                return Ok(Flow::Done);
            }
            if uffd {
                uffd_resolve(s, ctx, proc, slot, log);
                if matches!(
                    s.procs[proc as usize].pte[slot as usize],
                    Pte::Present { write: true, .. }
                ) {
                    return Ok(Flow::Done);
                }
            }
            wp_pte(s, ctx, proc, slot, vi, log)
        }
        Lookup::Pte(Pte::Swap {
            folio,
            sub,
            exclusive,
        }) => {
            // do_swap_page: the page is still in the swapcache; map it back.
            s.procs[proc as usize].pte[slot as usize] = Pte::None;
            map_pte(s, proc, slot, folio, sub, false);
            s.folio_mut(folio).subs[sub as usize].exclusive = exclusive;
            log.note(|| {
                format!(
                    "P{proc} fault at slot {slot}: do_swap_page maps back {}",
                    page_desc(s, folio, sub)
                )
            });
            if write {
                if (rules.swapin_reuse)(s, folio, sub, exclusive) {
                    if let Pte::Present { write, .. } =
                        &mut s.procs[proc as usize].pte[slot as usize]
                    {
                        *write = true;
                    }
                    if rules.features.anon_exclusive {
                        s.folio_mut(folio).subs[sub as usize].exclusive = true;
                    }
                    log.note(|| format!("{}: do_swap_page reuses it writable", rules.name));
                    Ok(Flow::Done)
                } else {
                    log.note(|| {
                        format!(
                            "{}: do_swap_page may not reuse it -> write fault",
                            rules.name
                        )
                    });
                    wp_pte(s, ctx, proc, slot, vi, log)
                }
            } else {
                Ok(Flow::Done)
            }
        }
        Lookup::Pte(Pte::Migration { .. }) => Ok(Flow::Blocked),
    }
}

/// The userfaultfd handler: UFFDIO_WRITEPROTECT(mode 0) on the faulting page.
fn uffd_resolve(s: &mut State, ctx: &Ctx, proc: u8, slot: u8, log: &mut Log) {
    let rules = ctx.rules;
    let pmd = slot as usize / SUBS;
    match s.procs[proc as usize].pmd[pmd] {
        Pmd::Huge { folio, .. } => {
            let w = (rules.make_writable)(s, folio, 0);
            s.procs[proc as usize].pmd[pmd] = Pmd::Huge {
                folio,
                write: w,
                uffd: false,
            };
            log.note(|| {
                format!(
                    "uffd handler: UFFDIO_WRITEPROTECT(0) on PMD {pmd}: {}",
                    if w {
                        "made writable (exclusive)"
                    } else {
                        "write bit left to the fault"
                    }
                )
            });
        }
        _ => {
            if let Pte::Present { folio, sub, .. } = s.procs[proc as usize].pte[slot as usize] {
                let w = (rules.make_writable)(s, folio, sub);
                s.procs[proc as usize].pte[slot as usize] = Pte::Present {
                    folio,
                    sub,
                    write: w,
                    uffd: false,
                };
                log.note(|| {
                    format!(
                        "uffd handler: UFFDIO_WRITEPROTECT(0) on slot {slot}: {}",
                        if w {
                            "made writable (exclusive)"
                        } else {
                            "write bit left to the fault"
                        }
                    )
                });
            }
        }
    }
}

/// do_wp_page on an anonymous PTE: the era's reuse-or-copy rule.
fn wp_pte(s: &mut State, ctx: &Ctx, proc: u8, slot: u8, vi: usize, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    let Pte::Present { folio, sub, .. } = s.procs[proc as usize].pte[slot as usize] else {
        return Err(err("do_wp_page", "no present PTE"));
    };
    let before = if log.on {
        page_desc(s, folio, sub)
    } else {
        String::new()
    };
    match (rules.wp_pte)(s, folio, sub) {
        Wp::Reuse {
            move_anon_vma,
            set_exclusive,
            free_swapcache,
        } => {
            if free_swapcache && s.folio(folio).swapcache {
                s.folio_mut(folio).swapcache = false;
                s.put(folio, 1);
            }
            if let Pte::Present { write, .. } = &mut s.procs[proc as usize].pte[slot as usize] {
                *write = true;
            }
            if set_exclusive {
                s.folio_mut(folio).subs[sub as usize].exclusive = true;
            }
            let mut moved = String::new();
            if move_anon_vma {
                let av = anon_vma_prepare(s, proc, vi)?;
                if s.folio(folio).anon_vma != av {
                    s.folio_mut(folio).anon_vma = av;
                    if log.on {
                        moved = format!("; page_move_anon_rmap moves the whole folio #{folio} to P{proc}'s anon_vma {av}");
                    }
                }
            }
            log.note(|| format!("P{proc} write fault at slot {slot} on {before}: {} do_wp_page REUSES it{moved}", rules.name));
            Ok(Flow::Done)
        }
        Wp::Copy => {
            let version = s.folio(folio).subs[sub as usize].version;
            let n = new_page(s, rules, proc, vi, version)?;
            s.procs[proc as usize].pte[slot as usize] = Pte::None;
            s.folio_mut(folio).subs[sub as usize].mapcount -= 1;
            s.put(folio, 1);
            map_pte(s, proc, slot, n, 0, true);
            log.note(|| format!("P{proc} write fault at slot {slot} on {before}: {} do_wp_page COPIES it to new page #{n}", rules.name));
            Ok(Flow::Done)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Guest and device accesses (where the data invariants are checked).

fn guest_off(s: &State, slot: u8) -> Option<usize> {
    let off = slot.checked_sub(s.guest_base)? as usize;
    (off < s.expected.len() && off < s.guest_len as usize).then_some(off)
}

fn cpu_write(s: &mut State, ctx: &Ctx, proc: u8, slot: u8, log: &mut Log) -> R<Flow> {
    loop {
        match fault(s, ctx, proc, slot, true, log)? {
            Flow::Blocked => return Ok(Flow::Blocked),
            _ => {
                if let Some((f, sub)) = writable_page(s, proc, slot) {
                    let v = s.new_version();
                    s.folio_mut(f).subs[sub as usize].version = v;
                    if proc == 0 {
                        if let Some(off) = guest_off(s, slot) {
                            s.expected[off] = v;
                        }
                    }
                    log.note(|| format!("P{proc} CPU writes v{v} at slot {slot} into page #{f}"));
                    return Ok(Flow::Done);
                }
            }
        }
    }
}

fn writable_page(s: &State, proc: u8, slot: u8) -> Option<(u8, u8)> {
    match s.lookup(proc, slot) {
        Lookup::Huge {
            folio,
            sub,
            write: true,
            ..
        } => Some((folio, sub)),
        Lookup::Pte(Pte::Present {
            folio,
            sub,
            write: true,
            ..
        }) => Some((folio, sub)),
        _ => None,
    }
}

fn cpu_read(s: &mut State, ctx: &Ctx, proc: u8, slot: u8, log: &mut Log) -> R<Flow> {
    if fault(s, ctx, proc, slot, false, log)? == Flow::Blocked {
        return Ok(Flow::Blocked);
    }
    let (f, sub) = s
        .mapped_page(proc, slot)
        .ok_or_else(|| err("read", "nothing mapped after the fault"))?;
    let v = s.folio(f).subs[sub as usize].version;
    if proc == 0 {
        if let Some(off) = guest_off(s, slot) {
            let want = s.expected[off];
            if v != want {
                log.note(|| format!("guest reads v{v} at offset {off} from page #{f}, but the last write there was v{want} (a device write went to another page)"));
                return Err(Stop::Broken(Invariant::NoLostWrite));
            }
            log.note(|| format!("guest reads v{v} at offset {off} from page #{f}: as written"));
            return Ok(Flow::Done);
        }
    }
    log.note(|| format!("P{proc} reads v{v} at slot {slot}"));
    Ok(Flow::Done)
}

fn holder_for(s: &State, off: u8) -> Option<Holder> {
    s.holders
        .iter()
        .find(|h| h.live && h.proc == 0 && h.off == off)
        .copied()
}

/// `pin-is-mapped` at a DMA step: the held page must be the page mapped at its address.
fn check_pin_mapped(s: &State, h: &Holder, log: &mut Log) -> R<()> {
    let slot = s.guest_base.wrapping_add(h.off);
    if let Some((f, sub)) = s.mapped_page(0, slot) {
        if (f, sub) != (h.folio, h.sub) {
            log.note(|| format!("the device holds page #{}.{} but guest offset {} (slot {slot}) maps page #{f}.{sub}", h.folio, h.sub, h.off));
            return Err(Stop::Broken(Invariant::PinIsMapped));
        }
    }
    Ok(())
}

fn device_write(s: &mut State, ctx: &Ctx, off: u8, log: &mut Log) -> R<Flow> {
    if ctx.round.via_mapping {
        let slot = s.guest_base.wrapping_add(off);
        log.note(|| "device writes through the VMM mapping".to_string());
        return cpu_write(s, ctx, 0, slot, log);
    }
    let h = holder_for(s, off).ok_or_else(|| err("dma", format!("no hold at offset {off}")))?;
    check_pin_mapped(s, &h, log)?;
    let v = s.new_version();
    s.folio_mut(h.folio).subs[h.sub as usize].version = v;
    s.expected[off as usize] = v;
    log.note(|| {
        format!(
            "device DMA-writes v{v} at offset {off} through its hold on page #{}",
            h.folio
        )
    });
    Ok(Flow::Done)
}

fn device_read(s: &mut State, ctx: &Ctx, off: u8, log: &mut Log) -> R<Flow> {
    if ctx.round.via_mapping {
        let slot = s.guest_base.wrapping_add(off);
        log.note(|| "device reads through the VMM mapping".to_string());
        return cpu_read(s, ctx, 0, slot, log);
    }
    let h = holder_for(s, off).ok_or_else(|| err("dma", format!("no hold at offset {off}")))?;
    check_pin_mapped(s, &h, log)?;
    let v = s.folio(h.folio).subs[h.sub as usize].version;
    let want = s.expected[off as usize];
    if v != want {
        log.note(|| format!("device DMA-reads v{v} at offset {off} from page #{}, but the guest last wrote v{want}", h.folio));
        return Err(Stop::Broken(Invariant::NoLostWrite));
    }
    log.note(|| {
        format!(
            "device DMA-reads v{v} at offset {off} from page #{}: as written",
            h.folio
        )
    });
    Ok(Flow::Done)
}

fn round(s: &mut State, ctx: &Ctx, log: &mut Log) -> R<Flow> {
    let spec = ctx.round;
    let device_writes = spec.via_mapping
        || spec
            .offs
            .iter()
            .all(|&o| holder_for(s, o).is_some_and(|h| h.write));
    for &off in &spec.offs {
        let slot = s.guest_base.wrapping_add(off);
        if spec.from_guest {
            if cpu_write(s, ctx, 0, slot, log)? == Flow::Blocked {
                return Err(err("round", "guest blocked on a migration entry"));
            }
            device_read(s, ctx, off, log)?;
        }
        if spec.to_guest && device_writes {
            device_write(s, ctx, off, log)?;
            if cpu_read(s, ctx, 0, slot, log)? == Flow::Blocked {
                return Err(err("round", "guest blocked on a migration entry"));
            }
        }
    }
    Ok(Flow::Done)
}

// ---------------------------------------------------------------------------------------------
// GUP.

/// The slow path (__get_user_pages): takes mmap_lock and the page-table lock, faults as the
/// era's GUP rule says, then takes the reference or pin.
#[allow(clippy::too_many_arguments)]
fn gup_slow(
    s: &mut State,
    ctx: &Ctx,
    slot: u8,
    pin: bool,
    write: bool,
    count: u16,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    if !lock_free(s.mmap_lock, ctx.tid) || !lock_free(s.ptl, ctx.tid) {
        return Ok(Flow::Blocked);
    }
    if fault(s, ctx, 0, slot, write, log)? == Flow::Blocked {
        return Ok(Flow::Blocked);
    }
    let (f, sub, pte_write) = match s.lookup(0, slot) {
        Lookup::Huge {
            folio, sub, write, ..
        } => (folio, sub, write),
        Lookup::Pte(Pte::Present {
            folio, sub, write, ..
        }) => (folio, sub, write),
        _ => return Err(err("gup", "nothing mapped after the fault")),
    };
    let excl = s.folio(f).subs[sub as usize].exclusive;
    let (f, sub) = if (rules.gup_fault_first)(pin, write, pte_write, excl) {
        log.note(|| format!("{}: GUP must break COW / unshare first", rules.name));
        if fault(s, ctx, 0, slot, true, log)? == Flow::Blocked {
            return Ok(Flow::Blocked);
        }
        s.mapped_page(0, slot)
            .ok_or_else(|| err("gup", "nothing mapped after unshare"))?
    } else {
        (f, sub)
    };
    let kind = if pin { HoldKind::Pin } else { HoldKind::Get };
    take_refs(s, rules, f, kind, count);
    add_holder(s, 0, slot, f, sub, kind, write, count)?;
    if pin && rules.features.foll_pin {
        s.procs[0].has_pinned = true;
    }
    log.note(|| {
        format!(
            "GUP ({}{}{}) takes {} on {}",
            if pin {
                "FOLL_PIN|FOLL_LONGTERM"
            } else {
                "FOLL_GET"
            },
            if write { "|FOLL_WRITE" } else { "" },
            if count > 1 {
                format!(" x{count}")
            } else {
                String::new()
            },
            if pin { "a pin" } else { "a reference" },
            page_desc(s, f, sub)
        )
    });
    Ok(Flow::Done)
}

fn gup_fast(
    s: &mut State,
    ctx: &Ctx,
    r: &mut super::state::Regs,
    slot: u8,
    pin: bool,
    write: bool,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    let kind = if pin { HoldKind::Pin } else { HoldKind::Get };
    let bit = 1u8 << ctx.tid;
    match r.phase {
        0 => {
            let found = match s.lookup(0, slot) {
                Lookup::Huge {
                    folio,
                    sub,
                    write: w,
                    ..
                } => Some((folio, sub, w)),
                Lookup::Pte(Pte::Present {
                    folio,
                    sub,
                    write: w,
                    ..
                }) => Some((folio, sub, w)),
                _ => None,
            };
            match found {
                Some((f, sub, w))
                    if !(rules.gup_fault_first)(
                        pin,
                        write,
                        w,
                        s.folio(f).subs[sub as usize].exclusive,
                    ) =>
                {
                    r.reg = [f, sub, 0];
                    s.irqoff |= bit;
                    r.phase = 1;
                    log.note(|| {
                        format!(
                            "gup_fast (interrupts off) reads the PTE of slot {slot}: {}",
                            page_desc(s, f, sub)
                        )
                    });
                }
                _ => {
                    r.phase = 3;
                    log.note(|| format!("gup_fast finds no usable PTE at slot {slot}: falls back to the slow path"));
                }
            }
            Ok(Flow::Next)
        }
        1 => {
            let f = r.reg[0];
            take_refs(s, rules, f, kind, 1);
            r.phase = 2;
            log.note(|| {
                format!(
                    "gup_fast takes {} on page #{f}: refcount now {}",
                    if pin { "a pin" } else { "a reference" },
                    s.folio(f).refcount
                )
            });
            Ok(Flow::Next)
        }
        2 => {
            let (f, sub) = (r.reg[0], r.reg[1]);
            s.irqoff &= !bit;
            if rules.features.gup_fast_recheck && s.mapped_page(0, slot) != Some((f, sub)) {
                drop_refs(s, rules, f, kind, 1);
                r.phase = 3;
                log.note(|| format!("gup_fast rechecks the PTE of slot {slot}: changed -> drops its reference, interrupts on, slow path"));
                return Ok(Flow::Next);
            }
            add_holder(s, 0, slot, f, sub, kind, write, 1)?;
            if pin && rules.features.foll_pin {
                s.procs[0].has_pinned = true;
            }
            log.note(|| {
                format!(
                    "gup_fast {}: done, interrupts on; the device holds page #{f}",
                    if rules.features.gup_fast_recheck {
                        "rechecks the PTE (unchanged)"
                    } else {
                        "(no recheck in this era)"
                    }
                )
            });
            Ok(Flow::Done)
        }
        _ => gup_slow(s, ctx, slot, pin, write, 1, log),
    }
}

// ---------------------------------------------------------------------------------------------
// Fork, exit, munmap, mprotect, madvise.

fn fork(s: &mut State, ctx: &Ctx, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    if s.procs[1].live {
        return Err(err("fork", "a child already exists"));
    }
    s.procs[1] = super::state::Proc {
        live: true,
        ..Default::default()
    };
    for vi in 0..VMAS {
        let v = s.procs[0].vmas[vi];
        if !v.live || v.dontfork {
            if v.live {
                log.note(|| {
                    format!(
                        "fork: VMA [{}, {}) is MADV_DONTFORK: not in the child",
                        v.start, v.end
                    )
                });
            }
            continue;
        }
        // anon_vma_fork: chains (2.6.34+) give the child VMA its own anon_vma, linked after the
        // parent's on every anon_vma the parent chains to; before, the child shares the
        // parent's anon_vma.
        let mut cv = v;
        if v.anon_vma != NONE && rules.features.anon_vma_chains {
            let av = s
                .alloc_anon_vma()
                .ok_or_else(|| err("anon_vma_fork", "no free anon_vma"))?;
            cv.anon_vma = av;
            cv.chain = v.chain | (1 << av);
        }
        s.procs[1].vmas[vi] = cv;
        for av in chain_avs(cv.chain) {
            av_insert(s, av, av_entry(1, vi), None)?;
        }
        for slot in v.start..v.end {
            let pmd = slot as usize / SUBS;
            if (slot as usize).is_multiple_of(SUBS) {
                if let Pmd::Huge { folio, .. } = s.procs[0].pmd[pmd] {
                    if (rules.fork_copy)(s, 0, folio, 0) {
                        // copy_huge_pmd: a maybe-pinned THP is split, then copied at PTE level.
                        log.note(|| format!("fork: THP #{folio} may be pinned -> split its PMD, copy at PTE level"));
                        split_pmd_ptes(s, 0, pmd);
                    } else {
                        if let Pmd::Huge { write, .. } = &mut s.procs[0].pmd[pmd] {
                            *write = false;
                        }
                        s.procs[1].pmd[pmd] = Pmd::Huge {
                            folio,
                            write: false,
                            uffd: false,
                        };
                        let f = s.folio_mut(folio);
                        f.cmap += 1;
                        f.refcount += 1;
                        for sub in f.subs.iter_mut() {
                            sub.exclusive = false;
                        }
                        log.note(|| {
                            format!("fork: THP #{folio} shared by PMD, write-protected in both")
                        });
                        continue;
                    }
                }
            }
            if matches!(s.procs[0].pmd[pmd], Pmd::Huge { .. }) {
                continue;
            }
            match s.procs[0].pte[slot as usize] {
                Pte::Present {
                    folio, sub, uffd, ..
                } => {
                    if (rules.fork_copy)(s, 0, folio, sub) {
                        let version = s.folio(folio).subs[sub as usize].version;
                        let n = new_page(s, rules, 1, vi, version)?;
                        map_pte(s, 1, slot, n, 0, v.write);
                        let small = !s.folio(folio).large();
                        if small && s.pins_on(folio, sub) == 0 {
                            s.findings |= FINDING_BIAS_FALSE_POSITIVE;
                            log.note(|| format!("fork: {} has NO pin but refcount >= {PIN_BIAS}: page_maybe_dma_pinned says pinned -> copied for the child as page #{n} (seed 001's false positive)", page_desc(s, folio, sub)));
                        } else {
                            log.note(|| {
                                format!(
                                    "fork: {} may be pinned -> copied for the child as page #{n}",
                                    page_desc(s, folio, sub)
                                )
                            });
                        }
                    } else {
                        if let Pte::Present { write, .. } = &mut s.procs[0].pte[slot as usize] {
                            *write = false;
                        }
                        if s.procs[1].pmd[pmd] == Pmd::None {
                            s.procs[1].pmd[pmd] = Pmd::Table;
                        }
                        s.procs[1].pte[slot as usize] = Pte::Present {
                            folio,
                            sub,
                            write: false,
                            uffd,
                        };
                        let f = s.folio_mut(folio);
                        f.subs[sub as usize].mapcount += 1;
                        f.subs[sub as usize].exclusive = false;
                        f.refcount += 1;
                    }
                }
                e @ (Pte::Swap { .. } | Pte::Migration { .. }) => {
                    if s.procs[1].pmd[pmd] == Pmd::None {
                        s.procs[1].pmd[pmd] = Pmd::Table;
                    }
                    s.procs[1].pte[slot as usize] = match e {
                        Pte::Swap { folio, sub, .. } => Pte::Swap {
                            folio,
                            sub,
                            exclusive: false,
                        },
                        other => other,
                    };
                }
                Pte::None => {}
            }
        }
    }
    log.note(|| "fork: the child P1 exists; shared pages are write-protected (COW)".to_string());
    Ok(Flow::Done)
}

fn zap_range(s: &mut State, rules: &Rules, proc: u8, start: u8, end: u8, log: &mut Log) -> R<()> {
    let mut slot = start;
    while slot < end {
        let pmd = slot as usize / SUBS;
        let pmd_start = (pmd * SUBS) as u8;
        if let Pmd::Huge { .. } = s.procs[proc as usize].pmd[pmd] {
            if slot == pmd_start && end >= pmd_start + SUBS as u8 {
                zap_pmd(s, proc, pmd);
                slot += SUBS as u8;
                continue;
            }
            split_pmd(s, rules, proc, pmd, log)?;
        }
        zap_pte(s, proc, slot);
        slot += 1;
    }
    Ok(())
}

fn munmap(s: &mut State, ctx: &Ctx, proc: u8, start: u8, end: u8, log: &mut Log) -> R<Flow> {
    zap_range(s, ctx.rules, proc, start, end, log)?;
    for vi in vmas_in(s, proc, start, end)? {
        vma_remove(s, proc, vi);
    }
    log.note(|| format!("P{proc} munmap [{start}, {end})"));
    Ok(Flow::Done)
}

fn child_exit(s: &mut State, ctx: &Ctx, log: &mut Log) -> R<Flow> {
    if !s.procs[1].live {
        return Ok(Flow::Done);
    }
    zap_range(s, ctx.rules, 1, 0, SLOTS as u8, log)?;
    for vi in 0..VMAS {
        if s.procs[1].vmas[vi].live {
            vma_remove(s, 1, vi);
        }
    }
    s.procs[1] = Default::default();
    log.note(|| "the child P1 exits: its mappings are zapped".to_string());
    Ok(Flow::Done)
}

/// Splits huge PMDs that `[start, end)` covers only in part.
fn split_partial_pmds(
    s: &mut State,
    rules: &Rules,
    proc: u8,
    start: u8,
    end: u8,
    log: &mut Log,
) -> R<()> {
    for pmd in 0..super::state::PMDS {
        let (ps, pe) = ((pmd * SUBS) as u8, ((pmd + 1) * SUBS) as u8);
        let overlaps = start < pe && end > ps;
        let whole = start <= ps && end >= pe;
        if overlaps && !whole && matches!(s.procs[proc as usize].pmd[pmd], Pmd::Huge { .. }) {
            split_pmd(s, rules, proc, pmd, log)?;
        }
    }
    Ok(())
}

fn mprotect(s: &mut State, ctx: &Ctx, start: u8, end: u8, write: bool, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    split_partial_pmds(s, rules, 0, start, end, log)?;
    for vi in vmas_in(s, 0, start, end)? {
        s.procs[0].vmas[vi].write = write;
    }
    let mut made = 0;
    for slot in start..end {
        let pmd = slot as usize / SUBS;
        match s.procs[0].pmd[pmd] {
            Pmd::Huge { folio, uffd, .. } if (slot as usize).is_multiple_of(SUBS) => {
                let w = write && (rules.make_writable)(s, folio, 0);
                made += w as u32;
                s.procs[0].pmd[pmd] = Pmd::Huge {
                    folio,
                    write: w,
                    uffd,
                };
            }
            Pmd::Table => {
                if let Pte::Present {
                    folio, sub, uffd, ..
                } = s.procs[0].pte[slot as usize]
                {
                    let w = write && (rules.make_writable)(s, folio, sub);
                    made += w as u32;
                    s.procs[0].pte[slot as usize] = Pte::Present {
                        folio,
                        sub,
                        write: w,
                        uffd,
                    };
                }
            }
            _ => {}
        }
    }
    log.note(|| {
        if write {
            format!("mprotect([{start}, {end}), RW): {} entries made writable at once ({}); the rest stay write-protected until a write fault", made, rules.name)
        } else {
            format!("mprotect([{start}, {end}), READ): entries write-protected")
        }
    });
    Ok(Flow::Done)
}

fn uffd_wp(s: &mut State, start: u8, end: u8, log: &mut Log) -> R<Flow> {
    for slot in start..end {
        let pmd = slot as usize / SUBS;
        match s.procs[0].pmd[pmd] {
            Pmd::Huge { folio, .. } => {
                s.procs[0].pmd[pmd] = Pmd::Huge {
                    folio,
                    write: false,
                    uffd: true,
                }
            }
            Pmd::Table => {
                if let Pte::Present { folio, sub, .. } = s.procs[0].pte[slot as usize] {
                    s.procs[0].pte[slot as usize] = Pte::Present {
                        folio,
                        sub,
                        write: false,
                        uffd: true,
                    };
                }
            }
            _ => {}
        }
    }
    log.note(|| format!("UFFDIO_WRITEPROTECT [{start}, {end}): write-protected, uffd-wp marked"));
    Ok(Flow::Done)
}

fn dontneed(s: &mut State, ctx: &Ctx, start: u8, end: u8, log: &mut Log) -> R<Flow> {
    zap_range(s, ctx.rules, 0, start, end, log)?;
    log.note(|| format!("MADV_DONTNEED [{start}, {end}): pages unmapped; holds keep their pages"));
    Ok(Flow::Done)
}

fn split_folio_op(s: &mut State, ctx: &Ctx, slot: u8, log: &mut Log) -> R<Flow> {
    let Some((f, _)) = s.mapped_page(0, slot) else {
        return Ok(Flow::Done);
    };
    if !s.folio(f).large() {
        log.note(|| {
            format!("split_huge_page: page #{f} at slot {slot} is not a THP; nothing to split")
        });
        return Ok(Flow::Done);
    }
    if (ctx.rules.may_split)(s, f) {
        split_folio_now(s, ctx.rules, f, log)?;
    } else {
        log.note(|| {
            format!(
                "split_huge_page on {}: {} refuses (extra references: -EBUSY)",
                page_desc(s, f, 0),
                ctx.rules.name
            )
        });
    }
    Ok(Flow::Done)
}

// ---------------------------------------------------------------------------------------------
// Reclaim and migration.

fn swapout(s: &mut State, slot: u8, log: &mut Log) -> R<Flow> {
    let (f, _) = s
        .mapped_page(0, slot)
        .ok_or_else(|| err("add_to_swap", format!("nothing mapped at slot {slot}")))?;
    if !s.folio(f).swapcache {
        let fo = s.folio_mut(f);
        fo.swapcache = true;
        fo.refcount += 1;
    }
    log.note(|| {
        format!(
            "add_to_swap: page #{f} enters the swapcache (refcount {})",
            s.folio(f).refcount
        )
    });
    Ok(Flow::Done)
}

/// Replaces every PTE mapping `f` with a swap entry (the unmap half of try_to_unmap).
fn unmap_to_swap(s: &mut State, f: u8) {
    for p in 0..PROCS {
        for slot in 0..SLOTS {
            if let Pte::Present { folio, sub, .. } = s.procs[p].pte[slot] {
                if folio == f {
                    let excl = s.folio(f).subs[sub as usize].exclusive;
                    s.procs[p].pte[slot] = Pte::Swap {
                        folio,
                        sub,
                        exclusive: excl,
                    };
                    let fo = s.folio_mut(f);
                    fo.subs[sub as usize].mapcount -= 1;
                    fo.subs[sub as usize].exclusive = false;
                    s.put(f, 1);
                }
            }
        }
    }
}

/// try_to_unmap for reclaim, as the era orders its check and its unmap.
fn try_to_unmap(
    s: &mut State,
    ctx: &Ctx,
    r: &mut super::state::Regs,
    slot: u8,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    let f = if r.phase == 0 {
        match s.mapped_page(0, slot) {
            Some((f, _)) => f,
            None => return Ok(Flow::Done),
        }
    } else {
        r.reg[0]
    };
    match (rules.unmap, r.phase) {
        (UnmapRule::Always, _) | (UnmapRule::CountThenUnmap, 1) => {
            if flush_blocked(s, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            let before = if log.on {
                page_desc(s, f, 0)
            } else {
                String::new()
            };
            unmap_to_swap(s, f);
            log.note(|| format!("try_to_unmap: ptep_clear_flush (the IPI waits for gup_fast) and install swap entries for {before}"));
            Ok(Flow::Done)
        }
        (UnmapRule::CountThenUnmap, _) => {
            let fo = *s.folio(f);
            if fo.swapcache && fo.extra_refs() != 0 {
                log.note(|| format!("try_to_unmap (KOSAKI): page_count {} != page_mapcount {} + 2 -> SWAP_FAIL, page stays mapped", fo.refcount + 1, fo.subs[0].mapcount));
                return Ok(Flow::Done);
            }
            r.reg[0] = f;
            r.phase = 1;
            log.note(|| format!("try_to_unmap (KOSAKI): page_count {} == page_mapcount {} + 2 -> OK to unmap (no GUP reference yet)", fo.refcount + 1, fo.subs[0].mapcount));
            Ok(Flow::Next)
        }
        (UnmapRule::ClearThenShare, _) => {
            // ptep_clear_flush, then folio_try_share_anon_rmap_pte, under the PT lock: one step,
            // since gup_fast sees a cleared PTE and the slow path waits for the lock.
            if flush_blocked(s, ctx.tid) || !lock_free(s.ptl, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            let fo = *s.folio(f);
            if fo.subs[0].exclusive && (rules.maybe_pinned)(&fo) {
                log.note(|| format!("try_to_unmap: clear+flush, then folio_try_share_anon_rmap_pte fails on {} (maybe pinned) -> PTE restored, abort", page_desc(s, f, 0)));
                return Ok(Flow::Done);
            }
            unmap_to_swap(s, f);
            log.note(|| {
                format!(
                    "try_to_unmap: clear+flush, share check passes -> swap entries for page #{f}"
                )
            });
            Ok(Flow::Done)
        }
    }
}

/// MADV_PAGEOUT over a range, in one step.
fn pageout(s: &mut State, ctx: &Ctx, start: u8, end: u8, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    let mut seen = Vec::new();
    for slot in start..end {
        let Some((f, _)) = s.mapped_page(0, slot) else {
            continue;
        };
        if seen.contains(&f) {
            continue;
        }
        seen.push(f);
        if s.folio(f).large() {
            if !(rules.may_split)(s, f) {
                log.note(|| {
                    format!(
                        "reclaim: {} cannot be split (extra references): not reclaimed",
                        page_desc(s, f, 0)
                    )
                });
                continue;
            }
            split_folio_now(s, rules, f, log)?;
        }
    }
    for slot in start..end {
        let Some((f, _)) = s.mapped_page(0, slot) else {
            continue;
        };
        swapout(s, slot, log)?;
        let fo = *s.folio(f);
        let ok = match rules.unmap {
            UnmapRule::Always => true,
            UnmapRule::CountThenUnmap => fo.extra_refs() == 0,
            UnmapRule::ClearThenShare => !(fo.subs[0].exclusive && (rules.maybe_pinned)(&fo)),
        };
        if ok {
            unmap_to_swap(s, f);
            log.note(|| format!("reclaim: page #{f} at slot {slot} unmapped to a swap entry (stays in the swapcache while referenced)"));
        } else {
            log.note(|| {
                format!(
                    "reclaim: try_to_unmap refuses page #{f} at slot {slot} ({})",
                    rules.name
                )
            });
        }
    }
    Ok(Flow::Done)
}

/// Moves every mapping and hold of `from` to a copy (migration that succeeded, in one step).
fn migrate_now(s: &mut State, from: u8, log: &mut Log) -> R<u8> {
    let old = *s.folio(from);
    let to = s
        .alloc_folio(old.nr, old.anon_vma)
        .ok_or_else(|| err("migrate_pages", "no free folio"))?;
    *s.folio_mut(to) = old;
    for p in 0..PROCS {
        for e in s.procs[p].pmd.iter_mut() {
            if let Pmd::Huge { folio, .. } = e {
                if *folio == from {
                    *folio = to;
                }
            }
        }
        for e in s.procs[p].pte.iter_mut() {
            match e {
                Pte::Present { folio, .. }
                | Pte::Swap { folio, .. }
                | Pte::Migration { folio, .. }
                    if *folio == from =>
                {
                    *folio = to
                }
                _ => {}
            }
        }
    }
    *s.folio_mut(from) = Default::default();
    log.note(|| format!("migrate: page #{from} moved to page #{to}"));
    Ok(to)
}

fn compact(s: &mut State, ctx: &Ctx, start: u8, end: u8, log: &mut Log) -> R<Flow> {
    let mut seen = Vec::new();
    for slot in start..end {
        let Some((f, _)) = s.mapped_page(0, slot) else {
            continue;
        };
        if seen.contains(&f) {
            continue;
        }
        if (ctx.rules.may_migrate)(s, f) {
            let to = migrate_now(s, f, log)?;
            seen.push(to);
        } else {
            seen.push(f);
            log.note(|| {
                format!(
                    "compaction: {} has extra references: not migrated",
                    page_desc(s, f, 0)
                )
            });
        }
    }
    Ok(Flow::Done)
}

/// Migration of a small page in steps: unmap to migration entries | copy | remove_migration_ptes
/// (one VMA of the anon_vma's list per step, under the anon_vma lock).
fn migrate(
    s: &mut State,
    ctx: &Ctx,
    r: &mut super::state::Regs,
    slot: u8,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    match r.phase {
        0 => {
            let Some((f, _)) = s.mapped_page(0, slot) else {
                return Ok(Flow::Done);
            };
            if s.folio(f).large() {
                return Err(err("migrate", "the stepped migration models small pages"));
            }
            if flush_blocked(s, ctx.tid) || !lock_free(s.anon_vma_lock, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            let fo = *s.folio(f);
            if fo.subs[0].exclusive && (rules.maybe_pinned)(&fo) {
                log.note(|| "try_to_migrate: maybe pinned -> abort".to_string());
                return Ok(Flow::Done);
            }
            // isolate_lru_page: migration's own reference.
            s.folio_mut(f).refcount += 1;
            for p in 0..PROCS {
                for sl in 0..SLOTS {
                    if let Pte::Present {
                        folio, sub, write, ..
                    } = s.procs[p].pte[sl]
                    {
                        if folio == f {
                            let excl = s.folio(f).subs[sub as usize].exclusive;
                            s.procs[p].pte[sl] = Pte::Migration {
                                folio,
                                sub,
                                write,
                                exclusive: excl,
                            };
                            s.folio_mut(f).subs[sub as usize].mapcount -= 1;
                            s.put(f, 1);
                        }
                    }
                }
            }
            r.reg = [f, f, 0];
            r.phase = 1;
            log.note(|| format!("try_to_migrate: PTEs of page #{f} replaced by migration entries"));
            Ok(Flow::Next)
        }
        1 => {
            let f = r.reg[0];
            s.folio_mut(f).refcount -= 1;
            let ok = (rules.may_migrate)(s, f);
            s.folio_mut(f).refcount += 1;
            if ok {
                let old = *s.folio(f);
                let n = s
                    .alloc_folio(1, old.anon_vma)
                    .ok_or_else(|| err("migrate_pages", "no free folio"))?;
                s.folio_mut(n).subs[0].version = old.subs[0].version;
                s.folio_mut(n).swapcache = false;
                r.reg[1] = n;
                log.note(|| {
                    format!("migrate_folio: refcount frozen, contents copied to page #{n}")
                });
            } else {
                log.note(|| {
                    format!("migrate_folio: page #{f} has extra references -> keep it, restore")
                });
            }
            r.phase = 2;
            Ok(Flow::Next)
        }
        _ => {
            let (f, n) = (r.reg[0], r.reg[1]);
            if !lock_free(s.anon_vma_lock, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            s.anon_vma_lock = ctx.tid as u8 + 1;
            let av = s.folio(f).anon_vma;
            let list = s.anon_vmas[av as usize];
            let idx = r.reg[2] as usize;
            if idx < list.len as usize {
                let e = list.list[idx];
                let (p, vi) = (e >> 4, (e & 0xf) as usize);
                let v = s.procs[p as usize].vmas[vi];
                let mut found = 0;
                for sl in v.start..v.end {
                    if let Pte::Migration {
                        folio,
                        sub,
                        write,
                        exclusive,
                    } = s.procs[p as usize].pte[sl as usize]
                    {
                        if folio == f {
                            s.procs[p as usize].pte[sl as usize] = Pte::None;
                            map_pte(s, p, sl, n, sub.min(s.folio(n).nr - 1), write);
                            s.folio_mut(n).subs[0].exclusive = exclusive;
                            found += 1;
                        }
                    }
                }
                r.reg[2] += 1;
                log.note(|| format!("remove_migration_ptes visits P{p}'s VMA [{}, {}): {found} migration entr{} restored", v.start, v.end, if found == 1 { "y" } else { "ies" }));
                return Ok(Flow::Next);
            }
            s.anon_vma_lock = 0;
            if let Some((p, sl)) = invariant::leftover_migration(s, f) {
                log.note(|| format!("remove_migration_ptes is done, but P{p} slot {sl} still holds a migration entry for page #{f}: the walk missed it"));
                return Err(Stop::Broken(Invariant::RmapSeesMigration));
            }
            if n != f {
                s.put(f, 1);
            } else {
                s.folio_mut(f).refcount -= 1;
            }
            log.note(|| {
                "remove_migration_ptes is done: every migration entry was found".to_string()
            });
            Ok(Flow::Done)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KSM and khugepaged.

fn ksm(s: &mut State, ctx: &Ctx, r: &mut super::state::Regs, slot: u8, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    if !rules.features.ksm {
        return Err(Stop::NotApplicable(format!("{} has no KSM", rules.name)));
    }
    let order = ctx.variant.clear_order;
    let tid1 = ctx.tid as u8 + 1;
    let clear = |s: &mut State, r: &mut super::state::Regs| {
        if let Pte::Present {
            folio, sub, write, ..
        } = s.procs[0].pte[slot as usize]
        {
            r.reg = [folio, sub, write as u8];
            s.procs[0].pte[slot as usize] = Pte::None;
        }
    };
    let restore = |s: &mut State, r: &super::state::Regs| {
        s.procs[0].pte[slot as usize] = Pte::Present {
            folio: r.reg[0],
            sub: r.reg[1],
            write: r.reg[2] != 0,
            uffd: false,
        };
    };
    match r.phase {
        0 => {
            if !lock_free(s.ptl, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            if let Some((f, _)) = s.mapped_page(0, slot) {
                if s.folio(f).large() {
                    // try_to_merge_one_page: a THP is split first.
                    if !(rules.may_split)(s, f) {
                        log.note(|| {
                            format!(
                                "ksm: split_huge_page of {} refused: not merged",
                                page_desc(s, f, 0)
                            )
                        });
                        return Ok(Flow::Done);
                    }
                    split_folio_now(s, rules, f, log)?;
                }
            }
            let Some((f, sub)) = (match s.lookup(0, slot) {
                Lookup::Pte(Pte::Present { folio, sub, .. }) => Some((folio, sub)),
                _ => None,
            }) else {
                return Ok(Flow::Done);
            };
            match order {
                ClearOrder::ClearThenCheck => {
                    if flush_blocked(s, ctx.tid) {
                        return Ok(Flow::Blocked);
                    }
                    s.ptl = tid1;
                    clear(s, r);
                    log.note(|| format!("ksm write_protect_page: ptep_clear_flush on slot {slot} ({}); the IPI has waited for any gup_fast", page_desc(s, f, sub)));
                }
                ClearOrder::CheckBeforeClear => {
                    s.ptl = tid1;
                    r.reg = [f, sub, 0];
                    if !(rules.may_merge)(s, f, sub) {
                        s.ptl = 0;
                        log.note(|| {
                            format!(
                                "ksm (check first): {}: count check fails -> not merged",
                                page_desc(s, f, sub)
                            )
                        });
                        return Ok(Flow::Done);
                    }
                    log.note(|| {
                        format!(
                            "ksm (check BEFORE clear): {}: count check passes, PTE still present",
                            page_desc(s, f, sub)
                        )
                    });
                }
            }
            r.phase = 1;
            Ok(Flow::Next)
        }
        1 => {
            let (f, sub) = (r.reg[0], r.reg[1]);
            match order {
                ClearOrder::ClearThenCheck => {
                    if !(rules.may_merge)(s, f, sub) {
                        restore(s, r);
                        s.ptl = 0;
                        log.note(|| format!("ksm: mapcount + 1 + swapped != page_count for {} -> PTE restored, not merged", page_desc(s, f, sub)));
                        return Ok(Flow::Done);
                    }
                    log.note(|| format!("ksm: count check passes on {}", page_desc(s, f, sub)));
                }
                ClearOrder::CheckBeforeClear => {
                    if flush_blocked(s, ctx.tid) {
                        return Ok(Flow::Blocked);
                    }
                    clear(s, r);
                    log.note(|| format!("ksm: ptep_clear_flush on slot {slot} (after the check)"));
                }
            }
            r.phase = 2;
            Ok(Flow::Next)
        }
        _ => {
            let (f, sub) = (r.reg[0], r.reg[1]);
            let version = s.folio(f).subs[sub as usize].version;
            let k = s
                .alloc_folio(1, NONE)
                .ok_or_else(|| err("replace_page", "no free folio"))?;
            s.folio_mut(k).ksm = true;
            s.folio_mut(k).subs[0].version = version;
            map_pte(s, 0, slot, k, 0, false);
            s.folio_mut(f).subs[sub as usize].mapcount -= 1;
            s.put(f, 1);
            s.ptl = 0;
            log.note(|| format!("ksm replace_page: slot {slot} now maps KSM page #{k} read-only; old page #{f} refcount {}", if s.folio(f).live { s.folio(f).refcount } else { 0 }));
            Ok(Flow::Done)
        }
    }
}

fn collapse(
    s: &mut State,
    ctx: &Ctx,
    r: &mut super::state::Regs,
    slot: u8,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    if !rules.features.khugepaged {
        return Err(Stop::NotApplicable(format!(
            "{} has no khugepaged",
            rules.name
        )));
    }
    let pmd = slot as usize / SUBS;
    let base = (pmd * SUBS) as u8;
    let tid1 = ctx.tid as u8 + 1;
    let pages = |s: &State| -> Vec<u8> {
        let mut v: Vec<u8> = (0..SUBS)
            .filter_map(|i| s.procs[0].pte[base as usize + i].page().map(|p| p.0))
            .collect();
        v.dedup();
        v
    };
    let check = |s: &State| pages(s).into_iter().all(|f| (rules.may_collapse)(s, f));
    let order = ctx.variant.clear_order;
    match r.phase {
        0 => {
            if !lock_free(s.mmap_lock, ctx.tid) || !lock_free(s.ptl, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            if s.procs[0].pmd[pmd] != Pmd::Table
                || (0..SUBS).any(|i| {
                    !matches!(
                        s.procs[0].pte[base as usize + i],
                        Pte::Present { .. } | Pte::None
                    )
                })
            {
                log.note(|| {
                    format!("collapse: PMD {pmd} is not a table of present pages: nothing to do")
                });
                return Ok(Flow::Done);
            }
            match order {
                ClearOrder::ClearThenCheck => {
                    if flush_blocked(s, ctx.tid) {
                        return Ok(Flow::Blocked);
                    }
                    s.mmap_lock = tid1;
                    s.procs[0].pmd[pmd] = Pmd::Detached;
                    log.note(|| format!("khugepaged: mmap_lock taken, pmdp_collapse_flush detaches PMD {pmd} (the IPI has waited for any gup_fast)"));
                }
                ClearOrder::CheckBeforeClear => {
                    s.mmap_lock = tid1;
                    if !check(s) {
                        s.mmap_lock = 0;
                        log.note(|| {
                            "khugepaged (check first): page_count check fails -> no collapse"
                                .to_string()
                        });
                        return Ok(Flow::Done);
                    }
                    log.note(|| "khugepaged (check BEFORE clear): page_count == 1 + swapcache for every page, PMD still mapped".to_string());
                }
            }
            r.phase = 1;
            Ok(Flow::Next)
        }
        1 => {
            match order {
                ClearOrder::ClearThenCheck => {
                    if !check(s) {
                        s.procs[0].pmd[pmd] = Pmd::Table;
                        s.mmap_lock = 0;
                        log.note(|| "khugepaged __collapse_huge_page_isolate: page_count != 1 + PageSwapCache -> SCAN_PAGE_COUNT, PMD restored".to_string());
                        return Ok(Flow::Done);
                    }
                    log.note(|| "khugepaged: count check passes on every page".to_string());
                }
                ClearOrder::CheckBeforeClear => {
                    if flush_blocked(s, ctx.tid) {
                        return Ok(Flow::Blocked);
                    }
                    s.procs[0].pmd[pmd] = Pmd::Detached;
                    log.note(|| {
                        format!(
                            "khugepaged: pmdp_collapse_flush detaches PMD {pmd} (after the check)"
                        )
                    });
                }
            }
            r.phase = 2;
            Ok(Flow::Next)
        }
        _ => {
            let vi = vma_of(s, 0, base, "collapse_huge_page")?;
            let av = anon_vma_prepare(s, 0, vi)?;
            let n = s
                .alloc_folio(SUBS as u8, av)
                .ok_or_else(|| err("collapse_huge_page", "no free folio"))?;
            for i in 0..SUBS {
                let e = s.procs[0].pte[base as usize + i];
                let version = e
                    .page()
                    .map(|(f, sub)| s.folio(f).subs[sub as usize].version)
                    .unwrap_or(0);
                s.folio_mut(n).subs[i].version = version;
                s.folio_mut(n).subs[i].exclusive = rules.features.anon_exclusive;
                zap_pte(s, 0, base + i as u8);
            }
            s.folio_mut(n).cmap = 1;
            s.folio_mut(n).refcount = 1;
            let write = s.procs[0].vmas[vi].write;
            s.procs[0].pmd[pmd] = Pmd::Huge {
                folio: n,
                write,
                uffd: false,
            };
            s.mmap_lock = 0;
            log.note(|| format!("khugepaged: contents copied into new THP #{n}, mapped by PMD {pmd}; old pages unmapped"));
            Ok(Flow::Done)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// mremap.

#[allow(clippy::too_many_arguments)]
fn mremap(
    s: &mut State,
    ctx: &Ctx,
    r: &mut super::state::Regs,
    (start, end, dst): (u8, u8, u8),
    dontunmap: bool,
    repoint: bool,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    if dontunmap && !rules.features.mremap_dontunmap {
        return Err(Stop::NotApplicable(format!(
            "{} has no MREMAP_DONTUNMAP",
            rules.name
        )));
    }
    let len = end - start;
    match r.phase {
        0 => {
            if !lock_free(s.anon_vma_lock, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            let src = vma_of(s, 0, start, "mremap")?;
            let v = s.procs[0].vmas[src];
            if v.start != start || v.end != end {
                vmas_in(s, 0, start, end)?;
            }
            let src = vma_of(s, 0, start, "mremap")?;
            let v = s.procs[0].vmas[src];
            if (dst..dst + len).any(|sl| s.procs[0].vma_at(sl).is_some())
                || dst as usize + len as usize > SLOTS
            {
                return Err(err("mremap", "destination busy or out of range"));
            }
            let ni = s.procs[0]
                .vmas
                .iter()
                .position(|v| !v.live)
                .ok_or_else(|| err("copy_vma", "no free VMA slot"))?;
            s.procs[0].vmas[ni] = Vma {
                start: dst,
                end: dst + len,
                ..v
            };
            let src_entry = av_entry(0, src);
            for av in chain_avs(v.chain) {
                let before = ctx.variant.mremap_dst_first.then_some(src_entry);
                av_insert(s, av, av_entry(0, ni), before)?;
            }
            r.reg = [src as u8, ni as u8, 0];
            r.phase = 1;
            log.note(|| {
                format!(
                    "mremap copy_vma: new VMA [{dst}, {}) linked on the anon_vma {} the old one",
                    dst + len,
                    if ctx.variant.mremap_dst_first {
                        "BEFORE"
                    } else {
                        "after"
                    }
                )
            });
            Ok(Flow::Next)
        }
        1 => {
            let i = r.reg[2];
            let (from, to) = (start + i, dst + i);
            let (fp, tp) = (from as usize / SUBS, to as usize / SUBS);
            if !lock_free(s.ptl, ctx.tid) {
                return Ok(Flow::Blocked);
            }
            if (from as usize).is_multiple_of(SUBS)
                && (to as usize).is_multiple_of(SUBS)
                && i + SUBS as u8 <= len
            {
                if let Pmd::Huge { .. } = s.procs[0].pmd[fp] {
                    if s.procs[0].pmd[tp] == Pmd::None {
                        s.procs[0].pmd[tp] = s.procs[0].pmd[fp];
                        s.procs[0].pmd[fp] = Pmd::None;
                        r.reg[2] += SUBS as u8;
                        log.note(|| {
                            format!(
                                "move_page_tables: huge PMD moved from slot {from} to slot {to}"
                            )
                        });
                        if r.reg[2] >= len {
                            r.phase = 2;
                        }
                        return Ok(Flow::Next);
                    }
                }
            }
            if let Pmd::Huge { .. } = s.procs[0].pmd[fp] {
                split_pmd(s, rules, 0, fp, log)?;
            }
            let e = s.procs[0].pte[from as usize];
            if e != Pte::None {
                if s.procs[0].pmd[tp] == Pmd::None {
                    s.procs[0].pmd[tp] = Pmd::Table;
                }
                s.procs[0].pte[to as usize] = e;
                s.procs[0].pte[from as usize] = Pte::None;
            }
            r.reg[2] += 1;
            log.note(|| {
                format!(
                    "move_ptes: slot {from} -> slot {to} ({})",
                    match e {
                        Pte::Migration { .. } => "a MIGRATION ENTRY moves",
                        Pte::Present { .. } => "a present PTE moves",
                        Pte::Swap { .. } => "a swap entry moves",
                        Pte::None => "empty",
                    }
                )
            });
            if r.reg[2] >= len {
                r.phase = 2;
            }
            Ok(Flow::Next)
        }
        _ => {
            let src = r.reg[0] as usize;
            if !dontunmap {
                if !lock_free(s.anon_vma_lock, ctx.tid) {
                    return Ok(Flow::Blocked);
                }
                vma_remove(s, 0, src);
            }
            if repoint {
                s.guest_base = dst;
            }
            log.note(|| {
                format!(
                    "mremap: {}{}",
                    if dontunmap {
                        "old VMA kept, empty (MREMAP_DONTUNMAP)"
                    } else {
                        "old VMA unlinked"
                    },
                    if repoint {
                        "; the VMM re-points the memslot to the new address"
                    } else {
                        ""
                    }
                )
            });
            Ok(Flow::Done)
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn mmap(
    s: &mut State,
    ctx: &Ctx,
    (start, end): (u8, u8),
    thp: bool,
    dontfork: bool,
    populate: bool,
    log: &mut Log,
) -> R<Flow> {
    let rules = ctx.rules;
    if end as usize > SLOTS || start >= end {
        return Err(err(
            "mmap",
            format!("range [{start}, {end}) outside 0..{SLOTS}"),
        ));
    }
    let vi = s.procs[0]
        .vmas
        .iter()
        .position(|v| !v.live)
        .ok_or_else(|| err("mmap", "no free VMA slot"))?;
    s.procs[0].live = true;
    s.procs[0].vmas[vi] = Vma {
        live: true,
        start,
        end,
        write: true,
        dontfork,
        anon_vma: NONE,
        chain: 0,
    };
    let huge = thp && rules.features.thp;
    if populate {
        let mut slot = start;
        while slot < end {
            if huge && (slot as usize).is_multiple_of(SUBS) && slot + SUBS as u8 <= end {
                let av = anon_vma_prepare(s, 0, vi)?;
                let f = s
                    .alloc_folio(SUBS as u8, av)
                    .ok_or_else(|| err("do_huge_pmd_anonymous_page", "no free folio"))?;
                let fo = s.folio_mut(f);
                fo.cmap = 1;
                fo.refcount = 1;
                for sub in fo.subs.iter_mut() {
                    sub.exclusive = rules.features.anon_exclusive;
                }
                s.procs[0].pmd[slot as usize / SUBS] = Pmd::Huge {
                    folio: f,
                    write: true,
                    uffd: false,
                };
                slot += SUBS as u8;
            } else {
                let f = new_page(s, rules, 0, vi, 0)?;
                map_pte(s, 0, slot, f, 0, true);
                slot += 1;
            }
        }
    }
    log.note(|| {
        format!(
            "mmap [{start}, {end}){}{}, populated by write faults{}",
            if huge { " MADV_HUGEPAGE" } else { "" },
            if dontfork { " MADV_DONTFORK" } else { "" },
            if huge { " (a THP per PMD)" } else { "" }
        )
    });
    Ok(Flow::Done)
}

/// Runs one step of `op` for thread `ctx.tid`.
pub fn step(s: &mut State, ctx: &Ctx, op: &Op, log: &mut Log) -> R<Flow> {
    let mut r = s.threads[ctx.tid];
    let flow = match *op {
        Op::Mmap {
            start,
            end,
            thp,
            dontfork,
            populate,
        } => mmap(s, ctx, (start, end), thp, dontfork, populate, log)?,
        Op::Write { proc, slot } => cpu_write(s, ctx, proc, slot, log)?,
        Op::Read { proc, slot } => cpu_read(s, ctx, proc, slot, log)?,
        Op::Gup {
            slot,
            pin,
            write,
            count,
        } => gup_slow(s, ctx, slot, pin, write, count, log)?,
        Op::GupFast { slot, pin, write } => gup_fast(s, ctx, &mut r, slot, pin, write, log)?,
        Op::Fork => fork(s, ctx, log)?,
        Op::ChildExit => child_exit(s, ctx, log)?,
        Op::Munmap { proc, start, end } => munmap(s, ctx, proc, start, end, log)?,
        Op::Mprotect { start, end, write } => mprotect(s, ctx, start, end, write, log)?,
        Op::SplitPmd { slot } => {
            if !ctx.rules.features.thp {
                log.note(|| format!("{}: no THP, nothing to split", ctx.rules.name));
            }
            split_pmd(s, ctx.rules, 0, slot as usize / SUBS, log)?;
            Flow::Done
        }
        Op::SplitFolio { slot } => split_folio_op(s, ctx, slot, log)?,
        Op::Ksm { slot } => ksm(s, ctx, &mut r, slot, log)?,
        Op::Collapse { slot } => collapse(s, ctx, &mut r, slot, log)?,
        Op::Swapout { slot } => swapout(s, slot, log)?,
        Op::TryToUnmap { slot } => try_to_unmap(s, ctx, &mut r, slot, log)?,
        Op::Pageout { start, end } => pageout(s, ctx, start, end, log)?,
        Op::Migrate { slot } => migrate(s, ctx, &mut r, slot, log)?,
        Op::Compact { start, end } => compact(s, ctx, start, end, log)?,
        Op::Mremap {
            start,
            end,
            dst,
            dontunmap,
            repoint,
        } => mremap(s, ctx, &mut r, (start, end, dst), dontunmap, repoint, log)?,
        Op::Dontneed { start, end } => dontneed(s, ctx, start, end, log)?,
        Op::UffdWp { start, end } => {
            if !ctx.rules.features.uffd_wp {
                return Err(Stop::NotApplicable(format!(
                    "{} has no userfaultfd write-protect",
                    ctx.rules.name
                )));
            }
            uffd_wp(s, start, end, log)?
        }
        Op::Round => round(s, ctx, log)?,
        Op::DeviceWrite { off } => device_write(s, ctx, off, log)?,
        Op::DeviceRead { off } => device_read(s, ctx, off, log)?,
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

/// The name of an op, for traces.
pub fn op_name(op: &Op) -> String {
    match op {
        Op::Mmap { start, end, .. } => format!("mmap {start}..{end}"),
        Op::Write { proc: 0, slot } => format!("write {slot}"),
        Op::Write { slot, .. } => format!("child write {slot}"),
        Op::Read { proc: 0, slot } => format!("read {slot}"),
        Op::Read { slot, .. } => format!("child read {slot}"),
        Op::Gup {
            slot,
            pin,
            write,
            count,
        } => format!(
            "{} {} {slot}{}",
            if *pin { "pin" } else { "get" },
            if *write { "write" } else { "read" },
            if *count > 1 {
                format!(" x{count}")
            } else {
                String::new()
            }
        ),
        Op::GupFast { slot, pin, write } => format!(
            "gup-fast {} {} {slot}",
            if *pin { "pin" } else { "get" },
            if *write { "write" } else { "read" }
        ),
        Op::Fork => "fork".into(),
        Op::ChildExit => "child exit".into(),
        Op::Munmap {
            proc: 0,
            start,
            end,
        } => format!("munmap {start}..{end}"),
        Op::Munmap { start, end, .. } => format!("child munmap {start}..{end}"),
        Op::Mprotect { start, end, write } => format!(
            "mprotect {start}..{end} {}",
            if *write { "rw" } else { "ro" }
        ),
        Op::SplitPmd { slot } => format!("split-pmd {slot}"),
        Op::SplitFolio { slot } => format!("split-folio {slot}"),
        Op::Ksm { slot } => format!("ksm {slot}"),
        Op::Collapse { slot } => format!("collapse {slot}"),
        Op::Swapout { slot } => format!("swapout {slot}"),
        Op::TryToUnmap { slot } => format!("try-to-unmap {slot}"),
        Op::Pageout { start, end } => format!("pageout {start}..{end}"),
        Op::Migrate { slot } => format!("migrate {slot}"),
        Op::Compact { start, end } => format!("compact {start}..{end}"),
        Op::Mremap {
            start,
            end,
            dst,
            dontunmap,
            ..
        } => format!(
            "mremap {start}..{end} {dst}{}",
            if *dontunmap { " dontunmap" } else { "" }
        ),
        Op::Dontneed { start, end } => format!("dontneed {start}..{end}"),
        Op::UffdWp { start, end } => format!("uffd-wp {start}..{end}"),
        Op::Round => "round".into(),
        Op::DeviceWrite { off } => format!("device-write {off}"),
        Op::DeviceRead { off } => format!("device-read {off}"),
    }
}

/// Parses a `[model]` step: `VERB ARGS...`, slots as numbers, ranges as `A..B`, an optional
/// leading `child` for process 1. The grammar is in docs/model.md.
pub fn parse_op(text: &str) -> Result<Op, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (child, words) = match words.first() {
        Some(&"child") => (true, &words[1..]),
        _ => (false, &words[..]),
    };
    let proc = child as u8;
    let verb = *words.first().ok_or("empty step")?;
    let args = &words[1..];
    let num = |i: usize| -> Result<u8, String> {
        let w = args
            .get(i)
            .ok_or_else(|| format!("`{verb}` needs argument {}", i + 1))?;
        let n: u8 = w
            .parse()
            .map_err(|_| format!("`{w}` is not a slot number"))?;
        if n as usize >= SLOTS {
            return Err(format!("slot {n} is outside 0..{SLOTS}"));
        }
        Ok(n)
    };
    let range = |i: usize| -> Result<(u8, u8), String> {
        let w = args
            .get(i)
            .ok_or_else(|| format!("`{verb}` needs a range A..B"))?;
        let (a, b) = w
            .split_once("..")
            .ok_or_else(|| format!("`{w}` is not a range A..B"))?;
        let a: u8 = a
            .parse()
            .map_err(|_| format!("`{w}` is not a range A..B"))?;
        let b: u8 = b
            .parse()
            .map_err(|_| format!("`{w}` is not a range A..B"))?;
        if a >= b || b as usize > SLOTS {
            return Err(format!("range `{w}` is empty or outside 0..{SLOTS}"));
        }
        Ok((a, b))
    };
    let flags: Vec<&str> = args
        .iter()
        .copied()
        .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_alphabetic()))
        .collect();
    let known = |allowed: &[&str]| -> Result<(), String> {
        for f in &flags {
            if !allowed.contains(f) && !f.starts_with('x') {
                return Err(format!(
                    "`{verb}` does not take `{f}` (allowed: {})",
                    allowed.join(", ")
                ));
            }
        }
        Ok(())
    };
    let no_child = || -> Result<(), String> {
        if child {
            Err(format!("`{verb}` runs in the VMM process only"))
        } else {
            Ok(())
        }
    };
    let op = match verb {
        "mmap" => {
            no_child()?;
            known(&["thp", "dontfork", "empty"])?;
            let (start, end) = range(0)?;
            Op::Mmap {
                start,
                end,
                thp: flags.contains(&"thp"),
                dontfork: flags.contains(&"dontfork"),
                populate: !flags.contains(&"empty"),
            }
        }
        "write" => Op::Write {
            proc,
            slot: num(0)?,
        },
        "read" => Op::Read {
            proc,
            slot: num(0)?,
        },
        "pin" | "get" => {
            no_child()?;
            known(&["read", "write"])?;
            let slot_idx = args
                .iter()
                .position(|w| w.parse::<u8>().is_ok())
                .ok_or("missing slot")?;
            let count = match args.iter().find(|w| w.starts_with('x')) {
                Some(w) => w[1..]
                    .parse::<u16>()
                    .map_err(|_| format!("`{w}` is not a count xN"))?,
                None => 1,
            };
            Op::Gup {
                slot: num(slot_idx)?,
                pin: verb == "pin",
                write: if verb == "pin" {
                    !flags.contains(&"read")
                } else {
                    flags.contains(&"write")
                },
                count,
            }
        }
        "gup-fast" => {
            no_child()?;
            known(&["pin", "get", "read", "write"])?;
            let slot_idx = args
                .iter()
                .position(|w| w.parse::<u8>().is_ok())
                .ok_or("missing slot")?;
            Op::GupFast {
                slot: num(slot_idx)?,
                pin: !flags.contains(&"get"),
                write: flags.contains(&"write"),
            }
        }
        "fork" => {
            no_child()?;
            Op::Fork
        }
        "exit" if child => Op::ChildExit,
        "munmap" => {
            let (start, end) = range(0)?;
            Op::Munmap { proc, start, end }
        }
        "mprotect" => {
            no_child()?;
            let (start, end) = range(0)?;
            let write = match args.get(1) {
                Some(&"rw") => true,
                Some(&"ro") => false,
                _ => return Err("mprotect needs `ro` or `rw`".into()),
            };
            Op::Mprotect { start, end, write }
        }
        "split-pmd" => Op::SplitPmd { slot: num(0)? },
        "split-folio" => Op::SplitFolio { slot: num(0)? },
        "ksm" => Op::Ksm { slot: num(0)? },
        "collapse" => Op::Collapse { slot: num(0)? },
        "swapout" => Op::Swapout { slot: num(0)? },
        "try-to-unmap" => Op::TryToUnmap { slot: num(0)? },
        "pageout" => {
            let (start, end) = range(0)?;
            Op::Pageout { start, end }
        }
        "migrate" => Op::Migrate { slot: num(0)? },
        "compact" => {
            let (start, end) = range(0)?;
            Op::Compact { start, end }
        }
        "mremap" => {
            no_child()?;
            known(&["dontunmap", "repoint"])?;
            let (start, end) = range(0)?;
            Op::Mremap {
                start,
                end,
                dst: num(1)?,
                dontunmap: flags.contains(&"dontunmap"),
                repoint: flags.contains(&"repoint"),
            }
        }
        "dontneed" => {
            let (start, end) = range(0)?;
            Op::Dontneed { start, end }
        }
        "uffd-wp" => {
            let (start, end) = range(0)?;
            Op::UffdWp { start, end }
        }
        "round" => Op::Round,
        "device-write" => Op::DeviceWrite { off: num(0)? },
        "device-read" => Op::DeviceRead { off: num(0)? },
        other => return Err(format!("unknown step `{other}`")),
    };
    if child
        && !matches!(
            op,
            Op::Write { .. } | Op::Read { .. } | Op::Munmap { .. } | Op::ChildExit
        )
    {
        return Err(format!(
            "`child {verb}`: the child can write, read, munmap or exit"
        ));
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: a step as written in a config, and what it must parse to (or that it fails).
    #[test]
    fn parse_rows() {
        let rows: &[(&str, Option<Op>)] = &[
            (
                "mmap 0..4 thp",
                Some(Op::Mmap {
                    start: 0,
                    end: 4,
                    thp: true,
                    dontfork: false,
                    populate: true,
                }),
            ),
            (
                "pin 0",
                Some(Op::Gup {
                    slot: 0,
                    pin: true,
                    write: true,
                    count: 1,
                }),
            ),
            (
                "get 8 x1024",
                Some(Op::Gup {
                    slot: 8,
                    pin: false,
                    write: false,
                    count: 1024,
                }),
            ),
            (
                "gup-fast pin write 0",
                Some(Op::GupFast {
                    slot: 0,
                    pin: true,
                    write: true,
                }),
            ),
            ("child write 2", Some(Op::Write { proc: 1, slot: 2 })),
            ("child exit", Some(Op::ChildExit)),
            (
                "mremap 0..1 4",
                Some(Op::Mremap {
                    start: 0,
                    end: 1,
                    dst: 4,
                    dontunmap: false,
                    repoint: false,
                }),
            ),
            ("child fork", None),
            ("mmap 4..2", None),
            ("frobnicate 1", None),
            ("mprotect 0..2", None),
        ];
        for (text, want) in rows {
            let got = parse_op(text);
            match want {
                Some(op) => assert_eq!(got.as_ref(), Ok(op), "{text}"),
                None => assert!(got.is_err(), "{text} must not parse: {got:?}"),
            }
        }
    }
}
