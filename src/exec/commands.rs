//! One function per command. Each checks everything it can before the first write (bad input
//! changes nothing in the cluster), takes the lock when it changes the set, and hands the work to
//! the [`Runner`]. Results go to stdout (text or JSON); progress to stderr.

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

use super::cluster::{selector_string, ApiError, Cluster, View};
use super::gates::{check_gate_port, GateRunner};
use super::lease::{self, assess, Identity, LeaseState};
use super::manifest::Manifest;
use super::patch::{RecordChange, StrategyChange, StsPatch, TemplateChange};
use super::progress::{format_elapsed, Out, Progress};
use super::report::{
    history, pick_undo_revision, render_history, render_status, render_status_line, status_report,
};
use super::runner::{RunOptions, RunOutcome, Runner, Tools};
use super::ExecError;
use crate::model::exit::ExitCode;
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
}

/// How long a command waits for the StatefulSet controller to catch up with the latest spec
/// before it plans on it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The record of a rollout that is about to start with `plan` on `sts`.
fn new_record<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    request: &RunRequest,
    sts: &StatefulSet,
    prepared: &Prepared,
    plan: crate::model::plan::Plan,
    twin: Option<Twin>,
    new_template: serde_json::Value,
) -> RolloutState {
    let now = Timestamp::now();
    let mut record = RolloutState::new(
        format!(
            "{}-{}-{}",
            request.config.kind(),
            now.strftime("%Y%m%d%H%M%S"),
            ctx.me.pid
        ),
        request.config.clone(),
        plan,
        stable_from_statefulset(sts),
        Revision {
            revision: None,
            images: prepared.target_images.clone(),
        },
        ctx.me.user_at_host(),
        now,
    );
    if !request.config.kind().uses_partition() {
        record.new_template = Some(new_template);
    }
    record.twin = twin;
    record
}

/// `rollout plan`'s second half: what a failure at each step would undo.
fn render_rollback(plan: &crate::model::plan::Plan, back: &[RollbackAt]) -> String {
    let mut out = String::from("if a step fails (or `rollout abort` runs during it):\n");
    for run in back {
        let steps = if run.from_step == run.to_step {
            format!("step {}", run.from_step)
        } else {
            format!("steps {}-{}", run.from_step, run.to_step)
        };
        if run.steps.is_empty() {
            out.push_str(&format!("  {steps}: nothing to undo\n"));
            continue;
        }
        out.push_str(&format!("  {steps}:\n"));
        for (i, step) in run.steps.iter().enumerate() {
            out.push_str(&format!("    {}. {}\n", i + 1, plan.describe_step(step)));
        }
    }
    out
}

/// Run options for a run that continues a rollout: whether it waits at holds.
fn holding(wait_at_holds: bool) -> RunOptions {
    RunOptions {
        wait_at_holds,
        ..RunOptions::default()
    }
}

impl<C: Cluster, G: GateRunner> Context<C, G> {
    /// What a runner works with, for a run holding the lease whose loss `lease_lost` signals.
    fn tools(&self, lease_lost: tokio::sync::watch::Receiver<Option<String>>) -> Tools<C, G> {
        Tools {
            cluster: self.cluster.clone(),
            gates: self.gates.clone(),
            progress: self.progress.clone(),
            lease_lost,
        }
    }

    async fn get_set(&self, name: &str) -> Result<StatefulSet, ExecError> {
        self.cluster
            .get::<StatefulSet>(name)
            .await
            .map_err(|e| ExecError::api("reading StatefulSet", name, e))?
            .ok_or_else(|| ExecError::StatefulSetNotFound {
                namespace: self.cluster.namespace().to_string(),
                name: name.to_string(),
            })
    }

    fn print_json<T: serde::Serialize>(&self, value: &T) -> Result<(), ExecError> {
        let text =
            serde_json::to_string_pretty(value).map_err(|e| ExecError::Output(e.to_string()))?;
        self.out.print(&format!("{text}\n"));
        Ok(())
    }

    /// True when a live run (not this process) holds the set's lease.
    async fn live_holder(&self, name: &str) -> Result<Option<String>, ExecError> {
        let lease_name = lease::lease_name(name);
        let lease = self
            .cluster
            .get::<Lease>(&lease_name)
            .await
            .map_err(|e| ExecError::api("reading Lease", &lease_name, e))?;
        Ok(lease.and_then(|l| {
            match assess(&l, &self.me, Timestamp::now(), lease::local_process_gone) {
                LeaseState::Held { holder, .. } => Some(holder),
                _ => None,
            }
        }))
    }
}

fn record_of(sts: &StatefulSet) -> Result<Option<RolloutState>, ExecError> {
    let name = sts.metadata.name.clone().unwrap_or_default();
    Ok(RolloutState::from_annotations(
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

/// [`resolve_serving`], also giving the record text of the last blue/green followed (the one
/// that put the serving set in service).
async fn serving_chain<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
) -> Result<(String, Option<String>), ExecError> {
    let mut current = name.to_string();
    let mut via = None;
    // Bounded: each hop is one finished blue/green; a loop of records cannot hang a command.
    for _ in 0..32 {
        let sts = ctx.get_set(&current).await?;
        let next = match record_of(&sts)? {
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
                    .cloned();
                current = next;
            }
            Ok(None) => break,
            Err(e) => return Err(ExecError::api("reading StatefulSet", &next, e)),
        }
    }
    Ok((current, via))
}

/// The set to report on: the serving set, carrying the record of the blue/green that put it in
/// service when it has none of its own (so `status` shows that rollout: phase, switch, blue).
fn with_inherited_record(mut sts: StatefulSet, via: Option<&String>) -> StatefulSet {
    let key = crate::model::state::ANNOTATION_KEY;
    let has_own = sts
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key));
    if let (false, Some(text)) = (has_own, via) {
        sts.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), text.clone());
    }
    sts
}

