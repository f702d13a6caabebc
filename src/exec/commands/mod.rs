//! One function per command. Each checks everything it can before the first write (bad input
//! changes nothing in the cluster), takes the lock when it changes the set, and hands the work to
//! the [`Runner`]. Results go to stdout (text or JSON); progress to stderr.

mod route;
mod show;
mod start;
mod steer;
mod undo;

pub use show::{show_history, status};
pub use start::{plan, prepare, run, Prepared};
pub use steer::{abort, pause, promote, release, resume};
pub use undo::undo;

use crate::cluster::Select;
use crate::exec::cluster::ClusterExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Service;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use crate::exec::cluster::{selector_string, ApiError, Cluster, View};
use crate::exec::gates::{check_gate_port, GateRunner};
use crate::exec::lease::{self, Identity, LeaseState};
use crate::exec::manifest::Manifest;
use crate::exec::patch::{RecordChange, StrategyChange, StsPatch, TemplateChange};
use crate::exec::progress::{format_elapsed, Out, Progress};
use crate::exec::report::{
    history, pick_undo_revision, render_history, render_status, render_status_line, status_report,
};
use crate::exec::runner::{RunOptions, RunOutcome, Runner, Tools};
use crate::exec::ExecError;
use crate::model::exit::ExitCode;
use crate::model::gate::LocalGates;
use crate::model::image::{
    apply_images, container_images, resolve_image_changes, ContainerImage, ImageChange,
};
use crate::model::state::{PauseReason, Phase, Revision, RolloutState};
use crate::model::strategy::{StrategyConfig, StrategyKind, StrategyParams};
use crate::model::twin::{Twin, HOME_ANNOTATION};
use crate::strategy::observed::{stable_from_statefulset, Observed};
use crate::strategy::predicates;
use crate::strategy::predicates::{
    is_ready, is_terminating, ordinals_not_ready, ordinals_released, pod_revision,
};
use crate::strategy::rollback::{rollback_by_step, RollbackAt};
use crate::strategy::twin::{
    rollout_preview_home, twin_statefulset, ObservedService, Surroundings,
};
use crate::strategy::TransitionError;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
    /// The rollout's marks, one JSON object per line.
    Jsonl,
}

/// What every command works with.
#[derive(Clone)]
pub struct Context<C: Cluster, G: GateRunner> {
    pub cluster: C,
    pub gates: G,
    pub progress: Progress,
    pub out: Out,
    pub output: Output,
    pub me: Identity,
    pub lease_duration: Duration,
    /// Where the rollout's story is told (Events, `--notify`).
    pub announce: crate::exec::announce::Announcer,
    /// Where a Markdown summary of a finished (or holding) rollout is appended.
    pub step_summary: Option<std::path::PathBuf>,
}

/// Where the new pod template comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateSource {
    Images(Vec<ImageChange>),
    Manifest(Box<Manifest>),
}

/// A rollout to start (or plan).
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    pub statefulset: String,
    pub config: StrategyConfig,
    pub source: TemplateSource,
    pub wait_at_holds: bool,
    /// Where metric gates send their queries (`--prometheus-url`, `ROLLOUT_PROMETHEUS_URL`).
    pub prometheus_url: Option<String>,
}

/// How long a command waits for the StatefulSet controller to catch up with the latest spec
/// before it plans on it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Run options for a run that continues a rollout: whether it waits at holds, and the command
/// and webhook gates its command line gives.
fn holding(wait_at_holds: bool, gates: LocalGates) -> RunOptions {
    RunOptions {
        wait_at_holds,
        gates,
        ..RunOptions::default()
    }
}

/// Refuses to continue `record` when it gates on a command or webhook that `gates` (this
/// command line's) does not give: such a gate never runs on the record's word. Nor do metric
/// gates without this command line's Prometheus URL: they would stay undecided until the
/// step's deadline (or let a bake pass unjudged).
/// `action`: the command that continues it from where it stands (`promote` at a hold).
fn require_local_gates(
    record: &RolloutState,
    gates: &LocalGates,
    action: &'static str,
) -> Result<(), ExecError> {
    let missing = crate::strategy::trust::gates_not_given(record, gates);
    if missing.is_empty() {
        return Ok(());
    }
    let name = &record.plan.statefulset;
    let flags = missing
        .iter()
        .map(|gate| gate.flag())
        .collect::<Vec<_>>()
        .join(" ");
    Err(ExecError::GatesNotGiven {
        statefulset: name.clone(),
        gates: missing
            .iter()
            .map(|gate| gate.what())
            .collect::<Vec<_>>()
            .join(" and "),
        them: if missing.len() > 1 { "them" } else { "it" },
        action,
        flags,
    })
}

