//! Durations as people write them (`90s`, `5m`, `1h30m`), in flags, strategy files and the
//! state record alike.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration is empty; write e.g. 30s, 5m or 1h30m")]
    Empty,
    #[error("duration `{input}` has no unit; write e.g. {input}s or {input}m")]
    MissingUnit { input: String },
    #[error("duration `{input}` is not valid ({reason}); write e.g. 30s, 5m or 1h30m")]
    Invalid { input: String, reason: String },
}

/// A [`Duration`] that parses from and prints as humantime (`1h 30m` prints as `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        HumanDuration(Duration::from_millis(millis))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(DurationError::Empty);
        }
        // humantime's own message for `30` ("time unit needed") does not say what to write.
        if trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DurationError::MissingUnit {
                input: trimmed.to_string(),
            });
        }
        humantime::parse_duration(trimmed)
            .map(HumanDuration)
            .map_err(|e| DurationError::Invalid {
                input: trimmed.to_string(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    /// A string; a bare number is read too, only to say that it needs a unit.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text_or_number(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Reads a string, or a number as its decimal text (YAML writes `timeout: 10` as a number).
pub(crate) fn text_or_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    Ok(match Raw::deserialize(deserializer)? {
        Raw::Number(n) => n.to_string(),
        Raw::Text(t) => t,
    })
}

/// Formats a latency for people: milliseconds below a second, seconds with decimals above.
pub fn format_latency(d: Duration) -> String {
    let millis = d.as_secs_f64() * 1000.0;
    if millis < 1000.0 {
        format!("{millis:.0}ms")
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humantime() {
        let cases = [
            ("90s", 90_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("250ms", 250),
            (" 2s ", 2_000),
            ("0s", 0),
        ];
        for (input, millis) in cases {
            let d: HumanDuration = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(d.0, Duration::from_millis(millis), "{input}");
        }
    }

    #[test]
    fn refuses_bad_durations_with_advice() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("30", "no unit; write e.g. 30s"),
            ("5 minutes please", "not valid"),
            ("-5s", "not valid"),
            ("m", "not valid"),
        ];
        for (input, fragment) in cases {
            let err = input.parse::<HumanDuration>().expect_err(input);
            assert!(err.to_string().contains(fragment), "{input}: {err}");
        }
    }

    #[test]
    fn prints_back_in_humantime() {
        let cases = [
            (0, "0s"),
            (90_000, "1m 30s"),
            (5_400_000, "1h 30m"),
            (250, "250ms"),
        ];
        for (millis, text) in cases {
            assert_eq!(HumanDuration::from_millis(millis).to_string(), text);
            let back: HumanDuration = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back, HumanDuration::from_millis(millis));
        }
    }

    #[test]
    fn serde_round_trip_as_string() {
        let d = HumanDuration::from_secs(120);
        let json = serde_json::to_string(&d).unwrap_or_default();
        assert_eq!(json, "\"2m\"");
        let back: HumanDuration = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<HumanDuration>("\"soon\"").is_err());
    }

    #[test]
    fn latency_formatting() {
        let cases = [(0, "0ms"), (12, "12ms"), (999, "999ms"), (1500, "1.50s")];
        for (millis, text) in cases {
            assert_eq!(format_latency(Duration::from_millis(millis)), text);
        }
    }
}
