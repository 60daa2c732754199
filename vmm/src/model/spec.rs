//! From a [`Scenario`] to the explorer's [`Program`]: the `[model]` TOML section (owned here, a
//! serde type with `deny_unknown_fields`, errors naming the key such as
//! `model.threads[1].steps[0]`), and the translation of a live scenario (pin kind, directions,
//! `perturb.actions`, `vm.dontfork`, `vm.memory_kind`) that has no `[model]` section. A SIMULATION's input: what
//! the live executor does to a real guest, restated as model operations.
//!
//! Layout of a derived program: guest RAM is slots `0..4` (one model THP, standing for the 2 MiB
//! huge page that holds the DMA region; four small pages without THP); the DMA region is its
//! first half, offsets 0 and 1, pinned or referenced by the device; the rest of the huge page is
//! "outside the DMA region". Rounds before the actions are one round; after them, two.

use serde::Deserialize;

use super::explore::Program;
use super::ops::{parse_op, Op, RoundSpec, Variant};
use super::rules::ClearOrder;
use crate::scenario::{Action, Directions, MemoryKind, PinKind, Scenario};

/// `[model]` in a scenario file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Rule variants: `check-before-clear` (KSM/khugepaged check the count before clearing the
    /// PTE, seed 004's unsafe order), `mremap-dst-first` / `mremap-src-first` (seed 003: where
    /// copy_vma links the new VMA), `rcu-table-free` / `ipi-flush` (seed 004: the platform's TLB
    /// flush does not / does wait for gup_fast).
    #[serde(default)]
    pub variant: Vec<String>,
    /// Steps run once, in order, before the threads.
    #[serde(default)]
    pub setup: Vec<String>,
    /// Concurrent threads: the explorer runs every interleaving of their steps.
    #[serde(default)]
    pub threads: Vec<ThreadSpec>,
    /// Steps run in order after every thread is done, on every interleaving.
    #[serde(default)]
    pub after: Vec<String>,
    /// Guest offsets a `round` step exercises (default `[0, 1]`).
    #[serde(default)]
    pub offsets: Option<Vec<u8>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ThreadSpec {
    pub name: String,
    pub steps: Vec<String>,
}

/// A `[model]` section that does not parse, with the key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("key `{key}`: {reason}")]
pub struct Error {
    pub key: String,
    pub reason: String,
}

fn error(key: impl Into<String>, reason: impl Into<String>) -> Error {
    Error {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Parses the `[model]` table.
pub fn parse_model(table: &toml::Table) -> Result<ModelSpec, Error> {
    let value = toml::Value::Table(table.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            "model".to_string()
        } else {
            format!("model.{path}")
        };
        error(key, e.inner().to_string().lines().next().unwrap_or(""))
    })
}

fn round_spec(s: &Scenario, offsets: Option<&Vec<u8>>) -> RoundSpec {
    RoundSpec {
        offs: offsets.cloned().unwrap_or_else(|| vec![0, 1]),
        from_guest: s.workload.directions != Directions::ToGuest,
        to_guest: s.workload.directions != Directions::FromGuest,
        via_mapping: s.device.pin == PinKind::Mapping,
    }
}

fn steps(list: &[String], key: &str) -> Result<Vec<Op>, Error> {
    list.iter()
        .enumerate()
        .map(|(i, t)| parse_op(t).map_err(|r| error(format!("{key}[{i}]"), r.to_string())))
        .collect()
}

/// The program for a scenario: its `[model]` section, or one derived from the live fields.
pub fn program(s: &Scenario) -> Result<Program, Error> {
    match &s.model {
        Some(table) => model_program(s, &parse_model(table)?),
        None => Ok(live_program(s)),
    }
}

