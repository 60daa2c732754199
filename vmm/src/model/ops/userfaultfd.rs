//! mm/userfaultfd.c: UFFDIO_WRITEPROTECT over a range (write-protect and mark uffd-wp) and the
//! handler's resolve, UFFDIO_WRITEPROTECT(mode 0) on the faulting page: whether the entry is
//! made writable at once is the era's `make_writable` rule (before 6.0 the write bit is left to
//! the fault, "Leave the write bit to be handled by PF interrupt handler"; modern
//! can_change_pte_writable makes an AnonExclusive page writable). uffd-wp exists from 5.7
//! (per kernel-eras.md). No seed; a live action.

use super::super::state::{Pmd, Pte, State, SUBS};
use super::{Ctx, Flow, Log, R};

/// The userfaultfd handler: UFFDIO_WRITEPROTECT(mode 0) on the faulting page.
pub(super) fn uffd_resolve(s: &mut State, ctx: &Ctx, proc: u8, slot: u8, log: &mut Log) {
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

pub(super) fn uffd_wp(s: &mut State, start: u8, end: u8, log: &mut Log) -> R<Flow> {
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
