//! Someone else's deploy in the middle of a rollout: the run stops at once when the set's
//! template, partition or replicas are not what the record says they should be at this step
//! (`crate::strategy::predicates::drift`), or when the record itself was removed or replaced.
//! It writes nothing more to the set and rolls nothing back: the other deploy's change stays,
//! the record says what changed, by which field manager and when (unless the record is gone,
//! which is then not written again), and the run ends with exit 4.
//!
//! Also the steps that keep blue serving while green waits: `HoldRevision` (blue's pods held
//! on their revision by its partition) and its inverse `ReleaseRevision`.

use k8s_openapi::api::apps::v1::StatefulSet;
use tokio::time::Instant;

use super::{annotation, hash_text, Committed, Runner};
use crate::cluster::ApiError;
use crate::exec::cluster::{Cluster, ClusterExt};
use crate::exec::gates::GateRunner;
use crate::exec::patch::{RecordChange, StrategyChange, StsPatch};
use crate::exec::ExecError;
use crate::model::drift::Drift;
use crate::model::route::HttpRoute;
use crate::strategy::predicates::drift as judge;

/// Writes of the stopped record before the run gives up on recording it.
const RECORD_ATTEMPTS: u32 = 10;

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// The error that ends a run stopped by `drift`.
    fn drift_error(&self, drift: &Drift) -> ExecError {
        ExecError::Drifted {
            statefulset: self.name.clone(),
            what: drift.to_string(),
            advice: judge::advice(&self.name, drift),
        }
    }

    /// Stops the run when the record on `sts` is no longer this rollout's: removed (once a
    /// snapshot has shown it), or replaced by another rollout's. Nothing is written, the record
    /// least of all.
    /// `from_watch`: `sts` comes from the watch, whose versions arrive in order. Only such a
    /// snapshot counts as having shown the record: a read can be newer than the watch, and a
    /// watch snapshot behind it must not then be taken for the record's removal.
    pub(super) fn check_record(
        &mut self,
        sts: &StatefulSet,
        from_watch: bool,
    ) -> Result<(), ExecError> {
        let text = annotation(sts);
        if self.writes.known.contains(&hash_text(text)) {
            if !text.is_empty() {
                self.writes.seen_record |= from_watch;
                return Ok(());
            }
            if !self.writes.seen_record {
                return Ok(());
            }
        }
        let Some(change) = judge::record_changed(&self.record, text) else {
            return Ok(());
        };
        match judge::attribute(sts, vec![change]) {
            Some(drift) => Err(self.drift_error(&drift)),
            None => Ok(()),
        }
    }

    /// Stops the run when `sts` (carrying this run's last record) drifted from what the
    /// record says: the record is written once more, alone, saying what changed; then the
    /// run ends.
    pub(super) async fn stop_if_drifted(&mut self, sts: &StatefulSet) -> Result<(), ExecError> {
        match judge::detect(&self.record, sts) {
            Some(drift) => self.stop_for(drift, sts).await,
            None => Ok(()),
        }
    }

    /// Stops the run for `drift`, seen with the set as `sts` (carrying this run's last record):
    /// the record is written once more, alone, saying what changed; then the run ends.
    async fn stop_for(&mut self, drift: Drift, sts: &StatefulSet) -> Result<(), ExecError> {
        let advice = judge::advice(&self.name, &drift);
        let message = format!("{drift}; {advice}");
        tracing::warn!(statefulset = %self.name, %message, "drift");
        self.record.drifted(drift.clone(), message, Self::now());
        if let Err(problem) = self.record_drift(sts).await {
            self.progress.say(format!(
                "        note: the rollout record could not be updated to say so ({problem})"
            ));
        }
        Err(self.drift_error(&drift))
    }

    /// The latest snapshot of the rollout's own set, judged before each step: a deploy made
    /// while no run was watching (a held blue/green before `promote`) stops this one before it
    /// writes anything.
    pub(super) async fn check_latest_snapshot(&mut self) -> Result<(), ExecError> {
        let own = self.view.borrow().clone();
        if !own.synced {
            return Ok(());
        }
        let Some(sts) = own.statefulset.as_ref() else {
            return Ok(());
        };
        self.check_record(sts, true)?;
        if annotation(sts) == self.writes.last_text {
            self.stop_if_drifted(sts).await?;
            let sts = sts.clone();
            self.stop_if_route_drifted(&sts).await?;
        }
        Ok(())
    }

    /// Stops the run when the rules of the route it steers traffic through are not those it
    /// last saw there (someone else's `kubectl edit`, a GitOps sync of the route): the next
    /// route write would silently undo that change, and the weights are no longer rollout's.
    async fn stop_if_route_drifted(&mut self, sts: &StatefulSet) -> Result<(), ExecError> {
        let Some(name) = self.record.route.as_ref().map(|r| r.route.clone()) else {
            return Ok(());
        };
        if !judge::route_watched(&self.record) {
            return Ok(());
        }
        let route = self
            .cluster
            .get::<HttpRoute>(&name)
            .await
            .map_err(|e| ExecError::api("reading HTTPRoute", &name, e))?;
        match judge::route_drift(&self.record, route.as_ref()) {
            Some(drift) => self.stop_for(drift, sts).await,
            None => Ok(()),
        }
    }

    /// Writes the record alone (no change of the set), under the version the drift was seen
    /// in, then (the controller is busy with the other deploy, and its status writes conflict)
    /// under the latest, but only while the set still carries this run's record.
    async fn record_drift(&mut self, seen: &StatefulSet) -> Result<(), String> {
        let text = self.record.to_annotation().map_err(|e| e.to_string())?;
        let mut version = seen.metadata.resource_version.clone();
        for _ in 0..RECORD_ATTEMPTS {
            let patch =
                StsPatch::at(version.as_deref()).with_record(RecordChange::Set(text.clone()));
            match self
                .cluster
                .patch_statefulset(&self.name, &patch, false)
                .await
            {
                Ok(_) => {
                    self.writes.known.insert(hash_text(&text));
                    self.writes.last_text = text;
                    return Ok(());
                }
                Err(ApiError::Conflict(_)) => {
                    let fresh = self.read_set().await.map_err(|e| e.to_string())?;
                    if annotation(&fresh) != self.writes.last_text {
                        return Err("the record changed meanwhile".to_string());
                    }
                    version = fresh.metadata.resource_version.clone();
                }
                Err(e) => return Err(format!("writing it: {e}")),
            }
        }
        Err(format!(
            "{RECORD_ATTEMPTS} writes in a row met a newer version of the set"
        ))
    }

    /// Step: hold the rollout's own set's pods on their revision (`Some(partition)`: RollingUpdate
    /// at that partition), or give the set back the update strategy it had (`None`). Neither
    /// moves a pod, so there is nothing to wait for.
    pub(super) async fn hold_revision(&mut self, partition: Option<u32>) -> Result<(), ExecError> {
        let started = Instant::now();
        self.begin()?;
        let change = match partition {
            Some(p) => StrategyChange::freeze(p),
            None => StrategyChange::Set {
                type_: self
                    .record
                    .stable
                    .update_strategy
                    .clone()
                    .unwrap_or_else(|| "RollingUpdate".to_string()),
                partition: self.record.stable.partition,
            },
        };
        let mut patch = StsPatch::at(None).with_strategy(change);
        // Given back: a rollout that moved pods in batches had set maxUnavailable too.
        if partition.is_none() {
            patch.max_unavailable = crate::strategy::predicates::given_back_max_unavailable(
                &self.record.plan.steps,
                &self.record.stable,
            );
        }
        match self.commit_patch(patch).await? {
            Committed::Written(_) => self.complete(started, ""),
            Committed::Changed => Ok(()),
        }
    }
}
