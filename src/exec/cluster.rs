//! The executor's side of the seam to the cluster ([`crate::cluster`]), and conveniences over
//! it for the calls the run loop and the commands make today: one StatefulSet, its pods and
//! revisions, the Lease, Services and claims of a second set.
//!
//! Each convenience is the generic call it names, written once for every cluster; none is a
//! method a cluster implements. In the executor, [`Cluster`] names the seam with these
//! conveniences ([`ClusterExt`]), so its call sites read as before; they move onto the generic
//! calls, and a convenience goes when nothing calls it.

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use serde_json::{json, Map, Value};

pub use crate::cluster::{
    belongs_to, selector_string, ApiError, KubeCluster, PatchKind, Preconditions, Select, Snapshot,
    View,
};
/// The seam with the conveniences, under the name the executor has always used.
pub use ClusterExt as Cluster;

use super::patch::StsPatch;

/// A delete whose object is already gone did what was asked.
fn gone_is_fine(result: Result<(), ApiError>) -> Result<(), ApiError> {
    match result {
        Err(ApiError::NotFound) => Ok(()),
        other => other,
    }
}

/// Conveniences over the generic calls of [`crate::cluster::Cluster`] (see the module header).
pub trait ClusterExt: crate::cluster::Cluster {
    fn get_statefulset(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<StatefulSet>, ApiError>> + Send {
        self.get::<StatefulSet>(name)
    }

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

    fn list_pods(&self, selector: &str) -> impl Future<Output = Result<Vec<Pod>, ApiError>> + Send {
        let select = Select::labels(selector);
        async move { self.list::<Pod>(&select).await }
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

    fn list_revisions(
        &self,
        selector: &str,
    ) -> impl Future<Output = Result<Vec<ControllerRevision>, ApiError>> + Send {
        let select = Select::labels(selector);
        async move { self.list::<ControllerRevision>(&select).await }
    }

    /// Creates a StatefulSet; `dry_run` asks the server to validate it without storing.
    fn create_statefulset(
        &self,
        sts: &StatefulSet,
        dry_run: bool,
    ) -> impl Future<Output = Result<StatefulSet, ApiError>> + Send {
        self.create(sts, dry_run)
    }

    /// Deletes a StatefulSet (its pods go with it; its PVCs stay). Gone already is fine.
    fn delete_statefulset(&self, name: &str) -> impl Future<Output = Result<(), ApiError>> + Send {
        async move {
            gone_is_fine(
                self.delete::<StatefulSet>(name, &Preconditions::default())
                    .await,
            )
        }
    }

    fn list_statefulsets(&self) -> impl Future<Output = Result<Vec<StatefulSet>, ApiError>> + Send {
        async move { self.list::<StatefulSet>(&Select::all()).await }
    }

    fn list_services(&self) -> impl Future<Output = Result<Vec<Service>, ApiError>> + Send {
        async move { self.list::<Service>(&Select::all()).await }
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

    fn create_service(
        &self,
        service: &Service,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async move { self.create(service, false).await.map(|_| ()) }
    }

    /// Deletes a Service; gone already is fine.
    fn delete_service(&self, name: &str) -> impl Future<Output = Result<(), ApiError>> + Send {
        async move {
            gone_is_fine(
                self.delete::<Service>(name, &Preconditions::default())
                    .await,
            )
        }
    }

    fn list_claims(
        &self,
    ) -> impl Future<Output = Result<Vec<PersistentVolumeClaim>, ApiError>> + Send {
        async move { self.list::<PersistentVolumeClaim>(&Select::all()).await }
    }

    fn create_claim(
        &self,
        claim: &PersistentVolumeClaim,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async move { self.create(claim, false).await.map(|_| ()) }
    }

    /// Deletes a PVC; gone already is fine.
    fn delete_claim(&self, name: &str) -> impl Future<Output = Result<(), ApiError>> + Send {
        async move {
            gone_is_fine(
                self.delete::<PersistentVolumeClaim>(name, &Preconditions::default())
                    .await,
            )
        }
    }

    fn get_lease(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Lease>, ApiError>> + Send {
        self.get::<Lease>(name)
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
