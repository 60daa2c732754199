//! The prefault of guest RAM in two parts, on a thread of its own, with its THP coverage.
//!
//! The hot part is guest RAM from GPA 0 to the end of the DMA region's huge pages (boot
//! structures, the guest image, its stack, the region): what the guest touches first. The
//! thread faults it in (MADV_POPULATE_WRITE) and measures its THP coverage, and hands that over
//! (`Prefault::hot`: the guest may start). The rest of RAM is faulted in only when something
//! needs all of it: a host action (the hook waits for the whole, `Prefault::wait`, at its first
//! phase), the PTE split of `pte-mapped-thp`, VFIO. Its coverage is measured right after its
//! prefault, so each part's coverage is measured before any host action. A run that never
//! needs all of RAM leaves the rest untouched (no page of it faulted in by the lab, none of its
//! CPU or mmap lock taken from the vCPU and the devices while the guest boots and maps), and
//! [`Prefault::finish`] says how much of RAM was faulted in and gives the coverage of exactly
//! that span. The coverage at boot is the hot part's blocks then the rest's (`thp_blocks`
//! counts per 2 MiB block, and the hot part ends on a 2 MiB boundary).
//!
//! Owns the thread (joined on Drop: it never outlives its owner) and reads guest RAM through
//! its shared owner; it does not touch the VM, pins or host knobs.

use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use crate::addr::{Gpa, Hva, HUGE_PAGE_SIZE};
use crate::memory::GuestRam;
use crate::timeline::{LaunchStep, Mono, Timeline, What};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spawning the prefault thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("populating guest RAM {gpa}+{len:#x}: {source}")]
    Populate {
        gpa: Gpa,
        len: u64,
        #[source]
        source: crate::memory::Error,
    },
    #[error("the hot part's prefault was already reported failed")]
    HotFailed,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Per-2-MiB-block THP counts of one part (`None`: the measurement itself failed).
type Blocks = Option<Vec<u16>>;

/// What a part's (or the whole) prefault faulted in: `[0, bytes)` of its span, and the THP
/// blocks of exactly that.
#[derive(Clone, Debug, PartialEq)]
pub struct Faulted {
    pub blocks: Blocks,
    pub bytes: u64,
}

/// The length of the hot part of `ram_size` bytes of guest RAM whose DMA region's huge pages
/// end at `hot_end`: rounded up to 2 MiB, at most all of RAM.
pub fn hot_len(ram_size: u64, hot_end: Gpa) -> u64 {
    hot_end
        .raw()
        .checked_next_multiple_of(HUGE_PAGE_SIZE)
        .unwrap_or(u64::MAX)
        .min(ram_size)
}

/// A running (or finished) two-part prefault.
pub struct Prefault {
    hot: Option<mpsc::Receiver<Result<Faulted>>>,
    hot_part: Option<Faulted>,
    thread: Option<JoinHandle<Result<Faulted>>>,
    done: Option<Result<Faulted>>,
    /// The thread's orders after the hot part: `true` faults the rest in, `false` (or the
    /// sender dropped) ends it with the rest untouched. `None` once sent.
    rest: Option<mpsc::Sender<bool>>,
    /// The rest was asked for.
    whole: bool,
}

/// The rest is faulted in this much at a time. MADV_POPULATE_WRITE holds the mmap lock for
/// reading for as long as one call runs; anything that needs it for writing meanwhile (the
/// vCPU's `kvm_run` mmap in `Vm::create`, thread stacks, the io_uring rings) waits for the
/// whole call. Measured here (`run --json` timelines, load 3-8): with the rest in one call,
/// `Vm::create` ended when the prefault did (12.9 ms of 12.9, 348 of 354); one huge page per
/// call, it took 1.6-4.8 ms while the rest went on.
const REST_CHUNK: u64 = HUGE_PAGE_SIZE;

