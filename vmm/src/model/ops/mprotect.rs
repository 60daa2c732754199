//! mm/mprotect.c: mprotect over a range (change_protection / change_pte_range): read-only
//! write-protects every entry; read-write makes an entry writable at once only if the era's
//! `make_writable` rule allows it (before 6.0 only `dirty_accountable` mappings, so a private
//! anonymous PTE stays write-protected until a write fault; modern can_change_pte_writable:
//! an AnonExclusive page). The write fault after a round trip is where 5.9 copies a pinned
//! page (config era59-mprotect-pinned; 09854ba94c6a's `page_count == 1`).

use super::super::state::{Pmd, Pte, State, SUBS};
use super::huge_memory::split_partial_pmds;
use super::vma::vmas_in;
use super::{Ctx, Flow, Log, R};

pub(super) fn mprotect(
    s: &mut State,
    ctx: &Ctx,
    start: u8,
    end: u8,
    write: bool,
    log: &mut Log,
) -> R<Flow> {
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