/// The Services, sets and claims around `sts` that a blue/green or shadow plan needs.
async fn surroundings<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    sts: &StatefulSet,
) -> Result<Surroundings, ExecError> {
    let ns = ctx.cluster.namespace().to_string();
    let services = ctx
        .cluster
        .list::<Service>(&Select::all())
        .await
        .map_err(|e| ExecError::api("listing Services in namespace", &ns, e))?;
    let sets = ctx
        .cluster
        .list::<StatefulSet>(&Select::all())
        .await
        .map_err(|e| ExecError::api("listing StatefulSets in namespace", &ns, e))?;
    let claims = ctx
        .cluster
        .list::<PersistentVolumeClaim>(&Select::all())
        .await
        .map_err(|e| ExecError::api("listing PVCs in namespace", &ns, e))?;
    let name = sts.metadata.name.clone().unwrap_or_default();
    let home = sts
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HOME_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| name.clone());
    let spec = sts.spec.as_ref();
    Ok(Surroundings {
        home,
        template_labels: spec
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        set_selector: spec
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default(),
        service_name: spec.and_then(|s| s.service_name.clone()),
        services: services
            .into_iter()
            .map(|s| ObservedService {
                rollout_home: rollout_preview_home(&s.metadata),
                name: s.metadata.name.unwrap_or_default(),
                selector: s
                    .spec
                    .as_ref()
                    .and_then(|x| x.selector.clone())
                    .unwrap_or_default(),
                headless: s.spec.as_ref().and_then(|x| x.cluster_ip.as_deref()) == Some("None"),
            })
            .collect(),
        sets: sets.into_iter().filter_map(|s| s.metadata.name).collect(),
        claims: claims.into_iter().filter_map(|c| c.metadata.name).collect(),
    })
}

/// The plan (and twin record) of a request on `sts` as it is now.
async fn make_full_plan<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    config: &StrategyConfig,
    sts: &StatefulSet,
    new_template: &serde_json::Value,
) -> Result<(crate::model::plan::Plan, Option<Twin>), ExecError> {
    let observed = Observed::from_statefulset(sts)?;
    let around = match config.kind() {
        StrategyKind::BlueGreen | StrategyKind::Shadow => Some(surroundings(ctx, sts).await?),
        _ => None,
    };
    Ok(crate::strategy::plan(
        config,
        &observed,
        around.as_ref(),
        new_template,
    )?)
}

/// Asks the API server to validate the twin set before anything is written, so a set it would
/// refuse (a name too long, a bad claim template) stops the rollout with nothing changed.
async fn check_twin<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    sts: &StatefulSet,
    twin: &Twin,
    plan: &crate::model::plan::Plan,
) -> Result<(), ExecError> {
    let replicas = plan
        .steps
        .iter()
        .find_map(|s| match s {
            crate::model::plan::Step::CreateTwin { replicas, .. } => Some(*replicas),
            _ => None,
        })
        .unwrap_or(plan.replicas);
    let name = sts.metadata.name.clone().unwrap_or_default();
    let Some(desired) = twin_statefulset(sts, twin, replicas, "check") else {
        return Err(ExecError::NotRollable {
            statefulset: name,
            reason: "the new pod template cannot be read back".into(),
        });
    };
    match ctx.cluster.create(&desired, true).await {
        Ok(_) => Ok(()),
        Err(ApiError::AlreadyExists(_)) => Err(ExecError::NotRollable {
            statefulset: name,
            reason: format!(
                "StatefulSet {} already exists; delete it (and its PVCs if you do not need them) or let rollout pick another name",
                twin.set
            ),
        }),
        Err(ApiError::Refused { message, code, .. }) if (400..500).contains(&code) => {
            Err(ExecError::TemplateRefused {
                statefulset: twin.set.clone(),
                message,
            })
        }
        Err(e) => Err(ExecError::api("checking the new StatefulSet", &twin.set, e)),
    }
}

/// The new template as a patch, the images it runs and the container the gate probes.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub template: TemplateChange,
    pub target_images: Vec<ContainerImage>,
    pub notes: Vec<String>,
}

