//! Detached mounts: a filesystem instance made with the new mount API (`fsopen`, `fsconfig`,
//! `fsmount`) and attached nowhere (no `move_mount` follows).
//!
//! Such a mount is in no mount table and no path reaches it: only its fd (and files opened
//! through it) do, and the kernel frees it when the last of them closes, so it is process state,
//! not host state, and nothing has to undo it after a SIGKILL. tracing reaches tracefs through
//! one when the host has no read-write tracefs mount; the DMA staging area lives in a
//! `huge=within_size` tmpfs one. Needs CAP_SYS_ADMIN and Linux 5.2.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Errors of this module: the mount API call that failed, with what it was given.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fsopen({fstype:?}): {source}")]
    Fsopen {
        fstype: &'static CStr,
        #[source]
        source: io::Error,
    },
    #[error("fsconfig({fstype:?}, FSCONFIG_SET_STRING {key:?}={value:?}): {source}")]
    SetString {
        fstype: &'static CStr,
        key: &'static CStr,
        value: &'static CStr,
        #[source]
        source: io::Error,
    },
    #[error("fsconfig({fstype:?}, FSCONFIG_CMD_CREATE): {source}")]
    Create {
        fstype: &'static CStr,
        #[source]
        source: io::Error,
    },
    #[error("fsmount({fstype:?}): {source}")]
    Fsmount {
        fstype: &'static CStr,
        #[source]
        source: io::Error,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

// linux/mount.h; libc has the syscall numbers, not these.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
/// `MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC`.
pub const NOSUID_NODEV_NOEXEC: libc::c_uint = 0x2 | 0x4 | 0x8;

fn sys_result(rc: libc::c_long) -> io::Result<RawFd> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as RawFd)
    }
}

/// A new instance of `fstype` with string `options` (key, value), mounted with mount
/// attributes `attrs` and attached nowhere. The fd is the mount's root (`openat` under it).
pub fn detached(
    fstype: &'static CStr,
    options: &[(&'static CStr, &'static CStr)],
    attrs: libc::c_uint,
) -> Result<OwnedFd> {
    // SAFETY: fsopen takes a NUL-terminated fs name and flags; it returns a new fd or -1.
    let fs =
        sys_result(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })
            .map_err(|source| Error::Fsopen { fstype, source })?;
    // SAFETY: `fs` was just returned by fsopen and is owned by nobody else.
    let fs = unsafe { OwnedFd::from_raw_fd(fs) };
    for &(key, value) in options {
        // SAFETY: fsconfig(SET_STRING) with NUL-terminated key and value on an fsopen fd we own.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        sys_result(rc).map_err(|source| Error::SetString {
            fstype,
            key,
            value,
            source,
        })?;
    }
    // SAFETY: fsconfig(CMD_CREATE) takes no key or value (NULL, NULL, 0) on an fsopen fd we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    sys_result(rc).map_err(|source| Error::Create { fstype, source })?;
    // SAFETY: fsmount on the configured fs context fd we own, with mount attribute flags.
    let m = sys_result(unsafe {
        libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs)
    })
    .map_err(|source| Error::Fsmount { fstype, source })?;
    // SAFETY: `m` was just returned by fsmount and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(m) })
}
