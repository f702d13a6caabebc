//! Pure predicates over Kubernetes objects: is a StatefulSet's rollout complete, which pods a
//! partition releases, is a pod updated and Ready, which pods are stuck on a broken revision.
//! The executor waits on watches and asks these; they never fetch anything. [`drift`] judges
//! someone else's changes to a set in the middle of a rollout.

use std::collections::BTreeSet;

pub mod drift;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

/// The label the StatefulSet controller puts on each pod: the revision it was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// `spec.replicas` as written; `None` when unset or negative.
pub fn spec_replicas(sts: &StatefulSet) -> Option<u32> {
    sts.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .and_then(|r| u32::try_from(r).ok())
}

/// `spec.replicas`, or 1 (the API default) when [`spec_replicas`] has none.
pub fn replicas(sts: &StatefulSet) -> u32 {
    spec_replicas(sts).unwrap_or(1)
}

/// `spec.ordinals.start`, the first pod's ordinal; 0 (the API default) when unset or negative.
pub fn ordinal_start(sts: &StatefulSet) -> u32 {
    sts.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or(0)
}

/// `spec.updateStrategy.rollingUpdate.partition`; `None` when unset or negative.
pub fn partition(sts: &StatefulSet) -> Option<u32> {
    sts.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .and_then(|p| u32::try_from(p).ok())
}

/// The pod ordinals, highest first, that lowering the partition from `from` to `to` releases to
/// the update revision. Partitions compare against the replica index (ordinal minus
/// `ordinal_start`), as the StatefulSet controller does; values above `replicas` act as
/// `replicas`.
pub fn ordinals_released(replicas: u32, ordinal_start: u32, from: u32, to: u32) -> Vec<u32> {
    let high = from.min(replicas);
    let low = to.min(replicas);
    (low..high)
        .rev()
        .map(|index| ordinal_start + index)
        .collect()
}

/// The ordinal of a StatefulSet's pod from its name (`web-3` -> 3).
pub fn pod_ordinal(statefulset: &str, pod_name: &str) -> Option<u32> {
    let suffix = pod_name.strip_prefix(statefulset)?.strip_prefix('-')?;
    if suffix.is_empty()
        || !suffix.bytes().all(|b| b.is_ascii_digit())
        || (suffix.len() > 1 && suffix.starts_with('0'))
    {
        return None;
    }
    suffix.parse().ok()
}

/// The revision a pod was created from.
pub fn pod_revision(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// When the pod last became Ready, if it is Ready (for the minimum-time-Ready gate).
pub fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let condition = ready_condition(pod).filter(|c| c.status == "True")?;
    condition.last_transition_time.as_ref().map(|t| t.0)
}

/// The pod runs `revision`, is Ready and is not being deleted.
pub fn is_updated_and_ready(pod: &Pod, revision: &str) -> bool {
    pod_revision(pod) == Some(revision) && is_ready(pod) && !is_terminating(pod)
}

/// Ordinals of the StatefulSet's pods that run `revision` (terminating pods excluded).
pub fn ordinals_on_revision(statefulset: &str, pods: &[Pod], revision: &str) -> BTreeSet<u32> {
    pods.iter()
        .filter(|p| pod_revision(p) == Some(revision) && !is_terminating(p))
        .filter_map(|p| pod_ordinal(statefulset, p.metadata.name.as_deref()?))
        .collect()
}

/// Of `ordinals`, those not yet updated to `revision` and Ready (a missing pod counts as not
/// ready). Empty means the step's pods are all there.
pub fn ordinals_not_ready(
    statefulset: &str,
    pods: &[Pod],
    revision: &str,
    ordinals: &[u32],
) -> Vec<u32> {
    ordinals_without(statefulset, pods, ordinals, |p| {
        is_updated_and_ready(p, revision)
    })
}

/// Of `ordinals`, those with no pod for which `done` holds (a missing pod counts as not done).
fn ordinals_without(
    statefulset: &str,
    pods: &[Pod],
    ordinals: &[u32],
    done: impl Fn(&Pod) -> bool,
) -> Vec<u32> {
    ordinals
        .iter()
        .copied()
        .filter(|ordinal| {
            !pods.iter().any(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .and_then(|n| pod_ordinal(statefulset, n))
                    == Some(*ordinal)
                    && done(p)
            })
        })
        .collect()
}

