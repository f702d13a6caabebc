//! The rollout record: one JSON annotation on the StatefulSet that says what rollout is under
//! way, its plan, how far it got and what "stable" means, so that any later run (`status`,
//! `resume`, `promote`, `abort`, a retried CI job) sees the truth without a controller.
//!
//! The executor writes the record before each mutation, with the StatefulSet's resourceVersion as
//! precondition. The record carries a schema version; a run refuses a record from a newer
//! `rollout` rather than misreading it.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::image::ContainerImage;
use super::plan::{Plan, Step};
use super::strategy::StrategyConfig;
use super::twin::Twin;

/// The annotation that holds the record.
pub const ANNOTATION_KEY: &str = "rollout.dev/state";
/// The schema version this build writes and reads.
pub const STATE_VERSION: u32 = 1;
/// The annotation value limit of the API server is 256 KiB for all annotations together; the
/// record stays well below so that the user's own annotations fit.
pub const MAX_RECORD_BYTES: usize = 128 * 1024;

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the rollout record of StatefulSet {statefulset} (annotation {ANNOTATION_KEY}): {source}; the record is not used. `rollout status {statefulset}` shows the set as it is; `rollout abort {statefulset}` returns it to the revision the StatefulSet reports as current, without the record")]
    ParseRecord {
        statefulset: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the rollout record of StatefulSet {statefulset} has version {found}, written by a newer rollout (this one reads version {STATE_VERSION}); use that version. This one's `rollout abort {statefulset}` returns the set to the revision the StatefulSet reports as current, without the record")]
    RecordTooNew { statefulset: String, found: u32 },
    #[error("the rollout record of StatefulSet {statefulset} (annotation {ANNOTATION_KEY}) is not used: {problems}. `rollout status {statefulset}` shows the set as it is; `rollout abort {statefulset}` returns it to the revision the StatefulSet reports as current, without the record")]
    Untrusted {
        statefulset: String,
        problems: String,
    },
    #[error("writing the rollout record of StatefulSet {statefulset}: {source}")]
    SerializeRecord {
        statefulset: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the rollout record of StatefulSet {statefulset} would be {bytes} bytes, more than the {MAX_RECORD_BYTES} allowed; use fewer steps")]
    RecordTooLarge { statefulset: String, bytes: usize },
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Steps are running (or a run died while they were; `resume` continues).
    Progressing,
    /// Waiting: at a pause step, paused by `rollout pause`, or after an inconclusive gate.
    Paused,
    /// Every step done; the new version is the stable one.
    Succeeded,
    /// Going back to the stable revision (after a failure or `abort`).
    RollingBack,
    /// Back on the stable revision after a failed gate or a deadline.
    RolledBack,
    /// A step failed and nothing was rolled back (`--no-rollback`), or the rollback itself
    /// failed: someone has to look.
    Failed,
    /// Back on the stable revision because someone ran `abort`.
    Aborted,
    /// Someone else's deploy stopped the rollout and `rollout release` let it have the set:
    /// rollout gave back what it held; the pod template is the other deploy's.
    Released,
}

impl Phase {
    /// True while the rollout owns the StatefulSet: a new rollout must not start over it.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Progressing | Phase::Paused | Phase::RollingBack
        )
    }

    /// True when nothing more will happen without a new command.
    pub fn is_finished(self) -> bool {
        !self.is_active()
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a rollout is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "reason")]
pub enum PauseReason {
    /// At a pause step: until `promote`, or until `until` for a timed pause.
    #[serde(rename_all = "camelCase")]
    Step {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Timestamp>,
    },
    /// `rollout pause`; `rollout resume` continues.
    User,
    /// A gate could not decide (no answers to judge); `resume` re-runs the gate, `abort` rolls
    /// back.
    GateInconclusive { message: String },
}

/// Why a rollout is going (or went) back to stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RollbackCause {
    GateFailed,
    TimedOut,
    Aborted,
    /// Not going back: `rollout release` gives back what the rollout held after someone else's
    /// deploy, leaving the pod template as it is.
    Released,
}

