//! The way back, planned as steps: what a rollout that failed, or was aborted or undone, must
//! do to return the app to where it was before, computed from the record alone.
//!
//! Every write `rollout` makes carries the record that describes it, so the record tells which
//! steps can have changed the cluster: the steps before `currentStep`, and the current one when
//! it has begun (`stepStartedAt`). Each forward step kind has its inverse here, beside it:
//!
//! | forward step | undone by |
//! |---|---|
//! | `SetTemplateAndFreeze`, `SetPartition` | `RestoreTemplate`, then `ReplaceStuckPods` |
//! | `SetTemplate` (recreate) | `Scale` to 0, `RestoreTemplate`, `Scale` back up |
//! | `Scale` of the own set to 0 | `Scale` back up |
//! | `PinTraffic` | `RestoreSelectors` |
//! | `HoldRevision` | `ReleaseRevision` (last); and before everything `RestoreTemplate`, `ReplaceStuckPods` when someone else changed blue's template meanwhile (the record's drift) |
//! | `CreateTwin` (never served) | `RemoveTwin` (its volumes too, unless kept) |
//! | `SwitchTraffic` | `ReturnTraffic`, green `Scale`d to 0 (kept with its volumes), `RemovePreview` |
//! | `CreateRevisionServices` | `RemoveRevisionServices` (last) |
//! | `SetRouteWeights` | `SetRouteWeights` at 0 % first (every request to the stable Service while the pods go back), `RestoreRoute` once they are back |
//! | `RestoreRoute` (the end of a route canary) | `RestoreRoute` again (it is the route's own rules) |
//! | `MirrorRoute` (a shadow through a route) | `RestoreRoute` first, before the shadow and its Service go |
//! | `PreviewRoute`, `SwitchRoute`, `RestoreRoute` (blue/green through a route) | `RestoreRoute` after `ReturnTraffic` (the live Services on blue, then the route's own rules to them in one write), or before `RemoveTwin` when green never served |
//! | `Gate`, `GateService`, `Compare`, `Pause` | nothing: they change nothing |
//!
//! The executor runs these steps as it runs forward ones, one function per kind, and keeps the
//! progress in the record, so a rollback interrupted half-way goes on from its current step.

use crate::model::plan::Step;
use crate::model::state::RolloutState;
use crate::model::strategy::StrategyKind;

/// The rollback steps for `record`, in order. Empty when nothing the rollout did needs undoing.
pub fn plan_rollback(record: &RolloutState) -> Vec<Step> {
    let reached = reached_steps(record);
    let touched = |matches: fn(&Step) -> bool| reached.iter().any(matches);
    let own = record.plan.statefulset.clone();
    let replicas = record.plan.replicas;
    let partition_moved = touched(|s| {
        matches!(
            s,
            Step::SetTemplateAndFreeze { .. } | Step::SetPartition { .. }
        )
    });
    let mut steps = Vec::new();
    match record.plan.strategy {
        StrategyKind::Rolling | StrategyKind::Ramped | StrategyKind::Canary => {
            let route_written = touched(|s| matches!(s, Step::SetRouteWeights { .. }));
            let route_restored = touched(|s| matches!(s, Step::RestoreRoute));
            if route_written && !route_restored {
                steps.push(Step::SetRouteWeights {
                    canary_percent: crate::model::weight::Percent::ZERO,
                    pods: 0,
                });
            }
            if partition_moved {
                steps.extend([Step::RestoreTemplate, Step::ReplaceStuckPods]);
            }
            if route_written || route_restored {
                steps.push(Step::RestoreRoute);
            }
            if touched(|s| matches!(s, Step::CreateRevisionServices)) {
                steps.push(Step::RemoveRevisionServices);
            }
        }
        StrategyKind::Recreate => {
            if touched(|s| matches!(s, Step::SetTemplate)) {
                steps.extend([
                    Step::Scale {
                        set: own.clone(),
                        replicas: 0,
                    },
                    Step::RestoreTemplate,
                ]);
            }
            // Scaling up again is all it takes when the template never changed (a pod that
            // would not stop while scaling down): going to 0 again would wait on it again.
            if touched(|s| matches!(s, Step::Scale { .. } | Step::SetTemplate)) {
                steps.push(Step::Scale { set: own, replicas });
            }
        }
        StrategyKind::BlueGreen => {
            let Some(twin) = record.twin.as_ref() else {
                return steps;
            };
            let switched = record.measured.switched_at.is_some();
            let held = touched(|s| matches!(s, Step::HoldRevision { .. }));
            if held && record.drift.as_ref().is_some_and(|d| d.changes_template()) {
                // Someone else changed blue's template while it was held: the stable one goes
                // back first (no held pod moves), so that blue is scaled on its own revision.
                steps.extend([Step::RestoreTemplate, Step::ReplaceStuckPods]);
            }
            let route = touched(route_step_of_blue_green);
            // Blue back at full size and Ready before any traffic returns to it.
            steps.push(Step::Scale { set: own, replicas });
            if switched {
                // The live Services on blue first, then the route's own rules (to them): the
                // gateway moves its requests back in one write.
                steps.push(Step::ReturnTraffic);
                if route {
                    steps.push(Step::RestoreRoute);
                }
                steps.push(Step::Scale {
                    set: twin.set.clone(),
                    replicas: 0,
                });
                if twin.preview.is_some() {
                    steps.push(Step::RemovePreview);
                }
            } else {
                // The preview header leaves the route before green's Service goes.
                if route {
                    steps.push(Step::RestoreRoute);
                }
                if touched(|s| matches!(s, Step::CreateTwin { .. })) {
                    steps.push(Step::RemoveTwin {
                        set: twin.set.clone(),
                    });
                }
            }
            if switched || touched(|s| matches!(s, Step::PinTraffic)) {
                steps.push(Step::RestoreSelectors);
            }
            if held {
                steps.push(Step::ReleaseRevision);
            }
        }
        StrategyKind::Shadow => {
            if touched(|s| matches!(s, Step::MirrorRoute { .. } | Step::RestoreRoute)) {
                // The mirror goes before its Service does.
                steps.push(Step::RestoreRoute);
            }
            if partition_moved {
                steps.extend([Step::RestoreTemplate, Step::ReplaceStuckPods]);
            }
            if let Some(twin) = record.twin.as_ref() {
                if touched(|s| matches!(s, Step::CreateTwin { .. })) {
                    steps.push(Step::RemoveTwin {
                        set: twin.set.clone(),
                    });
                }
            }
        }
    }
    steps
}