impl<C: Cluster, G: GateRunner> Context<C, G> {
    /// What a runner works with, for a run holding the lease whose loss `lease_lost` signals.
    fn tools(&self, lease_lost: tokio::sync::watch::Receiver<Option<String>>) -> Tools<C, G> {
        Tools {
            cluster: self.cluster.clone(),
            gates: self.gates.clone(),
            progress: self.progress.clone(),
            lease_lost,
            announce: self.announce.clone(),
        }
    }

    async fn get_set(&self, name: &str) -> Result<StatefulSet, ExecError> {
        let found = self
            .cluster
            .get::<StatefulSet>(name)
            .await
            .map_err(|e| ExecError::api("reading StatefulSet", name, e))?;
        match found {
            Some(sts) => Ok(sts),
            None => Err(ExecError::StatefulSetNotFound {
                namespace: self.cluster.namespace().to_string(),
                name: name.to_string(),
                other: self.other_kind_named(name).await,
            }),
        }
    }

    /// When no StatefulSet has the name, a Deployment with it is the likely mistake: say so.
    /// Best effort: an account that may not read Deployments just gets the plain message.
    async fn other_kind_named(&self, name: &str) -> String {
        use k8s_openapi::api::apps::v1::Deployment;
        match self.cluster.get::<Deployment>(name).await {
            Ok(Some(_)) => format!(
                ", but a Deployment {name} is there: rollout rolls StatefulSets (for a Deployment, use `kubectl rollout` or change its template)"
            ),
            _ => String::new(),
        }
    }

    /// Prints `value` as JSON, literal env values of pod templates masked.
    fn print_json<T: serde::Serialize>(&self, value: &T) -> Result<(), ExecError> {
        let text = serde_json::to_string_pretty(&masked_json(value)?)
            .map_err(|e| ExecError::Output(e.to_string()))?;
        self.out.print(&format!("{text}\n"));
        Ok(())
    }

    /// `-o jsonl`: each of `items` as one line of JSON.
    fn print_json_lines<T: serde::Serialize>(&self, items: &[T]) -> Result<(), ExecError> {
        let mut text = String::new();
        for item in items {
            let line = serde_json::to_string(&masked_json(item)?)
                .map_err(|e| ExecError::Output(e.to_string()))?;
            text.push_str(&line);
            text.push('\n');
        }
        self.out.print(&text);
        Ok(())
    }

    /// Watches the set's lease until its holder, if any, is known alive or dead (see
    /// [`lease::observe`]; up to one lease duration when the holder runs elsewhere), telling the
    /// user when that takes a while.
    async fn observe_lease(&self, name: &str) -> Result<lease::Observation, ExecError> {
        let lease_name = lease::lease_name(name);
        let progress = self.progress.clone();
        let observed = lease::observe(
            &self.cluster,
            &lease_name,
            &self.me,
            None,
            |holder, wait| progress.say(watching_holder(&lease_name, holder, wait)),
        )
        .await?;
        Ok(observed)
    }

    /// The holder of the set's lease at a glance (one read, no waiting), unless it is known to
    /// be gone: for messages.
    async fn lease_holder_now(&self, name: &str) -> Result<Option<String>, ExecError> {
        let lease_name = lease::lease_name(name);
        let lease = lease::read_lease(&self.cluster, &lease_name).await?;
        let now = std::time::Instant::now();
        let (state, _) = lease::judge(
            lease.as_ref(),
            &self.me,
            None,
            now,
            lease::local_process_gone,
        );
        Ok(match state {
            LeaseState::Alive { holder } | LeaseState::Unknown { holder, .. } => Some(holder),
            LeaseState::Free | LeaseState::Ours | LeaseState::Dead { .. } => None,
        })
    }

    /// Takes the set's lock (see [`lease::acquire`]), saying so when that means watching a
    /// holder first or taking over from a dead one.
    async fn take_lease(
        &self,
        sts: &StatefulSet,
        seen: Option<lease::Sighting>,
    ) -> Result<lease::LeaseGuard<C>, ExecError> {
        let lease_name = lease::lease_name(sts.metadata.name.as_deref().unwrap_or_default());
        let progress = self.progress.clone();
        let guard = lease::acquire(
            &self.cluster,
            sts,
            &self.me,
            self.lease_duration,
            seen,
            |holder, wait| progress.say(watching_holder(&lease_name, holder, wait)),
        )
        .await?;
        if let Some(note) = guard.takeover_note() {
            self.progress.say(note);
        }
        Ok(guard)
    }
}

