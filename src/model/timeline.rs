//! The rollout's story, as the record keeps it: one mark per thing a person would want to know
//! happened (the rollout started, a step began or ended, a gate passed or failed, a pause, the
//! rollback, the end), each with its time. The executor adds them as it writes the record
//! (`crate::strategy::timeline` finds them by comparing two records); Kubernetes Events,
//! notifications, `status --output jsonl` and the timeline picture of a CI summary are all told
//! from these marks.
//!
//! The record is data anyone who may patch the StatefulSet can write, so the marks are checked
//! like the rest of it (`crate::strategy::trust`) and bounded in number and size.

use std::fmt;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::state::{Phase, RollbackCause};

/// Most marks a record keeps: the first (the start) and the latest ones.
pub const MAX_MARKS: usize = 200;
/// Longest message a mark keeps, in bytes (the record's `message` has the whole text).
pub const MAX_MARK_MESSAGE: usize = 300;

/// One thing that happened, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    pub at: Timestamp,
    #[serde(flatten)]
    pub what: What,
}

/// What happened. `step` is the 0-based index in the plan's steps (forward) or in the
/// rollback's steps (`RollbackStep*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "mark")]
pub enum What {
    /// The rollout was started.
    Started,
    #[serde(rename_all = "camelCase")]
    StepStarted { step: usize },
    #[serde(rename_all = "camelCase")]
    StepDone { step: usize },
    #[serde(rename_all = "camelCase")]
    GatePassed { step: usize },
    /// A gate (or a deadline, or a pod that cannot start) failed the step.
    #[serde(rename_all = "camelCase")]
    StepFailed {
        step: usize,
        cause: RollbackCause,
        message: String,
    },
    /// Waiting: at a pause step (`until` for a timed one; none: until `rollout promote`), or
    /// paused by `rollout pause`.
    #[serde(rename_all = "camelCase")]
    Paused {
        step: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Timestamp>,
        #[serde(default)]
        by_user: bool,
    },
    #[serde(rename_all = "camelCase")]
    Resumed { step: usize },
    #[serde(rename_all = "camelCase")]
    RollbackStarted {
        cause: RollbackCause,
        message: String,
    },
    #[serde(rename_all = "camelCase")]
    RollbackStepDone { step: usize },
    /// The rollout ended in `phase` (Succeeded, RolledBack, Aborted, Failed, Released).
    #[serde(rename_all = "camelCase")]
    Finished { phase: Phase, message: String },
}

impl What {
    /// The reason of a Kubernetes Event, CamelCase.
    pub fn reason(&self) -> &'static str {
        match self {
            What::Started => "RolloutStarted",
            What::StepStarted { .. } => "StepStarted",
            What::StepDone { .. } => "StepDone",
            What::GatePassed { .. } => "GatePassed",
            What::StepFailed {
                cause: RollbackCause::TimedOut,
                ..
            } => "StepTimedOut",
            What::StepFailed { .. } => "GateFailed",
            What::Paused { by_user: true, .. } => "Paused",
            What::Paused { until: None, .. } => "Holding",
            What::Paused { .. } => "Pausing",
            What::Resumed { .. } => "Resumed",
            What::RollbackStarted {
                cause: RollbackCause::Released,
                ..
            } => "ReleaseStarted",
            What::RollbackStarted { .. } => "RollbackStarted",
            What::RollbackStepDone { .. } => "RollbackStepDone",
            What::Finished { phase, .. } => match phase {
                Phase::Succeeded => "RolloutSucceeded",
                Phase::RolledBack => "RolledBack",
                Phase::Aborted => "RolloutAborted",
                Phase::Released => "RolloutReleased",
                _ => "RolloutFailed",
            },
        }
    }

    /// True for what went wrong (a Warning Event).
    pub fn is_warning(&self) -> bool {
        match self {
            What::StepFailed { .. } | What::RollbackStarted { .. } => !matches!(
                self,
                What::RollbackStarted {
                    cause: RollbackCause::Aborted | RollbackCause::Released,
                    ..
                }
            ),
            What::Finished { phase, .. } => matches!(phase, Phase::Failed | Phase::RolledBack),
            _ => false,
        }
    }

    /// What a notification calls it: `start`, `hold`, `success`, `failure`, `rollback`; none
    /// for the marks that are not worth a message in a chat.
    pub fn notification(&self) -> Option<&'static str> {
        match self {
            What::Started => Some("start"),
            What::Paused {
                until: None,
                by_user: false,
                ..
            } => Some("hold"),
            What::StepFailed { .. } => Some("failure"),
            What::RollbackStarted {
                cause: RollbackCause::Released,
                ..
            } => None,
            What::RollbackStarted { .. } => Some("rollback"),
            What::Finished { phase, .. } => match phase {
                Phase::Succeeded => Some("success"),
                Phase::RolledBack | Phase::Aborted => Some("rollback"),
                Phase::Failed => Some("failure"),
                _ => None,
            },
            _ => None,
        }
    }
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// `text` cut to [`MAX_MARK_MESSAGE`] bytes at a character boundary, first line only.
pub fn short_message(text: &str) -> String {
    cut(text.lines().next().unwrap_or_default(), MAX_MARK_MESSAGE)
}

