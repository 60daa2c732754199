//! Loading scenarios from TOML: files, the embedded default, and errors that name file and key.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere, typed units); validation of ranges and
//! combinations is `Scenario::validate`, run right after parsing. Nothing here touches the host.

use std::path::{Path, PathBuf};

use crate::scenario::Scenario;

/// The default scenario, embedded so `pinlab run` works with no arguments.
pub const DEFAULT_TOML: &str = include_str!("../../configs/default.toml");
/// The name of the embedded default in messages.
pub const DEFAULT_NAME: &str = "<embedded configs/default.toml>";

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
}

/// Parses and validates a scenario from TOML text; `file` names it in errors, and its stem is the
/// scenario's name when the text gives none.
pub fn parse(text: &str, file: &str) -> Result<Scenario, Error> {
    let de = toml::Deserializer::new(text);
    let mut scenario: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        // toml's own message carries a multi-line snippet; keep the first line, one-line errors.
        let message = e.inner().message().lines().next().unwrap_or("").to_string();
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
            let file = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|source| Error::Read {
                file: file.clone(),
                source,
            })?;
            parse(&text, &file)
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
    fn missing_file_is_named() {
        let err = load(Some(Path::new("/nonexistent/pinlab.toml"))).unwrap_err();
        assert!(matches!(err, Error::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/pinlab.toml"));
    }
}
