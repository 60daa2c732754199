//! mm/migrate.c and mm/compaction.c: migration of one page in steps (try_to_migrate installs
//! migration entries | migrate_folio freezes the refcount and copies | remove_migration_ptes
//! walks the anon_vma's VMA list, one VMA per step, under the anon_vma lock) and compaction of
//! a range in one step (every folio without extra references moves).
//!
//! Seeds and commits: seed 003 (an rmap walk that visits mremap's dst VMA before its src misses
//! a migration entry move_page_tables carried across: `rmap-sees-migration`); the refcount
//! freeze in folio_migrate_mapping means a page with GUP references never migrates (all eras);
//! 5.19+ try_to_migrate refuses an exclusive, maybe-pinned page.

use super::super::invariant::{self, Invariant};
use super::super::state::{Pmd, Pte, Regs, State, PROCS, SLOTS};
use super::rmap::map_pte;
use super::{err, flush_blocked, lock_free, page_desc, Ctx, Flow, Log, Stop, R};

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

pub(super) fn compact(s: &mut State, ctx: &Ctx, start: u8, end: u8, log: &mut Log) -> R<Flow> {
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
pub(super) fn migrate(s: &mut State, ctx: &Ctx, r: &mut Regs, slot: u8, log: &mut Log) -> R<Flow> {
    let rules = ctx.rules;
    match r.phase {
        0 => {
            let Some((f, _)) = s.mapped_page(0, slot) else {
                log.note(|| format!("migrate: no page mapped at slot {slot} (moved or unmapped): nothing to migrate"));
                return Ok(Flow::Done);
            };
            if s.folio(f).large() {
                return Err(err("migrate", "the stepped migration models small pages"));
            }
            if flush_blocked(s, ctx) || !lock_free(s.anon_vma_lock, ctx.tid) {
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