fn model_program(s: &Scenario, m: &ModelSpec) -> Result<Program, Error> {
    let mut variant = Variant::default();
    for (i, v) in m.variant.iter().enumerate() {
        match v.as_str() {
            "check-before-clear" => variant.clear_order = ClearOrder::CheckBeforeClear,
            "clear-then-check" => variant.clear_order = ClearOrder::ClearThenCheck,
            "mremap-dst-first" => variant.mremap_dst_first = true,
            "mremap-src-first" => variant.mremap_dst_first = false,
            "rcu-table-free" => variant.rcu_table_free = true,
            "ipi-flush" => variant.rcu_table_free = false,
            other => {
                return Err(error(
                    format!("model.variant[{i}]"),
                    format!("unknown variant `{other}` (check-before-clear, clear-then-check, mremap-dst-first, mremap-src-first, rcu-table-free, ipi-flush)"),
                ))
            }
        }
    }
    if m.threads.len() > super::state::THREADS {
        return Err(error(
            "model.threads",
            format!("at most {} threads", super::state::THREADS),
        ));
    }
    if let Some(offs) = &m.offsets {
        if let Some(i) = offs
            .iter()
            .position(|&o| o as usize >= super::state::SUBS * 2)
        {
            return Err(error(format!("model.offsets[{i}]"), "offsets are 0..8"));
        }
    }
    let mut threads = Vec::new();
    for (i, t) in m.threads.iter().enumerate() {
        threads.push((
            t.name.clone(),
            steps(&t.steps, &format!("model.threads[{i}].steps"))?,
        ));
    }
    Ok(Program {
        setup: steps(&m.setup, "model.setup")?,
        threads,
        after: steps(&m.after, "model.after")?,
        round: round_spec(s, m.offsets.as_ref()),
        variant,
    })
}

