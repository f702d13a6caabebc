//! Drift, judged: has someone else (a `kubectl apply`, a `helm upgrade`, a GitOps sync, a
//! `kubectl patch`) changed the rollout's own StatefulSet in the middle of a rollout, and who?
//!
//! Each question compares the set with what the record says it should hold at the current step:
//! the template (the stable one before the rollout's template step, the target after it; the
//! stable one all along for blue/green and shadow, whose new version runs in another set), the
//! partition (the value the last partition step wrote, or the current step's), the replicas
//! where the plan does not re-plan around them, and the record itself. Who made a change is read
//! from `metadata.managedFields`: the latest field manager other than rollout's that owns the
//! changed field.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::{partition, replicas};
use crate::model::drift::{Change, Drift, ImageDrift, Writer, FIELD_MANAGER};
use crate::model::plan::Step;
use crate::model::route::{rules_fingerprint, HttpRoute};
use crate::model::state::{Phase, Revision, RolloutState};

/// `metadata.managedFields` paths of the fields drift is about.
pub const TEMPLATE_FIELD: &[&str] = &["f:spec", "f:template"];
pub const PARTITION_FIELD: &[&str] = &[
    "f:spec",
    "f:updateStrategy",
    "f:rollingUpdate",
    "f:partition",
];
pub const REPLICAS_FIELD: &[&str] = &["f:spec", "f:replicas"];
/// The HTTPRoute's rules, the only part of it a rollout writes.
pub const ROUTE_FIELD: &[&str] = &["f:spec", "f:rules"];

/// Only a rollout that is under way owns the set; a rollback writes the stable template and
/// partition itself, and a finished one owns nothing.
fn watched(record: &RolloutState) -> bool {
    matches!(record.phase, Phase::Progressing | Phase::Paused)
}

/// The current step has begun (its write may have landed).
fn current_begun(record: &RolloutState) -> bool {
    record.phase == Phase::Progressing && record.step_started_at.is_some()
}

fn done_steps(record: &RolloutState) -> &[Step] {
    let steps = &record.plan.steps;
    &steps[..record.current_step.min(steps.len())]
}

/// The revision the rollout's own set should have at the current step; `None` while the step
/// that writes the new template is under way (either may be seen).
pub fn expected_template(record: &RolloutState) -> Option<&Revision> {
    let writes = |s: &Step| matches!(s, Step::SetTemplateAndFreeze { .. } | Step::SetTemplate);
    match record.plan.steps.iter().position(writes) {
        // A partition plan made again after a scale starts with the template in place.
        None if record.plan.strategy.uses_partition() => Some(&record.target),
        None => Some(&record.stable.revision),
        Some(at) if record.current_step > at => Some(&record.target),
        Some(at) if record.current_step == at && current_begun(record) => None,
        Some(_) => Some(&record.stable.revision),
    }
}

fn image_of(spec: &PodSpec, container: &str) -> Option<String> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)
        .map(|c| c.image.clone().unwrap_or_default())
}

/// The pod template of the rollout's own set, when it is not the one the record expects: an
/// image differs, or (once the controller has seen the latest spec) the update revision does.
pub fn template_changed(record: &RolloutState, sts: &StatefulSet) -> Option<Change> {
    if !watched(record) {
        return None;
    }
    let expected = expected_template(record)?;
    let spec = sts.spec.as_ref()?.template.spec.as_ref()?;
    let images: Vec<ImageDrift> = expected
        .images
        .iter()
        .filter_map(|want| {
            let found = image_of(spec, &want.container).unwrap_or_default();
            (found != want.image).then(|| ImageDrift {
                container: want.container.clone(),
                expected: want.image.clone(),
                found,
            })
        })
        .collect();
    let status = sts.status.as_ref();
    let seen = status.and_then(|s| s.observed_generation).unwrap_or(0)
        >= sts.metadata.generation.unwrap_or(0);
    let found_revision = status
        .and_then(|s| s.update_revision.clone())
        .filter(|_| seen);
    let other_revision = matches!(
        (&expected.revision, &found_revision),
        (Some(want), Some(found)) if want != found
    );
    (!images.is_empty() || other_revision).then(|| Change::Template {
        set: record.plan.statefulset.clone(),
        expected_revision: expected.revision.clone(),
        found_revision,
        images,
    })
}

