//! Fork and exit: kernel/fork.c dup_mmap (a child VMA per VMA not MADV_DONTFORK, anon_vma_fork
//! with chains from 2.6.34) with mm/memory.c copy_page_range (copy_huge_pmd, copy_present_pte:
//! share and write-protect, or copy a page that may be DMA-pinned, the era's `fork_copy`
//! rule), and the child's exit (exit_mmap: every mapping zapped, every VMA removed).
//!
//! Seeds and commits: seed 000 (a pinned page COW-shared at fork, the parent's write moves it to
//! a copy), seed 001 (the bias false positive: 1024 references look pinned, the page is copied),
//! seed 002 (Kirill's fork-then-unmap-halves counterexample); 5.9's 70e806e4e645
//! (`copy_present_page` for `has_pinned && page_maybe_dma_pinned`), 5.19's
//! `folio_try_dup_anon_rmap` (copy an exclusive maybe-pinned page, else clear exclusive).

use super::super::state::{
    Pmd, Proc, Pte, State, FINDING_BIAS_FALSE_POSITIVE, NONE, PIN_BIAS, SLOTS, SUBS, VMAS,
};
use super::fault::new_page;
use super::huge_memory::split_pmd_ptes;
use super::rmap::{av_entry, av_insert, chain_avs, map_pte};
use super::vma::vma_remove;
use super::zap::zap_range;
use super::{err, page_desc, Ctx, Flow, Log, R};

pub(super) fn fork(s: &mut State, ctx: &Ctx, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    if s.procs[1].live {
        return Err(err("fork", "a child already exists"));
    }
    s.procs[1] = Proc {
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

pub(super) fn child_exit(s: &mut State, ctx: &Ctx, log: &mut Log) -> R<Flow> {
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