/// The line shown while a command watches a lease to tell whether its holder is alive.
fn watching_holder(lease: &str, holder: &str, wait: Duration) -> String {
    format!(
        "Lease {lease} is held by {holder}; watching it for up to {} to tell whether that run is alive (a live run renews it every third of that)",
        format_elapsed(wait)
    )
}

/// `value` as JSON with every literal env value of a pod template masked: output never shows
/// a secret the template holds (the record on the set keeps it, to write it back).
fn masked_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ExecError> {
    let mut json = serde_json::to_value(value).map_err(|e| ExecError::Output(e.to_string()))?;
    crate::strategy::trust::mask_env_values(&mut json);
    Ok(json)
}

/// The record on `sts`, parsed and checked against it (never used when it does not hold
/// together).
fn record_of(sts: &StatefulSet) -> Result<Option<RolloutState>, ExecError> {
    let name = sts.metadata.name.clone().unwrap_or_default();
    Ok(crate::strategy::trust::read_record(
        &name,
        sts.metadata.annotations.as_ref(),
    )?)
}

fn selector_of(sts: &StatefulSet) -> String {
    sts.spec
        .as_ref()
        .map(|s| selector_string(&s.selector))
        .unwrap_or_default()
}

/// Follows finished blue/green rollouts from `name` to the set that serves now: the record of
/// a blue/green that succeeded names its green set, which serves until a later rollout.
async fn resolve_serving<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
) -> Result<String, ExecError> {
    Ok(serving_chain(ctx, name).await?.0)
}

/// [`resolve_serving`], also giving the set and record text of the last blue/green followed
/// (the one that put the serving set in service).
async fn serving_chain<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
) -> Result<(String, Option<(String, String)>), ExecError> {
    let mut current = name.to_string();
    let mut via = None;
    // Bounded: each hop is one finished blue/green; a loop of records cannot hang a command.
    for _ in 0..32 {
        let sts = ctx.get_set(&current).await?;
        // A record that is not used does not lead anywhere either.
        let next = match record_of(&sts).ok().flatten() {
            Some(r)
                if r.plan.strategy == StrategyKind::BlueGreen && r.phase == Phase::Succeeded =>
            {
                r.twin.map(|t| t.set)
            }
            _ => None,
        };
        let Some(next) = next else {
            break;
        };
        match ctx.cluster.get::<StatefulSet>(&next).await {
            Ok(Some(_)) => {
                if current == name {
                    ctx.progress.say(format!(
                        "{name}: StatefulSet {next} serves since a blue/green rollout; working on {next}"
                    ));
                }
                via = sts
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(crate::model::state::ANNOTATION_KEY))
                    .map(|text| (current.clone(), text.clone()));
                current = next;
            }
            Ok(None) => break,
            Err(e) => return Err(ExecError::api("reading StatefulSet", &next, e)),
        }
    }
    Ok((current, via))
}

/// The set to report on: the serving set, carrying the record of the blue/green that put it in
/// service when it has none of its own (so `status` shows that rollout: phase, switch, blue);
/// and the set the record it carries was on (what the record is checked against).
fn with_inherited_record(
    mut sts: StatefulSet,
    via: Option<&(String, String)>,
) -> (StatefulSet, String) {
    let key = crate::model::state::ANNOTATION_KEY;
    let has_own = sts
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key));
    if let (false, Some((host, text))) = (has_own, via) {
        sts.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), text.clone());
        return (sts, host.clone());
    }
    let name = sts.metadata.name.clone().unwrap_or_default();
    (sts, name)
}

/// Waits (on the view) until the controller has seen the set's latest spec and reported both
/// revisions; gives the set as it is then.
async fn settle(view: &mut View, name: &str) -> Result<StatefulSet, ExecError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let snapshot = view.borrow_and_update().clone();
        if snapshot.synced {
            let Some(sts) = snapshot.statefulset.clone() else {
                return Err(ExecError::StatefulSetDeleted {
                    name: name.to_string(),
                });
            };
            let generation = sts.metadata.generation.unwrap_or(0);
            let status = sts.status.as_ref();
            let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
            if observed >= generation && status.and_then(|s| s.update_revision.as_ref()).is_some() {
                return Ok(sts);
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() {
                return Err(ExecError::WatchEnded { statefulset: name.to_string() });
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(ExecError::NotRollable {
                    statefulset: name.to_string(),
                    reason: format!("the StatefulSet controller has not reported on it within {}; is kube-controller-manager running?", format_elapsed(SETTLE_TIMEOUT)),
                });
            }
        }
    }
}

