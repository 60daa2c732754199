//! Console output: format into a buffer, one doorbell per message, never one per byte.

use core::fmt;

use pinlab_abi as abi;

use crate::rt::outl;

/// One line of console output; flushed with a single port write.
pub struct Line {
    msg: abi::ConsoleMsg,
}

impl Line {
    pub fn new() -> Self {
        Line {
            msg: abi::ConsoleMsg {
                len: 0,
                _pad: 0,
                bytes: [0; abi::CONSOLE_MAX],
            },
        }
    }

    pub fn flush(&mut self) {
        let gpa = &self.msg as *const abi::ConsoleMsg as u64;
        // SAFETY: the address of this line's record, alive for the exit; the VMM only reads it.
        unsafe { outl(abi::PORT_CONSOLE, gpa as u32) };
        self.msg.len = 0;
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            let len = self.msg.len as usize;
            if len == abi::CONSOLE_MAX {
                return Err(fmt::Error);
            }
            self.msg.bytes[len] = b;
            self.msg.len += 1;
        }
        Ok(())
    }
}

/// `println!` for the guest: one message per call.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        let mut line = $crate::console::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        line.flush();
    }};
}
