//! Reaching tracefs, and removing an instance: the primitives under the tracing owners.
//!
//! It owns finding tracefs (a mount the host already has, read-write; else a *detached* mount
//! made with `fsopen`/`fsmount` that no mount table ever shows and that dies with the fd), reading
//! and writing its files, and the one way an instance is removed ([`remove_instance`]), used by the
//! instance's owner, by the signal path and by journal recovery alike. It knows nothing of
//! journals or registries (those call down into this file) and creates nothing itself.
//!
//! Why a detached mount: `mount -t tracefs nodev DIR` is host state that outlives a SIGKILL; a
//! detached mount is reachable only through our fd (`/proc/self/fd/N/...`) and disappears when the
//! process does, so the only host state tracing leaves is the instance directory, which is
//! journaled. tracefs has one superblock, so instances made through either mount are the same.
//!
//! Open files keep an instance busy (`rmdir` fails with EBUSY while any of its files is open), and
//! the signal thread cannot close another thread's file safely (the number may be reused). So every
//! long-lived file inside an instance is an [`InstanceFile`], listed here; [`remove_instance`]
//! first points each listed descriptor of that instance at `/dev/null` with `dup2` (atomic: the
//! number never dangles), then retries `rmdir` while in-flight reads finish.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Errors of this module; each names the call that failed and what it was given.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tracefs is not in /proc/filesystems (kernel without CONFIG_TRACING)")]
    NotInKernel,
    #[error("tracefs is mounted read-only at {0} (and nowhere read-write)")]
    ReadOnly(PathBuf),
    #[error("a detached tracefs mount: {0}")]
    Detached(#[from] crate::detached_mount::Error),
    #[error("tracefs at {0} has no instances directory")]
    NoInstances(PathBuf),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("mkdir {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("rmdir {path}: {source}")]
    Rmdir { path: PathBuf, source: io::Error },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// How long [`remove_instance`] retries an EBUSY `rmdir` (a reader's read in flight).
const RMDIR_PATIENCE: Duration = Duration::from_secs(3);

/// Where the tracefs we use comes from.
#[derive(Debug)]
pub enum Origin {
    /// The host's own mount, read-write.
    Host(PathBuf),
    /// Our detached mount, reachable only through this fd.
    Detached(OwnedFd),
}

/// A reachable tracefs.
#[derive(Debug)]
pub struct Tracefs {
    root: PathBuf,
    origin: Origin,
}

/// The tracefs mounts in a mounts table (`/proc/self/mounts` format): `(mount point, read-only)`.
pub fn tracefs_mounts(mounts: &str) -> Vec<(PathBuf, bool)> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[2] == "tracefs").then(|| {
                let ro = f[3].split(',').any(|o| o == "ro");
                (PathBuf::from(unescape_mount_path(f[1])), ro)
            })
        })
        .collect()
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Tracefs {
    /// The host's read-write tracefs mount if there is one, else a detached mount of our own.
    pub fn open() -> Result<Tracefs> {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let found = tracefs_mounts(&mounts);
        let tracefs = if let Some((p, _)) = found.iter().find(|(_, ro)| !ro) {
            Tracefs {
                root: p.clone(),
                origin: Origin::Host(p.clone()),
            }
        } else if let Some((p, _)) = found.first() {
            return Err(Error::ReadOnly(p.clone()));
        } else {
            let known = fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if !known
                .lines()
                .any(|l| l.split_whitespace().last() == Some("tracefs"))
            {
                return Err(Error::NotInKernel);
            }
            let fd = crate::detached_mount::detached(c"tracefs", &[], 0)?;
            Tracefs {
                root: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                origin: Origin::Detached(fd),
            }
        };
        if !tracefs.root.join("instances").is_dir() {
            return Err(Error::NoInstances(tracefs.root.clone()));
        }
        Ok(tracefs)
    }

    /// The root directory, as a path this process can use.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host's mount point, or `None` for our detached mount.
    pub fn host_mount(&self) -> Option<&Path> {
        match &self.origin {
            Origin::Host(p) => Some(p),
            Origin::Detached(_) => None,
        }
    }

    /// How the report names where tracefs came from.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::Host(p) => format!("the host's mount at {}", p.display()),
            Origin::Detached(_) => "a detached mount of pinlab's own (fsmount)".to_string(),
        }
    }

    /// `instances/<name>` under the root.
    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.root.join("instances").join(name)
    }

    /// Every event this kernel has, as `group:name` (from `available_events`).
    pub fn available_events(&self) -> Result<Vec<String>> {
        Ok(read(&self.root.join("available_events"))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The names under `instances/`.
    pub fn instances(&self) -> Result<Vec<String>> {
        let dir = self.root.join("instances");
        let rd = fs::read_dir(&dir).map_err(|source| Error::Read {
            path: dir.clone(),
            source,
        })?;
        Ok(rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }
}

/// Reads a tracefs file whole.
pub fn read(path: &Path) -> Result<String> {
    let mut s = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(s)
}

/// Writes `value` to a tracefs control file in one `write(2)` (O_TRUNC, as `echo >` does).
pub fn write(path: &Path, value: &str) -> Result<()> {
    write_with(path, value, false)
}

/// Appends `value` (as `echo >>` does: `set_event_pid` adds instead of replacing).
pub fn append(path: &Path, value: &str) -> Result<()> {
    write_with(path, value, true)
}

fn write_with(path: &Path, value: &str, append: bool) -> Result<()> {
    let werr = |source| Error::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(!append)
        .append(append)
        .open(path)
        .map_err(werr)?;
    f.write_all(value.as_bytes()).map_err(werr)
}

/// Creates `instances/<name>` (the caller has journaled it first).
pub fn make_instance(dir: &Path) -> Result<()> {
    fs::create_dir(dir).map_err(|source| Error::Mkdir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Long-lived files inside instances: (instance directory, fd). An entry is listed before its
/// file can be used and unlisted before it is closed, under this lock, so a listed fd is open.
static OPEN: Mutex<Vec<(PathBuf, RawFd)>> = Mutex::new(Vec::new());

fn open_list() -> std::sync::MutexGuard<'static, Vec<(PathBuf, RawFd)>> {
    OPEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// A file inside an instance held open for the run (the marker, the trace pipe). See the module
/// header for why it is listed.
#[derive(Debug)]
pub struct InstanceFile {
    file: Option<File>,
    instance: PathBuf,
}

impl InstanceFile {
    /// Opens `instance/<rel>` with `opts` (std adds O_CLOEXEC) and lists it.
    pub fn open(instance: &Path, rel: &str, opts: &OpenOptions) -> Result<InstanceFile> {
        let path = instance.join(rel);
        let mut list = open_list();
        let file = opts.open(&path).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        list.push((instance.to_path_buf(), file.as_raw_fd()));
        Ok(InstanceFile {
            file: Some(file),
            instance: instance.to_path_buf(),
        })
    }

    /// The open file (after a signal-path removal it reads EOF and swallows writes: /dev/null).
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("present until drop")
    }
}

impl Drop for InstanceFile {
    fn drop(&mut self) {
        let mut list = open_list();
        if let Some(f) = self.file.take() {
            let fd = f.as_raw_fd();
            list.retain(|(p, d)| !(p == &self.instance && *d == fd));
            drop(f);
        }
    }
}

/// Points every listed fd inside `instance` at /dev/null and unlists it; returns how many.
fn neutralize(instance: &Path) -> usize {
    let mut list = open_list();
    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null");
    let mut n = 0;
    list.retain(|(p, fd)| {
        if p != instance {
            return true;
        }
        if let Ok(null) = &devnull {
            // SAFETY: dup2 onto a descriptor that is open (listed entries are open, see OPEN)
            // and owned by an InstanceFile that will close it; the swap is atomic, so the
            // number never refers to anything but the old file or /dev/null.
            unsafe { libc::dup2(null.as_raw_fd(), *fd) };
            n += 1;
        }
        false
    });
    n
}

/// Removes the instance directory `dir` (`<tracefs>/instances/<name>`): stops its tracing,
/// neutralizes our open files in it, and retries `rmdir` while they drain. `Ok(false)` when it
/// was already gone.
pub fn remove_instance(dir: &Path) -> Result<bool> {
    if !dir.exists() {
        neutralize(dir);
        return Ok(false);
    }
    let _ = write(&dir.join("tracing_on"), "0");
    neutralize(dir);
    let start = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < RMDIR_PATIENCE => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(source) => {
                return Err(Error::Rmdir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// The instance name pinlab uses for process `pid`.
pub fn instance_name(pid: u32) -> String {
    format!("pinlab-{pid}")
}

/// The PID in a pinlab instance name, if it is one.
pub fn instance_pid(name: &str) -> Option<u32> {
    name.strip_prefix("pinlab-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_table_finds_tracefs_and_its_read_only_flag() {
        // (mounts table, expected) — a bug shows as a debugfs/sysfs line taken for tracefs or
        // an `ro` mount used for writing.
        let cases: [(&str, Vec<(PathBuf, bool)>); 4] = [
            ("sysfs /sys sysfs rw,nosuid 0 0\n", vec![]),
            (
                "tracefs /sys/kernel/tracing tracefs rw,nosuid,relatime 0 0\n",
                vec![("/sys/kernel/tracing".into(), false)],
            ),
            (
                "nodev /mnt/t\\040x tracefs ro,relatime 0 0\nnone /d debugfs rw 0 0\n",
                vec![("/mnt/t x".into(), true)],
            ),
            ("garbage\n\n", vec![]),
        ];
        for (table, want) in cases {
            assert_eq!(tracefs_mounts(table), want, "{table:?}");
        }
    }

    #[test]
    fn instance_names_round_trip_and_reject_others() {
        assert_eq!(instance_name(42), "pinlab-42");
        assert_eq!(instance_pid("pinlab-42"), Some(42));
        assert_eq!(instance_pid("pinlab-x"), None);
        assert_eq!(instance_pid("other-42"), None);
    }

    #[test]
    fn neutralize_repoints_listed_files_and_unlists_them() {
        let dir = tempfile::tempdir().unwrap();
        let inst = dir.path().join("inst");
        fs::create_dir(&inst).unwrap();
        fs::write(inst.join("f"), "data").unwrap();
        let f = InstanceFile::open(
            &inst,
            "f",
            OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK),
        )
        .unwrap();
        // SAFETY: F_GETFL on the descriptor `f` owns.
        let flags = unsafe { libc::fcntl(f.file().as_raw_fd(), libc::F_GETFL) };
        assert_ne!(
            flags & libc::O_NONBLOCK,
            0,
            "the caller's flags were dropped"
        );
        assert_eq!(neutralize(&inst), 1);
        // Now /dev/null: reads EOF instead of the file's data.
        let mut s = String::new();
        f.file().read_to_string(&mut s).unwrap();
        assert_eq!(s, "");
        assert_eq!(neutralize(&inst), 0, "listed twice");
        drop(f);
        // An ordinary directory (no tracefs) is removed like an instance.
        fs::remove_file(inst.join("f")).unwrap();
        assert!(remove_instance(&inst).unwrap());
        assert!(!remove_instance(&inst).unwrap());
    }
}
