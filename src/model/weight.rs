//! Percentages and how a traffic weight becomes a number of pods.
//!
//! Without a router, a canary's weight is the share of pods on the new revision, so only
//! multiples of 1/replicas are possible. The closest count is used (ties go to the larger
//! canary), a weight of 1..99 % never rounds to zero pods, and below 100 % at least one pod stays
//! on the stable revision when there are two or more. What gets reported is the weight achieved
//! (1 of 3 pods is 33 %), never the weight asked for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a percentage was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PercentError {
    #[error("`{input}` is not a percentage; write a whole number from 0 to 100, e.g. 20 or 20%")]
    NotANumber { input: String },
    #[error("{value}% is more than 100%")]
    Above100 { value: u32 },
}

/// A whole percentage, 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Percent(u8);

impl Percent {
    pub const ZERO: Percent = Percent(0);
    pub const HUNDRED: Percent = Percent(100);

    pub fn new(value: u32) -> Result<Self, PercentError> {
        match u8::try_from(value) {
            Ok(v) if v <= 100 => Ok(Percent(v)),
            _ => Err(PercentError::Above100 { value }),
        }
    }

    pub fn get(self) -> u32 {
        u32::from(self.0)
    }
}

impl TryFrom<u32> for Percent {
    type Error = PercentError;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Percent::new(value)
    }
}

impl From<Percent> for u32 {
    fn from(p: Percent) -> u32 {
        p.get()
    }
}

impl FromStr for Percent {
    type Err = PercentError;

    /// Accepts `20` and `20%`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let digits = input.trim().strip_suffix('%').unwrap_or(input.trim());
        let value: u32 = digits.parse().map_err(|_| PercentError::NotANumber {
            input: input.to_string(),
        })?;
        Percent::new(value)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// A weight placed on pods: what was asked and what the replica count allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodWeight {
    pub requested: Percent,
    /// Pods on the new revision.
    pub pods: u32,
    pub replicas: u32,
}

impl PodWeight {
    /// The weight actually achieved, in percent (may be fractional: 1 of 3 is 33.33).
    pub fn achieved_percent(&self) -> f64 {
        if self.replicas == 0 {
            return 0.0;
        }
        f64::from(self.pods) * 100.0 / f64::from(self.replicas)
    }

    /// True when the pod count gives exactly the requested weight.
    pub fn is_exact(&self) -> bool {
        u64::from(self.pods) * 100 == u64::from(self.requested.get()) * u64::from(self.replicas)
    }
}

impl fmt::Display for PodWeight {
    /// `1 of 3 pods (33%, asked 20%)`, or `2 of 10 pods (20%)` when exact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} pods ({}",
            self.pods,
            self.replicas,
            format_percent(self.achieved_percent())
        )?;
        if !self.is_exact() {
            write!(f, ", asked {}", self.requested)?;
        }
        f.write_str(")")
    }
}

/// `33%`, `12.5%`: whole numbers without decimals, others with one.
pub fn format_percent(value: f64) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    if (rounded - rounded.round()).abs() < f64::EPSILON {
        format!("{rounded:.0}%")
    } else {
        format!("{rounded:.1}%")
    }
}

