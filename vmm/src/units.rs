//! Sizes ("64MiB") and durations ("5ms") as they are written in configs and on the command line.
//!
//! Hand-rolled on purpose: the grammar is two dozen lines and the error must name the offending
//! text so `config` can name the key. The rule for sizes is one: binary units spelled with the
//! `i` (B, KiB, MiB, GiB). "64MB" and "64M" are both refused, since either could mean 10^6 or
//! 2^20, and the message states the rule.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a size or duration did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("`{0}` has no number")]
    NoNumber(String),
    #[error("`{text}`: size unit `{unit}` refused: sizes are binary, written B, KiB, MiB or GiB (1MiB = 1048576 bytes); K/M/G and KB/MB/GB are ambiguous")]
    SizeUnit { text: String, unit: String },
    #[error("`{text}`: bad duration unit `{unit}` (use ns, us, ms, s or min)")]
    DurationUnit { text: String, unit: String },
    #[error("`{0}` is too large")]
    Overflow(String),
}

fn split_number(text: &str) -> Result<(u64, &str), Error> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(Error::NoNumber(text.to_string()));
    }
    let n = t[..digits]
        .parse::<u64>()
        .map_err(|_| Error::Overflow(text.to_string()))?;
    Ok((n, t[digits..].trim()))
}

/// A size in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        ByteSize(n << 10)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }
}

impl FromStr for ByteSize {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        let (n, unit) = split_number(text)?;
        let shift = match unit {
            "" | "B" => 0,
            "KiB" => 10,
            "MiB" => 20,
            "GiB" => 30,
            _ => {
                return Err(Error::SizeUnit {
                    text: text.to_string(),
                    unit: unit.to_string(),
                })
            }
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| Error::Overflow(text.to_string()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if b != 0 && b.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", b >> shift);
            }
        }
        write!(f, "{b}B")
    }
}

/// A duration, kept as nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Duration {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        let (n, unit) = split_number(text)?;
        let ns_per: u64 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "min" => 60_000_000_000,
            _ => {
                return Err(Error::DurationUnit {
                    text: text.to_string(),
                    unit: unit.to_string(),
                })
            }
        };
        n.checked_mul(ns_per)
            .map(|ns| Duration(std::time::Duration::from_nanos(ns)))
            .ok_or_else(|| Error::Overflow(text.to_string()))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        for (per, unit) in [
            (60_000_000_000u128, "min"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
        ] {
            if ns != 0 && ns.is_multiple_of(per) {
                return write!(f, "{}{unit}", ns / per);
            }
        }
        write!(f, "{ns}ns")
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(ByteSize);
serde_via_str!(Duration);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let rows: &[(&str, Result<u64, ()>)] = &[
            ("64MiB", Ok(64 << 20)),
            ("2M", Err(())),
            ("2MiB", Ok(2 << 20)),
            ("4K", Err(())),
            ("1G", Err(())),
            ("4 KiB", Ok(4096)),
            ("1GiB", Ok(1 << 30)),
            ("512", Ok(512)),
            ("0", Ok(0)),
            ("64MB", Err(())),
            ("MiB", Err(())),
            ("", Err(())),
            ("99999999999999999999GiB", Err(())),
            ("17179869184GiB", Err(())),
        ];
        for (text, want) in rows {
            let got = text.parse::<ByteSize>().map(|b| b.0).map_err(|_| ());
            assert_eq!(got, *want, "{text}");
        }
    }

    #[test]
    fn size_unit_error_names_the_unit() {
        let e = "64MB".parse::<ByteSize>().unwrap_err();
        assert_eq!(
            e,
            Error::SizeUnit {
                text: "64MB".into(),
                unit: "MB".into()
            }
        );
    }

    #[test]
    fn durations() {
        let rows: &[(&str, Result<u128, ()>)] = &[
            ("5ms", Ok(5_000_000)),
            ("10s", Ok(10_000_000_000)),
            ("250us", Ok(250_000)),
            ("1min", Ok(60_000_000_000)),
            ("7", Err(())),
            ("5 parsecs", Err(())),
        ];
        for (text, want) in rows {
            let got = text
                .parse::<Duration>()
                .map(|d| d.0.as_nanos())
                .map_err(|_| ());
            assert_eq!(got, *want, "{text}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["64MiB", "4KiB", "3B", "5ms", "10s", "1min", "7ns"] {
            let shown = match text.parse::<ByteSize>() {
                Ok(b) => b.to_string(),
                Err(_) => text.parse::<Duration>().unwrap().to_string(),
            };
            assert_eq!(shown, text);
        }
    }
}
