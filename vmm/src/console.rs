//! The guest's console as the VMM keeps it: bounded, whatever the guest sends.
//!
//! The guest is untrusted: a guest that prints in a loop must not grow the VMM. `Console` keeps
//! the first lines up to `MAX_LINES` and `MAX_BYTES`; from the first line that does not fit, it
//! only counts (`Dropped`), and the count goes into the run's outcome. Records that could not be
//! read (outside guest RAM) are counted too. Control characters are stored escaped (`\u{1b}`),
//! so a guest cannot drive the terminal that shows its lines (found by the fuzzing guest, whose
//! random console records printed escape sequences). This module only stores; the vCPU loop
//! decodes the records (`vcpu::handle_exit`) and decides what is a line.

use serde::Serialize;

/// Lines kept at most.
pub const MAX_LINES: usize = 1_000;
/// Bytes of text kept at most (a line is at most `abi::CONSOLE_MAX` bytes).
pub const MAX_BYTES: usize = 64 << 10;

/// What the console did not keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// Lines that arrived after the console was full.
    pub lines: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Console records the VMM could not read (their GPA was outside guest RAM).
    pub bad_records: u64,
}

impl Dropped {
    /// Whether anything was dropped or refused.
    pub fn any(&self) -> bool {
        *self != Dropped::default()
    }
}

/// `line` with every control character but tab escaped (`\u{1b}`): safe to print.
fn printable(line: String) -> String {
    if !line.chars().any(|c| c.is_control() && c != '\t') {
        return line;
    }
    line.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The kept lines and the counts of the rest.
#[derive(Clone, Debug, Default)]
pub struct Console {
    lines: Vec<String>,
    bytes: usize,
    full: bool,
    dropped: Dropped,
}

impl Console {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `line` if it fits both bounds and nothing was dropped before it (the kept lines are
    /// always a prefix of what the guest printed); otherwise counts it. Returns whether it was
    /// kept.
    pub fn push(&mut self, line: String) -> bool {
        let line = printable(line);
        let fits = !self.full
            && self.lines.len() < MAX_LINES
            && self.bytes.saturating_add(line.len()) <= MAX_BYTES;
        if fits {
            self.bytes += line.len();
            self.lines.push(line);
        } else {
            self.full = true;
            self.dropped.lines = self.dropped.lines.saturating_add(1);
            self.dropped.bytes = self.dropped.bytes.saturating_add(line.len() as u64);
        }
        fits
    }

    /// Counts a record that could not be read.
    pub fn bad_record(&mut self) {
        self.dropped.bad_records = self.dropped.bad_records.saturating_add(1);
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Whether a line has been dropped (everything after it is only counted).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// The kept lines and the counts, for the outcome.
    pub fn into_parts(self) -> (Vec<String>, Dropped) {
        (self.lines, self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bug: a guest line that clears the screen or moves the cursor of whoever reads the
    /// report (ESC, CR, C1 controls printed raw).
    #[test]
    fn control_characters_are_escaped() {
        let mut c = Console::new();
        assert!(c.push("a\u{1b}[2J\rb\tc\u{9b}".to_string()));
        assert!(c.push("plain line".to_string()));
        assert_eq!(c.lines(), ["a\\u{1b}[2J\\u{d}b\tc\\u{9b}", "plain line"]);
    }

    /// A flood: the lines bound holds, the rest is counted line by line and byte by byte.
    #[test]
    fn a_flood_is_bounded_by_lines_and_counted() {
        let mut c = Console::new();
        for i in 0..MAX_LINES + 10 {
            c.push(format!("{i:04}"));
        }
        assert_eq!(c.lines().len(), MAX_LINES);
        assert_eq!(c.lines()[MAX_LINES - 1], format!("{:04}", MAX_LINES - 1));
        assert_eq!(
            c.dropped(),
            Dropped {
                lines: 10,
                bytes: 40,
                bad_records: 0
            }
        );
    }

    /// Long lines: the bytes bound holds before the lines bound.
    #[test]
    fn long_lines_are_bounded_by_bytes() {
        let mut c = Console::new();
        let line = "x".repeat(240);
        let fit = MAX_BYTES / 240;
        for _ in 0..fit + 3 {
            c.push(line.clone());
        }
        assert_eq!(c.lines().len(), fit);
        assert!(c.lines().iter().map(String::len).sum::<usize>() <= MAX_BYTES);
        assert_eq!(c.dropped().lines, 3);
        assert_eq!(c.dropped().bytes, 3 * 240);
    }

    /// Once one line is dropped, a short one after it is not kept: the kept lines stay a prefix
    /// of the output (a bug would show a later line as if it followed the kept ones).
    #[test]
    fn nothing_is_kept_after_the_first_drop() {
        let mut c = Console::new();
        assert!(c.push("x".repeat(MAX_BYTES - 1)));
        assert!(!c.push("yy".into()));
        assert!(!c.push("z".into()));
        assert_eq!(c.lines().len(), 1);
        assert!(c.is_full());
        assert_eq!(c.dropped().lines, 2);
    }

    #[test]
    fn bad_records_are_counted() {
        let mut c = Console::new();
        c.bad_record();
        c.bad_record();
        assert!(c.lines().is_empty());
        assert_eq!(c.dropped().bad_records, 2);
        assert!(c.dropped().any());
    }
}