/// Checks a request against the StatefulSet as it is: containers exist, the manifest fits, the
/// gate finds its port. Pure.
pub fn prepare(sts: &StatefulSet, request: &RunRequest) -> Result<Prepared, ExecError> {
    let name = request.statefulset.as_str();
    let not_rollable = |reason: &str| ExecError::NotRollable {
        statefulset: name.to_string(),
        reason: reason.to_string(),
    };
    let spec = sts
        .spec
        .as_ref()
        .ok_or_else(|| not_rollable("it has no spec"))?;
    let current: PodSpec = spec
        .template
        .spec
        .clone()
        .ok_or_else(|| not_rollable("it has no pod template"))?;
    let mut notes = Vec::new();
    let (template, new_spec, target_images, changed) = match &request.source {
        TemplateSource::Images(changes) => {
            let resolved = resolve_image_changes(name, &current, changes)?;
            let mut new_spec = current.clone();
            apply_images(&mut new_spec, &resolved);
            let changed = resolved.first().map(|i| i.container.clone());
            (
                TemplateChange::images(&current, &resolved),
                new_spec,
                resolved,
                changed,
            )
        }
        TemplateSource::Manifest(manifest) => {
            let new_spec = manifest.typed.spec.clone().unwrap_or_default();
            if let (Some(file), Some(cluster)) = (manifest.replicas, spec.replicas) {
                if file != cluster {
                    notes.push(format!(
                        "{} sets {file} replicas; the cluster has {cluster}: rollout changes the pod template only, not the replica count",
                        manifest.file
                    ));
                }
            }
            let images = container_images(&new_spec);
            let before = container_images(&current);
            let changed = images
                .iter()
                .find(|i| !before.contains(i))
                .or(images.first())
                .map(|i| i.container.clone());
            let selector = spec.selector.match_labels.clone().unwrap_or_default();
            let (template, added) = manifest.template_for(&selector);
            if !added.is_empty() {
                notes.push(format!(
                    "StatefulSet {} selects its pods by {}, which the pod template of {} lacks: added",
                    sts.metadata.name.as_deref().unwrap_or(name),
                    added.join(", "),
                    manifest.file
                ));
            }
            (TemplateChange::Replace(template), new_spec, images, changed)
        }
    };
    check_gate_port(name, &new_spec, &request.config.gates, changed.as_deref())?;
    // The gate probes the changed container first: keep it first in the record.
    let mut target_images = target_images;
    if let Some(c) = &changed {
        if let Some(pos) = target_images.iter().position(|i| &i.container == c) {
            let first = target_images.remove(pos);
            target_images.insert(0, first);
        }
    }
    Ok(Prepared {
        template,
        target_images,
        notes,
    })
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

fn mid_update_reason(sts: &StatefulSet) -> Option<String> {
    let status = sts.status.as_ref()?;
    let (current, update) = (
        status.current_revision.as_deref()?,
        status.update_revision.as_deref()?,
    );
    (current != update).then(|| {
        format!(
            "it is in the middle of an update ({} of {} pods on revision {update}, the others on {current}); let it finish, or return with `rollout undo {}`",
            status.updated_replicas.unwrap_or(0),
            status.replicas,
            sts.metadata.name.as_deref().unwrap_or("?")
        )
    })
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
    let line = if outcome.held {
        format!("rollout of {name} is holding (after {elapsed}); `rollout promote {name}` continues it, `rollout abort {name}` goes back")
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
            Phase::Failed if r.rollback.is_some() => format!("rollout of {name} failed and its rollback did not finish (after {elapsed}): {first_line}"),
            Phase::Failed => format!("rollout of {name} failed and was left as it is (after {elapsed}): {first_line}; `rollout abort {name}` returns to the stable revision"),
            phase => format!("rollout of {name} stopped while {phase}: {first_line}"),
        }
    };
    ctx.progress.say(line);
    if ctx.output == Output::Json {
        ctx.print_json(r)?;
    }
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
        outcome = runner.run() => outcome.map(Ok),
        code = interrupted() => Ok(Err(code)),
    };
    guard.release().await;
    tracing::debug!(statefulset = %name, "run ended");
    match result? {
        Ok(outcome) => conclude(ctx, &outcome, started),
        Err(signal) => Err(ExecError::Interrupted {
            statefulset: name,
            exit: signal,
        }),
    }
}

/// `rollout rolling|ramped|canary|apply STS ...`.
pub async fn run<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    request: &RunRequest,
) -> Result<ExitCode, ExecError> {
    start(ctx, request, false).await
}

/// `rollout plan ...`: the same checks, then the plan; nothing is written.
pub async fn plan<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    request: &RunRequest,
) -> Result<ExitCode, ExecError> {
    start(ctx, request, true).await
}

async fn start<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    request: &RunRequest,
    plan_only: bool,
) -> Result<ExitCode, ExecError> {
    let started = Instant::now();
    let resolved = resolve_serving(ctx, &request.statefulset).await?;
    let name = resolved.as_str();
    let checked = match check_start(ctx, name, request, plan_only).await? {
        Checked::Go(checked) => checked,
        Checked::Done(code) => return Ok(code),
    };
    if plan_only {
        return print_plan(ctx, request, checked).await;
    }
    let guard = lease::acquire(&ctx.cluster, &checked.sts, &ctx.me, ctx.lease_duration).await?;
    if let Some(previous) = &guard.taken_over_from {
        ctx.progress.say(format!(
            "took over Lease {} from {previous}, whose run stopped renewing it",
            guard.name()
        ));
    }
    // Everything between taking the lease and the run that releases it, in one place: any
    // error here releases it too.
    let ready = new_rollout(ctx, name, request, &checked).await;
    let (sts, record) = match ready {
        Ok(ready) => ready,
        Err(e) => {
            guard.release().await;
            return Err(e);
        }
    };
    let runner = Runner::new(
        ctx.tools(guard.lost()),
        &sts,
        record,
        checked.view,
        RunOptions {
            wait_at_holds: request.wait_at_holds,
            template: Some(checked.prepared.template),
            rollback_limit: None,
        },
    );
    drive(ctx, runner, guard, started).await
}

/// A request that passed the checks before any write: the set as settled on its watch, the new
/// template as the API server completed it.
struct StartChecked {
    sts: StatefulSet,
    view: View,
    prepared: Prepared,
    new_template: serde_json::Value,
}

