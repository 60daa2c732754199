//! Target `config`: `config::parse(text, "fuzz.toml")` on arbitrary UTF-8 and on TOML built from
//! the scenario's own keys and values (so most inputs get past the parser into validation).
//!
//! The rules: parsing answers and never panics; an error is one line that names the file; an
//! accepted scenario is valid (validation and layout pass, it has a name) and survives a round
//! trip: serialized to TOML and parsed again, it serializes to the same text.

use arbitrary::{Arbitrary, Unstructured};

use super::run;
use crate::config::{self, Error};

const FILE: &str = "fuzz.toml";

/// (table, keys) of a scenario, as `scenario.rs` defines them; `""` is the top level.
const KEYS: &[(&str, &[&str])] = &[
    ("", &["name", "about", "live"]),
    ("vm", &["memory", "thp", "dontfork", "watchdog", "prefault"]),
    ("device", &["pin", "vfio"]),
    (
        "workload",
        &[
            "mode",
            "rounds",
            "region",
            "region_offset",
            "directions",
            "seed",
            "ops",
        ],
    ),
    ("perturb", &["actions", "after_round", "storm", "interval"]),
    ("host", &["swap"]),
    ("expect", &["live"]),
    ("expect.model", &["4.5", "5.8", "6.1", "modern", "x"]),
    ("model", &["steps", "threads", "x"]),
];

/// Values the keys take, valid and not.
const VALUES: &[&str] = &[
    "true",
    "false",
    "0",
    "1",
    "2",
    "3",
    "100",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "-1",
    "1.5",
    "nan",
    "\"64MiB\"",
    "\"8MiB\"",
    "\"2MiB\"",
    "\"4KiB\"",
    "\"4097\"",
    "\"1GiB\"",
    "\"4GiB\"",
    "\"66MiB\"",
    "\"64MB\"",
    "\"64M\"",
    "\"0\"",
    "\"10s\"",
    "\"5ms\"",
    "\"0s\"",
    "\"1min\"",
    "\"10 parsecs\"",
    "\"dma\"",
    "\"fuzz\"",
    "\"hostile\"",
    "\"boot\"",
    "\"io-uring\"",
    "\"vmsplice\"",
    "\"mapping\"",
    "\"vfio\"",
    "\"0000:01:00.0\"",
    "\"/dev/vfio/12\"",
    "\"both\"",
    "\"to-guest\"",
    "\"from-guest\"",
    "\"coherent\"",
    "\"diverged\"",
    "\"invariant-broken:x\"",
    "[\"dontneed\"]",
    "[\"fork-parent-write\", \"mremap\"]",
    "[\"ksm\"]",
    "[]",
    "[\"fork\"]",
    "\"\"",
    "\"\\u00e9\"",
    "{}",
    "{ a = 1 }",
];

fn structured(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let mut s = String::new();
    for _ in 0..u.int_in_range(0..=12)? {
        let (table, keys) = *u.choose(KEYS)?;
        match u.int_in_range(0..=9u8)? {
            0 => s.push_str(&format!("[{}]\n", <&str>::arbitrary(u)?)),
            1 => s.push_str(<&str>::arbitrary(u)?),
            _ if !table.is_empty() && u.ratio(1, 2)? => s.push_str(&format!("[{table}]\n")),
            _ => {}
        }
        for _ in 0..u.int_in_range(0..=4)? {
            let key = *u.choose(keys)?;
            let key = if key.contains('.') {
                format!("\"{key}\"")
            } else {
                key.to_string()
            };
            let value = if u.ratio(1, 10)? {
                format!("{:?}", <&str>::arbitrary(u)?)
            } else {
                u.choose(VALUES)?.to_string()
            };
            s.push_str(&format!("{key} = {value}\n"));
        }
    }
    Ok(s)
}

/// Parses arbitrary or scenario-shaped TOML and checks what comes back.
pub fn config(data: &[u8]) {
    run(data, |u| {
        let text = if u.ratio(1, 4)? {
            <&str>::arbitrary(u)?.to_string()
        } else {
            structured(u)?
        };
        check(&text);
        Ok(())
    });
}

fn check(text: &str) {
    let s = match config::parse(text, FILE) {
        Ok(s) => s,
        Err(e) => {
            let line = e.to_string();
            assert!(line.starts_with("fuzz.toml: "), "{line}");
            assert!(!line.contains('\n'), "one line: {line:?}");
            assert!(!matches!(e, Error::Many(_)), "one file, one error");
            return;
        }
    };
    s.validate()
        .unwrap_or_else(|e| panic!("accepted but invalid: {e}\n{text}"));
    s.layout()
        .unwrap_or_else(|e| panic!("accepted but no layout: {e}\n{text}"));
    assert!(!s.name.is_empty(), "a scenario has a name");
    let again = toml::to_string(&s).unwrap_or_else(|e| panic!("serializing: {e}\n{text}"));
    let back = config::parse(&again, FILE)
        .unwrap_or_else(|e| panic!("the round trip refused: {e}\n{again}\nfrom\n{text}"));
    let twice = toml::to_string(&back).expect("serializing again");
    assert_eq!(
        twice, again,
        "the round trip changed the scenario\nfrom\n{text}"
    );
}
