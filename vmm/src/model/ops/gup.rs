//! mm/gup.c: get_user_pages / pin_user_pages (the slow path: mmap_lock and the page-table
//! lock, fault as the era's GUP rule says, then take the reference or pin) and gup_fast in
//! steps (read the PTE with interrupts off | take the reference | recheck and leave the
//! interrupts-off window), and the device's holders they leave.
//!
//! Seeds and commits: seed 000 (gup_fast takes references without locks; Nick Piggin's race
//! against KOSAKI's count check), seed 004 (gup_fast "runs with irq disabled", so a TLB-flush
//! IPI waits for it), seed 001 (FOLL_PIN's GUP_PIN_COUNTING_BIAS, 5.7: `Rules::hold_refs`);
//! 5.8's 17839856fd58 (COW broken at GUP time, even for reads), 5.19's a7f226604170
//! (`gup_must_unshare`: every FOLL_PIN lands on an exclusive page); what gup_fast rechecks
//! after taking the reference is the era's `gup_fast_recheck` (the PTE; from 6.1 the PMD too,
//! 70cbc3cc78a9, for seed 004's RCU-freed page tables).

use super::super::rules::{Recheck, Rules};
use super::super::state::{HoldKind, Holder, Lookup, Pmd, Pte, Regs, State, SUBS};
use super::fault::fault;
use super::{err, lock_free, page_desc, Ctx, Flow, Log, R};

fn take_refs(s: &mut State, rules: &Rules, f: u8, kind: HoldKind, count: u16) {
    let large = s.folio(f).large();
    let (r, p) = rules.hold_refs(large, kind, count);
    let fo = s.folio_mut(f);
    fo.refcount = fo.refcount.saturating_add(r);
    fo.pincount += p;
}

fn drop_refs(s: &mut State, rules: &Rules, f: u8, kind: HoldKind, count: u16) {
    let large = s.folio(f).large();
    let (r, p) = rules.hold_refs(large, kind, count);
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

/// The slow path (__get_user_pages): takes mmap_lock and the page-table lock, faults as the
/// era's GUP rule says, then takes the reference or pin.
#[allow(clippy::too_many_arguments)]
pub(super) fn gup_slow(
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

pub(super) fn gup_fast(
    s: &mut State,
    ctx: &Ctx,
    r: &mut Regs,
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
            let what = match rules.gup_fast_recheck {
                Recheck::Pte => "the PTE",
                Recheck::PmdAndPte => "the PMD and the PTE",
            };
            if recheck(s, rules.gup_fast_recheck, slot) != Some((f, sub)) {
                drop_refs(s, rules, f, kind, 1);
                r.phase = 3;
                log.note(|| format!("gup_fast rechecks {what} of slot {slot}: changed -> drops its reference, interrupts on, slow path"));
                return Ok(Flow::Next);
            }
            add_holder(s, 0, slot, f, sub, kind, write, 1)?;
            if pin && rules.features.foll_pin {
                s.procs[0].has_pinned = true;
            }
            log.note(|| {
                format!("gup_fast rechecks {what} (unchanged): done, interrupts on; the device holds page #{f}")
            });
            Ok(Flow::Done)
        }
        _ => gup_slow(s, ctx, slot, pin, write, 1, log),
    }
}

/// What gup_fast sees when it rechecks `slot` after taking its reference. `Pte` (gup_pte_range
/// before 70cbc3cc78a9): the PTE it read, in the page table it walked, even if khugepaged has
/// since detached that table from the PMD; a huge PMD is rechecked itself (gup_huge_pmd).
/// `PmdAndPte`: a PMD that changed (detached) makes it back off too.
fn recheck(s: &State, how: Recheck, slot: u8) -> Option<(u8, u8)> {
    match (how, s.procs[0].pmd[slot as usize / SUBS]) {
        (Recheck::Pte, Pmd::Detached) => match s.procs[0].pte[slot as usize] {
            Pte::Present { folio, sub, .. } => Some((folio, sub)),
            _ => None,
        },
        _ => s.mapped_page(0, slot),
    }
}