/// Of `ordinals`, those whose pod has not yet been Ready for the StatefulSet's
/// `minReadySeconds` at `now`: not Available, as the StatefulSet controller counts it. With
/// `minReadySeconds` 0 every Ready pod is Available.
pub fn ordinals_not_available(
    statefulset: &str,
    pods: &[Pod],
    ordinals: &[u32],
    min_ready_seconds: i32,
    now: Timestamp,
) -> Vec<u32> {
    let available = |p: &Pod| {
        ready_since(p).is_some_and(|since| {
            min_ready_seconds <= 0
                || since
                    .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                        min_ready_seconds,
                    )))
                    .is_ok_and(|at| at <= now)
        })
    };
    ordinals_without(statefulset, pods, ordinals, available)
}

/// Whether the plan moves several pods in one step (so the run sets `maxUnavailable`, to be
/// given back at the end).
pub fn moves_in_batches(steps: &[crate::model::plan::Step]) -> bool {
    steps.iter().any(
        |s| matches!(s, crate::model::plan::Step::SetPartition { ordinals, .. } if ordinals.len() > 1),
    )
}

/// The `maxUnavailable` to give back once a rollout ends on stable or is released: the set's own
/// value (`Null`: none) when the plan moved pods in batches and so set it; `None` (leave the field
/// alone) otherwise, and for an `OnDelete` set, which has no `rollingUpdate`.
pub fn given_back_max_unavailable(
    steps: &[crate::model::plan::Step],
    stable: &crate::model::state::Stable,
) -> Option<serde_json::Value> {
    (moves_in_batches(steps) && stable.update_strategy.as_deref() != Some("OnDelete")).then(|| {
        stable
            .max_unavailable
            .clone()
            .unwrap_or(serde_json::Value::Null)
    })
}

/// The API server drops `maxUnavailable` from a StatefulSet it was written to when its release
/// lacks the field or the feature gate is off: the answer to the write tells.
pub fn honours_max_unavailable(sts: &StatefulSet) -> bool {
    sts.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
        .is_some_and(|r| r.max_unavailable.is_some())
}

/// Pods that would keep a set wedged once its template is back on `keep_revision`: on another
/// revision, not Ready, not already being deleted (kubernetes #67250). The StatefulSet
/// controller replaces Ready pods itself; these an `OrderedReady` set waits on forever, so a
/// rollback deletes them (never their PVCs). Highest ordinal first, the order the controller
/// works in; each as (name, uid).
pub fn stuck_pods(
    statefulset: &str,
    pods: &[Pod],
    keep_revision: &str,
) -> Vec<(String, Option<String>)> {
    let mut stuck: Vec<(u32, String, Option<String>)> = pods
        .iter()
        .filter(|p| pod_revision(p) != Some(keep_revision) && !is_ready(p) && !is_terminating(p))
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            Some((
                pod_ordinal(statefulset, &name)?,
                name,
                p.metadata.uid.clone(),
            ))
        })
        .collect();
    stuck.sort_by_key(|s| std::cmp::Reverse(s.0));
    stuck
        .into_iter()
        .map(|(_, name, uid)| (name, uid))
        .collect()
}

/// The pod of `set` with `ordinal`, if it exists.
pub fn pod_by_ordinal<'a>(set: &str, pods: &'a [Pod], ordinal: u32) -> Option<&'a Pod> {
    pods.iter()
        .find(|p| p.metadata.name.as_deref().and_then(|n| pod_ordinal(set, n)) == Some(ordinal))
}

/// Done as `kubectl rollout status` sees it too: with no partition, the StatefulSet controller
/// has made `revision` the set's current revision in its status (it lags a moment behind the
/// pods); with a partition, pods below it keep theirs and the status never catches up.
pub fn revision_made_current(sts: &StatefulSet, revision: &str) -> bool {
    partition(sts).unwrap_or(0) > 0
        || sts
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref())
            == Some(revision)
}

