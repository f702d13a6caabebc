//! The run loop: an interpreter of steps. It takes a rollout record and runs its steps, forward
//! while the rollout progresses and back through the record's rollback steps once it fails or is
//! aborted, each step kind by one function (in the files beside this one):
//!
//! - [`partition`]: the pod template and the partition of the rollout's own set, and the way
//!   back (the stable template, pods stuck on a broken revision replaced);
//! - [`sets`]: scaling a set, creating and removing a second set (green, a shadow);
//! - [`traffic`]: moving the live Services' selectors, the preview Service;
//! - [`route`]: traffic through a Gateway API HTTPRoute (per-revision Services, weights);
//! - [`gating`]: the gates, on pods and through a Service;
//! - [`shadow`]: the shadow's comparison;
//! - [`drift`]: stopping at someone else's deploy, and holding blue on its revision.
//!
//! What every step shares lives here:
//! - Every mutation goes out in one write together with the record that describes it, under
//!   the resourceVersion this run last saw (or, for another object, after a write of the record
//!   alone): the record always tells what may have changed.
//! - On a conflict the set is read again: a record someone else wrote (`promote`, `pause`,
//!   `abort` from another terminal) is adopted; otherwise the plan is brought in line with the
//!   cluster (`reconcile`) and the loop decides again. Nothing is ever overwritten blindly.
//! - One wait primitive, [`Runner::wait_on`]: the next change of a watched set or its pods, a
//!   deadline, or the loss of the lease, whichever comes first, with a pure check from
//!   `crate::strategy::predicates` deciding when the step is done. The same wake-ups notice a
//!   record written by another process, so a `rollout promote` elsewhere takes effect at once.
//! - A failure going forward plans the rollback (`crate::strategy::rollback`) and writes the
//!   record before anything else is done; a failure going back ends the rollback as failed.

use crate::exec::cluster::ClusterExt;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

mod analysis;
mod drift;
mod gating;
mod partition;
mod route;
pub(crate) use route::revision_service_owned;
mod sets;
mod shadow;
mod traffic;

use super::cluster::{ApiError, Cluster, Snapshot, View};
use super::gates::GateRunner;
use super::patch::{RecordChange, StrategyChange, StsPatch, TemplateChange};
use super::progress::{format_elapsed, Progress};
use super::ExecError;
use crate::cluster::retry;
use crate::model::plan::Step;
use crate::model::state::{PauseReason, Phase, RollbackCause, RolloutState, ANNOTATION_KEY};
use crate::model::strategy::PauseSpec;
use crate::model::twin::{Twin, SET_LABEL};
use crate::strategy::observed::Observed;
use crate::strategy::predicates;

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
    /// How long this run may take for the rollback it runs (`abort --timeout`); each rollback
    /// step also has the rollout's step deadline.
    pub rollback_limit: Option<Duration>,
    /// The command and webhook gates this run's own command line gives: the only ones it runs
    /// (those named by the record are not run on its word).
    pub gates: crate::model::gate::LocalGates,
}

/// What a runner works with: the cluster, the gates, where progress goes, and the signal that
/// the lease was lost.
pub struct Tools<C: Cluster, G: GateRunner> {
    pub cluster: C,
    pub gates: G,
    pub progress: Progress,
    pub lease_lost: watch::Receiver<Option<String>>,
    pub announce: super::announce::Announcer,
}

/// The record as this run last wrote it, and what the next write is based on.
struct Writes {
    /// Hashes of the annotation texts this run wrote (or found at its start): any other text
    /// is someone else's.
    known: HashSet<u64>,
    last_text: String,
    /// The phase of the last record written.
    last_phase: Option<Phase>,
    /// The resourceVersion the next write is based on.
    resource_version: Option<String>,
    conflicts: u32,
    /// A snapshot (or a read) has shown this rollout's record on the set: from then on a set
    /// without one had it removed (before, it may be a snapshot older than the first write).
    seen_record: bool,
}

