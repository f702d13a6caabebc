//! The executor's side of metric gates: what the placeholders of a query stand for on this
//! cluster (namespace, set, revisions, pods), and the check before any write that Prometheus
//! answers and accepts every query. Querying and judging are `crate::gate::prometheus`.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;

use super::ExecError;
use crate::gate::prometheus::{self, Prometheus};
use crate::model::gate::GateSpec;
use crate::model::metric::Placeholders;

/// The pod label the StatefulSet controller sets to the revision a pod runs.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// The revision `pod` runs, by its label.
pub fn pod_revision(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .map(String::as_str)
}

/// The names of `pods` that run `revision`.
pub fn pods_on(pods: &[Pod], revision: &str) -> Vec<String> {
    pods.iter()
        .filter(|p| pod_revision(p) == Some(revision))
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// The Prometheus of this run, when metric gates need one: a missing URL is refused.
pub fn prometheus_for(
    statefulset: &str,
    gates: &GateSpec,
    url: Option<&str>,
) -> Result<Option<Prometheus>, ExecError> {
    if gates.prometheus.is_empty() {
        return Ok(None);
    }
    let refuse = |message: String| ExecError::MetricGates {
        statefulset: statefulset.to_string(),
        message,
    };
    let url = url.ok_or_else(|| {
        refuse("no Prometheus to ask: give its URL with --prometheus-url (or ROLLOUT_PROMETHEUS_URL; `devcluster env` prints the devcluster's)".into())
    })?;
    Prometheus::new(url)
        .map(Some)
        .map_err(|e| refuse(e.to_string()))
}

/// Before any write: Prometheus answers, and accepts every query with its placeholders filled
/// as they are now (the new revision does not exist yet: stable's stands in).
pub async fn check_before_start(
    statefulset: &str,
    namespace: &str,
    sts: &StatefulSet,
    pods: &[Pod],
    gates: &GateSpec,
    url: Option<&str>,
) -> Result<(), ExecError> {
    let Some(prometheus) = prometheus_for(statefulset, gates, url)? else {
        return Ok(());
    };
    let current = sts
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .unwrap_or_default();
    let values = Placeholders {
        namespace: namespace.to_string(),
        set: statefulset.to_string(),
        revision: current.clone(),
        new: current.clone(),
        stable: current.clone(),
        pods: pods_on(pods, &current),
    };
    prometheus::check_up_front(&prometheus, &gates.prometheus, &values)
        .await
        .map_err(|e| ExecError::MetricGates {
            statefulset: statefulset.to_string(),
            message: e.to_string(),
        })
}