/// `text` in at most `max` bytes (at least 3): cut at a character boundary, with `...`.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Adds `marks` to `timeline`, keeping the first mark and the latest ones within
/// [`MAX_MARKS`].
pub fn append(timeline: &mut Vec<Mark>, marks: impl IntoIterator<Item = Mark>) {
    timeline.extend(marks);
    if timeline.len() > MAX_MARKS {
        let extra = timeline.len() - MAX_MARKS;
        timeline.drain(1..=extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn marks_serialize_flat_with_their_kind() {
        let mark = Mark {
            at: at(1_700_000_000),
            what: What::StepFailed {
                step: 2,
                cause: RollbackCause::GateFailed,
                message: "pod web-1 answered 500".into(),
            },
        };
        let json = serde_json::to_value(&mark).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"at": "2023-11-14T22:13:20Z", "mark": "stepFailed", "step": 2, "cause": "gateFailed", "message": "pod web-1 answered 500"})
        );
        let back: Mark = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, mark);
    }

    #[test]
    fn reasons_warnings_and_notifications() {
        let cases = [
            (What::Started, "RolloutStarted", false, Some("start")),
            (What::StepDone { step: 1 }, "StepDone", false, None),
            (
                What::Paused {
                    step: 3,
                    until: None,
                    by_user: false,
                },
                "Holding",
                false,
                Some("hold"),
            ),
            (
                What::Paused {
                    step: 3,
                    until: Some(at(5)),
                    by_user: false,
                },
                "Pausing",
                false,
                None,
            ),
            (
                What::StepFailed {
                    step: 2,
                    cause: RollbackCause::TimedOut,
                    message: String::new(),
                },
                "StepTimedOut",
                true,
                Some("failure"),
            ),
            (
                What::RollbackStarted {
                    cause: RollbackCause::Aborted,
                    message: String::new(),
                },
                "RollbackStarted",
                false,
                Some("rollback"),
            ),
            (
                What::Finished {
                    phase: Phase::Succeeded,
                    message: String::new(),
                },
                "RolloutSucceeded",
                false,
                Some("success"),
            ),
            (
                What::Finished {
                    phase: Phase::RolledBack,
                    message: String::new(),
                },
                "RolledBack",
                true,
                Some("rollback"),
            ),
        ];
        for (what, reason, warning, note) in cases {
            assert_eq!(what.reason(), reason, "{what:?}");
            assert_eq!(what.is_warning(), warning, "{what:?}");
            assert_eq!(what.notification(), note, "{what:?}");
        }
    }

    #[test]
    fn the_timeline_keeps_the_start_and_the_latest() {
        let mut timeline = vec![Mark {
            at: at(0),
            what: What::Started,
        }];
        append(
            &mut timeline,
            (0..MAX_MARKS + 10).map(|i| Mark {
                at: at(i as i64 + 1),
                what: What::StepDone { step: i },
            }),
        );
        assert_eq!(timeline.len(), MAX_MARKS);
        assert_eq!(timeline[0].what, What::Started);
        assert_eq!(
            timeline.last().map(|m| m.what.clone()),
            Some(What::StepDone {
                step: MAX_MARKS + 9
            })
        );
        assert_eq!(short_message(&"é".repeat(400)).len(), MAX_MARK_MESSAGE - 1);
        assert_eq!(short_message("one\ntwo"), "one");
    }
}
