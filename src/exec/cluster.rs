//! The seam between the executor and Kubernetes: the handful of calls a rollout makes (get,
//! patch, list, delete, create, replace, watch), as a trait, so unit tests drive the executor
//! with a fake cluster and the real thing is a thin wrapper over `kube::Api`.
//!
//! Watching is one call, [`Cluster::watch`]: it keeps a [`Snapshot`] of the StatefulSet and its
//! pods up to date (kube-runtime watchers underneath) and hands out a `tokio::sync::watch`
//! receiver, so the executor waits for "the next change" instead of polling.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::watch;

use super::patch::StsPatch;
use crate::strategy::predicates::pod_ordinal;

/// What the API server said when a call failed, sorted the way the executor reacts to it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    /// A resourceVersion precondition failed: someone else wrote first.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The object already exists (a create lost a race).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Any other refusal (validation, RBAC, ...).
    #[error("{message} (HTTP {code} {reason})")]
    Refused {
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer: connection, TLS, timeouts.
    #[error("the API server did not answer ({0}); check that the cluster is up, and --kubeconfig / --context")]
    Unreachable(String),
}

impl From<kube::Error> for ApiError {
    fn from(error: kube::Error) -> Self {
        match error {
            kube::Error::Api(status) => match status.code {
                404 => ApiError::NotFound,
                409 if status.reason == "AlreadyExists" => ApiError::AlreadyExists(status.message),
                409 => ApiError::Conflict(status.message),
                code => ApiError::Refused {
                    code,
                    reason: status.reason,
                    message: status.message,
                },
            },
            other => ApiError::Unreachable(other.to_string()),
        }
    }
}

/// The StatefulSet and its pods as the watches last saw them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// False until both watches have listed everything once.
    pub synced: bool,
    /// `None` once the StatefulSet is deleted.
    pub statefulset: Option<StatefulSet>,
    /// The set's pods (by name and ordinal), sorted by name.
    pub pods: Vec<Pod>,
}

/// A live view of a [`Snapshot`]; `changed().await` wakes on every update.
pub type View = watch::Receiver<Arc<Snapshot>>;

/// The calls the executor makes, all in one namespace.
pub trait Cluster: Clone + Send + Sync + 'static {
    fn namespace(&self) -> &str;

    fn get_statefulset(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<StatefulSet>, ApiError>> + Send;

    /// Sends a strategic merge patch built from `patch` (with its resourceVersion
    /// precondition); `dry_run` asks the server to validate and default without storing.
    fn patch_statefulset(
        &self,
        name: &str,
        patch: &StsPatch,
        dry_run: bool,
    ) -> impl Future<Output = Result<StatefulSet, ApiError>> + Send;

    fn list_pods(&self, selector: &str) -> impl Future<Output = Result<Vec<Pod>, ApiError>> + Send;

    /// Deletes a pod; `uid` makes sure it is the pod that was looked at, not a replacement.
    fn delete_pod(
        &self,
        name: &str,
        uid: Option<&str>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    fn list_revisions(
        &self,
        selector: &str,
    ) -> impl Future<Output = Result<Vec<ControllerRevision>, ApiError>> + Send;

    fn get_lease(&self, name: &str)
        -> impl Future<Output = Result<Option<Lease>, ApiError>> + Send;

    fn create_lease(&self, lease: &Lease) -> impl Future<Output = Result<Lease, ApiError>> + Send;

    /// Replaces a lease; its `metadata.resourceVersion` is the precondition.
    fn replace_lease(&self, lease: &Lease) -> impl Future<Output = Result<Lease, ApiError>> + Send;

    fn delete_lease(
        &self,
        name: &str,
        resource_version: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Creates a StatefulSet; `dry_run` asks the server to validate it without storing.
    fn create_statefulset(
        &self,
        sts: &StatefulSet,
        dry_run: bool,
    ) -> impl Future<Output = Result<StatefulSet, ApiError>> + Send;

    /// Deletes a StatefulSet (its pods go with it; its PVCs stay). Gone already is fine.
    fn delete_statefulset(&self, name: &str) -> impl Future<Output = Result<(), ApiError>> + Send;

    fn list_statefulsets(&self) -> impl Future<Output = Result<Vec<StatefulSet>, ApiError>> + Send;

    fn list_services(&self) -> impl Future<Output = Result<Vec<Service>, ApiError>> + Send;

    /// Replaces a Service's selector with `selector` in one patch.
    fn set_service_selector(
        &self,
        name: &str,
        selector: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    fn create_service(
        &self,
        service: &Service,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Deletes a Service; gone already is fine.
    fn delete_service(&self, name: &str) -> impl Future<Output = Result<(), ApiError>> + Send;

    fn list_claims(
        &self,
    ) -> impl Future<Output = Result<Vec<PersistentVolumeClaim>, ApiError>> + Send;

    fn create_claim(
        &self,
        claim: &PersistentVolumeClaim,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Deletes a PVC; gone already is fine.
    fn delete_claim(&self, name: &str) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Starts watching the StatefulSet `name` and the pods `selector` matches.
    fn watch(&self, name: &str, selector: &str) -> View;
}

/// The label selector string (`app=web,tier in (a,b)`) for a StatefulSet's `spec.selector`.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.clone().unwrap_or_default().join(",");
        parts.push(match expr.operator.as_str() {
            "In" => format!("{} in ({values})", expr.key),
            "NotIn" => format!("{} notin ({values})", expr.key),
            "Exists" => expr.key.clone(),
            "DoesNotExist" => format!("!{}", expr.key),
            other => format!("{} {other} ({values})", expr.key),
        });
    }
    parts.join(",")
}

/// True when `pod` is one of the StatefulSet's pods: its name is `<set>-<ordinal>` and, when
/// both are known, its controller is the set.
pub fn belongs_to(sts: &StatefulSet, pod: &Pod) -> bool {
    let Some(name) = sts.metadata.name.as_deref() else {
        return false;
    };
    if pod
        .metadata
        .name
        .as_deref()
        .and_then(|p| pod_ordinal(name, p))
        .is_none()
    {
        return false;
    }
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match (controller, sts.metadata.uid.as_deref()) {
        (Some(owner), Some(uid)) => owner.uid == uid,
        _ => true,
    }
}

/// The real cluster: `kube::Api` calls in one namespace.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
    namespace: String,
}

impl KubeCluster {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        KubeCluster {
            client,
            namespace: namespace.to_string(),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// The field manager name the API server records for rollout's writes.
const FIELD_MANAGER: &str = "rollout";

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    }
}

/// A delete whose object is already gone did what was asked.
fn gone_is_fine<T>(result: Result<T, kube::Error>) -> Result<(), ApiError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) => match ApiError::from(e) {
            ApiError::NotFound => Ok(()),
            other => Err(other),
        },
    }
}

