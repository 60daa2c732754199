//! Loading scenarios from TOML: files, the scenarios embedded at build time, and errors that
//! name file and key.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere, typed units); validation of ranges and
//! combinations is `Scenario::validate`, run right after parsing. Every `configs/*.toml` is
//! embedded in the binary (`EMBEDDED`), so `run NAME`, `matrix` and `replay` work outside the
//! checkout; a path still overrides. A file is read only if it is a regular file of at most
//! `MAX_FILE_BYTES` (a FIFO, a device or `/dev/zero` is refused before anything is read).
//! Nothing here touches the host.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::scenario::Scenario;

include!(concat!(env!("OUT_DIR"), "/configs.rs"));

/// The default scenario, embedded so `pinlab run` works with no arguments.
pub const DEFAULT_TOML: &str = include_str!("../../configs/default.toml");
/// The name of the embedded default in messages.
pub const DEFAULT_NAME: &str = "<embedded configs/default.toml>";
/// The largest scenario file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: key `{key}`: {message}")]
    Key {
        file: String,
        key: String,
        message: String,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {source}")]
    Invalid {
        file: String,
        source: crate::scenario::Invalid,
    },
    #[error("{dir}: cannot list scenarios: {source}")]
    ListDir { dir: String, source: std::io::Error },
    #[error("{file}: not a regular file ({kind}); a scenario is a TOML file")]
    NotAFile { file: String, kind: &'static str },
    #[error("{file}: {size} bytes is larger than a scenario may be ({MAX_FILE_BYTES} bytes)")]
    TooLarge { file: String, size: u64 },
    #[error("{dir}: no scenario (*.toml) in it")]
    NoScenarios { dir: String },
    #[error(
        "no scenario file or embedded scenario named `{0}` (`pinlab matrix --list` names them)"
    )]
    UnknownName(String),
    #[error("{} scenario files are broken:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Many(Vec<Error>),
}

/// Where a scenario came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "name")]
pub enum Origin {
    /// A file given on the command line or found in a directory.
    File(PathBuf),
    /// Embedded at build time from `configs/NAME`.
    Embedded(&'static str),
    /// Built in memory (by `pinlab sweep`), named for its cell.
    Generated(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Embedded(n) => write!(f, "<embedded configs/{n}>"),
            Origin::Generated(n) => write!(f, "<generated {n}>"),
        }
    }
}

/// A loaded scenario and where it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub origin: Origin,
    pub scenario: Scenario,
}

/// Reads a scenario file: a regular file of at most `MAX_FILE_BYTES`, refused before reading
/// otherwise (a FIFO would block, `/dev/zero` would never end).
fn read_file(p: &Path) -> Result<String, Error> {
    let file = p.display().to_string();
    let read_err = |source| Error::Read {
        file: file.clone(),
        source,
    };
    // O_NONBLOCK: opening a FIFO with no writer must not wait; fstat then refuses it.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(read_err)?;
    let meta = f.metadata().map_err(read_err)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(Error::NotAFile { file, kind });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(Error::TooLarge {
            file,
            size: meta.len(),
        });
    }
    let mut text = String::new();
    // Bounded even if the file grows after fstat.
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::TooLarge {
            file,
            size: text.len() as u64,
        });
    }
    Ok(text)
}

/// The embedded scenario whose file stem or name is `name`.
pub fn embedded(name: &str) -> Option<(&'static str, &'static str)> {
    let stem = name.strip_suffix(".toml").unwrap_or(name);
    EMBEDDED
        .iter()
        .copied()
        .find(|(f, _)| f.strip_suffix(".toml") == Some(stem))
}

/// Loads `arg`: a path when one exists there (or it looks like one), else an embedded scenario
/// of that name.
pub fn load_arg(arg: &Path) -> Result<Loaded, Error> {
    let s = arg.to_string_lossy();
    let looks_like_path = s.contains('/') || arg.exists();
    if !looks_like_path {
        if let Some((file, text)) = embedded(&s) {
            return Ok(Loaded {
                origin: Origin::Embedded(file),
                scenario: parse(text, &Origin::Embedded(file).to_string())?,
            });
        }
        if !s.ends_with(".toml") {
            return Err(Error::UnknownName(s.into_owned()));
        }
    }
    Ok(Loaded {
        origin: Origin::File(arg.to_path_buf()),
        scenario: load(Some(arg))?,
    })
}

/// Every scenario of `dir`, or every embedded one when `dir` is `None`. A directory with no
/// scenario is an error; broken files are all listed, and then none is returned.
pub fn load_set(dir: Option<&Path>) -> Result<Vec<Loaded>, Error> {
    let mut ok = Vec::new();
    let mut broken = Vec::new();
    match dir {
        None => {
            for &(file, text) in EMBEDDED {
                match parse(text, &Origin::Embedded(file).to_string()) {
                    Ok(scenario) => ok.push(Loaded {
                        origin: Origin::Embedded(file),
                        scenario,
                    }),
                    Err(e) => broken.push(e),
                }
            }
        }
        Some(d) => {
            let files = scenario_files(d)?;
            if files.is_empty() {
                return Err(Error::NoScenarios {
                    dir: d.display().to_string(),
                });
            }
            for f in files {
                match load(Some(&f)) {
                    Ok(scenario) => ok.push(Loaded {
                        origin: Origin::File(f),
                        scenario,
                    }),
                    Err(e) => broken.push(e),
                }
            }
        }
    }
    match broken.len() {
        0 => Ok(ok),
        1 => Err(broken.remove(0)),
        _ => Err(Error::Many(broken)),
    }
}

