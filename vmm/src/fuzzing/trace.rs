//! Target `trace`: the tracefs text-line parser (`trace::parse::parse_line`, `kernel_event`).
//!
//! Three rules, one per input (the first byte picks):
//! - Arbitrary text (random, or assembled from the line format's own pieces): the parser answers
//!   and never panics; a record it returns is made of the line (its event is a non-empty
//!   `[A-Za-z0-9_]` name, its comm is in the line, the line ends with its body unless it is a
//!   syscall record, whose body is rebuilt) and is a fixed point: rendered again in the kernel's
//!   layout, it parses to itself.
//! - A record built from arbitrary fields and rendered the way 6.18 prints it (`%16s-%-7d`, the
//!   `(tgid)` column present, unknown or absent, `[%03d]`, flags, `secs.frac` with 1 to 9 digits,
//!   `event: body`) parses back to exactly those fields; so does `CPU:N [LOST M EVENTS]`. The
//!   fields stay inside what the format can say unambiguously: a comm has no leading blank and
//!   no `: ` after a digit (that would read as a timestamp), no line breaks; a tid is not
//!   negative.
//! - A typed event built from arbitrary values and printed in the event's 6.18 format (the
//!   formats `parse.rs` documents) reads back as the same `Kernel` value; a hex field read as
//!   decimal or a field taken from the wrong key breaks it.

use arbitrary::{Arbitrary, Unstructured};

use super::run;
use crate::addr::{Hva, Pfn};
use crate::timeline::Mono;
use crate::trace::parse::{kernel_event, parse_line, Kernel, KsmMergeKind, Line, Record};

/// Pieces of real trace lines, so random text gets past the parser's first checks.
const PIECES: &[&str] = &[
    " ",
    "  ",
    "-",
    "(",
    ")",
    "[",
    "]",
    "[001]",
    "(  30300)",
    "(-------)",
    "d....",
    ".....",
    "1419.090447",
    "0.5",
    ".",
    ": ",
    ":",
    "1",
    "0",
    "pinlab-vcpu",
    "<...>",
    "page_fault_user",
    "sys_madvise",
    "(start: 0x1000)",
    " -> 0x0",
    "tracing_mark_write",
    "CPU:",
    "[LOST ",
    " EVENTS]",
    "address=0x7f00",
    "\n",
    "\r",
    "\t",
];

/// Characters a comm is made of in the round trip (`:` and `-` and blanks included).
const COMM_CHARS: &[char] = &[
    'a', 'z', 'P', '0', '9', '-', '/', ':', ' ', '<', '>', '.', '_', '(', ')', '[', ']', '#', 'é',
];

const FLAG_CHARS: &[u8] = b".dDNnhHsSbBXz0123456789";

fn assemble(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let mut s = String::new();
    for _ in 0..u.int_in_range(0..=40)? {
        if u.ratio(1, 8)? {
            s.push_str(<&str>::arbitrary(u)?);
        } else {
            s.push_str(u.choose(PIECES)?);
        }
    }
    Ok(s)
}

/// `r` in the kernel's layout (the one `print_trace_fmt` uses with `record-tgid` on).
fn render(r: &Record) -> String {
    let tgid = r
        .tgid
        .map_or("(-------)".to_string(), |t| format!("({t:>7})"));
    let (secs, frac) = (r.ts.0 / 1_000_000_000, r.ts.0 % 1_000_000_000);
    format!(
        "{:>16}-{:<7} {tgid} [{:03}] ..... {secs:>5}.{frac:09}: {}: {}",
        r.comm, r.tid, r.cpu, r.event, r.body
    )
}

/// Whether `s` has `: ` right after a digit (the only way a `: ` can end a timestamp).
fn has_digit_colon(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == b':' && w[2] == b' ')
}

