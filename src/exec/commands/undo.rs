//! `rollout undo`: back to an earlier revision, or back from the last blue/green.

use super::*;
use crate::exec::report::HistoryEntry;

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
        continue_run(
            ctx,
            &blue,
            |r| r.undo_bluegreen(Timestamp::now()),
            options,
            None,
        )
        .await?;
        let after = existing_record(ctx, &blue, "undo").await?;
        return Ok(match after.phase {
            Phase::Aborted => ExitCode::Done,
            _ => ExitCode::of_record(&after),
        });
    }
    let resolved = resolve_serving(ctx, name).await?;
    let name = resolved.as_str();
    let started = Instant::now();
    let sts = settled_set(ctx, name).await?;
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
    let entries = revision_history(ctx, name, &sts).await?;
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
    let has_record = record.is_some();
    put_back(
        ctx,
        &sts,
        &target,
        // The record describes a rollout that is over and no longer true of the set.
        |patch| {
            if has_record {
                patch.with_record(RecordChange::Remove)
            } else {
                patch
            }
        },
        &format!(
            "{name}: template set back to revision {} ({images})",
            target.revision
        ),
        timeout,
    )
    .await?;
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

/// StatefulSet `name` once its controller has seen its latest spec. Which revision is the
/// template and which one is being left come from the set's status; right after someone else's
/// write (a `kubectl apply` of a bad release) that status still names the revision before it,
/// and going "back" from there would put the bad release back.
pub(super) async fn settled_set<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
) -> Result<StatefulSet, ExecError> {
    let sts = ctx.get_set(name).await?;
    let mut view = ctx.cluster.watch(name, &selector_of(&sts));
    settle(&mut view, name).await
}

/// The revisions of StatefulSet `name` (`sts`), oldest first, as `rollout history` shows them.
pub(super) async fn revision_history<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    name: &str,
    sts: &StatefulSet,
) -> Result<Vec<HistoryEntry>, ExecError> {
    let revisions = ctx
        .cluster
        .list::<ControllerRevision>(&Select::labels(&selector_of(sts)))
        .await
        .map_err(|e| ExecError::api("listing the revisions of StatefulSet", name, e))?;
    Ok(history(sts, &revisions))
}

/// Puts the template of revision `target` back on StatefulSet `sts` under its Lease, in one
/// write that `shape` may add to (the update strategy, the record's removal), read again and
/// retried on conflicts; says `written_note` once it landed, then waits (at most `timeout`)
/// until every pod runs that revision and is Ready, replacing pods stuck on the one it leaves.
pub(super) async fn put_back<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    sts: &StatefulSet,
    target: &HistoryEntry,
    shape: impl Fn(StsPatch) -> StsPatch,
    written_note: &str,
    timeout: Duration,
) -> Result<(), ExecError> {
    let name = sts.metadata.name.as_deref().unwrap_or_default();
    let Some(template) = target.template.clone() else {
        return Err(ExecError::Revision {
            statefulset: name.to_string(),
            what: format!("revision {} holds no pod template", target.revision),
        });
    };
    let leaving = sts.status.as_ref().and_then(|s| s.update_revision.clone());
    let guard = ctx.take_lease(sts, None).await?;
    let result = async {
        let mut written = None;
        for _ in 0..10 {
            let fresh = ctx.get_set(name).await?;
            let patch = shape(
                StsPatch::at(fresh.metadata.resource_version.as_deref())
                    .with_template(TemplateChange::Replace(template.clone())),
            );
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
        ctx.progress.say(written_note);
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
    result
}

/// The blue set of the blue/green rollout that `undo` reverses: the last finished blue/green on
/// the way from `name` to the serving set, when the serving set has not been rolled since.
pub(super) async fn bluegreen_to_undo<C: Cluster, G: GateRunner>(
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
pub(super) async fn converge<C: Cluster, G: GateRunner>(
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
                if predicates::revision_made_current(sts, revision)
                    && ordinals_not_ready(name, &snapshot.pods, revision, &expected).is_empty()
                {
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
