//! The guest's and the DMA device's accesses: the guest CPU writes and reads guest RAM through
//! the VMM's mapping (faulting as the kernel would), the device reads and writes through its
//! hold (the pinned or referenced page) or, for pin kind `mapping`, through the VMM mapping,
//! and a workload `round` does both per DMA offset. Not a kernel file: pinlab's own device and
//! guest workload, restated. This is where the data invariants are checked: `pin-is-mapped`
//! (the held page is the mapped one) at every DMA, `no-lost-write` at every read.

use super::super::invariant::Invariant;
use super::super::state::{Holder, Lookup, Pte, State};
use super::fault::fault;
use super::{err, Ctx, Flow, Log, Stop, R};

fn guest_off(s: &State, slot: u8) -> Option<usize> {
    let off = slot.checked_sub(s.guest_base)? as usize;
    (off < s.expected.len() && off < s.guest_len as usize).then_some(off)
}

pub(super) fn cpu_write(s: &mut State, ctx: &Ctx, proc: u8, slot: u8, log: &mut Log) -> R<Flow> {
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

pub(super) fn cpu_read(s: &mut State, ctx: &Ctx, proc: u8, slot: u8, log: &mut Log) -> R<Flow> {
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

pub(super) fn device_write(s: &mut State, ctx: &Ctx, off: u8, log: &mut Log) -> R<Flow> {
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

pub(super) fn device_read(s: &mut State, ctx: &Ctx, off: u8, log: &mut Log) -> R<Flow> {
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

pub(super) fn round(s: &mut State, ctx: &Ctx, log: &mut Log) -> R<Flow> {
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
