//! The run loop: takes a rollout record and drives the StatefulSet through its remaining steps.
//!
//! - Every mutation goes out in one strategic merge patch together with the record that
//!   describes it, under the resourceVersion this run last saw: either both land or neither.
//! - On a conflict the set is read again: a record someone else wrote (`promote`, `pause`,
//!   `abort` from another terminal) is adopted; otherwise the plan is brought in line with the
//!   cluster (`reconcile`) and the loop decides again. Nothing is ever overwritten blindly.
//! - Waiting is on the watch [`View`]: the next change of the set or its pods, a deadline, or
//!   the loss of the lease, whichever comes first. The same wake-ups notice a record written by
//!   another process, so a `rollout promote` elsewhere takes effect at once.
//! - Rollback: template and partition back to stable, then the pods stuck on the broken
//!   revision are deleted (kubernetes #67250), then the set is waited on until every pod is back
//!   and Ready. PVCs are never touched.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

mod shadow;
mod twin;

use super::cluster::{selector_string, ApiError, Cluster, Snapshot, View};
use super::gates::{gate_targets, GateRunner};
use super::patch::{revision_template, RecordChange, StrategyChange, StsPatch, TemplateChange};
use super::progress::{format_elapsed, Progress};
use super::ExecError;
use crate::gate::probe::GateContext;
use crate::gate::Verdict;
use crate::model::plan::Step;
use crate::model::state::{PauseReason, Phase, RollbackCause, RolloutState, ANNOTATION_KEY};
use crate::model::strategy::PauseSpec;
use crate::strategy::observed::{self, Observed};
use crate::strategy::predicates::{
    is_ready, is_terminating, ordinals_not_available, ordinals_not_ready, ordinals_released, pod_ordinal, pod_revision,
};

/// Conflicting writes in a row before the run gives up.
const MAX_CONFLICTS: u32 = 20;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub record: RolloutState,
    /// True when the run stopped at a hold it was not asked to wait at (a canary `--weight`
    /// waiting for `promote`): the rollout goes on with `rollout promote`.
    pub held: bool,
}

/// What a write did.
pub(super) enum Committed {
    Written(Box<StatefulSet>),
    /// The set changed under the write; the record was brought in line (or replaced by one
    /// someone else wrote). The loop decides again.
    Changed,
}

/// What a wait ended with.
pub(super) enum Waited<T> {
    Ready(T),
    Deadline,
    /// The record changed from outside, or the set was scaled: decide again.
    Changed,
}

/// Options of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Keep waiting at pause-until-promote steps instead of stopping there.
    pub wait_at_holds: bool,
    /// The template the freeze step writes (only a run that starts the rollout has it).
    pub template: Option<TemplateChange>,
}

pub struct Runner<C: Cluster, G: GateRunner> {
    cluster: C,
    gates: G,
    progress: Progress,
    name: String,
    view: View,
    lease_lost: watch::Receiver<Option<String>>,
    record: RolloutState,
    /// Hashes of the annotation texts this run wrote (or found at its start): any other text is
    /// someone else's.
    known: HashSet<u64>,
    last_text: String,
    /// The resourceVersion the next write is based on.
    resource_version: Option<String>,
    conflicts: u32,
    /// `maxUnavailable` for the next write: a batch's size, or what the set had before.
    max_unavailable: Option<serde_json::Value>,
    options: RunOptions,
    /// The overall deadline (pauses push it back).
    total_deadline: Option<Instant>,
    /// The step whose pause was announced last, so a pause is announced once.
    announced: Option<(usize, Phase)>,
    /// A watch on the twin set (blue/green, shadow), made when first needed.
    twin_view: Option<(String, View)>,
}

fn hash_text(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn annotation(sts: &StatefulSet) -> &str {
    sts.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_KEY))
        .map(String::as_str)
        .unwrap_or("")
}

fn deadline_after(d: Duration) -> Instant {
    Instant::now()
        .checked_add(d)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400))
}

/// Time from now until `at`, zero when past.
fn until(at: Timestamp) -> Duration {
    at.duration_since(Timestamp::now())
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// What keeps a pod from being counted as done, in words.
pub fn describe_pod(pod: Option<&Pod>, name: &str, revision: &str) -> String {
    let Some(pod) = pod else {
        return format!("{name} does not exist yet");
    };
    if is_terminating(pod) {
        return format!("{name} is terminating");
    }
    let on = pod_revision(pod).unwrap_or("?");
    if on != revision {
        return format!("{name} still runs revision {on}");
    }
    let mut parts = vec![];
    for status in pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
    {
        let state = status.state.as_ref();
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.as_deref().unwrap_or("waiting");
            match waiting.message.as_deref().filter(|m| !m.is_empty()) {
                Some(m) => parts.push(format!("container {} {reason}: {m}", status.name)),
                None => parts.push(format!("container {} {reason}", status.name)),
            }
        } else if let Some(done) = state.and_then(|s| s.terminated.as_ref()) {
            parts.push(format!(
                "container {} exited with {}",
                status.name, done.exit_code
            ));
        } else if !status.ready {
            parts.push(format!("container {} is not ready", status.name));
        }
        if status.restart_count > 0 {
            parts.push(format!("restarted {} times", status.restart_count));
        }
    }
    if parts.is_empty() {
        if is_ready(pod) {
            return format!("{name} is Ready");
        }
        parts.push("not Ready".to_string());
    }
    format!("{name}: {}", parts.join(", "))
}

