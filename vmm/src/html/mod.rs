//! HTML reports: one self-contained page per `run`, `matrix`, `sweep` and `replay`
//! (`--report FILE.html`).
//!
//! A page is inline CSS and inline SVG only: no script, no font, no network (its
//! Content-Security-Policy forbids every fetch), so it opens offline in any browser and can be
//! attached to a bug report. Markup is built with `maud` (checked at compile time, escaped by
//! default); charts are drawn with `plotters`' SVG backend, and the hover layer of each chart
//! (one `<title>` per drawn thing) is an SVG of the same size laid over it. Colours are the
//! Okabe–Ito palette, and every colour has a second cue: a text label, a symbol, a position
//! or a stripe pattern, so a grey print and a colour-blind reader lose nothing.
//!
//! Pages are rendered from typed data: a run's [`view::RunView`] is built from the typed
//! `report::Outcome` (or, in the matrix, from the child's JSON through `Deserialize` structs of
//! the fields drawn), never from re-parsed text. This module reads no host state and runs
//! nothing live; the model pages call the model executor (a simulation).
//!
//! One concept per file: `page` (the document shell and its CSS), `palette`, `view` (what a run
//! page draws, typed), `timeline` and `memory` (the charts), `run`, `matrix`, `sweep`,
//! `replay` (the pages), `model` (the model's rows for a page).

pub mod chart;
pub mod matrix;
pub mod memory;
pub mod model;
pub mod page;
pub mod palette;
pub mod replay;
pub mod run;
pub mod sweep;
pub mod timeline;
pub mod view;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("report {path}: cannot open for writing: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("report {path}: writing: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("report {path}: the path names a directory")]
    IsDirectory { path: PathBuf },
    #[error(transparent)]
    Model(#[from] model::Error),
    #[error("chart {chart}: {reason}")]
    Chart { chart: &'static str, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A report file, opened (created or truncated) when the command starts, so an unwritable path
/// is a usage error before anything runs; the page is written into it at the end.
#[derive(Debug)]
pub struct ReportFile {
    path: PathBuf,
    file: std::fs::File,
}

impl ReportFile {
    /// Opens `path` for writing, creating it.
    pub fn create(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(ReportFile {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the page and closes the file.
    pub fn write(mut self, page: &maud::Markup) -> Result<u64> {
        let bytes = page.0.as_bytes();
        self.file
            .write_all(bytes)
            .and_then(|_| self.file.flush())
            .map_err(|source| Error::Write {
                path: self.path.clone(),
                source,
            })?;
        Ok(bytes.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwritable_path_fails_at_open_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        match ReportFile::create(dir.path()) {
            Err(Error::IsDirectory { path }) => assert_eq!(path, dir.path()),
            other => panic!("{other:?}"),
        }
        let missing = dir.path().join("no/such/dir/r.html");
        match ReportFile::create(&missing) {
            Err(Error::Open { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        let ok = dir.path().join("r.html");
        let f = ReportFile::create(&ok).unwrap();
        let n = f.write(&maud::html! { p { "x" } }).unwrap();
        assert_eq!(std::fs::read_to_string(&ok).unwrap(), "<p>x</p>");
        assert_eq!(n, 8);
    }
}
