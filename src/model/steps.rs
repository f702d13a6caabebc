//! `--steps` lists: `1,2,4` (pods), `10%,30%,100%` or `20,50,100` (percent).
//!
//! Each value is cumulative: how many pods (or what share) run the new revision once that step
//! is done, as in Kruise batches and Argo's `setWeight`. Whether a bare number means pods or
//! percent depends on the strategy (ramped: pods, canary: percent), so a list is parsed first and
//! resolved once the strategy is known.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::weight::Percent;

/// Why a steps list was refused. Positions are 1-based, as a user counts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepsError {
    #[error("steps list is empty; write e.g. 1,2,4 or 10%,30%,100%")]
    Empty,
    #[error("step {position} is empty (two commas in a row or a trailing comma?) in `{input}`")]
    EmptyItem { input: String, position: usize },
    #[error("step {position} `{item}` is not a whole number or percentage in `{input}`")]
    NotANumber {
        input: String,
        position: usize,
        item: String,
    },
    #[error("step {position} is 0 in `{input}`: every step must move at least one pod")]
    Zero { input: String, position: usize },
    #[error("step {position} is {value}% in `{input}`: a step cannot go above 100%")]
    Above100 {
        input: String,
        position: usize,
        value: u32,
    },
    #[error("step {position} repeats {value}{unit} in `{input}`: each step must move more pods than the one before")]
    Duplicate {
        input: String,
        position: usize,
        value: u32,
        unit: &'static str,
    },
    #[error("step {position} ({value}{unit}) is lower than step {previous_position} ({previous}{unit}) in `{input}`: steps count pods on the new version so far, so they must increase")]
    NotIncreasing {
        input: String,
        position: usize,
        value: u32,
        previous_position: usize,
        previous: u32,
        unit: &'static str,
    },
    #[error("`{input}` mixes percentages and plain numbers (step {position}); write every step the same way")]
    MixedUnits { input: String, position: usize },
}

/// How the values of a list were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepUnit {
    /// Plain numbers: pods for ramped, percent for canary.
    Bare,
    /// Written with `%`.
    Percent,
}

/// A parsed, increasing list of cumulative step targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepList {
    pub unit: StepUnit,
    pub values: Vec<u32>,
    /// The text as written, for messages.
    pub source: String,
}

/// A resolved step target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepTarget {
    Pods(u32),
    Percent(Percent),
}

impl fmt::Display for StepTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepTarget::Pods(n) if *n == 1 => write!(f, "1 pod"),
            StepTarget::Pods(n) => write!(f, "{n} pods"),
            StepTarget::Percent(p) => write!(f, "{p}"),
        }
    }
}

impl StepList {
    /// Every value as a percentage (canary): bare numbers are percent too.
    pub fn as_percentages(&self) -> Result<Vec<Percent>, StepsError> {
        self.values
            .iter()
            .enumerate()
            .map(|(i, &value)| {
                Percent::new(value).map_err(|_| StepsError::Above100 {
                    input: self.source.clone(),
                    position: i + 1,
                    value,
                })
            })
            .collect()
    }

    /// Every value as a target (ramped): bare numbers are pods.
    pub fn as_targets(&self) -> Result<Vec<StepTarget>, StepsError> {
        match self.unit {
            StepUnit::Bare => Ok(self.values.iter().map(|&v| StepTarget::Pods(v)).collect()),
            StepUnit::Percent => Ok(self
                .as_percentages()?
                .into_iter()
                .map(StepTarget::Percent)
                .collect()),
        }
    }
}

impl FromStr for StepList {
    type Err = StepsError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let items: Vec<&str> = input.split(',').map(str::trim).collect();
        StepList::from_items(input, &items)
    }
}

impl StepList {
    /// Parses already-split items (a YAML sequence), `source` being the text for messages.
    pub fn from_items(source: &str, items: &[&str]) -> Result<Self, StepsError> {
        let input = || source.to_string();
        if items.is_empty() || (items.len() == 1 && items[0].trim().is_empty()) {
            return Err(StepsError::Empty);
        }
        let mut unit: Option<StepUnit> = None;
        let mut values: Vec<u32> = Vec::with_capacity(items.len());
        for (i, raw) in items.iter().enumerate() {
            let position = i + 1;
            let item = raw.trim();
            if item.is_empty() {
                return Err(StepsError::EmptyItem {
                    input: input(),
                    position,
                });
            }
            let (digits, this_unit) = match item.strip_suffix('%') {
                Some(d) => (d.trim(), StepUnit::Percent),
                None => (item, StepUnit::Bare),
            };
            let value: u32 = digits.parse().map_err(|_| StepsError::NotANumber {
                input: input(),
                position,
                item: item.to_string(),
            })?;
            match unit {
                Some(u) if u != this_unit => {
                    return Err(StepsError::MixedUnits {
                        input: input(),
                        position,
                    })
                }
                _ => unit = Some(this_unit),
            }
            let unit_text = if this_unit == StepUnit::Percent {
                "%"
            } else {
                ""
            };
            if value == 0 {
                return Err(StepsError::Zero {
                    input: input(),
                    position,
                });
            }
            if this_unit == StepUnit::Percent && value > 100 {
                return Err(StepsError::Above100 {
                    input: input(),
                    position,
                    value,
                });
            }
            if let Some(&previous) = values.last() {
                if value == previous {
                    return Err(StepsError::Duplicate {
                        input: input(),
                        position,
                        value,
                        unit: unit_text,
                    });
                }
                if value < previous {
                    return Err(StepsError::NotIncreasing {
                        input: input(),
                        position,
                        value,
                        previous_position: position - 1,
                        previous,
                        unit: unit_text,
                    });
                }
            }
            values.push(value);
        }
        Ok(StepList {
            unit: unit.unwrap_or(StepUnit::Bare),
            values,
            source: source.to_string(),
        })
    }
}

