//! `Ksm`: KSM (`/sys/kernel/mm/ksm`) run fast for a scenario, and its counters.
//!
//! It owns the KSM knobs while a `Ksm` lives (through `KnobGuard`s) and reads KSM's counters. It
//! does not mark memory mergeable (`MADV_MERGEABLE` belongs to whoever owns the memory).
//!
//! Set order: `advisor_mode=none` (when present: the scan-time advisor would override
//! `pages_to_scan`), `sleep_millisecs`, `pages_to_scan`, `use_zero_pages` (when asked), and
//! `run=1` last, so ksmd starts with the final settings. Restore runs in reverse: `run` first, so
//! ksmd stops before its speed goes back.
//!
//! Unmerge on restore: when `run` was 0 we write back 0, which stops ksmd and leaves pages that are
//! merged merged; we do not write 2 (stop *and unmerge everything*). Unmerging is system-wide: it
//! breaks sharing in every process on the machine that uses `MADV_MERGEABLE`, not only ours, and
//! costs memory and time. Our own merged pages go away with our mappings (munmap/exit). When `run`
//! was 2 originally we write 2 back: that is the state the administrator chose.
//!
//! Not touched: `merge_across_nodes` (only writable while no page is merged, and meaningless on a
//! single node; changing it would need `run=2` first, see above), `max_page_sharing`, `smart_scan`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::knob_guard::{self, KnobGuard};
use super::knobs;

/// Where KSM's knobs and counters live.
pub const KSM_DIR: &str = "/sys/kernel/mm/ksm";

