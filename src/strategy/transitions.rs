//! How a rollout record moves between phases and steps: the executor's bookkeeping (a step
//! begins, completes, fails), the user's commands (`promote`, `promote --full`, `pause`,
//! `resume`, `abort`) and bringing a record in line with the cluster before a run continues it.
//!
//! All of it is pure: each call changes the record in memory or says why it cannot; the caller
//! writes the record (with a resourceVersion precondition) and then acts.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;

use crate::model::plan::Step;
use crate::model::state::{PauseReason, Phase, Rollback, RollbackCause, RolloutState};
use crate::model::strategy::{OnFailure, PauseSpec, StrategyKind};

use super::observed::Observed;
use super::planner::{plan_partition, PlanError};
use super::predicates::ordinals_released;
use super::rollback::{plan_release, plan_rollback, ReleaseRefused};

/// Why a command cannot change the rollout as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the rollout of StatefulSet {statefulset} is {phase}: nothing to {action}")]
    NotActive {
        statefulset: String,
        phase: Phase,
        action: &'static str,
    },
    #[error("nothing to promote on StatefulSet {statefulset}: step {step} of {total} ({description}) is running, not a pause; `rollout promote --full` skips to the end")]
    NotAtPause {
        statefulset: String,
        step: usize,
        total: usize,
        description: String,
    },
    #[error("the rollout of StatefulSet {statefulset} was paused with `rollout pause`; continue it with `rollout resume {statefulset}`")]
    PausedByUser { statefulset: String },
    #[error("the rollout of StatefulSet {statefulset} waits at a pause step; continue it with `rollout promote {statefulset}`")]
    AtPauseStep { statefulset: String },
    #[error("the rollout of StatefulSet {statefulset} is not paused (it is {phase})")]
    NotPaused { statefulset: String, phase: Phase },
    #[error("the rollout of StatefulSet {statefulset} is rolling back; wait for it to finish or check `rollout status {statefulset}`")]
    RollingBack { statefulset: String },
    #[error("the rollout of StatefulSet {statefulset} already succeeded; `rollout undo {statefulset}` returns to the previous revision")]
    AlreadySucceeded { statefulset: String },
    #[error("the shadow of StatefulSet {statefulset} cannot be promoted yet: {why}; `rollout status {statefulset}` shows the comparison so far")]
    ComparisonNotPassing { statefulset: String, why: String },
    #[error("--then only applies to a shadow rollout that is still comparing; StatefulSet {statefulset} runs a {strategy} rollout at step {step}")]
    ThenNotApplicable {
        statefulset: String,
        strategy: &'static str,
        step: usize,
    },
    #[error("the blue/green rollout of StatefulSet {statefulset} cannot be undone: {why}")]
    CannotUndo { statefulset: String, why: String },
    #[error(transparent)]
    CannotRelease(#[from] ReleaseRefused),
}

impl RolloutState {
    fn name(&self) -> String {
        self.plan.statefulset.clone()
    }

    fn touch(&mut self, now: Timestamp, message: impl Into<String>) {
        self.updated_at = now;
        self.message = message.into();
        self.undecided = None;
    }

    fn require_running(&self, action: &'static str) -> Result<(), TransitionError> {
        match self.phase {
            Phase::Progressing | Phase::Paused => Ok(()),
            Phase::RollingBack => Err(TransitionError::RollingBack {
                statefulset: self.name(),
            }),
            Phase::Succeeded if action == "abort" => Err(TransitionError::AlreadySucceeded {
                statefulset: self.name(),
            }),
            phase => Err(TransitionError::NotActive {
                statefulset: self.name(),
                phase,
                action,
            }),
        }
    }

    /// Enters the current step: a pause step pauses the rollout, past the last step it has
    /// succeeded, anything else is progressing with its deadline counting from `now`.
    fn enter_current(&mut self, now: Timestamp) {
        self.pause = None;
        self.step_started_at = None;
        self.undecided = None;
        match self.current().cloned() {
            None => {
                self.phase = Phase::Succeeded;
                let message = self.success_message();
                self.touch(now, message);
            }
            Some(Step::Pause { wait }) => {
                let until = match wait {
                    PauseSpec::UntilPromote => None,
                    PauseSpec::For(d) => Some(now.checked_add(d.get()).unwrap_or(Timestamp::MAX)),
                };
                self.phase = Phase::Paused;
                self.pause = Some(PauseReason::Step { until });
                let message = match wait {
                    PauseSpec::UntilPromote => format!(
                        "paused; continue with `rollout promote {}`",
                        self.plan.statefulset
                    ),
                    PauseSpec::For(d) => format!("paused for {d}"),
                };
                self.touch(now, message);
            }
            Some(_) => {
                self.phase = Phase::Progressing;
                self.updated_at = now;
            }
        }
    }