/// A step of a blue/green through a route that changed the route.
fn route_step_of_blue_green(step: &Step) -> bool {
    matches!(
        step,
        Step::PreviewRoute | Step::SwitchRoute | Step::RestoreRoute
    )
}

/// Why `rollout release` cannot run on a record: only a rollout stopped by someone else's
/// deploy (phase `Failed` with its drift recorded) is released.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseRefused {
    #[error("the rollout of StatefulSet {statefulset} was not stopped by someone else's deploy (it is {phase}), so there is nothing to release; {instead}")]
    NoDrift {
        statefulset: String,
        phase: crate::model::state::Phase,
        instead: String,
    },
    #[error("the record of StatefulSet {statefulset} is no longer this rollout's ({drift}), so rollout holds nothing it could give back; `rollout status {statefulset}` shows the set as it is")]
    RecordLost { statefulset: String, drift: String },
}

/// `rollout release`: the steps that let someone else's deploy have the set after it stopped
/// the rollout (the record's drift). The rollback's steps, minus those that put the stable
/// template back or wait for pods on the stable revision: rollout gives back what it holds
/// (the own set's update strategy, partition and `maxUnavailable`; the live Services'
/// selectors; blue scaled back; a green or shadow that never served removed, one that served
/// scaled to 0 with its volumes) and leaves the pod template as it is now, the other deploy's.
///
/// | strategy | given back |
/// |---|---|
/// | rolling, ramped, canary | `ReleaseRevision` once the partition moved; through a route, `RestoreRoute` and `RemoveRevisionServices` first |
/// | recreate | `ReleaseRevision` once the template was written; the set `Scale`d back up once rollout scaled it |
/// | blue/green, before the switch | `RemoveTwin` (never served), `RestoreSelectors`, `ReleaseRevision` |
/// | blue/green, after it | `ReleaseRevision`, blue `Scale`d up on its template now, `ReturnTraffic`, green to 0, `RemovePreview`, `RestoreSelectors` |
/// | blue/green through a route | as above, with `RestoreRoute` after `ReturnTraffic` (or before `RemoveTwin`) once the route was written |
/// | shadow | `RemoveTwin`, `ReleaseRevision` once a `--then` rollout moved the partition |
///
/// A set the other deploy scaled keeps its replicas: rollout scales to them, not its own.
pub fn plan_release(record: &RolloutState) -> Result<Vec<Step>, ReleaseRefused> {
    let name = record.plan.statefulset.clone();
    let drift = match (&record.drift, record.phase) {
        (Some(drift), crate::model::state::Phase::Failed) => drift,
        (_, phase) => {
            let instead = if phase.is_active() || phase == crate::model::state::Phase::Failed {
                format!("`rollout abort {name}` goes back to the stable version, `rollout promote {name} --full` finishes the rollout")
            } else {
                format!("it is over; `rollout undo {name}` goes back to the previous version")
            };
            return Err(ReleaseRefused::NoDrift {
                statefulset: name,
                phase,
                instead,
            });
        }
    };
    if drift.record_lost() {
        return Err(ReleaseRefused::RecordLost {
            statefulset: name,
            drift: drift.to_string(),
        });
    }
    let reached = reached_steps(record);
    let touched = |matches: fn(&Step) -> bool| reached.iter().any(matches);
    let own = name;
    // The other deploy's replicas, when it scaled the set; otherwise the rollout's.
    let replicas = drift
        .changes
        .iter()
        .find_map(|c| match c {
            crate::model::drift::Change::Replicas { set, found, .. } if *set == own => Some(*found),
            _ => None,
        })
        .unwrap_or(record.plan.replicas);
    let strategy_written = touched(|s| {
        matches!(
            s,
            Step::SetTemplateAndFreeze { .. }
                | Step::SetPartition { .. }
                | Step::SetTemplate
                | Step::HoldRevision { .. }
        )
    });
    let mut steps = Vec::new();
    match record.plan.strategy {
        StrategyKind::Rolling | StrategyKind::Ramped | StrategyKind::Canary => {
            if touched(|s| matches!(s, Step::SetRouteWeights { .. } | Step::RestoreRoute)) {
                steps.push(Step::RestoreRoute);
            }
            if touched(|s| matches!(s, Step::CreateRevisionServices)) {
                steps.push(Step::RemoveRevisionServices);
            }
            if strategy_written {
                steps.push(Step::ReleaseRevision);
            }
        }
        StrategyKind::Recreate => {
            if strategy_written {
                steps.push(Step::ReleaseRevision);
            }
            let scaled = |s: &Step| matches!(s, Step::Scale { .. } | Step::SetTemplate);
            if touched(scaled) {
                steps.push(Step::Scale { set: own, replicas });
            }
        }
        StrategyKind::BlueGreen => {
            let Some(twin) = record.twin.as_ref() else {
                return Ok(steps);
            };
            let held = touched(|s| matches!(s, Step::HoldRevision { .. }));
            if record.measured.switched_at.is_some() {
                // Green served: blue takes the template as it is now and is Ready before the
                // traffic returns to it; green keeps its volumes.
                if held {
                    steps.push(Step::ReleaseRevision);
                }
                steps.push(Step::Scale { set: own, replicas });
                steps.push(Step::ReturnTraffic);
                if touched(route_step_of_blue_green) {
                    steps.push(Step::RestoreRoute);
                }
                steps.push(Step::Scale {
                    set: twin.set.clone(),
                    replicas: 0,
                });
                if twin.preview.is_some() {
                    steps.push(Step::RemovePreview);
                }
                steps.push(Step::RestoreSelectors);
            } else {
                // Blue served all along: green (which never did) leaves first, the Services
                // select blue as before, then blue's pods may take the other deploy's template.
                if touched(route_step_of_blue_green) {
                    steps.push(Step::RestoreRoute);
                }
                if touched(|s| matches!(s, Step::CreateTwin { .. })) {
                    steps.push(Step::RemoveTwin {
                        set: twin.set.clone(),
                    });
                }
                if touched(|s| matches!(s, Step::PinTraffic)) {
                    steps.push(Step::RestoreSelectors);
                }
                if held {
                    steps.push(Step::ReleaseRevision);
                }
            }
        }
        StrategyKind::Shadow => {
            if touched(|s| matches!(s, Step::MirrorRoute { .. } | Step::RestoreRoute)) {
                steps.push(Step::RestoreRoute);
            }
            if let Some(twin) = record.twin.as_ref() {
                if touched(|s| matches!(s, Step::CreateTwin { .. })) {
                    steps.push(Step::RemoveTwin {
                        set: twin.set.clone(),
                    });
                }
            }
            if strategy_written {
                steps.push(Step::ReleaseRevision);
            }
        }
    }
    Ok(steps)
}

