//! A fake cluster for unit tests of the executor: one StatefulSet, its pods and revisions, and
//! Leases, kept in memory with resourceVersion semantics (a stale write is a conflict), plus a
//! small stand-in for the StatefulSet controller (revisions from templates, pods above the
//! partition on the update revision, Ready unless their revision is marked broken). Other sets
//! the executor creates (a shadow, a green) get their pods Ready at once and a watch of their
//! own. Tests can make another writer act just before a given write, to drive the error paths a
//! real cluster only shows by chance.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{
    ControllerRevision, RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec,
    StatefulSetStatus, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PersistentVolumeClaim, Pod, PodCondition, PodSpec, PodStatus,
    PodTemplateSpec, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;

use super::cluster::{ApiError, Cluster, Snapshot, View};
use super::gates::GateRunner;
use super::patch::{RecordChange, StrategyChange, StsPatch, TemplateChange};
use crate::gate::probe::{GateContext, PodTarget};
use crate::gate::Verdict;
use crate::model::gate::GateSpec;
use crate::model::image::apply_images;
use crate::strategy::predicates;
use crate::strategy::predicates::REVISION_LABEL;

type Hook = Box<dyn FnOnce(&mut State) + Send>;

/// Everything the fake holds.
pub struct State {
    pub namespace: String,
    next_rv: u64,
    pub sts: Option<StatefulSet>,
    pub pods: BTreeMap<String, Pod>,
    pub revisions: Vec<ControllerRevision>,
    pub leases: BTreeMap<String, Lease>,
    /// Every StatefulSet patch that was applied (dry runs excluded).
    pub patches: Vec<StsPatch>,
    /// Writes refused with a conflict.
    pub conflicts: u32,
    /// Pods deleted by name.
    pub deleted_pods: Vec<String>,
    /// Revisions whose pods never become Ready.
    pub broken: HashSet<String>,
    /// Pods that do not go away when the set scales below them: they stay Terminating (as
    /// with a hung preStop hook) until [`State::release_stuck`].
    pub stuck: HashSet<String>,
    /// Run just before the next StatefulSet patch (another writer getting there first).
    pub before_patch: VecDeque<Hook>,
    /// Other StatefulSets (created by the executor; no controller acts on them).
    pub other_sets: BTreeMap<String, StatefulSet>,
    pub services: BTreeMap<String, Service>,
    pub claims: BTreeMap<String, PersistentVolumeClaim>,
    /// Pods of the other sets, by set.
    pub other_pods: BTreeMap<String, Vec<Pod>>,
    /// The IP every new pod gets instead of one per ordinal (a test that serves HTTP on
    /// 127.0.0.1 for the replay of a shadow).
    pub pod_ip: Option<String>,
}

impl State {
    fn bump(&mut self) -> String {
        self.next_rv += 1;
        self.next_rv.to_string()
    }

    fn set_name(&self) -> String {
        self.sts
            .as_ref()
            .and_then(|s| s.metadata.name.clone())
            .unwrap_or_default()
    }

    /// Another writer changes the set (its resourceVersion moves on).
    pub fn touch_set(&mut self, change: impl FnOnce(&mut StatefulSet)) {
        let rv = self.bump();
        if let Some(sts) = self.sts.as_mut() {
            change(sts);
            sts.metadata.resource_version = Some(rv);
            let generation = sts.metadata.generation.unwrap_or(1) + 1;
            sts.metadata.generation = Some(generation);
        }
        self.controller();
    }

    /// The stuck pods finish terminating and go; the controller then does its part.
    pub fn release_stuck(&mut self) {
        let stuck = std::mem::take(&mut self.stuck);
        self.pods.retain(|name, pod| {
            !(stuck.contains(name) && pod.metadata.deletion_timestamp.is_some())
        });
        self.controller();
    }

    /// Another writer changes only the set's status, as the controller does when a pod
    /// restarts: its resourceVersion moves on, its spec and record stay.
    pub fn touch_status(&mut self) {
        let rv = self.bump();
        if let Some(sts) = self.sts.as_mut() {
            let status = sts.status.get_or_insert_with(Default::default);
            status.available_replicas = Some(status.available_replicas.unwrap_or(0) + 1);
            sts.metadata.resource_version = Some(rv);
        }
    }

