//! Whether tracing works on this host, for `pinlab host`: tracefs reachable, instances and
//! `trace_marker` there, and which catalogue events the kernel lacks.
//!
//! It only looks. tracefs, when the host has not mounted it, is reached through a detached mount
//! that no mount table shows and that is gone when the probe returns; no instance is created.

use super::events;
use super::tracefs::{self, Tracefs};

/// The probe's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub works: bool,
    pub detail: String,
    /// Catalogue events this kernel does not have.
    pub missing: Vec<String>,
    pub fix: Option<String>,
}

/// Looks (see the module header).
pub fn probe() -> Probe {
    let fs = match Tracefs::open() {
        Ok(fs) => fs,
        Err(e) => {
            let fix = match &e {
                tracefs::Error::NotInKernel => "a kernel with CONFIG_TRACING".to_string(),
                tracefs::Error::ReadOnly(p) => format!("mount -o remount,rw {}", p.display()),
                _ => "mount -t tracefs nodev /sys/kernel/tracing (needs CAP_SYS_ADMIN)".to_string(),
            };
            return Probe {
                works: false,
                detail: format!("{e}; traced runs go on with the trace skipped"),
                missing: Vec::new(),
                fix: Some(fix),
            };
        }
    };
    let available = match fs.available_events() {
        Ok(a) => a,
        Err(e) => {
            return Probe {
                works: false,
                detail: e.to_string(),
                missing: Vec::new(),
                fix: Some("check that tracefs is readable (lockdown, permissions)".into()),
            }
        }
    };
    let sel = events::select(&available);
    let marker = fs.root().join("trace_marker").exists();
    let works = marker && !sel.present.is_empty();
    let mut detail = format!(
        "{} of {} events via {}; instances and trace_marker {}",
        sel.present.len(),
        events::CATALOGUE.len(),
        fs.describe(),
        if marker { "present" } else { "MISSING" }
    );
    if !sel.absent.is_empty() {
        detail.push_str(&format!("; missing: {}", sel.absent.join(" ")));
    }
    Probe {
        works,
        detail,
        missing: sel.absent,
        fix: (!works).then(|| "a kernel with tracepoints and trace_marker (CONFIG_FTRACE)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_agrees_with_a_direct_look_and_leaves_no_mount() {
        let mounts_before = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let p = probe();
        let mounts_after = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert_eq!(
            tracefs::tracefs_mounts(&mounts_before),
            tracefs::tracefs_mounts(&mounts_after),
            "the probe changed the mount table"
        );
        match Tracefs::open() {
            Ok(fs) => {
                let sel = events::select(&fs.available_events().unwrap());
                assert_eq!(p.missing, sel.absent);
                assert_eq!(p.works, !sel.present.is_empty(), "{p:?}");
            }
            Err(_) => assert!(!p.works && p.fix.is_some()),
        }
    }
}
