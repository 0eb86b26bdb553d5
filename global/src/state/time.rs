//! Formats the millisecond timestamps of the state as RFC 3339 for messages.
//!
//! Hand-written rather than pulled from a date crate: it is a dozen lines of integer
//! arithmetic, cannot fail or panic for any `u64`, and reads no clock or time zone.

use std::fmt;

/// Displays milliseconds since the Unix epoch as `2026-11-22T10:00:00Z` (UTC, whole seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub u64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// Howard Hinnant's `civil_from_days`, restricted to non-negative day counts so that it works
/// in unsigned arithmetic: shift the epoch to 0000-03-01, split into 400-year eras of 146 097
/// days, then find the year of the era and the day of that March-based year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::Rfc3339;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Rfc3339(0).to_string(), "1970-01-01T00:00:00Z");
        // 2026-11-22T10:00:00Z
        assert_eq!(
            Rfc3339(1_795_341_600_000).to_string(),
            "2026-11-22T10:00:00Z"
        );
        // Leap day, with milliseconds dropped.
        assert_eq!(Rfc3339(951_782_400_999).to_string(), "2000-02-29T00:00:00Z");
        assert_eq!(
            Rfc3339(1_709_251_199_000).to_string(),
            "2024-02-29T23:59:59Z"
        );
    }

    #[test]
    fn never_panics_at_the_extremes() {
        assert!(!Rfc3339(u64::MAX).to_string().is_empty());
    }
}
