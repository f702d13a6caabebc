//! The steps that change whole sets: `Scale` (recreate, blue/green, and the way back of both),
//! `CreateTwin` (green or a shadow, its claims cloned first when asked, the preview Service) and
//! `RemoveTwin`. Each writes the record first and is safe to run again: a run that died
//! half-way through a step repeats it (create-or-adopt, scale-to), so `resume` and `abort`
//! always find a consistent cluster.

use crate::exec::cluster::ClusterExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::{deadline_after, Committed, Runner, Waited};
use crate::exec::cluster::{ApiError, Cluster};
use crate::exec::gates::GateRunner;
use crate::exec::patch::StsPatch;
use crate::exec::progress::format_elapsed;
use crate::exec::ExecError;
use crate::model::strategy::StrategyKind;
use crate::model::twin::{DataMode, TwinRole, HOME_ANNOTATION, SET_LABEL};
use crate::strategy::predicates;
use crate::strategy::predicates::{describe_scale, scaled, serving_pods};
use crate::strategy::twin::{clone_claims, made_by_rollout, twin_statefulset};

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// The pods of `set` once its watch has listed them.
    pub(super) async fn pods_of(&mut self, set: &str) -> Vec<Pod> {
        if set == self.name {
            return self.view.borrow().pods.clone();
        }
        let deadline = deadline_after(std::time::Duration::from_secs(30));
        match self
            .wait_on(set, Some(deadline), |snapshot| Some(snapshot.pods.clone()))
            .await
        {
            Ok(Waited::Ready(pods)) => pods,
            _ => Vec::new(),
        }
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

    /// Whether the set `set` carries the mark of this rollout (or is gone: nothing to harm).
    async fn made_by_this_rollout(&self, set: &str) -> Result<bool, ExecError> {
        let found = self
            .cluster
            .get::<StatefulSet>(set)
            .await
            .map_err(|e| ExecError::api("reading StatefulSet", set, e))?;
        Ok(found.is_none_or(|f| made_by_rollout(&f.metadata, set, &self.record.id)))
    }

    /// Step: scale `set` to `replicas` and wait. On the rollout's own set the record and the
    /// replicas go in one write; a recreate going forward measures the time with no serving pod.
    pub(super) async fn scale(&mut self, set: &str, replicas: u32) -> Result<(), ExecError> {
        let started = Instant::now();
        let own = set == self.name;
        self.begin()?;
        if own {
            let patch = StsPatch::at(None).with_replicas(replicas);
            if let Committed::Changed = self.commit_patch(patch).await? {
                return Ok(());
            }
        } else {
            if let Committed::Changed = self.commit(None, None).await? {
                return Ok(());
            }
            if !self.made_by_this_rollout(set).await? {
                // Named by the record, but not marked as this rollout's: never scaled.
                return self.complete(
                    started,
                    &format!(": StatefulSet {set} was not created by this rollout, so it is left as it is"),
                );
            }
            self.set_replicas(set, replicas).await?;
        }
        let measure =
            own && !self.backwards() && self.record.plan.strategy == StrategyKind::Recreate;
        // A recreate's pods come back on the new revision; anything else on its update revision.
        let revision = if measure && replicas > 0 {
            self.record.target.revision.clone()
        } else {
            None
        };
        let mut measured = self.record.measured.clone();
        let (deadline, overall) = self.step_deadline();
        let name = set.to_string();
        let waited = self
            .wait_on(set, Some(deadline), |snapshot| {
                if measure {
                    let now = Timestamp::now();
                    let up = serving_pods(&snapshot.pods);
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
                scaled(
                    &name,
                    snapshot.statefulset.as_ref(),
                    &snapshot.pods,
                    replicas,
                    revision.as_deref(),
                )
            })
            .await?;
        self.record.measured = measured;
        match waited {
            Waited::Ready(Ok(())) => {
                let downtime = match (measure && replicas > 0, self.record.measured.downtime_ms) {
                    (true, Some(ms)) => format!(
                        "; downtime {} (no Ready pod behind the Service)",
                        format_elapsed(std::time::Duration::from_millis(ms))
                    ),
                    _ => String::new(),
                };
                self.complete(started, &format!(": done{downtime}"))?;
            }
            Waited::Ready(Err(problem)) => self.step_cannot_finish(started, &problem)?,
            Waited::Deadline => {
                self.scale_timed_out(started, overall, set, replicas, revision.as_deref())?;
            }
            Waited::Changed => {}
        }
        Ok(())
    }

    /// Ends a step that scales `set` at its deadline, naming what each pod still waits for
    /// (on `revision`, or on the revision each runs).
    fn scale_timed_out(
        &mut self,
        started: Instant,
        overall: bool,
        set: &str,
        replicas: u32,
        revision: Option<&str>,
    ) -> Result<(), ExecError> {
        let snapshot = self.snapshot_of(set);
        let start = snapshot
            .statefulset
            .as_ref()
            .map_or(0, predicates::ordinal_start);
        let details = describe_scale(set, &snapshot.pods, replicas, start, revision);
        self.step_timed_out(started, overall, &details)
    }

    /// Step: create the twin set (claims cloned first when asked, the preview Service) and wait
    /// until every pod of it is Ready.
    pub(super) async fn create_twin(&mut self, set: &str, replicas: u32) -> Result<(), ExecError> {
        let started = Instant::now();
        let twin = self.twin()?;
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
            let existing = self
                .list_all::<PersistentVolumeClaim>("listing PVCs in namespace")
                .await?;
            for claim in clone_claims(&blue, &desired, replicas, &existing) {
                let name = claim.metadata.name.clone().unwrap_or_default();
                let source = claim
                    .spec
                    .as_ref()
                    .and_then(|s| s.data_source.as_ref())
                    .map(|d| d.name.clone())
                    .unwrap_or_default();
                match self.cluster.create(&claim, false).await {
                    Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
                    Err(e) => return Err(ExecError::api("creating PVC", &name, e)),
                }
                cloned += 1;
                self.progress
                    .say(format!("        PVC {name}: a clone of {source}"));
            }
        }
        if let Some(preview) = &twin.preview {
            if let Some(problem) = self.create_preview(&twin, preview).await? {
                return self.step_cannot_finish(started, &problem);
            }
        }
        match self.cluster.create(&desired, false).await {
            Ok(_) => {}
            Err(ApiError::AlreadyExists(_)) => {
                let found = self
                    .cluster
                    .get::<StatefulSet>(set)
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
            // Refused after this rollout already wrote (its record, cloned claims, a preview):
            // not "bad input, nothing changed", but a step that cannot finish, undone by the
            // rollback.
            Err(ApiError::Refused { message, .. }) => {
                return self.step_cannot_finish(
                    started,
                    &format!("the API server refused StatefulSet {set}: {message}"),
                );
            }
            Err(e) => return Err(ExecError::api("creating StatefulSet", set, e)),
        }
        let (deadline, overall) = self.step_deadline();
        let name = set.to_string();
        let waited = self
            .wait_on(set, Some(deadline), |snapshot| {
                scaled(
                    &name,
                    snapshot.statefulset.as_ref(),
                    &snapshot.pods,
                    replicas,
                    None,
                )
            })
            .await?;
        match waited {
            Waited::Ready(Ok(())) => {
                if twin.role == TwinRole::Green {
                    self.record.target.revision = self
                        .snapshot_of(set)
                        .statefulset
                        .as_ref()
                        .and_then(|s| s.status.as_ref())
                        .and_then(|s| s.update_revision.clone());
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
                self.complete(started, &format!(": Ready{data}"))?;
            }
            Waited::Ready(Err(problem)) => self.step_cannot_finish(started, &problem)?,
            Waited::Deadline => self.scale_timed_out(started, overall, set, replicas, None)?,
            Waited::Changed => {}
        }
        Ok(())
    }

    /// Step: remove the twin set (a shadow after its comparison; green, or a shadow, on the
    /// way back), with its preview Service, and its claims unless they are kept.
    pub(super) async fn remove_twin_step(&mut self, set: &str) -> Result<(), ExecError> {
        let started = Instant::now();
        let twin = self.twin()?;
        if !self.begin_and_record().await? {
            return Ok(());
        }
        self.delete_preview(&twin).await?;
        let id = self.record.id.clone();
        let found = self
            .cluster
            .get::<StatefulSet>(set)
            .await
            .map_err(|e| ExecError::api("reading StatefulSet", set, e))?;
        if let Some(found) = found {
            if !made_by_rollout(&found.metadata, set, &id) {
                // Named by the record, but not marked as this rollout's: never deleted.
                return self.complete(
                    started,
                    &format!(": StatefulSet {set} was not created by this rollout, so it and its volumes are left as they are"),
                );
            }
            self.set_replicas(set, 0).await?;
            // Its pods end gracefully before the set goes; a pod that does not stop in time
            // is left to the garbage collector with the set.
            let (deadline, _) = self.step_deadline();
            if let Waited::Changed = self
                .wait_on(set, Some(deadline), |snapshot| {
                    snapshot.pods.is_empty().then_some(())
                })
                .await?
            {
                return Ok(());
            }
            self.cluster
                .remove::<StatefulSet>(set)
                .await
                .map_err(|e| ExecError::api("deleting StatefulSet", set, e))?;
            self.wait_pods_gone(set, deadline).await?;
        }
        let claims: Vec<String> = self
            .list_all::<PersistentVolumeClaim>("listing PVCs in namespace")
            .await?
            .into_iter()
            .filter(|c| made_by_rollout(&c.metadata, set, &id))
            .filter_map(|c| c.metadata.name)
            .collect();
        if !twin.keep_data {
            for claim in &claims {
                self.cluster
                    .remove::<PersistentVolumeClaim>(claim)
                    .await
                    .map_err(|e| ExecError::api("deleting PVC", claim, e))?;
            }
        }
        self.complete(
            started,
            &format!(": {}", describe_claims(&claims, twin.keep_data)),
        )
    }

    /// After the twin `set` is deleted, until no pod of it is left (or the step's deadline): a
    /// pod the StatefulSet controller made just before the set went belongs to the garbage
    /// collector, and nothing of the twin should serve once the step is done. A watch of its
    /// pods by label (the set's own watch ends with the set).
    async fn wait_pods_gone(&self, set: &str, deadline: Instant) -> Result<(), ExecError> {
        let select = crate::cluster::Select::labels(&format!("{SET_LABEL}={set}"));
        let mut pods = self.cluster.observe::<Pod>(&select);
        loop {
            let left = {
                let listing = pods.borrow_and_update();
                listing.synced.then(|| listing.items.len())
            };
            if left == Some(0) {
                return Ok(());
            }
            tokio::select! {
                changed = pods.changed() => if changed.is_err() {
                    return Err(ExecError::WatchEnded { statefulset: set.to_string() });
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(set, pods = ?left, "pods of a removed set still there at the deadline");
                    return Ok(());
                }
            }
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