fn arbitrary_text(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let line = if u.ratio(1, 2)? {
        assemble(u)?
    } else {
        <&str>::arbitrary(u)?.to_string()
    };
    let Line::Record(r) = parse_line(&line) else {
        return Ok(());
    };
    let trimmed = line.trim_end_matches(['\n', '\r']);
    assert!(
        !r.event.is_empty()
            && r.event
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_'),
        "{line:?}: {r:?}"
    );
    assert!(line.contains(&r.comm), "{line:?}: {r:?}");
    let syscall = r.event.starts_with("sys_enter_") || r.event.starts_with("sys_exit_");
    if !syscall {
        assert!(trimmed.ends_with(&r.body), "{line:?}: {r:?}");
        assert!(line.contains(&r.event), "{line:?}: {r:?}");
    }
    // Negative tids ("comm--5") and blanks at either end of the comm have no unambiguous
    // rendering; the rest must read back unchanged.
    if r.tid >= 0 && r.comm.trim_start() == r.comm && !has_digit_colon(&r.comm) {
        let again = render(&r);
        assert_eq!(
            parse_line(&again),
            Line::Record(r.clone()),
            "{line:?} -> {again:?}"
        );
    }
    Ok(())
}

fn comm(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let mut s = String::new();
    for _ in 0..u.int_in_range(0..=20)? {
        s.push(*u.choose(COMM_CHARS)?);
    }
    if u.ratio(1, 8)? {
        s.push_str(<&str>::arbitrary(u)?);
    }
    let s: String = s.chars().filter(|&c| c != '\n' && c != '\r').collect();
    Ok(s.trim_start().to_string())
}

fn body(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let s = if u.ratio(1, 2)? {
        assemble(u)?
    } else {
        <&str>::arbitrary(u)?.to_string()
    };
    Ok(s.chars().filter(|&c| c != '\n' && c != '\r').collect())
}

/// A record of arbitrary fields, rendered with the kernel's padding or with none, reads back.
fn round_trip(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    if u.ratio(1, 8)? {
        let (cpu, events) = (u32::arbitrary(u)?, u64::arbitrary(u)?);
        let line = format!("CPU:{cpu} [LOST {events} EVENTS]\n");
        assert_eq!(parse_line(&line), Line::Lost { cpu, events }, "{line:?}");
        return Ok(());
    }
    let comm = comm(u)?;
    if has_digit_colon(&comm) {
        return Ok(());
    }
    let tid = u.int_in_range(0..=i32::MAX)?;
    let tgid_col = u.int_in_range(0..=2u8)?;
    let tgid = (tgid_col == 0)
        .then(|| u.int_in_range(0..=i32::MAX))
        .transpose()?;
    let cpu = u32::arbitrary(u)?;
    let flags: String = (0..u.int_in_range(1..=6)?)
        .map(|_| u.choose(FLAG_CHARS).map(|&c| c as char))
        .collect::<arbitrary::Result<_>>()?;
    let secs = u.int_in_range(0..=u64::MAX / 1_000_000_000 - 1)?;
    let digits = u.int_in_range(1..=9u32)?;
    let frac = u.int_in_range(0..=10u64.pow(digits) - 1)?;
    let mut event = String::new();
    for _ in 0..u.int_in_range(1..=24)? {
        event.push(*u.choose(b"abcxyz_09AZ")? as char);
    }
    let body = body(u)?;
    let pad = u.ratio(1, 2)?;
    let colon_only = body.is_empty() && u.ratio(1, 2)?;
    let tgid_text = match (tgid_col, tgid) {
        (0, Some(t)) if pad => format!(" ({t:>7})"),
        (0, Some(t)) => format!(" ({t})"),
        (1, _) => " (-------)".to_string(),
        _ => String::new(),
    };
    let tail = if colon_only {
        format!("{event}:")
    } else {
        format!("{event}: {body}")
    };
    let line = if pad {
        format!(
            "{comm:>16}-{tid:<7}{tgid_text} [{cpu:03}] {flags} {secs:>5}.{frac:0w$}: {tail}\n",
            w = digits as usize
        )
    } else {
        format!(
            "{comm}-{tid}{tgid_text} [{cpu}] {flags} {secs}.{frac:0w$}: {tail}",
            w = digits as usize
        )
    };
    let want = Record {
        ts: Mono(secs * 1_000_000_000 + frac * 10u64.pow(9 - digits)),
        cpu,
        tid,
        tgid,
        comm,
        event,
        body,
    };
    assert_eq!(parse_line(&line), Line::Record(want), "{line:?}");
    Ok(())
}

