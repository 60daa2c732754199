//! The kernel eras the model replays: their names, the version range each covers, and the lookup
//! from a running kernel's release string to its era. Each era's rules are in `rules`; this
//! module owns only which eras exist, in what order, and how they are named.
//!
//! An era covers [its first version, the next era's first version): the eras' names say so
//! (`3.7-4.4`, `5.18`, `6.1+`). Two eras are unmerged patches on top of a release (KOSAKI's on
//! 2.6.29, Andrea's first on 4.5): they have no range, and no release maps to them. A name is
//! an era's own name or any kernel version it covers (`4.4` is `3.7-4.4`), so the names of
//! earlier pinlab versions (`2.6.29`, `4.4`, `4.6`, `5.9`, `5.19`) still work.

use std::fmt;
use std::str::FromStr;

use super::rules::{self, Feature, Rules};
use super::version::KernelVersion;

/// A kernel era, oldest first (a patch right after the release it applies to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Era {
    V2_6_29,
    V2_6_29Kosaki,
    V2_6_32,
    V2_6_34,
    V2_6_38,
    V3_2,
    V3_7,
    V4_5,
    V4_5AndreaV1,
    V4_6,
    V5_7,
    V5_8,
    V5_9,
    V5_18,
    V5_19,
    V6_1,
}

/// A name that is neither an era's nor a version an era covers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown era `{}` (one of: {}; or a kernel version from 2.6.29 on, such as 6.18)", name.escape_debug(), Era::names().join(", "))]
pub struct UnknownEra {
    pub name: String,
}

impl Era {
    pub const ALL: [Era; 16] = [
        Era::V2_6_29,
        Era::V2_6_29Kosaki,
        Era::V2_6_32,
        Era::V2_6_34,
        Era::V2_6_38,
        Era::V3_2,
        Era::V3_7,
        Era::V4_5,
        Era::V4_5AndreaV1,
        Era::V4_6,
        Era::V5_7,
        Era::V5_8,
        Era::V5_9,
        Era::V5_18,
        Era::V5_19,
        Era::V6_1,
    ];
    /// The modern era: what the running 6.18 does; its verdicts must equal the live kernel's.
    pub const MODERN: Era = Era::V6_1;

    /// The era's name, which states its range (`3.7-4.4`, `6.1+`; a patch: `4.5+andrea-v1`).
    pub fn name(self) -> &'static str {
        self.rules().name
    }

    /// Every era's name, oldest first.
    pub fn names() -> Vec<&'static str> {
        Era::ALL.iter().map(|e| e.name()).collect()
    }

    /// Whether the era has `f` (see [`Feature`]).
    pub fn has(self, f: Feature) -> bool {
        self.rules().features.has(f)
    }

    pub fn rules(self) -> &'static Rules {
        match self {
            Era::V2_6_29 => &rules::R2_6_29,
            Era::V2_6_29Kosaki => &rules::R2_6_29_KOSAKI,
            Era::V2_6_32 => &rules::R2_6_32,
            Era::V2_6_34 => &rules::R2_6_34,
            Era::V2_6_38 => &rules::R2_6_38,
            Era::V3_2 => &rules::R3_2,
            Era::V3_7 => &rules::R3_7,
            Era::V4_5 => &rules::R4_5,
            Era::V4_5AndreaV1 => &rules::R4_5_ANDREA_V1,
            Era::V4_6 => &rules::R4_6,
            Era::V5_7 => &rules::R5_7,
            Era::V5_8 => &rules::R5_8,
            Era::V5_9 => &rules::R5_9,
            Era::V5_18 => &rules::R5_18,
            Era::V5_19 => &rules::R5_19,
            Era::V6_1 => &rules::R6_1,
        }
    }

    /// The versions the era covers: [first, end), `end` `None` for the newest era. `None` for
    /// an unmerged patch.
    pub fn range(self) -> Option<(KernelVersion, Option<KernelVersion>)> {
        let first = self.rules().since?;
        let end = Era::ALL
            .iter()
            .filter_map(|e| e.rules().since)
            .find(|v| *v > first);
        Some((first, end))
    }

    /// The era of a running kernel, from its release string as `uname -r` prints it
    /// (`6.18.0-foo` is the modern era). `None` when the string has no `X.Y` version or the
    /// version is older than every era. The eras follow mainline releases: a stable branch
    /// that backported a later fix (5.15.y has 70cbc3cc78a9) maps to its mainline era.
    pub fn for_kernel_release(release: &str) -> Option<Era> {
        Era::for_version(KernelVersion::parse_release(release)?)
    }

    /// The ranged era that covers `v`.
    pub fn for_version(v: KernelVersion) -> Option<Era> {
        Era::ALL
            .into_iter()
            .rfind(|e| e.rules().since.is_some_and(|first| first <= v))
    }
}

