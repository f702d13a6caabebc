//! Moscow wall-clock time, computed from the Unix clock.
//!
//! Moscow has kept UTC+3 all year since 2014, so a fixed offset is exact and no time-zone
//! database is needed.

use std::time::{SystemTime, UNIX_EPOCH};

const MOSCOW_UTC_OFFSET_SECS: u64 = 3 * 3600;
const SECS_PER_DAY: u64 = 86_400;

/// Seconds since the Unix epoch, now.
pub fn now_unix_secs() -> u64 {
    // A clock set before 1970 is a broken host, not a reason to fail a request: show midnight.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Moscow time of day as `HH:MM:SS` for a Unix timestamp.
pub fn moscow_time_of_day(unix_secs: u64) -> String {
    // Reduce first so the offset can never overflow, even for u64::MAX.
    let secs = (unix_secs % SECS_PER_DAY + MOSCOW_UTC_OFFSET_SECS) % SECS_PER_DAY;
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The line shown on `/` and stored per visit, e.g. `Moscow time: 16:46:01`.
pub fn moscow_time_line(unix_secs: u64) -> String {
    format!("Moscow time: {}", moscow_time_of_day(unix_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moscow_time_of_day_cases() {
        let cases: &[(u64, &str, &str)] = &[
            (0, "03:00:00", "epoch is 03:00 in Moscow"),
            (75_600, "00:00:00", "21:00 UTC wraps to Moscow midnight"),
            (75_599, "23:59:59", "one second before Moscow midnight"),
            (
                13 * 3600 + 46 * 60 + 1,
                "16:46:01",
                "afternoon, as in the seeds",
            ),
            (1_700_000_000, "01:13:20", "2023-11-14T22:13:20Z"),
            (
                86_400 * 365 + 59,
                "03:00:59",
                "whole days do not change the time",
            ),
            (u64::MAX, "10:00:15", "no overflow at the end of the range"),
        ];
        for (secs, want, why) in cases {
            assert_eq!(moscow_time_of_day(*secs), *want, "{why} ({secs})");
        }
    }

    #[test]
    fn moscow_time_line_has_the_seed_format() {
        assert_eq!(moscow_time_line(0), "Moscow time: 03:00:00");
    }
}
