//! A fake cluster for unit tests: objects of any kind kept in memory as the JSON the API server
//! would serve, with resourceVersion semantics (a stale write is a conflict), merge and
//! strategic merge patches, and equality label selectors; plus a small stand-in for the
//! StatefulSet controller (revisions from templates, pods above the partition on the update
//! revision, Ready unless their revision is marked broken) and for the proxy (a pod answers 200
//! when Ready, a Service when one of its pods is). Tests can make another writer act just before
//! a write, to drive the error paths a real cluster only shows by chance.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::retry::retrying;
use super::{
    belongs_to, ApiError, Cluster, Listing, Object, PatchKind, Preconditions, ProxyAnswer, ProxyTo,
    Select, Snapshot, View, Watched,
};
use crate::strategy::predicates;
use crate::strategy::predicates::{is_ready, pod_ordinal, pod_revision, REVISION_LABEL};

type Hook = Box<dyn FnOnce(&mut State) + Send>;

/// One write the fake stored (dry runs and refused writes are not kept).
#[derive(Debug, Clone)]
pub struct Write {
    /// `create`, `replace`, `patch` or `delete`.
    pub verb: &'static str,
    pub kind: String,
    pub name: String,
    /// The object created or replaced, or the patch body.
    pub body: Value,
}

/// Everything the fake holds.
#[derive(Default)]
pub struct State {
    pub namespace: String,
    next_rv: u64,
    /// Every object as the API server would serve it, by kind and name.
    objects: BTreeMap<(String, String), Value>,
    /// The StatefulSet the tests steer: the one the fake was made with.
    main: String,
    /// Every stored write, in order.
    pub writes: Vec<Write>,
    /// Writes refused by a resourceVersion or uid precondition.
    pub conflicts: u32,
    /// Revisions whose pods never become Ready.
    pub broken: HashSet<String>,
    /// Pods that do not go away when their set scales below them: they stay Terminating (as
    /// with a hung preStop hook) until [`State::release_stuck`].
    pub stuck: HashSet<String>,
    /// Run just before the next patch of the main set (another writer getting there first).
    pub before_patch: VecDeque<Hook>,
    /// Faults the next calls of a verb meet (`get`, `list`, `create`, `replace`, `patch`,
    /// `delete`), in order, as an overloaded or restarting API server would give them.
    pub faults: BTreeMap<&'static str, VecDeque<Injected>>,
    /// Calls that met an injected fault.
    pub faulted: u32,
    /// The IP every new pod gets instead of one per ordinal (a test that serves HTTP on
    /// 127.0.0.1).
    pub pod_ip: Option<String>,
    /// The controllers do nothing until [`State::wake`] (a controller-manager that has not yet
    /// seen a write, so the set's status still speaks of the spec before it).
    pub asleep: bool,
}

/// A fault the fake gives a call instead of doing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// 429 Too Many Requests, asking to wait `retry_after` seconds.
    Throttled { retry_after: u32 },
    /// 503 Service Unavailable (an API server starting, an aggregated API down).
    Unavailable,
    /// The connection was reset before an answer.
    Reset,
    /// The call is done, but its answer is lost on the way back (a reset after the write).
    AnswerLost,
}

impl Injected {
    fn error(self) -> ApiError {
        match self {
            Injected::Throttled { retry_after } => ApiError::Unavailable {
                code: 429,
                reason: "TooManyRequests".into(),
                message: "too many requests, please try again later".into(),
                retry_after: Some(std::time::Duration::from_secs(u64::from(retry_after))),
            },
            Injected::Unavailable => ApiError::Unavailable {
                code: 503,
                reason: "ServiceUnavailable".into(),
                message: "the server is currently unable to handle the request".into(),
                retry_after: None,
            },
            Injected::Reset | Injected::AnswerLost => {
                ApiError::Unreachable("connection reset by peer".into())
            }
        }
    }
}

impl State {
    /// The next `count` calls of `verb` meet `fault`.
    pub fn fail_next(&mut self, verb: &'static str, count: usize, fault: Injected) {
        let queue = self.faults.entry(verb).or_default();
        queue.extend(std::iter::repeat_n(fault, count));
    }