    /// What a finished rollout did, in words.
    fn success_message(&self) -> String {
        let name = &self.plan.statefulset;
        let partition_steps = self
            .plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::SetTemplateAndFreeze { .. } | Step::SetTemplate));
        match (&self.twin, self.plan.strategy) {
            (Some(twin), StrategyKind::BlueGreen) => format!(
                "{} serves the new version; {name} is scaled to 0 and keeps its volumes",
                twin.set
            ),
            (Some(twin), StrategyKind::Shadow) if !partition_steps => format!(
                "the shadow {} compared well with {name} and was removed; {name} was not changed (`rollout promote {} --then ...` while it compares rolls it)",
                twin.set, twin.home
            ),
            _ => format!("{name} runs the new version on every pod"),
        }
    }

    /// The executor is about to run the current step (write the record, then act). Its
    /// deadline counts from the first call; a resumed run keeps it. Pause steps are not begun:
    /// the executor waits for [`RolloutState::pause_deadline`] or a promote instead.
    pub fn begin_step(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        if self.phase != Phase::Progressing {
            return Err(TransitionError::NotActive {
                statefulset: self.name(),
                phase: self.phase,
                action: "run",
            });
        }
        if self.step_started_at.is_none() {
            self.step_started_at = Some(now);
        }
        self.updated_at = now;
        Ok(())
    }

    /// The current step is done: move to the next one.
    pub fn complete_step(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        if self.phase != Phase::Progressing {
            return Err(TransitionError::NotActive {
                statefulset: self.name(),
                phase: self.phase,
                action: "complete",
            });
        }
        self.current_step += 1;
        self.enter_current(now);
        Ok(())
    }

    /// When the current timed pause ends, if the rollout is in one.
    pub fn pause_deadline(&self) -> Option<Timestamp> {
        match (&self.phase, &self.pause) {
            (Phase::Paused, Some(PauseReason::Step { until })) => *until,
            _ => None,
        }
    }

    /// Ends a timed pause whose time has come; false (and no change) otherwise.
    pub fn finish_timed_pause(&mut self, now: Timestamp) -> bool {
        match self.pause_deadline() {
            Some(until) if now >= until => {
                self.current_step += 1;
                self.enter_current(now);
                true
            }
            _ => false,
        }
    }

    /// `rollout promote`: continue past the pause the rollout waits at (timed or not), or past
    /// a gate that could not decide, or end a shadow's comparison that passes so far.
    pub fn promote(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        self.require_running("promote")?;
        // A comparison that could not decide is not skipped like an undecided gate: the shadow
        // would be reported as having compared well. A `rollout pause` is answered below.
        if matches!(self.current(), Some(Step::Compare { .. }))
            && self.pause != Some(PauseReason::User)
        {
            self.require_comparison_passed()?;
            self.current_step += 1;
            self.enter_current(now);
            self.message = "promoted: the comparison passed so far; the shadow is removed".into();
            return Ok(());
        }
        match (&self.phase, &self.pause) {
            (Phase::Paused, Some(PauseReason::Step { .. })) => {
                self.current_step += 1;
                self.enter_current(now);
                Ok(())
            }
            (Phase::Paused, Some(PauseReason::GateInconclusive { .. })) => {
                let gate = self
                    .current()
                    .map(|s| self.plan.describe_step(s))
                    .unwrap_or_default();
                self.current_step += 1;
                self.enter_current(now);
                if self.phase == Phase::Progressing {
                    self.message = format!("promoted past an inconclusive gate ({gate})");
                }
                Ok(())
            }
            (Phase::Paused, Some(PauseReason::User)) => Err(TransitionError::PausedByUser {
                statefulset: self.name(),
            }),
            _ => Err(TransitionError::NotAtPause {
                statefulset: self.name(),
                step: self.current_step + 1,
                total: self.plan.steps.len(),
                description: self
                    .current()
                    .map(|s| self.plan.describe_step(s))
                    .unwrap_or_default(),
            }),
        }
    }

    /// Refuses, saying what the comparison lacks, unless a shadow's comparison has passed.
    fn require_comparison_passed(&self) -> Result<(), TransitionError> {
        let compare_at = self
            .plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::Compare { .. }));
        let why = match (self.measured.comparison_passed, &self.pause) {
            (Some(true), _) => return Ok(()),
            (Some(false), _) => "its comparison with stable fails so far".to_string(),
            (None, _) if compare_at.is_some_and(|c| self.current_step < c) => {
                "its comparison has not started yet".to_string()
            }
            (None, Some(PauseReason::GateInconclusive { message })) => format!(
                "its comparison could not decide ({message}); `rollout resume {}` runs it again",
                self.plan.statefulset
            ),
            (None, _) => "its comparison has too few answers to judge yet".to_string(),
        };
        Err(TransitionError::ComparisonNotPassing {
            statefulset: self.name(),
            why,
        })
    }

    /// `rollout promote --full`: replace the remaining steps with one partition step to 0 and
    /// a gate on every pod not gated yet; pauses and intermediate steps are skipped.
    pub fn promote_full(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        self.require_running("promote")?;
        let replicas = self.plan.replicas;
        let done = self.current_step.min(self.plan.steps.len());
        let freeze_pending = !self.plan.steps[..done]
            .iter()
            .any(|s| matches!(s, Step::SetTemplateAndFreeze { .. }))
            && matches!(
                self.plan.steps.first(),
                Some(Step::SetTemplateAndFreeze { .. })
            );
        let released = self.plan.updated_after(done).unwrap_or(0);
        let remaining = ordinals_released(
            replicas,
            self.plan.ordinal_start,
            replicas - released.min(replicas),
            0,
        );
        let mut to_gate = self.plan.ungated_before(done);
        to_gate.extend(
            remaining
                .iter()
                .filter(|o| !to_gate.contains(o))
                .collect::<Vec<_>>(),
        );
        to_gate.sort_unstable_by(|a, b| b.cmp(a));
        let gated = self.config.gates.any();
        // Through an HTTPRoute: the route sends everything to the canary while the last pods
        // move, then gets its own rules back, and the per-revision Services go (as the plan's
        // own end does).
        let route_written = self.plan.steps[..done]
            .iter()
            .any(|s| matches!(s, Step::SetRouteWeights { .. }));
        let services_made = self.plan.steps[..(done + 1).min(self.plan.steps.len())]
            .iter()
            .any(|s| matches!(s, Step::CreateRevisionServices));

        let mut tail = Vec::new();
        if freeze_pending {
            tail.push(Step::SetTemplateAndFreeze {
                partition: replicas,
            });
        }
        if route_written {
            tail.push(Step::SetRouteWeights {
                canary_percent: crate::model::weight::Percent::HUNDRED,
                pods: released,
            });
        }
        if !remaining.is_empty() {
            tail.push(Step::SetPartition {
                partition: 0,
                ordinals: remaining,
                updated: replicas,
                weight: None,
            });
        }
        if gated && !to_gate.is_empty() {
            tail.push(Step::gate(to_gate));
        }
        if route_written {
            tail.push(Step::RestoreRoute);
        }
        if services_made {
            tail.push(Step::RemoveRevisionServices);
        }
        self.plan.steps.truncate(done);
        self.plan.steps.extend(tail);
        self.enter_current(now);
        if self.phase == Phase::Progressing {
            self.message = "promoted to the end: the remaining pods move in one step".to_string();
        }
        Ok(())
    }

    /// `rollout promote --then ...` on a shadow: after the shadow is removed, `then` (the steps
    /// of a partition rollout of the real set) run. Only while the shadow still compares (or
    /// before); the comparison must pass as for a plain promote.
    pub fn promote_then(
        &mut self,
        then: Vec<Step>,
        strategy: StrategyKind,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        self.require_running("promote")?;
        let remove = self
            .plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::RemoveTwin { .. }));
        let at_or_before_compare = self
            .plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::Compare { .. }))
            .is_some_and(|c| self.current_step <= c);
        let Some(remove) =
            remove.filter(|_| self.plan.strategy == StrategyKind::Shadow && at_or_before_compare)
        else {
            return Err(TransitionError::ThenNotApplicable {
                statefulset: self.name(),
                strategy: self.plan.strategy.as_str(),
                step: self.current_step + 1,
            });
        };
        // Checked here and not only by `promote`: before the comparison step, or paused at it,
        // `promote` would move on without a comparison that passed.
        self.require_comparison_passed()?;
        let mut trial = self.clone();
        trial.promote(now)?;
        *self = trial;
        self.plan.steps.truncate(remove + 1);
        self.plan.steps.extend(then);
        self.plan.notes.push(format!(
            "promoted: after the shadow is removed, a {strategy} rollout updates {}",
            self.plan.statefulset
        ));
        self.message = format!(
            "promoted: the shadow is removed, then a {strategy} rollout updates {}",
            self.plan.statefulset
        );
        Ok(())
    }

    /// `rollout undo` of a finished blue/green rollout: blue back up, the live Services back on
    /// it, green to 0 (green keeps its volumes: it served).
    pub fn undo_bluegreen(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        let name = self.name();
        if self.plan.strategy != StrategyKind::BlueGreen || self.twin.is_none() {
            return Err(TransitionError::CannotUndo {
                statefulset: name,
                why: "it is not a blue/green rollout".into(),
            });
        }
        if self.phase != Phase::Succeeded {
            return Err(TransitionError::CannotUndo {
                why: format!(
                    "it is {}, not Succeeded; `rollout abort {name}` returns to blue while it runs",
                    self.phase
                ),
                statefulset: name,
            });
        }
        self.start_rollback(RollbackCause::Aborted);
        self.touch(now, "undo: returning to the previous set");
        Ok(())
    }

    /// `rollout pause`.
    pub fn pause_by_user(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        self.require_running("pause")?;
        // A timed pause would end by itself and the rollout go on: `pause` turns it into a pause
        // that only `resume` ends (which then runs the timed pause again). Any other pause
        // (a hold, an undecided gate, an earlier `pause`) already waits for a person.
        let timed = matches!(self.pause, Some(PauseReason::Step { until: Some(_) }));
        if self.phase == Phase::Paused && !timed {
            return Ok(());
        }
        self.phase = Phase::Paused;
        self.pause = Some(PauseReason::User);
        self.touch(
            now,
            format!(
                "paused by `rollout pause`; continue with `rollout resume {}`",
                self.plan.statefulset
            ),
        );
        Ok(())
    }

    /// `rollout resume`: continue after `rollout pause`, or re-run a gate that could not decide.
    pub fn resume_by_user(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        if self.phase != Phase::RollingBack {
            self.require_running("resume")?;
        }
        match (&self.phase, &self.pause) {
            (Phase::Paused, Some(PauseReason::User | PauseReason::GateInconclusive { .. })) => {
                self.phase = Phase::Progressing;
                self.pause = None;
                self.touch(now, "resumed");
                Ok(())
            }
            (Phase::Paused, Some(PauseReason::Step { .. })) => Err(TransitionError::AtPauseStep {
                statefulset: self.name(),
            }),
            // A Progressing record with no live run behind it is resumed as it is, and so is a
            // rollback whose run died half-way: resuming it finishes going back.
            (Phase::Progressing | Phase::RollingBack, _) => Ok(()),
            (phase, _) => Err(TransitionError::NotPaused {
                statefulset: self.name(),
                phase: *phase,
            }),
        }
    }

    /// `rollout abort`: back to stable now. Also allowed on a failed rollout held by
    /// `--no-rollback`.
    pub fn abort(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        match self.phase {
            Phase::Failed => {}
            // Already going back (a run that died mid-rollback leaves this): abort finishes it
            // and keeps what caused it.
            Phase::RollingBack => return Ok(()),
            _ => self.require_running("abort")?,
        }
        self.start_rollback(RollbackCause::Aborted);
        self.touch(now, "aborted: returning to the stable revision");
        Ok(())
    }

    /// `rollout release`: after someone else's deploy stopped the rollout, give back what the
    /// rollout holds and leave the pod template to the other deploy (`plan_release`). A release
    /// a killed run left half-way is continued as it is.
    pub fn release(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        if self.phase == Phase::RollingBack && self.rollback_cause == Some(RollbackCause::Released)
        {
            return Ok(());
        }
        let steps = plan_release(self)?;
        self.phase = Phase::RollingBack;
        self.pause = None;
        self.step_started_at = None;
        self.rollback_cause = Some(RollbackCause::Released);
        self.rollback = Some(Rollback::new(steps));
        let by = self.other_deploy();
        self.touch(
            now,
            format!("release: {by} keeps the set; giving back what the rollout held"),
        );
        Ok(())
    }

    /// The other deploy, as the drift names it.
    fn other_deploy(&self) -> String {
        match self.drift.as_ref().and_then(|d| d.by.as_ref()) {
            Some(by) => format!("the other deploy (field manager {})", by.manager),
            None => "the other deploy".to_string(),
        }
    }

    /// What a finished release left, in words (the record's message, for `status`).
    fn released_message(&self) -> String {
        let name = &self.plan.statefulset;
        let by = self.other_deploy();
        let template = if self.drift.as_ref().is_some_and(|d| d.changes_template()) {
            format!("the pod template of {name} is now {by}'s")
        } else {
            format!("the pod template of {name} stays as it is ({by} changed no template)")
        };
        let given: Vec<String> = self
            .rollback
            .as_ref()
            .map(|r| r.steps.iter().map(|s| self.plan.describe_step(s)).collect())
            .unwrap_or_default();
        let given = if given.is_empty() {
            "rollout held nothing to give back".to_string()
        } else {
            format!("rollout gave back what it held: {}", given.join("; "))
        };
        format!("released: {template}; {given}")
    }

    /// A gate failed or a deadline passed: roll back, or hold when the config says so.
    pub fn fail(
        &mut self,
        cause: RollbackCause,
        message: impl Into<String>,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        self.require_running("fail")?;
        match self.config.on_failure {
            OnFailure::Rollback => self.start_rollback(cause),
            OnFailure::Hold => {
                self.rollback_cause = Some(cause);
                self.pause = None;
                self.phase = Phase::Failed;
            }
        }
        self.touch(now, message);
        Ok(())
    }

    /// Going back: the rollback planned from what this rollout did, from its first step.
    /// Someone else changed the set (`drift`): the rollout stops where it is, as failed
    /// (someone has to look), saying what changed; nothing is rolled back. `abort` still
    /// returns to stable.
    pub fn drifted(&mut self, drift: crate::model::drift::Drift, message: String, now: Timestamp) {
        self.phase = Phase::Failed;
        self.pause = None;
        self.drift = Some(drift);
        self.touch(now, message);
    }

    fn start_rollback(&mut self, cause: RollbackCause) {
        self.phase = Phase::RollingBack;
        self.pause = None;
        self.rollback_cause = Some(cause);
        self.rollback = Some(Rollback::new(plan_rollback(self)));
    }

    /// The rollback of a record that is rolling back, planned now if a run of an earlier
    /// `rollout` (which kept no rollback steps) began it.
    pub fn rollback_steps(&mut self) -> &mut Rollback {
        if self.rollback.is_none() {
            self.rollback = Some(Rollback::new(plan_rollback(self)));
        }
        self.rollback.get_or_insert_with(Rollback::default)
    }

    /// The executor is about to run the current rollback step.
    pub fn begin_rollback_step(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        self.require_rolling_back("run a rollback step")?;
        let rollback = self.rollback_steps();
        if rollback.step_started_at.is_none() {
            rollback.step_started_at = Some(now);
        }
        self.updated_at = now;
        Ok(())
    }

    /// The current rollback step is done; the next one (if any) is current.
    pub fn complete_rollback_step(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        self.require_rolling_back("complete a rollback step")?;
        let rollback = self.rollback_steps();
        rollback.current_step += 1;
        rollback.step_started_at = None;
        self.updated_at = now;
        Ok(())
    }

    fn require_rolling_back(&self, action: &'static str) -> Result<(), TransitionError> {
        if self.phase == Phase::RollingBack {
            return Ok(());
        }
        Err(TransitionError::NotActive {
            statefulset: self.name(),
            phase: self.phase,
            action,
        })
    }

    /// The rollback finished: the StatefulSet runs the stable revision again.
    pub fn rollback_done(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        if self.phase != Phase::RollingBack {
            return Err(TransitionError::NotActive {
                statefulset: self.name(),
                phase: self.phase,
                action: "finish rolling back",
            });
        }
        if self.rollback_cause == Some(RollbackCause::Released) {
            self.phase = Phase::Released;
            self.step_started_at = None;
            let message = self.released_message();
            self.touch(now, message);
            return Ok(());
        }
        self.phase = if self.rollback_cause == Some(RollbackCause::Aborted) {
            Phase::Aborted
        } else {
            Phase::RolledBack
        };
        self.step_started_at = None;
        let why = std::mem::take(&mut self.message);
        self.touch(now, format!("back on the stable revision ({why})"));
        Ok(())
    }

    /// The rollback itself could not finish.
    pub fn rollback_failed(
        &mut self,
        message: impl Into<String>,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        if self.phase != Phase::RollingBack {
            return Err(TransitionError::NotActive {
                statefulset: self.name(),
                phase: self.phase,
                action: "fail rolling back",
            });
        }
        self.phase = Phase::Failed;
        self.touch(now, message);
        Ok(())
    }

    /// Brings the record in line with the cluster before a run continues it:
    /// - a freeze write that landed before the last run died is counted as done;
    /// - when the StatefulSet was scaled since the plan was made, the rest is planned again
    ///   from the partition, with a gate first for released pods that were never gated.
    ///
    /// Afterwards [`RolloutState::remaining`] gives the steps to run.
    pub fn reconcile(&mut self, observed: &Observed, now: Timestamp) -> Result<(), PlanError> {
        if !matches!(self.phase, Phase::Progressing | Phase::Paused) {
            return Ok(());
        }
        // Only a partition plan is re-planned when the set was scaled; the other strategies
        // scale sets themselves.
        if observed.replicas == self.plan.replicas || !self.plan.strategy.uses_partition() {
            if observed.target_applied
                && matches!(self.current(), Some(Step::SetTemplateAndFreeze { .. }))
            {
                self.current_step += 1;
                if self.phase == Phase::Progressing {
                    self.enter_current(now);
                }
            }
            return Ok(());
        }

        let done = self.current_step.min(self.plan.steps.len());
        let gated: BTreeSet<u32> = self.plan.steps[..done]
            .iter()
            .filter_map(|s| match s {
                Step::Gate {
                    ordinals,
                    set: None,
                } => Some(ordinals.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut fresh = plan_partition(&self.config, observed)?;
        let released = observed.released();
        let ungated: Vec<u32> = ordinals_released(
            observed.replicas,
            observed.ordinal_start,
            observed.replicas,
            observed.replicas - released,
        )
        .into_iter()
        .filter(|o| !gated.contains(o))
        .collect();
        if self.config.gates.any() && !ungated.is_empty() {
            fresh.steps.insert(0, Step::gate(ungated));
        }
        let note = format!(
            "{} was scaled from {} to {} replicas during the rollout; the remaining steps were planned again",
            observed.name, self.plan.replicas, observed.replicas
        );
        fresh.notes.insert(0, note.clone());
        self.plan = fresh;
        self.current_step = 0;
        if !matches!(self.pause, Some(PauseReason::User)) {
            self.enter_current(now);
        }
        self.message = note;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::duration::HumanDuration;
    use crate::model::gate::GateSpec;
    use crate::model::plan::PodManagementPolicy;
    use crate::model::state::{Revision, Stable};
    use crate::model::strategy::{StrategyConfig, StrategyFlags, StrategyKind, Timeouts};

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn observed(replicas: u32) -> Observed {
        Observed {
            name: "web".into(),
            replicas,
            update_strategy: "RollingUpdate".into(),
            pod_management_policy: PodManagementPolicy::OrderedReady,
            ..Observed::default()
        }
    }

    fn state(
        kind: StrategyKind,
        steps: Option<&str>,
        weight: Option<u32>,
        pause: Option<&str>,
        replicas: u32,
    ) -> RolloutState {
        let flags = StrategyFlags {
            batch: None,
            steps: steps.map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))),
            weight: weight.and_then(|w| crate::model::weight::Percent::new(w).ok()),
            pause: pause.map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}"))),
            ..StrategyFlags::default()
        };
        let config = StrategyConfig::new(
            kind,
            &flags,
            GateSpec::default(),
            Timeouts::default(),
            OnFailure::Rollback,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let plan = plan_partition(&config, &observed(replicas)).unwrap_or_else(|e| panic!("{e}"));
        RolloutState::new(
            "r".into(),
            config,
            plan,
            Stable::default(),
            Revision::default(),
            "me".into(),
            ts(0),
        )
    }

    /// Runs steps until the rollout stops progressing, as an executor whose gates pass would.
    fn run(s: &mut RolloutState, t: &mut i64) {
        while s.phase == Phase::Progressing {
            *t += 1;
            s.begin_step(ts(*t)).unwrap_or_else(|e| panic!("{e}"));
            s.complete_step(ts(*t)).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn names(s: &RolloutState) -> String {
        s.remaining()
            .iter()
            .map(Step::name)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_new_step_or_message_clears_why_a_gate_could_not_decide() {
        let mut r = state(StrategyKind::Rolling, None, None, None, 3);
        r.undecided = Some("no answer".into());
        r.complete_step(ts(100)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.undecided, None);
        r.undecided = Some("no answer".into());
        r.abort(ts(200)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.undecided, None);
    }

    #[test]
    fn canary_hold_waits_for_promote_then_finishes() {
        let mut s = state(StrategyKind::Canary, None, Some(20), None, 5);
        let mut t = 0;
        run(&mut s, &mut t);
        assert_eq!(s.phase, Phase::Paused);
        assert_eq!(s.pause, Some(PauseReason::Step { until: None }));
        assert_eq!(s.plan.updated_after(s.current_step), Some(1));
        assert!(s.message.contains("rollout promote web"), "{}", s.message);
        assert_eq!(s.pause_deadline(), None);
        s.promote(ts(100)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.phase, Phase::Progressing);
        assert_eq!(names(&s), "partition gate");
        run(&mut s, &mut t);
        assert_eq!(s.phase, Phase::Succeeded);
        assert!(s.remaining().is_empty());
    }

    #[test]
    fn timed_pauses_end_by_themselves_or_by_promote() {
        let mut s = state(
            StrategyKind::Canary,
            Some("20,50,100"),
            None,
            Some("2m"),
            10,
        );
        let mut t = 0;
        run(&mut s, &mut t);
        let until = s.pause_deadline().unwrap_or(Timestamp::MAX);
        assert_eq!(until, ts(t + 120));
        assert!(!s.finish_timed_pause(ts(t + 119)), "too early");
        assert_eq!(s.phase, Phase::Paused);
        assert!(s.finish_timed_pause(ts(t + 120)));
        assert_eq!(s.phase, Phase::Progressing);
        run(&mut s, &mut t);
        assert_eq!(s.phase, Phase::Paused);
        s.promote(ts(t)).unwrap_or_else(|e| panic!("{e}"));
        run(&mut s, &mut t);
        assert_eq!(s.phase, Phase::Succeeded);
    }

    #[test]
    fn promote_full_jumps_to_the_end_with_one_gate() {
        let mut s = state(StrategyKind::Canary, Some("20,50,100"), None, Some(""), 10);
        let mut t = 0;
        run(&mut s, &mut t);
        assert_eq!(s.plan.updated_after(s.current_step), Some(2));
        s.promote_full(ts(50)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.phase, Phase::Progressing);
        assert_eq!(
            s.remaining(),
            &[
                Step::SetPartition {
                    partition: 0,
                    ordinals: vec![7, 6, 5, 4, 3, 2, 1, 0],
                    updated: 10,
                    weight: None
                },
                Step::gate(vec![7, 6, 5, 4, 3, 2, 1, 0]),
            ]
        );
        run(&mut s, &mut t);
        assert_eq!(s.phase, Phase::Succeeded);
    }

    #[test]
    fn promote_full_through_a_route_ends_as_the_route_plan_does() {
        let flags = StrategyFlags {
            steps: "5,25,50".parse().ok(),
            pause: "promote".parse().ok(),
            traffic: Some(Box::new(crate::model::route::RouteTraffic {
                route: "web".into(),
                namespace: None,
                canary_header: None,
                mirror_percent: None,
            })),
            ..StrategyFlags::default()
        };
        let config = StrategyConfig::new(
            StrategyKind::Canary,
            &flags,
            GateSpec::default(),
            Timeouts::default(),
            OnFailure::Rollback,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let plan = plan_partition(&config, &observed(3)).unwrap_or_else(|e| panic!("{e}"));
        let fresh = RolloutState::new(
            "r".into(),
            config,
            plan,
            Stable::default(),
            Revision::default(),
            "me".into(),
            ts(0),
        );
        // Held at 5 %: everything to the canary, the last pods, the route's own rules back.
        let mut s = fresh.clone();
        let mut t = 0;
        run(&mut s, &mut t);
        s.promote_full(ts(50)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            names(&s),
            "route-weights partition gate restore-route remove-revision-services"
        );
        assert_eq!(
            s.remaining()[0],
            Step::SetRouteWeights {
                canary_percent: crate::model::weight::Percent::HUNDRED,
                pods: 1
            }
        );
        // Before the Services were made, nothing of the route is left to undo.
        let mut s = fresh;
        s.promote_full(ts(1)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&s), "freeze partition gate");
    }

    #[test]
    fn promote_full_mid_step_and_before_freeze() {
        // Before anything ran: keep the freeze, then everything.
        let mut s = state(StrategyKind::Canary, None, Some(20), None, 3);
        s.promote_full(ts(1)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&s), "freeze partition gate");
        assert_eq!(
            s.remaining()[1],
            Step::SetPartition {
                partition: 0,
                ordinals: vec![2, 1, 0],
                updated: 3,
                weight: None
            }
        );

        // While a gate runs on web-2: the final gate covers web-2 too.
        let mut s = state(StrategyKind::Canary, None, Some(20), None, 3);
        s.current_step = 2;
        assert_eq!(s.current().map(Step::name), Some("gate"));
        s.promote_full(ts(1)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.remaining(),
            &[
                Step::SetPartition {
                    partition: 0,
                    ordinals: vec![1, 0],
                    updated: 3,
                    weight: None
                },
                Step::gate(vec![2, 1, 0]),
            ]
        );
    }

    #[test]
    fn commands_refused_where_they_make_no_sense() {
        let mut s = state(StrategyKind::Rolling, None, None, None, 3);
        let err = s.promote(ts(1)).expect_err("not at a pause");
        assert!(err.to_string().contains("step 1 of 7"), "{err}");
        s.pause_by_user(ts(2)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            s.promote(ts(3)),
            Err(TransitionError::PausedByUser { .. })
        ));
        s.resume_by_user(ts(4)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.phase, Phase::Progressing);
        assert!(matches!(s.resume_by_user(ts(4)), Ok(())));

        let mut canary = state(StrategyKind::Canary, None, Some(20), None, 3);
        let mut t = 0;
        run(&mut canary, &mut t);
        assert!(matches!(
            canary.resume_by_user(ts(9)),
            Err(TransitionError::AtPauseStep { .. })
        ));

        let mut done = state(StrategyKind::Rolling, None, None, None, 1);
        run(&mut done, &mut t);
        assert_eq!(done.phase, Phase::Succeeded);
        for (action, result) in [
            ("promote", done.clone().promote(ts(1))),
            ("promote --full", done.clone().promote_full(ts(1))),
            ("pause", done.clone().pause_by_user(ts(1))),
        ] {
            assert!(
                matches!(result, Err(TransitionError::NotActive { .. })),
                "{action}: {result:?}"
            );
        }
        assert!(matches!(
            done.clone().abort(ts(1)),
            Err(TransitionError::AlreadySucceeded { .. })
        ));
    }

    #[test]
    fn failure_rolls_back_or_holds() {
        let mut s = state(StrategyKind::Rolling, None, None, None, 3);
        s.fail(RollbackCause::GateFailed, "web-2 answered 500", ts(5))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.phase, Phase::RollingBack);
        assert!(matches!(
            s.promote(ts(6)),
            Err(TransitionError::RollingBack { .. })
        ));
        // A run that died here leaves RollingBack: resume and abort both carry the rollback
        // on, keeping its cause and message; pause and a second failure do not apply.
        let mut resumed = s.clone();
        resumed
            .resume_by_user(ts(6))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resumed, s);
        let mut aborted = s.clone();
        aborted.abort(ts(6)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(aborted, s);
        assert_eq!(aborted.rollback_cause, Some(RollbackCause::GateFailed));
        assert!(matches!(
            s.clone().pause_by_user(ts(6)),
            Err(TransitionError::RollingBack { .. })
        ));
        assert!(s
            .clone()
            .fail(RollbackCause::TimedOut, "again", ts(6))
            .is_err());
        s.rollback_done(ts(7)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.phase, Phase::RolledBack);
        assert!(s.message.contains("web-2 answered 500"), "{}", s.message);

        let mut held = state(StrategyKind::Rolling, None, None, None, 3);
        held.config.on_failure = OnFailure::Hold;
        held.fail(RollbackCause::TimedOut, "step 2 passed 10m", ts(5))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(held.phase, Phase::Failed);
        held.abort(ts(6)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(held.phase, Phase::RollingBack);
        held.rollback_done(ts(7)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(held.phase, Phase::Aborted);

        let mut broken = state(StrategyKind::Rolling, None, None, None, 3);
        broken.abort(ts(1)).unwrap_or_else(|e| panic!("{e}"));
        broken
            .rollback_failed("patch refused", ts(2))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(broken.phase, Phase::Failed);
        assert!(broken.rollback_done(ts(3)).is_err());
    }

    #[test]
    fn a_record_paused_at_an_undecided_gate_can_be_resumed_or_promoted() {
        // Rollouts no longer pause at an undecided gate (they try again until the step's
        // deadline), but a record written by an older rollout may still be paused there.
        let mut s = state(StrategyKind::Rolling, None, None, None, 3);
        s.current_step = 2;
        s.phase = Phase::Paused;
        s.pause = Some(PauseReason::GateInconclusive {
            message: "no answers from web-2".into(),
        });
        let mut resumed = s.clone();
        resumed
            .resume_by_user(ts(2))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (resumed.phase, resumed.current_step),
            (Phase::Progressing, 2),
            "resume re-runs the gate"
        );
        s.promote(ts(2)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.phase, s.current_step),
            (Phase::Progressing, 3),
            "promote skips it"
        );
        assert!(s.message.contains("inconclusive"), "{}", s.message);
    }

    #[test]
    fn step_deadline_is_kept_across_begin_calls() {
        let mut s = state(StrategyKind::Rolling, None, None, None, 3);
        s.begin_step(ts(10)).unwrap_or_else(|e| panic!("{e}"));
        s.begin_step(ts(20)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.step_started_at, Some(ts(10)));
        s.complete_step(ts(30)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.step_started_at, None);
    }

    #[test]
    fn resume_skips_a_freeze_that_landed() {
        let mut s = state(StrategyKind::Rolling, None, None, None, 3);
        s.begin_step(ts(1)).unwrap_or_else(|e| panic!("{e}"));
        let cluster = Observed {
            target_applied: true,
            partition: Some(3),
            ..observed(3)
        };
        s.reconcile(&cluster, ts(2))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.current_step, 1);
        assert_eq!(names(&s), "partition gate partition gate partition gate");

        let mut not_landed = state(StrategyKind::Rolling, None, None, None, 3);
        not_landed
            .reconcile(&observed(3), ts(2))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(not_landed.current_step, 0);
    }

    #[test]
    fn resume_mid_rollout_continues_where_it_stopped() {
        let mut s = state(StrategyKind::Rolling, None, None, None, 4);
        s.current_step = 3; // freeze, partition 3, gate done; next: partition 2
        let cluster = Observed {
            target_applied: true,
            partition: Some(3),
            ..observed(4)
        };
        s.reconcile(&cluster, ts(2))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.current_step, 3);
        assert_eq!(
            s.remaining()[0],
            Step::SetPartition {
                partition: 2,
                ordinals: vec![2],
                updated: 2,
                weight: None
            }
        );
    }

    #[test]
    fn resume_after_scaling_replans_and_gates_ungated_pods() {
        // Ramped 1,2,4 on 4 pods; the run died after lowering the partition to 2 (web-3 gated,
        // web-2 released but not gated); meanwhile the set was scaled to 6, and the controller
        // created web-4 and web-5 on the new revision since they are above the partition.
        let mut s = state(StrategyKind::Ramped, Some("1,2,4"), None, None, 4);
        s.current_step = 4; // freeze, P3, G[3], P2 done; the gate on web-2 was running
        let cluster = Observed {
            target_applied: true,
            partition: Some(2),
            ..observed(6)
        };
        s.reconcile(&cluster, ts(9))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.current_step, 0);
        assert_eq!(s.plan.replicas, 6);
        assert_eq!(
            s.remaining(),
            &[
                Step::gate(vec![5, 4, 2]),
                Step::SetPartition {
                    partition: 0,
                    ordinals: vec![1, 0],
                    updated: 6,
                    weight: None
                },
                Step::gate(vec![1, 0]),
            ]
        );
        assert!(s.message.contains("scaled from 4 to 6"), "{}", s.message);
        assert!(s.plan.notes[0].contains("planned again"));
    }

    #[test]
    fn resume_after_scaling_down_forgets_removed_pods() {
        // Rolling on 5 pods, partition lowered to 3 (web-4, web-3 gated); scaled down to 3 pods:
        // web-4 and web-3 are gone, nothing released remains, the rest is planned on 3 pods.
        let mut s = state(StrategyKind::Rolling, None, None, None, 5);
        s.current_step = 5;
        let cluster = Observed {
            target_applied: true,
            partition: Some(3),
            ..observed(3)
        };
        s.reconcile(&cluster, ts(9))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.remaining(),
            &[
                Step::SetPartition {
                    partition: 2,
                    ordinals: vec![2],
                    updated: 1,
                    weight: None
                },
                Step::gate(vec![2]),
                Step::SetPartition {
                    partition: 1,
                    ordinals: vec![1],
                    updated: 2,
                    weight: None
                },
                Step::gate(vec![1]),
                Step::SetPartition {
                    partition: 0,
                    ordinals: vec![0],
                    updated: 3,
                    weight: None
                },
                Step::gate(vec![0]),
            ]
        );
    }

    #[test]
    fn resume_keeps_a_user_pause_after_replanning() {
        let mut s = state(StrategyKind::Rolling, None, None, None, 2);
        s.current_step = 1;
        s.pause_by_user(ts(1)).unwrap_or_else(|e| panic!("{e}"));
        let cluster = Observed {
            target_applied: true,
            partition: Some(2),
            ..observed(4)
        };
        s.reconcile(&cluster, ts(2))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (s.phase, s.pause.clone()),
            (Phase::Paused, Some(PauseReason::User))
        );
        // Pods 2 and 3 were created above the partition, so on the new revision: gated first.
        assert_eq!(s.remaining()[0], Step::gate(vec![3, 2]));
        assert_eq!(s.remaining().len(), 5);
    }

    #[test]
    fn resume_after_scaling_before_freeze_plans_afresh() {
        let mut s = state(StrategyKind::Rolling, None, None, Some(""), 2);
        s.reconcile(&observed(3), ts(1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            names(&s),
            "freeze partition gate pause partition gate pause partition gate"
        );
    }

    #[test]
    fn finished_records_are_left_alone() {
        let mut s = state(StrategyKind::Rolling, None, None, None, 2);
        s.phase = Phase::RolledBack;
        let before = s.clone();
        s.reconcile(&observed(5), ts(1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s, before);
        let _ = HumanDuration::from_secs(1);
    }

    fn shadow_record() -> RolloutState {
        let mut s = crate::model::state::tests::sample_state();
        s.plan.strategy = StrategyKind::Shadow;
        s.plan.steps = vec![
            Step::CreateTwin {
                set: "web-shadow".into(),
                replicas: 1,
            },
            Step::Compare {
                set: "web-shadow".into(),
            },
            Step::RemoveTwin {
                set: "web-shadow".into(),
            },
        ];
        s.current_step = 1;
        s
    }

    #[test]
    fn a_shadow_is_promoted_only_once_its_comparison_passed() {
        let now = crate::model::state::tests::ts(1_700_000_100);
        let undecided = Some(PauseReason::GateInconclusive {
            message: "the shadow comparison could not run: no Ready pods".into(),
        });
        // (step, phase, pause, comparison passed, refusal); step 0 creates the shadow, 1
        // compares.
        let cases = [
            (1, Phase::Progressing, None, None, Some("too few answers")),
            (
                1,
                Phase::Progressing,
                None,
                Some(false),
                Some("fails so far"),
            ),
            (
                0,
                Phase::Progressing,
                None,
                None,
                Some("has not started yet"),
            ),
            (
                1,
                Phase::Paused,
                undecided.clone(),
                None,
                Some("could not decide"),
            ),
            (
                1,
                Phase::Paused,
                undecided,
                Some(false),
                Some("fails so far"),
            ),
            (
                1,
                Phase::Paused,
                Some(PauseReason::User),
                None,
                Some("too few answers"),
            ),
            (
                1,
                Phase::Paused,
                Some(PauseReason::User),
                Some(true),
                Some("rollout resume"),
            ),
            (1, Phase::Progressing, None, Some(true), None),
        ];
        for (step, phase, pause, passed, refusal) in cases {
            let mut s = shadow_record();
            s.current_step = step;
            s.phase = phase;
            s.pause = pause.clone();
            s.measured.comparison_passed = passed;
            let then = vec![
                Step::SetTemplateAndFreeze { partition: 2 },
                Step::gate(vec![1, 0]),
            ];
            let case = format!("step {step}, {phase}, {pause:?}, passed {passed:?}");
            let before = s.clone();
            let result = s.promote_then(then, StrategyKind::Rolling, now);
            match refusal {
                Some(fragment) => {
                    let err = result.err().unwrap_or_else(|| panic!("{case}: promoted"));
                    assert!(err.to_string().contains(fragment), "{case}: {err}");
                    assert_eq!(s, before, "{case}: a refused promote changes nothing");
                    // A plain promote does not skip the comparison either.
                    let mut plain = before.clone();
                    assert!(plain.promote(now).is_err(), "{case}: plain promote");
                    assert_eq!(plain, before, "{case}: plain promote changed the record");
                }
                None => {
                    assert!(result.is_ok(), "{case}: {result:?}");
                    assert_eq!(
                        s.current(),
                        Some(&Step::RemoveTwin {
                            set: "web-shadow".into()
                        })
                    );
                    let names: Vec<&str> = s.plan.steps.iter().map(Step::name).collect();
                    assert_eq!(names, ["create", "compare", "remove", "freeze", "gate"]);
                }
            }
        }
        // Past the comparison, --then no longer applies.
        let mut s = shadow_record();
        s.current_step = 2;
        s.measured.comparison_passed = Some(true);
        let err = s
            .promote_then(vec![], StrategyKind::Rolling, now)
            .err()
            .unwrap_or_else(|| panic!("promoted past the comparison"));
        assert!(err.to_string().contains("still comparing"), "{err}");
    }

    #[test]
    fn release_runs_only_after_drift_continues_once_begun_and_ends_released() {
        use crate::model::drift::{Change, Drift};
        let mut s = crate::model::state::tests::sample_state();
        s.current_step = 2;
        s.phase = Phase::Paused;
        assert!(matches!(
            s.clone().release(ts(1)),
            Err(TransitionError::CannotRelease(
                ReleaseRefused::NoDrift { .. }
            ))
        ));
        s.drifted(
            Drift {
                changes: vec![Change::Partition {
                    set: "web".into(),
                    expected: 1,
                    found: 0,
                }],
                by: None,
            },
            "stopped".into(),
            ts(2),
        );
        s.release(ts(3)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.phase, Phase::RollingBack);
        assert_eq!(s.rollback_cause, Some(RollbackCause::Released));
        assert_eq!(
            s.rollback.as_ref().map(|r| r.steps.clone()),
            Some(vec![Step::ReleaseRevision])
        );
        s.begin_rollback_step(ts(4))
            .unwrap_or_else(|e| panic!("{e}"));
        // Run again (a killed release): continued where it is, not planned again.
        let before = s.clone();
        s.release(ts(5)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s, before);
        // `abort` of a half-done release finishes it too (abort keeps what caused a rollback).
        s.abort(ts(5)).unwrap_or_else(|e| panic!("{e}"));
        s.complete_rollback_step(ts(6))
            .unwrap_or_else(|e| panic!("{e}"));
        s.rollback_done(ts(7)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.phase, Phase::Released);
        assert!(!s.phase.is_active(), "a new rollout can start");
        assert!(
            s.message.starts_with("released: the pod template of web stays as it is (the other deploy changed no template); rollout gave back what it held: give web back"),
            "{}",
            s.message
        );
        // Over: nothing more to release.
        assert!(s.clone().release(ts(8)).is_err());
    }

    #[test]
    fn only_a_finished_blue_green_is_undone() {
        let now = crate::model::state::tests::ts(1_700_000_100);
        let mut s = crate::model::state::tests::sample_state();
        assert!(s.undo_bluegreen(now).is_err(), "not a blue/green");
        s.plan.strategy = StrategyKind::BlueGreen;
        s.twin = Some(crate::model::twin::Twin {
            role: crate::model::twin::TwinRole::Green,
            set: "web-bg1".into(),
            home: "web".into(),
            services: vec![],
            preview: None,
            data: crate::model::twin::DataMode::Fresh,
            keep_data: false,
            template: serde_json::json!({}),
        });
        let err = s.undo_bluegreen(now).expect_err("still running");
        assert!(err.to_string().contains("rollout abort web"), "{err}");
        s.phase = Phase::Succeeded;
        assert!(s.undo_bluegreen(now).is_ok());
        assert_eq!(s.phase, Phase::RollingBack);
        assert_eq!(s.rollback_cause, Some(RollbackCause::Aborted));
    }

    #[test]
    fn pause_turns_a_timed_pause_into_one_that_waits_for_resume() {
        let now = crate::model::state::tests::ts(1_700_000_100);
        let cases = [
            (
                Some(PauseReason::Step { until: Some(now) }),
                Some(PauseReason::User),
            ),
            (
                Some(PauseReason::Step { until: None }),
                Some(PauseReason::Step { until: None }),
            ),
            (
                Some(PauseReason::GateInconclusive {
                    message: "x".into(),
                }),
                Some(PauseReason::GateInconclusive {
                    message: "x".into(),
                }),
            ),
            (Some(PauseReason::User), Some(PauseReason::User)),
        ];
        for (before, after) in cases {
            let mut s = crate::model::state::tests::sample_state();
            s.phase = Phase::Paused;
            s.pause = before.clone();
            assert!(s.pause_by_user(now).is_ok());
            assert_eq!(s.pause, after, "{before:?}");
            assert_eq!(s.phase, Phase::Paused);
        }
    }
}