enum Checked {
    Go(Box<StartChecked>),
    /// Nothing to start: the run ended (nothing to do, or it continued a rollout under way).
    Done(ExitCode),
}

/// The checks of a new rollout before anything is written: the API server's dry run of the new
/// template, a rollout already under way (continued when it is this very one), nothing to do,
/// a set in the middle of an update.
async fn check_start<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    request: &RunRequest,
    plan_only: bool,
) -> Result<Checked, ExecError> {
    let sts = ctx.get_set(name).await?;
    let prepared = prepare(&sts, request)?;
    for note in &prepared.notes {
        ctx.progress.say(format!("note: {note}"));
    }
    let existing = record_of(&sts)?;
    let replicas = predicates::replicas(&sts);
    let trial = StsPatch::at(None)
        .with_template(prepared.template.clone())
        .with_strategy(StrategyChange::freeze(replicas));
    let tried = match ctx.cluster.patch_statefulset(name, &trial, true).await {
        Ok(tried) => tried,
        Err(ApiError::Refused { message, code, .. }) if (400..500).contains(&code) => {
            return Err(ExecError::TemplateRefused {
                statefulset: name.to_string(),
                message,
            })
        }
        Err(e) => {
            return Err(ExecError::api(
                "checking the new template of StatefulSet",
                name,
                e,
            ))
        }
    };
    let template_of = |s: &StatefulSet| {
        serde_json::to_value(s.spec.as_ref().map(|s| &s.template)).unwrap_or_default()
    };
    let already_there = template_of(&tried) == template_of(&sts);
    if let Some(record) = existing.as_ref().filter(|r| r.phase.is_active()) {
        if already_there && record.config == request.config && !plan_only {
            ctx.progress.say(format!(
                "a {} rollout of {name} to this template is under way (started by {}); continuing it",
                record.plan.strategy, record.started_by
            ));
            let code = continue_run(ctx, name, |_| Ok(()), holding(request.wait_at_holds)).await?;
            return Ok(Checked::Done(code));
        }
        if !plan_only {
            let running = match ctx.live_holder(name).await? {
                Some(holder) => format!(", run right now by {holder}"),
                None => String::new(),
            };
            return Err(ExecError::InProgress {
                statefulset: name.to_string(),
                description: format!(
                    "{} started by {}, {} at step {}/{}{running}",
                    record.plan.strategy,
                    record.started_by,
                    record.phase,
                    record.current_step + 1,
                    record.plan.steps.len()
                ),
            });
        }
    }
    if already_there && mid_update_reason(&sts).is_none() {
        ctx.progress.say(format!(
            "nothing to do: StatefulSet {name} already runs this template (revision {})",
            sts.status
                .as_ref()
                .and_then(|s| s.current_revision.as_deref())
                .unwrap_or("?")
        ));
        if ctx.output == Output::Json && plan_only {
            ctx.print_json(&serde_json::json!({"statefulset": name, "steps": []}))?;
        }
        return Ok(Checked::Done(ExitCode::Done));
    }
    let mut view = ctx.cluster.watch(name, &selector_of(&sts));
    let sts = settle(&mut view, name).await?;
    if let Some(reason) = mid_update_reason(&sts) {
        let reason = match existing.as_ref().filter(|r| r.phase == Phase::Failed) {
            Some(r) => format!(
                "its last rollout ({} started by {}) failed and was left as it was: {}; `rollout abort {name}` returns it to the stable revision",
                r.plan.strategy,
                r.started_by,
                r.message.lines().next().unwrap_or_default()
            ),
            None => reason,
        };
        return Err(ExecError::NotRollable {
            statefulset: name.to_string(),
            reason,
        });
    }
    Ok(Checked::Go(Box::new(StartChecked {
        sts,
        view,
        prepared,
        new_template: template_of(&tried),
    })))
}

/// `rollout plan`: the steps both ways; nothing is written.
async fn print_plan<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    request: &RunRequest,
    checked: Box<StartChecked>,
) -> Result<ExitCode, ExecError> {
    let StartChecked {
        sts,
        prepared,
        new_template,
        ..
    } = *checked;
    let (plan, twin) = make_full_plan(ctx, &request.config, &sts, &new_template).await?;
    let record = new_record(ctx, request, &sts, &prepared, plan, twin, new_template);
    let back = rollback_by_step(&record);
    let plan = &record.plan;
    match ctx.output {
        Output::Json => {
            let mut value = serde_json::to_value(plan).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.insert(
                    "rollback".into(),
                    serde_json::to_value(&back).unwrap_or_default(),
                );
            }
            ctx.print_json(&value)?;
        }
        Output::Text => {
            let images = |list: &[ContainerImage]| {
                list.iter()
                    .map(|i| format!("{}={}", i.container, i.image))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let stable = &record.stable;
            ctx.out.print(&format!(
                "from revision {} ({}) to {}\n{plan}{}",
                stable.revision.revision.as_deref().unwrap_or("?"),
                images(&stable.revision.images),
                images(&prepared.target_images),
                render_rollback(plan, &back)
            ));
        }
    }
    Ok(ExitCode::Done)
}