impl fmt::Display for Era {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Era {
    type Err = UnknownEra;
    /// An era's name, or a kernel version (`4.4`, `5.15`, `6.18`) naming the era that covers it.
    fn from_str(s: &str) -> Result<Self, UnknownEra> {
        Era::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .or_else(|| KernelVersion::parse_exact(s).and_then(Era::for_version))
            .ok_or_else(|| UnknownEra {
                name: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in Era::ALL {
            assert_eq!(e.name().parse::<Era>(), Ok(e));
        }
        assert!("4.7+kosaki".parse::<Era>().is_err());
        assert!("2.6.28".parse::<Era>().is_err());
    }

    /// Every ranged era's name states its range: it starts with its first version, its last
    /// named version maps back to it, and the next era starts right after. A bug would be a name
    /// that claims versions another era's rules cover.
    #[test]
    fn names_state_their_ranges() {
        for e in Era::ALL {
            let Some((first, end)) = e.range() else {
                assert!(e.name().contains('+') && !e.name().ends_with('+'), "{e}");
                continue;
            };
            let name = e.name();
            assert!(name.starts_with(&first.to_string()), "{name} vs {first}");
            match end {
                None => assert_eq!(name, format!("{first}+")),
                Some(end) => {
                    let last = name.split_once('-').map_or(name, |(_, l)| l);
                    let last = KernelVersion::parse_exact(last).unwrap();
                    assert!(last < end, "{name}: {last} is not before {end}");
                    assert_eq!(Era::for_version(last), Some(e), "{name}");
                    assert_ne!(Era::for_version(end), Some(e), "{name}");
                }
            }
        }
    }

    /// Each row: a release string as `uname -r` prints it, and its era. What a bug would look
    /// like: 6.18 not mapped to the modern era, a range boundary off by one, a patch era chosen.
    #[test]
    fn releases_map_to_their_eras() {
        let rows: &[(&str, Option<Era>)] = &[
            ("6.18.0-foo", Some(Era::MODERN)),
            ("6.1.0", Some(Era::V6_1)),
            ("6.0.19", Some(Era::V5_19)),
            ("5.19.0-1-amd64", Some(Era::V5_19)),
            ("5.18.19", Some(Era::V5_18)),
            ("5.15.0-91-generic", Some(Era::V5_9)),
            ("5.8.0", Some(Era::V5_8)),
            ("5.7.19", Some(Era::V5_7)),
            ("5.4.0-150-generic", Some(Era::V4_6)),
            ("4.5.7", Some(Era::V4_5)),
            ("4.4.0-210-generic", Some(Era::V3_7)),
            ("3.10.0-1160.el7.x86_64", Some(Era::V3_7)),
            ("3.6.11", Some(Era::V3_2)),
            ("3.1.10", Some(Era::V2_6_38)),
            ("2.6.37.6", Some(Era::V2_6_34)),
            ("2.6.32-754.el6.x86_64", Some(Era::V2_6_32)),
            ("2.6.29", Some(Era::V2_6_29)),
            ("2.6.28", None),
            ("not-a-kernel", None),
        ];
        for (release, want) in rows {
            assert_eq!(Era::for_kernel_release(release), *want, "{release}");
        }
    }

    /// The names earlier pinlab versions used, and plain versions, still name the eras that
    /// cover them.
    #[test]
    fn old_names_and_versions_are_accepted() {
        let rows = [
            ("2.6.29", Era::V2_6_29),
            ("4.4", Era::V3_7),
            ("4.5", Era::V4_5),
            ("4.6", Era::V4_6),
            ("5.8", Era::V5_8),
            ("5.9", Era::V5_9),
            ("5.19", Era::V5_19),
            ("6.18", Era::MODERN),
            ("2.6.29+kosaki", Era::V2_6_29Kosaki),
            ("4.5+andrea-v1", Era::V4_5AndreaV1),
        ];
        for (name, era) in rows {
            assert_eq!(name.parse::<Era>(), Ok(era), "{name}");
        }
    }
}