/// Pods that serve: Ready and not terminating (what a Service's endpoints hold).
pub fn serving_pods(pods: &[Pod]) -> usize {
    pods.iter()
        .filter(|p| is_ready(p) && !is_terminating(p))
        .count()
}

/// What keeps a pod from being counted as done, in words.
pub fn describe_pod(pod: Option<&Pod>, name: &str, revision: &str) -> String {
    let Some(pod) = pod else {
        return format!("{name} does not exist yet");
    };
    if is_terminating(pod) {
        return format!("{name} is terminating");
    }
    let on = pod_revision(pod).unwrap_or("?");
    if on != revision {
        return format!("{name} still runs revision {on}");
    }
    let mut parts = vec![];
    for status in pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
    {
        let state = status.state.as_ref();
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.as_deref().unwrap_or("waiting");
            match waiting.message.as_deref().filter(|m| !m.is_empty()) {
                Some(m) => parts.push(format!("container {} {reason}: {m}", status.name)),
                None => parts.push(format!("container {} {reason}", status.name)),
            }
        } else if let Some(done) = state.and_then(|s| s.terminated.as_ref()) {
            parts.push(format!(
                "container {} exited with {}",
                status.name, done.exit_code
            ));
        } else if !status.ready {
            parts.push(format!("container {} is not ready", status.name));
        }
        if status.restart_count > 0 {
            parts.push(format!("restarted {} times", status.restart_count));
        }
    }
    if parts.is_empty() {
        if is_ready(pod) {
            return format!("{name} is Ready");
        }
        parts.push("not Ready".to_string());
    }
    format!("{name}: {}", parts.join(", "))
}

