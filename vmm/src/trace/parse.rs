//! The instance's text (`trace_pipe` lines) as records, and the events pinlab reasons about as
//! typed values.
//!
//! It owns the line format (`comm-tid (tgid) [cpu] flags secs.usecs: event: body`, with the
//! `record-tgid` option on) and each known event's print format on this kernel (checked against
//! `events/*/format` on 6.18; see docs/tracing.md). It reads text only: no file, no tracefs. An
//! event whose body does not parse is kept as [`Kernel::Other`] with its text, never dropped, and
//! a line that is not a record at all is counted by the reader.

use serde::Serialize;

use crate::addr::{Hva, Pfn};
use crate::timeline::Mono;

/// One line of the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub ts: Mono,
    pub cpu: u32,
    pub tid: i32,
    /// The thread group (process); `None` when tracefs had not recorded it.
    pub tgid: Option<i32>,
    pub comm: String,
    /// The event name (`page_fault_user`, `tracing_mark_write`, ...).
    pub event: String,
    pub body: String,
}

/// What a line that is not a record says, when it says something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Record(Record),
    /// `CPU:N [LOST M EVENTS]`: the ring buffer overwrote events before they were read.
    Lost {
        cpu: u32,
        events: u64,
    },
    /// Anything else (headers, blank lines).
    Other,
}

/// Parses one line of `trace_pipe` output.
pub fn parse_line(line: &str) -> Line {
    let line = line.trim_end_matches(['\n', '\r']);
    if let Some(rest) = line.trim_start().strip_prefix("CPU:") {
        if let Some((cpu, rest)) = rest.split_once(' ') {
            let n = rest
                .strip_prefix("[LOST ")
                .and_then(|r| r.strip_suffix(" EVENTS]"))
                .and_then(|n| n.parse().ok());
            if let (Ok(cpu), Some(events)) = (cpu.parse(), n) {
                return Line::Lost { cpu, events };
            }
        }
    }
    parse_record(line).map_or(Line::Other, Line::Record)
}

/// Syscall events print as `sys_NAME(arg: v, ...)` (enter) and `sys_NAME -> 0xRET` (exit), not
/// as `event: body`: returns (`sys_enter_NAME` / `sys_exit_NAME`, body as `key: value` pairs).
fn syscall_event(rest: &str) -> Option<(String, String)> {
    let name_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let (name, tail) = rest.split_at(name_end);
    let call = name.strip_prefix("sys_")?;
    if let Some(args) = tail.strip_prefix('(') {
        let args = args.trim_end().strip_suffix(')')?;
        return Some((format!("sys_enter_{call}"), args.to_string()));
    }
    let ret = tail.strip_prefix(" -> ")?;
    Some((
        format!("sys_exit_{call}"),
        format!("ret: {}", ret.trim_end()),
    ))
}

/// Finds `  secs.frac: event: ` and returns (timestamp start, ts, event, body).
fn split_ts_event(line: &str) -> Option<(usize, Mono, String, String)> {
    let mut from = 0;
    while let Some(off) = line[from..].find(": ") {
        let colon = from + off;
        from = colon + 2;
        // The token before ':' must be digits '.' digits, preceded by a space; a `: ` with no
        // space before it (in a comm) is not the timestamp's, and the search goes on.
        let Some(start) = line[..colon].rfind(' ').map(|p| p + 1) else {
            continue;
        };
        let ts = &line[start..colon];
        let Some(mono) = parse_ts(ts) else { continue };
        let rest = &line[colon + 2..];
        if let Some((event, body)) = syscall_event(rest) {
            return Some((start, mono, event, body));
        }
        let (event, body) = match rest.find(": ") {
            Some(p) => (&rest[..p], &rest[p + 2..]),
            None => (rest.strip_suffix(':').unwrap_or(rest), ""),
        };
        if event.is_empty()
            || !event
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            continue;
        }
        return Some((start, mono, event.to_string(), body.to_string()));
    }
    None
}

/// `secs.frac` (6 digits on `mono`, up to 9 on other clocks) as nanoseconds.
pub fn parse_ts(ts: &str) -> Option<Mono> {
    let (s, f) = ts.split_once('.')?;
    if s.is_empty() || f.is_empty() || f.len() > 9 {
        return None;
    }
    if !s.bytes().all(|c| c.is_ascii_digit()) || !f.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = s.parse().ok()?;
    let frac: u64 = f.parse().ok()?;
    let scale = 10u64.pow(9 - f.len() as u32);
    secs.checked_mul(1_000_000_000)?
        .checked_add(frac * scale)
        .map(Mono)
}