/// The partition a step writes to the rollout's own set (0 for none).
fn partition_written(record: &RolloutState, step: &Step) -> Option<u32> {
    match step {
        Step::SetTemplateAndFreeze { partition }
        | Step::SetPartition { partition, .. }
        | Step::HoldRevision { partition } => Some(*partition),
        Step::SetTemplate => Some(0),
        Step::ReleaseRevision => Some(record.stable.partition.unwrap_or(0)),
        _ => None,
    }
}

/// The partition values the rollout's own set may have at the current step: the one the last
/// partition step wrote (for a plan made again after a scale, the one its first step lowers
/// from), and the current step's once it has begun. Empty while the rollout has not touched the
/// partition yet.
pub fn expected_partitions(record: &RolloutState) -> Vec<u32> {
    let before = done_steps(record)
        .iter()
        .rev()
        .find_map(|s| partition_written(record, s))
        .or_else(|| {
            let first = record
                .remaining()
                .iter()
                .find(|s| partition_written(record, s).is_some())?;
            match first {
                Step::SetPartition {
                    partition,
                    ordinals,
                    ..
                } => u32::try_from(ordinals.len())
                    .ok()
                    .and_then(|n| partition.checked_add(n)),
                _ => None,
            }
        });
    let current = record
        .current()
        .filter(|_| current_begun(record))
        .and_then(|s| partition_written(record, s));
    before.into_iter().chain(current).collect()
}

/// The partition of the rollout's own set, when it is none of [`expected_partitions`].
pub fn partition_changed(record: &RolloutState, sts: &StatefulSet) -> Option<Change> {
    if !watched(record) {
        return None;
    }
    let accepted = expected_partitions(record);
    let expected = *accepted.first()?;
    let found = partition(sts).unwrap_or(0);
    (!accepted.contains(&found)).then(|| Change::Partition {
        set: record.plan.statefulset.clone(),
        expected,
        found,
    })
}

/// The replicas of the rollout's own set, when the plan depends on them and they are not what
/// it says. Partition plans are planned again around a scale (`reconcile`), so only the
/// strategies that scale sets themselves (blue/green, shadow, recreate) are judged.
pub fn replicas_changed(record: &RolloutState, sts: &StatefulSet) -> Option<Change> {
    if !watched(record) || record.plan.strategy.uses_partition() {
        return None;
    }
    let own = &record.plan.statefulset;
    let scale_of = |s: &Step| match s {
        Step::Scale { set, replicas } if set == own => Some(*replicas),
        _ => None,
    };
    let expected = done_steps(record)
        .iter()
        .rev()
        .find_map(scale_of)
        .unwrap_or(record.plan.replicas);
    let current = record
        .current()
        .filter(|_| current_begun(record))
        .and_then(scale_of);
    let found = replicas(sts);
    (found != expected && Some(found) != current).then(|| Change::Replicas {
        set: own.clone(),
        expected,
        found,
    })
}

/// The record annotation as it is now (`text`, empty when absent), when it is no longer this
/// rollout's: removed, or another rollout's. A text that does not parse is not judged here.
pub fn record_changed(record: &RolloutState, text: &str) -> Option<Change> {
    if text.trim().is_empty() {
        return Some(Change::RecordRemoved);
    }
    let other = RolloutState::from_annotation(&record.plan.statefulset, text).ok()?;
    (other.id != record.id).then_some(Change::RecordReplaced { id: other.id })
}

/// Whether `fields` (a `fieldsV1` object) holds `path` or anything below it.
fn owns(fields: &serde_json::Value, path: &[&str]) -> bool {
    match path.split_first() {
        None => true,
        Some((first, rest)) => fields.get(*first).is_some_and(|f| owns(f, rest)),
    }
}

/// The latest field manager other than rollout's that owns one of `paths` (any field when
/// `paths` is empty), by `metadata.managedFields`.
pub fn writer_of(meta: &ObjectMeta, paths: &[&[&str]]) -> Option<Writer> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|e| e.manager.as_deref().is_some_and(|m| m != FIELD_MANAGER))
        .filter(|e| {
            paths.is_empty()
                || e.fields_v1
                    .as_ref()
                    .is_some_and(|f| paths.iter().any(|p| owns(&f.0, p)))
        })
        .max_by_key(|e| e.time.as_ref().map(|t| t.0))
        .map(|e| Writer {
            manager: e.manager.clone().unwrap_or_default(),
            operation: e.operation.clone(),
            time: e.time.as_ref().map(|t| t.0),
        })
}