/// With the lease held: the set as it is now (another run may have started and finished in
/// between), planned, and the record of the new rollout.
async fn new_rollout<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    request: &RunRequest,
    checked: &StartChecked,
) -> Result<(StatefulSet, RolloutState), ExecError> {
    let sts = ctx.get_set(name).await?;
    if let Some(record) = record_of(&sts)?.filter(|r| r.phase.is_active()) {
        return Err(ExecError::InProgress {
            statefulset: name.to_string(),
            description: format!("{} started by {}", record.plan.strategy, record.started_by),
        });
    }
    let (plan, twin) = make_full_plan(ctx, &request.config, &sts, &checked.new_template).await?;
    if let Some(twin) = &twin {
        check_twin(ctx, &sts, twin, &plan).await?;
    }
    let record = new_record(
        ctx,
        request,
        &sts,
        &checked.prepared,
        plan,
        twin,
        checked.new_template.clone(),
    );
    ctx.progress.say(format!(
        "{} rollout of {}/{name}: {} replicas, {} steps, from revision {} to {}",
        record.plan.strategy,
        ctx.cluster.namespace(),
        record.plan.replicas,
        record.plan.steps.len(),
        record.stable.revision.revision.as_deref().unwrap_or("?"),
        record
            .target
            .images
            .iter()
            .map(|i| format!("{}={}", i.container, i.image))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for note in &record.plan.notes {
        ctx.progress.say(format!("note: {note}"));
    }
    Ok((sts, record))
}

/// Continues the recorded rollout of `name` in this process: takes the lock, applies `change`
/// to the record (promote, resume, abort), brings the plan in line with the cluster and runs.
async fn continue_run<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    change: impl FnOnce(&mut RolloutState) -> Result<(), TransitionError>,
    options: RunOptions,
) -> Result<ExitCode, ExecError> {
    let started = Instant::now();
    let sts = ctx.get_set(name).await?;
    let guard = lease::acquire(&ctx.cluster, &sts, &ctx.me, ctx.lease_duration).await?;
    if let Some(previous) = &guard.taken_over_from {
        ctx.progress.say(format!(
            "took over Lease {} from {previous}, whose run stopped renewing it",
            guard.name()
        ));
    }
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
        change(&mut record)?;
        let patch = StsPatch::at(sts.metadata.resource_version.as_deref())
            .with_record(RecordChange::Set(record.to_annotation()?));
        match ctx.cluster.patch_statefulset(name, &patch, false).await {
            Ok(_) => return Ok(record),
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

/// The steps of the partition rollout that `promote --then` appends to a shadow.
async fn then_steps<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    record: &RolloutState,
    then: &StrategyParams,
) -> Result<Vec<crate::model::plan::Step>, ExecError> {
    let sts = ctx.get_set(name).await?;
    let config = StrategyConfig {
        params: then.clone(),
        ..record.config.clone()
    };
    let observed = Observed::from_statefulset(&sts)?;
    let (plan, _) = crate::strategy::plan(&config, &observed, None, &serde_json::Value::Null)?;
    Ok(plan.steps)
}

/// `rollout promote STS [--full] [--then STRATEGY ...]`.
pub async fn promote<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    full: bool,
    wait_at_holds: bool,
    then: Option<StrategyParams>,
) -> Result<ExitCode, ExecError> {
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let record = existing_record(ctx, name, "promote").await?;
    let steps = match &then {
        Some(params) => Some(then_steps(ctx, name, &record, params).await?),
        None => None,
    };
    let then_kind = then.as_ref().map(StrategyParams::kind);
    let change = move |r: &mut RolloutState| match (&steps, then_kind) {
        (Some(steps), Some(kind)) => r.promote_then(steps.clone(), kind, Timestamp::now()),
        _ if full => r.promote_full(Timestamp::now()),
        _ => r.promote(Timestamp::now()),
    };
    // Checked here first so a refusal is reported the same whether a run is live or not.
    change(&mut record.clone())?;
    if let Some(holder) = ctx.live_holder(name).await? {
        let record = write_transition(ctx, name, change).await?;
        ctx.progress.say(format!(
            "promoted {name}{}: the running rollout ({holder}) continues at step {}/{}",
            if full { " to the end" } else { "" },
            record.current_step + 1,
            record.plan.steps.len()
        ));
        if ctx.output == Output::Json {
            ctx.print_json(&record)?;
        }
        return Ok(ExitCode::Done);
    }
    continue_run(ctx, name, change, holding(wait_at_holds)).await
}

/// `rollout pause STS`.
pub async fn pause<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
) -> Result<ExitCode, ExecError> {
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let record = write_transition(ctx, name, |r| r.pause_by_user(Timestamp::now())).await?;
    let holder = ctx.live_holder(name).await?;
    ctx.progress.say(format!(
        "paused the rollout of {name} at step {}/{}{}; `rollout resume {name}` continues it",
        record.current_step + 1,
        record.plan.steps.len(),
        match holder {
            Some(h) => format!(" (the running rollout, {h}, waits)"),
            None => String::new(),
        }
    ));
    if ctx.output == Output::Json {
        ctx.print_json(&record)?;
    }
    Ok(ExitCode::Done)
}

/// `rollout resume STS`: continues after `pause`, or a run whose process died.
pub async fn resume<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    wait_at_holds: bool,
) -> Result<ExitCode, ExecError> {
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let record = existing_record(ctx, name, "resume").await?;
    let at_pause_step = matches!(record.pause, Some(PauseReason::Step { .. }));
    let change = move |r: &mut RolloutState| {
        if matches!(r.pause, Some(PauseReason::Step { .. })) {
            // A run that died during a pause step: the pause goes on (a timed one ends by
            // itself, a hold waits for promote).
            return Ok(());
        }
        r.resume_by_user(Timestamp::now())
    };
    if !record.phase.is_active() {
        change(&mut record.clone())?;
    }
    if let Some(holder) = ctx.live_holder(name).await? {
        if record.phase == Phase::Paused && !at_pause_step {
            let record =
                write_transition(ctx, name, |r| r.resume_by_user(Timestamp::now())).await?;
            ctx.progress.say(format!(
                "resumed the rollout of {name}: the running rollout ({holder}) continues"
            ));
            if ctx.output == Output::Json {
                ctx.print_json(&record)?;
            }
            return Ok(ExitCode::Done);
        }
    }
    continue_run(ctx, name, change, holding(wait_at_holds)).await
}