fn parse_record(line: &str) -> Option<Record> {
    let (ts_start, ts, event, body) = split_ts_event(line)?;
    let mut head = line[..ts_start].trim_end();
    // flags ("d...." / "....."), then "[cpu]", then optionally "(tgid)", then "comm-tid".
    let (h, _flags) = head.rsplit_once(' ')?;
    head = h.trim_end();
    let (h, cpu) = head.rsplit_once('[')?;
    let cpu: u32 = cpu.strip_suffix(']')?.trim().parse().ok()?;
    head = h.trim_end();
    let mut tgid = None;
    if head.ends_with(')') {
        let open = head.rfind('(')?;
        tgid = head[open + 1..head.len() - 1].trim().parse().ok();
        head = head[..open].trim_end();
    }
    let task = head.trim_start();
    let (comm, tid) = task.rsplit_once('-')?;
    Some(Record {
        ts,
        cpu,
        tid: tid.parse().ok()?,
        tgid,
        comm: comm.to_string(),
        event,
        body,
    })
}

/// Which KSM merge event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KsmMergeKind {
    /// `ksm_merge_one_page`.
    OnePage,
    /// `ksm_merge_with_ksm_page`.
    WithKsmPage,
}

/// The events pinlab reasons about, typed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kernel {
    PageFaultUser {
        address: Hva,
        ip: u64,
        error_code: u64,
    },
    KvmUnmapHvaRange {
        start: Hva,
        end: Hva,
    },
    KvmAgeHva {
        start: Hva,
        end: Hva,
    },
    /// `address` is the guest's (GVA = GPA in pinlab's identity-mapped guest).
    KvmPageFault {
        vcpu: u32,
        rip: u64,
        address: u64,
        error_code: u64,
    },
    SpteRequested {
        gfn: u64,
        pfn: Pfn,
        level: u8,
    },
    /// `kvm_mmu_set_spte`: KVM installed a mapping of a guest frame (`writable`: the `w` flag).
    SetSpte {
        gfn: u64,
        writable: bool,
        level: u8,
    },
    KsmMerge {
        which: KsmMergeKind,
        pfn: Pfn,
        /// The target was already a KSM page.
        ksm_page: bool,
        err: i32,
    },
    KsmRemoveKsmPage {
        pfn: Pfn,
    },
    CollapseHugePage {
        isolated: i32,
        status: String,
    },
    KhugepagedScanPmd {
        pfn: Pfn,
        status: String,
    },
    MigratePages {
        succeeded: u64,
        failed: u64,
        thp_succeeded: u64,
        thp_failed: u64,
        reason: String,
    },
    CompactionMigratePages {
        migrated: u64,
        failed: u64,
    },
    MigrationPte {
        set: bool,
        addr: Hva,
        order: u32,
    },
    IoUringRegister {
        opcode: i64,
        nr_bufs: i64,
        ret: i64,
    },
    ProcessFork {
        pid: i32,
        child_pid: i32,
        child_comm: String,
    },
    ProcessExit {
        pid: i32,
    },
    /// A `trace_marker` write.
    Marker {
        text: String,
    },
    /// Any other event, or a known one whose body did not parse.
    Other,
}

impl Kernel {
    /// Whether a page-fault error code says write (x86 PF error code bit 1).
    pub fn is_write(error_code: u64) -> bool {
        error_code & 2 != 0
    }
}

fn hex(s: &str) -> Option<u64> {
    let s = s.trim().trim_end_matches(',');
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(s, 16).ok()
}

fn dec<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.trim().trim_end_matches(',').parse().ok()
}

/// `key=value` and `key: value` pairs of a body, in order (trailing commas dropped).
pub fn fields(body: &str) -> Vec<(String, String)> {
    let toks: Vec<&str> = body.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].trim_end_matches(',');
        if let Some((k, v)) = t.split_once('=') {
            if !k.is_empty() {
                out.push((k.to_string(), v.to_string()));
            }
        } else if let Some(k) = t.strip_suffix(':') {
            if let Some(v) = toks.get(i + 1) {
                out.push((k.to_string(), v.trim_end_matches(',').to_string()));
                i += 1;
            }
        }
        i += 1;
    }
    out
}

fn field<'a>(f: &'a [(String, String)], key: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The value after `key` in a `key value key value` body.
fn word_after<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let mut it = body.split_whitespace();
    while let Some(t) = it.next() {
        if t.trim_end_matches(',') == key {
            return it.next().map(|v| v.trim_end_matches(','));
        }
    }
    None
}

