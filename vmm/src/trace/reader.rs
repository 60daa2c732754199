//! The ring-buffer reader: its own thread drains the instance's `trace_pipe` while the run goes.
//!
//! It owns that thread and what it collects: the raw text (appended to `FILE.ftrace.txt` as read),
//! the parsed records (bounded), and the loss counts the text itself reports (`[LOST N EVENTS]`).
//! The pipe is non-blocking and polled, so the thread never holds anything the vCPU or the device
//! thread waits for, and a stop takes at most one poll period plus the final drain. It reads only.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::parse::{parse_line, Line, Record};
use super::tracefs::InstanceFile;

/// Records kept at most (the raw file keeps everything); the rest are counted.
pub const MAX_RECORDS: usize = 500_000;
/// How long the thread sleeps when the pipe is empty.
const POLL: Duration = Duration::from_millis(10);

/// What the reader collected.
#[derive(Debug, Default)]
pub struct ReadResult {
    pub records: Vec<Record>,
    /// Events the ring buffer reported lost in the text (`CPU:N [LOST M EVENTS]`).
    pub lost_in_text: u64,
    /// Records past [`MAX_RECORDS`] (in the raw file, not parsed).
    pub over_bound: u64,
    /// Lines that were not records.
    pub unparsed: u64,
    pub bytes: u64,
    /// Why reading or writing the raw file stopped early, if it did.
    pub error: Option<String>,
}

impl ReadResult {
    fn take_lines(&mut self, text: &[u8]) {
        for line in text.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match parse_line(&String::from_utf8_lossy(line)) {
                Line::Record(r) if self.records.len() < MAX_RECORDS => self.records.push(r),
                Line::Record(_) => self.over_bound += 1,
                Line::Lost { events, .. } => self.lost_in_text += events,
                Line::Other => self.unparsed += 1,
            }
        }
    }
}

/// The running reader.
pub struct Reader {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ReadResult>,
}

/// Work the reader thread does between polls, off the vCPU and device threads.
pub type Tick = Box<dyn FnMut() + Send>;

fn read_loop(
    pipe: InstanceFile,
    raw: Option<File>,
    stop: Arc<AtomicBool>,
    mut tick: Option<Tick>,
) -> ReadResult {
    let mut out = ReadResult::default();
    let mut raw = raw.map(|f| BufWriter::with_capacity(1 << 20, f));
    let mut buf = vec![0u8; 1 << 16];
    // Bytes after the last newline of the previous read.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        match pipe.file().read(&mut buf) {
            // EOF: only a pipe pointed at /dev/null by the signal path ends like this.
            Ok(0) => break,
            Ok(n) => {
                out.bytes += n as u64;
                if let Some(w) = raw.as_mut() {
                    if let Err(e) = w.write_all(&buf[..n]) {
                        out.error
                            .get_or_insert(format!("writing the raw trace: {e}"));
                        raw = None;
                    }
                }
                partial.extend_from_slice(&buf[..n]);
                if let Some(last_nl) = partial.iter().rposition(|&b| b == b'\n') {
                    let rest = partial.split_off(last_nl + 1);
                    out.take_lines(&partial);
                    partial = rest;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Empty. After a stop request the pipe is drained (tracing is off by then).
                if stop.load(Ordering::Acquire) {
                    break;
                }
                if let Some(t) = tick.as_mut() {
                    t();
                }
                std::thread::sleep(POLL);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.error.get_or_insert(format!("reading trace_pipe: {e}"));
                break;
            }
        }
    }
    out.take_lines(&partial);
    if let Some(mut w) = raw {
        if let Err(e) = w.flush() {
            out.error
                .get_or_insert(format!("writing the raw trace: {e}"));
        }
    }
    out
}

impl Reader {
    /// Starts draining `pipe` (opened O_NONBLOCK) into `raw` (the text file) and records,
    /// calling `tick` whenever the pipe is empty.
    pub fn spawn(pipe: InstanceFile, raw: Option<File>, tick: Option<Tick>) -> io::Result<Reader> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("pinlab-trace".into())
            .spawn(move || read_loop(pipe, raw, s, tick))?;
        Ok(Reader { stop, handle })
    }

    /// Drains what is left and returns everything read (turn tracing off first).
    pub fn stop(self) -> ReadResult {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_else(|_| ReadResult {
            error: Some("the trace reader thread panicked".into()),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn a_fifo_of_trace_text_is_parsed_and_copied() {
        // A named pipe stands in for trace_pipe: non-blocking, EAGAIN when empty.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("trace_pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path in our temporary directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let pipe = InstanceFile::open(
            dir.path(),
            "trace_pipe",
            OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK),
        )
        .unwrap();
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        let raw_path = dir.path().join("raw.txt");
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let t = ticks.clone();
        let tick: Tick = Box::new(move || {
            t.fetch_add(1, Ordering::Relaxed);
        });
        let reader =
            Reader::spawn(pipe, Some(File::create(&raw_path).unwrap()), Some(tick)).unwrap();
        let text = "  a-1 (1) [000] d.... 1.000001: page_fault_user: address=0x1 ip=0x2 error_code=0x6\nCPU:0 [LOST 3 EVENTS]\n  b-2 (2) [001] ..... 1.000002: tracing_mark_write: pinlab: x {}\n";
        // Split mid-line: the reader must join the halves.
        writer.write_all(&text.as_bytes()[..30]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        writer.write_all(&text.as_bytes()[30..]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let r = reader.stop();
        drop(writer);
        assert_eq!(r.records.len(), 2, "{r:?}");
        assert_eq!(r.records[0].event, "page_fault_user");
        assert_eq!(r.records[1].tid, 2);
        assert_eq!(r.lost_in_text, 3);
        assert_eq!(r.bytes as usize, text.len());
        assert_eq!(std::fs::read_to_string(&raw_path).unwrap(), text);
        assert!(ticks.load(Ordering::Relaxed) > 0, "never ticked while idle");
    }
}
