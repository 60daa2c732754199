//! The text grammar of `[model]` steps (`VERB ARGS...`, docs/model.md) and the names traces
//! print for an op: [`parse_op`] and [`op_name`]. Not a kernel file. Errors are this module's
//! [`Error`], one variant per way a step can be malformed.

use super::super::state::SLOTS;
use super::Op;

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

/// A `[model]` step that does not parse. The messages are the ones configs' errors show after
/// the key (`model.threads[1].steps[0]: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty step")]
    Empty,
    #[error("`{verb}` needs argument {index}")]
    MissingArgument { verb: String, index: usize },
    #[error("`{0}` is not a slot number")]
    NotASlot(String),
    #[error("slot {0} is outside 0..{SLOTS}")]
    SlotOutOfRange(u8),
    #[error("`{verb}` needs a range A..B")]
    MissingRange { verb: String },
    #[error("`{0}` is not a range A..B")]
    NotARange(String),
    #[error("range `{0}` is empty or outside 0..{SLOTS}")]
    RangeOutOfBounds(String),
    #[error("`{verb}` does not take `{flag}` (allowed: {allowed})")]
    UnknownFlag {
        verb: String,
        flag: String,
        allowed: String,
    },
    #[error("`{verb}` runs in the VMM process only")]
    VmmOnly { verb: String },
    #[error("missing slot")]
    MissingSlot,
    #[error("`{0}` is not a count xN")]
    NotACount(String),
    #[error("mprotect needs `ro` or `rw`")]
    MprotectMode,
    #[error("unknown step `{0}`")]
    UnknownStep(String),
    #[error("`child {verb}`: the child can write, read, munmap or exit")]
    NotForChild { verb: String },
}

/// Parses a `[model]` step: `VERB ARGS...`, slots as numbers, ranges as `A..B`, an optional
/// leading `child` for process 1. The grammar is in docs/model.md.
pub fn parse_op(text: &str) -> Result<Op, Error> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (child, words) = match words.first() {
        Some(&"child") => (true, &words[1..]),
        _ => (false, &words[..]),
    };
    let proc = child as u8;
    let verb = *words.first().ok_or(Error::Empty)?;
    let args = &words[1..];
    let num = |i: usize| -> Result<u8, Error> {
        let w = args.get(i).ok_or_else(|| Error::MissingArgument {
            verb: verb.to_string(),
            index: i + 1,
        })?;
        let n: u8 = w.parse().map_err(|_| Error::NotASlot(w.to_string()))?;
        if n as usize >= SLOTS {
            return Err(Error::SlotOutOfRange(n));
        }
        Ok(n)
    };
    let range = |i: usize| -> Result<(u8, u8), Error> {
        let w = args.get(i).ok_or_else(|| Error::MissingRange {
            verb: verb.to_string(),
        })?;
        let (a, b) = w
            .split_once("..")
            .ok_or_else(|| Error::NotARange(w.to_string()))?;
        let a: u8 = a.parse().map_err(|_| Error::NotARange(w.to_string()))?;
        let b: u8 = b.parse().map_err(|_| Error::NotARange(w.to_string()))?;
        if a >= b || b as usize > SLOTS {
            return Err(Error::RangeOutOfBounds(w.to_string()));
        }
        Ok((a, b))
    };
    let flags: Vec<&str> = args
        .iter()
        .copied()
        .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_alphabetic()))
        .collect();
    let known = |allowed: &[&str]| -> Result<(), Error> {
        for f in &flags {
            if !allowed.contains(f) && !f.starts_with('x') {
                return Err(Error::UnknownFlag {
                    verb: verb.to_string(),
                    flag: f.to_string(),
                    allowed: allowed.join(", "),
                });
            }
        }
        Ok(())
    };
    let no_child = || -> Result<(), Error> {
        if child {
            Err(Error::VmmOnly {
                verb: verb.to_string(),
            })
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
                .ok_or(Error::MissingSlot)?;
            let count = match args.iter().find(|w| w.starts_with('x')) {
                Some(w) => w[1..]
                    .parse::<u16>()
                    .map_err(|_| Error::NotACount(w.to_string()))?,
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
                .ok_or(Error::MissingSlot)?;
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
                _ => return Err(Error::MprotectMode),
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
        other => return Err(Error::UnknownStep(other.to_string())),
    };
    if child
        && !matches!(
            op,
            Op::Write { .. } | Op::Read { .. } | Op::Munmap { .. } | Op::ChildExit
        )
    {
        return Err(Error::NotForChild {
            verb: verb.to_string(),
        });
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: a step as written in a config, and what it must parse to, or the error it must
    /// give. A bug would accept a malformed step or blame the wrong part of it.
    #[test]
    fn parse_rows() {
        let rows: &[(&str, Result<Op, Error>)] = &[
            (
                "mmap 0..4 thp",
                Ok(Op::Mmap {
                    start: 0,
                    end: 4,
                    thp: true,
                    dontfork: false,
                    populate: true,
                }),
            ),
            (
                "pin 0",
                Ok(Op::Gup {
                    slot: 0,
                    pin: true,
                    write: true,
                    count: 1,
                }),
            ),
            (
                "get 8 x1024",
                Ok(Op::Gup {
                    slot: 8,
                    pin: false,
                    write: false,
                    count: 1024,
                }),
            ),
            (
                "gup-fast pin write 0",
                Ok(Op::GupFast {
                    slot: 0,
                    pin: true,
                    write: true,
                }),
            ),
            ("child write 2", Ok(Op::Write { proc: 1, slot: 2 })),
            ("child exit", Ok(Op::ChildExit)),
            (
                "mremap 0..1 4",
                Ok(Op::Mremap {
                    start: 0,
                    end: 1,
                    dst: 4,
                    dontunmap: false,
                    repoint: false,
                }),
            ),
            (
                "child fork",
                Err(Error::VmmOnly {
                    verb: "fork".into(),
                }),
            ),
            (
                "child ksm 0",
                Err(Error::NotForChild { verb: "ksm".into() }),
            ),
            ("mmap 4..2", Err(Error::RangeOutOfBounds("4..2".into()))),
            ("write 12", Err(Error::SlotOutOfRange(12))),
            ("write x", Err(Error::NotASlot("x".into()))),
            ("get 1 x10k", Err(Error::NotACount("x10k".into()))),
            ("frobnicate 1", Err(Error::UnknownStep("frobnicate".into()))),
            ("mprotect 0..2", Err(Error::MprotectMode)),
            ("", Err(Error::Empty)),
        ];
        for (text, want) in rows {
            assert_eq!(&parse_op(text), want, "{text}");
        }
    }
}
