//! Address newtypes, one per address space pinlab deals with.
//!
//! `Gpa` (guest physical), `Iova` (device view through the emulated IOMMU), `Hva` (host virtual, in
//! the VMM process) and `Pfn` (host page frame number, from /proc/self/pagemap). They are never
//! mixed implicitly; arithmetic that takes guest input is checked and returns `None` on overflow.

use std::fmt;

/// Size of a base page on x86_64.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a PMD-mapped transparent huge page on x86_64.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

macro_rules! address_newtype {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            pub const fn raw(self) -> u64 {
                self.0
            }
            /// `self + off`, or `None` on overflow.
            pub fn checked_add(self, off: u64) -> Option<Self> {
                self.0.checked_add(off).map(Self)
            }
            /// `self - other` as a byte distance, or `None` if `other > self`.
            pub fn checked_offset_from(self, other: Self) -> Option<u64> {
                self.0.checked_sub(other.0)
            }
            /// Whether the address is a multiple of `align` (a power of two).
            pub fn is_aligned(self, align: u64) -> bool {
                debug_assert!(align.is_power_of_two());
                self.0 & (align - 1) == 0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:#x}"), self.0)
            }
        }
    };
}

address_newtype!(
    /// A guest physical address.
    Gpa,
    "gpa:"
);
address_newtype!(
    /// An I/O virtual address: what the device sees through the emulated IOMMU.
    Iova,
    "iova:"
);
address_newtype!(
    /// A host virtual address in the VMM process.
    Hva,
    "hva:"
);
address_newtype!(
    /// A host page frame number.
    Pfn,
    "pfn:"
);

impl Hva {
    /// The address as a pointer. Dereferencing it is the caller's business.
    pub fn as_ptr(self) -> *mut u8 {
        self.0 as usize as *mut u8
    }
    /// The host address of a pointer.
    pub fn from_ptr<T>(p: *const T) -> Self {
        Hva(p as usize as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_add_overflows_to_none() {
        assert_eq!(Gpa(u64::MAX).checked_add(1), None);
        assert_eq!(Gpa(1).checked_add(2), Some(Gpa(3)));
    }

    #[test]
    fn offset_from_is_checked() {
        assert_eq!(Iova(10).checked_offset_from(Iova(4)), Some(6));
        assert_eq!(Iova(4).checked_offset_from(Iova(10)), None);
    }

    #[test]
    fn alignment() {
        assert!(Gpa(HUGE_PAGE_SIZE * 3).is_aligned(HUGE_PAGE_SIZE));
        assert!(!Gpa(HUGE_PAGE_SIZE + PAGE_SIZE).is_aligned(HUGE_PAGE_SIZE));
    }
}