/// A revision of the pod template: the ControllerRevision name when known, and its images.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default)]
    pub images: Vec<ContainerImage>,
}

/// What a rollback returns to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stable {
    #[serde(flatten)]
    pub revision: Revision,
    /// `spec.updateStrategy.type` before the rollout (`RollingUpdate` or `OnDelete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<String>,
    /// `spec.updateStrategy.rollingUpdate.partition` before the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// `spec.updateStrategy.rollingUpdate.maxUnavailable` before the rollout (a count or a
    /// percentage), given back when a rollout that moved several pods at once ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<serde_json::Value>,
}

/// The record kept in the [`ANNOTATION_KEY`] annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    pub version: u32,
    /// Identifies this rollout across runs (e.g. in history and logs).
    pub id: String,
    pub config: StrategyConfig,
    pub plan: Plan,
    /// Index in `plan.steps` of the step being run, or of the next one; `plan.steps.len()` once
    /// all are done.
    pub current_step: usize,
    /// When the current step started (its deadline counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Timestamp>,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_cause: Option<RollbackCause>,
    pub stable: Stable,
    pub target: Revision,
    /// Who started it (user, CI job), as the executor finds out.
    pub started_by: String,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    /// The latest thing a person should read (a gate failure, why it paused).
    #[serde(default)]
    pub message: String,
    /// The whole new pod template, for strategies whose template is written after other steps
    /// (recreate, blue/green, shadow), so that any later run can write it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_template: Option<serde_json::Value>,
    /// Blue/green and shadow: the twin set and the Services it moves between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<Twin>,
    /// Traffic through an HTTPRoute: the route, its original rules and the Services made for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Box<super::route::RouteRecord>>,
    /// Figures measured during the rollout.
    #[serde(default, skip_serializing_if = "Measured::is_empty")]
    pub measured: Measured,
    /// The way back, once the rollout is rolling back (planned when it began, by
    /// `crate::strategy::rollback`), and how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// Someone else's change that stopped the rollout (`crate::model::drift`), once a run saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<super::drift::Drift>,
    /// Why the current step's gate (or comparison) could not decide, while it runs again
    /// within the step's deadline; cleared when the step ends or the message changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undecided: Option<String>,
    /// What happened so far, with times (`crate::model::timeline`): the rollout's story for
    /// Events, notifications and the timeline picture.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<super::timeline::Mark>,
}

/// A rollback as steps, with its progress, kept in the record so that a run killed half-way
/// through it is continued from where it stopped (every step is safe to run again).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    pub steps: Vec<Step>,
    /// Index in `steps` of the step being run, or of the next one.
    pub current_step: usize,
    /// When the current step started (its deadline counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Timestamp>,
}

impl Rollback {
    pub fn new(steps: Vec<Step>) -> Self {
        Rollback {
            steps,
            current_step: 0,
            step_started_at: None,
        }
    }

    /// The step being run or next to run; `None` when all are done.
    pub fn current(&self) -> Option<&Step> {
        self.steps.get(self.current_step)
    }
}

/// Figures the executor measured and keeps with the record (so a resumed run goes on counting).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measured {
    /// Recreate: since when no pod of the set has been Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_since: Option<Timestamp>,
    /// Recreate: time with no Ready pod, from the last old pod leaving Ready to the first new pod
    /// being Ready, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Blue/green: when the live Services were switched to green.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<Timestamp>,
    /// Shadow: the latest comparison of shadow with stable (interim while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<serde_json::Value>,
    /// Time spent paused so far, in milliseconds: the overall deadline (`--total-timeout`)
    /// leaves it out, also in a resumed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_ms: Option<u64>,
    /// Shadow: true once the comparison passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison_passed: Option<bool>,
    /// The last moment a run saw pods of the own set on the stable revision, and which: once
    /// every pod runs the new revision (a `--bake`), relative metric conditions compare with
    /// stable as Prometheus had it then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_seen: Option<StableSeen>,
}