/// `rollout abort STS`: back to the stable revision now.
pub async fn abort<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    timeout: Duration,
) -> Result<ExitCode, ExecError> {
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let record = existing_record(ctx, name, "abort").await?;
    record.clone().abort(Timestamp::now())?;
    let started = Instant::now();
    if let Some(holder) = ctx.live_holder(name).await? {
        write_transition(ctx, name, |r| r.abort(Timestamp::now())).await?;
        ctx.progress.say(format!(
            "abort requested: the running rollout ({holder}) returns {name} to the stable revision"
        ));
        // Follow the record until that run is done.
        let sts = ctx.get_set(name).await?;
        let mut view = ctx.cluster.watch(name, &selector_of(&sts));
        let deadline = Instant::now() + timeout;
        loop {
            let snapshot = view.borrow_and_update().clone();
            if let Some(sts) = snapshot.statefulset.as_ref().filter(|_| snapshot.synced) {
                if let Some(r) = record_of(sts)? {
                    if r.phase.is_finished() {
                        return finish_abort(ctx, &r, started);
                    }
                }
            }
            tokio::select! {
                changed = view.changed() => if changed.is_err() {
                    return Err(ExecError::WatchEnded { statefulset: name.to_string() });
                },
                _ = tokio::time::sleep_until(deadline) => return Err(ExecError::Timeout {
                    what: format!("the rollback of {name} by the running rollout ({holder})"),
                    timeout: format_elapsed(timeout),
                }),
            }
        }
    }
    let options = RunOptions {
        rollback_limit: Some(timeout),
        ..RunOptions::default()
    };
    let code = continue_run(ctx, name, |r| r.abort(Timestamp::now()), options).await?;
    let after = existing_record(ctx, name, "abort").await?;
    // RolledBack: the abort finished a rollback that a dead run had begun; either way the set
    // is back where the user asked for it.
    if matches!(after.phase, Phase::Aborted | Phase::RolledBack) {
        return Ok(ExitCode::Done);
    }
    Ok(code)
}

fn finish_abort<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    record: &RolloutState,
    started: Instant,
) -> Result<ExitCode, ExecError> {
    let name = &record.plan.statefulset;
    if ctx.output == Output::Json {
        ctx.print_json(record)?;
    }
    match record.phase {
        Phase::Aborted | Phase::RolledBack => {
            ctx.progress.say(format!(
                "{name} is back on the stable revision ({})",
                format_elapsed(started.elapsed())
            ));
            Ok(ExitCode::Done)
        }
        _ => {
            ctx.progress.say(format!(
                "the rollback of {name} did not finish: {}",
                record.message
            ));
            Ok(ExitCode::of_record(record))
        }
    }
}

/// `rollout status STS [--watch]`.
pub async fn status<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    watch: bool,
    timeout: Option<Duration>,
) -> Result<ExitCode, ExecError> {
    let home = name;
    let (resolved, via) = serving_chain(ctx, name).await?;
    let name = resolved.as_str();
    let serving_for = (name != home).then(|| home.to_string());
    let sts = ctx.get_set(name).await?;
    let lease_name = lease::lease_name(name);
    let read_lease = || async {
        ctx.cluster
            .get::<Lease>(&lease_name)
            .await
            .map_err(|e| ExecError::api("reading Lease", &lease_name, e))
    };
    let print = |report: &super::report::StatusReport| -> Result<(), ExecError> {
        match ctx.output {
            Output::Json if watch => {
                let line =
                    serde_json::to_string(report).map_err(|e| ExecError::Output(e.to_string()))?;
                ctx.out.print(&format!("{line}\n"));
                Ok(())
            }
            Output::Json => ctx.print_json(report),
            Output::Text => {
                ctx.out.print(&render_status(report, Timestamp::now()));
                Ok(())
            }
        }
    };
    if !watch {
        let pods = ctx
            .cluster
            .list::<Pod>(&Select::labels(&selector_of(&sts)))
            .await
            .map_err(|e| ExecError::api("listing the pods of StatefulSet", name, e))?;
        let pods: Vec<_> = pods
            .into_iter()
            .filter(|p| super::cluster::belongs_to(&sts, p))
            .collect();
        let lease = read_lease().await?;
        let mut report = status_report(
            ctx.cluster.namespace(),
            &with_inherited_record(sts.clone(), via.as_ref()),
            &pods,
            lease.as_ref(),
            Timestamp::now(),
        )?;
        report.serving_for = serving_for.clone();
        print(&report)?;
        return Ok(ExitCode::Done);
    }
    let mut view = ctx.cluster.watch(name, &selector_of(&sts));
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut last = String::new();
    let mut first = true;
    // `first`: nothing printed yet; `last`: what was printed last, to print changes only.
    loop {
        let snapshot = view.borrow_and_update().clone();
        if snapshot.synced {
            let Some(sts) = snapshot.statefulset.as_ref() else {
                return Err(ExecError::StatefulSetDeleted {
                    name: name.to_string(),
                });
            };
            let lease = read_lease().await?;
            let mut report = status_report(
                ctx.cluster.namespace(),
                &with_inherited_record(sts.clone(), via.as_ref()),
                &snapshot.pods,
                lease.as_ref(),
                Timestamp::now(),
            )?;
            report.serving_for = serving_for.clone();
            let fingerprint = report.fingerprint();
            let settled = report.is_settled();
            let changed = fingerprint != last;
            match (ctx.output, first) {
                (Output::Json, _) | (Output::Text, true) => {
                    if changed {
                        print(&report)?;
                    }
                }
                // After the whole report, one line per change, and the whole report at the end.
                (Output::Text, false) => {
                    if changed {
                        ctx.out
                            .print(&render_status_line(&report, Timestamp::now()));
                    }
                    if settled {
                        ctx.out.print("\n");
                        print(&report)?;
                    }
                }
            }
            first = false;
            last = fingerprint;
            if report.is_settled() {
                return Ok(match report.record {
                    Some(r) => ExitCode::of_record(&r),
                    None => ExitCode::Done,
                });
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() {
                return Err(ExecError::WatchEnded { statefulset: name.to_string() });
            },
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                return Err(ExecError::Timeout {
                    what: format!("watching StatefulSet {name} until its rollout is finished"),
                    timeout: timeout.map(format_elapsed).unwrap_or_default(),
                });
            }
        }
    }
}