    /// Runs one call of `verb` as the API server would, or gives it the next injected fault.
    fn call<T>(
        &mut self,
        verb: &'static str,
        op: impl FnOnce(&mut State) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let fault = self.faults.get_mut(verb).and_then(VecDeque::pop_front);
        match fault {
            None => op(self),
            Some(fault) => {
                self.faulted += 1;
                if fault == Injected::AnswerLost {
                    let _ = op(self);
                }
                Err(fault.error())
            }
        }
    }
}

fn kind_of<K: Object>() -> String {
    K::kind(&()).into_owned()
}

fn decode<K: Object>(value: &Value) -> Result<K, ApiError> {
    serde_json::from_value(value.clone()).map_err(|e| ApiError::Refused {
        code: 422,
        reason: "Invalid".into(),
        message: e.to_string(),
    })
}

fn encode<K: Object>(object: &K) -> Value {
    serde_json::to_value(object).unwrap_or_default()
}

fn name_of(value: &Value) -> String {
    value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl State {
    fn bump(&mut self) -> String {
        self.next_rv += 1;
        self.next_rv.to_string()
    }

    pub fn get<K: Object>(&self, name: &str) -> Option<K> {
        let value = self.objects.get(&(kind_of::<K>(), name.to_string()))?;
        decode(value).ok()
    }

    /// Every object of kind `K`, by name.
    pub fn list<K: Object>(&self) -> Vec<K> {
        let kind = kind_of::<K>();
        self.objects
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .filter_map(|(_, v)| decode(v).ok())
            .collect()
    }

    /// Stores `object` as it is (a fresh resourceVersion when it has none), as another writer
    /// would, and lets the controller act.
    pub fn put<K: Object>(&mut self, object: &K) {
        let mut value = encode(object);
        if value["metadata"]["resourceVersion"].is_null() {
            value["metadata"]["resourceVersion"] = json!(self.bump());
        }
        let kind = kind_of::<K>();
        self.objects.insert((kind.clone(), name_of(&value)), value);
        self.react(&kind);
    }

    pub fn remove<K: Object>(&mut self, name: &str) {
        self.objects.remove(&(kind_of::<K>(), name.to_string()));
    }

    /// Stores `value` under a new resourceVersion.
    fn store(&mut self, kind: &str, mut value: Value) {
        value["metadata"]["resourceVersion"] = json!(self.bump());
        self.objects
            .insert((kind.to_string(), name_of(&value)), value);
    }

    fn store_typed<K: Object>(&mut self, object: &K) {
        self.store(&kind_of::<K>(), encode(object));
    }

    /// The bodies of the patches of the main set, in order.
    pub fn patches(&self) -> Vec<Value> {
        self.writes
            .iter()
            .filter(|w| w.verb == "patch" && w.kind == "StatefulSet" && w.name == self.main)
            .map(|w| w.body.clone())
            .collect()
    }

    /// The pods deleted by name, in order.
    pub fn deleted_pods(&self) -> Vec<String> {
        self.writes
            .iter()
            .filter(|w| w.verb == "delete" && w.kind == "Pod")
            .map(|w| w.name.clone())
            .collect()
    }

    /// Another writer changes the main set (its resourceVersion and generation move on).
    pub fn touch_set(&mut self, change: impl FnOnce(&mut StatefulSet)) {
        self.edit_main(|sts| {
            change(sts);
            sts.metadata.generation = Some(sts.metadata.generation.unwrap_or(1) + 1);
        });
        self.controller();
    }

    fn edit_main(&mut self, change: impl FnOnce(&mut StatefulSet)) {
        if let Some(mut sts) = self.get::<StatefulSet>(&self.main.clone()) {
            change(&mut sts);
            self.store_typed(&sts);
        }
    }

    /// The stuck pods finish terminating and go; the controller then does its part.
    pub fn release_stuck(&mut self) {
        for name in std::mem::take(&mut self.stuck) {
            let terminating = self
                .get::<Pod>(&name)
                .is_some_and(|p| p.metadata.deletion_timestamp.is_some());
            if terminating {
                self.remove::<Pod>(&name);
            }
        }
        self.controller();
    }

    /// The controllers wake and catch up on every write they slept through.
    pub fn wake(&mut self) {
        self.asleep = false;
        self.controller();
    }

    /// Another writer changes only the main set's status, as the controller does when a pod
    /// restarts: its resourceVersion moves on, its spec and record stay.
    pub fn touch_status(&mut self) {
        self.edit_main(|sts| {
            let status = sts.status.get_or_insert_with(Default::default);
            status.available_replicas = Some(status.available_replicas.unwrap_or(0) + 1);
        });
    }

    /// The revision name the controller gives `template` in the main set.
    pub fn revision_name_for(&self, template: &PodTemplateSpec) -> String {
        revision_name(&self.main, template)
    }

    /// The revision of `sts`'s template, made (or made the latest again) as the controller does.
    fn revision_for(&mut self, sts: &StatefulSet) -> String {
        let set = sts.metadata.name.clone().unwrap_or_default();
        let template = sts.spec.clone().unwrap_or_default().template;
        let name = revision_name(&set, &template);
        let ours: Vec<ControllerRevision> = (self.list::<ControllerRevision>().into_iter())
            .filter(|r| controlled_by(&r.metadata, sts))
            .collect();
        let next = ours.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
        let existing = ours
            .into_iter()
            .find(|r| r.metadata.name == Some(name.clone()));
        match existing {
            Some(mut existing) if existing.revision != next - 1 => {
                existing.revision = next;
                self.store_typed(&existing);
            }
            Some(_) => {}
            None => {
                let mut template = serde_json::to_value(template).unwrap_or_default();
                template["$patch"] = json!("replace");
                let labels = sts.spec.as_ref().map(|s| &s.selector.match_labels);
                let revision = json!({
                    "metadata": {"name": name, "labels": labels, "ownerReferences": [owner(sts)]},
                    "revision": next,
                    "data": {"spec": {"template": template}},
                });
                self.store("ControllerRevision", revision);
            }
        }
        name
    }

    /// The controllers' part after a write of `kind`: they act on changes of StatefulSets and
    /// pods only (a Lease renewal, say, wakes none of them).
    fn react(&mut self, kind: &str) {
        if kind == "StatefulSet" || kind == "Pod" {
            self.controller();
        }
    }

    /// The controllers' part, at once: each StatefulSet's, then the garbage collector's (pods
    /// whose set is gone go with it).
    fn controller(&mut self) {
        if self.asleep {
            return;
        }
        let sets = self.list::<StatefulSet>();
        for sts in &sets {
            self.control(sts);
        }
        let uids: Vec<Value> = sets.iter().map(|s| json!(s.metadata.uid)).collect();
        self.objects.retain(|(kind, _), v| {
            let owner = &v["metadata"]["ownerReferences"][0]["uid"];
            kind != "Pod" || owner.is_null() || uids.contains(owner)
        });
    }

    /// The StatefulSet controller's part for one set.
    fn control(&mut self, sts: &StatefulSet) {
        let name = sts.metadata.name.clone().unwrap_or_default();
        let spec = sts.spec.clone().unwrap_or_default();
        let update = self.revision_for(sts);
        let replicas = u32::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
        let partition = predicates::partition(sts).unwrap_or(0);
        let status = sts.status.clone().unwrap_or_default();
        let current = status.current_revision.unwrap_or_else(|| update.clone());
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
        let own = |p: Pod| Some((p.metadata.name.clone()?, p)).filter(|(_, p)| belongs_to(sts, p));
        let before: BTreeMap<String, Pod> =
            self.list::<Pod>().into_iter().filter_map(own).collect();
        let mut pods = before.clone();
        let stuck = &self.stuck;
        pods.retain(|pod_name, pod| {
            let wanted = pod_ordinal(&name, pod_name).is_some_and(|o| o < replicas);
            if !wanted && stuck.contains(pod_name) && pod.metadata.deletion_timestamp.is_none() {
                pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
            }
            wanted || stuck.contains(pod_name)
        });
        let ready = |pods: &BTreeMap<String, Pod>, n: &str| pods.get(n).is_some_and(is_ready);
        // Missing pods are created (an OrderedReady set stops at the first one not Ready).
        for ordinal in 0..replicas {
            let pod_name = format!("{name}-{ordinal}");
            if !pods.contains_key(&pod_name) {
                let revision = if ordinal >= partition {
                    &update
                } else {
                    &current
                };
                pods.insert(pod_name.clone(), self.make_pod(sts, ordinal, revision));
            }
            if ordered && !ready(&pods, &pod_name) {
                break;
            }
        }
        // Rolling update from the highest ordinal down to the partition. OrderedReady waits on
        // any pod that is not Ready, which is how a broken pod wedges it (kubernetes #67250).
        let all_ready = (0..replicas).all(|o| ready(&pods, &format!("{name}-{o}")));
        if !ordered || all_ready {
            for ordinal in (partition..replicas).rev() {
                let pod_name = format!("{name}-{ordinal}");
                let on = pods.get(&pod_name).and_then(pod_revision);
                if on != Some(update.as_str()) {
                    pods.insert(pod_name.clone(), self.make_pod(sts, ordinal, &update));
                }
                if ordered && !ready(&pods, &pod_name) {
                    break;
                }
            }
        }
        let changed_pods = before != pods;
        for gone in before.keys().filter(|n| !pods.contains_key(*n)) {
            self.remove::<Pod>(gone);
        }
        for (_, pod) in pods.iter().filter(|(n, p)| before.get(*n) != Some(*p)) {
            self.store_typed(pod);
        }
        let on_update = |p: &&Pod| pod_revision(p) == Some(update.as_str());
        let on_update = pods.values().filter(on_update).count();
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let new_status = StatefulSetStatus {
            observed_generation: sts.metadata.generation,
            replicas: count(pods.len()),
            ready_replicas: Some(count(pods.values().filter(|p| is_ready(p)).count())),
            updated_replicas: Some(count(on_update)),
            current_revision: Some(if on_update == pods.len() {
                update.clone()
            } else {
                current
            }),
            update_revision: Some(update),
            ..Default::default()
        };
        if sts.status.as_ref() != Some(&new_status) || changed_pods {
            let mut sts = sts.clone();
            sts.status = Some(new_status);
            self.store_typed(&sts);
        }
    }

    fn make_pod(&mut self, sts: &StatefulSet, ordinal: u32, revision: &str) -> Pod {
        let template = sts.spec.clone().unwrap_or_default().template;
        let mut labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
        labels.insert(REVISION_LABEL.to_string(), revision.to_string());
        let ready = if self.broken.contains(revision) {
            "False"
        } else {
            "True"
        };
        let ip = (self.pod_ip.clone()).unwrap_or_else(|| format!("10.244.0.{}", 10 + ordinal));
        let pod = json!({
            "metadata": {
                "name": format!("{}-{ordinal}", sts.metadata.name.as_deref().unwrap_or_default()),
                "namespace": self.namespace, "uid": format!("uid-{}", self.bump()),
                "labels": labels, "ownerReferences": [owner(sts)],
            },
            "spec": template.spec,
            "status": {"podIP": ip, "conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": Timestamp::now().to_string()},
            ]},
        });
        decode(&pod).unwrap_or_default()
    }

    /// The proxy's part: a pod answers when it is Ready, a Service when one of its pods is;
    /// otherwise the API server's own error (a `kind: Status` body).
    fn proxy(&self, to: &ProxyTo) -> ProxyAnswer {
        let serving = match to {
            ProxyTo::Pod { name, .. } => self.get::<Pod>(name).map(|p| is_ready(&p)),
            ProxyTo::Service { name, .. } => self.get::<Service>(name).map(|service| {
                let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
                let selects = |p: &Pod| {
                    let labels = p.metadata.labels.clone().unwrap_or_default();
                    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                };
                let pods = self.list::<Pod>();
                !selector.is_empty() && pods.iter().any(|p| is_ready(p) && selects(p))
            }),
        };
        let (status, body) = match serving {
            Some(true) => (200, json!("ok")),
            Some(false) => (
                503,
                json!({"kind": "Status", "apiVersion": "v1", "code": 503}),
            ),
            None => (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "code": 404}),
            ),
        };
        let body = body.to_string().into_bytes();
        ProxyAnswer { status, body }
    }
}