impl fmt::Display for StepList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = if self.unit == StepUnit::Percent {
            "%"
        } else {
            ""
        };
        let parts: Vec<String> = self.values.iter().map(|v| format!("{v}{suffix}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for StepList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StepList {
    /// Accepts `"1,2,4"`, `[1, 2, 4]` and `["10%", "30%", "100%"]`.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Number(u64),
            Text(String),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            List(Vec<Item>),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Raw::List(items) => {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|item| match item {
                        Item::Number(n) => n.to_string(),
                        Item::Text(t) => t,
                    })
                    .collect();
                let refs: Vec<&str> = items.iter().map(String::as_str).collect();
                StepList::from_items(&items.join(","), &refs).map_err(serde::de::Error::custom)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_lists() {
        let cases = [
            ("1,2,4", StepUnit::Bare, vec![1, 2, 4]),
            ("10%,30%,100%", StepUnit::Percent, vec![10, 30, 100]),
            ("20,50,100", StepUnit::Bare, vec![20, 50, 100]),
            (" 1 , 3 ", StepUnit::Bare, vec![1, 3]),
            ("5", StepUnit::Bare, vec![5]),
            ("100%", StepUnit::Percent, vec![100]),
            ("1000", StepUnit::Bare, vec![1000]),
        ];
        for (input, unit, values) in cases {
            let list: StepList = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(list.unit, unit, "{input}");
            assert_eq!(list.values, values, "{input}");
        }
    }

    #[test]
    fn invalid_lists_say_what_and_where() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("0,1", "step 1 is 0"),
            ("1,0", "step 2 is 0"),
            ("10%,150%", "step 2 is 150%"),
            ("1,2,2", "step 3 repeats 2"),
            ("10%,10%", "step 2 repeats 10%"),
            ("4,2", "step 2 (2) is lower than step 1 (4)"),
            ("1,x", "step 2 `x` is not"),
            ("1,,3", "step 2 is empty"),
            ("1,2,", "step 3 is empty"),
            ("1,20%", "mixes percentages"),
            ("-1", "step 1 `-1`"),
            ("1.5", "step 1 `1.5`"),
        ];
        for (input, fragment) in cases {
            let err = input.parse::<StepList>().expect_err(input);
            assert!(
                err.to_string().contains(fragment),
                "{input}: `{err}` lacks `{fragment}`"
            );
            if !input.is_empty() {
                assert!(
                    err.to_string().contains(&format!("`{input}`")),
                    "{input}: `{err}` does not quote the input"
                );
            }
        }
    }

    #[test]
    fn bare_numbers_as_percentages_reject_above_100() {
        let list: StepList = "20,50,150".parse().unwrap_or_else(|e| panic!("{e}"));
        let err = list.as_percentages().expect_err("150 is not a percentage");
        assert!(err.to_string().contains("step 3 is 150%"), "{err}");
        let ok: StepList = "20,50,100".parse().unwrap_or_else(|e| panic!("{e}"));
        let values: Vec<u32> = ok
            .as_percentages()
            .unwrap_or_default()
            .into_iter()
            .map(Percent::get)
            .collect();
        assert_eq!(values, [20, 50, 100]);
    }

    #[test]
    fn targets_follow_the_unit() {
        let pods: StepList = "1,2,4".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            pods.as_targets(),
            Ok(vec![
                StepTarget::Pods(1),
                StepTarget::Pods(2),
                StepTarget::Pods(4)
            ])
        );
        let pct: StepList = "10%,100%".parse().unwrap_or_else(|e| panic!("{e}"));
        let targets = pct.as_targets().unwrap_or_default();
        assert_eq!(
            targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10%", "100%"]
        );
    }

    #[test]
    fn deserializes_from_string_or_list() {
        let cases = [
            ("\"1,2,4\"", "1,2,4"),
            ("[1, 2, 4]", "1,2,4"),
            ("[\"10%\", \"30%\", \"100%\"]", "10%,30%,100%"),
            ("\"10%, 100%\"", "10%,100%"),
        ];
        for (json, text) in cases {
            let list: StepList =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(list.to_string(), text);
            assert_eq!(
                serde_json::to_string(&list).unwrap_or_default(),
                format!("\"{text}\"")
            );
        }
        let err = serde_json::from_str::<StepList>("[4, 2]").expect_err("decreasing");
        assert!(
            err.to_string()
                .contains("step 2 (2) is lower than step 1 (4)"),
            "{err}"
        );
    }
}