/// Faults `[gpa, gpa+len)` in, `chunk` bytes per call, then measures its THP blocks.
fn populate(ram: &GuestRam, gpa: u64, len: u64, chunk: u64) -> Result<Faulted> {
    let end = gpa.saturating_add(len);
    let mut at = gpa;
    while at < end {
        let n = chunk.min(end - at);
        ram.populate_range(Gpa(at), n)
            .map_err(|source| Error::Populate {
                gpa: Gpa(at),
                len: n,
                source,
            })?;
        at += n;
    }
    Ok(Faulted {
        blocks: crate::pfn::thp_blocks(Hva(ram.hva().raw() + gpa), len).ok(),
        bytes: len,
    })
}

impl Prefault {
    /// Starts the thread: the first `hot_len` bytes, then the rest of RAM if
    /// [`Prefault::wait`] asks for it. Each part is a `Prefault` span on `timeline` (thread
    /// "prefault").
    pub fn start(
        ram: Arc<RwLock<GuestRam>>,
        hot_len: u64,
        timeline: Arc<Timeline>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel(1);
        let (rest_tx, rest_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pinlab-prefault".into())
            .spawn(move || {
                let ram = ram.read().unwrap_or_else(|p| p.into_inner());
                let size = ram.size();
                let hot_len = hot_len.min(size);
                let span = |start| {
                    timeline.span(
                        start,
                        "prefault",
                        What::Launch {
                            step: LaunchStep::Prefault,
                        },
                    )
                };
                let start = Mono::now();
                let hot = populate(&ram, 0, hot_len, hot_len.max(1));
                span(start);
                let hot_ok = hot.is_ok();
                // The receiver goes only with its `Prefault`, which joins this thread first.
                let _ = tx.send(hot);
                if !hot_ok {
                    return Err(Error::HotFailed);
                }
                let untouched = Faulted {
                    blocks: Some(Vec::new()),
                    bytes: 0,
                };
                // Until asked: nothing may need the rest.
                if hot_len == size || rest_rx.recv() != Ok(true) {
                    return Ok(untouched);
                }
                let start = Mono::now();
                let rest = populate(&ram, hot_len, size - hot_len, REST_CHUNK);
                span(start);
                rest
            })
            .map_err(Error::Spawn)?;
        Ok(Prefault {
            hot: Some(rx),
            hot_part: None,
            thread: Some(thread),
            done: None,
            rest: Some(rest_tx),
            whole: false,
        })
    }

    /// Waits for the hot part: faulted in, its coverage measured.
    pub fn hot(&mut self) -> Result<()> {
        let Some(rx) = self.hot.take() else {
            return match self.hot_part {
                Some(_) => Ok(()),
                None => Err(Error::HotFailed),
            };
        };
        match rx.recv() {
            Ok(r) => {
                self.hot_part = Some(r?);
                Ok(())
            }
            // The thread ended without a word: it panicked; `join` says how.
            Err(mpsc::RecvError) => {
                self.join();
                Err(Error::HotFailed)
            }
        }
    }

    /// Joins the thread; unless the rest was asked for, it ends without it.
    fn join(&mut self) {
        if let Some(rest) = self.rest.take() {
            let _ = rest.send(false);
        }
        if let Some(t) = self.thread.take() {
            let r = t.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            self.done = Some(r);
        }
    }

    /// Faults in the rest and waits for the whole prefault: true if every part was faulted
    /// in. Idempotent. (Once the thread was joined without the rest, the rest cannot be asked
    /// for: false.)
    pub fn wait(&mut self) -> bool {
        if let Some(rest) = self.rest.take() {
            // A thread that already ended (the hot part failed) does not hear it: fine.
            let _ = rest.send(true);
            self.whole = true;
        }
        self.join();
        self.whole && matches!(self.done, Some(Ok(_)))
    }

    /// The prefault's outcome: how much of guest RAM, from GPA 0, was faulted in (all of it
    /// after [`Prefault::wait`], else the hot part) and the THP blocks of that span as each
    /// part was right after its prefault (`None` if a measurement failed), or why a part was
    /// not faulted in.
    pub fn finish(mut self) -> Result<Faulted> {
        let hot = self.hot();
        self.join();
        hot?;
        let rest = self.done.take().unwrap_or(Err(Error::HotFailed))?;
        let hot = self.hot_part.take().ok_or(Error::HotFailed)?;
        Ok(Faulted {
            bytes: hot.bytes + rest.bytes,
            blocks: match (hot.blocks, rest.blocks) {
                (Some(mut hot), Some(rest)) => {
                    hot.extend(rest);
                    Some(hot)
                }
                _ => None,
            },
        })
    }
}

impl Drop for Prefault {
    fn drop(&mut self) {
        // Never outlives its owner: the rest's sender goes first (a thread waiting to be asked
        // for the rest ends without it), then the join; a panic is dropped here (the run is
        // already ending).
        self.rest.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_len_rounds_up_to_huge_pages_and_stops_at_ram() {
        let mib = 1 << 20;
        assert_eq!(hot_len(64 * mib, Gpa(4 * mib)), 4 * mib);
        assert_eq!(hot_len(64 * mib, Gpa(3 * mib)), 4 * mib);
        assert_eq!(hot_len(4 * mib, Gpa(6 * mib)), 4 * mib);
        assert_eq!(hot_len(64 * mib, Gpa(u64::MAX)), 64 * mib);
    }

    /// Both parts are faulted in and the blocks cover all of RAM, hot part first; a bug: the
    /// rest never faulted in, or blocks of one part missing or counted twice.
    #[test]
    fn both_parts_are_faulted_in_and_counted_once() {
        let size = 8 << 20;
        let ram = Arc::new(RwLock::new(GuestRam::new(size, true, false).unwrap()));
        let timeline = Arc::new(Timeline::new());
        let mut p = Prefault::start(ram.clone(), 2 << 20, timeline).unwrap();
        p.hot().unwrap();
        assert!(p.wait());
        let faulted = p.finish().unwrap();
        assert_eq!(faulted.bytes, size);
        let blocks = faulted.blocks.expect("coverage measured");
        assert_eq!(blocks.len(), (size / HUGE_PAGE_SIZE) as usize);
        let r = ram.read().unwrap();
        let present = crate::pfn::pagemap(r.hva(), size)
            .unwrap()
            .iter()
            .filter(|m| m.pfn.is_some())
            .count();
        assert_eq!(present as u64, size / crate::addr::PAGE_SIZE);
    }

    /// Without `wait`, the rest stays untouched: `finish` reports the hot part alone, its
    /// blocks cover exactly it, and no page past it is present. A bug: the rest faulted in
    /// anyway (the CPU and mmap lock taken from the guest's launch), or a span reported
    /// without its pages (coverage of RAM never touched).
    #[test]
    fn without_wait_the_rest_stays_untouched() {
        let (size, hot) = (16 << 20, 4 << 20);
        let ram = Arc::new(RwLock::new(GuestRam::new(size, true, false).unwrap()));
        let timeline = Arc::new(Timeline::new());
        let mut p = Prefault::start(ram.clone(), hot, timeline).unwrap();
        p.hot().unwrap();
        let faulted = p.finish().unwrap();
        assert_eq!(faulted.bytes, hot);
        let blocks = faulted.blocks.expect("coverage measured");
        assert_eq!(blocks.len() as u64, hot / HUGE_PAGE_SIZE);
        let r = ram.read().unwrap();
        let present = crate::pfn::pagemap(r.hva(), size)
            .unwrap()
            .iter()
            .filter(|m| m.pfn.is_some())
            .count() as u64;
        assert_eq!(
            present,
            hot / crate::addr::PAGE_SIZE,
            "the rest stayed unfaulted"
        );
    }

    /// A prefault dropped without `wait` or `finish` (a run that fails between the hot part and
    /// its end) ends its thread: the drop returns. A bug: the thread still waiting to be asked
    /// for the rest while the drop joins it, so the run hangs on its error path.
    #[test]
    fn a_dropped_prefault_ends_its_thread() {
        let ram = Arc::new(RwLock::new(GuestRam::new(8 << 20, true, false).unwrap()));
        let mut p = Prefault::start(ram, 2 << 20, Arc::new(Timeline::new())).unwrap();
        p.hot().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(p);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_secs(30)).is_ok(),
            "dropping the prefault hung"
        );
    }
}