/// `rollout history STS`.
pub async fn show_history<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
) -> Result<ExitCode, ExecError> {
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let sts = ctx.get_set(name).await?;
    let revisions = ctx
        .cluster
        .list::<ControllerRevision>(&Select::labels(&selector_of(&sts)))
        .await
        .map_err(|e| ExecError::api("listing the revisions of StatefulSet", name, e))?;
    let entries = history(&sts, &revisions);
    match ctx.output {
        Output::Json => ctx.print_json(&entries)?,
        Output::Text => ctx.out.print(&render_history(name, &entries)),
    }
    Ok(ExitCode::Done)
}

/// `rollout undo STS [--to-revision N]`: the template of an earlier ControllerRevision, like
/// `kubectl rollout undo`, then the pods stuck on the revision being left are deleted so an
/// OrderedReady set does not stay wedged, and the set is waited on until every pod is back.
pub async fn undo<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    to_revision: Option<i64>,
    timeout: Duration,
) -> Result<ExitCode, ExecError> {
    if let Some(blue) = bluegreen_to_undo(ctx, name, to_revision).await? {
        ctx.progress.say(format!(
            "undoing the blue/green rollout recorded on {blue}: {blue} serves again"
        ));
        let options = RunOptions {
            rollback_limit: Some(timeout),
            ..RunOptions::default()
        };
        continue_run(ctx, &blue, |r| r.undo_bluegreen(Timestamp::now()), options).await?;
        let after = existing_record(ctx, &blue, "undo").await?;
        return Ok(match after.phase {
            Phase::Aborted => ExitCode::Done,
            _ => ExitCode::of_record(&after),
        });
    }
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let started = Instant::now();
    let sts = ctx.get_set(name).await?;
    let record = record_of(&sts)?;
    if record.as_ref().is_some_and(|r| r.phase == Phase::Failed) && to_revision.is_none() {
        // A failure held by `--no-rollback`, or a rollback that did not finish, left things
        // only its record knows about (pinned Services, a second set, the partition): going
        // back means finishing that rollback, which keeps the record.
        ctx.progress.say(format!(
            "the last rollout of {name} failed and was not rolled back: undo returns to its stable revision, as `rollout abort {name}` does"
        ));
        return abort(ctx, name, timeout).await;
    }
    if record.as_ref().is_some_and(|r| r.phase == Phase::Failed) {
        return Err(ExecError::NotRollable {
            statefulset: name.to_string(),
            reason: format!("its last rollout failed and was not rolled back, so it may have left Services pinned or a second set behind; run `rollout abort {name}` first, then `rollout undo {name} --to-revision N`"),
        });
    }
    if let Some(r) = record.as_ref().filter(|r| r.phase.is_active()) {
        return Err(ExecError::InProgress {
            statefulset: name.to_string(),
            description: format!(
                "{} started by {}, {}; `rollout abort {name}` returns to its stable revision",
                r.plan.strategy, r.started_by, r.phase
            ),
        });
    }
    let revisions = ctx
        .cluster
        .list::<ControllerRevision>(&Select::labels(&selector_of(&sts)))
        .await
        .map_err(|e| ExecError::api("listing the revisions of StatefulSet", name, e))?;
    let entries = history(&sts, &revisions);
    let target =
        pick_undo_revision(name, &entries, to_revision).map_err(|what| ExecError::Revision {
            statefulset: name.to_string(),
            what,
        })?;
    let images = target
        .images
        .iter()
        .map(|i| format!("{}={}", i.container, i.image))
        .collect::<Vec<_>>()
        .join(", ");
    if target.update && target.current {
        ctx.progress.say(format!(
            "nothing to do: {name} already runs revision {} ({images})",
            target.revision
        ));
        return Ok(ExitCode::Done);
    }
    let Some(template) = target.template.clone() else {
        return Err(ExecError::Revision {
            statefulset: name.to_string(),
            what: format!("revision {} holds no pod template", target.revision),
        });
    };
    let leaving = sts.status.as_ref().and_then(|s| s.update_revision.clone());
    let guard = lease::acquire(&ctx.cluster, &sts, &ctx.me, ctx.lease_duration).await?;
    let result = async {
        let mut written = None;
        for _ in 0..10 {
            let fresh = ctx.get_set(name).await?;
            let mut patch = StsPatch::at(fresh.metadata.resource_version.as_deref())
                .with_template(TemplateChange::Replace(template.clone()));
            if record.is_some() {
                // The record describes a rollout that is over and no longer true of the set.
                patch = patch.with_record(RecordChange::Remove);
            }
            match ctx.cluster.patch_statefulset(name, &patch, false).await {
                Ok(s) => {
                    written = Some(s);
                    break;
                }
                Err(ApiError::Conflict(_)) => continue,
                Err(e) => {
                    return Err(ExecError::api(
                        "writing the template of StatefulSet",
                        name,
                        e,
                    ))
                }
            }
        }
        let Some(written) = written else {
            return Err(ExecError::TooManyConflicts {
                statefulset: name.to_string(),
                attempts: 10,
            });
        };
        ctx.progress.say(format!(
            "{name}: template set back to revision {} ({images})",
            target.revision
        ));
        let mut view = ctx.cluster.watch(name, &selector_of(&written));
        converge(
            ctx,
            &mut view,
            name,
            &target.name,
            leaving.as_deref(),
            &written,
            timeout,
        )
        .await
    }
    .await;
    guard.release().await;
    result?;
    ctx.progress.say(format!(
        "{name} is back on revision {} ({images}) after {}",
        target.revision,
        format_elapsed(started.elapsed())
    ));
    if ctx.output == Output::Json {
        ctx.print_json(&target)?;
    }
    Ok(ExitCode::Done)
}

