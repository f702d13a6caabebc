//! The one seam between rollout and the API server: a few calls generic over the kind of object
//! (get, list, create, replace, patch, delete, observe) and a GET through the proxy subresource
//! of a pod or a Service, all in one namespace. A new kind (an HTTPRoute, a VolumeSnapshot) is a
//! type that meets [`Object`], not a new method. The executor, the lock and the gates all go
//! through it: unit tests drive them with the in-memory `fake`, and the real thing
//! ([`KubeCluster`]) is a thin wrapper over `kube::Api`.
//!
//! Waiting is watching: [`Cluster::observe`] keeps a [`Listing`] of the objects up to date and
//! hands out a `tokio::sync::watch` receiver, and [`watch_statefulset`] folds the watches of a
//! StatefulSet and its pods into the [`Snapshot`] the executor waits on.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::NamespaceResourceScope;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

pub use kube::api::Preconditions;

use crate::strategy::predicates::pod_ordinal;

#[cfg(test)]
pub mod fake;
mod real;
pub mod retry;

pub use real::{KubeCluster, WATCH_TIMEOUT_SECS};

/// A kind the seam reads and writes: namespaced, with a static type (a k8s-openapi struct, or a
/// typed custom resource such as Gateway API's HTTPRoute), serde both ways.
pub trait Object:
    kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Object for K where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// What the API server said when a call failed, sorted the way the executor reacts to it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    /// A resourceVersion (or uid) precondition failed: someone else wrote first.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The object already exists (a create lost a race).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Any other refusal (validation, RBAC, ...).
    #[error("{message} (HTTP {code} {reason}){hint}", hint = permission_hint(*code, message))]
    Refused {
        code: u16,
        reason: String,
        message: String,
    },
    /// The API server (or what stands in front of it) cannot answer now: 429 (too many
    /// requests, with the wait it asked for), 500, 502, 503, 504. Retried within the caller's
    /// deadline ([`retry`]); this is what the last try got.
    #[error("{message} (HTTP {code} {reason}); the API server kept failing (overloaded or restarting?) until the time to retry ran out")]
    Unavailable {
        code: u16,
        reason: String,
        message: String,
        retry_after: Option<std::time::Duration>,
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
                code if retry::is_transient_status(code) => ApiError::Unavailable {
                    code,
                    retry_after: status
                        .details
                        .as_ref()
                        .map(|d| d.retry_after_seconds)
                        .filter(|s| *s > 0)
                        .map(|s| std::time::Duration::from_secs(u64::from(s))),
                    reason: status.reason,
                    message: status.message,
                },
                code => ApiError::Refused {
                    code,
                    reason: status.reason,
                    message: status.message,
                },
            },
            other => ApiError::Unreachable(error_chain(&other)),
        }
    }
}

/// For an RBAC refusal (403 `User "u" cannot patch resource "statefulsets" in API group "apps"
/// in the namespace "ns"`): what to grant, so the user knows the next step. Empty otherwise.
pub fn permission_hint(code: u16, message: &str) -> String {
    if code != 403 {
        return String::new();
    }
    let quoted_after = |marker: &str| {
        let rest = &message[message.find(marker)? + marker.len()..];
        let rest = rest.strip_prefix('"')?;
        rest.find('"').map(|end| rest[..end].to_string())
    };
    let verb = message
        .find(" cannot ")
        .map(|i| &message[i + " cannot ".len()..])
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string);
    let (Some(verb), Some(resource)) = (verb, quoted_after(" resource ")) else {
        return "; the account rollout runs as lacks a permission: grant the Role in rollout's README to it".into();
    };
    let group = quoted_after(" in API group ").unwrap_or_default();
    let api_group = if group.is_empty() {
        "core".to_string()
    } else {
        group.clone()
    };
    let namespace = quoted_after(" in the namespace ").map_or_else(
        || "the namespace".to_string(),
        |ns| format!("namespace {ns}"),
    );
    let user = quoted_after("User ").map_or_else(String::new, |u| format!(" to {u}"));
    format!(
        "; grant verb `{verb}` on resource `{resource}` (API group {api_group}){user} in {namespace}: add it to the Role bound to that account (rollout's deploy/rbac.yaml has the Role with every verb each strategy needs)"
    )
}

