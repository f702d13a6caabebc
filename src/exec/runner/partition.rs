//! The steps that change the rollout's own set's pod template and partition, and their way
//! back: `SetTemplateAndFreeze` and `SetTemplate` (the new template), `SetPartition` (pods
//! released to it), `RestoreTemplate` (the stable template back, partition 0) and
//! `ReplaceStuckPods` (pods stuck on a broken revision deleted until every pod is Ready on
//! stable). Each writes the record with its change in one patch.

use crate::cluster::Select;
use crate::exec::cluster::ClusterExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use std::collections::HashSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::{Committed, Runner, Waited};
use crate::exec::cluster::{selector_string, Cluster};
use crate::exec::gates::GateRunner;
use crate::exec::patch::{revision_template, StrategyChange, StsPatch, TemplateChange};
use crate::exec::ExecError;
use crate::model::state::RollbackCause;
use crate::strategy::predicates::{
    describe_pods, honours_max_unavailable, ordinals_not_available, ordinals_not_ready,
    pod_revision, pods_ready_on, revision_made_current, revision_taken_up, set_ordinals,
    stuck_pods,
};

/// What `ReplaceStuckPods` found on a snapshot.
enum Stuck {
    /// Every pod runs the stable revision and is Ready.
    AllReady,
    /// Pods to delete (name, uid) that were not deleted before.
    Delete(Vec<(String, Option<String>)>),
}

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// The template this run writes: the one it was started with, else the recorded one.
    fn new_template(&self) -> Option<TemplateChange> {
        self.options.template.clone().or_else(|| {
            self.record
                .new_template
                .clone()
                .map(TemplateChange::Replace)
        })
    }

    /// Step: the new template with the partition at `partition` (a freeze, so no pod moves),
    /// or with no partition at all (`None`: recreate, where no pod runs at that moment).
    pub(super) async fn write_template(&mut self, partition: Option<u32>) -> Result<(), ExecError> {
        let started = Instant::now();
        self.begin()?;
        let Some(template) = self.new_template() else {
            return Err(ExecError::NotRollable {
                statefulset: self.name.clone(),
                reason: "the new template was never written and this run does not have it; run `rollout abort` and start the rollout again".to_string(),
            });
        };
        let strategy = match partition {
            Some(p) => StrategyChange::freeze(p),
            None => StrategyChange::Set {
                type_: "RollingUpdate".into(),
                partition: None,
            },
        };
        let written = match self.commit(Some(template), Some(strategy)).await? {
            Committed::Written(sts) => sts,
            Committed::Changed => return Ok(()),
        };
        let generation = written.metadata.generation.unwrap_or(0);
        let (deadline, overall) = self.step_deadline();
        let name = self.name.clone();
        let waited = self
            .wait_on(&name, Some(deadline), |s| {
                revision_taken_up(s.statefulset.as_ref()?, generation, None)
            })
            .await?;
        match waited {
            Waited::Ready(revision) => {
                self.record.target.revision = Some(revision.clone());
                self.complete(started, &format!("; new revision {revision}"))?;
            }
            Waited::Deadline => {
                let message = format!(
                    "{}: the StatefulSet controller did not take up the new template",
                    self.deadline_message(overall)
                );
                self.step_failed(RollbackCause::TimedOut, message)?;
            }
            Waited::Changed => {}
        }
        Ok(())
    }

    /// Step: lower the partition; done when the released pods run the new revision and are
    /// Ready.
    pub(super) async fn lower_partition(
        &mut self,
        partition: u32,
        ordinals: &[u32],
    ) -> Result<(), ExecError> {
        let started = Instant::now();
        self.begin()?;
        let mut patch = StsPatch::at(None).with_strategy(StrategyChange::Partition(partition));
        // The partition releases the batch; maxUnavailable lets the controller replace all of it
        // at once (one at a time is its default).
        if ordinals.len() > 1 {
            patch.max_unavailable = Some(serde_json::json!(ordinals.len()));
        }
        match self.commit_patch(patch).await? {
            Committed::Written(sts) if ordinals.len() > 1 && !honours_max_unavailable(&sts) => {
                self.progress.say(format!(
                    "        note: this cluster ignores StatefulSet maxUnavailable (Kubernetes before 1.24, or the MaxUnavailableStatefulSet feature gate off), so the StatefulSet controller replaces these {} pods one at a time; the batch is still gated as one",
                    ordinals.len()
                ));
            }
            Committed::Written(_) => {}
            Committed::Changed => return Ok(()),
        }
        let Some(revision) = self.record.target.revision.clone() else {
            return Err(ExecError::NotRollable {
                statefulset: self.name.clone(),
                reason: "the rollout record does not name the new revision".to_string(),
            });
        };
        let name = self.name.clone();
        let (deadline, overall) = self.step_deadline();
        let waited = self
            .wait_on(&name, Some(deadline), |s| {
                match pods_ready_on(&name, &s.pods, &revision, ordinals)? {
                    // Gated only once Available: Ready for the set's minReadySeconds. The
                    // controller writes availableReplicas when that time is up, which wakes
                    // this wait again.
                    Ok(()) => {
                        let min_ready = s
                            .statefulset
                            .as_ref()
                            .and_then(|x| x.spec.as_ref())
                            .and_then(|x| x.min_ready_seconds)
                            .unwrap_or(0);
                        ordinals_not_available(
                            &name,
                            &s.pods,
                            ordinals,
                            min_ready,
                            Timestamp::now(),
                        )
                        .is_empty()
                        .then_some(Ok(()))
                    }
                    Err(problem) => Some(Err(problem)),
                }
            })
            .await?;
        match waited {
            Waited::Ready(Ok(())) => self.complete(started, ": Ready")?,
            Waited::Ready(Err(problem)) => self.step_cannot_finish(started, &problem)?,
            Waited::Deadline => {
                let pods = self.view.borrow().pods.clone();
                let not_ready = ordinals_not_ready(&name, &pods, &revision, ordinals);
                let details = describe_pods(&name, &pods, &not_ready, &revision);
                self.step_timed_out(started, overall, &details)?;
            }
            Waited::Changed => {}
        }
        Ok(())
    }

    /// The stable template as a patch: the stable ControllerRevision's template when it still
    /// exists, else the stable images on the current template.
    async fn stable_template(&self, sts: &StatefulSet) -> Result<TemplateChange, ExecError> {
        let stable = &self.record.stable;
        if let Some(revision) = stable.revision.revision.as_deref() {
            let selector = sts
                .spec
                .as_ref()
                .map(|s| selector_string(&s.selector))
                .unwrap_or_default();
            let revisions = self
                .cluster
                .list::<ControllerRevision>(&Select::labels(&selector))
                .await
                .map_err(|e| {
                    ExecError::api("listing the revisions of StatefulSet", &self.name, e)
                })?;
            if let Some(template) = revisions
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(revision))
                .and_then(|r| r.data.as_ref())
                .and_then(|d| revision_template(&d.0))
            {
                return Ok(TemplateChange::Replace(template));
            }
            tracing::warn!(statefulset = %self.name, revision, "stable ControllerRevision not found; restoring the stable images only");
        }
        let spec = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default();
        Ok(TemplateChange::images(&spec, &stable.revision.images))
    }

    /// Rollback step: the stable template back with partition 0, in one write with the record;
    /// done when the controller's update revision is the stable one.
    pub(super) async fn restore_template(&mut self) -> Result<(), ExecError> {
        let started = Instant::now();
        self.begin()?;
        let current = self.read_set().await?;
        let template = self.stable_template(&current).await?;
        let written = match self
            .commit(Some(template), Some(StrategyChange::freeze(0)))
            .await?
        {
            Committed::Written(sts) => sts,
            Committed::Changed => return Ok(()),
        };
        let generation = written.metadata.generation.unwrap_or(0);
        let stable = self.record.stable.revision.revision.clone();
        let (deadline, overall) = self.step_deadline();
        let name = self.name.clone();
        match self
            .wait_on(&name, Some(deadline), |s| {
                revision_taken_up(s.statefulset.as_ref()?, generation, stable.as_deref())
            })
            .await?
        {
            Waited::Ready(revision) => self.complete(started, &format!(": revision {revision}"))?,
            Waited::Deadline => self.step_timed_out(
                started,
                overall,
                "the StatefulSet controller did not go back to the stable revision",
            )?,
            Waited::Changed => {}
        }
        Ok(())
    }

    /// Rollback step: pods not Ready on the stable revision are deleted (once each; their PVCs
    /// stay) until every pod runs the stable revision and is Ready.
    pub(super) async fn replace_stuck_pods(&mut self) -> Result<(), ExecError> {
        let started = Instant::now();
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let name = self.name.clone();
        // The revision the controller updates to now: the stable one, after RestoreTemplate.
        let Some(stable) = self
            .view
            .borrow()
            .statefulset
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.update_revision.clone())
            .or_else(|| self.record.stable.revision.revision.clone())
        else {
            return Err(ExecError::NotRollable {
                statefulset: name,
                reason: "neither the set nor its rollout record names the stable revision".into(),
            });
        };
        let replicas_planned = self.record.plan.replicas;
        let start = self.record.plan.ordinal_start;
        let mut deleted: HashSet<String> = HashSet::new();
        let (deadline, overall) = self.step_deadline();
        loop {
            let waited = self
                .wait_on(&name, Some(deadline), |s| {
                    let all = set_ordinals(s.statefulset.as_ref(), replicas_planned, start);
                    if ordinals_not_ready(&name, &s.pods, &stable, &all).is_empty()
                        && s.statefulset
                            .as_ref()
                            .is_some_and(|sts| revision_made_current(sts, &stable))
                    {
                        return Some(Stuck::AllReady);
                    }
                    let fresh: Vec<_> = stuck_pods(&name, &s.pods, &stable)
                        .into_iter()
                        .filter(|(pod, uid)| !deleted.contains(uid.as_ref().unwrap_or(pod)))
                        .collect();
                    (!fresh.is_empty()).then_some(Stuck::Delete(fresh))
                })
                .await?;
            match waited {
                Waited::Ready(Stuck::AllReady) => {
                    return self.complete(started, ": every pod Ready");
                }
                Waited::Ready(Stuck::Delete(pods)) => {
                    for (pod, uid) in pods {
                        let broken = self
                            .view
                            .borrow()
                            .pods
                            .iter()
                            .find(|p| p.metadata.name.as_deref() == Some(pod.as_str()))
                            .and_then(|p| pod_revision(p).map(String::from))
                            .unwrap_or_else(|| "?".into());
                        tracing::info!(pod = %pod, revision = %broken, "deleting a pod stuck on another revision");
                        self.cluster
                            .delete_pod(&pod, uid.as_deref())
                            .await
                            .map_err(|e| ExecError::api("deleting stuck pod", &pod, e))?;
                        self.progress.say(format!(
                            "        deleted pod {pod}: not Ready on revision {broken}; the controller recreates it on {stable}, its volume stays"
                        ));
                        deleted.insert(uid.unwrap_or(pod));
                    }
                }
                Waited::Deadline => {
                    let snapshot = self.view.borrow().clone();
                    let all = set_ordinals(snapshot.statefulset.as_ref(), replicas_planned, start);
                    let not_ready = ordinals_not_ready(&name, &snapshot.pods, &stable, &all);
                    let details = format!(
                        "pods did not come back: {}",
                        describe_pods(&name, &snapshot.pods, &not_ready, &stable)
                    );
                    return self.step_timed_out(started, overall, &details);
                }
                Waited::Changed => return Ok(()),
            }
        }
    }
}
