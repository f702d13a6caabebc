//! Pure predicates over Kubernetes objects: is a StatefulSet's rollout complete, which pods a
//! partition releases, is a pod updated and Ready, which pods are stuck on a broken revision.
//! The executor waits on watches and asks these; they never fetch anything.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::observed;

/// The label the StatefulSet controller puts on each pod: the revision it was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Where a StatefulSet's rollout stands, with the reason when it is not done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutProgress {
    Complete,
    Waiting(String),
}

impl RolloutProgress {
    pub fn is_complete(&self) -> bool {
        matches!(self, RolloutProgress::Complete)
    }
}

fn count(value: Option<i32>) -> i64 {
    i64::from(value.unwrap_or(0))
}

/// Is the StatefulSet's rollout complete, the way `kubectl rollout status` decides, plus every
/// replica Ready: the controller has seen the latest spec; with a partition, the pods at or
/// above it are updated; without one, the current revision has caught up with the update
/// revision.
pub fn statefulset_rollout_progress(sts: &StatefulSet) -> RolloutProgress {
    let name = sts.metadata.name.as_deref().unwrap_or("<unnamed>");
    let (Some(spec), Some(status)) = (sts.spec.as_ref(), sts.status.as_ref()) else {
        return RolloutProgress::Waiting(format!("StatefulSet {name} has no status yet"));
    };
    let generation = sts.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    if observed < generation {
        return RolloutProgress::Waiting(format!(
            "waiting for the StatefulSet controller to see the change to {name} (generation {generation}, seen {observed})"
        ));
    }
    let replicas = count(spec.replicas.or(Some(1)));
    let ready = count(status.ready_replicas);
    if ready < replicas {
        return RolloutProgress::Waiting(format!("{ready} of {replicas} pods of {name} are Ready"));
    }
    let updated = count(status.updated_replicas);
    let partition = observed::partition(sts).filter(|p| *p > 0);
    if let Some(partition) = partition {
        let expected = (replicas - i64::from(partition)).max(0);
        if updated < expected {
            return RolloutProgress::Waiting(format!(
                "{updated} of {expected} pods of {name} above partition {partition} are updated"
            ));
        }
        return RolloutProgress::Complete;
    }
    if status.update_revision.is_some() && status.update_revision != status.current_revision {
        return RolloutProgress::Waiting(format!(
            "{updated} of {replicas} pods of {name} are updated (revision {} of {})",
            status.update_revision.as_deref().unwrap_or("?"),
            status.current_revision.as_deref().unwrap_or("?")
        ));
    }
    RolloutProgress::Complete
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
                    && is_updated_and_ready(p, revision)
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
                    && available(p)
            })
        })
        .collect()
}

/// Pods that would keep an `OrderedReady` set wedged after its template is reverted: created
/// from `broken_revision`, not Ready, not already being deleted (kubernetes #67250). The
/// StatefulSet controller replaces Ready pods itself; these it waits on forever, so the rollback
/// deletes them (never their PVCs).
pub fn stuck_pods(statefulset: &str, pods: &[Pod], broken_revision: &str) -> Vec<String> {
    let mut stuck: Vec<(u32, String)> = pods
        .iter()
        .filter(|p| pod_revision(p) == Some(broken_revision) && !is_ready(p) && !is_terminating(p))
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            Some((pod_ordinal(statefulset, &name)?, name))
        })
        .collect();
    // Highest first, the order the controller itself works in.
    stuck.sort_by_key(|s| std::cmp::Reverse(s.0));
    stuck.into_iter().map(|(_, name)| name).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetStatus,
        StatefulSetUpdateStrategy,
    };
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

    struct StsCase {
        generation: i64,
        observed: i64,
        replicas: i32,
        partition: Option<i32>,
        ready: i32,
        updated: i32,
        current: &'static str,
        update: &'static str,
    }

    fn sts(c: &StsCase) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(c.generation),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(c.replicas),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: c.partition.map(|p| RollingUpdateStatefulSetStrategy {
                        partition: Some(p),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                observed_generation: Some(c.observed),
                replicas: c.replicas,
                ready_replicas: Some(c.ready),
                updated_replicas: Some(c.updated),
                current_revision: Some(c.current.into()),
                update_revision: Some(c.update.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn rollout_completion() {
        let base = StsCase {
            generation: 2,
            observed: 2,
            replicas: 3,
            partition: None,
            ready: 3,
            updated: 3,
            current: "b",
            update: "b",
        };
        let cases: Vec<(StsCase, Result<(), &str>)> = vec![
            (StsCase { ..base }, Ok(())),
            (
                StsCase {
                    observed: 1,
                    ..base
                },
                Err("generation 2, seen 1"),
            ),
            (
                StsCase { ready: 2, ..base },
                Err("2 of 3 pods of web are Ready"),
            ),
            (
                StsCase {
                    current: "a",
                    updated: 2,
                    ..base
                },
                Err("2 of 3 pods of web are updated"),
            ),
            (
                StsCase {
                    partition: Some(1),
                    updated: 2,
                    current: "a",
                    ..base
                },
                Ok(()),
            ),
            (
                StsCase {
                    partition: Some(1),
                    updated: 1,
                    current: "a",
                    ..base
                },
                Err("1 of 2 pods of web above partition 1"),
            ),
            (
                StsCase {
                    partition: Some(3),
                    updated: 0,
                    current: "a",
                    ..base
                },
                Ok(()),
            ),
            (
                StsCase {
                    partition: Some(5),
                    updated: 0,
                    current: "a",
                    ..base
                },
                Ok(()),
            ),
            (
                StsCase {
                    partition: Some(0),
                    updated: 2,
                    current: "a",
                    ..base
                },
                Err("are updated"),
            ),
            (
                StsCase {
                    observed: 3,
                    ..base
                },
                Ok(()),
            ),
        ];
        for (i, (case, expected)) in cases.into_iter().enumerate() {
            let got = statefulset_rollout_progress(&sts(&case));
            match expected {
                Ok(()) => assert_eq!(got, RolloutProgress::Complete, "case {i}"),
                Err(fragment) => match got {
                    RolloutProgress::Waiting(reason) => {
                        assert!(reason.contains(fragment), "case {i}: {reason}")
                    }
                    RolloutProgress::Complete => {
                        panic!("case {i}: complete, expected `{fragment}`")
                    }
                },
            }
        }
        let no_status = StatefulSet {
            status: None,
            ..sts(&base)
        };
        assert!(!statefulset_rollout_progress(&no_status).is_complete());
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
    fn stuck_pods_are_unready_pods_of_the_broken_revision() {
        let pods = vec![
            pod("web-0", "good", true, false),
            pod("web-1", "bad", true, false),
            pod("web-2", "bad", false, false),
            pod("web-3", "bad", false, true),
            pod("web-4", "bad", false, false),
            pod("web-10", "bad", false, false),
        ];
        assert_eq!(
            stuck_pods("web", &pods, "bad"),
            vec!["web-10", "web-4", "web-2"]
        );
        assert!(stuck_pods("web", &pods, "good").is_empty());
    }
}