/// Pods of the stable revision seen at a moment (see [`Measured::stable_seen`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableSeen {
    pub at: Timestamp,
    /// Kept only when a query names `{pods}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
}

impl Measured {
    pub fn is_empty(&self) -> bool {
        *self == Measured::default()
    }
}

impl RolloutState {
    /// A new record for a rollout that is about to run `plan` from its first step.
    pub fn new(
        id: String,
        config: StrategyConfig,
        plan: Plan,
        stable: Stable,
        target: Revision,
        started_by: String,
        now: Timestamp,
    ) -> Self {
        RolloutState {
            version: STATE_VERSION,
            id,
            config,
            plan,
            current_step: 0,
            step_started_at: None,
            phase: Phase::Progressing,
            pause: None,
            rollback_cause: None,
            stable,
            target,
            started_by,
            started_at: now,
            updated_at: now,
            message: String::new(),
            new_template: None,
            twin: None,
            route: None,
            measured: Measured::default(),
            rollback: None,
            drift: None,
            undecided: None,
            timeline: Vec::new(),
        }
    }

    /// The step being run or next to run; `None` when all are done.
    pub fn current(&self) -> Option<&Step> {
        self.plan.steps.get(self.current_step)
    }

    /// The steps not done yet (the current one included).
    pub fn remaining(&self) -> &[Step] {
        self.plan.steps.get(self.current_step..).unwrap_or_default()
    }

    /// The annotation value.
    pub fn to_annotation(&self) -> Result<String, StateError> {
        let text = serde_json::to_string(self).map_err(|source| StateError::SerializeRecord {
            statefulset: self.plan.statefulset.clone(),
            source,
        })?;
        if text.len() > MAX_RECORD_BYTES {
            return Err(StateError::RecordTooLarge {
                statefulset: self.plan.statefulset.clone(),
                bytes: text.len(),
            });
        }
        Ok(text)
    }

    /// Reads an annotation value; `statefulset` names the object in errors.
    pub fn from_annotation(statefulset: &str, text: &str) -> Result<Self, StateError> {
        // Read the version alone first, so a newer record gets a clear message instead of a
        // confusing "missing field".
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let parse_error = |source| StateError::ParseRecord {
            statefulset: statefulset.to_string(),
            source,
        };
        let VersionOnly { version } = serde_json::from_str(text).map_err(parse_error)?;
        if version > STATE_VERSION {
            return Err(StateError::RecordTooNew {
                statefulset: statefulset.to_string(),
                found: version,
            });
        }
        serde_json::from_str(text).map_err(parse_error)
    }