/// The source chain of an error in one line (the outer message often hides the cause).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// How a patch body is read: a JSON merge patch (RFC 7386), or a strategic merge patch (lists
/// such as `containers` merge by their key, `$patch: replace` replaces a map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
}

/// Which objects of a kind a list or a watch covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Select {
    /// Only the object of this name.
    pub name: Option<String>,
    /// A label selector (`app=web,tier!=db`).
    pub labels: Option<String>,
}

impl Select {
    pub fn all() -> Select {
        Select::default()
    }

    pub fn named(name: &str) -> Select {
        Select {
            name: Some(name.to_string()),
            labels: None,
        }
    }

    /// The objects `selector` matches (all of them when it is empty).
    pub fn labels(selector: &str) -> Select {
        Select {
            name: None,
            labels: (!selector.is_empty()).then(|| selector.to_string()),
        }
    }
}

/// The objects a watch covers, as it last saw them, sorted by name.
#[derive(Debug, Clone)]
pub struct Listing<K> {
    /// False until the watch has listed everything once.
    pub synced: bool,
    pub items: Vec<K>,
}

impl<K> Default for Listing<K> {
    fn default() -> Self {
        Listing {
            synced: false,
            items: Vec::new(),
        }
    }
}

/// A live [`Listing`]; `changed().await` wakes on every update.
pub type Watched<K> = watch::Receiver<Arc<Listing<K>>>;

/// Where a proxied GET goes: a pod's port, or a Service's port (by name or number), through
/// the API server, for a `rollout` outside the cluster network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyTo {
    Pod { name: String, port: u16 },
    Service { name: String, port: String },
}