    /// The StatefulSet controller's part for another set: its pods, all Ready on one revision.
    fn run_other(&mut self, name: &str) {
        let Some(sts) = self.other_sets.get(name).cloned() else {
            self.other_pods.remove(name);
            return;
        };
        let spec = sts.spec.clone().unwrap_or_default();
        let replicas = u32::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
        let revision = format!("{name}-1");
        let pod_spec = spec.template.spec.clone().unwrap_or_default();
        let mut pods = self.other_pods.remove(name).unwrap_or_default();
        pods.retain(|p| {
            p.metadata
                .name
                .as_deref()
                .and_then(|n| crate::strategy::predicates::pod_ordinal(name, n))
                .is_some_and(|o| o < replicas)
        });
        for ordinal in u32::try_from(pods.len()).unwrap_or(u32::MAX)..replicas {
            let pod = self.make_pod(name, ordinal, &revision, &pod_spec);
            pods.push(pod);
        }
        let count = i32::try_from(pods.len()).unwrap_or(i32::MAX);
        let rv = self.bump();
        if let Some(stored) = self.other_sets.get_mut(name) {
            stored.metadata.resource_version = Some(rv);
            stored.status = Some(StatefulSetStatus {
                observed_generation: stored.metadata.generation,
                replicas: count,
                ready_replicas: Some(count),
                updated_replicas: Some(count),
                current_revision: Some(revision.clone()),
                update_revision: Some(revision),
                ..Default::default()
            });
        }
        self.other_pods.insert(name.to_string(), pods);
    }

    /// The revision name the controller gives `template`.
    pub fn revision_name_for(&self, template: &PodTemplateSpec) -> String {
        let value = serde_json::to_value(template).unwrap_or_default();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value.to_string().hash(&mut hasher);
        format!("{}-{:x}", self.set_name(), hasher.finish() & 0xff_ffff)
    }

    fn revision_for(&mut self, template: &PodTemplateSpec) -> String {
        let value = serde_json::to_value(template).unwrap_or_default();
        let revision = self.revision_name_for(template);
        let next = self.revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
        match self
            .revisions
            .iter_mut()
            .find(|r| r.metadata.name.as_deref() == Some(revision.as_str()))
        {
            Some(existing) => {
                if !is_latest(existing, next) {
                    existing.revision = next;
                }
            }
            None => {
                let mut data = serde_json::json!({ "spec": { "template": value } });
                data["spec"]["template"]["$patch"] = serde_json::json!("replace");
                self.revisions.push(ControllerRevision {
                    metadata: ObjectMeta {
                        name: Some(revision.clone()),
                        ..Default::default()
                    },
                    revision: next,
                    data: Some(RawExtension(data)),
                });
            }
        }
        revision
    }

