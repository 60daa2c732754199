//! The shadow VM: a helper process standing for another VM on the same host, for `ksm-shadow`.
//!
//! It owns both sides of that process. The VMM side, [`ShadowVm`], re-executes this binary
//! (`/proc/self/exe`) with the hidden subcommand [`SUBCOMMAND`] (not a fork child, which would
//! share the VMM's pages and its mm), hands it the pages to copy in a memfd on its stdin, reads
//! its one-line report, and reads its page frames through `/proc/<pid>/pagemap` and
//! `/proc/kpageflags` (root). The helper side, [`helper_main`], copies every page `copies`
//! times into private anonymous memory (`MADV_NOHUGEPAGE`, so KSM sees base pages), adds as many
//! control pages of one other content, marks all of it `MADV_MERGEABLE`, reports, and then waits
//! until the VMM closes the report pipe (or dies, which closes it too) and exits 0.
//!
//! The helper is registered with `host` (a SIGINT/SIGTERM kills and reaps it) and owned by a
//! [`ShadowVm`], whose Drop releases it, waits for it, and kills it by PID if it does not exit.
//! The VMM never writes to a pipe the helper reads (pinlab dies on SIGPIPE): the pages go in a
//! memfd, and the release is the close of the pipe the helper writes.
//!
//! It must not touch guest RAM (the caller copies the region's bytes), KSM's knobs (`host::Ksm`)
//! or the order in which processes enter KSM (`perturb`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::addr::{Hva, Pfn, PAGE_SIZE};
use crate::mmap::{self, Mapping};

/// The hidden subcommand that runs [`helper_main`].
pub const SUBCOMMAND: &str = "__ksm-shadow";

/// Most pages the helper copies (64 MiB of region).
pub const MAX_PAGES: u64 = crate::scenario::KSM_SHADOW_MAX_REGION / PAGE_SIZE;
/// Most copies of each page.
pub const MAX_COPIES: u64 = 8;

/// Every word of a control page. A guest pattern page is never one repeated word, so no region
/// page has this content; [`ShadowVm::spawn`] checks it anyway.
pub const CONTROL_WORD: u64 = 0x5348_4144_4f57_5921;

