//! What a result was measured on: the kernel, its THP/KSM/swap settings, and which pinlab.
//!
//! Every JSON result carries one `Identity`, so two results from two kernels or two machines can
//! always say what they compared. It only reads (procfs, sysfs, the build's own constants); a
//! file it cannot read is recorded as `None`, never guessed.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The git commit pinlab was built from (`unknown` outside a git checkout).
pub const GIT_COMMIT: &str = env!("PINLAB_GIT_COMMIT");

/// The kernel and settings a result was measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// `uname -r`.
    pub kernel_release: Option<String>,
    /// /proc/version, trimmed.
    pub proc_version: Option<String>,
    pub machine: Option<String>,
    /// /sys/kernel/mm/transparent_hugepage/{enabled,defrag}: the selected value.
    pub thp_enabled: Option<String>,
    pub thp_defrag: Option<String>,
    /// /sys/kernel/mm/ksm/run (0 stopped, 1 running, 2 unmerging).
    pub ksm_run: Option<String>,
    /// Active swap areas (/proc/swaps, after its header) when the result was taken.
    pub swap_areas: Option<usize>,
    pub pinlab_version: String,
    pub pinlab_commit: String,
    /// When the result was taken: seconds since the Unix epoch (UTC).
    pub unix_time: u64,
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(Path::new(path))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The bracketed choice of a sysfs "a [b] c" setting, or the whole value.
pub fn selected(setting: &str) -> String {
    setting
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or(setting)
        .to_string()
}

impl Identity {
    /// Reads this host now.
    pub fn of_this_host() -> Self {
        // SAFETY: uname fills the struct we pass; all-zero is a valid utsname.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid, writable utsname.
        let ok = unsafe { libc::uname(&mut u) } == 0;
        let field = |f: &[libc::c_char]| {
            // SAFETY: uname NUL-terminates each field inside its array.
            let c = unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) };
            c.to_string_lossy().into_owned()
        };
        Identity {
            kernel_release: ok.then(|| field(&u.release)),
            machine: ok.then(|| field(&u.machine)),
            proc_version: read_trim("/proc/version"),
            thp_enabled: read_trim("/sys/kernel/mm/transparent_hugepage/enabled")
                .map(|s| selected(&s)),
            thp_defrag: read_trim("/sys/kernel/mm/transparent_hugepage/defrag")
                .map(|s| selected(&s)),
            ksm_run: read_trim("/sys/kernel/mm/ksm/run"),
            swap_areas: read_trim("/proc/swaps").map(|s| s.lines().skip(1).count()),
            pinlab_version: env!("CARGO_PKG_VERSION").to_string(),
            pinlab_commit: GIT_COMMIT.to_string(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selected_takes_the_bracketed_word() {
        assert_eq!(selected("always [madvise] never"), "madvise");
        assert_eq!(selected("[always] madvise never"), "always");
        assert_eq!(selected("0"), "0");
    }

    #[test]
    fn this_host_has_a_kernel_release_and_a_version() {
        let id = Identity::of_this_host();
        let release = id.kernel_release.expect("uname works on Linux");
        assert!(release.chars().next().is_some_and(|c| c.is_ascii_digit()));
        assert!(id.proc_version.is_some_and(|v| v.contains(&release)));
        assert!(!id.pinlab_commit.is_empty());
        assert!(id.unix_time > 1_700_000_000);
    }
}