/// `<set>-<hash of the template>`, as the controller names revisions.
fn revision_name(set: &str, template: &PodTemplateSpec) -> String {
    let value = serde_json::to_value(template).unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    format!("{set}-{:x}", hasher.finish() & 0xff_ffff)
}

fn owner(sts: &StatefulSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: sts.metadata.name.clone().unwrap_or_default(),
        uid: sts.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        ..Default::default()
    }
}

fn controlled_by(meta: &ObjectMeta, sts: &StatefulSet) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == sts.metadata.uid.as_ref() && o.controller == Some(true))
}

/// Applies `patch` to `target`: a JSON merge patch (null removes a key); as a strategic merge
/// patch also, as far as rollout's writes need it, lists of objects with a `name` merge by name
/// and `$patch: replace` replaces a map.
fn merge(target: &mut Value, patch: &Value, kind: PatchKind) {
    let strategic = kind == PatchKind::Strategic;
    match patch {
        Value::Object(fields) if strategic && fields.get("$patch") == Some(&json!("replace")) => {
            let mut replaced = fields.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
        }
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(target) = target {
                for (key, value) in fields {
                    if value.is_null() {
                        target.remove(key);
                    } else {
                        merge(
                            target.entry(key.clone()).or_insert(Value::Null),
                            value,
                            kind,
                        );
                    }
                }
            }
        }
        Value::Array(items)
            if strategic && target.is_array() && items.iter().all(|i| i["name"].is_string()) =>
        {
            if let Value::Array(list) = target {
                for item in items {
                    match list.iter_mut().find(|t| t["name"] == item["name"]) {
                        Some(existing) => merge(existing, item, kind),
                        None => list.push(item.clone()),
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// True when `select` covers `value`. A label selector is read as `key=value` terms: what
/// [`super::selector_string`] makes of `matchLabels`.
fn selects(select: &Select, value: &Value) -> Result<bool, ApiError> {
    let mut holds = select.name.as_ref().is_none_or(|n| *n == name_of(value));
    for term in select.labels.iter().flat_map(|l| l.split(',')) {
        let (key, wanted) = term.split_once('=').ok_or_else(|| ApiError::Refused {
            code: 400,
            reason: "BadRequest".into(),
            message: format!("the fake cluster reads only key=value selectors, not `{term}`"),
        })?;
        let wanted = wanted.trim_start_matches('=').trim();
        holds &= value["metadata"]["labels"][key.trim()] == json!(wanted);
    }
    Ok(holds)
}

/// A watch of one kind: sends the listing again after every change.
type Watcher = Box<dyn FnMut(&State) -> bool + Send>;

/// The fake cluster.
#[derive(Clone)]
pub struct FakeCluster {
    pub state: Arc<Mutex<State>>,
    watchers: Arc<Mutex<Vec<Watcher>>>,
}

/// A StatefulSet `name` of `replicas` pods running `image`, serving on port 8080.
pub fn statefulset(name: &str, replicas: i32, image: &str, parallel: bool) -> StatefulSet {
    let labels = json!({ "app": name });
    let sts = json!({
        "metadata": {"name": name, "namespace": "test", "uid": format!("{name}-uid"), "generation": 1},
        "spec": {
            "replicas": replicas,
            "podManagementPolicy": if parallel { json!("Parallel") } else { Value::Null },
            "selector": {"matchLabels": labels},
            "serviceName": name,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": image,
                    "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
        },
    });
    decode(&sts).unwrap_or_default()
}

impl FakeCluster {
    /// A fake holding `sts` (the main set) and what its controller makes of it.
    pub fn new(sts: StatefulSet) -> FakeCluster {
        let mut state = State {
            namespace: "test".into(),
            next_rv: 100,
            main: sts.metadata.name.clone().unwrap_or_default(),
            ..State::default()
        };
        state.store_typed(&sts);
        state.controller();
        FakeCluster {
            state: Arc::new(Mutex::new(state)),
            watchers: Arc::default(),
        }
    }

    /// Works on the state, then tells the watchers.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let result = f(&mut state);
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.retain_mut(|send| send(&state));
        result
    }

    /// A watch: `now` of the state, again after every change.
    fn subscribe<T: Send + Sync + 'static>(
        &self,
        now: impl Fn(&State) -> T + Send + 'static,
    ) -> watch::Receiver<Arc<T>> {
        let (tx, rx) = watch::channel(Arc::new(self.with(|s| now(s))));
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.push(Box::new(move |state| {
            tx.send_replace(Arc::new(now(state)));
            !tx.is_closed()
        }));
        rx
    }

    /// The main set.
    pub fn set(&self) -> StatefulSet {
        self.with(|s| s.get(&s.main.clone())).unwrap_or_default()
    }

    pub fn image(&self) -> String {
        self.set()
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
            .unwrap_or_default()
    }

    /// The main set's pods: name, revision, Ready.
    pub fn pod_revisions(&self) -> Vec<(String, String, bool)> {
        let (set, pods) = (self.set(), self.with(|s| s.list::<Pod>()));
        let row = |p: &Pod| {
            let name = p.metadata.name.clone().unwrap_or_default();
            (
                name,
                pod_revision(p).unwrap_or_default().into(),
                is_ready(p),
            )
        };
        pods.iter()
            .filter(|p| belongs_to(&set, p))
            .map(row)
            .collect()
    }
}

/// What a watch of `select` sees: the fake is always in sync.
fn listed<K: Object>(state: &State, select: &Select) -> Listing<K> {
    Listing {
        synced: true,
        items: listing(state, select).unwrap_or_default(),
    }
}

/// The listing of `K` that `select` covers.
fn listing<K: Object>(state: &State, select: &Select) -> Result<Vec<K>, ApiError> {
    let kind = kind_of::<K>();
    let mut items = Vec::new();
    for ((k, _), value) in &state.objects {
        if *k == kind && selects(select, value)? {
            items.push(decode(value)?);
        }
    }
    Ok(items)
}

impl State {
    /// The stored `kind/name`, if the write's preconditions (resourceVersion, uid) still hold.
    fn current(
        &mut self,
        kind: &str,
        name: &str,
        rv: Option<&str>,
        uid: Option<&str>,
    ) -> Result<Value, ApiError> {
        let key = (kind.to_string(), name.to_string());
        let current = self.objects.get(&key).cloned().ok_or(ApiError::NotFound)?;
        let held = |field: &str, want: Option<&str>| {
            want.is_none_or(|w| current["metadata"][field] == json!(w))
        };
        if held("resourceVersion", rv) && held("uid", uid) {
            return Ok(current);
        }
        self.conflicts += 1;
        Err(ApiError::Conflict(format!(
            "the object {name} has been modified"
        )))
    }

    /// Stores a write: the generation moves on with the spec, the controllers act.
    fn write(&mut self, verb: &'static str, kind: &str, mut value: Value, body: Value) -> Value {
        let name = name_of(&value);
        if let Ok(current) = self.current(kind, &name, None, None) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
            let moved = current["spec"] != value["spec"];
            value["metadata"]["generation"] = json!(generation + i64::from(moved));
        }
        self.store(kind, value);
        self.record(verb, kind, &name, body);
        self.current(kind, &name, None, None).unwrap_or_default()
    }

    fn record(&mut self, verb: &'static str, kind: &str, name: &str, body: Value) {
        let (kind, name) = (kind.to_string(), name.to_string());
        self.writes.push(Write {
            verb,
            kind: kind.clone(),
            name,
            body,
        });
        self.react(&kind);
    }
}

/// The calls as the API server does them, on the state (faults and retries are the caller's).
impl State {
    fn create<K: Object>(&mut self, object: &K, dry_run: bool) -> Result<K, ApiError> {
        let kind = kind_of::<K>();
        let s = self;
        let mut value = encode(object);
        let name = name_of(&value);
        if s.current(&kind, &name, None, None).is_ok() {
            return Err(ApiError::AlreadyExists(name));
        }
        if let Some(meta) = value["metadata"].as_object_mut() {
            meta.insert("namespace".into(), json!(s.namespace));
            meta.entry("uid")
                .or_insert(json!(format!("uid-{}", s.next_rv + 1)));
            meta.entry("generation").or_insert(json!(1));
        }
        decode::<K>(&value)?;
        if dry_run {
            return decode(&value);
        }
        decode(&s.write("create", &kind, value.clone(), value))
    }

    fn replace<K: Object>(&mut self, object: &K) -> Result<K, ApiError> {
        let kind = kind_of::<K>();
        let value = encode(object);
        let rv = value["metadata"]["resourceVersion"].as_str();
        self.current(&kind, &name_of(&value), rv, None)?;
        decode(&self.write("replace", &kind, value.clone(), value))
    }

    fn patch<K: Object>(
        &mut self,
        name: &str,
        patch: &Value,
        kind: PatchKind,
        dry_run: bool,
    ) -> Result<K, ApiError> {
        let of = kind_of::<K>();
        let s = self;
        if !dry_run && of == "StatefulSet" && name == s.main {
            if let Some(hook) = s.before_patch.pop_front() {
                hook(s);
            }
        }
        let rv = patch["metadata"]["resourceVersion"].as_str();
        let mut value = s.current(&of, name, rv, None)?;
        merge(&mut value, patch, kind);
        decode::<K>(&value)?;
        if dry_run {
            return decode(&value);
        }
        decode(&s.write("patch", &of, value, patch.clone()))
    }

    fn delete<K: Object>(&mut self, name: &str, p: &Preconditions) -> Result<(), ApiError> {
        let kind = kind_of::<K>();
        self.current(&kind, name, p.resource_version.as_deref(), p.uid.as_deref())?;
        self.objects.remove(&(kind.clone(), name.to_string()));
        self.record("delete", &kind, name, Value::Null);
        Ok(())
    }
}

impl Cluster for FakeCluster {
    fn namespace(&self) -> &str {
        "test"
    }

    async fn get<K: Object>(&self, name: &str) -> Result<Option<K>, ApiError> {
        retrying("get", || async {
            self.with(|s| s.call("get", |s| Ok(s.get(name))))
        })
        .await
    }

    async fn list<K: Object>(&self, select: &Select) -> Result<Vec<K>, ApiError> {
        retrying("list", || async {
            self.with(|s| s.call("list", |s| listing(s, select)))
        })
        .await
    }

    async fn create<K: Object>(&self, object: &K, dry_run: bool) -> Result<K, ApiError> {
        retrying("create", || async {
            self.with(|s| s.call("create", |s| s.create(object, dry_run)))
        })
        .await
    }

    async fn replace<K: Object>(&self, object: &K) -> Result<K, ApiError> {
        retrying("replace", || async {
            self.with(|s| s.call("replace", |s| s.replace(object)))
        })
        .await
    }

    async fn patch<K: Object>(
        &self,
        name: &str,
        patch: &Value,
        kind: PatchKind,
        dry_run: bool,
    ) -> Result<K, ApiError> {
        retrying("patch", || async {
            self.with(|s| s.call("patch", |s| s.patch::<K>(name, patch, kind, dry_run)))
        })
        .await
    }

    async fn delete<K: Object>(
        &self,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<(), ApiError> {
        retrying("delete", || async {
            self.with(|s| s.call("delete", |s| s.delete::<K>(name, preconditions)))
        })
        .await
    }

    fn observe<K: Object>(&self, select: &Select) -> Watched<K> {
        let select = select.clone();
        self.subscribe(move |state| listed(state, &select))
    }

    async fn proxy_get(&self, to: &ProxyTo, _path: &str) -> Result<ProxyAnswer, ApiError> {
        Ok(self.with(|s| s.proxy(to)))
    }

    /// The snapshot is made at each write, before the writer goes on: executor tests see every
    /// write at once, so what they assert does not hang on when a folding task runs.
    fn watch(&self, name: &str, selector: &str) -> View {
        let (sets, pods) = (Select::named(name), Select::labels(selector));
        self.subscribe(move |state| Snapshot::of(&listed(state, &sets), &listed(state, &pods)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// A kind the seam has no method for: Gateway API's HTTPRoute, reduced to what a weight
    /// step would write.
    #[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
    struct HttpRoute {
        metadata: ObjectMeta,
        #[serde(default)]
        spec: Value,
    }

    impl kube::Resource for HttpRoute {
        type DynamicType = ();
        type Scope = k8s_openapi::NamespaceResourceScope;
        fn kind(_: &()) -> Cow<'_, str> {
            "HTTPRoute".into()
        }
        fn group(_: &()) -> Cow<'_, str> {
            "gateway.networking.k8s.io".into()
        }
        fn version(_: &()) -> Cow<'_, str> {
            "v1".into()
        }
        fn plural(_: &()) -> Cow<'_, str> {
            "httproutes".into()
        }
        fn meta(&self) -> &ObjectMeta {
            &self.metadata
        }
        fn meta_mut(&mut self) -> &mut ObjectMeta {
            &mut self.metadata
        }
    }

    fn route(weights: (u32, u32)) -> HttpRoute {
        HttpRoute {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: json!({"rules": [{"backendRefs": [
                {"name": "web", "weight": weights.0},
                {"name": "web-canary", "weight": weights.1},
            ]}]}),
        }
    }

    #[tokio::test]
    async fn a_new_kind_goes_through_the_seam_as_it_is() {
        let fake = FakeCluster::new(statefulset("web", 1, "app:v1", true));
        let created = fake
            .create(&route((100, 0)), false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let rv = created.metadata.resource_version.clone();
        let mut view = fake.observe::<HttpRoute>(&Select::named("web"));
        let patch = json!({"metadata": {"resourceVersion": rv}, "spec": route((90, 10)).spec});
        let patched: HttpRoute = fake
            .patch("web", &patch, PatchKind::Merge, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(patched.spec["rules"][0]["backendRefs"][1]["weight"], 10);
        assert!(view.has_changed().unwrap_or(false));
        assert_eq!(view.borrow_and_update().items.len(), 1);
        // The same write again is based on a resourceVersion that has moved on.
        let stale = fake
            .patch::<HttpRoute>("web", &patch, PatchKind::Merge, false)
            .await;
        assert!(matches!(stale, Err(ApiError::Conflict(_))), "{stale:?}");
        let again = fake.create(&route((0, 100)), false).await;
        assert!(
            matches!(again, Err(ApiError::AlreadyExists(_))),
            "{again:?}"
        );
        fake.delete::<HttpRoute>("web", &Preconditions::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(fake
            .list::<HttpRoute>(&Select::all())
            .await
            .is_ok_and(|l| l.is_empty()));
    }

    #[test]
    fn patches_merge_like_the_api_server() {
        let target = json!({
            "metadata": {"annotations": {"a": "1", "b": "2"}},
            "spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "app:v1", "ports": [{"containerPort": 8080}]},
                {"name": "sidecar", "image": "proxy:v1"},
            ]}}, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}},
        });
        // (patch, kind, where to look, what is there after it)
        let cases = [
            (
                json!({"metadata": {"annotations": {"a": null}}}),
                PatchKind::Merge,
                "/metadata/annotations",
                json!({"b": "2"}),
            ),
            (
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:v2"}]}}}}),
                PatchKind::Strategic,
                "/spec/template/spec/containers",
                json!([
                    {"name": "app", "image": "app:v2", "ports": [{"containerPort": 8080}]},
                    {"name": "sidecar", "image": "proxy:v1"},
                ]),
            ),
            (
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:v2"}]}}}}),
                PatchKind::Merge,
                "/spec/template/spec/containers",
                json!([{"name": "app", "image": "app:v2"}]),
            ),
            (
                json!({"spec": {"template": {"$patch": "replace", "spec": {"containers": []}}}}),
                PatchKind::Strategic,
                "/spec/template",
                json!({"spec": {"containers": []}}),
            ),
            (
                json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}),
                PatchKind::Strategic,
                "/spec/updateStrategy",
                json!({"type": "OnDelete"}),
            ),
        ];
        for (patch, kind, path, expected) in cases {
            let mut merged = target.clone();
            merge(&mut merged, &patch, kind);
            assert_eq!(merged.pointer(path), Some(&expected), "{patch}");
        }
    }

    #[test]
    fn label_selectors_select() {
        let pod = json!({"metadata": {"name": "web-0", "labels": {"app": "web", "tier": "db"}}});
        let cases = [
            (Select::all(), Some(true)),
            (Select::named("web-1"), Some(false)),
            (Select::labels("app=web"), Some(true)),
            (Select::labels("app==web,tier=db"), Some(true)),
            (Select::labels("app=web,tier=cache"), Some(false)),
            (Select::labels("app in (web)"), None),
        ];
        for (select, expected) in cases {
            assert_eq!(selects(&select, &pod).ok(), expected, "{select:?}");
        }
    }

    #[tokio::test]
    async fn the_proxy_answers_for_ready_pods_and_services_that_select_them() {
        let fake = FakeCluster::new(statefulset("web", 1, "app:v1", true));
        let pod = |name: &str| ProxyTo::Pod {
            name: name.into(),
            port: 8080,
        };
        let status = |to: ProxyTo| {
            let fake = fake.clone();
            async move { fake.proxy_get(&to, "/").await.map(|a| a.status).ok() }
        };
        assert_eq!(status(pod("web-0")).await, Some(200));
        assert_eq!(status(pod("web-7")).await, Some(404));
        let service = Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        fake.with(|s| s.put(&service));
        let via_service = ProxyTo::Service {
            name: "web".into(),
            port: "http".into(),
        };
        assert_eq!(status(via_service.clone()).await, Some(200));
        fake.with(|s| {
            s.put(&Service {
                spec: None,
                ..service
            })
        });
        assert_eq!(status(via_service).await, Some(503));
    }
}