pub struct Runner<C: Cluster, G: GateRunner> {
    cluster: C,
    gates: G,
    progress: Progress,
    lease_lost: watch::Receiver<Option<String>>,
    name: String,
    view: View,
    /// A watch on another set (green, a shadow), made when first needed.
    other_view: Option<(String, View)>,
    record: RolloutState,
    writes: Writes,
    options: RunOptions,
    /// The overall deadline (pauses push it back).
    total_deadline: Option<Instant>,
    /// The end of the time this run may spend rolling back.
    rollback_deadline: Option<Instant>,
    /// The step whose pause (or rollback) was announced last, so it is announced once.
    announced: Option<(usize, Phase)>,
    /// How many times the current step's gate (or comparison) could not decide so far.
    undecided: u32,
    /// Where the rollout's story was last told (Events, notifications, the record's timeline).
    told: Option<Box<RolloutState>>,
    announce: super::announce::Announcer,
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

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// A runner for `record` on the StatefulSet `statefulset` (as last read: its annotation and
    /// resourceVersion are where the run starts from), watched by `view`.
    pub fn new(
        tools: Tools<C, G>,
        statefulset: &StatefulSet,
        record: RolloutState,
        view: View,
        options: RunOptions,
    ) -> Self {
        let start_text = annotation(statefulset).to_string();
        let told = RolloutState::from_annotation("", &start_text)
            .ok()
            .map(Box::new);
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
            cluster: tools.cluster,
            gates: tools.gates,
            progress: tools.progress,
            lease_lost: tools.lease_lost,
            name: record.plan.statefulset.clone(),
            view,
            other_view: None,
            writes: Writes {
                known: HashSet::from([hash_text(&start_text), hash_text("")]),
                last_phase: RolloutState::from_annotation("", &start_text)
                    .ok()
                    .map(|r| r.phase),
                last_text: start_text,
                resource_version: statefulset.metadata.resource_version.clone(),
                conflicts: 0,
                seen_record: false,
            },
            total_deadline,
            rollback_deadline: options.rollback_limit.map(deadline_after),
            options,
            announced: None,
            undecided: 0,
            told,
            announce: tools.announce,
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
        // The live status line in a terminal: refreshed while this run lasts, cleared after.
        let _ticker = self.progress.live_ticker();
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
            self.check_latest_snapshot().await?;
            self.note_stable_seen();
            self.mark();
            match self.record.phase {
                Phase::Succeeded
                | Phase::RolledBack
                | Phase::Aborted
                | Phase::Released
                | Phase::Failed => {
                    if self.finish().await? {
                        return Ok(RunOutcome {
                            record: self.record,
                            held: false,
                        });
                    }
                }
                Phase::Paused => {
                    if !self.paused().await? {
                        return Ok(RunOutcome {
                            record: self.record,
                            held: true,
                        });
                    }
                }
                Phase::Progressing => match self.record.current().cloned() {
                    // Past the last step while still marked progressing: completing finishes.
                    None => self.record.complete_step(Self::now())?,
                    Some(step) => self.run_step(step).await?,
                },
                Phase::RollingBack => self.step_back().await?,
            }
        }
    }

    /// One step of the rollback, or its end.
    async fn step_back(&mut self) -> Result<(), ExecError> {
        if self.writes.last_phase != Some(Phase::RollingBack) {
            // The failure (or abort) is written before the rollback writes anything: a run
            // killed in between must not find the failed step still to run.
            self.announce_rollback();
            let _ = self.commit(None, None).await?;
            return Ok(());
        }
        self.announce_rollback();
        let step = self.record.rollback_steps().current().cloned();
        match step {
            Some(step) => self.run_step(step).await,
            None => {
                self.record.rollback_done(Self::now())?;
                if self.record.phase == Phase::Released {
                    self.progress
                        .say(format!("[release] {}", self.record.message));
                } else {
                    self.progress
                        .say(format!("[rollback] {}", self.back_where_it_was()));
                }
                Ok(())
            }
        }
    }

    /// Runs one step, forward or back: one function per kind of step.
    async fn run_step(&mut self, step: Step) -> Result<(), ExecError> {
        let span = tracing::info_span!(
            "step",
            step = self.step_label().0 + 1,
            kind = step.name(),
            back = self.backwards()
        );
        // The API calls the step makes retry faults until the step's deadline, not longer.
        let (deadline, _) = self.step_deadline();
        let run = async {
            match step {
                Step::SetTemplateAndFreeze { partition } => {
                    self.write_template(Some(partition)).await
                }
                Step::SetTemplate => self.write_template(None).await,
                Step::SetPartition {
                    partition,
                    ordinals,
                    ..
                } => self.lower_partition(partition, &ordinals).await,
                Step::RestoreTemplate => self.restore_template().await,
                Step::ReplaceStuckPods => self.replace_stuck_pods().await,
                Step::Gate { ordinals, set } => self.gate(&ordinals, set.as_deref()).await,
                Step::GateService { service } => self.gate_service(&service).await,
                Step::Scale { set, replicas } => self.scale(&set, replicas).await,
                Step::CreateTwin { set, replicas } => self.create_twin(&set, replicas).await,
                Step::RemoveTwin { set } => self.remove_twin_step(&set).await,
                Step::PinTraffic => self.point_traffic(traffic::To::PinnedBlue).await,
                Step::HoldRevision { partition } => self.hold_revision(Some(partition)).await,
                Step::ReleaseRevision => self.hold_revision(None).await,
                Step::SwitchTraffic => self.point_traffic(traffic::To::Green).await,
                Step::ReturnTraffic => self.point_traffic(traffic::To::BlueNow).await,
                Step::RestoreSelectors => self.point_traffic(traffic::To::Original).await,
                Step::RemovePreview => self.remove_preview_step().await,
                Step::Compare { set } => self.compare(&set).await,
                Step::CreateRevisionServices
                | Step::SetRouteWeights { .. }
                | Step::RestoreRoute
                | Step::RemoveRevisionServices
                | Step::MirrorRoute { .. }
                | Step::PreviewRoute
                | Step::SwitchRoute => self.route_step(&step).await,
                Step::Pause { wait } => {
                    // Entering a pause is normally done by the transitions; a record that
                    // reached a pause step while progressing is put in the same state here.
                    self.record.phase = Phase::Paused;
                    let until = match wait {
                        PauseSpec::UntilPromote => None,
                        PauseSpec::For(d) => Self::now().checked_add(d.get()).ok(),
                    };
                    self.record.pause = Some(PauseReason::Step { until });
                    Ok(())
                }
            }
        };
        retry::within(deadline, run.instrument(span)).await
    }

    fn now() -> Timestamp {
        Timestamp::now()
    }

    /// True while the rollout goes back (the steps run are the rollback's).
    fn backwards(&self) -> bool {
        self.record.phase == Phase::RollingBack
    }

    /// True while the steps run are a release's (`rollout release`): no way back to stable.
    fn releasing(&self) -> bool {
        self.backwards() && self.record.rollback_cause == Some(RollbackCause::Released)
    }

    /// The step being run, forward or back.
    fn current_step(&self) -> Option<&Step> {
        if self.backwards() {
            self.record.rollback.as_ref().and_then(|r| r.current())
        } else {
            self.record.current()
        }
    }

    /// (index, total) of the step being run in its list.
    fn step_label(&self) -> (usize, usize) {
        match (&self.record.rollback, self.backwards()) {
            (Some(r), true) => (r.current_step, r.steps.len()),
            _ => (self.record.current_step, self.record.plan.steps.len()),
        }
    }

    fn step_text(&self) -> String {
        self.current_step()
            .map(|s| self.record.plan.describe_step(s))
            .unwrap_or_default()
    }

    /// The step is about to write: its start is recorded (its deadline counts from there).
    fn begin(&mut self) -> Result<(), ExecError> {
        if self.backwards() {
            self.record.begin_rollback_step(Self::now())?;
        } else {
            self.record.begin_step(Self::now())?;
        }
        self.mark();
        self.progress
            .live_begin(|| self.live_label(), || self.step_text());
        Ok(())
    }

    /// Adds to the record's timeline what happened since it was last told, and tells it
    /// (Events, notifications; best effort, never waited for).
    fn mark(&mut self) {
        let marks = crate::strategy::timeline::marks_between(
            self.told.as_deref(),
            &self.record,
            Self::now(),
        );
        if marks.is_empty() {
            return;
        }
        crate::model::timeline::append(&mut self.record.timeline, marks.iter().cloned());
        self.told = Some(Box::new(self.record.clone()));
        let uid = self
            .view
            .borrow()
            .statefulset
            .as_ref()
            .and_then(|s| s.metadata.uid.clone());
        self.announce.tell(uid.as_deref(), &self.record, &marks);
    }

    /// The step is done; `detail` says how it ended, after the step's own words.
    fn complete(&mut self, started: Instant, detail: &str) -> Result<(), ExecError> {
        self.undecided = 0;
        self.report(started, detail);
        if self.backwards() {
            self.record.complete_rollback_step(Self::now())?;
        } else {
            self.record.complete_step(Self::now())?;
        }
        self.mark();
        Ok(())
    }

    /// The live status line's label: `[3/5]`, `[rollback 1/3]`.
    fn live_label(&self) -> String {
        let (index, total) = self.step_label();
        let kind = match (self.backwards(), self.releasing()) {
            (true, true) => "release ",
            (true, false) => "rollback ",
            _ => "",
        };
        format!("[{kind}{}/{total}]", index + 1)
    }

    /// The step's line of progress: `[2/7] 4.2s  <step>: <detail>` (`[rollback 1/3]` going
    /// back).
    fn report(&self, started: Instant, detail: &str) {
        self.progress.live_end();
        let (index, total) = self.step_label();
        let text = format!("{}{detail}", self.step_text());
        if self.backwards() {
            let kind = if self.releasing() {
                "release"
            } else {
                "rollback"
            };
            self.progress.say(format!(
                "[{kind} {}/{total}] {:>7}  {text}",
                index + 1,
                format_elapsed(started.elapsed())
            ));
        } else {
            self.progress.step(index, total, started.elapsed(), &text);
        }
    }

    /// The step failed. Going forward the rollout fails (and rolls back, unless told to hold);
    /// going back the rollback ends as failed: someone has to look.
    fn step_failed(&mut self, cause: RollbackCause, message: String) -> Result<(), ExecError> {
        self.undecided = 0;
        if self.backwards() {
            let message = if self.releasing() {
                format!(
                    "release of {0} did not finish: {message}; check `kubectl get pods`, then `rollout release {0}` to try again",
                    self.name
                )
            } else {
                format!(
                    "rollback of {0} did not finish: {message}; check `kubectl get pods`, then `rollout abort {0}` to try again",
                    self.name
                )
            };
            self.progress.say(format!("[rollback] FAILED: {message}"));
            self.record.rollback_failed(message, Self::now())?;
        } else {
            self.record.fail(cause, message, Self::now())?;
        }
        self.mark();
        Ok(())
    }

    /// Ends the step as failed now: `problem` says why waiting out its deadline would not help
    /// (a pod that cannot start, say).
    fn step_cannot_finish(&mut self, started: Instant, problem: &str) -> Result<(), ExecError> {
        let (index, total) = self.step_label();
        let step = self.step_text();
        self.report(started, &format!(": FAILED: {problem}"));
        self.step_failed(
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
        let message = format!("{}: {details}", self.deadline_message(overall));
        self.report(started, ": TIMED OUT");
        self.progress.say(format!("        {message}"));
        self.step_failed(RollbackCause::TimedOut, message)
    }

    /// A gate (or comparison) of the current step could not decide (`message` says why): it
    /// runs again after a back-off, as long as the step's deadline allows. Once the deadline
    /// has passed, the step fails as timed out (and the rollback runs), naming what stayed
    /// undecided. Returns after the wait; the loop then runs the step again.
    async fn undecided(&mut self, started: Instant, message: &str) -> Result<(), ExecError> {
        let (deadline, overall) = self.step_deadline();
        let left = deadline.saturating_duration_since(Instant::now());
        let name = self.name.clone();
        let took = started.elapsed();
        let wait = match retry::after_undecided(self.undecided, fastrand::f64(), left, took) {
            retry::Undecided::RunAgainIn(wait) => wait,
            retry::Undecided::FailIn(left) => {
                self.report(started, ": could not decide; no time left for another try");
                // Until the deadline (a promote, abort or pause from another terminal still
                // acts at once), then the step fails.
                let waited = self
                    .wait_on(&name, Some(Instant::now() + left), |_| None::<()>)
                    .await?;
                if !matches!(waited, Waited::Deadline) {
                    return Ok(());
                }
                return self.step_timed_out(
                    started,
                    overall,
                    &format!("it stayed undecided: {message}"),
                );
            }
        };
        self.undecided += 1;
        self.report(
            started,
            &format!(
                ": could not decide (try {}); trying again in {}, until the step's deadline in {}",
                self.undecided,
                format_elapsed(wait),
                format_elapsed(left)
            ),
        );
        for line in message.lines() {
            self.progress.say(format!("        {line}"));
        }
        // Written for `rollout status` (once per reason, not per try).
        if self.record.undecided.as_deref() != Some(message) {
            self.record.undecided = Some(message.to_string());
            if let Committed::Changed = self.commit(None, None).await? {
                return Ok(());
            }
        }
        let until = Instant::now() + wait;
        // Watching meanwhile: a promote, abort or pause from another terminal acts at once.
        self.wait_on(&name, Some(until), |_| None::<()>).await?;
        Ok(())
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
            // Back on stable, or released to someone else's deploy: the update strategy and
            // partition as they were before.
            (Phase::RolledBack | Phase::Aborted | Phase::Released, t) => {
                Some(StrategyChange::Set {
                    type_: t.clone().unwrap_or_else(|| "RollingUpdate".to_string()),
                    partition: stable.partition,
                })
            }
            _ => None,
        };
        // A rollout that moved pods in batches set maxUnavailable: the set's own value goes back.
        let max_unavailable =
            predicates::given_back_max_unavailable(&self.record.plan.steps, stable)
                .filter(|_| self.record.phase != Phase::Failed);
        self.mark();
        let text = self.record.to_annotation()?;
        if text == self.writes.last_text && restore.is_none() && max_unavailable.is_none() {
            return Ok(true);
        }
        let mut patch = StsPatch::at(None);
        patch.update_strategy = restore;
        patch.max_unavailable = max_unavailable;
        Ok(matches!(
            self.commit_patch(patch).await?,
            Committed::Written(_)
        ))
    }

    /// Sends the record (and a change of template or update strategy) under the last seen
    /// resourceVersion.
    async fn commit(
        &mut self,
        template: Option<TemplateChange>,
        strategy: Option<StrategyChange>,
    ) -> Result<Committed, ExecError> {
        let mut patch = StsPatch::at(None);
        patch.template = template;
        patch.update_strategy = strategy;
        self.commit_patch(patch).await
    }

    /// Sends the record with `patch` (a change of the set's own fields) in one write, under
    /// the last seen resourceVersion.
    async fn commit_patch(&mut self, patch: StsPatch) -> Result<Committed, ExecError> {
        self.mark();
        let text = self.record.to_annotation()?;
        let patch = StsPatch {
            resource_version: self.writes.resource_version.clone(),
            ..patch
        }
        .with_record(RecordChange::Set(text.clone()));
        // The text is this run's from now on, whether or not the answer comes back: a write
        // that landed before its answer was lost is found on the set later, and must not be
        // taken for another command's record.
        self.writes.known.insert(hash_text(&text));
        match self
            .cluster
            .patch_statefulset(&self.name, &patch, false)
            .await
        {
            Ok(sts) => {
                tracing::debug!(
                    statefulset = %self.name,
                    phase = %self.record.phase,
                    step = self.step_label().0 + 1,
                    resource_version = sts.metadata.resource_version.as_deref().unwrap_or(""),
                    mutation = patch.mutates_pods(),
                    "wrote the rollout record"
                );
                self.writes.known.insert(hash_text(&text));
                self.writes.last_text = text;
                self.writes.last_phase = Some(self.record.phase);
                self.writes.resource_version = sts.metadata.resource_version.clone();
                self.writes.conflicts = 0;
                Ok(Committed::Written(Box::new(sts)))
            }
            Err(ApiError::Conflict(message)) => {
                self.writes.conflicts += 1;
                tracing::debug!(statefulset = %self.name, %message, "write conflict; reading again");
                if self.writes.conflicts > MAX_CONFLICTS {
                    return Err(ExecError::TooManyConflicts {
                        statefulset: self.name.clone(),
                        attempts: self.writes.conflicts,
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

    /// The step begins: its start is recorded and written with no other change. False when
    /// the write met a change and the loop must decide again.
    async fn begin_and_record(&mut self) -> Result<bool, ExecError> {
        self.begin()?;
        Ok(matches!(
            self.commit(None, None).await?,
            Committed::Written(_)
        ))
    }

    /// Every object of kind `K` in the namespace; `action` says what failed, before the
    /// namespace's name ("listing Services in namespace").
    async fn list_all<K: crate::cluster::Object>(
        &self,
        action: &'static str,
    ) -> Result<Vec<K>, ExecError> {
        self.cluster
            .list::<K>(&crate::cluster::Select::all())
            .await
            .map_err(|e| ExecError::api(action, self.cluster.namespace(), e))
    }

    /// The rollout's own set as the API server has it now.
    async fn read_set(&self) -> Result<StatefulSet, ExecError> {
        self.cluster
            .get::<StatefulSet>(&self.name)
            .await
            .map_err(|e| ExecError::api("reading StatefulSet", &self.name, e))?
            .ok_or_else(|| ExecError::StatefulSetDeleted {
                name: self.name.clone(),
            })
    }

    /// After a conflict: reads the set, adopts a record someone else wrote, or re-plans.
    async fn reread(&mut self) -> Result<(), ExecError> {
        let fresh = self.read_set().await?;
        self.writes.resource_version = fresh.metadata.resource_version.clone();
        if !self.adopt_external(&fresh, false)? {
            self.replan(&fresh)?;
        }
        Ok(())
    }

    /// Adopts the record on `sts` when someone else wrote it; true when it did.
    fn adopt_external(&mut self, sts: &StatefulSet, from_watch: bool) -> Result<bool, ExecError> {
        self.check_record(sts, from_watch)?;
        let text = annotation(sts);
        if self.writes.known.contains(&hash_text(text)) {
            return Ok(false);
        }
        let record = RolloutState::from_annotation(&self.name, text)?;
        let problems = crate::strategy::trust::check_record(&record, &self.name);
        if !problems.is_empty() {
            return Err(crate::model::state::StateError::Untrusted {
                statefulset: self.name.clone(),
                problems: problems.join("; "),
            }
            .into());
        }
        tracing::info!(statefulset = %self.name, phase = %record.phase, step = record.current_step + 1, "adopting a rollout record written by another command");
        self.writes.known.insert(hash_text(text));
        self.writes.last_text = text.to_string();
        self.writes.last_phase = Some(record.phase);
        self.writes.resource_version = sts.metadata.resource_version.clone();
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
        self.told = Some(Box::new(record.clone()));
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

    /// The deadline of the current step: its own, or the overall one when that comes first
    /// (`true`). Going back, the time this run may spend rolling back bounds it too.
    fn step_deadline(&self) -> (Instant, bool) {
        let started = if self.backwards() {
            self.record
                .rollback
                .as_ref()
                .and_then(|r| r.step_started_at)
        } else {
            self.record.step_started_at
        };
        let started = started.unwrap_or_else(Self::now);
        let step = self.record.config.timeouts.step.get();
        let end = started.checked_add(step).unwrap_or(Timestamp::MAX);
        let own = deadline_after(until(end));
        let overall = if self.backwards() {
            self.rollback_deadline
        } else {
            self.total_deadline
        };
        match overall {
            Some(total) if total < own => (total, true),
            _ => (own, false),
        }
    }

    fn deadline_message(&self, overall: bool) -> String {
        let (index, total) = self.step_label();
        let step = self.step_text();
        match (overall, self.backwards()) {
            (true, true) => format!(
                "the rollback passed the time it was given ({}) during step {}/{total} ({step})",
                self.options
                    .rollback_limit
                    .map(format_elapsed)
                    .unwrap_or_default(),
                index + 1
            ),
            (true, false) => format!(
                "the rollout passed its overall deadline of {} during step {}/{total} ({step})",
                self.record
                    .config
                    .timeouts
                    .total
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                index + 1
            ),
            (false, back) => format!(
                "{}step {}/{total} ({step}) passed its deadline of {}",
                if back { "rollback " } else { "" },
                index + 1,
                self.record.config.timeouts.step
            ),
        }
    }

    /// Starts (once) the watch on another set and its pods.
    fn watch_other(&mut self, set: &str) {
        if self
            .other_view
            .as_ref()
            .is_some_and(|(name, _)| name == set)
        {
            return;
        }
        let view = self.cluster.watch(set, &format!("{SET_LABEL}={set}"));
        self.other_view = Some((set.to_string(), view));
    }

    /// The latest snapshot of `set`: the rollout's own, or the other set's once watched.
    fn snapshot_of(&self, set: &str) -> Arc<Snapshot> {
        match self.other_view.as_ref() {
            Some((name, view)) if name == set && set != self.name => view.borrow().clone(),
            _ if set == self.name => self.view.borrow().clone(),
            _ => Arc::new(Snapshot::default()),
        }
    }

    /// The one wait: until `check` gives a value on the snapshot of `set` (the rollout's own
    /// set or another), the deadline passes, the record changes from outside or (for a
    /// partition rollout going forward) the set is scaled. Errors when the set is deleted, a
    /// watch ends or the lease is lost.
    async fn wait_on<T>(
        &mut self,
        set: &str,
        deadline: Option<Instant>,
        mut check: impl FnMut(&Snapshot) -> Option<T>,
    ) -> Result<Waited<T>, ExecError> {
        let own_set = set == self.name;
        if !own_set {
            self.watch_other(set);
        }
        loop {
            let own = self.view.borrow_and_update().clone();
            if own.synced {
                let Some(sts) = own.statefulset.as_ref() else {
                    return Err(ExecError::StatefulSetDeleted {
                        name: self.name.clone(),
                    });
                };
                if self.adopt_external(sts, true)? {
                    return Ok(Waited::Changed);
                }
                if annotation(sts) == self.writes.last_text {
                    // The newest version that carries our last write: base the next one on it.
                    self.writes.resource_version = sts.metadata.resource_version.clone();
                    // Someone else's deploy ends the wait now, not at the step's deadline.
                    self.stop_if_drifted(sts).await?;
                }
                if predicates::replicas(sts) != self.record.plan.replicas
                    && self.record.plan.strategy.uses_partition()
                    && matches!(self.record.phase, Phase::Progressing | Phase::Paused)
                {
                    self.replan(sts)?;
                    return Ok(Waited::Changed);
                }
            }
            let snapshot = match self.other_view.as_mut() {
                Some((_, view)) if !own_set => view.borrow_and_update().clone(),
                _ => own,
            };
            if snapshot.synced {
                self.progress
                    .live_detail(|| super::live::pods_moving(&snapshot));
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
                match self.other_view.as_mut() {
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

    /// After the set's watch fired in the middle of a step that does not wait through
    /// [`Runner::wait_on`] (a gate, a comparison): an error when the watch ended or the set is
    /// gone; true when another command wrote the record (now adopted), so the step must stop
    /// for the loop to decide again.
    async fn changed_from_outside(
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
        if self.adopt_external(&sts, true)? {
            return Ok(true);
        }
        if annotation(&sts) == self.writes.last_text {
            // Not a command's change (a pod restarted, the controller wrote the status): the
            // next write is based on it, as in `wait_on`, instead of meeting a conflict.
            self.writes.resource_version = sts.metadata.resource_version.clone();
            self.stop_if_drifted(&sts).await?;
        }
        Ok(false)
    }

    /// The record's second set, for the steps that work with one.
    fn twin(&self) -> Result<Twin, ExecError> {
        self.record
            .twin
            .clone()
            .ok_or_else(|| ExecError::NotRollable {
                statefulset: self.name.clone(),
                reason: "its rollout record names no second StatefulSet; `rollout abort` returns it to stable".into(),
            })
    }

    /// Says once what the rollback will do.
    fn announce_rollback(&mut self) {
        if self.announced == Some((usize::MAX, Phase::RollingBack)) {
            return;
        }
        self.announced = Some((usize::MAX, Phase::RollingBack));
        let steps = self.record.rollback_steps().steps.clone();
        if self.releasing() {
            let what = match steps.as_slice() {
                [] => "rollout holds nothing to give back".to_string(),
                steps => steps
                    .iter()
                    .map(|s| self.record.plan.describe_step(s))
                    .collect::<Vec<_>>()
                    .join("; then "),
            };
            self.progress.say(format!(
                "releasing {} to the other deploy, its pod template left as it is: {what}",
                self.name
            ));
            return;
        }
        let what = match steps.as_slice() {
            [] => "nothing this rollout did needs undoing".to_string(),
            [Step::Scale { replicas, .. }] if *replicas > 0 => format!(
                "its pod template never changed: scaling {} back to {replicas}",
                self.name
            ),
            steps => steps
                .iter()
                .map(|s| self.record.plan.describe_step(s))
                .collect::<Vec<_>>()
                .join("; then "),
        };
        self.progress.say(format!(
            "rolling back {} to the stable revision {}: {what}",
            self.name,
            self.record
                .stable
                .revision
                .revision
                .as_deref()
                .unwrap_or("?")
        ));
    }

    /// Where the app stands once the rollback is done, in words.
    fn back_where_it_was(&self) -> String {
        let stable = self
            .record
            .stable
            .revision
            .revision
            .as_deref()
            .unwrap_or("?");
        match &self.record.twin {
            Some(twin)
                if self.record.plan.strategy == crate::model::strategy::StrategyKind::BlueGreen =>
            {
                format!(
                    "{} serves again: {}",
                    self.name,
                    twin.services
                        .iter()
                        .map(|s| format!(
                            "{} selects {}",
                            s.name,
                            crate::model::twin::render_selector(&s.original)
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
            _ => format!(
                "{} is back on revision {stable}: every pod Ready",
                self.name
            ),
        }
    }

    /// At a pause: waits for its end, a promote or another command. False when the run should
    /// stop here (a hold it is not asked to wait at).
    async fn paused(&mut self) -> Result<bool, ExecError> {
        let text = self.record.to_annotation()?;
        if text != self.writes.last_text {
            if let Committed::Changed = self.commit(None, None).await? {
                return Ok(true);
            }
        }
        let (index, total) = self.step_label();
        let first = self.announced != Some((index, self.record.phase));
        self.announced = Some((index, self.record.phase));
        let pause_started = Instant::now();
        match self.record.pause.clone() {
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
                match Box::pin(self.wait_analysing(Some(deadline_after(until(at))))).await? {
                    analysis::Analysed::Failed => return Ok(true),
                    analysis::Analysed::Waited(Waited::Deadline) => {
                        self.record.finish_timed_pause(Self::now());
                    }
                    analysis::Analysed::Waited(_) => {}
                }
            }
            Some(PauseReason::Step { until: None }) => {
                let holding = self.holding_text();
                // Continuous analysis keeps the run at the hold: it is what checks the canary.
                let analysing = self.record.config.gates.analysis().is_some();
                if !self.options.wait_at_holds && !analysing {
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
                if let analysis::Analysed::Failed = Box::pin(self.wait_analysing(None)).await? {
                    return Ok(true);
                }
            }
            // Paused by `rollout pause` (or, in a record of an older rollout, at a gate that
            // could not decide): the run stops here, at a safe point between steps, and leaves
            // the rest to `rollout resume` instead of waiting for a person with no end.
            Some(PauseReason::User) | Some(PauseReason::GateInconclusive { .. }) => {
                return Ok(false);
            }
            None => {
                self.record.phase = Phase::Progressing;
                return Ok(true);
            }
        }
        // Pauses do not count toward the overall deadline.
        let paused = pause_started.elapsed();
        if let Some(total) = self.total_deadline.as_mut() {
            *total += paused;
        }
        let so_far = self.record.measured.paused_ms.unwrap_or(0);
        self.record.measured.paused_ms =
            Some(so_far.saturating_add(u64::try_from(paused.as_millis()).unwrap_or(u64::MAX)));
        Ok(true)
    }

    /// What a hold holds at, in words.
    fn holding_text(&self) -> String {
        let done = self.record.current_step;
        let updated = self.record.plan.updated_after(done).unwrap_or(0);
        let weight = self.record.plan.steps[..done.min(self.record.plan.steps.len())]
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::SetPartition { weight, .. } => *weight,
                _ => None,
            });
        let share = match (weight, self.record.plan.route_percent_after(done)) {
            (_, Some(traffic)) => format!(
                "canary: {updated}/{} pods, traffic {traffic}",
                self.record.plan.replicas
            ),
            (Some(w), None) => w.to_string(),
            (None, None) => format!("{updated} of {} pods", self.record.plan.replicas),
        };
        match &self.record.twin {
            Some(twin) => format!(
                "holding before the switch: {} runs the new version on all its pods, gated; the live Services still select {}",
                twin.set, self.name
            ),
            None => format!("holding at {share} on the new version"),
        }
    }
}
