//! The executor's side of the seam to the cluster ([`crate::cluster`]): the seam itself, and
//! [`ClusterExt`], the few calls that carry more meaning than the generic ones (a StatefulSet
//! write from an [`StsPatch`], a pod deleted only if it is the pod that was looked at, a
//! Service's selector replaced, a delete of something already gone taken as done), written
//! once for every cluster; none is a method a cluster implements.

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::{json, Map, Value};

pub use crate::cluster::Cluster;
pub use crate::cluster::{
    belongs_to, selector_string, ApiError, KubeCluster, PatchKind, Preconditions, Select, Snapshot,
    View,
};

use super::patch::StsPatch;

/// A delete whose object is already gone did what was asked.
fn gone_is_fine(result: Result<(), ApiError>) -> Result<(), ApiError> {
    match result {
        Err(ApiError::NotFound) => Ok(()),
        other => other,
    }
}

/// The calls that carry more than the generic seam says: a StatefulSet write from an
/// [`StsPatch`], a pod deleted only if it is the one looked at, a Service's selector replaced,
/// a delete of something already gone taken as done. Written once for every cluster.
pub trait ClusterExt: crate::cluster::Cluster {
    /// Sends `patch` as a strategic merge patch (with its resourceVersion precondition);
    /// `dry_run` asks the server to validate and default without storing.
    fn patch_statefulset(
        &self,
        name: &str,
        patch: &StsPatch,
        dry_run: bool,
    ) -> impl Future<Output = Result<StatefulSet, ApiError>> + Send {
        let body = patch.to_json();
        async move {
            self.patch::<StatefulSet>(name, &body, PatchKind::Strategic, dry_run)
                .await
        }
    }

    /// Deletes a pod; `uid` makes sure it is the pod that was looked at, not a replacement.
    fn delete_pod(
        &self,
        name: &str,
        uid: Option<&str>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        let preconditions = Preconditions {
            uid: uid.map(String::from),
            resource_version: None,
        };
        async move {
            match self.delete::<Pod>(name, &preconditions).await {
                // Gone already, or replaced by a new pod: nothing left to delete.
                Err(ApiError::NotFound | ApiError::Conflict(_)) => Ok(()),
                other => other,
            }
        }
    }

    /// Replaces a Service's selector with `selector` in one write.
    fn set_service_selector(
        &self,
        name: &str,
        selector: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async move {
            let current = self.get::<Service>(name).await?.ok_or(ApiError::NotFound)?;
            let patch = selector_patch(&current, selector);
            self.patch::<Service>(name, &patch, PatchKind::Merge, false)
                .await?;
            Ok(())
        }
    }

    /// Deletes an object; gone already is fine (a StatefulSet's pods go with it, its PVCs
    /// stay).
    fn remove<K: crate::cluster::Object>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async move { gone_is_fine(self.delete::<K>(name, &Preconditions::default()).await) }
    }
}

impl<C: crate::cluster::Cluster> ClusterExt for C {}

/// A JSON merge patch that makes a Service's selector exactly `selector`: a merge patch merges
/// maps key by key, so the keys the new selector drops are sent as null.
fn selector_patch(current: &Service, selector: &BTreeMap<String, String>) -> Value {
    let mut body = Map::new();
    let old = current.spec.as_ref().and_then(|s| s.selector.as_ref());
    for key in old.into_iter().flatten().map(|(k, _)| k) {
        if !selector.contains_key(key) {
            body.insert(key.clone(), Value::Null);
        }
    }
    for (key, value) in selector {
        body.insert(key.clone(), json!(value));
    }
    json!({"spec": {"selector": body}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    fn service(selector: &[(&str, &str)]) -> Service {
        let selector = selector.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Service {
            spec: Some(ServiceSpec {
                selector: Some(selector.collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_selector_patch_drops_the_keys_the_new_selector_has_not() {
        let current = service(&[("app", "web"), ("rollout.dev/set", "web-bg1")]);
        let cases = [
            (
                vec![("app", "web")],
                json!({"spec": {"selector": {"app": "web", "rollout.dev/set": null}}}),
            ),
            (
                vec![("app", "web"), ("rollout.dev/set", "web-bg2")],
                json!({"spec": {"selector": {"app": "web", "rollout.dev/set": "web-bg2"}}}),
            ),
        ];
        for (selector, expected) in cases {
            let selector = selector
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(selector_patch(&current, &selector), expected);
        }
    }
}