/// What a failure at each step of `record`'s plan would do: runs of consecutive steps (1-based,
/// inclusive) whose failure (or an `abort` during them) takes the same way back. For
/// `rollout plan`, which shows both directions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackAt {
    pub from_step: usize,
    pub to_step: usize,
    pub steps: Vec<Step>,
}

pub fn rollback_by_step(record: &RolloutState) -> Vec<RollbackAt> {
    let mut out: Vec<RollbackAt> = Vec::new();
    for index in 0..record.plan.steps.len() {
        let mut at = record.clone();
        at.current_step = index;
        at.step_started_at = Some(record.started_at);
        if record.plan.steps[..=index]
            .iter()
            .any(|s| matches!(s, Step::SwitchTraffic))
        {
            at.measured.switched_at = Some(record.started_at);
        }
        let steps = plan_rollback(&at);
        match out.last_mut() {
            Some(last) if last.steps == steps => last.to_step = index + 1,
            _ => out.push(RollbackAt {
                from_step: index + 1,
                to_step: index + 1,
                steps,
            }),
        }
    }
    out
}

/// The forward steps that can have written to the cluster: those done, and the current one
/// once it has begun.
fn reached_steps(record: &RolloutState) -> &[Step] {
    let steps = &record.plan.steps;
    let done = record.current_step.min(steps.len());
    let begun = done < steps.len() && record.step_started_at.is_some();
    &steps[..done + usize::from(begun)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::duration::HumanDuration;
    use crate::model::plan::{Plan, PodManagementPolicy};
    use crate::model::state::{Revision, Stable};
    use crate::model::strategy::{OnFailure, PauseSpec, StrategyConfig, StrategyFlags, Timeouts};
    use crate::model::twin::{DataMode, LiveService, Twin, TwinRole};
    use k8s_openapi::jiff::Timestamp;
    use std::collections::BTreeMap;

    fn record(kind: StrategyKind, steps: Vec<Step>, twin: Option<Twin>) -> RolloutState {
        let flags = StrategyFlags {
            weight: (kind == StrategyKind::Canary)
                .then(|| crate::model::weight::Percent::new(20).ok())
                .flatten(),
            ..StrategyFlags::default()
        };
        let config = StrategyConfig::new(
            kind,
            &flags,
            crate::model::gate::GateSpec::default(),
            Timeouts::default(),
            OnFailure::Rollback,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let plan = Plan {
            statefulset: "web".into(),
            strategy: kind,
            replicas: 3,
            ordinal_start: 0,
            pod_management_policy: PodManagementPolicy::Parallel,
            steps,
            notes: vec![],
        };
        let mut r = RolloutState::new(
            "r".into(),
            config,
            plan,
            Stable::default(),
            Revision::default(),
            "me".into(),
            Timestamp::UNIX_EPOCH,
        );
        r.twin = twin;
        r
    }

    fn twin(role: TwinRole, set: &str, preview: bool) -> Twin {
        let selector = |k: &str| BTreeMap::from([("app".to_string(), k.to_string())]);
        Twin {
            role,
            set: set.into(),
            home: "web".into(),
            services: vec![LiveService {
                name: "web".into(),
                original: selector("web"),
                blue: selector("blue"),
                green: selector("green"),
            }],
            preview: preview.then(|| "web-preview".to_string()),
            data: DataMode::Fresh,
            keep_data: false,
            template: serde_json::Value::Null,
        }
    }

    /// The rollback of `r` failing at step `at` (0-based), begun or not, as step names.
    fn rollback_at(r: &RolloutState, at: usize, begun: bool, switched: bool) -> Vec<String> {
        let mut r = r.clone();
        r.current_step = at;
        r.step_started_at = begun.then_some(Timestamp::UNIX_EPOCH);
        if switched {
            r.measured.switched_at = Some(Timestamp::UNIX_EPOCH);
        }
        plan_rollback(&r)
            .iter()
            .map(|s| match s {
                Step::Scale { set, replicas } => format!("scale {set} {replicas}"),
                Step::RemoveTwin { set } => format!("remove {set}"),
                other => other.name().to_string(),
            })
            .collect()
    }

    fn partition_steps() -> Vec<Step> {
        vec![
            Step::SetTemplateAndFreeze { partition: 3 },
            Step::SetPartition {
                partition: 2,
                ordinals: vec![2],
                updated: 1,
                weight: None,
            },
            Step::gate(vec![2]),
            Step::Pause {
                wait: PauseSpec::UntilPromote,
            },
            Step::SetPartition {
                partition: 0,
                ordinals: vec![1, 0],
                updated: 3,
                weight: None,
            },
            Step::gate(vec![1, 0]),
        ]
    }

    #[test]
    fn partition_strategies_go_back_once_the_template_may_have_changed() {
        let back = ["restore-template", "replace-stuck"];
        for kind in [
            StrategyKind::Rolling,
            StrategyKind::Ramped,
            StrategyKind::Canary,
        ] {
            let r = record(kind, partition_steps(), None);
            // (failing step, begun, expected)
            let cases: [(usize, bool, &[&str]); 8] = [
                (0, false, &[]),
                (0, true, &back),
                (1, false, &back),
                (1, true, &back),
                (2, true, &back),
                (3, false, &back),
                (5, true, &back),
                // Past the last step (an undo of a finished rollout).
                (6, false, &back),
            ];
            for (at, begun, expected) in cases {
                assert_eq!(
                    rollback_at(&r, at, begun, false),
                    expected,
                    "{kind} failing at step {} (begun: {begun})",
                    at + 1
                );
            }
        }
    }

    #[test]
    fn recreate_only_scales_back_up_while_the_template_is_unchanged() {
        let steps = vec![
            Step::Scale {
                set: "web".into(),
                replicas: 0,
            },
            Step::SetTemplate,
            Step::Scale {
                set: "web".into(),
                replicas: 3,
            },
            Step::gate(vec![2, 1, 0]),
        ];
        let r = record(StrategyKind::Recreate, steps, None);
        let full = ["scale web 0", "restore-template", "scale web 3"];
        let cases: [(usize, bool, &[&str]); 7] = [
            (0, false, &[]),
            // A pod that would not stop: only back up, never to 0 again.
            (0, true, &["scale web 3"]),
            (1, false, &["scale web 3"]),
            (1, true, &full),
            (2, false, &full),
            (2, true, &full),
            (3, true, &full),
        ];
        for (at, begun, expected) in cases {
            assert_eq!(
                rollback_at(&r, at, begun, false),
                expected,
                "recreate failing at step {} (begun: {begun})",
                at + 1
            );
        }
    }

    fn bluegreen_steps() -> Vec<Step> {
        vec![
            Step::PinTraffic,
            Step::CreateTwin {
                set: "web-bg1".into(),
                replicas: 3,
            },
            Step::Gate {
                ordinals: vec![0, 1, 2],
                set: Some("web-bg1".into()),
            },
            Step::GateService {
                service: "web-preview".into(),
            },
            Step::Pause {
                wait: PauseSpec::UntilPromote,
            },
            Step::SwitchTraffic,
            Step::GateService {
                service: "web".into(),
            },
            Step::Pause {
                wait: PauseSpec::For(HumanDuration::from_secs(30)),
            },
            Step::Scale {
                set: "web".into(),
                replicas: 0,
            },
        ]
    }

    #[test]
    fn bluegreen_removes_green_before_the_switch_and_keeps_it_after() {
        let r = record(
            StrategyKind::BlueGreen,
            bluegreen_steps(),
            Some(twin(TwinRole::Green, "web-bg1", true)),
        );
        let before_create = ["scale web 3", "restore-selectors"];
        let never_served = ["scale web 3", "remove web-bg1", "restore-selectors"];
        let served = [
            "scale web 3",
            "return-traffic",
            "scale web-bg1 0",
            "remove-preview",
            "restore-selectors",
        ];
        // (failing step, begun, switched, expected)
        let cases: [(usize, bool, bool, &[&str]); 10] = [
            (0, false, false, &["scale web 3"]),
            (0, true, false, &before_create),
            (1, false, false, &before_create),
            (1, true, false, &never_served),
            (3, true, false, &never_served),
            (4, false, false, &never_served),
            // The switch records `switchedAt` before its write: from then on green may have
            // served, and its data is kept.
            (5, true, true, &served),
            (6, true, true, &served),
            (8, true, true, &served),
            // `undo` of a finished blue/green.
            (9, false, true, &served),
        ];
        for (at, begun, switched, expected) in cases {
            assert_eq!(
                rollback_at(&r, at, begun, switched),
                expected,
                "blue/green failing at step {} (begun: {begun}, switched: {switched})",
                at + 1
            );
        }
    }

    #[test]
    fn bluegreen_without_a_preview_or_pins_has_less_to_undo() {
        let mut steps = bluegreen_steps();
        steps.remove(0);
        let mut t = twin(TwinRole::Green, "web-bg1", false);
        t.services[0].blue = t.services[0].original.clone();
        let r = record(StrategyKind::BlueGreen, steps, Some(t));
        assert_eq!(
            rollback_at(&r, 1, true, false),
            ["scale web 3", "remove web-bg1"]
        );
        assert_eq!(
            rollback_at(&r, 5, true, true),
            [
                "scale web 3",
                "return-traffic",
                "scale web-bg1 0",
                "restore-selectors"
            ]
        );
    }

    #[test]
    fn a_held_blue_is_released_last_and_its_template_restored_after_drift() {
        let mut steps = bluegreen_steps();
        steps.insert(0, Step::HoldRevision { partition: 3 });
        steps.push(Step::ReleaseRevision);
        let mut r = record(
            StrategyKind::BlueGreen,
            steps,
            Some(twin(TwinRole::Green, "web-bg1", true)),
        );
        assert_eq!(rollback_at(&r, 0, false, false), ["scale web 3"]);
        assert_eq!(
            rollback_at(&r, 0, true, false),
            ["scale web 3", "release-revision"]
        );
        assert_eq!(
            rollback_at(&r, 5, false, false),
            [
                "scale web 3",
                "remove web-bg1",
                "restore-selectors",
                "release-revision"
            ]
        );
        r.drift = Some(crate::model::drift::Drift {
            changes: vec![crate::model::drift::Change::Template {
                set: "web".into(),
                expected_revision: Some("web-1".into()),
                found_revision: Some("web-2".into()),
                images: vec![],
            }],
            by: None,
        });
        assert_eq!(
            rollback_at(&r, 5, false, false),
            [
                "restore-template",
                "replace-stuck",
                "scale web 3",
                "remove web-bg1",
                "restore-selectors",
                "release-revision"
            ]
        );
    }

    #[test]
    fn shadow_removes_the_shadow_and_restores_a_promoted_set() {
        let mut steps = vec![
            Step::CreateTwin {
                set: "web-shadow".into(),
                replicas: 1,
            },
            Step::Gate {
                ordinals: vec![0],
                set: Some("web-shadow".into()),
            },
            Step::Compare {
                set: "web-shadow".into(),
            },
            Step::RemoveTwin {
                set: "web-shadow".into(),
            },
        ];
        let r = record(
            StrategyKind::Shadow,
            steps.clone(),
            Some(twin(TwinRole::Shadow, "web-shadow", false)),
        );
        assert_eq!(rollback_at(&r, 0, false, false), Vec::<String>::new());
        assert_eq!(rollback_at(&r, 0, true, false), ["remove web-shadow"]);
        assert_eq!(rollback_at(&r, 2, true, false), ["remove web-shadow"]);
        // `promote --then rolling` appended a partition rollout of the real set.
        steps.extend(partition_steps());
        let r = record(
            StrategyKind::Shadow,
            steps,
            Some(twin(TwinRole::Shadow, "web-shadow", false)),
        );
        assert_eq!(rollback_at(&r, 4, false, false), ["remove web-shadow"]);
        assert_eq!(
            rollback_at(&r, 4, true, false),
            ["restore-template", "replace-stuck", "remove web-shadow"]
        );
        assert_eq!(
            rollback_at(&r, 6, true, false),
            ["restore-template", "replace-stuck", "remove web-shadow"]
        );
    }

    #[test]
    fn the_way_back_is_listed_for_runs_of_steps() {
        let r = record(
            StrategyKind::BlueGreen,
            bluegreen_steps(),
            Some(twin(TwinRole::Green, "web-bg1", true)),
        );
        let runs: Vec<(usize, usize, usize)> = rollback_by_step(&r)
            .iter()
            .map(|a| (a.from_step, a.to_step, a.steps.len()))
            .collect();
        // Pin; green created (never served) up to the hold; switched.
        assert_eq!(runs, [(1, 1, 2), (2, 5, 3), (6, 9, 5)]);
        let r = record(StrategyKind::Rolling, partition_steps(), None);
        let runs: Vec<(usize, usize, usize)> = rollback_by_step(&r)
            .iter()
            .map(|a| (a.from_step, a.to_step, a.steps.len()))
            .collect();
        assert_eq!(runs, [(1, 6, 2)]);
    }

    fn template_drift(by: Option<&str>) -> crate::model::drift::Drift {
        crate::model::drift::Drift {
            changes: vec![crate::model::drift::Change::Template {
                set: "web".into(),
                expected_revision: Some("web-1".into()),
                found_revision: Some("web-2".into()),
                images: vec![],
            }],
            by: by.map(|m| crate::model::drift::Writer {
                manager: m.into(),
                operation: Some("Apply".into()),
                time: None,
            }),
        }
    }

    /// The release of `r` stopped by drift at step `at` (0-based), begun or not, as step names.
    fn release_at(r: &RolloutState, at: usize, begun: bool, switched: bool) -> Vec<String> {
        let mut r = r.clone();
        r.current_step = at;
        r.step_started_at = begun.then_some(Timestamp::UNIX_EPOCH);
        if switched {
            r.measured.switched_at = Some(Timestamp::UNIX_EPOCH);
        }
        r.phase = crate::model::state::Phase::Failed;
        r.drift = Some(template_drift(Some("helm")));
        plan_release(&r)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|s| match s {
                Step::Scale { set, replicas } => format!("scale {set} {replicas}"),
                Step::RemoveTwin { set } => format!("remove {set}"),
                other => other.name().to_string(),
            })
            .collect()
    }

    #[test]
    fn release_of_a_partition_rollout_gives_back_the_partition_and_never_the_template() {
        for kind in [
            StrategyKind::Rolling,
            StrategyKind::Ramped,
            StrategyKind::Canary,
        ] {
            let r = record(kind, partition_steps(), None);
            let cases: [(usize, bool, &[&str]); 7] = [
                (0, false, &[]),
                (0, true, &["release-revision"]),
                (1, false, &["release-revision"]),
                (2, true, &["release-revision"]),
                // Held at the canary's pause, where the e2e test drifts it.
                (3, false, &["release-revision"]),
                (4, true, &["release-revision"]),
                (5, true, &["release-revision"]),
            ];
            for (at, begun, expected) in cases {
                assert_eq!(
                    release_at(&r, at, begun, false),
                    expected,
                    "{kind} stopped at step {} (begun: {begun})",
                    at + 1
                );
                let back = rollback_at(&r, at, begun, false);
                assert!(
                    !release_at(&r, at, begun, false)
                        .iter()
                        .any(|s| s == "restore-template" || s == "replace-stuck"),
                    "{kind}: the release never puts the stable template back (rollback: {back:?})"
                );
            }
        }
    }

    fn route_steps() -> Vec<Step> {
        let pct = |v| {
            crate::model::weight::Percent::new(v).unwrap_or(crate::model::weight::Percent::HUNDRED)
        };
        vec![
            Step::SetTemplateAndFreeze { partition: 3 },
            Step::CreateRevisionServices,
            Step::SetPartition {
                partition: 2,
                ordinals: vec![2],
                updated: 1,
                weight: None,
            },
            Step::gate(vec![2]),
            Step::SetRouteWeights {
                canary_percent: pct(5),
                pods: 1,
            },
            Step::Pause {
                wait: PauseSpec::UntilPromote,
            },
            Step::SetRouteWeights {
                canary_percent: pct(100),
                pods: 1,
            },
            Step::SetPartition {
                partition: 0,
                ordinals: vec![1, 0],
                updated: 3,
                weight: None,
            },
            Step::gate(vec![1, 0]),
            Step::RestoreRoute,
            Step::RemoveRevisionServices,
        ]
    }

    #[test]
    fn a_route_canary_sends_everything_to_stable_first_and_gives_the_route_back() {
        let r = record(StrategyKind::Canary, route_steps(), None);
        let undo = ["restore-template", "replace-stuck"];
        let to_stable = [
            "route-weights",
            "restore-template",
            "replace-stuck",
            "restore-route",
            "remove-revision-services",
        ];
        let cases: Vec<(usize, bool, Vec<&str>)> = vec![
            (0, true, undo.to_vec()),
            // The Services exist (maybe) but no route was written.
            (1, true, [&undo[..], &["remove-revision-services"]].concat()),
            (3, true, [&undo[..], &["remove-revision-services"]].concat()),
            // A route write may have landed: every request to stable before the pods go back.
            (4, true, to_stable.to_vec()),
            (5, false, to_stable.to_vec()),
            (8, true, to_stable.to_vec()),
            // The route already has its own rules back: written again after the pods.
            (
                9,
                true,
                [&undo[..], &["restore-route", "remove-revision-services"]].concat(),
            ),
            (
                10,
                true,
                [&undo[..], &["restore-route", "remove-revision-services"]].concat(),
            ),
        ];
        for (at, begun, expected) in cases {
            assert_eq!(
                rollback_at(&r, at, begun, false),
                expected,
                "failed at step {}",
                at + 1
            );
        }
        assert_eq!(
            release_at(&r, 5, false, false),
            [
                "restore-route",
                "remove-revision-services",
                "release-revision"
            ]
        );
        assert_eq!(
            release_at(&r, 2, false, false),
            ["remove-revision-services", "release-revision"]
        );
    }

    #[test]
    fn release_of_a_recreate_scales_back_up_on_the_template_as_it_is() {
        let steps = vec![
            Step::Scale {
                set: "web".into(),
                replicas: 0,
            },
            Step::SetTemplate,
            Step::Scale {
                set: "web".into(),
                replicas: 3,
            },
            Step::gate(vec![2, 1, 0]),
        ];
        let r = record(StrategyKind::Recreate, steps, None);
        let cases: [(usize, bool, &[&str]); 6] = [
            (0, false, &[]),
            (0, true, &["scale web 3"]),
            (1, false, &["scale web 3"]),
            (1, true, &["release-revision", "scale web 3"]),
            (2, true, &["release-revision", "scale web 3"]),
            (3, true, &["release-revision", "scale web 3"]),
        ];
        for (at, begun, expected) in cases {
            assert_eq!(
                release_at(&r, at, begun, false),
                expected,
                "recreate stopped at step {} (begun: {begun})",
                at + 1
            );
        }
    }

    #[test]
    fn release_keeps_the_replicas_the_other_deploy_set() {
        let steps = vec![
            Step::Scale {
                set: "web".into(),
                replicas: 0,
            },
            Step::SetTemplate,
        ];
        let mut r = record(StrategyKind::Recreate, steps, None);
        r.current_step = 1;
        r.phase = crate::model::state::Phase::Failed;
        r.drift = Some(crate::model::drift::Drift {
            changes: vec![crate::model::drift::Change::Replicas {
                set: "web".into(),
                expected: 0,
                found: 5,
            }],
            by: None,
        });
        assert_eq!(
            plan_release(&r),
            Ok(vec![Step::Scale {
                set: "web".into(),
                replicas: 5
            }])
        );
    }

    #[test]
    fn release_of_a_bluegreen_removes_a_green_that_never_served_and_unpins_blue() {
        let mut steps = bluegreen_steps();
        steps.insert(0, Step::HoldRevision { partition: 3 });
        steps.push(Step::ReleaseRevision);
        let r = record(
            StrategyKind::BlueGreen,
            steps,
            Some(twin(TwinRole::Green, "web-bg1", true)),
        );
        let never_served = ["remove web-bg1", "restore-selectors", "release-revision"];
        let served = [
            "release-revision",
            "scale web 3",
            "return-traffic",
            "scale web-bg1 0",
            "remove-preview",
            "restore-selectors",
        ];
        // Steps: 1 hold, 2 pin, 3 create, 4 gate, 5 gate-service, 6 pause, 7 switch, ...
        let cases: [(usize, bool, bool, &[&str]); 8] = [
            (0, false, false, &[]),
            (0, true, false, &["release-revision"]),
            (1, true, false, &["restore-selectors", "release-revision"]),
            (2, true, false, &never_served),
            // Held before its switch, where the e2e test restarts blue.
            (5, false, false, &never_served),
            (6, true, true, &served),
            (9, true, true, &served),
            (10, false, true, &served),
        ];
        for (at, begun, switched, expected) in cases {
            assert_eq!(
                release_at(&r, at, begun, switched),
                expected,
                "blue/green stopped at step {} (begun: {begun}, switched: {switched})",
                at + 1
            );
        }
    }

    #[test]
    fn release_of_a_bluegreen_without_pins_only_removes_or_scales_green() {
        let mut steps = bluegreen_steps();
        steps.remove(0);
        let mut t = twin(TwinRole::Green, "web-bg1", false);
        t.services[0].blue = t.services[0].original.clone();
        let r = record(StrategyKind::BlueGreen, steps, Some(t));
        assert_eq!(release_at(&r, 1, true, false), ["remove web-bg1"]);
        assert_eq!(
            release_at(&r, 5, true, true),
            [
                "scale web 3",
                "return-traffic",
                "scale web-bg1 0",
                "restore-selectors"
            ]
        );
    }

    #[test]
    fn release_of_a_shadow_removes_it_and_gives_back_a_promoted_partition() {
        let mut steps = vec![
            Step::CreateTwin {
                set: "web-shadow".into(),
                replicas: 1,
            },
            Step::Compare {
                set: "web-shadow".into(),
            },
            Step::RemoveTwin {
                set: "web-shadow".into(),
            },
        ];
        let shadow = || Some(twin(TwinRole::Shadow, "web-shadow", false));
        let r = record(StrategyKind::Shadow, steps.clone(), shadow());
        assert_eq!(release_at(&r, 0, false, false), Vec::<String>::new());
        assert_eq!(release_at(&r, 1, true, false), ["remove web-shadow"]);
        steps.extend(partition_steps());
        let r = record(StrategyKind::Shadow, steps, shadow());
        assert_eq!(
            release_at(&r, 5, true, false),
            ["remove web-shadow", "release-revision"]
        );
    }

    #[test]
    fn bluegreen_through_a_route_gives_the_route_back_after_the_services_return_to_blue() {
        let steps = vec![
            Step::PinTraffic,
            Step::CreateTwin {
                set: "web-bg1".into(),
                replicas: 3,
            },
            Step::PreviewRoute,
            Step::Pause {
                wait: PauseSpec::UntilPromote,
            },
            Step::SwitchRoute,
            Step::SwitchTraffic,
            Step::RestoreRoute,
            Step::RemovePreview,
            Step::Scale {
                set: "web".into(),
                replicas: 0,
            },
        ];
        let r = record(
            StrategyKind::BlueGreen,
            steps,
            Some(twin(TwinRole::Green, "web-bg1", true)),
        );
        let served = [
            "scale web 3",
            "return-traffic",
            "restore-route",
            "scale web-bg1 0",
            "remove-preview",
            "restore-selectors",
        ];
        // (failing step, begun, switched, expected)
        let cases: Vec<(usize, bool, bool, Vec<&str>)> = vec![
            (
                1,
                true,
                false,
                vec!["scale web 3", "remove web-bg1", "restore-selectors"],
            ),
            // The preview header leaves the route before green's Service goes.
            (
                2,
                true,
                false,
                vec![
                    "scale web 3",
                    "restore-route",
                    "remove web-bg1",
                    "restore-selectors",
                ],
            ),
            (
                3,
                false,
                false,
                vec![
                    "scale web 3",
                    "restore-route",
                    "remove web-bg1",
                    "restore-selectors",
                ],
            ),
            // The route's switch records `switchedAt` before its write.
            (4, true, true, served.to_vec()),
            (5, true, true, served.to_vec()),
            (6, false, true, served.to_vec()),
            (7, true, true, served.to_vec()),
            // `undo` of a finished blue/green through a route.
            (9, false, true, served.to_vec()),
        ];
        for (at, begun, switched, expected) in cases {
            assert_eq!(
                rollback_at(&r, at, begun, switched),
                expected,
                "failing at step {} (begun: {begun}, switched: {switched})",
                at + 1
            );
        }
        // A release gives the route back too: after the switch once the Services are on
        // blue, before it ahead of green's removal.
        assert_eq!(
            release_at(&r, 5, true, true),
            [
                "scale web 3",
                "return-traffic",
                "restore-route",
                "scale web-bg1 0",
                "remove-preview",
                "restore-selectors"
            ]
        );
        assert_eq!(
            release_at(&r, 2, true, false),
            ["restore-route", "remove web-bg1", "restore-selectors"]
        );
    }

    #[test]
    fn a_mirrored_shadow_gives_the_route_back_before_the_shadow_goes() {
        let steps = vec![
            Step::CreateTwin {
                set: "web-shadow".into(),
                replicas: 1,
            },
            Step::MirrorRoute { percent: None },
            Step::Compare {
                set: "web-shadow".into(),
            },
            Step::RestoreRoute,
            Step::RemoveTwin {
                set: "web-shadow".into(),
            },
        ];
        let shadow = || {
            let mut t = twin(TwinRole::Shadow, "web-shadow", false);
            t.preview = Some("web-preview".into());
            Some(t)
        };
        let r = record(StrategyKind::Shadow, steps, shadow());
        let cases: Vec<(usize, bool, Vec<&str>)> = vec![
            (0, true, vec!["remove web-shadow"]),
            // The mirror write may have landed: the route first, then the shadow.
            (1, true, vec!["restore-route", "remove web-shadow"]),
            (2, true, vec!["restore-route", "remove web-shadow"]),
            (3, false, vec!["restore-route", "remove web-shadow"]),
            (4, true, vec!["restore-route", "remove web-shadow"]),
        ];
        for (at, begun, expected) in cases {
            assert_eq!(rollback_at(&r, at, begun, false), expected, "at {at}");
        }
        assert_eq!(
            release_at(&r, 2, true, false),
            ["restore-route", "remove web-shadow"]
        );
    }

    #[test]
    fn release_is_refused_without_drift_saying_what_to_use_instead() {
        let mut r = record(StrategyKind::Canary, partition_steps(), None);
        r.current_step = 3;
        r.phase = crate::model::state::Phase::Paused;
        let refused = plan_release(&r).err().map(|e| e.to_string());
        let text = refused.unwrap_or_default();
        assert!(
            text.contains("not stopped by someone else's deploy (it is Paused)"),
            "{text}"
        );
        assert!(text.contains("`rollout abort web`"), "{text}");
        assert!(text.contains("`rollout promote web --full`"), "{text}");
        // Failed by a gate (`--no-rollback`), no drift: refused too.
        r.phase = crate::model::state::Phase::Failed;
        assert!(matches!(
            plan_release(&r),
            Err(ReleaseRefused::NoDrift { .. })
        ));
        // Drift recorded but the rollout was then aborted: over.
        r.phase = crate::model::state::Phase::Aborted;
        r.drift = Some(template_drift(None));
        let text = plan_release(&r)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(text.contains("`rollout undo web`"), "{text}");
        // A lost record holds nothing.
        r.phase = crate::model::state::Phase::Failed;
        r.drift = Some(crate::model::drift::Drift {
            changes: vec![crate::model::drift::Change::RecordRemoved],
            by: None,
        });
        assert!(matches!(
            plan_release(&r),
            Err(ReleaseRefused::RecordLost { .. })
        ));
    }

    #[test]
    fn a_record_without_its_twin_has_nothing_of_a_twin_to_undo() {
        let r = record(StrategyKind::BlueGreen, bluegreen_steps(), None);
        assert_eq!(rollback_at(&r, 5, true, true), Vec::<String>::new());
    }
}
