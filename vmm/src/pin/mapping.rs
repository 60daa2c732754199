//! The control group: a "pin" that holds nothing and copies through the VMM's own mapping of
//! guest RAM, so it always sees what the guest sees.
//!
//! Owns only the address and length of the range. It must not pin, reference or map anything:
//! whatever page the VMM mapping points at when a transfer runs is the page it uses.

use super::{validate, Pin, PinKind, Result, Staging, Transfer};
use crate::addr::Hva;

/// Copies through `hva..hva+len` of the VMM mapping.
#[derive(Debug)]
pub struct MappingPin {
    hva: Hva,
    len: u64,
}

impl MappingPin {
    /// A control-group "pin" over `hva..hva+len` (already checked by [`super::pin`]).
    ///
    /// # Safety
    ///
    /// `hva..hva+len` must stay mapped readable and writable for the lifetime of the returned
    /// value, and no Rust reference to it may be alive across `write_to_guest`.
    pub unsafe fn new(hva: Hva, len: u64) -> Self {
        MappingPin { hva, len }
    }
}

impl Pin for MappingPin {
    fn kind(&self) -> PinKind {
        PinKind::Mapping
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn write_to_guest(&mut self, staging: &Staging, ops: &[Transfer]) -> Result<()> {
        validate(ops, self.len, staging.len())?;
        let src = staging.as_slice();
        for t in ops {
            let s = &src[t.staging_offset as usize..(t.staging_offset + t.len) as usize];
            // SAFETY: validated: `pin_offset + len <= self.len`, and the range is mapped writable
            // by `new`'s contract; staging is a different mapping, so the two do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    s.as_ptr(),
                    self.hva.as_ptr().add(t.pin_offset as usize),
                    s.len(),
                )
            };
        }
        Ok(())
    }

    fn read_from_guest(&mut self, staging: &mut Staging, ops: &[Transfer]) -> Result<()> {
        validate(ops, self.len, staging.len())?;
        let dst = staging.as_mut_slice();
        for t in ops {
            let d = &mut dst[t.staging_offset as usize..(t.staging_offset + t.len) as usize];
            // SAFETY: validated: `pin_offset + len <= self.len`, and the range is mapped readable
            // by `new`'s contract; staging is a different mapping, so the two do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.hva.as_ptr().add(t.pin_offset as usize),
                    d.as_mut_ptr(),
                    d.len(),
                )
            };
        }
        Ok(())
    }
}