/// What the pods `ordinals` of `set` still wait for, pod by pod, for a step that timed out.
pub fn describe_pods(set: &str, pods: &[Pod], ordinals: &[u32], revision: &str) -> String {
    ordinals
        .iter()
        .map(|o| {
            describe_pod(
                pod_by_ordinal(set, pods, *o),
                &format!("{set}-{o}"),
                revision,
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a scale step of `set` to `replicas` still waits for when it times out, pod by pod from
/// the set's first ordinal (`spec.ordinals.start`, not always 0): each pod on `revision`, or on
/// the revision it runs when `None` (a new set, whose revision is its own).
pub fn describe_scale(
    set: &str,
    pods: &[Pod],
    replicas: u32,
    start: u32,
    revision: Option<&str>,
) -> String {
    if replicas == 0 {
        return format!("{} pod(s) still there", pods.len());
    }
    (start..start.saturating_add(replicas))
        .map(|o| {
            let pod = pod_by_ordinal(set, pods, o);
            let revision = revision
                .or_else(|| pod.and_then(pod_revision))
                .unwrap_or("?");
            describe_pod(pod, &format!("{set}-{o}"), revision)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The ordinals of the pods `sts` should have (as many as its replicas, `planned` when the set
/// is not known), from `start`.
pub fn set_ordinals(sts: Option<&StatefulSet>, planned: u32, start: u32) -> Vec<u32> {
    let replicas = sts.and_then(spec_replicas).unwrap_or(planned);
    ordinals_released(replicas, start, replicas, 0)
}

/// A reason that waiting cannot fix (the image cannot be pulled, the container cannot be
/// configured), so a step fails now instead of at its deadline.
pub fn hopeless(pod: &Pod) -> Option<String> {
    const HOPELESS: [&str; 4] = [
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
    ];
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            HOPELESS.contains(&reason).then(|| {
                let name = pod.metadata.name.as_deref().unwrap_or("?");
                match waiting.message.as_deref().filter(|m| !m.is_empty()) {
                    Some(m) => format!("pod {name}: container {} {reason}: {m}", c.name),
                    None => format!("pod {name}: container {} {reason}", c.name),
                }
            })
        })
}

/// Whether the pods `ordinals` of `set` run `revision` and are Ready: `Some(Ok)` when they do,
/// `Some(Err(why))` when one of them can never get there ([`hopeless`]), `None` while waiting.
pub fn pods_ready_on(
    set: &str,
    pods: &[Pod],
    revision: &str,
    ordinals: &[u32],
) -> Option<Result<(), String>> {
    let missing = ordinals_not_ready(set, pods, revision, ordinals);
    if missing.is_empty() {
        return Some(Ok(()));
    }
    missing
        .iter()
        .filter_map(|o| pod_by_ordinal(set, pods, *o))
        .filter(|p| pod_revision(p) == Some(revision))
        .find_map(hopeless)
        .map(Err)
}

/// The update revision of `sts` once the controller has seen its latest spec (generation at
/// least `generation`), and only when it is `wanted` (any revision when `wanted` is `None`).
pub fn revision_taken_up(
    sts: &StatefulSet,
    generation: i64,
    wanted: Option<&str>,
) -> Option<String> {
    let status = sts.status.as_ref()?;
    if status.observed_generation.unwrap_or(0) < generation {
        return None;
    }
    let update = status.update_revision.clone()?;
    match wanted {
        Some(w) if w != update => None,
        _ => Some(update),
    }
}

/// Whether `set` has been scaled to `replicas`: none left for 0; otherwise every pod from the
/// first ordinal on `revision` (default: the set's update revision, once the controller has
/// seen the latest spec) and Ready. As [`pods_ready_on`] otherwise.
pub fn scaled(
    set: &str,
    sts: Option<&StatefulSet>,
    pods: &[Pod],
    replicas: u32,
    revision: Option<&str>,
) -> Option<Result<(), String>> {
    if replicas == 0 {
        return pods.is_empty().then_some(Ok(()));
    }
    let sts = sts?;
    let generation = sts.metadata.generation.unwrap_or(0);
    let update = revision_taken_up(sts, generation, None)?;
    let revision = revision.unwrap_or(&update);
    let all = ordinals_released(replicas, ordinal_start(sts), replicas, 0);
    pods_ready_on(set, pods, revision, &all)
}

/// Whether a Service's EndpointSlices (`slices`) send its traffic only to pods of the set `set`:
/// at least one endpoint is ready, and every endpoint not known to be unready is a pod of
/// `set`. Blue/green through a route waits for this before the route goes back to the live
/// Service, so that the gateway finds green there.
pub fn endpoints_only_of(
    slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
    set: &str,
) -> bool {
    let endpoints: Vec<_> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .collect();
    !endpoints.is_empty()
        && endpoints.iter().all(|e| {
            e.target_ref.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Pod")
                    && r.name
                        .as_deref()
                        .is_some_and(|name| pod_ordinal(set, name).is_some())
            })
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSetSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    pub(crate) fn pod(name: &str, revision: &str, ready: bool, terminating: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(REVISION_LABEL.to_string(), revision.to_string())].into()),
                deletion_timestamp: terminating.then_some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(
                        Timestamp::from_second(100).unwrap_or(Timestamp::UNIX_EPOCH),
                    )),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn partition_releases_highest_ordinals() {
        let cases: Vec<(u32, u32, u32, u32, Vec<u32>)> = vec![
            (5, 0, 5, 4, vec![4]),
            (5, 0, 4, 2, vec![3, 2]),
            (5, 0, 2, 0, vec![1, 0]),
            (5, 0, 5, 0, vec![4, 3, 2, 1, 0]),
            (5, 0, 3, 3, vec![]),
            (5, 0, 2, 4, vec![]),
            (5, 0, 9, 3, vec![4, 3]),
            (3, 10, 3, 1, vec![12, 11]),
            (0, 0, 0, 0, vec![]),
        ];
        for (replicas, start, from, to, expected) in cases {
            assert_eq!(
                ordinals_released(replicas, start, from, to),
                expected,
                "{replicas} start {start}: {from}->{to}"
            );
        }
    }

    #[test]
    fn ordinals_from_pod_names() {
        let cases = [
            ("web", "web-0", Some(0)),
            ("web", "web-12", Some(12)),
            ("web", "web-x", None),
            ("web", "web-", None),
            ("web", "web-01", None),
            ("web", "webby-1", None),
            ("web", "other-1", None),
            ("my-db", "my-db-3", Some(3)),
            ("my", "my-db-3", None),
        ];
        for (sts, pod, ordinal) in cases {
            assert_eq!(pod_ordinal(sts, pod), ordinal, "{sts} {pod}");
        }
    }

    #[test]
    fn pod_state_predicates() {
        let cases = [
            (pod("web-0", "b", true, false), true),
            (pod("web-0", "a", true, false), false),
            (pod("web-0", "b", false, false), false),
            (pod("web-0", "b", true, true), false),
        ];
        for (i, (p, expected)) in cases.iter().enumerate() {
            assert_eq!(is_updated_and_ready(p, "b"), *expected, "case {i}");
        }
        let mut unlabelled = pod("web-0", "b", true, false);
        unlabelled.metadata.labels = None;
        assert!(!is_updated_and_ready(&unlabelled, "b"));
        let mut no_status = pod("web-0", "b", true, false);
        no_status.status = None;
        assert!(!is_ready(&no_status));
        assert_eq!(
            ready_since(&pod("web-0", "b", true, false)).map(Timestamp::as_second),
            Some(100)
        );
        assert_eq!(ready_since(&pod("web-0", "b", false, false)), None);
    }

    #[test]
    fn pods_on_revision_and_waiting() {
        let pods = vec![
            pod("web-0", "a", true, false),
            pod("web-1", "a", true, false),
            pod("web-2", "b", false, false),
            pod("web-3", "b", true, false),
            pod("web-4", "b", true, true),
            pod("other-5", "b", true, false),
        ];
        assert_eq!(
            ordinals_on_revision("web", &pods, "b"),
            BTreeSet::from([2, 3])
        );
        assert_eq!(
            ordinals_not_ready("web", &pods, "b", &[4, 3, 2]),
            vec![4, 2]
        );
        assert_eq!(
            ordinals_not_ready("web", &pods, "b", &[3]),
            Vec::<u32>::new()
        );
        assert_eq!(
            ordinals_not_ready("web", &pods, "b", &[7]),
            vec![7],
            "a missing pod is not ready"
        );
    }

    #[test]
    fn available_means_ready_for_min_ready_seconds() {
        // Ready since second 100.
        let pods = [
            pod("web-5", "r2", true, false),
            pod("web-6", "r2", false, false),
        ];
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let cases = [
            (
                "no minReadySeconds: Ready is Available",
                0,
                at(100),
                vec![6, 7],
            ),
            ("Ready 5s of 10s", 10, at(105), vec![5, 6, 7]),
            ("Ready exactly 10s", 10, at(110), vec![6, 7]),
            ("Ready 30s of 10s", 10, at(130), vec![6, 7]),
        ];
        for (what, min_ready, now, want) in cases {
            assert_eq!(
                ordinals_not_available("web", &pods, &[5, 6, 7], min_ready, now),
                want,
                "{what}"
            );
        }
    }

    /// A set at `generation`, its controller having seen `observed`, updating to `update`.
    fn updating_set(
        generation: i64,
        observed: i64,
        update: &str,
        max_unavailable: Option<i32>,
    ) -> StatefulSet {
        use k8s_openapi::api::apps::v1::{
            RollingUpdateStatefulSetStrategy, StatefulSetStatus, StatefulSetUpdateStrategy,
        };
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        StatefulSet {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateStatefulSetStrategy {
                        partition: Some(1),
                        max_unavailable: max_unavailable.map(IntOrString::Int),
                    }),
                }),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                observed_generation: Some(observed),
                update_revision: Some(update.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_revision_is_done_once_the_status_makes_it_current_or_a_partition_holds() {
        // updating_set has partition 1: the status never catches up, and need not.
        let mut sts = updating_set(1, 1, "web-2", None);
        assert!(revision_made_current(&sts, "web-2"));
        if let Some(r) = sts
            .spec
            .as_mut()
            .and_then(|s| s.update_strategy.as_mut())
            .and_then(|u| u.rolling_update.as_mut())
        {
            r.partition = Some(0);
        }
        assert!(
            !revision_made_current(&sts, "web-2"),
            "pods done, status behind"
        );
        if let Some(status) = sts.status.as_mut() {
            status.current_revision = Some("web-2".into());
        }
        assert!(revision_made_current(&sts, "web-2"));
        assert!(!revision_made_current(&sts, "web-1"));
    }

    #[test]
    fn max_unavailable_is_given_back_only_after_batches_and_read_from_the_write() {
        use crate::model::plan::Step;
        let plan = crate::model::state::tests::sample_state().plan;
        assert!(!moves_in_batches(&plan.steps), "one pod per step");
        let batch = Step::SetPartition {
            partition: 0,
            ordinals: vec![0, 1],
            updated: 2,
            weight: None,
        };
        assert!(moves_in_batches(&[batch]));
        assert!(honours_max_unavailable(&updating_set(
            1,
            1,
            "web-2",
            Some(3)
        )));
        assert!(
            !honours_max_unavailable(&updating_set(1, 1, "web-2", None)),
            "dropped by the API server"
        );
    }

    #[test]
    fn stuck_pods_are_unready_pods_off_the_revision_kept() {
        let pods = vec![
            pod("web-0", "good", true, false),
            pod("web-1", "bad", true, false),
            pod("web-2", "bad", false, false),
            pod("web-3", "bad", false, true),
            pod("web-4", "other", false, false),
            pod("web-5", "good", false, false),
            pod("web-10", "bad", false, false),
        ];
        let names = |keep: &str| -> Vec<String> {
            stuck_pods("web", &pods, keep)
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        };
        // Ready pods the controller replaces itself; terminating ones are going; a pod not
        // Ready on the kept revision is only waited on.
        assert_eq!(names("good"), ["web-10", "web-4", "web-2"]);
        assert_eq!(names("bad"), ["web-5", "web-4"]);
    }

    #[test]
    fn scaled_sets_and_hopeless_pods() {
        let mut sts = StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(3),
                ..Default::default()
            }),
            status: None,
        };
        let status = sts.status.get_or_insert_with(Default::default);
        status.observed_generation = Some(2);
        status.update_revision = Some("new".into());
        let ready = vec![
            pod("web-0", "new", true, false),
            pod("web-1", "new", true, false),
            pod("web-2", "new", true, false),
        ];
        assert_eq!(scaled("web", Some(&sts), &ready, 3, None), Some(Ok(())));
        assert_eq!(scaled("web", Some(&sts), &ready[..2], 3, None), None);
        assert_eq!(scaled("web", Some(&sts), &ready, 3, Some("old")), None);
        assert_eq!(scaled("web", Some(&sts), &ready, 0, None), None);
        assert_eq!(scaled("web", None, &[], 0, None), Some(Ok(())));
        assert_eq!(
            scaled("web", None, &ready, 3, None),
            None,
            "no set seen yet"
        );
        let mut pulling = pod("web-2", "new", false, false);
        pulling
            .status
            .get_or_insert_with(Default::default)
            .container_statuses = Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
            name: "app".into(),
            state: Some(k8s_openapi::api::core::v1::ContainerState {
                waiting: Some(k8s_openapi::api::core::v1::ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".into()),
                    message: Some("no such image".into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        let pods = vec![ready[0].clone(), ready[1].clone(), pulling];
        assert_eq!(
            scaled("web", Some(&sts), &pods, 3, None),
            Some(Err(
                "pod web-2: container app ImagePullBackOff: no such image".to_string()
            ))
        );
        // Behind the latest spec, nothing is judged yet.
        sts.metadata.generation = Some(3);
        assert_eq!(scaled("web", Some(&sts), &ready, 3, None), None);
    }

    fn waiting_pod(revision: &str, waiting: Option<(&str, &str)>, restarts: i32) -> Pod {
        use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus};
        Pod {
            metadata: ObjectMeta {
                name: Some("web-2".into()),
                labels: Some([(REVISION_LABEL.to_string(), revision.to_string())].into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    ready: false,
                    restart_count: restarts,
                    state: waiting.map(|(reason, message)| ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: Some(message.into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pods_are_described_by_what_blocks_them() {
        let cases = [
            (None, "web-2 does not exist yet"),
            (
                Some(waiting_pod("web-a", None, 0)),
                "web-2 still runs revision web-a",
            ),
            (
                Some(waiting_pod(
                    "web-b",
                    Some(("CrashLoopBackOff", "back-off 10s")),
                    3,
                )),
                "web-2: container app CrashLoopBackOff: back-off 10s, restarted 3 times",
            ),
            (
                Some(waiting_pod("web-b", None, 0)),
                "web-2: container app is not ready",
            ),
        ];
        for (p, expected) in cases {
            assert_eq!(describe_pod(p.as_ref(), "web-2", "web-b"), expected);
        }
    }

    #[test]
    fn only_hopeless_waits_fail_early() {
        let cases = [
            (
                waiting_pod("b", Some(("ImagePullBackOff", "no such image")), 0),
                true,
            ),
            (waiting_pod("b", Some(("InvalidImageName", "")), 0), true),
            (waiting_pod("b", Some(("CrashLoopBackOff", "")), 5), false),
            (waiting_pod("b", Some(("ContainerCreating", "")), 0), false),
            (waiting_pod("b", None, 0), false),
        ];
        for (p, expected) in cases {
            assert_eq!(hopeless(&p).is_some(), expected, "{:?}", p.status);
        }
        let message = hopeless(&waiting_pod(
            "b",
            Some(("ImagePullBackOff", "no such image")),
            0,
        ));
        assert_eq!(
            message.as_deref(),
            Some("pod web-2: container app ImagePullBackOff: no such image")
        );
    }

    #[test]
    fn a_timed_out_scale_names_the_pods_from_the_first_ordinal() {
        let pods = vec![
            pod("web-5", "web-b", true, false),
            pod("web-6", "web-a", true, false),
        ];
        // (replicas, first ordinal, the details)
        let cases = [
            (
                3,
                5,
                "web-5 is Ready; web-6 still runs revision web-a; web-7 does not exist yet",
            ),
            (1, 0, "web-0 does not exist yet"),
            (0, 5, "2 pod(s) still there"),
        ];
        for (replicas, start, want) in cases {
            assert_eq!(
                describe_scale("web", &pods, replicas, start, Some("web-b")),
                want,
                "{replicas} from {start}"
            );
        }
    }

    type Slice<'a> = &'a [(&'a str, Option<bool>)];

    fn slice(endpoints: Slice<'_>) -> k8s_openapi::api::discovery::v1::EndpointSlice {
        use k8s_openapi::api::core::v1::ObjectReference;
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: endpoints
                .iter()
                .map(|(pod, ready)| Endpoint {
                    addresses: vec!["10.0.0.1".into()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..EndpointConditions::default()
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some((*pod).into()),
                        ..ObjectReference::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn a_service_serves_only_a_set_when_every_endpoint_that_may_be_ready_is_its_pod() {
        // (the slices: each a list of (pod, ready), whether the Service serves web-green only)
        let cases: &[(&[Slice], bool)] = &[
            (
                &[&[("web-green-0", Some(true)), ("web-green-1", Some(true))]],
                true,
            ),
            // Endpoints of the other set that are known unready take no traffic.
            (
                &[&[("web-green-0", Some(true)), ("web-0", Some(false))]],
                true,
            ),
            // Ready unknown counts as ready.
            (&[&[("web-green-0", Some(true)), ("web-0", None)]], false),
            (
                &[&[("web-green-0", Some(true))], &[("web-1", Some(true))]],
                false,
            ),
            (&[&[("web-green-0", Some(false))]], false),
            (&[], false),
            (&[&[]], false),
            // A name that only starts like the set's pods.
            (&[&[("web-green-x", Some(true))]], false),
            (&[&[("web-green-green-0", Some(true))]], false),
        ];
        for (slices, want) in cases {
            let slices: Vec<_> = slices.iter().map(|e| slice(e)).collect();
            assert_eq!(endpoints_only_of(&slices, "web-green"), *want, "{slices:?}");
        }
    }
}