    /// Reads the record from an object's annotations, if it has one.
    pub fn from_annotations(
        statefulset: &str,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<Self>, StateError> {
        annotations
            .and_then(|a| a.get(ANNOTATION_KEY))
            .map(|text| Self::from_annotation(statefulset, text))
            .transpose()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::gate::GateSpec;
    use crate::model::plan::PodManagementPolicy;
    use crate::model::strategy::{BatchSize, OnFailure, StrategyKind, StrategyParams, Timeouts};

    pub(crate) fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    pub(crate) fn sample_state() -> RolloutState {
        let plan = Plan {
            statefulset: "web".into(),
            strategy: StrategyKind::Rolling,
            replicas: 2,
            ordinal_start: 0,
            pod_management_policy: PodManagementPolicy::Parallel,
            steps: vec![
                Step::SetTemplateAndFreeze { partition: 2 },
                Step::SetPartition {
                    partition: 1,
                    ordinals: vec![1],
                    updated: 1,
                    weight: None,
                },
                Step::gate(vec![1]),
                Step::SetPartition {
                    partition: 0,
                    ordinals: vec![0],
                    updated: 2,
                    weight: None,
                },
                Step::gate(vec![0]),
            ],
            notes: vec![],
        };
        let config = StrategyConfig {
            params: StrategyParams::Rolling {
                batch: BatchSize::Pods(1),
                pause: None,
            },
            gates: GateSpec::default(),
            timeouts: Timeouts::default(),
            on_failure: OnFailure::Rollback,
            traffic: None,
        };
        let stable = Stable {
            revision: Revision {
                revision: Some("web-6c8f".into()),
                images: vec![ContainerImage {
                    container: "app".into(),
                    image: "time-app:v1".into(),
                }],
            },
            update_strategy: Some("RollingUpdate".into()),
            partition: None,
            max_unavailable: None,
        };
        let target = Revision {
            revision: None,
            images: vec![ContainerImage {
                container: "app".into(),
                image: "time-app:v2".into(),
            }],
        };
        RolloutState::new(
            "r-1".into(),
            config,
            plan,
            stable,
            target,
            "ci@runner-7".into(),
            ts(1_700_000_000),
        )
    }

    #[test]
    fn annotation_round_trip() {
        let mut state = sample_state();
        state.current_step = 2;
        state.phase = Phase::Paused;
        state.pause = Some(PauseReason::Step {
            until: Some(ts(1_700_000_120)),
        });
        let text = state.to_annotation().unwrap_or_else(|e| panic!("{e}"));
        let back = RolloutState::from_annotation("web", &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, state);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(json["version"], 1);
        assert_eq!(json["phase"], "Paused");
        assert_eq!(json["startedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(
            json["pause"],
            serde_json::json!({"reason": "step", "until": "2023-11-14T22:15:20Z"})
        );
        assert_eq!(json["stable"]["revision"], "web-6c8f");
        assert_eq!(json["stable"]["updateStrategy"], "RollingUpdate");
    }

    #[test]
    fn unreadable_and_newer_records_are_refused_with_the_name() {
        let newer = r#"{"version": 7, "somethingElse": true}"#;
        let err = RolloutState::from_annotation("web", newer).expect_err("newer");
        assert!(matches!(err, StateError::RecordTooNew { found: 7, .. }));
        assert!(err.to_string().contains("StatefulSet web"));
        for bad in ["", "{", "{\"version\": 1}", "[]", "{\"version\": \"one\"}"] {
            let err = RolloutState::from_annotation("web", bad).expect_err(bad);
            assert!(
                matches!(err, StateError::ParseRecord { .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains("rollout.dev/state"), "{err}");
        }
    }

    #[test]
    fn from_annotations_map() {
        let state = sample_state();
        let mut map = BTreeMap::new();
        map.insert("other".to_string(), "x".to_string());
        assert!(matches!(
            RolloutState::from_annotations("web", Some(&map)),
            Ok(None)
        ));
        assert!(matches!(
            RolloutState::from_annotations("web", None),
            Ok(None)
        ));
        map.insert(
            ANNOTATION_KEY.to_string(),
            state.to_annotation().unwrap_or_default(),
        );
        let read = RolloutState::from_annotations("web", Some(&map))
            .ok()
            .flatten();
        assert_eq!(read, Some(state));
    }

    #[test]
    fn phases() {
        let cases = [
            (Phase::Progressing, true),
            (Phase::Paused, true),
            (Phase::RollingBack, true),
            (Phase::Succeeded, false),
            (Phase::RolledBack, false),
            (Phase::Failed, false),
            (Phase::Aborted, false),
            (Phase::Released, false),
        ];
        for (phase, active) in cases {
            assert_eq!(phase.is_active(), active, "{phase}");
            assert_eq!(phase.is_finished(), !active, "{phase}");
        }
    }

    #[test]
    fn current_and_remaining_steps() {
        let mut state = sample_state();
        assert_eq!(state.current().map(Step::name), Some("freeze"));
        assert_eq!(state.remaining().len(), 5);
        state.current_step = 5;
        assert_eq!(state.current(), None);
        assert!(state.remaining().is_empty());
        state.current_step = 9;
        assert!(state.remaining().is_empty());
    }
}