/// The model program the live executor's scenario stands for.
pub fn live_program(s: &Scenario) -> Program {
    let mut setup = vec![Op::Mmap {
        start: 0,
        end: 4,
        thp: s.vm.thp,
        dontfork: s.vm.dontfork,
        populate: true,
    }];
    // `vm.memory_kind = "pte-mapped-thp"`: the live runner splits the region's PMDs after the
    // prefault and before anything pins (compound pages kept), as seed002's kirill does first.
    if s.vm.memory_kind() == MemoryKind::PteMappedThp {
        setup.push(Op::SplitPmd { slot: 0 });
    }
    for slot in [0, 1] {
        match s.device.pin {
            // VFIO type1 MAP_DMA pins with FOLL_WRITE | FOLL_LONGTERM, the io_uring class.
            PinKind::IoUring | PinKind::Vfio => setup.push(Op::Gup {
                slot,
                pin: true,
                write: true,
                count: 1,
            }),
            PinKind::Vmsplice => setup.push(Op::Gup {
                slot,
                pin: false,
                write: false,
                count: 1,
            }),
            PinKind::Mapping => {}
        }
    }
    setup.push(Op::Round);
    let mut host = Vec::new();
    let mut b = 0u8; // guest RAM base slot
    let mut child = false;
    let fork = |host: &mut Vec<Op>, child: &mut bool| {
        if *child {
            host.push(Op::ChildExit);
        }
        host.push(Op::Fork);
        *child = true;
    };
    for &a in &s.perturb.actions {
        match a {
            Action::ForkParentWrite => fork(&mut host, &mut child),
            Action::ForkChildWrite => {
                fork(&mut host, &mut child);
                // With MADV_DONTFORK guest RAM is not in the child: nothing to write.
                for i in 0..4u8 {
                    if !s.vm.dontfork {
                        host.push(Op::Write {
                            proc: 1,
                            slot: b + i,
                        });
                    }
                }
                host.push(Op::ChildExit);
                child = false;
            }
            Action::ForkChildExit => {
                fork(&mut host, &mut child);
                host.push(Op::ChildExit);
                child = false;
            }
            Action::MprotectRoundtrip => {
                host.push(Op::Mprotect {
                    start: b,
                    end: b + 2,
                    write: false,
                });
                host.push(Op::Mprotect {
                    start: b,
                    end: b + 2,
                    write: true,
                });
            }
            Action::SplitPmd => host.push(Op::Dontneed {
                start: b + 3,
                end: b + 4,
            }),
            Action::SplitFolio => host.push(Op::SplitFolio { slot: b }),
            Action::Kirill => {
                host.push(Op::SplitPmd { slot: b });
                fork(&mut host, &mut child);
                host.push(Op::Munmap {
                    proc: 1,
                    start: b,
                    end: b + 2,
                });
                host.push(Op::Munmap {
                    proc: 0,
                    start: b + 2,
                    end: b + 4,
                });
                if !s.vm.dontfork {
                    host.push(Op::Write {
                        proc: 1,
                        slot: b + 3,
                    });
                }
            }
            Action::Collapse => {
                host.push(Op::SplitPmd { slot: b });
                host.push(Op::Collapse { slot: b });
            }
            // ksm-shadow, as far as the guest's data goes, is a KSM pass over the pinned region
            // (which KSM refuses). What it is about, one pinned page blocking another process's
            // merges through the unstable tree, is not modelled: the model has one process
            // (and its fork child), no page contents and no unstable tree, and the finding is
            // about sharing, not coherence (docs/findings.md F1).
            Action::Ksm | Action::KsmShadow => host.push(Op::Ksm { slot: b }),
            Action::Compact => host.push(Op::Compact {
                start: b,
                end: b + 4,
            }),
            Action::Pageout => host.push(Op::Pageout {
                start: b,
                end: b + 4,
            }),
            Action::Mremap | Action::MremapDontunmap => {
                let dst = if b == 0 { 4 } else { 0 };
                host.push(Op::Mremap {
                    start: b,
                    end: b + 4,
                    dst,
                    dontunmap: a == Action::MremapDontunmap,
                    repoint: true,
                });
                b = dst;
            }
            Action::UffdWp => host.push(Op::UffdWp {
                start: b,
                end: b + 4,
            }),
            Action::Dontneed => host.push(Op::Dontneed {
                start: b,
                end: b + 2,
            }),
            Action::Bias1024 => {
                // Live, the references go on the guest-RAM page right after the pinned region:
                // unpinned, and a THP subpage exactly when guest RAM is THP.
                host.push(Op::Gup {
                    slot: b + 2,
                    pin: false,
                    write: false,
                    count: 1024,
                });
                fork(&mut host, &mut child);
            }
        }
    }
    Program {
        setup,
        threads: if host.is_empty() {
            Vec::new()
        } else {
            vec![("host".to_string(), host)]
        },
        after: vec![Op::Round, Op::Round],
        round: round_spec(s, None),
        variant: Variant::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(text: &str) -> Scenario {
        toml::from_str(text).unwrap()
    }

    /// Each row: a `[model]` section, the key the error must name. A bug would blame the wrong
    /// key or accept a typo silently.
    #[test]
    fn model_errors_name_the_key() {
        let rows = [
            ("[model]\nsetpu = []\n", "model"),
            ("[model]\nthreads = [{ name = \"a\", steps = [\"pin 0\"] }, { name = \"b\", steps = [\"frob 1\"] }]\n", "model.threads[1].steps[0]"),
            ("[model]\nthreads = [{ name = \"a\", stpes = [] }]\n", "model.threads[0]"),
            ("[model]\nvariant = [\"swapped\"]\n", "model.variant[0]"),
            ("[model]\nsetup = [\"mmap 0..4\", \"pin\"]\n", "model.setup[1]"),
            ("[model]\noffsets = [9]\n", "model.offsets[0]"),
        ];
        for (text, key) in rows {
            let err = program(&scenario(text)).unwrap_err();
            assert!(
                err.key.starts_with(key),
                "{text}: blamed `{}`: {err}",
                err.key
            );
        }
    }

    #[test]
    fn live_scenarios_derive_a_program_for_every_action() {
        for a in Action::ALL {
            for pin in PinKind::ALL {
                let mut s = scenario("");
                s.perturb.actions = vec![a];
                s.device.pin = pin;
                let p = live_program(&s);
                assert!(!p.threads.is_empty(), "{a} {pin}");
            }
        }
    }

    /// The memory kind reaches the program: small pages map without THP, a PTE-mapped THP is
    /// split before the first pin. A bug would model every kind as PMD-mapped THP.
    #[test]
    fn memory_kind_shapes_the_setup() {
        let thp = live_program(&scenario(""));
        assert!(matches!(thp.setup[0], Op::Mmap { thp: true, .. }));
        assert!(matches!(thp.setup[1], Op::Gup { .. }));
        let small = live_program(&scenario("[vm]\nthp = false\nmemory_kind = \"small\"\n"));
        assert!(matches!(small.setup[0], Op::Mmap { thp: false, .. }));
        let pte = live_program(&scenario("[vm]\nmemory_kind = \"pte-mapped-thp\"\n"));
        assert!(matches!(pte.setup[0], Op::Mmap { thp: true, .. }));
        assert_eq!(pte.setup[1], Op::SplitPmd { slot: 0 });
        assert!(matches!(pte.setup[2], Op::Gup { .. }));
    }
}
