//! Details of uffd-wp: the protection it set and how its fault handler ended.

use std::fmt;

use serde::Serialize;

use crate::addr::Hva;

/// uffd-wp: userfaultfd write-protection of the region, a handler unprotecting on fault.
#[derive(Clone, Debug, Serialize)]
pub struct UffdWp {
    pub region: Hva,
    pub len: u64,
    /// Present region pages whose PTE carries the uffd-wp bit right after
    /// UFFDIO_WRITEPROTECT (PAGEMAP_SCAN without `PAGE_IS_WRITTEN`).
    pub protected_pages: u64,
}

impl fmt::Display for UffdWp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "userfaultfd write-protected the region ({:#x} bytes at {}): {} pages uffd-wp in pagemap; a handler unprotects on fault",
            self.len, self.region, self.protected_pages
        )
    }
}

/// How the uffd fault handler ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "end")]
pub enum HandlerEnd {
    /// Stopped at the end of the run.
    Stopped,
    /// UFFDIO_WRITEPROTECT (unprotect) of a faulting page failed with `errno`.
    UnprotectFailed { page: Hva, errno: i32 },
}