/// A status / reason / comm word of a typed event: no blank, no trailing comma, not empty.
fn word(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let s: String = <&str>::arbitrary(u)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let s = s.trim_end_matches(',');
    Ok(if s.is_empty() {
        "x".to_string()
    } else {
        s.to_string()
    })
}

/// A typed event printed in its 6.18 format reads back as itself.
fn typed(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let x = |u: &mut Unstructured<'_>| u64::arbitrary(u);
    let (event, body, want): (&str, String, Kernel) = match u.int_in_range(0..=16u8)? {
        0 => {
            let (a, ip, e) = (x(u)?, x(u)?, x(u)?);
            (
                "page_fault_user",
                format!("address={a:#x} ip={ip:#x} error_code={e:#x}"),
                Kernel::PageFaultUser {
                    address: Hva(a),
                    ip,
                    error_code: e,
                },
            )
        }
        n @ (1 | 2) => {
            let (s, e) = (x(u)?, x(u)?);
            let (ev, want) = if n == 1 {
                (
                    "kvm_unmap_hva_range",
                    Kernel::KvmUnmapHvaRange {
                        start: Hva(s),
                        end: Hva(e),
                    },
                )
            } else {
                (
                    "kvm_age_hva",
                    Kernel::KvmAgeHva {
                        start: Hva(s),
                        end: Hva(e),
                    },
                )
            };
            let what = if n == 1 { "unmap range" } else { "age hva" };
            (
                ev,
                format!("mmu notifier {what}: {s:#016x} -- {e:#016x}"),
                want,
            )
        }
        3 => {
            let (vcpu, rip, a, e) = (u32::arbitrary(u)?, x(u)?, x(u)?, x(u)?);
            (
                "kvm_page_fault",
                format!("vcpu {vcpu} rip {rip:#x} address {a:#018x} error_code {e:#x}"),
                Kernel::KvmPageFault {
                    vcpu,
                    rip,
                    address: a,
                    error_code: e,
                },
            )
        }
        4 => {
            let (gfn, pfn, level) = (x(u)?, x(u)?, u8::arbitrary(u)?);
            (
                "kvm_mmu_spte_requested",
                format!("gfn {gfn:x} pfn {pfn:x} level {level}"),
                Kernel::SpteRequested {
                    gfn,
                    pfn: Pfn(pfn),
                    level,
                },
            )
        }
        5 => {
            let (gfn, spte, level, at) = (x(u)?, x(u)?, u8::arbitrary(u)?, x(u)?);
            let bits: Vec<bool> = (0..4)
                .map(|_| bool::arbitrary(u))
                .collect::<Result<_, _>>()?;
            let flags: String = bits
                .iter()
                .zip("rwxu".chars())
                .map(|(&b, c)| if b { c } else { '-' })
                .collect();
            (
                "kvm_mmu_set_spte",
                format!("gfn {gfn:x} spte {spte:x} ({flags}) level {level} at {at:x}"),
                Kernel::SetSpte {
                    gfn,
                    writable: bits[1],
                    level,
                },
            )
        }
        n @ (6 | 7) => {
            let (pfn, err) = (x(u)?, i32::arbitrary(u)?);
            let (rmap, mm) = (x(u)?, x(u)?);
            let ksm = n == 6 || bool::arbitrary(u)?;
            let (ev, which) = if n == 6 {
                ("ksm_merge_one_page", KsmMergeKind::OnePage)
            } else {
                ("ksm_merge_with_ksm_page", KsmMergeKind::WithKsmPage)
            };
            let k = if ksm { "ksm " } else { "" };
            (
                ev,
                format!("{k}pfn {pfn} rmap_item {rmap:016x} mm {mm:016x} error {err}"),
                Kernel::KsmMerge {
                    which,
                    pfn: Pfn(pfn),
                    ksm_page: ksm && n == 7,
                    err,
                },
            )
        }
        8 => {
            let pfn = x(u)?;
            (
                "ksm_remove_ksm_page",
                format!("pfn {pfn}"),
                Kernel::KsmRemoveKsmPage { pfn: Pfn(pfn) },
            )
        }
        9 => {
            let (mm, isolated, status) = (x(u)?, i32::arbitrary(u)?, word(u)?);
            (
                "mm_collapse_huge_page",
                format!("mm={mm:016x}, isolated={isolated}, status={status}"),
                Kernel::CollapseHugePage { isolated, status },
            )
        }
        10 => {
            let (pfn, status) = (x(u)?, word(u)?);
            (
                "mm_khugepaged_scan_pmd",
                format!(
                    "mm=0000000012345678, scan_pfn=0x{pfn:x}, writable=1, referenced=0, \
                     none_or_zero=0, status={status}, unmapped=0"
                ),
                Kernel::KhugepagedScanPmd {
                    pfn: Pfn(pfn),
                    status,
                },
            )
        }
        11 => {
            let (s, f, ts, tf, reason) = (x(u)?, x(u)?, x(u)?, x(u)?, word(u)?);
            (
                "mm_migrate_pages",
                format!(
                    "nr_succeeded={s} nr_failed={f} nr_thp_succeeded={ts} nr_thp_failed={tf} \
                     nr_thp_split=0 nr_split=0 mode=MIGRATE_SYNC reason={reason}"
                ),
                Kernel::MigratePages {
                    succeeded: s,
                    failed: f,
                    thp_succeeded: ts,
                    thp_failed: tf,
                    reason,
                },
            )
        }
        12 => {
            let (m, f) = (x(u)?, x(u)?);
            (
                "mm_compaction_migratepages",
                format!("nr_migrated={m} nr_failed={f}"),
                Kernel::CompactionMigratePages {
                    migrated: m,
                    failed: f,
                },
            )
        }
        13 => {
            let (set, addr, pte, order) = (bool::arbitrary(u)?, x(u)?, x(u)?, u32::arbitrary(u)?);
            (
                if set {
                    "set_migration_pte"
                } else {
                    "remove_migration_pte"
                },
                format!("addr={addr:x}, pte={pte:x}, order={order}"),
                Kernel::MigrationPte {
                    set,
                    addr: Hva(addr),
                    order,
                },
            )
        }
        14 => {
            let (ring, opcode, files, bufs, ret) = (
                x(u)?,
                i64::from(u32::arbitrary(u)?),
                u32::arbitrary(u)?,
                i64::from(u32::arbitrary(u)?),
                i64::from(i32::arbitrary(u)?),
            );
            (
                "io_uring_register",
                format!(
                    "ring {ring:016x}, opcode {opcode}, nr_user_files {files}, \
                     nr_user_bufs {bufs}, ret {ret}"
                ),
                Kernel::IoUringRegister {
                    opcode,
                    nr_bufs: bufs,
                    ret,
                },
            )
        }
        15 => {
            let (c, pid, cc, cpid) = (word(u)?, i32::arbitrary(u)?, word(u)?, i32::arbitrary(u)?);
            (
                "sched_process_fork",
                format!("comm={c} pid={pid} child_comm={cc} child_pid={cpid}"),
                Kernel::ProcessFork {
                    pid,
                    child_pid: cpid,
                    child_comm: cc,
                },
            )
        }
        _ => {
            let (c, pid, prio) = (word(u)?, i32::arbitrary(u)?, i32::arbitrary(u)?);
            (
                "sched_process_exit",
                format!("comm={c} pid={pid} prio={prio}"),
                Kernel::ProcessExit { pid },
            )
        }
    };
    // The whole line, so the line parser hands the body over intact too.
    let line = format!("  pinlab-1 (1) [000] ..... 1.000001: {event}: {body}\n");
    let Line::Record(r) = parse_line(&line) else {
        panic!("{line:?} is not a record");
    };
    assert_eq!(
        (r.event.as_str(), r.body.as_str()),
        (event, body.as_str()),
        "{line:?}"
    );
    assert_eq!(kernel_event(&r), want, "{line:?}");
    Ok(())
}

/// Arbitrary text, a rendered record, or a rendered typed event (see the module's rules).
pub fn trace(data: &[u8]) {
    run(data, |u| match u.int_in_range(0..=2u8)? {
        0 => arbitrary_text(u),
        1 => round_trip(u),
        _ => typed(u),
    });
}