/// The managedFields paths of a change.
fn field_of(change: &Change) -> Option<&'static [&'static str]> {
    match change {
        Change::Template { .. } => Some(TEMPLATE_FIELD),
        Change::Partition { .. } => Some(PARTITION_FIELD),
        Change::Replicas { .. } => Some(REPLICAS_FIELD),
        Change::Route { .. } => Some(ROUTE_FIELD),
        Change::RecordRemoved | Change::RecordReplaced { .. } => None,
    }
}

/// `changes` with who made them.
pub fn attribute(sts: &StatefulSet, changes: Vec<Change>) -> Option<Drift> {
    attribute_on(&sts.metadata, changes)
}

/// `changes` of the object with `meta`, with who made them.
fn attribute_on(meta: &ObjectMeta, changes: Vec<Change>) -> Option<Drift> {
    if changes.is_empty() {
        return None;
    }
    let paths: Vec<&[&str]> = changes.iter().filter_map(field_of).collect();
    Some(Drift {
        by: writer_of(meta, &paths),
        changes,
    })
}

/// Whether the route of `record` is judged for drift now (it has one, under way): the route
/// need not be read otherwise.
pub fn route_watched(record: &RolloutState) -> bool {
    record.route.is_some() && watched(record)
}

/// Someone else's change to the rules of the HTTPRoute the rollout steers traffic through
/// (`route`, as read now; `None` once it is deleted, which the route gate judges), with who
/// made it: their fingerprint is not the one of the rules rollout last saw there. Judged only
/// while the rollout is under way (a rollback writes the route's own rules back over any
/// change), and not while a route step has begun: its write may have landed without its record
/// (a kill), and the step writes its rules again. Records of builds that kept no fingerprint
/// are not judged.
pub fn route_drift(record: &RolloutState, route: Option<&HttpRoute>) -> Option<Drift> {
    let kept = record.route.as_ref()?;
    let written = kept.rules_written.as_deref()?;
    let route = route?;
    if !watched(record) {
        return None;
    }
    let route_step_begun = current_begun(record)
        && record
            .plan
            .steps
            .get(record.current_step)
            .is_some_and(Step::writes_route);
    let rules = route.spec.get("rules").cloned().unwrap_or(Value::Null);
    if route_step_begun || rules_fingerprint(&rules) == written {
        return None;
    }
    attribute_on(
        &route.metadata,
        vec![Change::Route {
            route: kept.route.clone(),
            found: backends_of(&rules),
        }],
    )
}