/// The pod count for a weight on `replicas` pods (see the module doc for the rules).
pub fn weight_to_pods(weight: Percent, replicas: u32) -> PodWeight {
    let w = u64::from(weight.get());
    let n = u64::from(replicas);
    // Closest count, half rounding up so that ties go to the larger canary.
    let closest = (w * n + 50) / 100;
    let mut pods = u32::try_from(closest).unwrap_or(replicas);
    if (1..100).contains(&weight.get()) {
        if replicas >= 1 && pods == 0 {
            pods = 1;
        }
        if replicas >= 2 && pods == replicas {
            pods = replicas - 1;
        }
    }
    PodWeight {
        requested: weight,
        pods,
        replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(v: u32) -> Percent {
        Percent::new(v).unwrap_or(Percent::HUNDRED)
    }

    #[test]
    fn percent_parsing() {
        let ok = [("0", 0), ("20", 20), ("20%", 20), (" 100% ", 100)];
        for (input, value) in ok {
            assert_eq!(
                input.parse::<Percent>().map(Percent::get),
                Ok(value),
                "{input}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("150", "more than 100"),
            ("abc", "not a percentage"),
            ("-1", "not a percentage"),
            ("%", "not a percentage"),
            ("12.5", "not a percentage"),
        ];
        for (input, fragment) in bad {
            let err = input.parse::<Percent>().expect_err(input);
            assert!(err.to_string().contains(fragment), "{input}: {err}");
        }
    }

    #[test]
    fn weight_to_pod_counts() {
        // (weight, replicas, pods)
        let cases = [
            (20, 10, 2),
            (20, 5, 1),
            (20, 3, 1), // 0.6 -> 1
            (50, 3, 2), // 1.5 tie -> larger canary
            (50, 2, 1),
            (50, 1, 1), // never 0 for 1..99 %; one replica cannot keep a stable pod
            (1, 100, 1),
            (1, 10, 1), // 0.1 would round to 0
            (1, 1, 1),
            (99, 10, 9), // 9.9 would be all pods
            (99, 2, 1),
            (90, 2, 1), // 1.8 -> 2 would be all pods
            (30, 4, 1), // 1.2
            (40, 4, 2), // 1.6
            (25, 2, 1), // 0.5 tie -> larger
            (0, 5, 0),
            (100, 5, 5),
            (100, 1, 1),
            (20, 0, 0),
            (100, 0, 0),
            (33, 3, 1),
            (67, 3, 2),
        ];
        for (weight, replicas, pods) in cases {
            let got = weight_to_pods(pct(weight), replicas);
            assert_eq!(got.pods, pods, "{weight}% of {replicas}");
            assert_eq!(got.replicas, replicas);
            assert_eq!(got.requested.get(), weight);
        }
    }

    #[test]
    fn weight_rules_hold_for_every_small_case() {
        for replicas in 0..=40u32 {
            for weight in 0..=100u32 {
                let got = weight_to_pods(pct(weight), replicas);
                assert!(got.pods <= replicas);
                if (1..100).contains(&weight) && replicas >= 1 {
                    assert!(got.pods >= 1, "{weight}% of {replicas} gave 0 pods");
                }
                if weight < 100 && replicas >= 2 {
                    assert!(got.pods < replicas, "{weight}% of {replicas} gave all pods");
                }
                if weight == 100 {
                    assert_eq!(got.pods, replicas);
                }
                // Closest unless a rule above moved it: no other allowed count is strictly closer.
                let target = f64::from(weight) * f64::from(replicas) / 100.0;
                let err = (f64::from(got.pods) - target).abs();
                let lower = if (1..100).contains(&weight) { 1 } else { 0 };
                let upper = if weight < 100 && replicas >= 2 {
                    replicas - 1
                } else {
                    replicas
                };
                for other in lower.min(replicas)..=upper {
                    assert!(
                        (f64::from(other) - target).abs() >= err - 1e-9,
                        "{weight}% of {replicas}: {other} is closer than {}",
                        got.pods
                    );
                }
            }
        }
    }

    #[test]
    fn achieved_weight_is_reported() {
        let cases = [
            (20, 3, "1 of 3 pods (33.3%, asked 20%)"),
            (20, 10, "2 of 10 pods (20%)"),
            (50, 3, "2 of 3 pods (66.7%, asked 50%)"),
            (10, 8, "1 of 8 pods (12.5%, asked 10%)"),
            (100, 4, "4 of 4 pods (100%)"),
        ];
        for (weight, replicas, text) in cases {
            assert_eq!(weight_to_pods(pct(weight), replicas).to_string(), text);
        }
    }

    #[test]
    fn percent_serde_is_a_number() {
        assert_eq!(serde_json::to_string(&pct(20)).unwrap_or_default(), "20");
        assert!(serde_json::from_str::<Percent>("101").is_err());
        assert_eq!(serde_json::from_str::<Percent>("7").ok(), Some(pct(7)));
    }
}