/// Waits for SIGINT or SIGTERM; the exit code a shell gives for that signal. A signal handler
/// that cannot be installed (or whose driver went away) never fires.
async fn interrupted() -> u8 {
    let int = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => 130,
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => match term.recv().await {
                Some(()) => 143,
                None => std::future::pending().await,
            },
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<u8>();
    tokio::select! {
        code = int => code,
        code = term => code,
    }
}

/// What a finished run exits with, and a line for people.
fn conclude<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    outcome: &RunOutcome,
    started: Instant,
) -> Result<ExitCode, ExecError> {
    let r = &outcome.record;
    let name = &r.plan.statefulset;
    let elapsed = format_elapsed(started.elapsed());
    let first_line = r.message.lines().next().unwrap_or_default();
    let at = format!(
        "step {}/{}",
        (r.current_step + 1).min(r.plan.steps.len().max(1)),
        r.plan.steps.len()
    );
    let line = if outcome.held {
        match &r.pause {
            Some(PauseReason::User) => format!("rollout of {name} is paused by `rollout pause` at {at}; this run stopped there (after {elapsed}). `rollout resume {name}` continues it, `rollout abort {name}` goes back"),
            Some(PauseReason::GateInconclusive { message }) => format!("rollout of {name} is paused at {at}, a gate that could not decide ({message}); this run stopped there (after {elapsed}). `rollout resume {name}` runs the gate again, `rollout promote {name}` skips it, `rollout abort {name}` goes back"),
            _ => format!("rollout of {name} is holding (after {elapsed}); `rollout promote {name}` continues it, `rollout abort {name}` goes back"),
        }
    } else {
        match r.phase {
            Phase::Succeeded if !r.plan.strategy.uses_partition() => {
                format!("rollout of {name} succeeded in {elapsed}: {first_line}")
            }
            Phase::Succeeded => format!(
                "rollout of {name} succeeded in {elapsed}: every pod runs revision {}",
                r.target.revision.as_deref().unwrap_or("?")
            ),
            Phase::RolledBack => format!("rollout of {name} failed and was rolled back (after {elapsed}): {first_line}"),
            Phase::Aborted => format!("rollout of {name} was aborted; back on the stable revision (after {elapsed})"),
            Phase::Released => format!("rollout of {name} released (after {elapsed}): {first_line}"),
            Phase::Failed if r.rollback.is_some() => format!("rollout of {name} failed and its rollback did not finish (after {elapsed}): {first_line}"),
            Phase::Failed => format!("rollout of {name} failed and was left as it is (after {elapsed}): {first_line}; `rollout abort {name}` returns to the stable revision"),
            phase => format!("rollout of {name} stopped while {phase}: {first_line}"),
        }
    };
    ctx.progress.say(line);
    if ctx.output == Output::Json {
        ctx.print_json(r)?;
    }
    crate::exec::summary::append_if_asked(ctx, r)?;
    Ok(if outcome.held {
        ExitCode::Done
    } else {
        ExitCode::of_record(r)
    })
}

/// Runs `runner` until it ends or the process is interrupted, releases the lock, and turns the
/// end into the command's exit code.
async fn drive<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    runner: Runner<C, G>,
    guard: lease::LeaseGuard<C>,
    started: Instant,
) -> Result<ExitCode, ExecError> {
    let name = runner.record().plan.statefulset.clone();
    let result = tokio::select! {
        // On the heap: the run loop's future holds every kind of step's, and a test's runtime
        // runs on a thread with a small stack.
        outcome = Box::pin(runner.run()) => outcome.map(Ok),
        code = interrupted() => Ok(Err(code)),
    };
    guard.release().await;
    tracing::debug!(statefulset = %name, "run ended");
    let result = match result {
        Ok(result) => result,
        Err(e) => return Err(stopped(ctx, &name, e).await),
    };
    match result {
        Ok(outcome) => conclude(ctx, &outcome, started),
        Err(signal) => Err(ExecError::Interrupted {
            statefulset: name,
            exit: signal,
        }),
    }
}

/// A run stopped by the API server refusing a write (a missing permission, say) leaves its
/// record where it was: say so, and what continues it, in the middle of a rollback above all.
async fn stopped<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    error: ExecError,
) -> ExecError {
    // A refusal by the API server, or an error that would otherwise say "bad input, nothing
    // was changed": the run writes from its first step on, so it must say where it stopped.
    if !matches!(error, ExecError::Api { .. }) && error.exit_code() != ExitCode::BadInput {
        return error;
    }
    let phase = match ctx.cluster.get::<StatefulSet>(name).await {
        Ok(Some(sts)) => record_of(&sts).ok().flatten().map(|r| r.phase),
        _ => None,
    };
    let rolling_back = phase == Some(Phase::RollingBack);
    ExecError::Stopped {
        statefulset: name.to_string(),
        during: if rolling_back {
            " in the middle of its rollback"
        } else {
            ""
        },
        next: if rolling_back {
            "finishes the rollback"
        } else {
            "continues it (`rollout abort` goes back to the stable revision)"
        },
        source: Box::new(error),
    }
}

