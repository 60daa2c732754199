//! A kselftest package: a directory that the kernel's `run_kselftest.sh` runs as is.
//!
//! The layout is the one `tools/testing/selftests/kselftest/runner.sh` reads:
//! `kselftest-list.txt` names `collection:test` pairs; the runner sources `COLLECTION/settings`
//! (`timeout=SECONDS`, default 45), `cd`s into the collection and runs `./TEST` under
//! `timeout`, prefixing its output with `# `; exit 4 is KSFT_SKIP. Here the collection is
//! `pinlab`, the test `pinlab_matrix.sh`, which runs the copied binary's matrix over the copied
//! (embedded) configs and prints KTAP. This module writes files only; it runs nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::EMBEDDED;

/// The collection (directory) and the test script, as `kselftest-list.txt` names them.
pub const COLLECTION: &str = "pinlab";
pub const SCRIPT: &str = "pinlab_matrix.sh";

/// Time allowed per live scenario: the matrix's deadline plus its SIGTERM grace and launch.
const PER_SCENARIO_SECS: u64 = crate::matrix::DEADLINE.as_secs() + 15;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {file}: {source}")]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("copying the pinlab binary {from} to {to}: {source}")]
    CopyBinary {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing the embedded configs: {0}")]
    Config(#[from] crate::config::Error),
}

/// What a written package holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub root: PathBuf,
    /// Config files written to `pinlab/configs/`.
    pub configs: usize,
    /// Of them, the live ones (the matrix's test cases).
    pub live: usize,
    /// The `timeout=` of `pinlab/settings`, in seconds.
    pub timeout_secs: u64,
}

/// The runner script: the exit code of `pinlab matrix` is the test's (0 all met, 1 any unmet,
/// 4 = KSFT_SKIP when the host lacks what every scenario needs, 2 config error).
pub fn script() -> String {
    "#!/bin/sh\n\
         # SPDX-License-Identifier: GPL-2.0\n\
         # Written by `pinlab kselftest`: pinlab's live scenario matrix as one kselftest.\n\
         # Prints KTAP; exits 0 all met, 1 any unmet, 4 (KSFT_SKIP) nothing could run here.\n\
         cd \"$(dirname \"$0\")\" || exit 1\n\
         exec ./pinlab matrix ./configs --format ktap\n"
        .to_string()
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    let err = |source| Error::Write {
        file: path.to_path_buf(),
        source,
    };
    std::fs::write(path, text).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// Writes the package into `root` (created if missing; files of ours are replaced), copying
/// the pinlab binary `exe`.
pub fn write_package(root: &Path, exe: &Path) -> Result<Package, Error> {
    let coll = root.join(COLLECTION);
    let configs = coll.join("configs");
    std::fs::create_dir_all(&configs).map_err(|source| Error::CreateDir {
        dir: configs.clone(),
        source,
    })?;
    let mut live = 0u64;
    for &(file, text) in EMBEDDED {
        let s = crate::config::parse(text, file)?;
        if s.live {
            live += 1;
        }
        write(&configs.join(file), text, 0o644)?;
    }
    let timeout_secs = live.max(1) * PER_SCENARIO_SECS + 60;
    write(
        &root.join("kselftest-list.txt"),
        &format!("{COLLECTION}:{SCRIPT}\n"),
        0o644,
    )?;
    write(
        &coll.join("settings"),
        &format!(
            "# {live} live scenarios, each with a {PER_SCENARIO_SECS}s deadline\ntimeout={timeout_secs}\n"
        ),
        0o644,
    )?;
    write(&coll.join(SCRIPT), &script(), 0o755)?;
    let bin = coll.join("pinlab");
    // Replace, never write through: the target may be the running binary of an older package.
    let _ = std::fs::remove_file(&bin);
    std::fs::copy(exe, &bin).map_err(|source| Error::CopyBinary {
        from: exe.to_path_buf(),
        to: bin.clone(),
        source,
    })?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        Error::Write {
            file: bin.clone(),
            source,
        }
    })?;
    Ok(Package {
        root: root.to_path_buf(),
        configs: EMBEDDED.len(),
        live: live as usize,
        timeout_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_layout_runner_sh_reads() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("fake-exe");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let root = dir.path().join("pkg");
        let p = write_package(&root, &exe).unwrap();
        let list = std::fs::read_to_string(root.join("kselftest-list.txt")).unwrap();
        assert_eq!(list, "pinlab:pinlab_matrix.sh\n");
        let settings = std::fs::read_to_string(root.join("pinlab/settings")).unwrap();
        let timeout: u64 = settings
            .lines()
            .find_map(|l| l.strip_prefix("timeout="))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(timeout, p.timeout_secs);
        // Long enough for every live scenario to reach its deadline.
        assert!(timeout > p.live as u64 * crate::matrix::DEADLINE.as_secs());
        let mode = std::fs::metadata(root.join("pinlab/pinlab_matrix.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        let n = std::fs::read_dir(root.join("pinlab/configs"))
            .unwrap()
            .count();
        assert_eq!(n, EMBEDDED.len());
        assert!(p.live > 0 && p.live <= p.configs);
    }
}