impl Cluster for KubeCluster {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn get_statefulset(&self, name: &str) -> Result<Option<StatefulSet>, ApiError> {
        Ok(self.api::<StatefulSet>().get_opt(name).await?)
    }

    async fn patch_statefulset(
        &self,
        name: &str,
        patch: &StsPatch,
        dry_run: bool,
    ) -> Result<StatefulSet, ApiError> {
        let params = PatchParams {
            dry_run,
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let body = patch.to_json();
        tracing::debug!(statefulset = name, dry_run, patch = %body, "patching StatefulSet");
        Ok(self
            .api::<StatefulSet>()
            .patch(name, &params, &Patch::Strategic(body))
            .await?)
    }

    async fn list_pods(&self, selector: &str) -> Result<Vec<Pod>, ApiError> {
        let list = self
            .api::<Pod>()
            .list(&ListParams::default().labels(selector))
            .await?;
        Ok(list.items)
    }

    async fn delete_pod(&self, name: &str, uid: Option<&str>) -> Result<(), ApiError> {
        let params = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.api::<Pod>().delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(e) => match ApiError::from(e) {
                // Gone already, or replaced by a new pod: nothing left to delete.
                ApiError::NotFound | ApiError::Conflict(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list_revisions(&self, selector: &str) -> Result<Vec<ControllerRevision>, ApiError> {
        let list = self
            .api::<ControllerRevision>()
            .list(&ListParams::default().labels(selector))
            .await?;
        Ok(list.items)
    }

    async fn get_lease(&self, name: &str) -> Result<Option<Lease>, ApiError> {
        Ok(self.api::<Lease>().get_opt(name).await?)
    }

    async fn create_lease(&self, lease: &Lease) -> Result<Lease, ApiError> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        Ok(self.api::<Lease>().create(&params, lease).await?)
    }

    async fn replace_lease(&self, lease: &Lease) -> Result<Lease, ApiError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        Ok(self.api::<Lease>().replace(&name, &params, lease).await?)
    }

    async fn delete_lease(&self, name: &str, resource_version: &str) -> Result<(), ApiError> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(resource_version.to_string()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match self.api::<Lease>().delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(e) => match ApiError::from(e) {
                ApiError::NotFound => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn create_statefulset(
        &self,
        sts: &StatefulSet,
        dry_run: bool,
    ) -> Result<StatefulSet, ApiError> {
        let params = PostParams {
            dry_run,
            ..post_params()
        };
        Ok(self.api::<StatefulSet>().create(&params, sts).await?)
    }

    async fn delete_statefulset(&self, name: &str) -> Result<(), ApiError> {
        gone_is_fine(
            self.api::<StatefulSet>()
                .delete(name, &DeleteParams::default())
                .await,
        )
    }

    async fn list_statefulsets(&self) -> Result<Vec<StatefulSet>, ApiError> {
        Ok(self
            .api::<StatefulSet>()
            .list(&ListParams::default())
            .await?
            .items)
    }

    async fn list_services(&self) -> Result<Vec<Service>, ApiError> {
        Ok(self
            .api::<Service>()
            .list(&ListParams::default())
            .await?
            .items)
    }

    async fn set_service_selector(
        &self,
        name: &str,
        selector: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        // A JSON merge patch merges maps key by key: keys the new selector drops are sent as
        // null, so the result is exactly `selector`, in one write.
        let current = self.api::<Service>().get(name).await?;
        let mut body = serde_json::Map::new();
        for key in current
            .spec
            .and_then(|s| s.selector)
            .unwrap_or_default()
            .keys()
        {
            if !selector.contains_key(key) {
                body.insert(key.clone(), serde_json::Value::Null);
            }
        }
        for (key, value) in selector {
            body.insert(key.clone(), serde_json::Value::String(value.clone()));
        }
        let patch = serde_json::json!({"spec": {"selector": body}});
        tracing::debug!(service = name, patch = %patch, "setting Service selector");
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        self.api::<Service>()
            .patch(name, &params, &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    async fn create_service(&self, service: &Service) -> Result<(), ApiError> {
        self.api::<Service>()
            .create(&post_params(), service)
            .await?;
        Ok(())
    }

    async fn delete_service(&self, name: &str) -> Result<(), ApiError> {
        gone_is_fine(
            self.api::<Service>()
                .delete(name, &DeleteParams::default())
                .await,
        )
    }

    async fn list_claims(&self) -> Result<Vec<PersistentVolumeClaim>, ApiError> {
        Ok(self
            .api::<PersistentVolumeClaim>()
            .list(&ListParams::default())
            .await?
            .items)
    }

    async fn create_claim(&self, claim: &PersistentVolumeClaim) -> Result<(), ApiError> {
        self.api::<PersistentVolumeClaim>()
            .create(&post_params(), claim)
            .await?;
        Ok(())
    }

    async fn delete_claim(&self, name: &str) -> Result<(), ApiError> {
        gone_is_fine(
            self.api::<PersistentVolumeClaim>()
                .delete(name, &DeleteParams::default())
                .await,
        )
    }

    fn watch(&self, name: &str, selector: &str) -> View {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let sets = watcher(
            self.api::<StatefulSet>(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        // Back off between retries so an unreachable API server is not hammered.
        .default_backoff()
        .map(Change::Set)
        .boxed();
        let pods = watcher(
            self.api::<Pod>(),
            watcher::Config::default().labels(selector),
        )
        .default_backoff()
        .map(Change::Pod)
        .boxed();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut changes = futures::stream::select(sets, pods);
            let mut state = WatchState::default();
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    change = changes.next() => {
                        let Some(change) = change else { break };
                        if state.apply(change, &name) {
                            let _ = tx.send(Arc::new(state.snapshot()));
                        }
                    }
                }
            }
        });
        rx
    }
}

// Events are moved once from the stream into the state; their size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Change {
    Set(Result<watcher::Event<StatefulSet>, watcher::Error>),
    Pod(Result<watcher::Event<Pod>, watcher::Error>),
}

/// The two watches folded into one snapshot: each side lists first (buffered until
/// `InitDone`, so a relist never shows a half-empty set of pods), then applies changes.
#[derive(Default)]
struct WatchState {
    set: Option<StatefulSet>,
    set_synced: bool,
    set_buffer: Option<Option<StatefulSet>>,
    pods: BTreeMap<String, Pod>,
    pods_synced: bool,
    pod_buffer: Option<BTreeMap<String, Pod>>,
}

impl WatchState {
    /// Applies one change; true when the snapshot should be sent again.
    fn apply(&mut self, change: Change, name: &str) -> bool {
        match change {
            Change::Set(Err(e)) | Change::Pod(Err(e)) => {
                // The watcher retries by itself (with back-off); a dropped watch is routine, a
                // cluster that stays away shows up as a lost lease.
                tracing::info!(statefulset = name, error = %e, "watch error; retrying");
                false
            }
            Change::Set(Ok(event)) => match event {
                watcher::Event::Init => {
                    self.set_buffer = Some(None);
                    false
                }
                watcher::Event::InitApply(s) => {
                    self.set_buffer = Some(Some(s));
                    false
                }
                watcher::Event::InitDone => {
                    self.set = self.set_buffer.take().flatten();
                    self.set_synced = true;
                    self.synced()
                }
                watcher::Event::Apply(s) => {
                    self.set = Some(s);
                    self.synced()
                }
                watcher::Event::Delete(_) => {
                    self.set = None;
                    self.synced()
                }
            },
            Change::Pod(Ok(event)) => match event {
                watcher::Event::Init => {
                    self.pod_buffer = Some(BTreeMap::new());
                    false
                }
                watcher::Event::InitApply(p) => {
                    if let (Some(buffer), Some(key)) =
                        (self.pod_buffer.as_mut(), p.metadata.name.clone())
                    {
                        buffer.insert(key, p);
                    }
                    false
                }
                watcher::Event::InitDone => {
                    self.pods = self.pod_buffer.take().unwrap_or_default();
                    self.pods_synced = true;
                    self.synced()
                }
                watcher::Event::Apply(p) => {
                    if let Some(key) = p.metadata.name.clone() {
                        self.pods.insert(key, p);
                    }
                    self.synced()
                }
                watcher::Event::Delete(p) => {
                    if let Some(key) = p.metadata.name.as_deref() {
                        self.pods.remove(key);
                    }
                    self.synced()
                }
            },
        }
    }

    fn synced(&self) -> bool {
        self.set_synced && self.pods_synced
    }

    fn snapshot(&self) -> Snapshot {
        let pods = match &self.set {
            Some(set) => self
                .pods
                .values()
                .filter(|p| belongs_to(set, p))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Snapshot {
            synced: self.synced(),
            statefulset: self.set.clone(),
            pods,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelectorRequirement, ObjectMeta, OwnerReference,
    };

    #[test]
    fn selectors_render_like_kubectl() {
        let cases = [
            (LabelSelector::default(), ""),
            (
                LabelSelector {
                    match_labels: Some(
                        [
                            ("app".to_string(), "web".to_string()),
                            ("tier".into(), "db".into()),
                        ]
                        .into(),
                    ),
                    match_expressions: None,
                },
                "app=web,tier=db",
            ),
            (
                LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    match_expressions: Some(vec![
                        LabelSelectorRequirement {
                            key: "track".into(),
                            operator: "In".into(),
                            values: Some(vec!["a".into(), "b".into()]),
                        },
                        LabelSelectorRequirement {
                            key: "legacy".into(),
                            operator: "DoesNotExist".into(),
                            values: None,
                        },
                        LabelSelectorRequirement {
                            key: "zone".into(),
                            operator: "Exists".into(),
                            values: None,
                        },
                        LabelSelectorRequirement {
                            key: "env".into(),
                            operator: "NotIn".into(),
                            values: Some(vec!["dev".into()]),
                        },
                    ]),
                },
                "app=web,track in (a,b),!legacy,zone,env notin (dev)",
            ),
        ];
        for (selector, expected) in cases {
            assert_eq!(selector_string(&selector), expected);
        }
    }

    fn pod(name: &str, owner: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        uid: uid.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn pods_belong_by_name_and_owner() {
        let set = StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let cases = [
            (pod("web-0", Some("u1")), true),
            (pod("web-12", None), true),
            (pod("web-0", Some("other")), false),
            (pod("web-db-0", Some("u1")), false),
            (pod("webx-0", None), false),
            (pod("web-01", None), false),
        ];
        for (p, expected) in cases {
            assert_eq!(belongs_to(&set, &p), expected, "{:?}", p.metadata.name);
        }
    }

    #[test]
    fn watch_state_buffers_relists() {
        let set = StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut state = WatchState::default();
        assert!(!state.apply(Change::Set(Ok(watcher::Event::Init)), "web"));
        assert!(!state.apply(
            Change::Set(Ok(watcher::Event::InitApply(set.clone()))),
            "web"
        ));
        assert!(!state.apply(Change::Set(Ok(watcher::Event::InitDone)), "web"));
        assert!(!state.apply(Change::Pod(Ok(watcher::Event::Init)), "web"));
        assert!(!state.apply(
            Change::Pod(Ok(watcher::Event::InitApply(pod("web-0", None)))),
            "web"
        ));
        assert!(state.apply(Change::Pod(Ok(watcher::Event::InitDone)), "web"));
        let snap = state.snapshot();
        assert!(snap.synced);
        assert_eq!(snap.pods.len(), 1);
        // A relist: until it is done, the old pods stay visible.
        state.apply(Change::Pod(Ok(watcher::Event::Init)), "web");
        state.apply(
            Change::Pod(Ok(watcher::Event::InitApply(pod("web-1", None)))),
            "web",
        );
        assert_eq!(state.snapshot().pods.len(), 1);
        state.apply(Change::Pod(Ok(watcher::Event::InitDone)), "web");
        let names: Vec<_> = state
            .snapshot()
            .pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(names, ["web-1"]);
        assert!(state.apply(Change::Set(Ok(watcher::Event::Delete(set))), "web"));
        assert!(state.snapshot().statefulset.is_none());
        assert!(state.snapshot().pods.is_empty());
    }
}
