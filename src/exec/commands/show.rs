//! Reading: `rollout status` and `rollout history`.

use super::*;

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
    let print = |report: &crate::exec::report::StatusReport| -> Result<(), ExecError> {
        match ctx.output {
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
    let entries = super::undo::revision_history(ctx, name, &sts).await?;
    match ctx.output {
        Output::Json => ctx.print_json(&entries)?,
        Output::Text => ctx.out.print(&render_history(name, &entries)),
    }
    Ok(ExitCode::Done)
}
