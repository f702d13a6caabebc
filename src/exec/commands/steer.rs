//! Steering a rollout under way: `promote`, `pause`, `resume`, `abort`.

use super::*;

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