/// Where `rules` send requests, in words: each rule's backends with their weights
/// (`web:80 weight 1; web-canary:80 weight 5`), rules apart by ` | `.
pub fn backends_of(rules: &Value) -> String {
    let Some(rules) = rules.as_array().filter(|r| !r.is_empty()) else {
        return "no rule".to_string();
    };
    rules
        .iter()
        .map(|rule| {
            let refs: Vec<String> = rule
                .get("backendRefs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|r| {
                    let name = r.get("name").and_then(Value::as_str).unwrap_or("?");
                    let port = r.get("port").map(|p| format!(":{p}")).unwrap_or_default();
                    let weight = r.get("weight").and_then(Value::as_i64).unwrap_or(1);
                    format!("{name}{port} weight {weight}")
                })
                .collect();
            if refs.is_empty() {
                "no backend".to_string()
            } else {
                refs.join(", ")
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Someone else's changes to the rollout's own set (template, partition, replicas), with who
/// made them; `None` when the set is as the record says it should be at this step.
pub fn detect(record: &RolloutState, sts: &StatefulSet) -> Option<Drift> {
    let changes: Vec<Change> = [
        template_changed(record, sts),
        partition_changed(record, sts),
        replicas_changed(record, sts),
    ]
    .into_iter()
    .flatten()
    .collect();
    attribute(sts, changes)
}

/// What to do about `drift` on `statefulset`, for the person reading the message.
pub fn advice(statefulset: &str, drift: &Drift) -> String {
    if drift.record_lost() {
        return format!(
            "stopped without writing the record back or changing anything more; `rollout status {statefulset}` shows the set as it is"
        );
    }
    let owner = if drift.changes_template() {
        "the other deploy now owns the pod template; "
    } else {
        ""
    };
    let route = drift
        .changes
        .iter()
        .find_map(|c| match c {
            Change::Route { route, .. } => Some(format!(
                "; both write the rules HTTPRoute {route} had before the rollout back, over that change"
            )),
            _ => None,
        })
        .unwrap_or_default();
    format!(
        "stopped without changing anything more and without rolling that change back; {owner}`rollout status {statefulset}` shows where the set stands; `rollout release {statefulset}` lets the other deploy have the set (rollout gives back what it holds and leaves the pod template as it is), `rollout abort {statefulset}` takes it back to the stable version{route}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::image::ContainerImage;
    use crate::model::strategy::StrategyKind;
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetStatus,
        StatefulSetUpdateStrategy,
    };
    use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        FieldsV1, ManagedFieldsEntry, ObjectMeta, Time,
    };
    use k8s_openapi::jiff::Timestamp;

    /// The sample rolling record (web, 2 replicas: freeze at 2, partition 1, gate, partition
    /// 0, gate; stable web-6c8f on time-app:v1, target time-app:v2) at `step`, begun or not.
    fn record(step: usize, begun: bool) -> RolloutState {
        let mut r = crate::model::state::tests::sample_state();
        r.current_step = step;
        r.step_started_at = begun.then_some(Timestamp::UNIX_EPOCH);
        if step > 0 {
            r.target.revision = Some("web-new".into());
        }
        r
    }

    /// The set `web` with `image`, `partition`, `replicas`, its controller at `update`.
    fn set(image: &str, partition: Option<i32>, replicas: i32, update: &str) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(5),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            image: Some(image.into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: partition.map(|p| RollingUpdateStatefulSetStrategy {
                        partition: Some(p),
                        max_unavailable: None,
                    }),
                }),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                observed_generation: Some(5),
                update_revision: Some(update.into()),
                ..Default::default()
            }),
        }
    }

    fn entry(
        manager: &str,
        op: &str,
        second: i64,
        fields: serde_json::Value,
    ) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(op.into()),
            time: Timestamp::from_second(second).ok().map(Time),
            fields_v1: Some(FieldsV1(fields)),
            fields_type: Some("FieldsV1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_template_expected_follows_the_template_step() {
        let want = |r: &RolloutState| expected_template(r).and_then(|t| t.revision.clone());
        assert_eq!(want(&record(0, false)).as_deref(), Some("web-6c8f"));
        assert_eq!(want(&record(0, true)), None, "being written: either");
        assert_eq!(want(&record(1, false)).as_deref(), Some("web-new"));
        assert_eq!(want(&record(4, true)).as_deref(), Some("web-new"));
        let mut bluegreen = record(3, false);
        bluegreen.plan.strategy = StrategyKind::BlueGreen;
        bluegreen.plan.steps = vec![Step::PinTraffic, Step::SwitchTraffic];
        assert_eq!(want(&bluegreen).as_deref(), Some("web-6c8f"), "blue stays");
        let mut replanned = record(0, false);
        replanned.target.revision = Some("web-new".into());
        replanned.plan.steps.remove(0);
        assert_eq!(want(&replanned).as_deref(), Some("web-new"));
    }

    #[test]
    fn a_template_changed_by_someone_else_is_told_apart_from_this_rollouts() {
        let cases: Vec<(&str, RolloutState, StatefulSet, bool)> = vec![
            (
                "on the target",
                record(2, false),
                set("time-app:v2", Some(1), 2, "web-new"),
                false,
            ),
            (
                "before the freeze, on stable",
                record(0, false),
                set("time-app:v1", None, 2, "web-6c8f"),
                false,
            ),
            (
                "freeze being written",
                record(0, true),
                set("time-app:v2", Some(2), 2, "web-new"),
                false,
            ),
            (
                "another image after the freeze",
                record(2, false),
                set("time-app:v3", Some(1), 2, "web-new"),
                true,
            ),
            (
                "another revision, same image",
                record(2, false),
                set("time-app:v2", Some(1), 2, "web-other"),
                true,
            ),
            (
                "another image before the freeze",
                record(0, false),
                set("time-app:v3", None, 2, "web-6c8f"),
                true,
            ),
        ];
        for (what, r, sts, drifted) in cases {
            assert_eq!(template_changed(&r, &sts).is_some(), drifted, "{what}");
        }
        let change = template_changed(&record(2, false), &set("time-app:v3", Some(1), 2, "web-x"));
        assert_eq!(
            change.map(|c| c.to_string()).as_deref(),
            Some("the pod template of web: image time-app:v2 -> time-app:v3 (container app)")
        );
    }

    #[test]
    fn a_revision_the_controller_has_not_computed_is_not_judged() {
        let mut sts = set("time-app:v2", Some(1), 2, "web-old");
        sts.metadata.generation = Some(6);
        assert_eq!(template_changed(&record(2, false), &sts), None);
    }

    #[test]
    fn nothing_is_drift_outside_a_rollout_under_way() {
        for phase in [
            Phase::RollingBack,
            Phase::Succeeded,
            Phase::Aborted,
            Phase::Failed,
        ] {
            let mut r = record(2, false);
            r.phase = phase;
            let sts = set("time-app:v9", Some(0), 7, "web-z");
            assert_eq!(detect(&r, &sts), None, "{phase}");
        }
    }

    #[test]
    fn partitions_expected_at_each_step() {
        let cases: Vec<(usize, bool, Vec<u32>)> = vec![
            (0, false, vec![]),
            (0, true, vec![2]),
            (1, false, vec![2]),
            (1, true, vec![2, 1]),
            (2, true, vec![1]),
            (3, true, vec![1, 0]),
            (5, false, vec![0]),
        ];
        for (step, begun, want) in cases {
            assert_eq!(
                expected_partitions(&record(step, begun)),
                want,
                "step {step} {begun}"
            );
        }
        let mut replanned = record(0, false);
        replanned.plan.steps = vec![
            Step::gate(vec![1]),
            Step::SetPartition {
                partition: 2,
                ordinals: vec![3, 2],
                updated: 2,
                weight: None,
            },
        ];
        assert_eq!(expected_partitions(&replanned), vec![4], "lowered from");
    }

    #[test]
    fn a_partition_written_by_someone_else_is_drift() {
        let cases = [
            ("the freeze's", record(2, false), Some(1), None),
            ("being lowered", record(3, true), Some(0), None),
            ("not ours yet", record(0, false), Some(7), None),
            ("patched to 0", record(2, false), Some(0), Some((1, 0))),
            ("removed", record(1, false), None, Some((2, 0))),
        ];
        for (what, r, p, want) in cases {
            let got = partition_changed(&r, &set("time-app:v2", p, 2, "web-new"));
            let got = got.map(|c| match c {
                Change::Partition {
                    expected, found, ..
                } => (expected, found),
                _ => (99, 99),
            });
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn hold_and_release_of_blue_set_the_partition_expected() {
        let mut r = record(0, false);
        r.plan.strategy = StrategyKind::BlueGreen;
        r.stable.partition = Some(1);
        r.plan.steps = vec![
            Step::HoldRevision { partition: 2 },
            Step::PinTraffic,
            Step::ReleaseRevision,
        ];
        assert_eq!(expected_partitions(&r), Vec::<u32>::new());
        r.current_step = 1;
        assert_eq!(expected_partitions(&r), vec![2]);
        r.current_step = 2;
        r.step_started_at = Some(Timestamp::UNIX_EPOCH);
        assert_eq!(expected_partitions(&r), vec![2, 1]);
    }

    #[test]
    fn replicas_matter_only_where_the_plan_scales_sets_itself() {
        let mut r = record(1, false);
        assert_eq!(
            replicas_changed(&r, &set("time-app:v2", Some(2), 5, "web-new")),
            None,
            "re-planned instead"
        );
        r.plan.strategy = StrategyKind::Recreate;
        r.plan.steps = vec![
            Step::Scale {
                set: "web".into(),
                replicas: 0,
            },
            Step::SetTemplate,
            Step::Scale {
                set: "web".into(),
                replicas: 2,
            },
        ];
        r.current_step = 0;
        r.step_started_at = Some(Timestamp::UNIX_EPOCH);
        let sts = |n| set("time-app:v1", None, n, "web-6c8f");
        assert_eq!(replicas_changed(&r, &sts(2)), None, "scaling down");
        assert_eq!(replicas_changed(&r, &sts(0)), None, "scaled down");
        r.current_step = 1;
        r.step_started_at = None;
        assert_eq!(replicas_changed(&r, &sts(0)), None);
        assert_eq!(
            replicas_changed(&r, &sts(3)),
            Some(Change::Replicas {
                set: "web".into(),
                expected: 0,
                found: 3
            })
        );
    }

    #[test]
    fn the_record_removed_or_replaced() {
        let r = record(2, false);
        assert_eq!(record_changed(&r, ""), Some(Change::RecordRemoved));
        let own = r.to_annotation().unwrap_or_default();
        assert_eq!(record_changed(&r, &own), None);
        let mut other = r.clone();
        other.id = "r-2".into();
        let text = other.to_annotation().unwrap_or_default();
        assert_eq!(
            record_changed(&r, &text),
            Some(Change::RecordReplaced { id: "r-2".into() })
        );
        assert_eq!(
            record_changed(&r, "{not json"),
            None,
            "validation is elsewhere"
        );
    }

    #[test]
    fn the_writer_is_the_latest_other_manager_owning_the_field() {
        let mut sts = set("time-app:v3", Some(1), 2, "web-x");
        let template = serde_json::json!({"f:spec": {"f:template": {"f:spec": {}}}});
        let partition = serde_json::json!({"f:spec": {"f:updateStrategy": {"f:rollingUpdate": {"f:partition": {}}}}});
        sts.metadata.managed_fields = Some(vec![
            entry("kubectl-client-side-apply", "Update", 100, template.clone()),
            entry(FIELD_MANAGER, "Update", 300, template.clone()),
            entry("helm", "Apply", 200, template),
            entry("kubectl-patch", "Update", 400, partition),
        ]);
        let name = |paths: &[&[&str]]| writer_of(&sts.metadata, paths).map(|w| w.manager);
        assert_eq!(name(&[TEMPLATE_FIELD]).as_deref(), Some("helm"));
        assert_eq!(name(&[PARTITION_FIELD]).as_deref(), Some("kubectl-patch"));
        assert_eq!(name(&[REPLICAS_FIELD]), None);
        assert_eq!(name(&[]).as_deref(), Some("kubectl-patch"), "any field");
        let drift = detect(&record(2, false), &sts);
        assert_eq!(
            drift.as_ref().map(ToString::to_string).as_deref(),
            Some("changed by someone else: the pod template of web: image time-app:v2 -> time-app:v3 (container app), by field manager helm (Apply) at 1970-01-01 00:03:20 UTC")
        );
    }

    #[test]
    fn init_container_images_count_too() {
        let mut r = record(2, false);
        r.target.images.push(ContainerImage {
            container: "init".into(),
            image: "busybox:2".into(),
        });
        let mut sts = set("time-app:v2", Some(1), 2, "web-new");
        if let Some(spec) = sts.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            spec.init_containers = Some(vec![Container {
                name: "init".into(),
                image: Some("busybox:1".into()),
                ..Default::default()
            }]);
        }
        assert!(template_changed(&r, &sts).is_some());
    }

    /// The sample record made a canary through HTTPRoute `web` at `step` (begun or not) of
    /// create Services, weights 20, gate, restore, whose last write left rules `written`.
    fn route_record(step: usize, begun: bool, written: &Value) -> RolloutState {
        let mut r = record(step, begun);
        r.plan.steps = vec![
            Step::CreateRevisionServices,
            Step::SetRouteWeights {
                canary_percent: crate::model::weight::Percent::new(20)
                    .unwrap_or_else(|e| panic!("{e}")),
                pods: 1,
            },
            Step::gate(vec![1]),
            Step::RestoreRoute,
        ];
        r.route = Some(Box::new(crate::model::route::RouteRecord {
            route: "web".into(),
            service: "web".into(),
            stable_service: "web-stable".into(),
            canary_service: "web-canary".into(),
            original_rules: serde_json::json!([{"backendRefs": [{"name": "web", "port": 80}]}]),
            canary_revision: None,
            canary_header: None,
            rules_written: Some(rules_fingerprint(written)),
        }));
        r
    }

    fn route(rules: Value, managers: Vec<ManagedFieldsEntry>) -> HttpRoute {
        HttpRoute {
            metadata: ObjectMeta {
                name: Some("web".into()),
                managed_fields: Some(managers),
                ..Default::default()
            },
            spec: serde_json::json!({"parentRefs": [{"name": "gw"}], "rules": rules}),
            status: None,
        }
    }

    #[test]
    fn route_rules_someone_else_wrote_are_drift_with_their_writer() {
        let weighted = serde_json::json!([{"backendRefs": [
            {"name": "web-stable", "port": 80, "weight": 80},
            {"name": "web-canary", "port": 80, "weight": 20},
        ]}]);
        let synced = serde_json::json!([{"backendRefs": [{"name": "web", "port": 80}]}]);
        let managers = vec![
            entry(
                "rollout",
                "Update",
                10,
                serde_json::json!({"f:spec": {"f:rules": {}}}),
            ),
            entry(
                "argocd-controller",
                "Apply",
                20,
                serde_json::json!({"f:spec": {"f:rules": {}}}),
            ),
            entry("gateway", "Update", 30, serde_json::json!({"f:status": {}})),
        ];
        // At the gate after the weights: rules as written are fine, a GitOps sync back to the
        // original rules is drift, by the manager that owns the rules (not the status writer).
        let r = route_record(2, false, &weighted);
        assert_eq!(
            route_drift(&r, Some(&route(weighted.clone(), vec![]))),
            None
        );
        let drift = route_drift(&r, Some(&route(synced.clone(), managers.clone())))
            .unwrap_or_else(|| panic!("a synced route is drift"));
        assert_eq!(
            drift.changes,
            vec![Change::Route {
                route: "web".into(),
                found: "web:80 weight 1".into()
            }]
        );
        assert_eq!(
            drift.by.map(|b| b.manager).as_deref(),
            Some("argocd-controller")
        );
        let text = advice(
            "web",
            &route_drift(&r, Some(&route(synced.clone(), managers)))
                .unwrap_or_else(|| panic!("drift")),
        );
        assert!(
            text.contains("HTTPRoute web had before the rollout back"),
            "{text}"
        );
    }

    #[test]
    fn route_drift_is_not_judged_mid_write_outside_a_rollout_or_without_a_fingerprint() {
        let weighted = serde_json::json!([{"backendRefs": [{"name": "web-canary", "port": 80}]}]);
        let other = route(serde_json::json!([]), vec![]);
        // The weights' write has begun: it may have landed without its record.
        assert_eq!(
            route_drift(&route_record(1, true, &Value::Null), Some(&other)),
            None
        );
        // Begun, but a step that writes no route: judged.
        assert!(route_drift(&route_record(2, true, &weighted), Some(&other)).is_some());
        let mut back = route_record(2, false, &weighted);
        back.phase = Phase::RollingBack;
        assert_eq!(
            route_drift(&back, Some(&other)),
            None,
            "a rollback writes over it"
        );
        let mut old = route_record(2, false, &weighted);
        if let Some(r) = old.route.as_mut() {
            r.rules_written = None;
        }
        assert_eq!(
            route_drift(&old, Some(&other)),
            None,
            "an older build's record"
        );
        assert_eq!(
            route_drift(&route_record(2, false, &weighted), None),
            None,
            "deleted: the gate's"
        );
        assert_eq!(
            route_drift(&record(2, false), Some(&other)),
            None,
            "no route"
        );
    }

    #[test]
    fn backends_read_as_names_ports_and_weights() {
        assert_eq!(backends_of(&Value::Null), "no rule");
        assert_eq!(
            backends_of(&serde_json::json!([
                {"backendRefs": [{"name": "a", "port": 80, "weight": 95}, {"name": "b", "weight": 5}]},
                {"matches": []},
            ])),
            "a:80 weight 95, b weight 5 | no backend"
        );
    }

    #[test]
    fn advice_says_what_to_do_next() {
        let drift = Drift {
            changes: vec![Change::Partition {
                set: "web".into(),
                expected: 2,
                found: 0,
            }],
            by: None,
        };
        let text = advice("web", &drift);
        assert!(text.contains("rollout status web") && text.contains("rollout abort web"));
        assert!(!text.contains("owns the pod template"));
        let lost = Drift {
            changes: vec![Change::RecordRemoved],
            by: None,
        };
        assert!(advice("web", &lost).contains("without writing the record back"));
    }
}
