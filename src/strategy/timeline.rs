//! What happened between two versions of a rollout record, as marks of its story
//! (`crate::model::timeline`): the executor compares the record it last told about with the one
//! it is about to write, and the marks this finds go into the record, into Kubernetes Events
//! and into notifications. Pure: the same two records always give the same marks.

use k8s_openapi::jiff::Timestamp;

use crate::model::plan::Step;
use crate::model::state::{PauseReason, Phase, RollbackCause, RolloutState};
use crate::model::timeline::{short_message, Mark, What};

/// The parts of a record that the story is told from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Where {
    phase: Phase,
    step: usize,
    started: bool,
    /// 0 none, 1 at a pause step, 2 paused by the user, 3 an undecided gate (older records).
    pause: u8,
    rollback_step: usize,
}

impl Where {
    fn of(r: &RolloutState) -> Where {
        Where {
            phase: r.phase,
            step: r.current_step,
            started: r.step_started_at.is_some(),
            pause: match r.pause {
                None => 0,
                Some(PauseReason::Step { .. }) => 1,
                Some(PauseReason::User) => 2,
                Some(PauseReason::GateInconclusive { .. }) => 3,
            },
            rollback_step: r.rollback.as_ref().map_or(0, |b| b.current_step),
        }
    }

    /// A rollout that has not run anything yet.
    fn initial() -> Where {
        Where {
            phase: Phase::Progressing,
            step: 0,
            started: false,
            pause: 0,
            rollback_step: 0,
        }
    }
}

/// True for the steps whose end is a gate's verdict.
pub fn is_gate(step: &Step) -> bool {
    matches!(
        step,
        Step::Gate { .. } | Step::GateService { .. } | Step::Compare { .. }
    )
}

/// The marks of what happened from `before` (the record last told about, if it is of the same
/// rollout) to `after`, all at `now`.
pub fn marks_between(
    before: Option<&RolloutState>,
    after: &RolloutState,
    now: Timestamp,
) -> Vec<Mark> {
    let mut out = Vec::new();
    let mut push = |what: What| out.push(Mark { at: now, what });
    let b = match before.filter(|b| b.id == after.id) {
        Some(b) => Where::of(b),
        None => {
            if after.timeline.is_empty() {
                push(What::Started);
            }
            Where::initial()
        }
    };
    let a = Where::of(after);
    let steps = &after.plan.steps;
    if a.step > b.step && !(b.phase == Phase::RollingBack || b.phase.is_finished()) {
        for (i, step) in steps.iter().enumerate().take(a.step).skip(b.step) {
            match step {
                Step::Pause { .. } => {
                    if b.phase == Phase::Paused && b.step == i {
                        push(What::Resumed { step: i });
                    }
                }
                s if is_gate(s) => push(What::GatePassed { step: i }),
                _ => push(What::StepDone { step: i }),
            }
        }
    }
    if a.phase == Phase::Progressing && a.started && (a.step != b.step || !b.started) {
        push(What::StepStarted { step: a.step });
    }
    if a.phase == Phase::Paused
        && (b.phase != Phase::Paused || b.step != a.step || b.pause != a.pause)
    {
        let until = after.pause_deadline();
        push(What::Paused {
            step: a.step,
            until,
            by_user: a.pause == 2,
        });
    }
    if b.phase == Phase::Paused && a.phase == Phase::Progressing && a.step == b.step {
        push(What::Resumed { step: a.step });
    }
    let was_forward = matches!(b.phase, Phase::Progressing | Phase::Paused);
    let cause = after.rollback_cause;
    let message = short_message(&after.message);
    if was_forward && matches!(a.phase, Phase::RollingBack | Phase::Failed) {
        match cause {
            Some(c @ (RollbackCause::GateFailed | RollbackCause::TimedOut)) => {
                push(What::StepFailed {
                    step: a.step,
                    cause: c,
                    message: message.clone(),
                })
            }
            None if a.phase == Phase::Failed && after.drift.is_none() => push(What::StepFailed {
                step: a.step,
                cause: RollbackCause::GateFailed,
                message: message.clone(),
            }),
            _ => {}
        }
    }
    if a.phase == Phase::RollingBack && b.phase != Phase::RollingBack {
        push(What::RollbackStarted {
            cause: cause.unwrap_or(RollbackCause::Aborted),
            message: message.clone(),
        });
    }
    let rolled_back = b.phase == Phase::RollingBack
        || (a.phase == Phase::RollingBack && b.phase != Phase::RollingBack);
    if rolled_back {
        let from = if b.phase == Phase::RollingBack {
            b.rollback_step
        } else {
            0
        };
        for i in from..a.rollback_step {
            push(What::RollbackStepDone { step: i });
        }
    }
    if a.phase.is_finished() && b.phase.is_active() {
        push(What::Finished {
            phase: a.phase,
            message,
        });
    }
    out
}