/// What came back through the proxy. An error status with a `kind: Status` body is the API
/// server's own failure to reach the backend, not the backend's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The calls rollout makes, all in one namespace.
pub trait Cluster: Clone + Send + Sync + 'static {
    fn namespace(&self) -> &str;

    fn get<K: Object>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<K>, ApiError>> + Send;

    fn list<K: Object>(
        &self,
        select: &Select,
    ) -> impl Future<Output = Result<Vec<K>, ApiError>> + Send;

    /// Creates `object`; `dry_run` asks the server to validate and default it without storing.
    fn create<K: Object>(
        &self,
        object: &K,
        dry_run: bool,
    ) -> impl Future<Output = Result<K, ApiError>> + Send;

    /// Replaces the object of `object`'s name; its `metadata.resourceVersion` is the
    /// precondition.
    fn replace<K: Object>(&self, object: &K) -> impl Future<Output = Result<K, ApiError>> + Send;

    /// Patches `name`; a `metadata.resourceVersion` in the body is the precondition. `dry_run`
    /// asks the server for the result without storing it.
    fn patch<K: Object>(
        &self,
        name: &str,
        patch: &Value,
        kind: PatchKind,
        dry_run: bool,
    ) -> impl Future<Output = Result<K, ApiError>> + Send;

    /// Deletes `name` if it still matches `preconditions` (uid: the object that was looked at,
    /// not a replacement; resourceVersion: unchanged since).
    fn delete<K: Object>(
        &self,
        name: &str,
        preconditions: &Preconditions,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Starts watching the objects `select` covers.
    fn observe<K: Object>(&self, select: &Select) -> Watched<K>;

    /// The object `name` of the collection at the API path `collection` (e.g.
    /// `/apis/gateway.networking.k8s.io/v1/gatewayclasses`), as JSON: for the few objects
    /// rollout reads outside its namespace (a route's Gateways and their GatewayClasses).
    /// `None` when there is no such object. Clusters that do not serve it answer `None`.
    fn get_at(
        &self,
        collection: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Value>, ApiError>> + Send {
        let _ = (collection, name);
        async { Ok(None) }
    }

    /// A GET of `path` through the API server's proxy subresource of a pod or a Service.
    fn proxy_get(
        &self,
        to: &ProxyTo,
        path: &str,
    ) -> impl Future<Output = Result<ProxyAnswer, ApiError>> + Send;

    /// Starts watching the StatefulSet `name` and the pods `selector` matches, as one [`View`]
    /// (by default two [`Cluster::observe`] folded together).
    fn watch(&self, name: &str, selector: &str) -> View {
        watch_statefulset(self, name, selector)
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

impl Snapshot {
    /// The two listings as one snapshot: only the pods that belong to the set.
    pub fn of(sets: &Listing<StatefulSet>, pods: &Listing<Pod>) -> Snapshot {
        let statefulset = sets.items.first().cloned();
        let own = match &statefulset {
            Some(set) => pods
                .items
                .iter()
                .filter(|p| belongs_to(set, p))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Snapshot {
            synced: sets.synced && pods.synced,
            statefulset,
            pods: own,
        }
    }
}

/// A live view of a [`Snapshot`]; `changed().await` wakes on every update.
pub type View = watch::Receiver<Arc<Snapshot>>;

/// Starts watching the StatefulSet `name` and the pods `selector` matches, as one [`View`]: a
/// task folds the two watches together as they change.
pub fn watch_statefulset<C: Cluster>(cluster: &C, name: &str, selector: &str) -> View {
    let mut sets = cluster.observe::<StatefulSet>(&Select::named(name));
    let mut pods = cluster.observe::<Pod>(&Select::labels(selector));
    let first = Snapshot::of(&sets.borrow_and_update(), &pods.borrow_and_update());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                changed = sets.changed() => if changed.is_err() { break },
                changed = pods.changed() => if changed.is_err() { break },
            }
            let snapshot = Snapshot::of(&sets.borrow_and_update(), &pods.borrow_and_update());
            tx.send_replace(Arc::new(snapshot));
        }
    });
    rx
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelectorRequirement, ObjectMeta, OwnerReference,
    };

    #[test]
    fn permission_refusals_say_what_to_grant() {
        let hint = permission_hint(
            403,
            r#"statefulsets.apps "web" is forbidden: User "system:serviceaccount:shop:deployer" cannot patch resource "statefulsets" in API group "apps" in the namespace "shop""#,
        );
        for needle in [
            "verb `patch`",
            "resource `statefulsets`",
            "API group apps",
            "system:serviceaccount:shop:deployer",
            "namespace shop",
        ] {
            assert!(hint.contains(needle), "{needle}: {hint}");
        }
        let core = permission_hint(
            403,
            r#"pods "web-0" is forbidden: User "u" cannot get resource "pods/proxy" in API group "" in the namespace "ns""#,
        );
        assert!(
            core.contains("resource `pods/proxy` (API group core)"),
            "{core}"
        );
        assert!(permission_hint(403, "forbidden").contains("Role in rollout's README"));
        assert_eq!(permission_hint(422, "cannot patch resource \"x\""), "");
        let refused = ApiError::Refused {
            code: 403,
            reason: "Forbidden".into(),
            message: r#"leases.coordination.k8s.io is forbidden: User "u" cannot create resource "leases" in API group "coordination.k8s.io" in the namespace "ns""#.into(),
        };
        assert!(refused
            .to_string()
            .contains("grant verb `create` on resource `leases`"));
    }

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
    fn a_snapshot_holds_only_the_sets_own_pods() {
        let set = StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let sets = Listing {
            synced: true,
            items: vec![set],
        };
        let pods = Listing {
            synced: true,
            items: vec![pod("web-0", None), pod("web-shadow-0", None)],
        };
        let snapshot = Snapshot::of(&sets, &pods);
        assert!(snapshot.synced);
        assert_eq!(snapshot.pods.len(), 1);
        let gone = Snapshot::of(&Listing::default(), &pods);
        assert!(!gone.synced);
        assert!(gone.statefulset.is_none() && gone.pods.is_empty());
    }
}
