//! Starting a rollout: `rollout rolling|ramped|canary|bluegreen|recreate|shadow|apply` and
//! `rollout plan`. Everything is checked before the first write; the plan shows both ways.

use super::*;

/// The record of a rollout that is about to start with `plan` on `sts`.
pub(super) fn new_record<C: Cluster, G: GateRunner>(
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
pub(super) fn render_rollback(plan: &crate::model::plan::Plan, back: &[RollbackAt]) -> String {
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

/// The Services, sets and claims around `sts` that a blue/green or shadow plan needs.
pub(super) async fn surroundings<C: Cluster, G: GateRunner>(
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
pub(super) async fn make_full_plan<C: Cluster, G: GateRunner>(
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
pub(super) async fn check_twin<C: Cluster, G: GateRunner>(
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

pub(super) fn mid_update_reason(sts: &StatefulSet) -> Option<String> {
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

pub(super) async fn start<C: Cluster, G: GateRunner>(
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
    let pods = checked.view.borrow().pods.clone();
    // On the heap: an HTTP query is a large future, and this one's runs once.
    Box::pin(crate::exec::metrics::check_before_start(
        name,
        ctx.cluster.namespace(),
        &checked.sts,
        &pods,
        &request.config.gates,
        request.prometheus_url.as_deref(),
    ))
    .await?;
    let guard = ctx.take_lease(&checked.sts, None).await?;
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
            gates: LocalGates::of(&request.config.gates)
                .with_prometheus(request.prometheus_url.clone()),
        },
    );
    drive(ctx, runner, guard, started).await
}

/// A request that passed the checks before any write: the set as settled on its watch, the new
/// template as the API server completed it.
pub(super) struct StartChecked {
    sts: StatefulSet,
    view: View,
    prepared: Prepared,
    new_template: serde_json::Value,
}

/// The refusal of a new rollout while `record`'s is under way: what it is, where it is, and
/// who holds the set's Lease.
async fn in_progress<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    record: &RolloutState,
) -> Result<ExecError, ExecError> {
    let running = match ctx.lease_holder_now(name).await? {
        Some(holder) => format!(", its Lease held by {holder}"),
        None => String::new(),
    };
    Ok(ExecError::InProgress {
        statefulset: name.to_string(),
        description: format!(
            "{} started by {}, {} at step {}/{}{running}",
            record.plan.strategy,
            record.started_by,
            record.phase,
            record.current_step + 1,
            record.plan.steps.len()
        ),
    })
}

pub(super) enum Checked {
    Go(Box<StartChecked>),
    /// Nothing to start: the run ended (nothing to do, or it continued a rollout under way).
    Done(ExitCode),
}

/// The checks of a new rollout before anything is written: the API server's dry run of the new
/// template, a rollout already under way (continued when it is this very one), nothing to do,
/// a set in the middle of an update.
pub(super) async fn check_start<C: Cluster, G: GateRunner>(
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
            let code = continue_run(
                ctx,
                name,
                |_| Ok(()),
                holding(
                    request.wait_at_holds,
                    LocalGates::of(&request.config.gates)
                        .with_prometheus(request.prometheus_url.clone()),
                ),
                None,
            )
            .await?;
            return Ok(Checked::Done(code));
        }
        if !plan_only {
            return Err(in_progress(ctx, name, record).await?);
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
    crate::strategy::planner::check_fits(&request.config, name, replicas)?;
    let mut view = ctx.cluster.watch(name, &selector_of(&sts));
    let sts = settle(&mut view, name).await?;
    // Another run may have started since the first read (two deploys started together): its
    // record is on the set now, and its update is no reason to call the set unrollable.
    if let Some(record) = record_of(&sts)?.filter(|r| r.phase.is_active() && !plan_only) {
        return Err(in_progress(ctx, name, &record).await?);
    }
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
pub(super) async fn print_plan<C: Cluster, G: GateRunner>(
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
    let route = Box::pin(super::route::route_for(ctx, &request.config, &sts)).await?;
    let mut record = new_record(ctx, request, &sts, &prepared, plan, twin, new_template);
    record.route = route.map(Box::new);
    let back = rollback_by_step(&record);
    let plan = &record.plan;
    match ctx.output {
        Output::Jsonl => {
            // A line per step: its number, the step, and the way back from a failure there.
            let lines: Vec<serde_json::Value> = (plan.steps.iter().enumerate())
                .map(|(i, step)| {
                    let rollback = back
                        .iter()
                        .find(|b| (b.from_step..=b.to_step).contains(&(i + 1)))
                        .map(|b| b.steps.clone())
                        .unwrap_or_default();
                    serde_json::json!({
                        "statefulset": plan.statefulset,
                        "step": i + 1,
                        "of": plan.steps.len(),
                        "do": step,
                        "rollback": rollback,
                    })
                })
                .collect();
            ctx.print_json_lines(&lines)?;
        }
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
pub(super) async fn new_rollout<C: Cluster, G: GateRunner>(
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
    let route = Box::pin(super::route::route_for(ctx, &request.config, &sts)).await?;
    let mut record = new_record(
        ctx,
        request,
        &sts,
        &checked.prepared,
        plan,
        twin,
        checked.new_template.clone(),
    );
    record.route = route.map(Box::new);
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
