//! Steering a rollout under way: `promote`, `pause`, `resume`, `abort`, and `release` after
//! someone else's deploy stopped it.

use super::*;
use crate::exec::lease::Steering;

/// How often `abort` looks at the lease of the run it follows.
const LOOK_AT_HOLDER_EVERY: Duration = Duration::from_secs(1);

/// The steps of the partition rollout that `promote --then` appends to a shadow.
pub(super) async fn then_steps<C: Cluster, G: GateRunner>(
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
    gates: &LocalGates,
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
    let observed = ctx.observe_lease(name).await?;
    if let Steering::HandOver { holder } = lease::steering(&observed.state) {
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
    let seen = observed.sighting;
    continue_run(
        ctx,
        name,
        change,
        holding(wait_at_holds, gates.clone()),
        seen,
    )
    .await
}

/// `rollout pause STS`: a live run is told through the record and waits; otherwise this
/// command takes the lease while it writes the record, so no run starts in between.
pub async fn pause<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
) -> Result<ExitCode, ExecError> {
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let change = |r: &mut RolloutState| r.pause_by_user(Timestamp::now());
    change(&mut existing_record(ctx, name, "pause").await?)?;
    let observed = ctx.observe_lease(name).await?;
    let (record, holder) = match lease::steering(&observed.state) {
        Steering::HandOver { holder } => (write_transition(ctx, name, change).await?, Some(holder)),
        _ => {
            let guard = ctx
                .take_lease(&ctx.get_set(name).await?, observed.sighting)
                .await?;
            let written = write_transition(ctx, name, change).await;
            guard.release().await;
            (written?, None)
        }
    };
    ctx.progress.say(format!(
        "paused the rollout of {name} at step {}/{}{}; `rollout resume {name}` continues it",
        record.current_step + 1,
        record.plan.steps.len(),
        match holder {
            Some(h) =>
                format!(" (the running rollout, {h}, stops at its next safe point and exits)"),
            None => " (no run is live)".to_string(),
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
    gates: &LocalGates,
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
    let observed = ctx.observe_lease(name).await?;
    if let Steering::HandOver { holder } = lease::steering(&observed.state) {
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
    let seen = observed.sighting;
    continue_run(
        ctx,
        name,
        change,
        holding(wait_at_holds, gates.clone()),
        seen,
    )
    .await
}

/// `rollout abort STS`: back to the stable revision now. A live run is told through the
/// record and followed until it is back; when no run is live, or the one followed stops renewing
/// its lease half-way, this command takes the lease and runs the rollback itself.
pub async fn abort<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    timeout: Duration,
) -> Result<ExitCode, ExecError> {
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let record = match existing_record(ctx, name, "abort").await {
        Err(ExecError::Record(problem)) => {
            return abort_without_record(ctx, name, &problem.to_string(), timeout).await
        }
        other => other?,
    };
    record.clone().abort(Timestamp::now())?;
    let started = Instant::now();
    let observed = ctx.observe_lease(name).await?;
    let mut seen = observed.sighting;
    if let Steering::HandOver { holder } = lease::steering(&observed.state) {
        write_transition(ctx, name, |r| r.abort(Timestamp::now())).await?;
        ctx.progress.say(format!(
            "abort requested: the running rollout ({holder}) returns {name} to the stable revision"
        ));
        match follow_abort(ctx, name, &holder, timeout, seen).await? {
            Followed::Finished(record) => return finish_abort(ctx, &record, started),
            Followed::HolderGone(sighting) => {
                ctx.progress.say(format!(
                    "the running rollout ({holder}) stopped before it was back on stable; this command finishes the rollback"
                ));
                seen = sighting;
            }
        }
    }
    let options = RunOptions {
        rollback_limit: Some(timeout),
        ..RunOptions::default()
    };
    let code = continue_run(ctx, name, |r| r.abort(Timestamp::now()), options, seen).await?;
    let after = existing_record(ctx, name, "abort").await?;
    // RolledBack: the abort finished a rollback that a dead run had begun; either way the set
    // is back where the user asked for it.
    if matches!(after.phase, Phase::Aborted | Phase::RolledBack) {
        return Ok(ExitCode::Done);
    }
    Ok(code)
}

/// `rollout release STS`: after someone else's deploy stopped the rollout (the record's drift),
/// let it have the set: rollout gives back what it holds and leaves the pod template as it is.
/// Refused before any write unless the record carries drift. The steps run like a rollback's,
/// kept in the record, so a killed `release` is continued by running it again.
pub async fn release<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    timeout: Duration,
) -> Result<ExitCode, ExecError> {
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let record = existing_record(ctx, name, "release").await?;
    record.clone().release(Timestamp::now())?;
    // The Lease is taken as `abort` takes it when no run is live: a run stopped by drift has let
    // it go; one that still holds it is watched until it is known dead, or refused as live.
    let seen = ctx.observe_lease(name).await?.sighting;
    let options = RunOptions {
        rollback_limit: Some(timeout),
        ..RunOptions::default()
    };
    continue_run(ctx, name, |r| r.release(Timestamp::now()), options, seen).await
}

/// How following a live run's rollback ended.
enum Followed {
    /// The record says the rollout is over.
    Finished(Box<RolloutState>),
    /// The run is dead (its lease unrenewed for a lease duration, or its process gone) or let
    /// its lease go before the record said it was over: someone must finish the rollback.
    HolderGone(Option<lease::Sighting>),
}

/// Follows the record (on the set's watch) until the run `holder` finishes the rollback,
/// looking at its lease meanwhile (from `seen`), at most `timeout`.
async fn follow_abort<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    holder: &str,
    timeout: Duration,
    mut seen: Option<lease::Sighting>,
) -> Result<Followed, ExecError> {
    let sts = ctx.get_set(name).await?;
    let mut view = ctx.cluster.watch(name, &selector_of(&sts));
    let deadline = Instant::now() + timeout;
    let lease_name = lease::lease_name(name);
    let mut look = tokio::time::interval(LOOK_AT_HOLDER_EVERY);
    loop {
        let snapshot = view.borrow_and_update().clone();
        if let Some(sts) = snapshot.statefulset.as_ref().filter(|_| snapshot.synced) {
            if let Some(r) = record_of(sts)? {
                if r.phase.is_finished() {
                    return Ok(Followed::Finished(Box::new(r)));
                }
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() {
                return Err(ExecError::WatchEnded { statefulset: name.to_string() });
            },
            _ = look.tick() => {
                let lease = lease::read_lease(&ctx.cluster, &lease_name).await?;
                let now = std::time::Instant::now();
                let (state, sighting) =
                    lease::judge(lease.as_ref(), &ctx.me, seen.as_ref(), now, lease::local_process_gone);
                seen = sighting;
                match state {
                    LeaseState::Dead { .. } => return Ok(Followed::HolderGone(seen)),
                    // Released: finished (the watch will show it), or stopped without finishing.
                    LeaseState::Free => {
                        let r = existing_record(ctx, name, "abort").await?;
                        if r.phase.is_finished() {
                            return Ok(Followed::Finished(Box::new(r)));
                        }
                        return Ok(Followed::HolderGone(None));
                    }
                    _ => {}
                }
            },
            _ = tokio::time::sleep_until(deadline) => return Err(ExecError::Timeout {
                what: format!("the rollback of {name} by the running rollout ({holder})"),
                timeout: format_elapsed(timeout),
            }),
        }
    }
}

pub(super) fn finish_abort<C: Cluster, G: GateRunner>(
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

/// `abort` on a set whose record is not used (unreadable, newer, or not holding together):
/// back to the revision the StatefulSet itself reports as current, taking nothing from the
/// record. The template of that ControllerRevision with partition 0 in one write that also
/// removes the record, stuck pods replaced, then a wait until every pod is Ready on it. Services
/// and second sets are not touched: only the record knew which were the rollout's.
async fn abort_without_record<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    problem: &str,
    timeout: Duration,
) -> Result<ExitCode, ExecError> {
    let started = Instant::now();
    ctx.progress.say(problem);
    let sts = undo::settled_set(ctx, name).await?;
    let entries = undo::revision_history(ctx, name, &sts).await?;
    let Some(stable) = entries.iter().find(|e| e.current) else {
        return Err(ExecError::Revision {
            statefulset: name.to_string(),
            what: format!("reports no current revision to return to; `rollout history {name}` lists its revisions, `rollout undo {name} --to-revision N` puts one back"),
        });
    };
    undo::put_back(
        ctx,
        &sts,
        stable,
        |patch| {
            patch
                .with_strategy(StrategyChange::Set {
                    type_: "RollingUpdate".to_string(),
                    partition: Some(0),
                })
                .with_record(RecordChange::Remove)
        },
        &format!(
            "{name}: template of its current revision {} put back with partition 0, the unusable record removed",
            stable.name
        ),
        timeout,
    )
    .await?;
    let others = marked_second_sets(ctx, name).await?;
    ctx.progress.say(format!(
        "{name} is back on revision {} ({}) after {}; not done without a record: Service selectors and {} left as they are",
        stable.name,
        stable
            .images
            .iter()
            .map(|i| format!("{}={}", i.container, i.image))
            .collect::<Vec<_>>()
            .join(", "),
        format_elapsed(started.elapsed()),
        if others.is_empty() {
            "second sets (none found with rollout's mark for it)".to_string()
        } else {
            format!(
                "the second set(s) rollout made beside it: {} (check which set your Services select, then delete what is not needed)",
                others.join(", ")
            )
        }
    ));
    if ctx.output == Output::Json {
        ctx.print_json(&serde_json::json!({
            "statefulset": name,
            "revision": stable.name,
            "recordRemoved": true,
            "recordProblem": problem,
            "secondSetsLeft": others,
        }))?;
    }
    Ok(ExitCode::Done)
}

/// The StatefulSets `rollout` made beside `home` (green or shadow sets), by their mark.
async fn marked_second_sets<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    home: &str,
) -> Result<Vec<String>, ExecError> {
    let sets = ctx
        .cluster
        .list::<StatefulSet>(&Select::labels(crate::model::twin::CREATED_BY_LABEL))
        .await
        .map_err(|e| ExecError::api("listing StatefulSets in namespace", home, e))?;
    Ok(sets
        .into_iter()
        .filter(|s| rollout_preview_home(&s.metadata).as_deref() == Some(home))
        .filter_map(|s| s.metadata.name)
        .filter(|n| n != home)
        .collect())
}
