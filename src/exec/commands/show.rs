//! Reading: `rollout status` and `rollout history`.

use super::*;

/// `rollout status STS [--watch]`.
pub async fn status<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    watch: bool,
    timeout: Option<Duration>,
    until_hold: bool,
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
    let told = std::cell::RefCell::new(std::collections::HashSet::<String>::new());
    let print = |report: &crate::exec::report::StatusReport| -> Result<(), ExecError> {
        match ctx.output {
            // The story so far, then each new mark, one JSON object per line.
            Output::Jsonl => {
                if let Some(record) = report.record.as_ref() {
                    for mark in &record.timeline {
                        let line =
                            crate::exec::announce::mark_line(&report.namespace, record, mark);
                        if told.borrow_mut().insert(line.clone()) {
                            ctx.out.print(&format!("{line}\n"));
                        }
                    }
                }
                Ok(())
            }
            Output::Json if watch => {
                let line = serde_json::to_string(&masked_json(report)?)
                    .map_err(|e| ExecError::Output(e.to_string()))?;
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
            .filter(|p| crate::exec::cluster::belongs_to(&sts, p))
            .collect();
        let lease = read_lease().await?;
        let (shown, record_on) = with_inherited_record(sts.clone(), via.as_ref());
        let mut report = status_report(
            ctx.cluster.namespace(),
            &shown,
            &record_on,
            &pods,
            lease.as_ref(),
            Timestamp::now(),
        )?;
        report.serving_for = serving_for.clone();
        report.judge_route(route_now(ctx, &report).await.as_ref());
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
            let (shown, record_on) = with_inherited_record(sts.clone(), via.as_ref());
            let mut report = status_report(
                ctx.cluster.namespace(),
                &shown,
                &record_on,
                &snapshot.pods,
                lease.as_ref(),
                Timestamp::now(),
            )?;
            report.serving_for = serving_for.clone();
            report.judge_route(route_now(ctx, &report).await.as_ref());
            let fingerprint = report.fingerprint();
            let settled = report.is_settled();
            let changed = fingerprint != last;
            let holding = until_hold
                && report
                    .rollout
                    .as_ref()
                    .is_some_and(|r| r.phase == Phase::Paused)
                && report.record.as_ref().is_some_and(waits_for_a_person);
            match (ctx.output, first) {
                (Output::Json | Output::Jsonl, _) | (Output::Text, true) => {
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
                    if settled || holding {
                        ctx.out.print("\n");
                        print(&report)?;
                    }
                }
            }
            first = false;
            last = fingerprint;
            if holding {
                if let Some(r) = report.record.as_ref() {
                    crate::exec::summary::append_if_asked(ctx, r)?;
                }
                return Ok(ExitCode::Done);
            }
            if report.is_settled() {
                if let Some(r) = report.record.as_ref() {
                    crate::exec::summary::append_if_asked(ctx, r)?;
                }
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

/// The route the shown rollout steers traffic through, read now, while a rollout under way
/// keeps one. `None` too when it cannot be read (an identity without `httproutes` may still
/// read the status; the route is then not judged).
async fn route_now<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    report: &crate::exec::report::StatusReport,
) -> Option<crate::model::route::HttpRoute> {
    let record = report.record.as_ref()?;
    if !crate::strategy::predicates::drift::route_watched(record) {
        return None;
    }
    let name = &record.route.as_ref()?.route;
    ctx.cluster
        .get::<crate::model::route::HttpRoute>(name)
        .await
        .ok()
        .flatten()
}

/// True when the rollout waits for a person: a hold until `rollout promote`, a `rollout
/// pause`, a gate that could not decide. A timed pause ends by itself.
fn waits_for_a_person(record: &RolloutState) -> bool {
    record.phase == Phase::Paused
        && !matches!(
            record.pause,
            Some(PauseReason::Step { until: Some(_) }) | None
        )
}

/// `rollout history STS`.
pub async fn show_history<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
) -> Result<ExitCode, ExecError> {
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let sts = ctx.get_set(name).await?;
    let entries = super::undo::revision_history(ctx, name, &sts).await?;
    match ctx.output {
        Output::Json => ctx.print_json(&entries)?,
        Output::Jsonl => ctx.print_json_lines(&entries)?,
        Output::Text => ctx.out.print(&render_history(name, &entries)),
    }
    Ok(ExitCode::Done)
}