/// How long the helper may take to copy its pages and report.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long the helper may take to exit once released.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// Errors of both sides; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} = {value} is outside 1..={max}")]
    Range {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("the pages to copy are {len} bytes, not {pages} pages")]
    Length { len: u64, pages: u64 },
    #[error("a page to copy holds the control content (every word {CONTROL_WORD:#x})")]
    ControlContent,
    #[error("memfd_create: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("writing the pages into the memfd: {0}")]
    WriteMemfd(#[source] std::io::Error),
    #[error("spawning the helper (/proc/self/exe {SUBCOMMAND}): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("waiting for the helper's report: {0}")]
    Poll(#[source] std::io::Error),
    #[error("the helper did not report within {0:?}")]
    NoReport(Duration),
    #[error("the helper exited before reporting ({status}); its stderr: {stderr}")]
    Exited { status: String, stderr: String },
    #[error("the helper's report {line:?} does not parse: {reason}")]
    Report { line: String, reason: String },
    #[error("reading /proc/{pid}/pagemap: {source}")]
    Pagemap {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("a present page of the helper at {hva} has a hidden PFN (needs CAP_SYS_ADMIN)")]
    PfnHidden { hva: Hva },
    #[error("reading the helper's page flags: {0}")]
    Kpageflags(#[source] crate::pfn::Error),
    #[error("waiting for the helper to exit: {0}")]
    Wait(#[source] std::io::Error),
    // The helper's own steps.
    #[error("reading the pages to copy from stdin: {0}")]
    ReadPages(#[source] std::io::Error),
    #[error("mapping the helper's memory: {0}")]
    Mmap(#[source] mmap::Error),
    #[error("madvise({advice}): {source}")]
    Madvise {
        advice: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the report: {0}")]
    WriteReport(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The helper's report: where its pages are. `copies` blocks of the pages in order (block `c`
/// holds page `i` at `x + (c * pages + i) * 4 KiB`), then `pages` control pages at `y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    pub x: Hva,
    /// Copies of the pages: `copies * pages`.
    pub x_pages: u64,
    pub y: Hva,
    /// Control pages, all holding [`CONTROL_WORD`]: as many as the pages copied.
    pub y_pages: u64,
}

/// [`Ready`] as the helper writes it: one JSON line, addresses as numbers.
#[derive(Serialize, Deserialize)]
struct ReadyLine {
    x: u64,
    x_pages: u64,
    y: u64,
    y_pages: u64,
}

impl Ready {
    fn to_line(self) -> String {
        let l = ReadyLine {
            x: self.x.raw(),
            x_pages: self.x_pages,
            y: self.y.raw(),
            y_pages: self.y_pages,
        };
        serde_json::to_string(&l).expect("plain numbers serialize")
    }

    fn parse(line: &str) -> std::result::Result<Ready, serde_json::Error> {
        let l: ReadyLine = serde_json::from_str(line)?;
        Ok(Ready {
            x: Hva(l.x),
            x_pages: l.x_pages,
            y: Hva(l.y),
            y_pages: l.y_pages,
        })
    }
}

/// The helper's pages as the kernel maps them at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frames {
    pub x_pfns: Vec<Option<Pfn>>,
    /// Copies whose frame kpageflags marks KSM.
    pub x_ksm: u64,
    pub y_pfns: Vec<Option<Pfn>>,
    pub y_ksm: u64,
}

/// A helper process standing for another VM, alive while this lives.
pub struct ShadowVm {
    child: Option<Child>,
    pid: i32,
    /// Closing it releases the helper.
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    ready: Ready,
}

impl ShadowVm {
    /// Starts a helper that holds `copies` copies of each 4 KiB page of `pages`, and as many
    /// control pages; returns once it has marked them mergeable and reported.
    pub fn spawn(pages: &[u8], copies: u64) -> Result<ShadowVm> {
        let count = pages.len() as u64 / PAGE_SIZE;
        if pages.len() as u64 != count * PAGE_SIZE {
            return Err(Error::Length {
                len: pages.len() as u64,
                pages: count,
            });
        }
        check_range("pages", count, MAX_PAGES)?;
        check_range("copies", copies, MAX_COPIES)?;
        if pages.chunks_exact(PAGE_SIZE as usize).any(is_control_page) {
            return Err(Error::ControlContent);
        }
        let memfd = memfd_with(pages)?;
        let mut child = Command::new("/proc/self/exe")
            .arg(SUBCOMMAND)
            .args([
                "--pages",
                &count.to_string(),
                "--copies",
                &copies.to_string(),
            ])
            .stdin(Stdio::from(memfd))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::Spawn)?;
        let pid = child.id() as i32;
        crate::host::register_child(pid);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut vm = ShadowVm {
            child: Some(child),
            pid,
            stdout,
            stderr,
            ready: Ready {
                x: Hva(0),
                x_pages: 0,
                y: Hva(0),
                y_pages: 0,
            },
        };
        let line = vm.read_report()?;
        let ready = Ready::parse(&line).map_err(|e| Error::Report {
            line: line.clone(),
            reason: e.to_string(),
        })?;
        if ready.x_pages != count * copies || ready.y_pages != count {
            return Err(Error::Report {
                line,
                reason: format!(
                    "expected {} copies and {count} control pages",
                    count * copies
                ),
            });
        }
        vm.ready = ready;
        Ok(vm)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn ready(&self) -> Ready {
        self.ready
    }

    /// One line from the helper's stdout, within [`READY_WITHIN`].
    fn read_report(&mut self) -> Result<String> {
        let out = self
            .stdout
            .as_mut()
            .expect("stdout is taken only on release");
        let deadline = Instant::now() + READY_WITHIN;
        let mut line = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::NoReport(READY_WITHIN));
            }
            let mut pfd = libc::pollfd {
                fd: out.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on a local, for at most `left`.
            let n =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(Error::Poll(e));
            }
            if n == 0 {
                continue;
            }
            let mut buf = [0u8; 512];
            match out.read(&mut buf) {
                Ok(0) => return Err(self.exited_early()),
                Ok(k) => {
                    line.extend_from_slice(&buf[..k]);
                    if let Some(end) = line.iter().position(|&b| b == b'\n') {
                        line.truncate(end);
                        return Ok(String::from_utf8_lossy(&line).into_owned());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Poll(e)),
            }
        }
    }

    /// The helper closed its stdout without a report: reap it and say why, from its stderr.
    fn exited_early(&mut self) -> Error {
        let status = match self.reap() {
            Ok(s) => s,
            Err(e) => e.to_string(),
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        Error::Exited {
            status,
            stderr: stderr.trim().to_string(),
        }
    }

    /// The helper's copies and control pages as mapped now: PFNs from `/proc/<pid>/pagemap`,
    /// the KSM bit from `/proc/kpageflags`.
    pub fn frames(&self) -> Result<Frames> {
        let r = self.ready;
        let x_pfns = pagemap_of(self.pid, r.x, r.x_pages)?;
        let y_pfns = pagemap_of(self.pid, r.y, r.y_pages)?;
        Ok(Frames {
            x_ksm: ksm_pages(&x_pfns)?,
            y_ksm: ksm_pages(&y_pfns)?,
            x_pfns,
            y_pfns,
        })
    }

    /// Releases the helper and waits for it; its exit status (0: every step succeeded).
    pub fn finish(mut self) -> Result<i32> {
        self.stdout = None;
        let deadline = Instant::now() + EXIT_WITHIN;
        let child = self.child.as_mut().expect("taken only here and in Drop");
        loop {
            match child.try_wait().map_err(Error::Wait)? {
                Some(status) => {
                    crate::host::unregister_child(self.pid);
                    self.child = None;
                    return Ok(status.code().unwrap_or(-1));
                }
                None if Instant::now() >= deadline => {
                    let status = self.reap().map_err(Error::Wait)?;
                    return Err(Error::Exited {
                        status: format!("killed after {EXIT_WITHIN:?} without exiting: {status}"),
                        stderr: String::new(),
                    });
                }
                None => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Kills the helper by PID (if it still runs) and reaps it; its wait status as text.
    fn reap(&mut self) -> std::io::Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok("already reaped".into());
        };
        let status = match child.try_wait()? {
            Some(s) => s,
            None => {
                // Child::kill sends SIGKILL to this child's PID (it is not reaped yet, so the
                // PID is still ours).
                child.kill()?;
                child.wait()?
            }
        };
        crate::host::unregister_child(self.pid);
        Ok(status.to_string())
    }
}

impl Drop for ShadowVm {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        // Release it, give it a moment to exit by itself, then kill it.
        self.stdout = None;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => std::thread::sleep(Duration::from_millis(2)),
                _ => break,
            }
        }
        if let Err(e) = self.reap() {
            tracing::warn!("reaping the ksm-shadow helper {}: {e}", self.pid);
        }
    }
}

fn check_range(what: &'static str, value: u64, max: u64) -> Result<()> {
    if value == 0 || value > max {
        return Err(Error::Range { what, value, max });
    }
    Ok(())
}

/// Whether a 4 KiB page is a control page (every word [`CONTROL_WORD`]).
pub fn is_control_page(page: &[u8]) -> bool {
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == CONTROL_WORD)
}

/// A memfd holding `bytes`.
fn memfd_with(bytes: &[u8]) -> Result<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"pinlab-ksm-shadow".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: a new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = File::from(fd);
    file.write_all(bytes).map_err(Error::WriteMemfd)?;
    Ok(OwnedFd::from(file))
}

/// The PFN of each of `pages` pages of process `pid` from `hva` (`None`: not present).
fn pagemap_of(pid: i32, hva: Hva, pages: u64) -> Result<Vec<Option<Pfn>>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const PFN_MASK: u64 = (1 << 55) - 1;
    let err = |source| Error::Pagemap { pid, source };
    let file = File::open(format!("/proc/{pid}/pagemap")).map_err(err)?;
    let mut bytes = vec![0u8; pages as usize * 8];
    file.read_exact_at(&mut bytes, hva.raw() / PAGE_SIZE * 8)
        .map_err(err)?;
    bytes
        .chunks_exact(8)
        .enumerate()
        .map(|(i, w)| {
            let e = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
            if e & PRESENT == 0 || e & SWAPPED != 0 {
                return Ok(None);
            }
            match e & PFN_MASK {
                0 => Err(Error::PfnHidden {
                    hva: Hva(hva.raw() + i as u64 * PAGE_SIZE),
                }),
                pfn => Ok(Some(Pfn(pfn))),
            }
        })
        .collect()
}

