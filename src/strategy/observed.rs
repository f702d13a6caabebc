//! What the planners need to know about the cluster, as a plain value: the executor reads it
//! from the StatefulSet and its pods ([`Observed::from_statefulset`], [`Observed::with_pods`]);
//! tests build it by hand. Also the lenient readers of a set's replicas, first ordinal and
//! partition ([`replicas`], [`ordinal_start`], [`partition`]) for code that must go on with a
//! default rather than refuse a set.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;

use crate::model::image::container_images;
use crate::model::plan::PodManagementPolicy;
use crate::model::state::{Revision, Stable};

use super::predicates::{self, partition};

/// Why a StatefulSet could not be read into an [`Observed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    #[error("the StatefulSet object has no name")]
    MissingName,
    #[error("StatefulSet {statefulset} has no spec")]
    MissingSpec { statefulset: String },
    #[error("StatefulSet {statefulset} has a negative {field} ({value})")]
    Negative {
        statefulset: String,
        field: &'static str,
        value: i32,
    },
}

/// The StatefulSet as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub name: String,
    /// `spec.replicas` (1 when unset, the API default).
    pub replicas: u32,
    /// `spec.ordinals.start` (0 when unset).
    pub ordinal_start: u32,
    /// `spec.updateStrategy.rollingUpdate.partition`, when set.
    pub partition: Option<u32>,
    /// `spec.updateStrategy.type` (`RollingUpdate` when unset, the API default).
    pub update_strategy: String,
    pub current_revision: Option<String>,
    pub update_revision: Option<String>,
    pub pod_management_policy: PodManagementPolicy,
    /// True when the template already is the rollout's target (the freeze write was made).
    pub target_applied: bool,
    /// Ordinals of the pods that run the target revision.
    pub updated_ordinals: BTreeSet<u32>,
    /// `spec.persistentVolumeClaimRetentionPolicy.whenScaled` is `Delete`: the StatefulSet
    /// controller deletes the PVCs of every ordinal a scale-down removes.
    pub claims_deleted_when_scaled: bool,
}

fn non_negative(statefulset: &str, field: &'static str, value: i32) -> Result<u32, ObserveError> {
    u32::try_from(value).map_err(|_| ObserveError::Negative {
        statefulset: statefulset.to_string(),
        field,
        value,
    })
}

impl Observed {
    /// Reads the spec and status fields; `target_applied` is false and no pod is counted as
    /// updated until [`Observed::with_pods`] says otherwise.
    pub fn from_statefulset(sts: &StatefulSet) -> Result<Observed, ObserveError> {
        let name = sts.metadata.name.clone().ok_or(ObserveError::MissingName)?;
        let spec = sts.spec.as_ref().ok_or_else(|| ObserveError::MissingSpec {
            statefulset: name.clone(),
        })?;
        let replicas = non_negative(&name, "spec.replicas", spec.replicas.unwrap_or(1))?;
        let ordinal_start = match spec.ordinals.as_ref().and_then(|o| o.start) {
            Some(start) => non_negative(&name, "spec.ordinals.start", start)?,
            None => 0,
        };
        let strategy = spec.update_strategy.as_ref();
        let partition = match strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.partition)
        {
            Some(p) => Some(non_negative(&name, "partition", p)?),
            None => None,
        };
        let status = sts.status.as_ref();
        Ok(Observed {
            replicas,
            ordinal_start,
            partition,
            update_strategy: strategy
                .and_then(|s| s.type_.clone())
                .unwrap_or_else(|| "RollingUpdate".to_string()),
            current_revision: status.and_then(|s| s.current_revision.clone()),
            update_revision: status.and_then(|s| s.update_revision.clone()),
            pod_management_policy: PodManagementPolicy::from_field(
                spec.pod_management_policy.as_deref(),
            ),
            target_applied: false,
            updated_ordinals: BTreeSet::new(),
            claims_deleted_when_scaled: spec
                .persistent_volume_claim_retention_policy
                .as_ref()
                .and_then(|p| p.when_scaled.as_deref())
                == Some("Delete"),
            name,
        })
    }

    /// Marks the target as applied when the StatefulSet's update revision is `target_revision`,
    /// and records which pods run it.
    pub fn with_pods(mut self, pods: &[Pod], target_revision: Option<&str>) -> Observed {
        if let Some(target) = target_revision {
            self.target_applied = self.update_revision.as_deref() == Some(target);
            self.updated_ordinals = predicates::ordinals_on_revision(&self.name, pods, target);
        }
        self
    }

    /// Pods whose ordinal the partition has released (index >= partition), when the target is
    /// applied; 0 otherwise.
    pub fn released(&self) -> u32 {
        if !self.target_applied {
            return 0;
        }
        self.replicas - self.partition.unwrap_or(0).min(self.replicas)
    }
}