/// A reason that waiting cannot fix (the image cannot be pulled, the container cannot be
/// configured), so the step fails now instead of at its deadline.
pub fn hopeless(pod: &Pod) -> Option<String> {
    const HOPELESS: [&str; 4] = [
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
    ];
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            HOPELESS.contains(&reason).then(|| {
                let name = pod.metadata.name.as_deref().unwrap_or("?");
                match waiting.message.as_deref().filter(|m| !m.is_empty()) {
                    Some(m) => format!("pod {name}: container {} {reason}: {m}", c.name),
                    None => format!("pod {name}: container {} {reason}", c.name),
                }
            })
        })
}

fn pod_by_ordinal<'a>(set: &str, pods: &'a [Pod], ordinal: u32) -> Option<&'a Pod> {
    pods.iter()
        .find(|p| p.metadata.name.as_deref().and_then(|n| pod_ordinal(set, n)) == Some(ordinal))
}

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// A runner for `record` on the StatefulSet `statefulset` (as last read: its annotation and
    /// resourceVersion are where the run starts from).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster: C,
        gates: G,
        progress: Progress,
        statefulset: &StatefulSet,
        record: RolloutState,
        view: View,
        lease_lost: watch::Receiver<Option<String>>,
        options: RunOptions,
    ) -> Self {
        let start_text = annotation(statefulset).to_string();
        // The overall deadline counts from the rollout's start, not this run's, with the time
        // spent paused left out.
        let total_deadline = record.config.timeouts.total.map(|t| {
            let paused = Duration::from_millis(record.measured.paused_ms.unwrap_or(0));
            let end = record
                .started_at
                .checked_add(t.get() + paused)
                .unwrap_or(Timestamp::MAX);
            deadline_after(until(end))
        });
        Runner {
            cluster,
            gates,
            progress,
            name: record.plan.statefulset.clone(),
            view,
            lease_lost,
            known: HashSet::from([hash_text(&start_text), hash_text("")]),
            last_text: start_text,
            resource_version: statefulset.metadata.resource_version.clone(),
            conflicts: 0,
            max_unavailable: None,
            options,
            total_deadline,
            announced: None,
            twin_view: None,
            record,
        }
    }

    pub fn record(&self) -> &RolloutState {
        &self.record
    }

    /// Runs until the rollout is finished, or stops at a hold.
    pub async fn run(self) -> Result<RunOutcome, ExecError> {
        let span = tracing::info_span!(
            "rollout",
            namespace = %self.cluster.namespace(),
            statefulset = %self.name,
            id = %self.record.id
        );
        self.run_loop().instrument(span).await
    }

    async fn run_loop(mut self) -> Result<RunOutcome, ExecError> {
        loop {
            if let Some(reason) = self.lease_lost.borrow().clone() {
                return Err(ExecError::LeaseLost {
                    statefulset: self.name.clone(),
                    reason,
                });
            }
            match self.record.phase {
                Phase::Succeeded | Phase::RolledBack | Phase::Aborted | Phase::Failed => {
                    if self.finish().await? {
                        return Ok(RunOutcome {
                            record: self.record,
                            held: false,
                        });
                    }
                }
                Phase::RollingBack => self.rollback().await?,
                Phase::Paused => {
                    if !self.paused().await? {
                        return Ok(RunOutcome {
                            record: self.record,
                            held: true,
                        });
                    }
                }
                Phase::Progressing => self.run_step().await?,
            }
        }
    }

    fn now() -> Timestamp {
        Timestamp::now()
    }

    fn step_label(&self) -> (usize, usize) {
        (self.record.current_step, self.record.plan.steps.len())
    }

    fn step_text(&self) -> String {
        self.record
            .current()
            .map(|s| self.record.plan.describe_step(s))
            .unwrap_or_default()
    }

    /// Ends the step as failed now: `problem` says why waiting out its deadline would not help
    /// (a pod that cannot start, say).
    fn step_cannot_finish(&mut self, started: Instant, problem: &str) -> Result<(), ExecError> {
        let (index, total) = self.step_label();
        let step = self.step_text();
        self.progress.step(
            index,
            total,
            started.elapsed(),
            &format!("{step}: FAILED: {problem}"),
        );
        self.fail(
            RollbackCause::GateFailed,
            format!(
                "step {}/{total} ({step}) cannot finish: {problem}",
                index + 1
            ),
        )
    }

    /// Ends the step at its deadline (or the rollout's, when `overall`); `details` name what it
    /// was still waiting for, so the user and the record see more than "timed out".
    fn step_timed_out(
        &mut self,
        started: Instant,
        overall: bool,
        details: &str,
    ) -> Result<(), ExecError> {
        let (index, total) = self.step_label();
        let step = self.step_text();
        let message = format!("{}: {details}", self.deadline_message(overall));
        self.progress.step(
            index,
            total,
            started.elapsed(),
            &format!("{step}: TIMED OUT"),
        );
        self.progress.say(format!("        {message}"));
        self.fail(RollbackCause::TimedOut, message)
    }

    /// The error that ends the run once the lease watch fires.
    fn lease_lost_error(&self) -> ExecError {
        let reason = self
            .lease_lost
            .borrow()
            .clone()
            .unwrap_or_else(|| "lease lost".into());
        ExecError::LeaseLost {
            statefulset: self.name.clone(),
            reason,
        }
    }

    /// After the set's watch fired in the middle of a step that does not wait through
    /// [`Runner::wait_for`]: an error when the watch ended or the set is gone; true when another
    /// command wrote the record (now adopted), so the step must stop for the loop to decide again.
    fn changed_from_outside(
        &mut self,
        changed: Result<(), watch::error::RecvError>,
    ) -> Result<bool, ExecError> {
        if changed.is_err() {
            return Err(ExecError::WatchEnded {
                statefulset: self.name.clone(),
            });
        }
        let sts = self.view.borrow().statefulset.clone();
        let Some(sts) = sts else {
            return Err(ExecError::StatefulSetDeleted {
                name: self.name.clone(),
            });
        };
        if self.adopt_external(&sts)? {
            return Ok(true);
        }
        if annotation(&sts) == self.last_text {
            // Not a command's change (a pod restarted, the controller wrote the status): the
            // next write is based on it, as in `wait_for`, instead of meeting a conflict.
            self.resource_version = sts.metadata.resource_version.clone();
        }
        Ok(false)
    }

    /// Writes the final record, and gives back the update strategy the set had: after a
    /// rollback its type and partition, after a success an `OnDelete` type.
    /// False when the write met a change and the loop must decide again.
    async fn finish(&mut self) -> Result<bool, ExecError> {
        let stable = &self.record.stable;
        let restore = match (self.record.phase, &stable.update_strategy) {
            (Phase::Succeeded, Some(t)) if t == "OnDelete" => Some(StrategyChange::Set {
                type_: t.clone(),
                partition: None,
            }),
            // Back on stable: the update strategy and partition as they were before.
            (Phase::RolledBack | Phase::Aborted, t) => Some(StrategyChange::Set {
                type_: t.clone().unwrap_or_else(|| "RollingUpdate".to_string()),
                partition: stable.partition,
            }),
            _ => None,
        };
        if moved_in_batches(&self.record.plan.steps) && stable.update_strategy.as_deref() != Some("OnDelete") {
            self.max_unavailable = Some(stable.max_unavailable.clone().unwrap_or(serde_json::Value::Null));
        }
        let text = self.record.to_annotation()?;
        if text == self.last_text && restore.is_none() && self.max_unavailable.is_none() {
            return Ok(true);
        }
        Ok(matches!(
            self.commit(None, restore).await?,
            Committed::Written(_)
        ))
    }

    /// Sends the record (and a mutation) under the last seen resourceVersion.
    async fn commit(
        &mut self,
        template: Option<TemplateChange>,
        strategy: Option<StrategyChange>,
    ) -> Result<Committed, ExecError> {
        self.commit_with(template, strategy, None).await
    }

    /// [`Self::commit`], also setting the set's replicas.
    pub(super) async fn commit_with(
        &mut self,
        template: Option<TemplateChange>,
        strategy: Option<StrategyChange>,
        replicas: Option<u32>,
    ) -> Result<Committed, ExecError> {
        let text = self.record.to_annotation()?;
        let mut patch = StsPatch::at(self.resource_version.as_deref())
            .with_record(RecordChange::Set(text.clone()));
        patch.template = template;
        patch.update_strategy = strategy;
        patch.replicas = replicas;
        patch.max_unavailable = self.max_unavailable.take();
        match self
            .cluster
            .patch_statefulset(&self.name, &patch, false)
            .await
        {
            Ok(sts) => {
                tracing::debug!(
                    statefulset = %self.name,
                    phase = %self.record.phase,
                    step = self.record.current_step + 1,
                    resource_version = sts.metadata.resource_version.as_deref().unwrap_or(""),
                    mutation = patch.mutates_pods(),
                    "wrote the rollout record"
                );
                self.known.insert(hash_text(&text));
                self.last_text = text;
                self.resource_version = sts.metadata.resource_version.clone();
                self.conflicts = 0;
                Ok(Committed::Written(Box::new(sts)))
            }
            Err(ApiError::Conflict(message)) => {
                self.conflicts += 1;
                tracing::debug!(statefulset = %self.name, %message, "write conflict; reading again");
                if self.conflicts > MAX_CONFLICTS {
                    return Err(ExecError::TooManyConflicts {
                        statefulset: self.name.clone(),
                        attempts: self.conflicts,
                    });
                }
                self.reread().await?;
                Ok(Committed::Changed)
            }
            Err(ApiError::NotFound) => Err(ExecError::StatefulSetDeleted {
                name: self.name.clone(),
            }),
            Err(source) => Err(ExecError::api(
                "writing the rollout record of StatefulSet",
                &self.name,
                source,
            )),
        }
    }

    /// The rollout's own set as the API server has it now.
    pub(super) async fn read_set(&self) -> Result<StatefulSet, ExecError> {
        self.cluster
            .get_statefulset(&self.name)
            .await
            .map_err(|e| ExecError::api("reading StatefulSet", &self.name, e))?
            .ok_or_else(|| ExecError::StatefulSetDeleted {
                name: self.name.clone(),
            })
    }

    /// After a conflict: reads the set, adopts a record someone else wrote, or re-plans.
    async fn reread(&mut self) -> Result<(), ExecError> {
        let fresh = self.read_set().await?;
        self.resource_version = fresh.metadata.resource_version.clone();
        if !self.adopt_external(&fresh)? {
            self.replan(&fresh)?;
        }
        Ok(())
    }

    /// Adopts the record on `sts` when someone else wrote it; true when it did.
    fn adopt_external(&mut self, sts: &StatefulSet) -> Result<bool, ExecError> {
        let text = annotation(sts);
        if self.known.contains(&hash_text(text)) {
            return Ok(false);
        }
        let record = RolloutState::from_annotation(&self.name, text)?;
        tracing::info!(statefulset = %self.name, phase = %record.phase, step = record.current_step + 1, "adopting a rollout record written by another command");
        self.known.insert(hash_text(text));
        self.last_text = text.to_string();
        self.resource_version = sts.metadata.resource_version.clone();
        self.progress.say(format!(
            "        rollout of {} changed by another command: {} ({})",
            self.name,
            record.phase,
            if record.message.is_empty() {
                "no message"
            } else {
                &record.message
            }
        ));
        self.record = record;
        self.announced = None;
        Ok(true)
    }

    /// Brings the plan in line with the set as it is now (scaled, or a freeze that landed).
    fn replan(&mut self, sts: &StatefulSet) -> Result<(), ExecError> {
        let pods = self.view.borrow().pods.clone();
        let observed = Observed::from_statefulset(sts)?
            .with_pods(&pods, self.record.target.revision.as_deref());
        let before = self.record.plan.replicas;
        self.record.reconcile(&observed, Self::now())?;
        if self.record.plan.replicas != before {
            self.progress
                .say(format!("        {}", self.record.message));
        }
        Ok(())
    }

    /// The deadline of the current step: its own, or the overall one when that comes first.
    fn step_deadline(&self) -> (Instant, bool) {
        let started = self.record.step_started_at.unwrap_or_else(Self::now);
        let step = self.record.config.timeouts.step.get();
        let end = started.checked_add(step).unwrap_or(Timestamp::MAX);
        let own = deadline_after(until(end));
        match self.total_deadline {
            Some(total) if total < own => (total, true),
            _ => (own, false),
        }
    }

    fn deadline_message(&self, overall: bool) -> String {
        let (index, total) = self.step_label();
        let step = self.step_text();
        if overall {
            format!(
                "the rollout passed its overall deadline of {} during step {}/{} ({step})",
                self.record
                    .config
                    .timeouts
                    .total
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                index + 1,
                total
            )
        } else {
            format!(
                "step {}/{} ({step}) passed its deadline of {}",
                index + 1,
                total,
                self.record.config.timeouts.step
            )
        }
    }

    /// Waits until `check` gives a value, the deadline passes, the record changes from outside
    /// or the set is scaled. Errors when the set is deleted or the lease is lost.
    async fn wait_for<T>(
        &mut self,
        deadline: Option<Instant>,
        mut check: impl FnMut(&Snapshot, &StatefulSet) -> Option<T>,
    ) -> Result<Waited<T>, ExecError> {
        loop {
            let snapshot: Arc<Snapshot> = self.view.borrow_and_update().clone();
            if snapshot.synced {
                let Some(sts) = snapshot.statefulset.as_ref() else {
                    return Err(ExecError::StatefulSetDeleted {
                        name: self.name.clone(),
                    });
                };
                if self.adopt_external(sts)? {
                    return Ok(Waited::Changed);
                }
                if let Some(now) = template_changed_elsewhere(&self.record, sts) {
                    return Err(ExecError::TemplateChangedElsewhere {
                        statefulset: self.name.clone(),
                        now,
                        target: self.record.target.revision.clone().unwrap_or_default(),
                    });
                }
                if annotation(sts) == self.last_text {
                    // The newest version that carries our last write: base the next one on it.
                    self.resource_version = sts.metadata.resource_version.clone();
                }
                let replicas = observed::replicas(sts);
                if replicas != self.record.plan.replicas
                    && self.record.plan.strategy.uses_partition()
                    && matches!(self.record.phase, Phase::Progressing | Phase::Paused)
                {
                    self.replan(sts)?;
                    return Ok(Waited::Changed);
                }
                if let Some(value) = check(&snapshot, sts) {
                    return Ok(Waited::Ready(value));
                }
            }
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.view.changed() => {
                    if changed.is_err() {
                        return Err(ExecError::WatchEnded { statefulset: self.name.clone() });
                    }
                }
                _ = sleep => return Ok(Waited::Deadline),
                _ = self.lease_lost.changed() => return Err(self.lease_lost_error()),
            }
        }
    }

    async fn run_step(&mut self) -> Result<(), ExecError> {
        let Some(step) = self.record.current().cloned() else {
            // Past the last step while still marked progressing: completing it finishes.
            self.record.complete_step(Self::now())?;
            return Ok(());
        };
        let span = tracing::info_span!(
            "step",
            step = self.record.current_step + 1,
            kind = step.name()
        );
        match step {
            Step::SetTemplateAndFreeze { partition } => {
                self.freeze_or_set(Some(partition)).instrument(span).await
            }
            Step::SetPartition {
                partition,
                ordinals,
                ..
            } => {
                self.lower_partition(partition, &ordinals)
                    .instrument(span)
                    .await
            }
            Step::Gate { ordinals, set } => {
                self.gate(&ordinals, set.as_deref()).instrument(span).await
            }
            Step::SetTemplate => self.freeze_or_set(None).instrument(span).await,
            Step::Scale { set, replicas } => self.scale(&set, replicas).instrument(span).await,
            Step::PinTraffic => self.move_traffic(false).instrument(span).await,
            Step::SwitchTraffic => self.move_traffic(true).instrument(span).await,
            Step::CreateTwin { set, replicas } => {
                self.create_twin(&set, replicas).instrument(span).await
            }
            Step::GateService { service } => self.gate_service(&service).instrument(span).await,
            Step::Compare { set } => self.compare(&set).instrument(span).await,
            Step::RemoveTwin { set } => self.remove_twin_step(&set).instrument(span).await,
            Step::Pause { wait } => {
                // Entering a pause is normally done by the transitions; a record that reached
                // a pause step while progressing is put in the same state here.
                self.record.phase = Phase::Paused;
                let until = match wait {
                    PauseSpec::UntilPromote => None,
                    PauseSpec::For(d) => Self::now().checked_add(d.get()).ok(),
                };
                self.record.pause = Some(PauseReason::Step { until });
                Ok(())
            }
        }
    }

    /// The template this run writes: the one it was started with, else the recorded one.
    pub(super) fn new_template(&self) -> Option<TemplateChange> {
        self.options.template.clone().or_else(|| {
            self.record
                .new_template
                .clone()
                .map(TemplateChange::Replace)
        })
    }

    /// Writes the new template with the partition at `partition` (a freeze), or with no
    /// partition at all (`None`: recreate, where no pod runs at that moment).
    async fn freeze_or_set(&mut self, partition: Option<u32>) -> Result<(), ExecError> {
        let started = Instant::now();
        self.record.begin_step(Self::now())?;
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
        let waited = self
            .wait_for(Some(deadline), |_, sts| {
                let status = sts.status.as_ref()?;
                if status.observed_generation.unwrap_or(0) < generation {
                    return None;
                }
                status.update_revision.clone()
            })
            .await?;
        match waited {
            Waited::Ready(revision) => {
                let (index, total) = self.step_label();
                let step = self.step_text();
                self.record.target.revision = Some(revision.clone());
                self.record.complete_step(Self::now())?;
                self.progress.step(
                    index,
                    total,
                    started.elapsed(),
                    &format!("{step}; new revision {revision}"),
                );
            }
            Waited::Deadline => {
                let message = format!(
                    "{}: the StatefulSet controller did not take up the new template",
                    self.deadline_message(overall)
                );
                self.fail(RollbackCause::TimedOut, message)?;
            }
            Waited::Changed => {}
        }
        Ok(())
    }

    async fn lower_partition(&mut self, partition: u32, ordinals: &[u32]) -> Result<(), ExecError> {
        let started = Instant::now();
        self.record.begin_step(Self::now())?;
        // The partition releases the batch; maxUnavailable lets the controller replace all of it
        // at once (one at a time is its default).
        if ordinals.len() > 1 {
            self.max_unavailable = Some(serde_json::json!(ordinals.len()));
        }
        match self
            .commit(None, Some(StrategyChange::Partition(partition)))
            .await?
        {
            Committed::Written(sts) if ordinals.len() > 1 && !honours_max_unavailable(&sts) => {
                self.progress.say(format!(
                    "  note: this cluster ignores StatefulSet maxUnavailable (Kubernetes before 1.24, or the MaxUnavailableStatefulSet feature gate off), so the StatefulSet controller replaces these {} pods one at a time; the batch is still gated as one",
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
        let wanted = ordinals.to_vec();
        let (deadline, overall) = self.step_deadline();
        let waited = self
            .wait_for(Some(deadline), |snapshot, sts| {
                let missing = ordinals_not_ready(&name, &snapshot.pods, &revision, &wanted);
                if missing.is_empty() {
                    // Gated only once Available: Ready for the set's minReadySeconds. The
                    // controller writes availableReplicas when that time is up, which wakes
                    // this wait again.
                    let min_ready = sts.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
                    let unavailable = ordinals_not_available(&name, &snapshot.pods, &wanted, min_ready, Timestamp::now());
                    return unavailable.is_empty().then_some(Ok(()));
                }
                missing
                    .iter()
                    .filter_map(|o| pod_by_ordinal(&name, &snapshot.pods, *o))
                    .filter(|p| pod_revision(p) == Some(revision.as_str()))
                    .find_map(hopeless)
                    .map(Err)
            })
            .await?;
        match waited {
            Waited::Ready(Ok(())) => {
                let (index, total) = self.step_label();
                let step = self.step_text();
                self.record.complete_step(Self::now())?;
                self.progress
                    .step(index, total, started.elapsed(), &format!("{step}: Ready"));
            }
            Waited::Ready(Err(problem)) => self.step_cannot_finish(started, &problem)?,
            Waited::Deadline => {
                let pods = self.view.borrow().pods.clone();
                let not_ready = ordinals_not_ready(&self.name, &pods, &revision, ordinals);
                let details: Vec<String> = not_ready
                    .iter()
                    .map(|o| {
                        describe_pod(
                            pod_by_ordinal(&self.name, &pods, *o),
                            &format!("{}-{o}", self.name),
                            &revision,
                        )
                    })
                    .collect();
                self.step_timed_out(started, overall, &details.join("; "))?;
            }
            Waited::Changed => {}
        }
        Ok(())
    }

    async fn gate(&mut self, ordinals: &[u32], set: Option<&str>) -> Result<(), ExecError> {
        let started = Instant::now();
        self.record.begin_step(Self::now())?;
        match self.commit(None, None).await? {
            Committed::Written(_) => {}
            Committed::Changed => return Ok(()),
        }
        let (index, total) = self.step_label();
        let step_text = self.step_text();
        let changed_container = self
            .record
            .target
            .images
            .first()
            .map(|i| i.container.clone());
        let (set_name, pods) = match set {
            Some(twin) => (twin.to_string(), self.twin_pods(twin).await),
            None => (self.name.clone(), self.view.borrow().pods.clone()),
        };
        let targets = gate_targets(
            &set_name,
            &pods,
            ordinals,
            &self.record.config.gates,
            changed_container.as_deref(),
        );
        let verdict = match targets {
            Err(problem) => Verdict::Inconclusive {
                message: format!("the gate could not run: {problem}"),
            },
            Ok(targets) => {
                let context = GateContext {
                    statefulset: Some(self.name.clone()),
                    rollout_id: Some(self.record.id.clone()),
                    step: Some(self.record.current_step),
                    description: Some(step_text.clone()),
                    revision: self.record.target.revision.clone(),
                };
                let gates = self.gates.clone();
                let spec = self.record.config.gates.clone();
                let run = async move { gates.run(&spec, &targets, &context).await };
                tokio::pin!(run);
                let (deadline, overall) = self.step_deadline();
                loop {
                    tokio::select! {
                        verdict = &mut run => break verdict,
                        _ = tokio::time::sleep_until(deadline) => {
                            let message = format!("{}: the gate did not finish", self.deadline_message(overall));
                            self.progress.step(index, total, started.elapsed(), &format!("{step_text}: TIMED OUT"));
                            self.fail(RollbackCause::TimedOut, message)?;
                            return Ok(());
                        }
                        changed = self.view.changed() => {
                            if self.changed_from_outside(changed)? {
                                self.progress.step(index, total, started.elapsed(), &format!("{step_text}: interrupted"));
                                return Ok(());
                            }
                        }
                        _ = self.lease_lost.changed() => return Err(self.lease_lost_error()),
                    }
                }
            }
        };
        self.conclude_gate(verdict, index, total, &step_text, started)
    }

    /// Acts on a gate's verdict: next step, rollback, or pause when it could not decide.
    fn conclude_gate(
        &mut self,
        verdict: Verdict,
        index: usize,
        total: usize,
        step_text: &str,
        started: Instant,
    ) -> Result<(), ExecError> {
        match verdict {
            Verdict::Pass => {
                self.record.complete_step(Self::now())?;
                self.progress.step(
                    index,
                    total,
                    started.elapsed(),
                    &format!("{step_text}: passed"),
                );
            }
            Verdict::Fail { .. } => {
                let message = verdict.message();
                self.progress.step(
                    index,
                    total,
                    started.elapsed(),
                    &format!("{step_text}: FAILED"),
                );
                for line in message.lines() {
                    self.progress.say(format!("        {line}"));
                }
                self.fail(RollbackCause::GateFailed, message)?;
            }
            Verdict::Inconclusive { message } => {
                self.progress.step(
                    index,
                    total,
                    started.elapsed(),
                    &format!("{step_text}: could not decide"),
                );
                for line in message.lines() {
                    self.progress.say(format!("        {line}"));
                }
                self.record.gate_inconclusive(message, Self::now())?;
            }
        }
        Ok(())
    }

    fn fail(&mut self, cause: RollbackCause, message: String) -> Result<(), ExecError> {
        self.record.fail(cause, message, Self::now())?;
        Ok(())
    }

    /// At a pause: waits for its end, a promote or another command. False when the run should
    /// stop here (a hold it is not asked to wait at).
    async fn paused(&mut self) -> Result<bool, ExecError> {
        let text = self.record.to_annotation()?;
        if text != self.last_text {
            if let Committed::Changed = self.commit(None, None).await? {
                return Ok(true);
            }
        }
        let (index, total) = self.step_label();
        let first = self.announced != Some((index, self.record.phase));
        self.announced = Some((index, self.record.phase));
        let pause_started = Instant::now();
        let waited = match self.record.pause.clone() {
            Some(PauseReason::Step { until: Some(at) }) => {
                if first {
                    self.progress.step(
                        index,
                        total,
                        Duration::ZERO,
                        &format!(
                            "pausing for {} (until {})",
                            format_elapsed(until(at)),
                            at.strftime("%H:%M:%S UTC")
                        ),
                    );
                }
                let waited = self
                    .wait_for(Some(deadline_after(until(at))), |_, _| None::<()>)
                    .await?;
                if matches!(waited, Waited::Deadline) {
                    self.record.finish_timed_pause(Self::now());
                }
                waited
            }
            Some(PauseReason::Step { until: None }) => {
                let updated = self
                    .record
                    .plan
                    .updated_after(self.record.current_step)
                    .unwrap_or(0);
                let weight = self.record.plan.steps[..self.record.current_step]
                    .iter()
                    .rev()
                    .find_map(|s| match s {
                        Step::SetPartition { weight, .. } => *weight,
                        _ => None,
                    });
                let share = match weight {
                    Some(w) => w.to_string(),
                    None => format!("{updated} of {} pods", self.record.plan.replicas),
                };
                let holding = match &self.record.twin {
                    Some(twin) => format!(
                        "holding before the switch: {} runs the new version on all its pods, gated; the live Services still select {}",
                        twin.set, self.name
                    ),
                    None => format!("holding at {share} on the new version"),
                };
                if !self.options.wait_at_holds {
                    self.progress.step(
                        index,
                        total,
                        Duration::ZERO,
                        &format!(
                            "{holding}; continue with `rollout promote {0}`, or go back with `rollout abort {0}`",
                            self.name
                        ),
                    );
                    return Ok(false);
                }
                if first {
                    self.progress.step(
                        index,
                        total,
                        Duration::ZERO,
                        &format!("{holding} until `rollout promote {}`", self.name),
                    );
                }
                self.wait_for(None, |_, _| None::<()>).await?
            }
            Some(PauseReason::User) | Some(PauseReason::GateInconclusive { .. }) => {
                if first {
                    self.progress.say(format!(
                        "        paused: {}; waiting for `rollout resume {1}`, `rollout promote {1}` or `rollout abort {1}`",
                        self.record.message, self.name
                    ));
                }
                self.wait_for(None, |_, _| None::<()>).await?
            }
            None => {
                self.record.phase = Phase::Progressing;
                return Ok(true);
            }
        };
        // Pauses do not count toward the overall deadline.
        let paused = pause_started.elapsed();
        if let Some(total) = self.total_deadline.as_mut() {
            *total += paused;
        }
        let so_far = self.record.measured.paused_ms.unwrap_or(0);
        self.record.measured.paused_ms =
            Some(so_far.saturating_add(u64::try_from(paused.as_millis()).unwrap_or(u64::MAX)));
        let _ = waited;
        Ok(true)
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
            let revisions = self.cluster.list_revisions(&selector).await.map_err(|e| {
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

    /// Template and partition back to stable, stuck pods deleted, every pod Ready again. True
    /// when done; false when the loop must decide again (a change, or the rollback failed).
    async fn rollback_partition(&mut self) -> Result<bool, ExecError> {
        let started = Instant::now();
        let current = self.read_set().await?;
        let template = self.stable_template(&current).await?;
        let stable_images = self
            .record
            .stable
            .revision
            .images
            .iter()
            .map(|i| format!("{}={}", i.container, i.image))
            .collect::<Vec<_>>()
            .join(", ");
        if self.announced != Some((usize::MAX, Phase::RollingBack)) {
            self.announced = Some((usize::MAX, Phase::RollingBack));
            self.progress.say(format!(
                "rolling back {} to the stable revision {} ({stable_images})",
                self.name,
                self.record
                    .stable
                    .revision
                    .revision
                    .as_deref()
                    .unwrap_or("?")
            ));
        }
        let written = match self
            .commit(Some(template), Some(StrategyChange::freeze(0)))
            .await?
        {
            Committed::Written(sts) => sts,
            Committed::Changed => return Ok(false),
        };
        let generation = written.metadata.generation.unwrap_or(0);
        let deadline = deadline_after(self.record.config.timeouts.step.get());
        let stable_revision = self.record.stable.revision.revision.clone();
        let waited = self
            .wait_for(Some(deadline), |_, sts| {
                let status = sts.status.as_ref()?;
                if status.observed_generation.unwrap_or(0) < generation {
                    return None;
                }
                let update = status.update_revision.clone()?;
                match &stable_revision {
                    Some(stable) if *stable != update => None,
                    _ => Some(update),
                }
            })
            .await?;
        let stable = match waited {
            Waited::Ready(revision) => revision,
            Waited::Deadline => {
                self.rollback_failed(
                    "the StatefulSet controller did not go back to the stable revision",
                    started,
                )?;
                return Ok(false);
            }
            Waited::Changed => return Ok(false),
        };

        // Pods stuck on another revision are deleted (once each): an OrderedReady set waits on
        // them forever otherwise (kubernetes #67250). Their PVCs stay.
        let mut deleted: HashSet<String> = HashSet::new();
        loop {
            let snapshot = self.view.borrow_and_update().clone();
            match snapshot.statefulset.as_ref() {
                None if snapshot.synced => {
                    return Err(ExecError::StatefulSetDeleted {
                        name: self.name.clone(),
                    })
                }
                // A record written by another command ends this round.
                Some(sts) if self.adopt_external(sts)? => return Ok(false),
                _ => {}
            }
            let replicas = snapshot
                .statefulset
                .as_ref()
                .and_then(observed::spec_replicas)
                .unwrap_or(self.record.plan.replicas);
            let all = ordinals_released(replicas, self.record.plan.ordinal_start, replicas, 0);
            let stuck: Vec<&Pod> = snapshot
                .pods
                .iter()
                .filter(|p| {
                    pod_revision(p) != Some(stable.as_str()) && !is_ready(p) && !is_terminating(p)
                })
                .filter(|p| {
                    p.metadata
                        .uid
                        .as_ref()
                        .is_none_or(|uid| !deleted.contains(uid))
                })
                .collect();
            for pod in stuck {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let uid = pod.metadata.uid.clone();
                let broken = pod_revision(pod).unwrap_or("?").to_string();
                tracing::info!(pod = %name, revision = %broken, "deleting a pod stuck on the broken revision");
                self.cluster
                    .delete_pod(&name, uid.as_deref())
                    .await
                    .map_err(|e| ExecError::api("deleting stuck pod", &name, e))?;
                self.progress.say(format!(
                    "        deleted pod {name}: not Ready on the broken revision {broken}; the controller recreates it on {stable}, its volume stays"
                ));
                deleted.insert(uid.unwrap_or(name));
            }
            let not_ready = ordinals_not_ready(&self.name, &snapshot.pods, &stable, &all);
            if not_ready.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let details: Vec<String> = not_ready
                    .iter()
                    .map(|o| {
                        describe_pod(
                            pod_by_ordinal(&self.name, &snapshot.pods, *o),
                            &format!("{}-{o}", self.name),
                            &stable,
                        )
                    })
                    .collect();
                self.rollback_failed(
                    &format!("pods did not come back: {}", details.join("; ")),
                    started,
                )?;
                return Ok(false);
            }
            tokio::select! {
                changed = self.view.changed() => if changed.is_err() {
                    return Err(ExecError::WatchEnded { statefulset: self.name.clone() });
                },
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.lease_lost.changed() => return Err(self.lease_lost_error()),
            }
        }

        self.progress.say(format!(
            "[rollback] {:>7}  {} is back on revision {stable}: every pod Ready",
            format_elapsed(started.elapsed()),
            self.name
        ));
        Ok(true)
    }

    /// Rolls back the way the strategy needs, then marks the record rolled back.
    async fn rollback(&mut self) -> Result<(), ExecError> {
        use crate::model::strategy::StrategyKind;
        let done = match self.record.plan.strategy {
            StrategyKind::BlueGreen => self.rollback_bluegreen().await?,
            StrategyKind::Recreate => self.rollback_recreate().await?,
            StrategyKind::Shadow => self.rollback_shadow().await?,
            _ => self.rollback_partition().await?,
        };
        if done && self.record.phase == Phase::RollingBack {
            self.record.rollback_done(Self::now())?;
        }
        Ok(())
    }

    pub(super) fn rollback_failed(
        &mut self,
        what: &str,
        started: Instant,
    ) -> Result<(), ExecError> {
        let message = format!(
            "rollback of {} did not finish within {}: {what}; check `kubectl get pods`, then `rollout abort {0}` to try again",
            self.name, self.record.config.timeouts.step
        );
        self.progress.say(format!(
            "[rollback] {:>7}  FAILED: {message}",
            format_elapsed(started.elapsed())
        ));
        self.record.rollback_failed(message, Self::now())?;
        Ok(())
    }
}

/// The set's update revision, when someone else's write of the pod template (not this rollout's,
/// and not a rollback's, which changes the record with it) made it other than the rollout's
/// target. Partition strategies only: there the set's update revision is the target.
fn template_changed_elsewhere(record: &RolloutState, sts: &StatefulSet) -> Option<String> {
    // Blue/green and shadow target another set's revision; recreate has no pods to compare.
    if !record.plan.strategy.uses_partition() || !matches!(record.phase, Phase::Progressing | Phase::Paused) {
        return None;
    }
    let target = record.target.revision.as_deref()?;
    let status = sts.status.as_ref()?;
    let observed = status.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    let now = status.update_revision.as_deref()?;
    (observed && now != target).then(|| now.to_string())
}

/// Did the plan move several pods in one step (so the run set `maxUnavailable`, to be given back)?
fn moved_in_batches(steps: &[Step]) -> bool {
    steps.iter().any(|s| matches!(s, Step::SetPartition { ordinals, .. } if ordinals.len() > 1))
}

/// The API server drops `maxUnavailable` from a StatefulSet it was written to when its release
/// lacks the field or the feature gate is off: the answer to the write tells.
fn honours_max_unavailable(sts: &StatefulSet) -> bool {
    sts.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
        .is_some_and(|r| r.max_unavailable.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A set at `generation`, its controller having seen `observed`, updating to `update`.
    fn set(generation: i64, observed: i64, update: &str, max_unavailable: Option<i32>) -> StatefulSet {
        use k8s_openapi::api::apps::v1::{
            RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetStatus, StatefulSetUpdateStrategy,
        };
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        StatefulSet {
            metadata: ObjectMeta { generation: Some(generation), ..Default::default() },
            spec: Some(StatefulSetSpec {
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateStatefulSetStrategy {
                        partition: Some(1),
                        max_unavailable: max_unavailable.map(IntOrString::Int),
                    }),
                }),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                observed_generation: Some(observed),
                update_revision: Some(update.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_template_changed_by_someone_else_is_told_apart_from_this_rollouts() {
        let record = |phase: Phase, target: Option<&str>| {
            let mut r = crate::model::state::tests::sample_state();
            r.phase = phase;
            r.target.revision = target.map(String::from);
            r
        };
        let cases = [
            ("on the target", record(Phase::Progressing, Some("web-2")), set(3, 3, "web-2", None), None),
            ("another revision, seen", record(Phase::Progressing, Some("web-2")), set(4, 4, "web-9", None), Some("web-9")),
            ("held canary, another revision", record(Phase::Paused, Some("web-2")), set(4, 4, "web-1", None), Some("web-1")),
            ("not yet seen by the controller", record(Phase::Progressing, Some("web-2")), set(4, 3, "web-9", None), None),
            ("target not known yet (freeze)", record(Phase::Progressing, None), set(4, 4, "web-9", None), None),
            ("rolling back: the stable template is ours", record(Phase::RollingBack, Some("web-2")), set(4, 4, "web-1", None), None),
        ];
        for (what, record, sts, want) in cases {
            assert_eq!(template_changed_elsewhere(&record, &sts).as_deref(), want, "{what}");
        }
    }

    #[test]
    fn max_unavailable_is_given_back_only_after_batches_and_read_from_the_write() {
        let plan = crate::model::state::tests::sample_state().plan;
        assert!(!moved_in_batches(&plan.steps), "one pod per step");
        let batch = Step::SetPartition { partition: 0, ordinals: vec![0, 1], updated: 2, weight: None };
        assert!(moved_in_batches(&[batch]));
        assert!(honours_max_unavailable(&set(1, 1, "web-2", Some(3))));
        assert!(!honours_max_unavailable(&set(1, 1, "web-2", None)), "dropped by the API server");
    }

    fn pod(revision: &str, waiting: Option<(&str, &str)>, restarts: i32) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-2".into()),
                labels: Some(
                    [("controller-revision-hash".to_string(), revision.to_string())].into(),
                ),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    ready: false,
                    restart_count: restarts,
                    state: waiting.map(|(reason, message)| ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: Some(message.into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pods_are_described_by_what_blocks_them() {
        let cases = [
            (None, "web-2 does not exist yet"),
            (
                Some(pod("web-a", None, 0)),
                "web-2 still runs revision web-a",
            ),
            (
                Some(pod("web-b", Some(("CrashLoopBackOff", "back-off 10s")), 3)),
                "web-2: container app CrashLoopBackOff: back-off 10s, restarted 3 times",
            ),
            (
                Some(pod("web-b", None, 0)),
                "web-2: container app is not ready",
            ),
        ];
        for (p, expected) in cases {
            assert_eq!(describe_pod(p.as_ref(), "web-2", "web-b"), expected);
        }
    }

    #[test]
    fn only_hopeless_waits_fail_early() {
        let cases = [
            (
                pod("b", Some(("ImagePullBackOff", "no such image")), 0),
                true,
            ),
            (pod("b", Some(("InvalidImageName", "")), 0), true),
            (pod("b", Some(("CrashLoopBackOff", "")), 5), false),
            (pod("b", Some(("ContainerCreating", "")), 0), false),
            (pod("b", None, 0), false),
        ];
        for (p, expected) in cases {
            assert_eq!(hopeless(&p).is_some(), expected, "{:?}", p.status);
        }
        let message = hopeless(&pod("b", Some(("ImagePullBackOff", "no such image")), 0));
        assert_eq!(
            message.as_deref(),
            Some("pod web-2: container app ImagePullBackOff: no such image")
        );
    }
}