/// Parses and validates a scenario from TOML text; `file` names it in errors, and its stem is the
/// scenario's name when the text gives none.
pub fn parse(text: &str, file: &str) -> Result<Scenario, Error> {
    let de = toml::Deserializer::new(text);
    let mut scenario: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        // toml's own message: keep its reason and say where (line, column), on one line.
        let reason: Vec<&str> = e
            .inner()
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let at = e.inner().span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        });
        let message = format!("{}{}", at.unwrap_or_default(), reason.join("; "));
        if key == "." || key.is_empty() {
            Error::Syntax {
                file: file.to_string(),
                message,
            }
        } else {
            Error::Key {
                file: file.to_string(),
                key,
                message,
            }
        }
    })?;
    if scenario.name.is_empty() {
        scenario.name = Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "default".to_string());
    }
    scenario.validate().map_err(|source| Error::Invalid {
        file: file.to_string(),
        source,
    })?;
    Ok(scenario)
}

/// Loads a scenario file, or the embedded default when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<Scenario, Error> {
    match path {
        None => parse(DEFAULT_TOML, "default.toml").map_err(|e| match e {
            // The embedded default is part of the binary: say so rather than blame a file.
            Error::Invalid { source, .. } => Error::Invalid {
                file: DEFAULT_NAME.to_string(),
                source,
            },
            other => other,
        }),
        Some(p) => {
            let text = read_file(p)?;
            parse(&text, &p.display().to_string())
        }
    }
}

/// The scenario files in a directory, sorted by name.
pub fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let list_err = |source| Error::ListDir {
        dir: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let path = entry.map_err(list_err)?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_loads() {
        let s = load(None).unwrap();
        assert_eq!(s.name, "default");
        assert!(s.vm.thp);
    }

    /// Each row: the TOML, the key the one-line error must name.
    #[test]
    fn errors_name_the_key() {
        let rows = [
            ("[vm]\nmemroy = \"64MiB\"\n", "vm"),
            ("[vm]\nmemory = \"64MB\"\n", "vm.memory"),
            ("[vm]\nwatchdog = \"10 parsecs\"\n", "vm.watchdog"),
            ("[device]\npin = \"dma-buf\"\n", "device.pin"),
            ("[perturb]\nactions = [\"fork\"]\n", "perturb.actions[0]"),
            ("colour = 3\n", "colour"),
        ];
        for (text, key) in rows {
            let err = parse(text, "x.toml").unwrap_err();
            let line = err.to_string();
            assert!(!line.contains('\n'), "one line: {line}");
            assert!(line.starts_with("x.toml: "), "names the file: {line}");
            match err {
                Error::Key { key: k, .. } => assert!(k.starts_with(key), "{k} vs {key}: {line}"),
                Error::Syntax { message, .. } => {
                    assert_eq!(key, ".", "{line}");
                    assert!(message.contains("colour"), "{line}");
                }
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn validation_errors_name_file_and_key() {
        let err = parse("[vm]\nmemory = \"4MiB\"\n", "small.toml").unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }));
        assert!(err.to_string().starts_with("small.toml: key `vm.memory`"));
    }

    #[test]
    fn syntax_errors_keep_line_column_and_reason() {
        let err = parse("[vm]\nthp = true\n[vm]\n", "dup.toml").unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(line.contains("line 3, column 1"), "{line}");
        assert!(
            line.contains("duplicate") || line.contains("invalid table header"),
            "{line}"
        );
    }

    #[test]
    fn non_files_and_huge_files_are_refused_before_reading() {
        for (path, kind) in [("/dev/zero", "a character device"), ("/", "a directory")] {
            match load(Some(Path::new(path))) {
                Err(Error::NotAFile { kind: k, .. }) => assert_eq!(k, kind, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.toml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path in our own temporary directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            load(Some(&fifo)),
            Err(Error::NotAFile { kind: "a FIFO", .. })
        ));
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(load(Some(&big)), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn every_embedded_scenario_loads_and_names_resolve() {
        let all = load_set(None).unwrap();
        assert_eq!(all.len(), EMBEDDED.len());
        assert!(all.iter().any(|l| l.scenario.name == "default"));
        let l = load_arg(Path::new("live-iouring-dontneed")).unwrap();
        assert_eq!(l.origin, Origin::Embedded("live-iouring-dontneed.toml"));
        assert!(matches!(
            load_arg(Path::new("no-such-scenario")),
            Err(Error::UnknownName(_))
        ));
    }

    #[test]
    fn a_set_lists_every_broken_file_and_refuses_an_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_set(Some(dir.path())),
            Err(Error::NoScenarios { .. })
        ));
        std::fs::write(dir.path().join("a.toml"), "[vm]\nmemroy = 1\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "[device]\npin = \"x\"\n").unwrap();
        std::fs::write(dir.path().join("c.toml"), "").unwrap();
        match load_set(Some(dir.path())) {
            Err(Error::Many(v)) => {
                assert_eq!(v.len(), 2);
                let text = Error::Many(v).to_string();
                assert!(text.contains("a.toml") && text.contains("b.toml"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_file_is_named() {
        let err = load(Some(Path::new("/nonexistent/pinlab.toml"))).unwrap_err();
        assert!(matches!(err, Error::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/pinlab.toml"));
    }
}