/// What a rollback of `sts` would return to, read before the rollout changes anything: the
/// current revision, its images, and the update strategy and partition as they were.
pub fn stable_from_statefulset(sts: &StatefulSet) -> Stable {
    let spec = sts.spec.as_ref();
    let strategy = spec.and_then(|s| s.update_strategy.as_ref());
    Stable {
        revision: Revision {
            revision: sts.status.as_ref().and_then(|s| s.current_revision.clone()),
            images: spec
                .and_then(|s| s.template.spec.as_ref())
                .map(container_images)
                .unwrap_or_default(),
        },
        update_strategy: strategy.and_then(|s| s.type_.clone()),
        partition: partition(sts),
        max_unavailable: strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.as_ref())
            .and_then(|m| serde_json::to_value(m).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::predicates::{ordinal_start, replicas};
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetOrdinals, StatefulSetSpec, StatefulSetStatus,
        StatefulSetUpdateStrategy,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn sts(
        replicas: Option<i32>,
        partition: Option<i32>,
        policy: Option<&str>,
        start: Option<i32>,
    ) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas,
                pod_management_policy: policy.map(String::from),
                ordinals: start.map(|s| StatefulSetOrdinals { start: Some(s) }),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: partition.map(|p| RollingUpdateStatefulSetStrategy {
                        partition: Some(p),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                current_revision: Some("web-a".into()),
                update_revision: Some("web-b".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn reads_spec_and_status() {
        let o = Observed::from_statefulset(&sts(Some(5), Some(3), Some("Parallel"), Some(1)))
            .unwrap_or_default();
        assert_eq!(o.name, "web");
        assert_eq!(o.replicas, 5);
        assert_eq!(o.partition, Some(3));
        assert_eq!(o.ordinal_start, 1);
        assert_eq!(o.pod_management_policy, PodManagementPolicy::Parallel);
        assert_eq!(o.update_strategy, "RollingUpdate");
        assert_eq!(o.current_revision.as_deref(), Some("web-a"));
        assert_eq!(o.update_revision.as_deref(), Some("web-b"));
        assert!(!o.target_applied);
        assert_eq!(o.released(), 0);
    }

    #[test]
    fn reads_whether_a_scale_down_deletes_claims() {
        use k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy as Policy;
        let cases = [
            (None, false),
            (Some(Policy::default()), false),
            (Some(policy(Some("Retain"), Some("Delete"))), false),
            (Some(policy(Some("Delete"), None)), true),
            (Some(policy(Some("Delete"), Some("Delete"))), true),
        ];
        fn policy(when_scaled: Option<&str>, when_deleted: Option<&str>) -> Policy {
            Policy {
                when_scaled: when_scaled.map(String::from),
                when_deleted: when_deleted.map(String::from),
            }
        }
        for (retention, deleted) in cases {
            let mut set = sts(Some(3), None, None, None);
            if let Some(spec) = set.spec.as_mut() {
                spec.persistent_volume_claim_retention_policy = retention.clone();
            }
            let o = Observed::from_statefulset(&set).unwrap_or_default();
            assert_eq!(o.claims_deleted_when_scaled, deleted, "{retention:?}");
        }
    }

    #[test]
    fn defaults_and_errors() {
        let o = Observed::from_statefulset(&sts(None, None, None, None)).unwrap_or_default();
        assert_eq!((o.replicas, o.partition, o.ordinal_start), (1, None, 0));
        assert_eq!(o.pod_management_policy, PodManagementPolicy::OrderedReady);
        let err = Observed::from_statefulset(&sts(Some(-1), None, None, None));
        assert!(matches!(
            err,
            Err(ObserveError::Negative {
                field: "spec.replicas",
                ..
            })
        ));
        let mut nameless = sts(Some(1), None, None, None);
        nameless.metadata.name = None;
        assert_eq!(
            Observed::from_statefulset(&nameless),
            Err(ObserveError::MissingName)
        );
    }

    #[test]
    fn lenient_readers_fall_back_to_the_api_defaults() {
        // (replicas, partition, start) as written -> (spec_replicas, replicas, partition, start)
        let cases = [
            ((Some(5), Some(3), Some(2)), (Some(5), 5, Some(3), 2)),
            ((None, None, None), (None, 1, None, 0)),
            ((Some(0), Some(0), Some(0)), (Some(0), 0, Some(0), 0)),
            ((Some(-1), Some(-2), Some(-3)), (None, 1, None, 0)),
        ];
        for ((r, p, start), want) in cases {
            let set = sts(r, p, None, start);
            let got = (
                predicates::spec_replicas(&set),
                replicas(&set),
                partition(&set),
                ordinal_start(&set),
            );
            assert_eq!(got, want, "{r:?} {p:?} {start:?}");
        }
        let specless = StatefulSet::default();
        assert_eq!(
            (
                predicates::spec_replicas(&specless),
                replicas(&specless),
                partition(&specless),
                ordinal_start(&specless)
            ),
            (None, 1, None, 0)
        );
    }

    #[test]
    fn stable_snapshot() {
        use k8s_openapi::api::core::v1::{Container, PodSpec};
        let mut set = sts(Some(3), Some(2), None, None);
        if let Some(spec) = set.spec.as_mut() {
            spec.template.spec = Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("time-app:v1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let stable = stable_from_statefulset(&set);
        assert_eq!(stable.revision.revision.as_deref(), Some("web-a"));
        assert_eq!(stable.revision.images.len(), 1);
        assert_eq!(stable.revision.images[0].image, "time-app:v1");
        assert_eq!(stable.update_strategy.as_deref(), Some("RollingUpdate"));
        assert_eq!(stable.partition, Some(2));
    }

    #[test]
    fn with_pods_marks_the_target_applied_and_counts_updated_pods() {
        use crate::strategy::predicates::tests::pod;
        let pods = vec![
            pod("web-0", "web-a", true, false),
            pod("web-1", "web-b", true, false),
            pod("web-2", "web-b", false, false),
        ];
        let base =
            Observed::from_statefulset(&sts(Some(3), Some(1), None, None)).unwrap_or_default();
        let applied = base.clone().with_pods(&pods, Some("web-b"));
        assert!(applied.target_applied);
        assert_eq!(applied.updated_ordinals, BTreeSet::from([1, 2]));
        assert_eq!(applied.released(), 2);
        let other = base.clone().with_pods(&pods, Some("web-c"));
        assert!(!other.target_applied);
        assert!(other.updated_ordinals.is_empty());
        assert_eq!(base.clone().with_pods(&pods, None), base);
    }

    #[test]
    fn released_counts_follow_the_partition_once_applied() {
        let cases = [
            (5, Some(5), true, 0),
            (5, Some(3), true, 2),
            (5, None, true, 5),
            (5, Some(9), true, 0),
            (5, Some(3), false, 0),
        ];
        for (replicas, partition, applied, released) in cases {
            let o = Observed {
                replicas,
                partition,
                target_applied: applied,
                ..Observed::default()
            };
            assert_eq!(o.released(), released, "{replicas} {partition:?} {applied}");
        }
    }
}
