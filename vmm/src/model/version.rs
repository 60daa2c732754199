//! Kernel versions as the era table uses them: `2.6.29`, `3.7`, `6.1`, parsed from a release
//! string as `uname -r` prints it (`6.18.0-foo`, `5.15.0-91-generic`, `2.6.32.27`). Owns the
//! parsing and the order; knows nothing of eras.

use std::fmt;

/// `major.minor.sub`: the sublevel counts for 2.6.x (where it was the release number) and is
/// the stable release otherwise (`5.15.80` is in every range that holds 5.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    pub major: u16,
    pub minor: u16,
    pub sub: u16,
}

impl KernelVersion {
    pub const fn new(major: u16, minor: u16, sub: u16) -> KernelVersion {
        KernelVersion { major, minor, sub }
    }

    /// The leading `X.Y[.Z[.W]]` of a release string; anything after it (`-foo`, `+`, `-rc1`)
    /// is ignored, and so is a fourth number. `None` without at least `X.Y`.
    pub fn parse_release(release: &str) -> Option<KernelVersion> {
        let end = release
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(release.len());
        let mut parts = release[..end].split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let sub = match parts.next() {
            None | Some("") => 0,
            Some(p) => p.parse().ok()?,
        };
        Some(KernelVersion { major, minor, sub })
    }

    /// A version written exactly (`4.4`, `2.6.29`, `5.15.80`), nothing after it.
    pub fn parse_exact(text: &str) -> Option<KernelVersion> {
        let v = KernelVersion::parse_release(text)?;
        let well_formed = text.split('.').count() <= 3
            && text
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        well_formed.then_some(v)
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sub != 0 || self.major == 2 {
            write!(f, "{}.{}.{}", self.major, self.minor, self.sub)
        } else {
            write!(f, "{}.{}", self.major, self.minor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: a release string, the version it stands for. A bug would misread a distro
    /// suffix as a sublevel, or accept text without a minor.
    #[test]
    fn parse_release_rows() {
        let v = KernelVersion::new;
        let rows: &[(&str, Option<KernelVersion>)] = &[
            ("6.18.0-foo", Some(v(6, 18, 0))),
            ("6.18", Some(v(6, 18, 0))),
            ("5.15.0-91-generic", Some(v(5, 15, 0))),
            ("5.10.148", Some(v(5, 10, 148))),
            ("2.6.32.27", Some(v(2, 6, 32))),
            ("6.1.0-rc1", Some(v(6, 1, 0))),
            ("4.4+", Some(v(4, 4, 0))),
            ("6", None),
            ("linux-6.1", None),
            ("", None),
        ];
        for (text, want) in rows {
            assert_eq!(KernelVersion::parse_release(text), *want, "{text}");
        }
    }

    #[test]
    fn exact_refuses_suffixes_and_orders_numerically() {
        assert_eq!(
            KernelVersion::parse_exact("4.4"),
            Some(KernelVersion::new(4, 4, 0))
        );
        assert_eq!(KernelVersion::parse_exact("4.4+"), None);
        assert_eq!(KernelVersion::parse_exact("4.4.1.2"), None);
        assert_eq!(KernelVersion::parse_exact("4..4"), None);
        assert!(KernelVersion::new(5, 9, 0) < KernelVersion::new(5, 19, 0));
        assert!(KernelVersion::new(2, 6, 38) < KernelVersion::new(3, 2, 0));
        assert_eq!(KernelVersion::new(2, 6, 29).to_string(), "2.6.29");
        assert_eq!(KernelVersion::new(6, 1, 0).to_string(), "6.1");
    }
}