/// The blue set of the blue/green rollout that `undo` reverses: the last finished blue/green on
/// the way from `name` to the serving set, when the serving set has not been rolled since.
async fn bluegreen_to_undo<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    to_revision: Option<i64>,
) -> Result<Option<String>, ExecError> {
    if to_revision.is_some() {
        return Ok(None);
    }
    let mut current = name.to_string();
    let mut blue = None;
    for _ in 0..32 {
        let sts = ctx.get_set(&current).await?;
        let record = record_of(&sts)?;
        match record {
            Some(r)
                if r.plan.strategy == StrategyKind::BlueGreen && r.phase == Phase::Succeeded =>
            {
                let Some(twin) = r.twin else { break };
                match ctx.cluster.get::<StatefulSet>(&twin.set).await {
                    Ok(Some(_)) => {
                        blue = Some(current.clone());
                        current = twin.set;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(ExecError::api("reading StatefulSet", &twin.set, e)),
                }
            }
            // The serving set was rolled since: undo that instead.
            Some(_) if blue.is_some() => return Ok(None),
            _ => break,
        }
    }
    Ok(blue)
}

/// Waits until every pod of the set runs `revision` and is Ready, deleting pods stuck (not
/// Ready) on `leaving` once the controller has taken up the new template.
async fn converge<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    view: &mut View,
    name: &str,
    revision: &str,
    leaving: Option<&str>,
    written: &StatefulSet,
    timeout: Duration,
) -> Result<(), ExecError> {
    let deadline = Instant::now() + timeout;
    let generation = written.metadata.generation.unwrap_or(0);
    let mut deleted = std::collections::HashSet::new();
    loop {
        let snapshot = view.borrow_and_update().clone();
        if snapshot.synced {
            let Some(sts) = snapshot.statefulset.as_ref() else {
                return Err(ExecError::StatefulSetDeleted {
                    name: name.to_string(),
                });
            };
            let status = sts.status.as_ref();
            let taken_up = status.and_then(|s| s.observed_generation).unwrap_or(0) >= generation
                && status.and_then(|s| s.update_revision.as_deref()) == Some(revision);
            if taken_up {
                for pod in snapshot.pods.iter().filter(|p| {
                    leaving.is_some()
                        && pod_revision(p) == leaving
                        && pod_revision(p) != Some(revision)
                        && !is_ready(p)
                        && !is_terminating(p)
                }) {
                    let pod_name = pod.metadata.name.clone().unwrap_or_default();
                    let uid = pod.metadata.uid.clone().unwrap_or_else(|| pod_name.clone());
                    if !deleted.insert(uid.clone()) {
                        continue;
                    }
                    ctx.cluster
                        .delete_pod(&pod_name, pod.metadata.uid.as_deref())
                        .await
                        .map_err(|e| ExecError::api("deleting stuck pod", &pod_name, e))?;
                    ctx.progress.say(format!(
                        "deleted pod {pod_name}: not Ready on revision {}, which is being left; the controller recreates it, its volume stays",
                        leaving.unwrap_or("?")
                    ));
                }
                let replicas = predicates::replicas(sts);
                let start = predicates::ordinal_start(sts);
                let partition = predicates::partition(sts).unwrap_or(0);
                // Pods below a partition keep their revision: only those above it are waited on.
                let expected = ordinals_released(replicas, start, replicas, partition);
                if ordinals_not_ready(name, &snapshot.pods, revision, &expected).is_empty() {
                    return Ok(());
                }
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() {
                return Err(ExecError::WatchEnded { statefulset: name.to_string() });
            },
            _ = tokio::time::sleep_until(deadline) => return Err(ExecError::Timeout {
                what: format!("the return of {name} to revision {revision}"),
                timeout: format_elapsed(timeout),
            }),
        }
    }
}