/// How many of the present frames kpageflags marks KSM.
fn ksm_pages(pfns: &[Option<Pfn>]) -> Result<u64> {
    let present: Vec<Pfn> = pfns.iter().flatten().copied().collect();
    let flags = crate::pfn::kpageflags(&present).map_err(Error::Kpageflags)?;
    Ok(flags.iter().filter(|f| f.ksm()).count() as u64)
}

/// How many distinct frames back `pfns` (present pages only).
pub fn distinct_frames(pfns: &[Option<Pfn>]) -> u64 {
    let mut seen = BTreeMap::new();
    for p in pfns.iter().flatten() {
        *seen.entry(*p).or_insert(0u32) += 1;
    }
    seen.len() as u64
}

/// The helper process (`pinlab __ksm-shadow --pages N --copies C`): stdin is a memfd of `pages`
/// 4 KiB pages. Copies them, marks them mergeable, reports [`Ready`] on stdout as one JSON line,
/// then waits until the reader of stdout goes away.
pub fn helper_main(pages: u64, copies: u64) -> Result<()> {
    check_range("pages", pages, MAX_PAGES)?;
    check_range("copies", copies, MAX_COPIES)?;
    let page = PAGE_SIZE as usize;
    let n = pages as usize;
    let stdin = File::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(Error::ReadPages)?,
    );
    let len = stdin.metadata().map_err(Error::ReadPages)?.len();
    if len != pages * PAGE_SIZE {
        return Err(Error::Length { len, pages });
    }
    let mut content = vec![0u8; n * page];
    stdin
        .read_exact_at(&mut content, 0)
        .map_err(Error::ReadPages)?;
    let total = (copies + 1) * pages * PAGE_SIZE;
    let map = Mapping::anonymous(total, 0).map_err(Error::Mmap)?;
    madvise(&map, libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE")?;
    // SAFETY: the mapping is `total` bytes, readable and writable, made above and used only
    // through this slice until it is unmapped when `map` drops at the end of this function.
    let mem = unsafe { std::slice::from_raw_parts_mut(map.as_ptr(), total as usize) };
    let (x, y) = mem.split_at_mut(copies as usize * n * page);
    for block in x.chunks_exact_mut(n * page) {
        block.copy_from_slice(&content);
    }
    for w in y.chunks_exact_mut(8) {
        w.copy_from_slice(&CONTROL_WORD.to_ne_bytes());
    }
    madvise(&map, libc::MADV_MERGEABLE, "MADV_MERGEABLE")?;
    let ready = Ready {
        x: map.hva(),
        x_pages: copies * pages,
        y: Hva(map.hva().raw() + copies * pages * PAGE_SIZE),
        y_pages: pages,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", ready.to_line())
        .and_then(|_| out.flush())
        .map_err(Error::WriteReport)?;
    // Wait for the VMM to close its end: poll reports POLLERR on a pipe's write end once it has
    // no reader (also when the VMM dies).
    loop {
        let mut pfd = libc::pollfd {
            fd: out.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd on a local, no timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            break;
        }
    }
    drop(map);
    Ok(())
}

fn madvise(map: &Mapping, advice: i32, name: &'static str) -> Result<()> {
    // SAFETY: the whole of a mapping this process made and owns; madvise changes only how the
    // kernel backs it.
    let rc = unsafe { libc::madvise(map.as_ptr().cast(), map.len(), advice) };
    if rc != 0 {
        return Err(Error::Madvise {
            advice: name,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report round-trips through its one JSON line; a bug would lose a field the VMM
    /// reads the helper's pages by.
    #[test]
    fn ready_round_trips() {
        let r = Ready {
            x: Hva(0x7f00_0000_0000),
            x_pages: 1024,
            y: Hva(0x7f00_0040_0000),
            y_pages: 512,
        };
        let line = r.to_line();
        assert!(!line.contains('\n'));
        assert_eq!(Ready::parse(&line).unwrap(), r);
        assert!(Ready::parse("{\"x\": 1}").is_err());
    }

    /// A page of control words is recognised, a page differing in one byte is not: a bug would
    /// let a region page pass as the control content (the control then proves nothing).
    #[test]
    fn control_pages_are_recognised() {
        let mut page: Vec<u8> = std::iter::repeat_n(CONTROL_WORD.to_ne_bytes(), 512)
            .flatten()
            .collect();
        assert!(is_control_page(&page));
        page[4095] ^= 1;
        assert!(!is_control_page(&page));
        assert!(matches!(
            ShadowVm::spawn(&[0u8; 100], 2),
            Err(Error::Length { len: 100, .. })
        ));
        page[4095] ^= 1;
        assert!(matches!(
            ShadowVm::spawn(&page, 2),
            Err(Error::ControlContent)
        ));
        assert!(matches!(
            ShadowVm::spawn(&[1u8; 4096], 0),
            Err(Error::Range { what: "copies", .. })
        ));
    }

    #[test]
    fn distinct_frames_counts_present_pages_once() {
        let pfns = [Some(Pfn(5)), Some(Pfn(5)), None, Some(Pfn(9))];
        assert_eq!(distinct_frames(&pfns), 2);
    }
}