    /// The StatefulSet controller's part, at once.
    fn controller(&mut self) {
        let Some(sts) = self.sts.clone() else {
            return;
        };
        let name = self.set_name();
        let spec = sts.spec.clone().unwrap_or_default();
        let update = self.revision_for(&spec.template);
        let replicas = u32::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
        let partition = predicates::partition(&sts).unwrap_or(0);
        let current = sts
            .status
            .as_ref()
            .and_then(|s| s.current_revision.clone())
            .unwrap_or_else(|| update.clone());
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
        let pod_spec = spec.template.spec.clone().unwrap_or_default();
        let mut changed_pods = false;
        let stuck = &self.stuck;
        self.pods.retain(|pod_name, pod| {
            let wanted = crate::strategy::predicates::pod_ordinal(&name, pod_name)
                .is_some_and(|o| o < replicas);
            if !wanted && stuck.contains(pod_name) && pod.metadata.deletion_timestamp.is_none() {
                pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
            }
            wanted || stuck.contains(pod_name)
        });
        let ready = |pods: &BTreeMap<String, Pod>, n: &str| {
            pods.get(n)
                .is_some_and(crate::strategy::predicates::is_ready)
        };
        // Missing pods are created (an OrderedReady set stops at the first one not Ready).
        for ordinal in 0..replicas {
            let pod_name = format!("{name}-{ordinal}");
            if !self.pods.contains_key(&pod_name) {
                let revision = if ordinal >= partition {
                    update.clone()
                } else {
                    current.clone()
                };
                let pod = self.make_pod(&name, ordinal, &revision, &pod_spec);
                self.pods.insert(pod_name.clone(), pod);
                changed_pods = true;
            }
            if ordered && !ready(&self.pods, &pod_name) {
                break;
            }
        }
        // Rolling update from the highest ordinal down to the partition. OrderedReady waits on
        // any pod that is not Ready, which is how a broken pod wedges it (kubernetes #67250).
        let all_ready = (0..replicas).all(|o| ready(&self.pods, &format!("{name}-{o}")));
        if !ordered || all_ready {
            for ordinal in (partition..replicas).rev() {
                let pod_name = format!("{name}-{ordinal}");
                let on = self
                    .pods
                    .get(&pod_name)
                    .and_then(|p| crate::strategy::predicates::pod_revision(p).map(String::from));
                if on.as_deref() != Some(update.as_str()) {
                    let pod = self.make_pod(&name, ordinal, &update, &pod_spec);
                    self.pods.insert(pod_name.clone(), pod);
                    changed_pods = true;
                }
                if ordered && !ready(&self.pods, &pod_name) {
                    break;
                }
            }
        }
        let pods: Vec<Pod> = self.pods.values().cloned().collect();
        let on_update = pods
            .iter()
            .filter(|p| crate::strategy::predicates::pod_revision(p) == Some(update.as_str()))
            .count();
        let ready = pods
            .iter()
            .filter(|p| crate::strategy::predicates::is_ready(p))
            .count();
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let new_status = StatefulSetStatus {
            observed_generation: sts.metadata.generation,
            replicas: count(pods.len()),
            ready_replicas: Some(count(ready)),
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
            let rv = self.bump();
            if let Some(s) = self.sts.as_mut() {
                s.status = Some(new_status);
                s.metadata.resource_version = Some(rv);
            }
        }
    }