fn range(body: &str) -> Option<(Hva, Hva)> {
    let (_, r) = body.rsplit_once(": ")?;
    let (a, b) = r.split_once(" -- ")?;
    Some((Hva(hex(a)?), Hva(hex(b)?)))
}

/// The typed view of a record (see [`Kernel`]).
pub fn kernel_event(r: &Record) -> Kernel {
    typed(&r.event, &r.body).unwrap_or(Kernel::Other)
}

fn typed(event: &str, body: &str) -> Option<Kernel> {
    let f = || fields(body);
    Some(match event {
        "tracing_mark_write" => Kernel::Marker {
            text: body.trim_end().to_string(),
        },
        "page_fault_user" => {
            let f = f();
            Kernel::PageFaultUser {
                address: Hva(hex(field(&f, "address")?)?),
                ip: hex(field(&f, "ip")?)?,
                error_code: hex(field(&f, "error_code")?)?,
            }
        }
        "kvm_unmap_hva_range" => {
            let (start, end) = range(body)?;
            Kernel::KvmUnmapHvaRange { start, end }
        }
        "kvm_age_hva" => {
            let (start, end) = range(body)?;
            Kernel::KvmAgeHva { start, end }
        }
        "kvm_page_fault" => Kernel::KvmPageFault {
            vcpu: dec(word_after(body, "vcpu")?)?,
            rip: hex(word_after(body, "rip")?)?,
            address: hex(word_after(body, "address")?)?,
            error_code: hex(word_after(body, "error_code")?)?,
        },
        "kvm_mmu_spte_requested" => Kernel::SpteRequested {
            gfn: hex(word_after(body, "gfn")?)?,
            pfn: Pfn(hex(word_after(body, "pfn")?)?),
            level: dec(word_after(body, "level")?)?,
        },
        "kvm_mmu_set_spte" => {
            // "gfn 201 spte 11cb3be67 (rwxu) level 1 at 406dd5008": flags r, w, x, u or '-'.
            let flags = body.split_once('(')?.1.split_once(')')?.0;
            Kernel::SetSpte {
                gfn: hex(word_after(body, "gfn")?)?,
                writable: flags.as_bytes().get(1) == Some(&b'w'),
                level: dec(word_after(body, "level")?)?,
            }
        }
        "ksm_merge_one_page" | "ksm_merge_with_ksm_page" => Kernel::KsmMerge {
            which: if event == "ksm_merge_one_page" {
                KsmMergeKind::OnePage
            } else {
                KsmMergeKind::WithKsmPage
            },
            pfn: Pfn(dec(word_after(body, "pfn")?)?),
            // merge_one_page always prints "ksm pfn"; with_ksm_page only for a KSM target.
            ksm_page: event == "ksm_merge_with_ksm_page" && body.trim_start().starts_with("ksm "),
            err: dec(word_after(body, "error")?)?,
        },
        "ksm_remove_ksm_page" => Kernel::KsmRemoveKsmPage {
            pfn: Pfn(dec(word_after(body, "pfn")?)?),
        },
        "mm_collapse_huge_page" => {
            let f = f();
            Kernel::CollapseHugePage {
                isolated: dec(field(&f, "isolated")?)?,
                status: field(&f, "status")?.to_string(),
            }
        }
        "mm_khugepaged_scan_pmd" => {
            let f = f();
            Kernel::KhugepagedScanPmd {
                pfn: Pfn(hex(field(&f, "scan_pfn")?)?),
                status: field(&f, "status")?.to_string(),
            }
        }
        "mm_migrate_pages" => {
            let f = f();
            Kernel::MigratePages {
                succeeded: dec(field(&f, "nr_succeeded")?)?,
                failed: dec(field(&f, "nr_failed")?)?,
                thp_succeeded: dec(field(&f, "nr_thp_succeeded")?)?,
                thp_failed: dec(field(&f, "nr_thp_failed")?)?,
                reason: field(&f, "reason")?.to_string(),
            }
        }
        "mm_compaction_migratepages" => {
            let f = f();
            Kernel::CompactionMigratePages {
                migrated: dec(field(&f, "nr_migrated")?)?,
                failed: dec(field(&f, "nr_failed")?)?,
            }
        }
        "set_migration_pte" | "remove_migration_pte" => {
            let f = f();
            Kernel::MigrationPte {
                set: event == "set_migration_pte",
                addr: Hva(hex(field(&f, "addr")?)?),
                order: dec(field(&f, "order")?)?,
            }
        }
        "io_uring_register" => Kernel::IoUringRegister {
            opcode: dec(word_after(body, "opcode")?)?,
            nr_bufs: dec(word_after(body, "nr_user_bufs")?)?,
            ret: dec(word_after(body, "ret")?)?,
        },
        "sched_process_fork" => {
            let f = f();
            Kernel::ProcessFork {
                pid: dec(field(&f, "pid")?)?,
                child_pid: dec(field(&f, "child_pid")?)?,
                child_comm: field(&f, "child_comm")?.to_string(),
            }
        }
        "sched_process_exit" => {
            let f = f();
            Kernel::ProcessExit {
                pid: dec(field(&f, "pid")?)?,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: &str) -> Record {
        match parse_line(line) {
            Line::Record(r) => r,
            other => panic!("{line:?} -> {other:?}"),
        }
    }

    #[test]
    fn line_heads_with_and_without_tgid() {
        // A bug shows as a comm with '-' or spaces losing its tid, or the tgid taken for a cpu.
        let r = rec("     pinlab-vcpu-30320   (  30300) [001] d....  1419.090447: page_fault_user: address=0x7f2bb24cf617 ip=0x7f2bc9b14c26 error_code=0x6");
        assert_eq!(r.comm, "pinlab-vcpu");
        assert_eq!((r.tid, r.tgid, r.cpu), (30320, Some(30300), 1));
        assert_eq!(r.ts, Mono(1_419_090_447_000));
        assert_eq!(r.event, "page_fault_user");
        let r = rec("  kworker/u4:1 x-7 [000] ...1.  5.000001: tracing_mark_write: pinlab: a: b");
        assert_eq!(
            (r.comm.as_str(), r.tid, r.tgid),
            ("kworker/u4:1 x", 7, None)
        );
        assert_eq!(r.body, "pinlab: a: b");
        let r = rec("           <...>-12      (-------) [000] .....    10.5: ksm_start_scan: seq 3 rmap size 0");
        assert_eq!(
            (r.comm.as_str(), r.tgid, r.ts),
            ("<...>", None, Mono(10_500_000_000))
        );
    }

    /// Found by the `trace` fuzz target: a `: ` before the line's first blank (a comm starting
    /// with `: `, unpadded) ended the search for the timestamp, and the record was dropped.
    #[test]
    fn colon_before_the_first_blank_is_not_the_end_of_the_search() {
        let r = rec(": a-12 [000] ..... 5.000001: ev: body");
        assert_eq!(
            (r.comm.as_str(), r.tid, r.event.as_str()),
            (": a", 12, "ev")
        );
        assert_eq!((r.ts, r.body.as_str()), (Mono(5_000_001_000), "body"));
    }

    #[test]
    fn syscall_lines_get_enter_and_exit_names() {
        let r = rec(" pinlab-prefault-18958   (  18955) [001] .....  3697.194645: sys_madvise(start: 0x7f2f7fe00000, len_in: 0x4000000, behavior: 0x17)");
        assert_eq!(r.event, "sys_enter_madvise");
        assert_eq!(
            fields(&r.body)[2],
            ("behavior".to_string(), "0x17".to_string())
        );
        let r =
            rec(" pinlab-prefault-18958   (  18955) [001] .N...  3697.565724: sys_madvise -> 0x0");
        assert_eq!(
            (r.event.as_str(), r.body.as_str()),
            ("sys_exit_madvise", "ret: 0x0")
        );
        // An ordinary event whose body has parentheses is not a syscall.
        let r = rec("  a-1 (1) [000] ..... 1.5: tlb_flush: pages:33 reason:remote IPI send (4)");
        assert_eq!(r.event, "tlb_flush");
    }

    #[test]
    fn non_records_are_lost_counts_or_other() {
        assert_eq!(
            parse_line("CPU:1 [LOST 123 EVENTS]"),
            Line::Lost {
                cpu: 1,
                events: 123
            }
        );
        assert_eq!(parse_line("# tracer: nop"), Line::Other);
        assert_eq!(parse_line(""), Line::Other);
    }

    #[test]
    fn typed_events_table() {
        // (event, body as 6.18 prints it, typed value) — a bug shows as a decimal PFN read as hex
        // (ksm prints %lu, kvmmmu %llx) or a write fault read as a read.
        let cases: Vec<(&str, &str, Kernel)> = vec![
            (
                "page_fault_user",
                "address=0x7f0000201000 ip=0x55aa error_code=0x7",
                Kernel::PageFaultUser {
                    address: Hva(0x7f00_0020_1000),
                    ip: 0x55aa,
                    error_code: 7,
                },
            ),
            (
                "kvm_unmap_hva_range",
                "mmu notifier unmap range: 0x007f0000200000 -- 0x007f0000400000",
                Kernel::KvmUnmapHvaRange {
                    start: Hva(0x7f00_0020_0000),
                    end: Hva(0x7f00_0040_0000),
                },
            ),
            (
                "kvm_page_fault",
                "vcpu 0 rip 0x401000 address 0x0000000000201000 error_code 0x6",
                Kernel::KvmPageFault {
                    vcpu: 0,
                    rip: 0x401000,
                    address: 0x201000,
                    error_code: 6,
                },
            ),
            (
                "kvm_mmu_spte_requested",
                "gfn 201 pfn 1a2b3 level 1",
                Kernel::SpteRequested {
                    gfn: 0x201,
                    pfn: Pfn(0x1a2b3),
                    level: 1,
                },
            ),
            (
                "kvm_mmu_set_spte",
                "gfn 201 spte 11cb3be67 (rwxu) level 1 at 406dd5008",
                Kernel::SetSpte {
                    gfn: 0x201,
                    writable: true,
                    level: 1,
                },
            ),
            (
                "kvm_mmu_set_spte",
                "gfn 7 spte 8000000011cb3b25 (r-xu) level 2 at 406dd5008",
                Kernel::SetSpte {
                    gfn: 7,
                    writable: false,
                    level: 2,
                },
            ),
            (
                "ksm_merge_with_ksm_page",
                "ksm pfn 123456 rmap_item 00000000dead mm 00000000beef error 0",
                Kernel::KsmMerge {
                    which: KsmMergeKind::WithKsmPage,
                    pfn: Pfn(123456),
                    ksm_page: true,
                    err: 0,
                },
            ),
            (
                "ksm_merge_with_ksm_page",
                "pfn 77 rmap_item 00000000dead mm 00000000beef error -16",
                Kernel::KsmMerge {
                    which: KsmMergeKind::WithKsmPage,
                    pfn: Pfn(77),
                    ksm_page: false,
                    err: -16,
                },
            ),
            (
                "mm_collapse_huge_page",
                "mm=00000000abcd, isolated=0, status=exceed_shared_pte",
                Kernel::CollapseHugePage {
                    isolated: 0,
                    status: "exceed_shared_pte".into(),
                },
            ),
            (
                "mm_migrate_pages",
                "nr_succeeded=3 nr_failed=1 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_SYNC reason=compaction",
                Kernel::MigratePages {
                    succeeded: 3,
                    failed: 1,
                    thp_succeeded: 0,
                    thp_failed: 0,
                    reason: "compaction".into(),
                },
            ),
            (
                "set_migration_pte",
                "addr=7f0000201000, pte=8000000123, order=0",
                Kernel::MigrationPte {
                    set: true,
                    addr: Hva(0x7f00_0020_1000),
                    order: 0,
                },
            ),
            (
                "io_uring_register",
                "ring 00000000cafe, opcode 0, nr_user_files 0, nr_user_bufs 1, ret 0",
                Kernel::IoUringRegister {
                    opcode: 0,
                    nr_bufs: 1,
                    ret: 0,
                },
            ),
            (
                "sched_process_fork",
                "comm=pinlab pid=10 child_comm=pinlab child_pid=11",
                Kernel::ProcessFork {
                    pid: 10,
                    child_pid: 11,
                    child_comm: "pinlab".into(),
                },
            ),
            ("kvm_unmap_hva_range", "garbled", Kernel::Other),
            ("sys_enter_madvise", "start: 0x1000, len_in: 0x2000", Kernel::Other),
        ];
        for (event, body, want) in cases {
            let r = Record {
                ts: Mono(0),
                cpu: 0,
                tid: 1,
                tgid: Some(1),
                comm: "x".into(),
                event: event.into(),
                body: body.into(),
            };
            assert_eq!(kernel_event(&r), want, "{event}: {body}");
        }
        assert!(Kernel::is_write(0x6) && !Kernel::is_write(0x4));
    }

    #[test]
    fn fields_of_both_spellings() {
        assert_eq!(
            fields("start: 0x1000, len_in: 0x2000, behavior: 0x4"),
            [
                ("start".to_string(), "0x1000".to_string()),
                ("len_in".to_string(), "0x2000".to_string()),
                ("behavior".to_string(), "0x4".to_string())
            ]
        );
        assert_eq!(fields("nr_migrated=1 nr_failed=0").len(), 2);
        assert!(fields("ksm pfn 1").is_empty());
    }
}
