//! Summaries of timed trials: median, min and max, ratios of medians, and unit conversions.
//!
//! Owns only arithmetic on samples; it measures nothing itself.

use std::time::Instant;

use serde::Serialize;

/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;
/// Bytes in a GiB.
pub const GIB: u64 = 1 << 30;

/// Median, min and max of a set of trials.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    /// The summary of `samples`, or `None` when there are none (NaNs sort last).
    pub fn of(samples: &[f64]) -> Option<Stat> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: s[0],
            max: s[n - 1],
            n,
        })
    }
}

/// `a.median / b.median`, when both exist and `b` is not zero.
pub fn ratio(a: Option<Stat>, b: Option<Stat>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median != 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

/// Throughput of `bytes` moved in `secs` seconds, in GiB/s.
pub fn gib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / GIB as f64 / secs
}

/// Milliseconds since `t`.
pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: samples, expected (median, min, max). A bug: the median of an even count taken
    /// as one middle element, or unsorted input summarised as given.
    #[test]
    fn stat_of_table() {
        type Row = (&'static [f64], (f64, f64, f64));
        let table: [Row; 4] = [
            (&[3.0], (3.0, 3.0, 3.0)),
            (&[5.0, 1.0, 3.0], (3.0, 1.0, 5.0)),
            (&[4.0, 1.0, 2.0, 3.0], (2.5, 1.0, 4.0)),
            (&[2.0, 2.0, 9.0, 2.0, 1.0], (2.0, 1.0, 9.0)),
        ];
        for (samples, (median, min, max)) in table {
            let s = Stat::of(samples).unwrap();
            assert_eq!(
                (s.median, s.min, s.max, s.n),
                (median, min, max, samples.len())
            );
        }
        assert_eq!(Stat::of(&[]), None);
    }

    #[test]
    fn ratio_of_medians() {
        let s = |m| Stat::of(&[m]);
        assert_eq!(ratio(s(3.0), s(2.0)), Some(1.5));
        assert_eq!(ratio(s(3.0), s(0.0)), None);
        assert_eq!(ratio(None, s(1.0)), None);
    }

    #[test]
    fn gib_per_s_of_one_gib_in_half_a_second() {
        assert_eq!(gib_per_s(1 << 30, 0.5), 2.0);
    }
}