    fn make_pod(&mut self, set: &str, ordinal: u32, revision: &str, spec: &PodSpec) -> Pod {
        let ready = !self.broken.contains(revision);
        let uid = self.bump();
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("{set}-{ordinal}")),
                namespace: Some(self.namespace.clone()),
                uid: Some(format!("uid-{uid}")),
                labels: Some(
                    [
                        ("app".to_string(), set.to_string()),
                        (REVISION_LABEL.to_string(), revision.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(spec.clone()),
            status: Some(PodStatus {
                pod_ip: Some(
                    self.pod_ip
                        .clone()
                        .unwrap_or_else(|| format!("10.244.0.{}", 10 + ordinal)),
                ),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(Timestamp::now())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }
}

fn is_latest(revision: &ControllerRevision, next: i64) -> bool {
    revision.revision == next - 1
}

/// The fake cluster.
#[derive(Clone)]
pub struct FakeCluster {
    pub state: Arc<Mutex<State>>,
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
    /// Watches of the other sets, by set.
    others: Arc<Mutex<BTreeMap<String, watch::Sender<Arc<Snapshot>>>>>,
}

/// A StatefulSet `name` of `replicas` pods running `image`, serving on port 8080.
pub fn statefulset(name: &str, replicas: i32, image: &str, parallel: bool) -> StatefulSet {
    StatefulSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("test".into()),
            uid: Some(format!("{name}-uid")),
            generation: Some(1),
            ..Default::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            pod_management_policy: parallel.then(|| "Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some([("app".to_string(), name.to_string())].into()),
                ..Default::default()
            },
            service_name: Some(name.into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some([("app".to_string(), name.to_string())].into()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some(image.into()),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: 8080,
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

impl FakeCluster {
    pub fn new(sts: StatefulSet) -> FakeCluster {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        let mut state = State {
            namespace: "test".into(),
            next_rv: 100,
            sts: Some(sts),
            pods: BTreeMap::new(),
            revisions: Vec::new(),
            leases: BTreeMap::new(),
            patches: Vec::new(),
            conflicts: 0,
            deleted_pods: Vec::new(),
            broken: HashSet::new(),
            stuck: HashSet::new(),
            before_patch: VecDeque::new(),
            other_sets: BTreeMap::new(),
            services: BTreeMap::new(),
            claims: BTreeMap::new(),
            other_pods: BTreeMap::new(),
            pod_ip: None,
        };
        let rv = state.bump();
        if let Some(s) = state.sts.as_mut() {
            s.metadata.resource_version = Some(rv);
        }
        state.controller();
        let fake = FakeCluster {
            state: Arc::new(Mutex::new(state)),
            tx: Arc::new(tx),
            others: Arc::default(),
        };
        fake.publish();
        fake
    }

    /// Works on the state, then tells the watchers.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let result = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut state)
        };
        self.publish();
        result
    }

    fn publish(&self) {
        let snapshot = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            Snapshot {
                synced: true,
                statefulset: state.sts.clone(),
                pods: state.pods.values().cloned().collect(),
            }
        };
        self.tx.send_replace(Arc::new(snapshot));
        let others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        for (name, tx) in others.iter() {
            tx.send_replace(Arc::new(self.other_snapshot(name)));
        }
    }

    /// What a watch of the other set `name` sees.
    fn other_snapshot(&self, name: &str) -> Snapshot {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            synced: true,
            statefulset: state.other_sets.get(name).cloned(),
            pods: state.other_pods.get(name).cloned().unwrap_or_default(),
        }
    }

    pub fn set(&self) -> StatefulSet {
        self.with(|s| s.sts.clone()).unwrap_or_default()
    }

    pub fn image(&self) -> String {
        self.set()
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
            .unwrap_or_default()
    }

    pub fn pod_revisions(&self) -> Vec<(String, String, bool)> {
        self.with(|s| {
            s.pods
                .values()
                .map(|p| {
                    (
                        p.metadata.name.clone().unwrap_or_default(),
                        crate::strategy::predicates::pod_revision(p)
                            .unwrap_or_default()
                            .to_string(),
                        crate::strategy::predicates::is_ready(p),
                    )
                })
                .collect()
        })
    }
}

fn apply_patch(sts: &mut StatefulSet, patch: &StsPatch) -> Result<bool, ApiError> {
    match &patch.record {
        RecordChange::Keep => {}
        RecordChange::Set(text) => {
            sts.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(crate::model::state::ANNOTATION_KEY.into(), text.clone());
        }
        RecordChange::Remove => {
            if let Some(a) = sts.metadata.annotations.as_mut() {
                a.remove(crate::model::state::ANNOTATION_KEY);
            }
        }
    }
    let spec = sts.spec.get_or_insert_with(Default::default);
    let before = serde_json::to_value(&*spec).unwrap_or_default();
    if let Some(replicas) = patch.replicas {
        spec.replicas = Some(i32::try_from(replicas).unwrap_or(i32::MAX));
    }
    match &patch.template {
        None => {}
        Some(TemplateChange::Images {
            containers,
            init_containers,
        }) => {
            if let Some(pod) = spec.template.spec.as_mut() {
                let all: Vec<_> = containers.iter().chain(init_containers).cloned().collect();
                apply_images(pod, &all);
            }
        }
        Some(TemplateChange::Replace(value)) => {
            spec.template =
                serde_json::from_value(value.clone()).map_err(|e| ApiError::Refused {
                    code: 422,
                    reason: "Invalid".into(),
                    message: e.to_string(),
                })?;
        }
    }
    match &patch.update_strategy {
        None => {}
        Some(StrategyChange::Partition(p)) => {
            let strategy = spec.update_strategy.get_or_insert_with(Default::default);
            strategy
                .rolling_update
                .get_or_insert_with(Default::default)
                .partition = i32::try_from(*p).ok();
        }
        Some(StrategyChange::Set { type_, partition }) => {
            spec.update_strategy = Some(StatefulSetUpdateStrategy {
                type_: Some(type_.clone()),
                rolling_update: (type_ == "RollingUpdate").then(|| {
                    RollingUpdateStatefulSetStrategy {
                        partition: Some(partition.and_then(|p| i32::try_from(p).ok()).unwrap_or(0)),
                        ..Default::default()
                    }
                }),
            });
        }
    }
    Ok(serde_json::to_value(&*spec).unwrap_or_default() != before)
}

impl Cluster for FakeCluster {
    fn namespace(&self) -> &str {
        "test"
    }

    async fn get_statefulset(&self, name: &str) -> Result<Option<StatefulSet>, ApiError> {
        Ok(self.with(|s| {
            s.sts
                .clone()
                .filter(|x| x.metadata.name.as_deref() == Some(name))
                .or_else(|| s.other_sets.get(name).cloned())
        }))
    }

    async fn patch_statefulset(
        &self,
        name: &str,
        patch: &StsPatch,
        dry_run: bool,
    ) -> Result<StatefulSet, ApiError> {
        self.with(|state| {
            if let Some(mut other) = state.other_sets.get(name).cloned() {
                // Nothing else writes the other sets: no hooks, no precondition.
                if !dry_run {
                    apply_patch(&mut other, patch)?;
                    state.other_sets.insert(name.to_string(), other);
                    state.run_other(name);
                }
                return Ok(state.other_sets.get(name).cloned().unwrap_or_default());
            }
            if !dry_run {
                if let Some(hook) = state.before_patch.pop_front() {
                    hook(state);
                }
            }
            let Some(mut sts) = state
                .sts
                .clone()
                .filter(|x| x.metadata.name.as_deref() == Some(name))
            else {
                return Err(ApiError::NotFound);
            };
            if let Some(rv) = &patch.resource_version {
                if sts.metadata.resource_version.as_ref() != Some(rv) {
                    state.conflicts += 1;
                    return Err(ApiError::Conflict(format!(
                        "the object has been modified (at {:?}, write based on {rv})",
                        sts.metadata.resource_version
                    )));
                }
            }
            let spec_changed = apply_patch(&mut sts, patch)?;
            if dry_run {
                return Ok(sts);
            }
            if spec_changed {
                sts.metadata.generation = Some(sts.metadata.generation.unwrap_or(1) + 1);
            }
            sts.metadata.resource_version = Some(state.bump());
            state.sts = Some(sts);
            state.patches.push(patch.clone());
            state.controller();
            Ok(state.sts.clone().unwrap_or_default())
        })
    }

    async fn list_pods(&self, _selector: &str) -> Result<Vec<Pod>, ApiError> {
        Ok(self.with(|s| s.pods.values().cloned().collect()))
    }

    async fn delete_pod(&self, name: &str, _uid: Option<&str>) -> Result<(), ApiError> {
        self.with(|s| {
            s.deleted_pods.push(name.to_string());
            s.pods.remove(name);
            s.controller();
        });
        Ok(())
    }

    async fn list_revisions(&self, _selector: &str) -> Result<Vec<ControllerRevision>, ApiError> {
        Ok(self.with(|s| s.revisions.clone()))
    }

    async fn get_lease(&self, name: &str) -> Result<Option<Lease>, ApiError> {
        Ok(self.with(|s| s.leases.get(name).cloned()))
    }

    async fn create_lease(&self, lease: &Lease) -> Result<Lease, ApiError> {
        self.with(|s| {
            let name = lease.metadata.name.clone().unwrap_or_default();
            if s.leases.contains_key(&name) {
                return Err(ApiError::AlreadyExists(name));
            }
            let mut stored = lease.clone();
            stored.metadata.resource_version = Some(s.bump());
            s.leases.insert(name, stored.clone());
            Ok(stored)
        })
    }

    async fn replace_lease(&self, lease: &Lease) -> Result<Lease, ApiError> {
        self.with(|s| {
            let name = lease.metadata.name.clone().unwrap_or_default();
            let Some(current) = s.leases.get(&name) else {
                return Err(ApiError::NotFound);
            };
            if current.metadata.resource_version != lease.metadata.resource_version {
                return Err(ApiError::Conflict(name));
            }
            let mut stored = lease.clone();
            stored.metadata.resource_version = Some(s.bump());
            s.leases.insert(name, stored.clone());
            Ok(stored)
        })
    }

    async fn delete_lease(&self, name: &str, resource_version: &str) -> Result<(), ApiError> {
        self.with(|s| match s.leases.get(name) {
            Some(l) if l.metadata.resource_version.as_deref() == Some(resource_version) => {
                s.leases.remove(name);
                Ok(())
            }
            Some(_) => Err(ApiError::Conflict(name.to_string())),
            None => Ok(()),
        })
    }

    async fn create_statefulset(
        &self,
        sts: &StatefulSet,
        dry_run: bool,
    ) -> Result<StatefulSet, ApiError> {
        self.with(|s| {
            let name = sts.metadata.name.clone().unwrap_or_default();
            if s.other_sets.contains_key(&name) || s.set_name() == name {
                return Err(ApiError::AlreadyExists(name));
            }
            if dry_run {
                return Ok(sts.clone());
            }
            let mut stored = sts.clone();
            stored.metadata.resource_version = Some(s.bump());
            stored.metadata.generation = Some(stored.metadata.generation.unwrap_or(1));
            s.other_sets.insert(name.clone(), stored);
            s.run_other(&name);
            Ok(s.other_sets.get(&name).cloned().unwrap_or_default())
        })
    }

    async fn delete_statefulset(&self, name: &str) -> Result<(), ApiError> {
        self.with(|s| {
            s.other_sets.remove(name);
            s.other_pods.remove(name);
        });
        Ok(())
    }

    async fn list_statefulsets(&self) -> Result<Vec<StatefulSet>, ApiError> {
        Ok(self.with(|s| s.sts.iter().chain(s.other_sets.values()).cloned().collect()))
    }

    async fn list_services(&self) -> Result<Vec<Service>, ApiError> {
        Ok(self.with(|s| s.services.values().cloned().collect()))
    }

    async fn set_service_selector(
        &self,
        name: &str,
        selector: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        self.with(|s| match s.services.get_mut(name) {
            Some(service) => {
                service.spec.get_or_insert_with(Default::default).selector = Some(selector.clone());
                Ok(())
            }
            None => Err(ApiError::NotFound),
        })
    }

    async fn create_service(&self, service: &Service) -> Result<(), ApiError> {
        self.with(|s| {
            let name = service.metadata.name.clone().unwrap_or_default();
            if s.services.contains_key(&name) {
                return Err(ApiError::AlreadyExists(name));
            }
            s.services.insert(name, service.clone());
            Ok(())
        })
    }

    async fn delete_service(&self, name: &str) -> Result<(), ApiError> {
        self.with(|s| {
            s.services.remove(name);
        });
        Ok(())
    }

    async fn list_claims(&self) -> Result<Vec<PersistentVolumeClaim>, ApiError> {
        Ok(self.with(|s| s.claims.values().cloned().collect()))
    }

    async fn create_claim(&self, claim: &PersistentVolumeClaim) -> Result<(), ApiError> {
        self.with(|s| {
            let name = claim.metadata.name.clone().unwrap_or_default();
            if s.claims.contains_key(&name) {
                return Err(ApiError::AlreadyExists(name));
            }
            s.claims.insert(name, claim.clone());
            Ok(())
        })
    }

    async fn delete_claim(&self, name: &str) -> Result<(), ApiError> {
        self.with(|s| {
            s.claims.remove(name);
        });
        Ok(())
    }

    fn watch(&self, name: &str, _selector: &str) -> View {
        if self.with(|s| s.set_name() == name) {
            return self.tx.subscribe();
        }
        let snapshot = Arc::new(self.other_snapshot(name));
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        others
            .entry(name.to_string())
            .or_insert_with(|| watch::channel(snapshot).0)
            .subscribe()
    }
}

/// Gates that answer from a script: each call takes the next verdict (pass when the script is
/// empty) and records the pods it was asked about.
#[derive(Clone, Default)]
pub struct FakeGates {
    pub script: Arc<Mutex<VecDeque<Verdict>>>,
    pub calls: Arc<Mutex<Vec<Vec<String>>>>,
}

impl FakeGates {
    pub fn failing_at(call: usize, verdict: Verdict) -> FakeGates {
        let mut script: VecDeque<Verdict> = (0..call).map(|_| Verdict::Pass).collect();
        script.push_back(verdict);
        FakeGates {
            script: Arc::new(Mutex::new(script)),
            calls: Arc::default(),
        }
    }

    pub fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl GateRunner for FakeGates {
    async fn run(
        &self,
        _spec: &GateSpec,
        targets: &[PodTarget],
        _context: &GateContext,
    ) -> Verdict {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(targets.iter().map(|t| t.pod.clone()).collect());
        }
        self.script
            .lock()
            .ok()
            .and_then(|mut s| s.pop_front())
            .unwrap_or(Verdict::Pass)
    }

    async fn run_service(
        &self,
        _spec: &GateSpec,
        _namespace: &str,
        service: &str,
        _port: &str,
    ) -> Verdict {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(vec![format!("service/{service}")]);
        }
        self.script
            .lock()
            .ok()
            .and_then(|mut s| s.pop_front())
            .unwrap_or(Verdict::Pass)
    }
}