/// Continues the recorded rollout of `name` in this process: takes the lock (`seen`: what the
/// caller saw of its holder already), applies `change` to the record (promote, resume, abort),
/// brings the plan in line with the cluster and runs.
async fn continue_run<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    change: impl Fn(&mut RolloutState) -> Result<(), TransitionError>,
    options: RunOptions,
    seen: Option<lease::Sighting>,
) -> Result<ExitCode, ExecError> {
    let started = Instant::now();
    let sts = ctx.get_set(name).await?;
    // Checked before anything is written (the lease included).
    let action = match record_of(&sts)? {
        Some(r) if matches!(r.pause, Some(PauseReason::Step { .. })) => "promote",
        _ => "resume",
    };
    if let Some(mut record) = record_of(&sts)? {
        change(&mut record)?;
        require_local_gates(&record, &options.gates, action)?;
    }
    let guard = ctx.take_lease(&sts, seen).await?;
    let prepared = async {
        let mut view = ctx.cluster.watch(name, &selector_of(&sts));
        let sts = settle(&mut view, name).await?;
        let mut record = record_of(&sts)?.ok_or_else(|| ExecError::NoRollout {
            statefulset: name.to_string(),
            action: "continue",
        })?;
        change(&mut record)?;
        if record.target.revision.is_none()
            && record.phase != Phase::RollingBack
            && record.plan.strategy.uses_partition()
        {
            // The record is only ever written together with the new template, so the
            // template on the set is the target.
            record.target.revision = sts.status.as_ref().and_then(|s| s.update_revision.clone());
        }
        let pods = view.borrow().pods.clone();
        let observed =
            Observed::from_statefulset(&sts)?.with_pods(&pods, record.target.revision.as_deref());
        record.reconcile(&observed, Timestamp::now())?;
        require_local_gates(&record, &options.gates, action)?;
        Ok::<_, ExecError>((sts, record, view))
    }
    .await;
    let (sts, record, view) = match prepared {
        Ok(p) => p,
        Err(e) => {
            guard.release().await;
            return Err(e);
        }
    };
    ctx.progress.say(format!(
        "continuing the {} rollout of {}/{name} at step {}/{} ({})",
        record.plan.strategy,
        ctx.cluster.namespace(),
        (record.current_step + 1).min(record.plan.steps.len().max(1)),
        record.plan.steps.len(),
        record.phase
    ));
    let runner = Runner::new(ctx.tools(guard.lost()), &sts, record, view, options);
    drive(ctx, runner, guard, started).await
}

/// Applies `change` to the record on the set, under its resourceVersion, re-reading on
/// conflicts. For commands that only tell a running rollout what to do.
async fn write_transition<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    change: impl Fn(&mut RolloutState) -> Result<(), TransitionError>,
) -> Result<RolloutState, ExecError> {
    for _ in 0..10 {
        let sts = ctx.get_set(name).await?;
        let mut record = record_of(&sts)?.ok_or_else(|| ExecError::NoRollout {
            statefulset: name.to_string(),
            action: "change",
        })?;
        let marks = {
            // Not held across the write below: futures of commands stay small.
            let before = record.clone();
            change(&mut record)?;
            crate::strategy::timeline::marks_between(Some(&before), &record, Timestamp::now())
        };
        crate::model::timeline::append(&mut record.timeline, marks.iter().cloned());
        let patch = StsPatch::at(sts.metadata.resource_version.as_deref())
            .with_record(RecordChange::Set(record.to_annotation()?));
        match ctx.cluster.patch_statefulset(name, &patch, false).await {
            Ok(_) => {
                ctx.announce
                    .tell(sts.metadata.uid.as_deref(), &record, &marks);
                return Ok(record);
            }
            Err(ApiError::Conflict(_)) => continue,
            Err(e) => {
                return Err(ExecError::api(
                    "writing the rollout record of StatefulSet",
                    name,
                    e,
                ))
            }
        }
    }
    Err(ExecError::TooManyConflicts {
        statefulset: name.to_string(),
        attempts: 10,
    })
}

async fn existing_record<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    action: &'static str,
) -> Result<RolloutState, ExecError> {
    let sts = ctx.get_set(name).await?;
    record_of(&sts)?.ok_or_else(|| ExecError::NoRollout {
        statefulset: name.to_string(),
        action,
    })
}