/// A mark in words, for a person reading `kubectl describe`, a chat message or a summary.
pub fn describe_mark(record: &RolloutState, what: &What) -> String {
    let name = &record.plan.statefulset;
    let total = record.plan.steps.len();
    let step = |i: usize| {
        let text = record
            .plan
            .steps
            .get(i)
            .map(|s| record.plan.describe_step(s))
            .unwrap_or_default();
        format!("step {}/{total} ({text})", i + 1)
    };
    match what {
        What::Started => {
            let images = record
                .target
                .images
                .iter()
                .map(|c| format!("{}={}", c.container, c.image))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "{} rollout {} of {name} started by {}: {total} steps to {}",
                record.plan.strategy,
                record.id,
                record.started_by,
                if images.is_empty() {
                    "a new pod template".to_string()
                } else {
                    images
                }
            )
        }
        What::StepStarted { step: i } => format!("{} started", step(*i)),
        What::StepDone { step: i } => format!("{} done", step(*i)),
        What::GatePassed { step: i } => format!("{}: the gate passed", step(*i)),
        What::StepFailed {
            step: i,
            cause: RollbackCause::TimedOut,
            message,
        } => format!("{} timed out: {message}", step(*i)),
        What::StepFailed {
            step: i, message, ..
        } => format!("{} failed: {message}", step(*i)),
        What::Paused { by_user: true, step: i, .. } => format!(
            "paused by `rollout pause` at step {}/{total}; `rollout resume {name}` continues",
            i + 1
        ),
        What::Paused {
            until: Some(at),
            step: i,
            ..
        } => format!(
            "step {}/{total}: pausing until {}",
            i + 1,
            at.strftime("%H:%M:%S UTC")
        ),
        What::Paused { step: i, .. } => format!(
            "step {}/{total}: holding; `rollout promote {name}` continues, `rollout abort {name}` goes back",
            i + 1
        ),
        What::Resumed { step: i } => format!("continuing at step {}/{total}", i + 1),
        What::RollbackStarted {
            cause: RollbackCause::Released,
            ..
        } => format!("releasing {name} to the other deploy: giving back what rollout holds"),
        What::RollbackStarted { cause, message } => format!(
            "rolling {name} back to the stable revision {} ({}): {message}",
            record.stable.revision.revision.as_deref().unwrap_or("?"),
            match cause {
                RollbackCause::GateFailed => "a step failed",
                RollbackCause::TimedOut => "a deadline passed",
                RollbackCause::Aborted => "aborted",
                RollbackCause::Released => "released",
            }
        ),
        What::RollbackStepDone { step: i } => {
            let steps = record.rollback.as_ref().map(|r| r.steps.as_slice()).unwrap_or_default();
            format!(
                "rollback step {}/{} done ({})",
                i + 1,
                steps.len(),
                steps
                    .get(*i)
                    .map(|s| record.plan.describe_step(s))
                    .unwrap_or_default()
            )
        }
        What::Finished { phase, message } => format!("rollout of {name} {}: {message}", match phase {
            Phase::Succeeded => "succeeded",
            Phase::RolledBack => "rolled back",
            Phase::Aborted => "aborted, back on the stable revision",
            Phase::Released => "released",
            _ => "failed",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::tests::{sample_state, ts};

    fn kinds(marks: &[Mark]) -> Vec<String> {
        marks
            .iter()
            .map(|m| {
                let json = serde_json::to_value(m).unwrap_or_default();
                match json.get("step") {
                    Some(step) => format!("{}:{step}", json["mark"].as_str().unwrap_or("")),
                    None => json["mark"].as_str().unwrap_or("").to_string(),
                }
            })
            .collect()
    }

    /// A record moved along by `change`, with the marks from before to after.
    fn story(
        before: Option<&RolloutState>,
        change: impl FnOnce(&mut RolloutState),
    ) -> (RolloutState, Vec<String>) {
        let mut after = before.cloned().unwrap_or_else(sample_state);
        change(&mut after);
        let marks = marks_between(before, &after, ts(1_700_000_100));
        (after, kinds(&marks))
    }

    #[test]
    fn a_rollout_told_step_by_step() {
        // The sample plan: freeze, partition 1, gate [1], partition 0, gate [0].
        let (r, m) = story(None, |r| {
            let _ = r.begin_step(ts(1));
        });
        assert_eq!(m, ["started", "stepStarted:0"]);
        let mut r = r;
        r.timeline.push(Mark {
            at: ts(1),
            what: What::Started,
        });
        let (r, m) = story(Some(&r), |r| {
            let _ = r.complete_step(ts(2));
            let _ = r.begin_step(ts(2));
        });
        assert_eq!(m, ["stepDone:0", "stepStarted:1"]);
        let (r, m) = story(Some(&r), |r| {
            let _ = r.complete_step(ts(3));
            let _ = r.begin_step(ts(3));
            let _ = r.complete_step(ts(4));
        });
        assert_eq!(m, ["stepDone:1", "gatePassed:2"]);
        let (_, m) = story(Some(&r), |r| {
            r.current_step = 5;
            r.phase = Phase::Succeeded;
        });
        assert_eq!(m, ["stepDone:3", "gatePassed:4", "finished"]);
        // Nothing changed, nothing told.
        let (_, m) = story(Some(&r), |_| {});
        assert!(m.is_empty(), "{m:?}");
    }

    #[test]
    fn a_failed_gate_then_the_rollback() {
        let mut r = sample_state();
        r.timeline.push(Mark {
            at: ts(1),
            what: What::Started,
        });
        r.current_step = 2;
        r.step_started_at = Some(ts(5));
        let (r, m) = story(Some(&r), |r| {
            let _ = r.fail(
                RollbackCause::GateFailed,
                "HTTP gate failed on web-1\nfigures",
                ts(6),
            );
        });
        assert_eq!(m, ["stepFailed:2", "rollbackStarted"]);
        let marks = marks_between(None, &r, ts(0));
        assert!(marks.iter().all(|m| !matches!(m.what, What::Started)));
        let (r, m) = story(Some(&r), |r| {
            let _ = r.begin_rollback_step(ts(7));
            let _ = r.complete_rollback_step(ts(8));
        });
        assert_eq!(m, ["rollbackStepDone:0"]);
        let (_, m) = story(Some(&r), |r| {
            while r.rollback_steps().current().is_some() {
                let _ = r.begin_rollback_step(ts(9));
                let _ = r.complete_rollback_step(ts(9));
            }
            let _ = r.rollback_done(ts(10));
        });
        assert_eq!(m.last().map(String::as_str), Some("finished"), "{m:?}");
        let failed = marks_between(
            Some(&sample_state()),
            &{
                let mut x = sample_state();
                let _ = x.fail(RollbackCause::GateFailed, "bad", ts(3));
                x
            },
            ts(3),
        );
        match &failed[0].what {
            What::StepFailed { message, .. } => assert_eq!(message, "bad"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pauses_holds_and_resumes() {
        let mut r = sample_state();
        r.plan.steps.insert(
            3,
            Step::Pause {
                wait: crate::model::strategy::PauseSpec::UntilPromote,
            },
        );
        r.timeline.push(Mark {
            at: ts(1),
            what: What::Started,
        });
        r.current_step = 2;
        r.step_started_at = Some(ts(5));
        let (r, m) = story(Some(&r), |r| {
            let _ = r.complete_step(ts(6));
        });
        assert_eq!(m, ["gatePassed:2", "paused:3"]);
        assert_eq!(r.phase, Phase::Paused);
        let (r2, m) = story(Some(&r), |r| {
            let _ = r.promote(ts(7));
            let _ = r.begin_step(ts(7));
        });
        assert_eq!(m, ["resumed:3", "stepStarted:4"]);
        let (r3, m) = story(Some(&r2), |r| {
            let _ = r.pause_by_user(ts(8));
        });
        assert_eq!(m, ["paused:4"]);
        let (_, m) = story(Some(&r3), |r| {
            let _ = r.resume_by_user(ts(9));
        });
        assert_eq!(m, ["resumed:4"]);
        let (_, m) = story(Some(&r2), |r| {
            let _ = r.abort(ts(10));
        });
        assert_eq!(m, ["rollbackStarted"]);
    }

    #[test]
    fn marks_in_words() {
        let r = sample_state();
        let cases = [
            (
                What::Started,
                "rolling rollout r-1 of web started by ci@runner-7: 5 steps to app=time-app:v2",
            ),
            (
                What::GatePassed { step: 2 },
                "step 3/5 (gate web-1): the gate passed",
            ),
            (
                What::StepFailed {
                    step: 2,
                    cause: RollbackCause::GateFailed,
                    message: "web-1 answered 500".into(),
                },
                "step 3/5 (gate web-1) failed: web-1 answered 500",
            ),
            (
                What::Paused {
                    step: 3,
                    until: None,
                    by_user: false,
                },
                "step 4/5: holding; `rollout promote web` continues, `rollout abort web` goes back",
            ),
            (
                What::RollbackStarted {
                    cause: RollbackCause::TimedOut,
                    message: "late".into(),
                },
                "rolling web back to the stable revision web-6c8f (a deadline passed): late",
            ),
            (
                What::Finished {
                    phase: Phase::Succeeded,
                    message: "web runs the new version on every pod".into(),
                },
                "rollout of web succeeded: web runs the new version on every pod",
            ),
        ];
        for (what, text) in cases {
            assert_eq!(describe_mark(&r, &what), text);
        }
    }
}
