//! The steps and rollbacks of the strategies that go beyond one set's partition: scaling a set
//! (recreate, blue/green), creating and removing a twin set (blue/green's green, a shadow),
//! moving live Service selectors, and gating through a Service.
//!
//! Each step writes the record first and is safe to run again: a run that died half-way through
//! a step repeats it (create-or-adopt, set-the-selector-to, scale-to), so `resume` and `abort`
//! always find a consistent cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::{
    annotation, deadline_after, describe_pod, hopeless, pod_by_ordinal, Committed, Runner, Waited,
};
use crate::exec::cluster::{ApiError, Cluster, Snapshot};
use crate::exec::gates::GateRunner;
use crate::exec::patch::{StrategyChange, StsPatch};
use crate::exec::progress::format_elapsed;
use crate::exec::ExecError;
use crate::gate::Verdict;
use crate::model::state::{Phase, RollbackCause};
use crate::model::strategy::StrategyKind;
use crate::model::twin::{render_selector, DataMode, Twin, TwinRole, HOME_ANNOTATION, SET_LABEL};
use crate::strategy::observed;
use crate::strategy::predicates::{
    is_ready, is_terminating, ordinals_not_ready, ordinals_released, pod_revision,
};
use crate::strategy::twin::{clone_claims, rollout_preview_home, twin_statefulset};

/// Pods of a snapshot that serve: Ready and not terminating (what a Service's endpoints hold).
fn serving(snapshot: &Snapshot) -> usize {
    snapshot
        .pods
        .iter()
        .filter(|p| is_ready(p) && !is_terminating(p))
        .count()
}

/// The stable revision, when the set's template is still the stable one as far as the
/// controller has seen (its latest spec observed, its update revision the stable one); `None`
/// when the template changed or that is not known yet.
fn template_still_stable(sts: &StatefulSet, stable: Option<&str>) -> Option<String> {
    let stable = stable?;
    let status = sts.status.as_ref()?;
    let seen = status.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    (seen && status.update_revision.as_deref() == Some(stable)).then(|| stable.to_string())
}

/// Whether the Service `name` among `services` is the preview `rollout` made for `home`;
/// `None` when there is no Service of that name.
fn preview_owned(services: &[Service], name: &str, home: &str) -> Option<bool> {
    services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .map(|s| rollout_preview_home(&s.metadata).as_deref() == Some(home))
}

/// What a scale step waits for, judged on a snapshot of the set.
fn scaled(
    snapshot: &Snapshot,
    set: &str,
    replicas: u32,
    revision: Option<&str>,
) -> Option<Result<(), String>> {
    if replicas == 0 {
        return snapshot.pods.is_empty().then_some(Ok(()));
    }
    let sts = snapshot.statefulset.as_ref()?;
    let status = sts.status.as_ref()?;
    if status.observed_generation.unwrap_or(0) < sts.metadata.generation.unwrap_or(0) {
        return None;
    }
    let revision = revision.or(status.update_revision.as_deref())?;
    let all = ordinals_released(replicas, observed::ordinal_start(sts), replicas, 0);
    let missing = ordinals_not_ready(set, &snapshot.pods, revision, &all);
    if missing.is_empty() {
        return Some(Ok(()));
    }
    missing
        .iter()
        .filter_map(|o| pod_by_ordinal(set, &snapshot.pods, *o))
        .filter(|p| pod_revision(p) == Some(revision))
        .find_map(hopeless)
        .map(Err)
}