/// Errors of this module; each names the operation and the file or value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KSM is not available: {path} does not exist")]
    Missing { path: PathBuf },
    #[error("setting KSM knob: {0}")]
    Set(#[from] knob_guard::Error),
    #[error("reading KSM: {0}")]
    Read(#[from] knobs::Error),
    #[error("parsing KSM counter {path}: {value:?} is not a number")]
    Parse { path: PathBuf, value: String },
    #[error("waiting for {wanted} KSM full scans: only {reached} after {waited:?}")]
    Timeout {
        wanted: u64,
        reached: u64,
        waited: Duration,
    },
    #[error("waiting for KSM full scans while ksmd is stopped (run={run})")]
    NotRunning { run: String },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// How fast ksmd runs while a [`Ksm`] lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KsmSettings {
    /// Pause between scan batches. 0 keeps one CPU busy (there are 2 here).
    pub sleep_millisecs: u32,
    /// Pages per batch.
    pub pages_to_scan: u32,
    /// `Some(b)` sets `use_zero_pages` (merge zero pages into the shared zero page).
    pub use_zero_pages: Option<bool>,
}

impl KsmSettings {
    /// Fast enough that a full scan of a guest of a few hundred MiB takes well under a second,
    /// while leaving the other core to the VM.
    pub const FAST: KsmSettings = KsmSettings {
        sleep_millisecs: 1,
        pages_to_scan: 10_000,
        use_zero_pages: None,
    };

    /// For counting full scans while nothing else runs (the vCPU stopped at a phase): no pause
    /// between batches. `sleep_millisecs = 1` sleeps two jiffies (8 ms at HZ=250; 20 ms a
    /// scan measured here), so 100 counted scans took 2 s; without the pause they take what
    /// the scans cost, with ksmd on one CPU meanwhile.
    pub const COUNTED_SCANS: KsmSettings = KsmSettings {
        sleep_millisecs: 0,
        pages_to_scan: 10_000,
        use_zero_pages: None,
    };
}

fn path(name: &str) -> PathBuf {
    Path::new(KSM_DIR).join(name)
}

/// Reads the KSM counter `name` (`full_scans`, `pages_sharing`, `pages_shared`,
/// `ksm_zero_pages`, ...).
pub fn counter(name: &str) -> Result<u64> {
    let p = path(name);
    if !p.exists() {
        return Err(Error::Missing { path: p });
    }
    let value = knobs::read_knob(&p)?;
    value.parse().map_err(|_| Error::Parse { path: p, value })
}

/// KSM running at the requested speed; dropping it restores every knob it set.
#[derive(Debug)]
pub struct Ksm {
    /// In set order; restored in reverse.
    guards: Vec<KnobGuard>,
}

impl Ksm {
    /// Starts ksmd with [`KsmSettings::FAST`].
    pub fn start_fast() -> Result<Ksm> {
        Self::start(KsmSettings::FAST)
    }

    /// Starts ksmd with `settings` (see the module header for the order).
    pub fn start(settings: KsmSettings) -> Result<Ksm> {
        let run = path("run");
        if !run.exists() {
            return Err(Error::Missing { path: run });
        }
        let mut ksm = Ksm { guards: Vec::new() };
        if path("advisor_mode").exists() {
            ksm.guards
                .push(KnobGuard::set(path("advisor_mode"), "none")?);
        }
        ksm.guards.push(KnobGuard::set(
            path("sleep_millisecs"),
            &settings.sleep_millisecs.to_string(),
        )?);
        ksm.guards.push(KnobGuard::set(
            path("pages_to_scan"),
            &settings.pages_to_scan.to_string(),
        )?);
        if let Some(zero) = settings.use_zero_pages {
            ksm.guards.push(KnobGuard::set(
                path("use_zero_pages"),
                if zero { "1" } else { "0" },
            )?);
        }
        ksm.guards.push(KnobGuard::set(run, "1")?);
        Ok(ksm)
    }

    /// Completed full scans since boot.
    pub fn full_scans() -> Result<u64> {
        counter("full_scans")
    }

    /// How many more sites are sharing KSM pages (the saving, in pages).
    pub fn pages_sharing() -> Result<u64> {
        counter("pages_sharing")
    }

    /// How many shared KSM pages are in use.
    pub fn pages_shared() -> Result<u64> {
        counter("pages_shared")
    }

    /// Waits until ksmd has completed `scans` more full scans than when called (a page needs two
    /// to merge: one to enter the unstable tree, one to match), polling until `deadline`.
    /// Returns the `full_scans` value reached.
    pub fn wait_full_scans(&self, scans: u64, deadline: Instant) -> Result<u64> {
        let start = Instant::now();
        let target = Self::full_scans()? + scans;
        loop {
            let now = Self::full_scans()?;
            if now >= target {
                return Ok(now);
            }
            let run = knobs::read_knob(&path("run"))?;
            if run != "1" {
                return Err(Error::NotRunning { run });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    wanted: target,
                    reached: now,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Restores every knob now, newest first, and reports the first failure.
    pub fn restore(mut self) -> Result<()> {
        let mut first = Ok(());
        while let Some(g) = self.guards.pop() {
            if let Err(e) = g.restore() {
                if first.is_ok() {
                    first = Err(Error::Set(e));
                }
            }
        }
        first
    }
}

impl Drop for Ksm {
    fn drop(&mut self) {
        // Vec drops front to back; restore back to front (run first).
        while let Some(g) = self.guards.pop() {
            drop(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lock::SystemLock;
    use super::*;

    const KNOBS: [&str; 4] = ["run", "sleep_millisecs", "pages_to_scan", "use_zero_pages"];

    fn setup_read_knobs() -> Vec<String> {
        KNOBS
            .iter()
            .map(|k| knobs::read_knob(&path(k)).unwrap())
            .collect()
    }

    #[test]
    fn start_fast_merges_identical_pages_and_drop_restores() {
        if !path("run").exists() {
            eprintln!("skipped: no KSM");
            return;
        }
        let _lock = SystemLock::acquire().unwrap();
        let before = setup_read_knobs();
        const PAGES: usize = 64;
        let len = PAGES * 4096;
        // SAFETY: a fresh private anonymous mapping; unmapped at the end of this test.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: the mapping is `len` bytes, readable and writable, and ours alone.
        let mem = unsafe { std::slice::from_raw_parts_mut(addr.cast::<u8>(), len) };
        // Identical non-zero pages: mergeable whatever use_zero_pages says.
        mem.fill(0x5a);
        // SAFETY: madvise on the mapping above.
        assert_eq!(unsafe { libc::madvise(addr, len, libc::MADV_MERGEABLE) }, 0);
        {
            let ksm = Ksm::start_fast().unwrap();
            assert_eq!(knobs::read_knob(&path("run")).unwrap(), "1");
            let deadline = Instant::now() + Duration::from_secs(30);
            ksm.wait_full_scans(2, deadline).unwrap();
            // Merging into one shared page: 1 shared, PAGES-1 sharing (other processes may add).
            let mut sharing = Ksm::pages_sharing().unwrap();
            while sharing < (PAGES as u64 - 1) && Instant::now() < deadline {
                ksm.wait_full_scans(1, deadline).unwrap();
                sharing = Ksm::pages_sharing().unwrap();
            }
            assert!(sharing >= PAGES as u64 - 1, "pages_sharing {sharing}");
            assert!(Ksm::pages_shared().unwrap() >= 1);
        }
        assert_eq!(setup_read_knobs(), before, "KSM knobs not restored");
        // SAFETY: unmapping the mapping created above; `mem` is not used after this.
        assert_eq!(unsafe { libc::munmap(addr, len) }, 0);
    }

    #[test]
    fn counters_parse() {
        if !path("run").exists() {
            return;
        }
        for name in ["full_scans", "pages_sharing", "pages_shared"] {
            counter(name).unwrap();
        }
        match counter("no_such_counter") {
            Err(Error::Missing { path }) => assert!(path.ends_with("no_such_counter")),
            other => panic!("expected Missing, got {other:?}"),
        }
    }
}
