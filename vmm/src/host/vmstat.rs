//! `VmstatSnapshot`: the kernel's mm event counters at one instant, and the difference between two.
//!
//! It owns parsing `/proc/vmstat` and reading KSM's counters (through `ksm.rs`). These counters are
//! evidence: a failed THP split emits no trace event here, but `thp_split_page_failed` counts it
//! (docs/architecture.md, host facts). They are system-wide: other processes move them too, so a delta bounds
//! what we caused from above, never proves it alone.
//!
//! [`delta`] is restricted to [`WATCHED`] and the KSM names in [`KSM_COUNTERS`] (keyed
//! `ksm.<name>`); a name this kernel does not have is simply absent. It changes nothing.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::ksm;

/// The `/proc/vmstat` counters pinlab reports.
pub const WATCHED: &[&str] = &[
    "thp_split_pmd",
    "thp_split_page",
    "thp_split_page_failed",
    "thp_deferred_split_page",
    "thp_collapse_alloc",
    "thp_collapse_alloc_failed",
    "thp_fault_alloc",
    "cow_ksm",
    "pswpout",
    "pswpin",
    "compact_stall",
    "compact_success",
    "compact_migrate_scanned",
    "pgmigrate_success",
    "ksm_swpin_copy",
];

/// The KSM values read from `/sys/kernel/mm/ksm` (`full_scans` is a counter; the others are
/// gauges, whose delta is still the change).
pub const KSM_COUNTERS: &[&str] = &[
    "pages_sharing",
    "pages_shared",
    "full_scans",
    "ksm_zero_pages",
];

/// Errors of this module; each names the operation and the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("parsing {path} line {line:?}")]
    Parse { path: PathBuf, line: String },
    #[error("reading KSM counters: {0}")]
    Ksm(#[source] ksm::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// All of `/proc/vmstat` plus the KSM counters at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VmstatSnapshot {
    /// Every `/proc/vmstat` counter by name.
    pub vmstat: BTreeMap<String, u64>,
    /// [`KSM_COUNTERS`] that exist here (none without KSM).
    pub ksm: BTreeMap<String, u64>,
}

/// Parses the contents of `/proc/vmstat` (`name value` per line).
pub fn parse_vmstat(path: &Path, text: &str) -> Result<BTreeMap<String, u64>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut it = line.split_whitespace();
            match (it.next(), it.next().and_then(|v| v.parse().ok()), it.next()) {
                (Some(name), Some(value), None) => Ok((name.to_string(), value)),
                _ => Err(Error::Parse {
                    path: path.to_path_buf(),
                    line: line.to_string(),
                }),
            }
        })
        .collect()
}

impl VmstatSnapshot {
    /// Reads `/proc/vmstat` and the KSM counters now.
    pub fn take() -> Result<VmstatSnapshot> {
        let path = Path::new("/proc/vmstat");
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let vmstat = parse_vmstat(path, &text)?;
        let mut ksm_values = BTreeMap::new();
        for &name in KSM_COUNTERS {
            match ksm::counter(name) {
                Ok(v) => {
                    ksm_values.insert(name.to_string(), v);
                }
                Err(ksm::Error::Missing { .. }) => {}
                Err(e) => return Err(Error::Ksm(e)),
            }
        }
        Ok(VmstatSnapshot {
            vmstat,
            ksm: ksm_values,
        })
    }

    /// A watched counter, if this kernel has it.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.vmstat.get(name).copied()
    }
}

/// `after - before` for every [`WATCHED`] counter and every KSM value (`ksm.<name>`) present in
/// both snapshots.
pub fn delta(before: &VmstatSnapshot, after: &VmstatSnapshot) -> BTreeMap<String, i64> {
    let mut out = delta_of(before, after, WATCHED);
    let diff = |a: u64, b: u64| (b as i128 - a as i128) as i64;
    for &name in KSM_COUNTERS {
        if let (Some(&a), Some(&b)) = (before.ksm.get(name), after.ksm.get(name)) {
            out.insert(format!("ksm.{name}"), diff(a, b));
        }
    }
    out
}

/// `after - before` for the /proc/vmstat counters in `names` that both snapshots have (a
/// counter this kernel lacks is simply absent).
pub fn delta_of(
    before: &VmstatSnapshot,
    after: &VmstatSnapshot,
    names: &[&str],
) -> BTreeMap<String, i64> {
    let diff = |a: u64, b: u64| (b as i128 - a as i128) as i64;
    names
        .iter()
        .filter_map(|&name| {
            let (a, b) = (before.vmstat.get(name)?, after.vmstat.get(name)?);
            Some((name.to_string(), diff(*a, *b)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(vm: &[(&str, u64)], ksm: &[(&str, u64)]) -> VmstatSnapshot {
        VmstatSnapshot {
            vmstat: vm.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ksm: ksm.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn delta_table() {
        // (what, before, after, expected delta entries)
        type Case = (
            &'static str,
            VmstatSnapshot,
            VmstatSnapshot,
            Vec<(&'static str, i64)>,
        );
        let cases: [Case; 4] = [
            (
                "watched counter grows",
                snap(&[("thp_split_pmd", 3)], &[]),
                snap(&[("thp_split_pmd", 5)], &[]),
                vec![("thp_split_pmd", 2)],
            ),
            (
                "unwatched counter ignored",
                snap(&[("nr_free_pages", 3)], &[]),
                snap(&[("nr_free_pages", 9)], &[]),
                vec![],
            ),
            (
                "missing on one side is absent, not zero",
                snap(&[("cow_ksm", 1)], &[]),
                snap(&[], &[]),
                vec![],
            ),
            (
                "ksm gauge may shrink",
                snap(&[], &[("pages_sharing", 10), ("full_scans", 1)]),
                snap(&[], &[("pages_sharing", 4), ("full_scans", 3)]),
                vec![("ksm.full_scans", 2), ("ksm.pages_sharing", -6)],
            ),
        ];
        for (what, before, after, want) in cases {
            let want: BTreeMap<String, i64> =
                want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            assert_eq!(delta(&before, &after), want, "{what}");
        }
    }

    #[test]
    fn parse_rejects_malformed_lines() {
        let p = Path::new("/proc/vmstat");
        let cases = [
            ("nr_free_pages 10\npswpin 0\n", Some(2)),
            ("nr_free_pages ten\n", None),
            ("nr_free_pages 1 2\n", None),
            ("", Some(0)),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_vmstat(p, text).ok().map(|m| m.len()),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn live_snapshot_has_core_counters() {
        let s = VmstatSnapshot::take().unwrap();
        // Present on every kernel with THP and swap support, as this one has.
        for name in ["thp_fault_alloc", "pswpout", "pgmigrate_success"] {
            assert!(s.get(name).is_some(), "{name} missing");
        }
        let d = delta(&s, &VmstatSnapshot::take().unwrap());
        for name in ["thp_fault_alloc", "pswpout"] {
            assert!(d.contains_key(name), "{name} missing from delta");
        }
    }
}