/// What a scale step still waits for when it times out, pod by pod from the set's first
/// ordinal (`spec.ordinals.start`, not always 0).
fn scale_details(set: &str, pods: &[Pod], replicas: u32, start: u32, revision: &str) -> String {
    if replicas == 0 {
        return format!("{} pod(s) still there", pods.len());
    }
    (start..start.saturating_add(replicas))
        .map(|o| {
            describe_pod(
                pod_by_ordinal(set, pods, o),
                &format!("{set}-{o}"),
                revision,
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    fn twin_record(&self) -> Result<Twin, ExecError> {
        self.record
            .twin
            .clone()
            .ok_or_else(|| ExecError::NotRollable {
                statefulset: self.name.clone(),
                reason: "its rollout record names no second StatefulSet; `rollout abort` returns it to stable".into(),
            })
    }

    /// Starts (once) the watch on another set's pods.
    fn ensure_view(&mut self, set: &str) {
        if self.twin_view.as_ref().is_some_and(|(name, _)| name == set) {
            return;
        }
        let view = self.cluster.watch(set, &format!("{SET_LABEL}={set}"));
        self.twin_view = Some((set.to_string(), view));
    }

    /// The pods of `set` once its watch has listed them.
    pub(super) async fn twin_pods(&mut self, set: &str) -> Vec<k8s_openapi::api::core::v1::Pod> {
        let deadline = deadline_after(std::time::Duration::from_secs(30));
        match self
            .wait_set(set, Some(deadline), |snapshot| Some(snapshot.pods.clone()))
            .await
        {
            Ok(Waited::Ready(pods)) => pods,
            _ => Vec::new(),
        }
    }

    /// Waits on the snapshot of `set` (this rollout's own set or another) until `check` gives
    /// a value, the deadline passes, or the record changes from outside.
    async fn wait_set<T>(
        &mut self,
        set: &str,
        deadline: Option<Instant>,
        mut check: impl FnMut(&Snapshot) -> Option<T>,
    ) -> Result<Waited<T>, ExecError> {
        let own_set = set == self.name;
        if !own_set {
            self.ensure_view(set);
        }
        loop {
            let own = self.view.borrow_and_update().clone();
            if own.synced {
                let Some(sts) = own.statefulset.as_ref() else {
                    return Err(ExecError::StatefulSetDeleted {
                        name: self.name.clone(),
                    });
                };
                if self.adopt_external(sts)? {
                    return Ok(Waited::Changed);
                }
                if annotation(sts) == self.last_text {
                    self.resource_version = sts.metadata.resource_version.clone();
                }
            }
            let snapshot = if own_set {
                own
            } else {
                match self.twin_view.as_mut() {
                    Some((_, view)) => view.borrow_and_update().clone(),
                    None => own,
                }
            };
            if snapshot.synced {
                if let Some(value) = check(&snapshot) {
                    return Ok(Waited::Ready(value));
                }
            }
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let other = async {
                match self.twin_view.as_mut() {
                    Some((_, view)) if !own_set => view.changed().await.is_ok(),
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.view.changed() => if changed.is_err() {
                    return Err(ExecError::WatchEnded { statefulset: self.name.clone() });
                },
                ok = other => if !ok {
                    return Err(ExecError::WatchEnded { statefulset: set.to_string() });
                },
                _ = sleep => return Ok(Waited::Deadline),
                _ = self.lease_lost.changed() => return Err(self.lease_lost_error()),
            }
        }
    }

    /// Writes the record (step begun) with no other change; false when the loop must decide
    /// again.
    pub(super) async fn begin_and_record(&mut self) -> Result<bool, ExecError> {
        self.record.begin_step(Self::now())?;
        Ok(matches!(
            self.commit(None, None).await?,
            Committed::Written(_)
        ))
    }

    /// Sets another set's replicas (no precondition: nothing else writes it).
    async fn set_replicas(&self, set: &str, replicas: u32) -> Result<(), ExecError> {
        match self
            .cluster
            .patch_statefulset(set, &StsPatch::at(None).with_replicas(replicas), false)
            .await
        {
            Ok(_) | Err(ApiError::NotFound) => Ok(()),
            Err(e) => Err(ExecError::api("scaling StatefulSet", set, e)),
        }
    }

    /// Step: scale `set` to `replicas` and wait. On the rollout's own set the record and the
    /// replicas go in one write; a recreate measures the time with no serving pod.
    pub(super) async fn scale(&mut self, set: &str, replicas: u32) -> Result<(), ExecError> {
        let started = Instant::now();
        let own = set == self.name;
        self.record.begin_step(Self::now())?;
        if own {
            if let Committed::Changed = self.commit_with(None, None, Some(replicas)).await? {
                return Ok(());
            }
        } else {
            if let Committed::Changed = self.commit(None, None).await? {
                return Ok(());
            }
            self.set_replicas(set, replicas).await?;
        }
        let recreate = own && self.record.plan.strategy == StrategyKind::Recreate;
        let revision = if recreate && replicas > 0 {
            self.record.target.revision.clone()
        } else {
            None
        };
        let mut measured = self.record.measured.clone();
        let (deadline, overall) = self.step_deadline();
        let name = set.to_string();
        let waited = self
            .wait_set(set, Some(deadline), |snapshot| {
                if recreate {
                    let now = Timestamp::now();
                    let up = serving(snapshot);
                    if up == 0 && measured.unavailable_since.is_none() {
                        measured.unavailable_since = Some(now);
                    }
                    if let (true, Some(since), None) =
                        (up > 0, measured.unavailable_since, measured.downtime_ms)
                    {
                        let ms = now.duration_since(since).as_millis();
                        measured.downtime_ms = Some(u64::try_from(ms.max(0)).unwrap_or(0));
                    }
                }
                scaled(snapshot, &name, replicas, revision.as_deref())
            })
            .await?;
        self.record.measured = measured;
        match waited {
            Waited::Ready(Ok(())) => {
                let (index, total) = self.step_label();
                let step = self.step_text();
                self.record.complete_step(Self::now())?;
                let downtime = match (recreate && replicas > 0, self.record.measured.downtime_ms) {
                    (true, Some(ms)) => format!(
                        "; downtime {} (no Ready pod behind the Service)",
                        format_elapsed(std::time::Duration::from_millis(ms))
                    ),
                    _ => String::new(),
                };
                self.progress.step(
                    index,
                    total,
                    started.elapsed(),
                    &format!("{step}: done{downtime}"),
                );
            }
            Waited::Ready(Err(problem)) => self.step_cannot_finish(started, &problem)?,
            Waited::Deadline => {
                let pods = self.set_pods_now(set);
                let start = self.set_now(set).map_or(0, |s| observed::ordinal_start(&s));
                let revision = revision.unwrap_or_default();
                let details = scale_details(set, &pods, replicas, start, &revision);
                self.step_timed_out(started, overall, &details)?;
            }
            Waited::Changed => {}
        }
        Ok(())
    }

    /// The set as its watch last saw it.
    fn set_now(&self, set: &str) -> Option<StatefulSet> {
        if set == self.name {
            return self.view.borrow().statefulset.clone();
        }
        match self.twin_view.as_ref() {
            Some((name, view)) if name == set => view.borrow().statefulset.clone(),
            _ => None,
        }
    }

    fn set_pods_now(&self, set: &str) -> Vec<k8s_openapi::api::core::v1::Pod> {
        if set == self.name {
            return self.view.borrow().pods.clone();
        }
        match self.twin_view.as_ref() {
            Some((name, view)) if name == set => view.borrow().pods.clone(),
            _ => Vec::new(),
        }
    }

    /// Points every live Service at green, or at blue: as pinned when the rollout began, or
    /// re-pinned to `blue_revision` (the revision blue runs now) on the way back.
    async fn point_services(
        &mut self,
        twin: &Twin,
        to_green: bool,
        blue_revision: Option<&str>,
    ) -> Result<(), ExecError> {
        for service in &twin.services {
            let selector = if to_green {
                service.green.clone()
            } else {
                service.blue_at(blue_revision)
            };
            self.cluster
                .set_service_selector(&service.name, &selector)
                .await
                .map_err(|e| ExecError::api("setting the selector of Service", &service.name, e))?;
            tracing::info!(service = %service.name, selector = %render_selector(&selector), "Service selector set");
        }
        Ok(())
    }

    /// Step: pin the live Services to blue, or switch them to green.
    pub(super) async fn move_traffic(&mut self, to_green: bool) -> Result<(), ExecError> {
        let started = Instant::now();
        let twin = self.twin_record()?;
        if to_green && self.record.measured.switched_at.is_none() {
            // Recorded before the write: from here on green may have served, so its data is
            // never deleted by a later rollback.
            self.record.measured.switched_at = Some(Self::now());
        }
        if !self.begin_and_record().await? {
            return Ok(());
        }
        self.point_services(&twin, to_green, None).await?;
        if to_green {
            if let Some(preview) = &twin.preview {
                self.delete_preview(&twin, preview).await?;
            }
        }
        let (index, total) = self.step_label();
        let step = self.step_text();
        let detail = twin
            .services
            .iter()
            .map(|s| {
                format!(
                    "{} selects {}",
                    s.name,
                    render_selector(if to_green { &s.green } else { &s.blue })
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        self.record.complete_step(Self::now())?;
        self.progress.step(
            index,
            total,
            started.elapsed(),
            &format!("{step}: {detail}"),
        );
        Ok(())
    }

    /// Whether the Service `name` is `rollout`'s preview for `home` (`None`: no such Service).
    async fn preview_owned_now(&self, name: &str, home: &str) -> Result<Option<bool>, ExecError> {
        let services = self.cluster.list_services().await.map_err(|e| {
            ExecError::api("listing Services in namespace", self.cluster.namespace(), e)
        })?;
        Ok(preview_owned(&services, name, home))
    }

    /// Deletes the preview Service if `rollout` made it for this home; a Service of that name
    /// someone else made is left as it is.
    async fn delete_preview(&self, twin: &Twin, preview: &str) -> Result<(), ExecError> {
        match self.preview_owned_now(preview, &twin.home).await? {
            None => Ok(()),
            Some(true) => self
                .cluster
                .delete_service(preview)
                .await
                .map_err(|e| ExecError::api("deleting preview Service", preview, e)),
            Some(false) => {
                tracing::warn!(service = %preview, "preview Service not made by rollout for this set; left alone");
                self.progress.say(format!(
                    "        Service {preview} was not created by rollout for {}, so it is left as it is",
                    twin.home
                ));
                Ok(())
            }
        }
    }

    /// Why the preview Service `preview` cannot be used: a Service of that name exists that
    /// `rollout` did not make for this home (planning refuses that; this catches one made since).
    fn preview_taken(twin: &Twin, preview: &str) -> String {
        format!(
            "Service {preview} exists and was not created by rollout for {}; it is left as it is: rename or delete it, then run again",
            twin.home
        )
    }

    /// The preview Service: the first live Service's ports, selecting only green. Gives a
    /// problem when a Service of that name that `rollout` did not make is in the way.
    async fn create_preview(
        &self,
        twin: &Twin,
        preview: &str,
    ) -> Result<Option<String>, ExecError> {
        let services = self.cluster.list_services().await.map_err(|e| {
            ExecError::api("listing Services in namespace", self.cluster.namespace(), e)
        })?;
        if preview_owned(&services, preview, &twin.home) == Some(false) {
            return Ok(Some(Self::preview_taken(twin, preview)));
        }
        let live = twin.services.first();
        let ports: Vec<ServicePort> = live
            .and_then(|l| {
                services
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(&l.name))
            })
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|p| ServicePort {
                node_port: None,
                ..p
            })
            .collect();
        let selector = live
            .map(|l| l.green.clone())
            .unwrap_or_else(|| BTreeMap::from([(SET_LABEL.to_string(), twin.set.clone())]));
        let service = Service {
            metadata: ObjectMeta {
                name: Some(preview.to_string()),
                labels: Some(BTreeMap::from([(SET_LABEL.to_string(), twin.set.clone())])),
                annotations: Some(BTreeMap::from([(
                    HOME_ANNOTATION.to_string(),
                    twin.home.clone(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(selector),
                ports: Some(ports),
                type_: Some("ClusterIP".into()),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        match self.cluster.create_service(&service).await {
            Ok(()) => Ok(None),
            Err(ApiError::AlreadyExists(_)) => {
                // Ours from a run that died: point it at this green. Anyone else's (made since
                // the listing above) is not touched.
                if self.preview_owned_now(preview, &twin.home).await? == Some(false) {
                    return Ok(Some(Self::preview_taken(twin, preview)));
                }
                let selector = service
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.clone())
                    .unwrap_or_default();
                self.cluster
                    .set_service_selector(preview, &selector)
                    .await
                    .map_err(|e| ExecError::api("setting the selector of Service", preview, e))?;
                Ok(None)
            }
            Err(e) => Err(ExecError::api("creating preview Service", preview, e)),
        }
    }

    /// Step: create the twin set (claims cloned first when asked, the preview Service) and wait
    /// until every pod of it is Ready.
    pub(super) async fn create_twin(&mut self, set: &str, replicas: u32) -> Result<(), ExecError> {
        let started = Instant::now();
        let twin = self.twin_record()?;
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let blue = self.read_set().await?;
        let Some(desired) = twin_statefulset(&blue, &twin, replicas, &self.record.id) else {
            return Err(ExecError::NotRollable {
                statefulset: self.name.clone(),
                reason: format!("the recorded template for {set} is not a pod template"),
            });
        };
        let mut cloned = 0;
        if twin.role == TwinRole::Green && twin.data == DataMode::Clone {
            let existing = self.cluster.list_claims().await.map_err(|e| {
                ExecError::api("listing PVCs in namespace", self.cluster.namespace(), e)
            })?;
            for claim in clone_claims(&blue, &desired, replicas, &existing) {
                let name = claim.metadata.name.clone().unwrap_or_default();
                let source = claim
                    .spec
                    .as_ref()
                    .and_then(|s| s.data_source.as_ref())
                    .map(|d| d.name.clone())
                    .unwrap_or_default();
                match self.cluster.create_claim(&claim).await {
                    Ok(()) | Err(ApiError::AlreadyExists(_)) => {}
                    Err(e) => return Err(ExecError::api("creating PVC", &name, e)),
                }
                cloned += 1;
                self.progress
                    .say(format!("        PVC {name}: a clone of {source}"));
            }
        }
        if let Some(preview) = &twin.preview {
            if let Some(problem) = self.create_preview(&twin, preview).await? {
                self.step_cannot_finish(started, &problem)?;
                return Ok(());
            }
        }
        match self.cluster.create_statefulset(&desired, false).await {
            Ok(_) => {}
            Err(ApiError::AlreadyExists(_)) => {
                let found = self
                    .cluster
                    .get_statefulset(set)
                    .await
                    .map_err(|e| ExecError::api("reading StatefulSet", set, e))?;
                let ours = found.as_ref().is_some_and(|f| {
                    f.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(HOME_ANNOTATION))
                        == Some(&twin.home)
                        && f.metadata.labels.as_ref().and_then(|l| l.get(SET_LABEL))
                            == Some(&twin.set)
                });
                if !ours {
                    return Err(ExecError::NotRollable {
                        statefulset: self.name.clone(),
                        reason: format!("StatefulSet {set} already exists and was not made by rollout for {}; remove it or roll another way", twin.home),
                    });
                }
            }
            Err(ApiError::Refused { message, .. }) => {
                return Err(ExecError::TemplateRefused {
                    statefulset: set.to_string(),
                    message,
                })
            }
            Err(e) => return Err(ExecError::api("creating StatefulSet", set, e)),
        }
        let (deadline, overall) = self.step_deadline();
        let name = set.to_string();
        let waited = self
            .wait_set(set, Some(deadline), |snapshot| {
                scaled(snapshot, &name, replicas, None)
            })
            .await?;
        match waited {
            Waited::Ready(Ok(())) => {
                let (index, total) = self.step_label();
                let step = self.step_text();
                let revision = self
                    .twin_view
                    .as_ref()
                    .and_then(|(_, v)| v.borrow().statefulset.clone())
                    .and_then(|s| s.status)
                    .and_then(|s| s.update_revision);
                if twin.role == TwinRole::Green {
                    self.record.target.revision = revision;
                }
                let data = match (twin.role, twin.data) {
                    (TwinRole::Green, DataMode::Clone) => {
                        format!(
                            "; volumes cloned from {} ({cloned} PVCs created now)",
                            self.name
                        )
                    }
                    _ => "; its volumes start empty".to_string(),
                };
                self.record.complete_step(Self::now())?;
                self.progress.step(
                    index,
                    total,
                    started.elapsed(),
                    &format!("{step}: Ready{data}"),
                );
            }
            Waited::Ready(Err(problem)) => self.step_cannot_finish(started, &problem)?,
            Waited::Deadline => {
                let pods = self.set_pods_now(set);
                let details: Vec<String> = (0..replicas)
                    .map(|o| {
                        let pod = pod_by_ordinal(set, &pods, o);
                        let revision = pod.and_then(pod_revision).unwrap_or("?").to_string();
                        describe_pod(pod, &format!("{set}-{o}"), &revision)
                    })
                    .collect();
                self.step_timed_out(started, overall, &details.join("; "))?;
            }
            Waited::Changed => {}
        }
        Ok(())
    }

    /// Step: the HTTP gate through a Service.
    pub(super) async fn gate_service(&mut self, service: &str) -> Result<(), ExecError> {
        let started = Instant::now();
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let (index, total) = self.step_label();
        let step = self.step_text();
        let services = self.cluster.list_services().await.map_err(|e| {
            ExecError::api("listing Services in namespace", self.cluster.namespace(), e)
        })?;
        let port = services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(service))
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .map(|p| {
                p.name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| p.port.to_string())
            });
        let verdict = match port {
            None => Verdict::Inconclusive {
                message: format!("Service {service} was not found or has no port to probe"),
            },
            Some(port) => {
                let gates = self.gates.clone();
                let spec = self.record.config.gates.clone();
                let namespace = self.cluster.namespace().to_string();
                let service = service.to_string();
                let run =
                    async move { gates.run_service(&spec, &namespace, &service, &port).await };
                let (deadline, overall) = self.step_deadline();
                tokio::select! {
                    verdict = run => verdict,
                    _ = tokio::time::sleep_until(deadline) => {
                        let message = format!("{}: the gate did not finish", self.deadline_message(overall));
                        self.progress.step(index, total, started.elapsed(), &format!("{step}: TIMED OUT"));
                        self.fail(RollbackCause::TimedOut, message)?;
                        return Ok(());
                    }
                    _ = self.lease_lost.changed() => return Err(self.lease_lost_error()),
                }
            }
        };
        self.conclude_gate(verdict, index, total, &step, started)
    }

    /// Step: remove the twin set (a shadow after its comparison).
    pub(super) async fn remove_twin_step(&mut self, set: &str) -> Result<(), ExecError> {
        let started = Instant::now();
        let twin = self.twin_record()?;
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let removed = self
            .remove_twin(set, !twin.keep_data, twin.preview.as_deref())
            .await?;
        let Some(claims) = removed else {
            return Ok(());
        };
        let (index, total) = self.step_label();
        let step = self.step_text();
        self.record.complete_step(Self::now())?;
        self.progress.step(
            index,
            total,
            started.elapsed(),
            &format!("{step}: {}", describe_claims(&claims, twin.keep_data)),
        );
        Ok(())
    }

    /// Scales the twin to 0 (its pods end gracefully), deletes it and its preview Service, and
    /// its claims when `delete_claims`. Gives the names of the claims deleted (or kept), or
    /// `None` when the record changed meanwhile.
    async fn remove_twin(
        &mut self,
        set: &str,
        delete_claims: bool,
        preview: Option<&str>,
    ) -> Result<Option<Vec<String>>, ExecError> {
        if let Some(preview) = preview {
            let twin = self.twin_record()?;
            self.delete_preview(&twin, preview).await?;
        }
        let exists = self
            .cluster
            .get_statefulset(set)
            .await
            .map_err(|e| ExecError::api("reading StatefulSet", set, e))?
            .is_some();
        if exists {
            self.set_replicas(set, 0).await?;
            let deadline = deadline_after(self.record.config.timeouts.step.get());
            match self
                .wait_set(set, Some(deadline), |snapshot| {
                    snapshot.pods.is_empty().then_some(())
                })
                .await?
            {
                Waited::Ready(()) | Waited::Deadline => {}
                Waited::Changed => return Ok(None),
            }
            self.cluster
                .delete_statefulset(set)
                .await
                .map_err(|e| ExecError::api("deleting StatefulSet", set, e))?;
        }
        let claims: Vec<String> = self
            .cluster
            .list_claims()
            .await
            .map_err(|e| ExecError::api("listing PVCs in namespace", self.cluster.namespace(), e))?
            .into_iter()
            .filter(|c| {
                c.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SET_LABEL))
                    .map(String::as_str)
                    == Some(set)
            })
            .filter_map(|c| c.metadata.name)
            .collect();
        if delete_claims {
            for claim in &claims {
                self.cluster
                    .delete_claim(claim)
                    .await
                    .map_err(|e| ExecError::api("deleting PVC", claim, e))?;
            }
        }
        Ok(Some(claims))
    }

    /// Blue/green back to blue: blue scaled up and Ready, the live Services on blue, green
    /// scaled to 0 (kept, with its volumes, when it served) or removed, the selectors as they
    /// were. True when done.
    pub(super) async fn rollback_bluegreen(&mut self) -> Result<bool, ExecError> {
        let started = Instant::now();
        let twin = self.twin_record()?;
        self.announce_rollback(&format!(
            "returning traffic to {} and {} {}",
            self.name,
            if self.record.measured.switched_at.is_some() {
                "scaling down"
            } else {
                "removing"
            },
            twin.set
        ));
        let replicas = self.record.plan.replicas;
        let current = self
            .view
            .borrow()
            .statefulset
            .as_ref()
            .and_then(observed::spec_replicas);
        let scale = (current != Some(replicas)).then_some(replicas);
        if let Committed::Changed = self.commit_with(None, None, scale).await? {
            return Ok(false);
        }
        let deadline = deadline_after(self.record.config.timeouts.step.get());
        let name = self.name.clone();
        match self
            .wait_set(&name.clone(), Some(deadline), |snapshot| {
                scaled(snapshot, &name, replicas, None)
            })
            .await?
        {
            Waited::Ready(_) => {}
            Waited::Deadline => {
                self.rollback_failed(
                    &format!("{} did not come back to {replicas} Ready pods", self.name),
                    started,
                )?;
                return Ok(false);
            }
            Waited::Changed => return Ok(false),
        }
        let blue_revision = self
            .view
            .borrow()
            .statefulset
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.update_revision.clone());
        self.point_services(&twin, false, blue_revision.as_deref())
            .await?;
        let served = self.record.measured.switched_at.is_some();
        if served {
            self.set_replicas(&twin.set, 0).await?;
            if let Waited::Changed = self
                .wait_set(&twin.set, Some(deadline), |snapshot| {
                    snapshot.pods.is_empty().then_some(())
                })
                .await?
            {
                return Ok(false);
            }
            if let Some(preview) = &twin.preview {
                self.delete_preview(&twin, preview).await?;
            }
            self.progress.say(format!(
                "        {} scaled to 0; it served live traffic, so it and its volumes are kept",
                twin.set
            ));
        } else {
            let Some(claims) = self
                .remove_twin(&twin.set, !twin.keep_data, twin.preview.as_deref())
                .await?
            else {
                return Ok(false);
            };
            self.progress.say(format!(
                "        removed {} (it never served live traffic): {}",
                twin.set,
                describe_claims(&claims, twin.keep_data)
            ));
        }
        for service in &twin.services {
            self.cluster
                .set_service_selector(&service.name, &service.original)
                .await
                .map_err(|e| ExecError::api("setting the selector of Service", &service.name, e))?;
        }
        self.progress.say(format!(
            "[rollback] {:>7}  {} serves again: {}",
            format_elapsed(started.elapsed()),
            self.name,
            twin.services
                .iter()
                .map(|s| format!("{} selects {}", s.name, render_selector(&s.original)))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        Ok(true)
    }

    /// Recreate in reverse: down to 0, the stable template back, up again and Ready. When the
    /// template never left stable (the run failed while scaling down, e.g. a pod stuck
    /// terminating), it only scales back up: scaling to 0 again would wait on the same pod and
    /// leave the app down.
    pub(super) async fn rollback_recreate(&mut self) -> Result<bool, ExecError> {
        let started = Instant::now();
        let replicas = self.record.plan.replicas;
        let deadline = deadline_after(self.record.config.timeouts.step.get());
        let name = self.name.clone();
        let stable_revision = self.record.stable.revision.revision.clone();
        let current = self.read_set().await?;
        let revision = match template_still_stable(&current, stable_revision.as_deref()) {
            Some(revision) => {
                self.announce_rollback(&format!(
                    "its pod template never changed: scaling {} back to {replicas}",
                    self.name
                ));
                revision
            }
            None => {
                self.announce_rollback(&format!(
                    "scaling {} to 0, putting the stable template back, scaling up again",
                    self.name
                ));
                match self.recreate_on_stable(&current, deadline, started).await? {
                    Some(revision) => revision,
                    None => return Ok(false),
                }
            }
        };
        if let Committed::Changed = self.commit_with(None, None, Some(replicas)).await? {
            return Ok(false);
        }
        match self
            .wait_set(&name.clone(), Some(deadline), |s| {
                scaled(s, &name, replicas, Some(&revision))
            })
            .await?
        {
            Waited::Ready(Ok(())) => {}
            Waited::Ready(Err(problem)) => {
                self.rollback_failed(&problem, started)?;
                return Ok(false);
            }
            Waited::Deadline => {
                self.rollback_failed("the pods did not come back Ready", started)?;
                return Ok(false);
            }
            Waited::Changed => return Ok(false),
        }
        self.progress.say(format!(
            "[rollback] {:>7}  {} is back on revision {revision}: {replicas} pods Ready, each on its own volume",
            format_elapsed(started.elapsed()),
            self.name
        ));
        Ok(true)
    }

    /// The first half of [`Self::rollback_recreate`] on a changed template: down to 0, the
    /// stable template back; gives the stable revision once the controller took it, or `None`
    /// when the rollback stops here (failed, or the record changed).
    async fn recreate_on_stable(
        &mut self,
        current: &StatefulSet,
        deadline: Instant,
        started: Instant,
    ) -> Result<Option<String>, ExecError> {
        let name = self.name.clone();
        if let Committed::Changed = self.commit_with(None, None, Some(0)).await? {
            return Ok(None);
        }
        match self
            .wait_set(&name.clone(), Some(deadline), |s| {
                s.pods.is_empty().then_some(())
            })
            .await?
        {
            Waited::Ready(()) => {}
            Waited::Deadline => {
                self.rollback_failed("the pods did not all stop", started)?;
                return Ok(None);
            }
            Waited::Changed => return Ok(None),
        }
        let template = self.stable_template(current).await?;
        let stable = &self.record.stable;
        let strategy = StrategyChange::Set {
            type_: stable
                .update_strategy
                .clone()
                .unwrap_or_else(|| "RollingUpdate".into()),
            partition: stable.partition,
        };
        let written = match self.commit(Some(template), Some(strategy)).await? {
            Committed::Written(sts) => sts,
            Committed::Changed => return Ok(None),
        };
        let generation = written.metadata.generation.unwrap_or(0);
        let stable_revision = self.record.stable.revision.revision.clone();
        let revision = match self
            .wait_set(&name.clone(), Some(deadline), |s| {
                let status = s.statefulset.as_ref()?.status.as_ref()?;
                if status.observed_generation.unwrap_or(0) < generation {
                    return None;
                }
                let update = status.update_revision.clone()?;
                match &stable_revision {
                    Some(stable) if *stable != update => None,
                    _ => Some(update),
                }
            })
            .await?
        {
            Waited::Ready(r) => r,
            Waited::Deadline => {
                self.rollback_failed(
                    "the StatefulSet controller did not take the stable template back",
                    started,
                )?;
                return Ok(None);
            }
            Waited::Changed => return Ok(None),
        };
        Ok(Some(revision))
    }

    /// A shadow back to nothing: the real set back on stable if its rollout began, the shadow
    /// removed (its volumes too, unless kept).
    pub(super) async fn rollback_shadow(&mut self) -> Result<bool, ExecError> {
        let twin = self.twin_record()?;
        let done = self.record.current_step.min(self.record.plan.steps.len());
        let touched = self.record.plan.steps[..done]
            .iter()
            .chain(
                self.record
                    .plan
                    .steps
                    .get(done)
                    .filter(|_| self.record.step_started_at.is_some()),
            )
            .any(|s| {
                matches!(
                    s,
                    crate::model::plan::Step::SetTemplateAndFreeze { .. }
                        | crate::model::plan::Step::SetPartition { .. }
                )
            });
        if touched && !self.rollback_partition().await? {
            return Ok(false);
        }
        self.announce_rollback(&format!("removing the shadow {}", twin.set));
        if let Committed::Changed = self.commit(None, None).await? {
            return Ok(false);
        }
        let Some(claims) = self.remove_twin(&twin.set, !twin.keep_data, None).await? else {
            return Ok(false);
        };
        self.progress.say(format!(
            "        removed the shadow {}: {}",
            twin.set,
            describe_claims(&claims, twin.keep_data)
        ));
        Ok(true)
    }

    fn announce_rollback(&mut self, what: &str) {
        if self.announced != Some((usize::MAX, Phase::RollingBack)) {
            self.announced = Some((usize::MAX, Phase::RollingBack));
            self.progress
                .say(format!("rolling back {}: {what}", self.name));
        }
    }
}

/// `its 3 PVCs were deleted` / `its 3 PVCs are kept (--keep-data): data-web-bg1-0, ...`.
fn describe_claims(claims: &[String], kept: bool) -> String {
    match (claims.len(), kept) {
        (0, _) => "it had no PVCs".to_string(),
        (n, true) => format!(
            "its {n} PVC(s) are kept (--keep-data): {}",
            claims.join(", ")
        ),
        (n, false) => format!("its {n} PVC(s) were deleted: {}", claims.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::predicates::tests::pod;

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
                scale_details("web", &pods, replicas, start, "web-b"),
                want,
                "{replicas} from {start}"
            );
        }
    }
}
